"""``svformer-deploy probe``: what the model will see, as text, JSON and a contact sheet; bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_in_process as run
from PIL import Image
from svformer_deploy.svformer.data.synthetic import write_clip
from svformer_deploy.svformer.data.video import sample_indices

sys.path.insert(0, str(Path(__file__).parent))
from test_video import BAD_REASONS, VIDEO_DIR, _bad_inputs, coded_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / ".venv" / "bin" / "svformer-deploy"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("probe") / "clip.mp4", coded_frames(90))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


def test_json_reports_stream_views_and_tensor_shape(capsys, clip):
    code, out, err = run(capsys, "probe", clip, "--json", "--time-steps", "8", "--size", "32", "--views", "3x3")
    assert code == 0, err
    r = json.loads(out)  # exactly one JSON document on stdout
    assert (r["width"], r["height"], r["codec"], r["fps"]) == (96, 64, "h264", 25.0)
    assert r["tensor_shape"] == [8, 3, 32, 32] and r["batch_shape"] == [9, 8, 3, 32, 32]
    temporal = sample_indices(90, 8, 4, temporal_views=3)
    assert r["views"] == [v for v in temporal for _ in range(3)]
    assert [c["crop"] for c in r["view_crops"][:3]] == ["left", "centre", "right"]
    assert r["frames_decoded"] == 90 and isinstance(r["frames_decoded"], int)


def test_default_probe_is_16_frames_224_pixels_one_view(capsys, clip):
    code, out, _ = run(capsys, "probe", clip, "--json")
    assert code == 0
    r = json.loads(out)
    assert r["tensor_shape"] == [16, 3, 224, 224] and len(r["views"]) == 1
    assert r["views"] == sample_indices(90, 16, 4)
    assert r["frames_decoded"] == r["views"][0][-1] + 1  # decoding stopped after the last needed frame


def test_text_output_lists_every_view(capsys, clip):
    code, out, _ = run(capsys, "probe", clip, "-T", "4", "--size", "16", "--views", "2x1")
    assert code == 0
    assert "[4, 3, 16, 16]" in out
    for view in sample_indices(90, 4, 4, temporal_views=2):
        assert " ".join(map(str, view)) in out


def test_sheet_is_a_png_with_one_row_per_view(capsys, clip, tmp_path):
    sheet = tmp_path / "out" / "sheet.png"
    code, out, err = run(capsys, "probe", clip, "-T", "6", "--size", "32", "--views", "2x3", "--sheet", sheet, "--json")
    assert code == 0, err
    assert json.loads(out)["sheet"] == str(sheet)
    with Image.open(sheet) as img:
        assert img.format == "PNG"
        w, h = img.size
    assert w > 6 * 32 and h > 6 * 32
    assert [p.name for p in sheet.parent.iterdir()] == ["sheet.png"]  # no temporary file left


def test_sheet_must_be_a_png(capsys, clip, tmp_path):
    code, _, err = run(capsys, "probe", clip, "--sheet", tmp_path / "sheet.jpg")
    assert code == 2 and err.startswith("error:") and "PNG" in err
    assert not (tmp_path / "sheet.jpg").exists()


@pytest.mark.parametrize("spec", ["2x2", "0x1", "three", "1x"])
def test_bad_views_spec_is_a_usage_error(capsys, clip, spec):
    code, _, err = run(capsys, "probe", clip, "--views", spec)
    assert code == 2 and err.startswith("error:") and "--views" in err


@pytest.mark.parametrize("kind", sorted(BAD_REASONS))
def test_bad_video_gives_one_error_line_and_exit_2(capsys, bad_inputs, kind):
    path = bad_inputs[kind]
    code, out, err = run(capsys, "probe", path, "--json")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert path.name in lines[0] and BAD_REASONS[kind] in lines[0]


def test_installed_command_exits_2_without_traceback(bad_inputs):
    if not CLI.exists():
        pytest.skip(f"{CLI} not installed")
    proc = subprocess.run([str(CLI), "probe", str(bad_inputs["audio_only"])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {bad_inputs['audio_only']}: no video stream (streams: audio)"]


@pytest.mark.data
@pytest.mark.skipif(not VIDEO_DIR.is_dir(), reason=f"real clips not found at {VIDEO_DIR} (set SVFORMER_DATA)")
def test_probe_of_the_1080p_clip(capsys):
    path = VIDEO_DIR / "ntu_drink_water_1080p.avi"
    if not path.exists():
        pytest.skip(f"{path} absent")
    code, out, _ = run(capsys, "probe", path, "--json")
    assert code == 0
    r = json.loads(out)
    assert (r["width"], r["height"], r["frames"], r["codec"]) == (1920, 1080, 103, "h264")
    assert r["views"] == [[19, 23, 27, 31, 35, 40, 44, 48, 52, 56, 61, 65, 69, 73, 77, 82]]
    assert r["frames_decoded"] == 83
    assert -2.0 - 1e-5 <= r["value_range"][0] < r["value_range"][1] <= 1 / 0.225 - 2.0 + 1e-5


def test_probe_events_reports_framing_and_conserves_events(capsys, tmp_path):
    from conftest import data_path

    sample = data_path("events", "nmnist-small", "1.bs2")
    code, out, err = run(capsys, "probe", "--events", str(sample), "-T", "4", "--size", "34", "--json",
                         "--sheet", str(tmp_path / "ev.png"))
    assert code == 0, err
    r = json.loads(out)
    assert r["format"] == "nmnist" and r["sensor_size"] == [34, 34]
    assert r["tensor_shape"] == [4, 2, 34, 34]
    assert sum(r["frame_events"]) == r["events"] == r["on_events"] + r["off_events"]
    assert r["dropped_events"] == 0
    img = Image.open(r["sheet"])
    assert img.size[0] >= 4 * 34 and img.getextrema() != ((255, 255), (255, 255), (255, 255))


def test_probe_events_from_a_numpy_array(capsys, tmp_path):
    import numpy as np

    ev = np.zeros(6, dtype=[("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])
    ev["x"], ev["y"], ev["t"], ev["p"] = [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 10, 20, 30, 40, 50], [1, 0] * 3
    np.save(tmp_path / "ev.npy", ev)
    code, out, err = run(capsys, "probe", "--events", str(tmp_path / "ev.npy"), "-T", "3", "--size", "8")
    assert code == 0, err
    assert "6 events (3 ON, 3 OFF)" in out and "[3, 2, 8, 8]" in out


def test_probe_needs_exactly_one_source(capsys, tmp_path):
    code, _, err = run(capsys, "probe")
    assert code == 2 and err.startswith("error:")
    (tmp_path / "notevents.txt").write_text("hello")
    code, _, err = run(capsys, "probe", "--events", str(tmp_path / "notevents.txt"))
    assert code == 2 and err.startswith("error:") and "notevents.txt" in err and "Traceback" not in err
