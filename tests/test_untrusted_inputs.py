"""Checkpoints, videos, event files and cost models are untrusted input: sizes and values are checked before
anything is allocated from them; a bad one gives one ``error:`` line naming the file (exit 2, no traceback)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import cli_in_process as cli
from conftest import one_error_line
from fixtures_models import make_model
from svformer_deploy.deploy.render import json_document
from svformer_deploy.svformer.checkpoint import make_checkpoint, save_checkpoint
from svformer_deploy.svformer.errors import SVFormerError


def one_error(result: tuple[int, str, str], *fragments: str) -> str:
    code, out, err = result
    assert out == ""
    return one_error_line(code, err, *fragments)


# -- checkpoints -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_state() -> dict:
    return make_checkpoint(make_model("3stg", time_steps=2, img_size=32)).to_dict()


def save_raw(path: Path, obj: dict) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("field, value, fragment", [
    ("dims", [10**7, 2 * 10**7, 4 * 10**7], "dims must be integers in 1..65536"),
    ("depths", [1, 10**6, 1], "depths must be integers"),
    ("img_size", 10**6, "img_size must be an integer in 1..8192"),
    ("time_steps", 10**7, "time_steps must be an integer in 1..1024"),
    ("head_dim", 10**7, "head_dim"),
    ("num_classes", 10**9, "num_classes"),
    ("in_channels", 10**6, "in_channels"),
    ("mlp_ratio", 1e9, "mlp_ratio"),
    ("dims", "abc", "dims must be a list"),
    ("time_steps", 2.5, "time_steps must be an integer"),
], ids=["dims", "depths", "img", "T", "head_dim", "classes", "in_ch", "mlp", "dims-str", "T-float"])
def test_checkpoint_config_beyond_the_limits_is_refused_before_building(capsys, tmp_path, tiny_state, field, value,
                                                                         fragment):
    obj = dict(tiny_state, config=dict(tiny_state["config"], **{field: value}))
    path = save_raw(tmp_path / "huge.pt", obj)
    one_error(cli(capsys, "info", path), "huge.pt", fragment)
    one_error(cli(capsys, "export", path, "-o", tmp_path / "x.svfd"), "huge.pt", fragment)
    assert not (tmp_path / "x.svfd").exists()


def test_config_within_limits_but_unlike_the_state_dict_is_refused_without_building_it(capsys, tmp_path,
                                                                                      tiny_state):
    # 4 stages of 16k-64k channels would be tens of GB of parameters; the shapes are compared on the meta device
    cfg = dict(tiny_state["config"], dims=[16384, 32768, 65536], head_dim=64)
    path = save_raw(tmp_path / "big.pt", dict(tiny_state, config=cfg))
    one_error(cli(capsys, "info", path), "big.pt", "state_dict does not fit the config", "wrong shapes")


@pytest.mark.parametrize("poison", ["nan", "complex"])
def test_checkpoint_tensors_must_be_real_and_finite(capsys, tmp_path, tiny_state, poison):
    sd = dict(tiny_state["state_dict"])
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 4)
    if poison == "nan":
        sd[key] = sd[key].clone()
        sd[key].view(-1)[2] = math.nan
    else:
        sd[key] = sd[key].to(torch.complex64)
    path = save_raw(tmp_path / "p.pt", dict(tiny_state, state_dict=sd))
    one_error(cli(capsys, "info", path), "p.pt", key, "nan" if poison == "nan" else "complex64")


def test_a_valid_checkpoint_still_loads(capsys, tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", make_model("3stg", time_steps=2, img_size=32))
    code, out, err = cli(capsys, "info", path, "--json")
    assert code == 0, err
    assert json.loads(out)["time_steps"] == 2


# -- videos --------------------------------------------------------------------------------------
def write_video(path: Path, width: int, height: int, frames: int = 20) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), i * 10, np.uint8),
                                                         format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_probe_refuses_a_valid_but_extremely_wide_video_by_its_pixel_budget(capsys, tmp_path):
    video = write_video(tmp_path / "wide.mp4", 8000, 2)
    one_error(cli(capsys, "probe", video, "--json"), "wide.mp4", "8000x2", "budget")


def test_probe_still_reads_an_ordinary_small_video(capsys, tmp_path):
    video = write_video(tmp_path / "ok.mp4", 64, 48)
    code, out, err = cli(capsys, "probe", video, "--json", "-T", "4", "--size", "32")
    assert code == 0, err
    assert json.loads(out)["tensor_shape"] == [4, 3, 32, 32]


# -- events ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("column, value, fragment", [
    ("x", 2**62, "column x reaches"), ("y", 2**40, "column y reaches"), ("t", 2**63 - 1, "column t reaches"),
    ("x", 1e300, "column x reaches"),
])
def test_event_coordinates_beyond_the_limit_are_refused(capsys, tmp_path, column, value, fragment):
    rows = np.array([[1, 2, 10, 1], [3, 4, 20, 0], [5, 6, 30, 1]], dtype=np.float64 if value == 1e300 else np.int64)
    rows[1, "xytp".index(column)] = value
    path = tmp_path / "ev.npy"
    np.save(path, rows)
    one_error(cli(capsys, "probe", "--events", path, "--json"), "ev.npy", fragment)


def test_events_within_the_sensor_are_still_framed(capsys, tmp_path):
    path = tmp_path / "ev.npy"
    np.save(path, np.array([[1, 2, 10, 1], [3, 4, 20, 0], [5, 6, 30, 1]], dtype=np.int64))
    code, out, err = cli(capsys, "probe", "--events", path, "--json", "-T", "2", "--size", "16")
    assert code == 0, err
    assert json.loads(out)["events"] == 3


# -- cost models and strict JSON -------------------------------------------------------------------
FULL = 'e_ac_pj = 0.9\ne_mul_pj = 3.7\ne_add_pj = 0.9\ne_mem_pj_per_64bit = 20\n'


@pytest.mark.parametrize("text, fragment", [
    ("e_mac_pj = 1e308\n" + FULL, "e_mac_pj must be a finite number >= 0 and <= 1e+06"),
    ("e_mac_pj = [1, 2]\n" + FULL, "e_mac_pj must be a number"),
    ('e_mac_pj = "4.6"\n' + FULL, "e_mac_pj must be a number"),
    ("e_mac_pj = -1\n" + FULL, "e_mac_pj must be a finite number"),
    ("e_mac_pj = nan\n" + FULL, "e_mac_pj must be a finite number"),
    ("e_mac_pj = inf\n" + FULL, "e_mac_pj must be a finite number"),
    ('base = ["fp32"]\n', "is not a preset"),
    ('base = "fp32"\ne_mul_pj = 999999.0\ne_add_pj = 999999.0\n', "e_neuron_update_pj"),
], ids=["1e308", "list", "string", "negative", "nan", "inf", "base-list", "derived-too-big"])
def test_out_of_range_cost_models_are_refused_through_energy_report(capsys, tmp_path, text, fragment):
    path = tmp_path / "chip.toml"
    path.write_text(text)
    line = one_error(cli(capsys, "energy-report", tmp_path, "--cost-model", path, "--json"), "chip.toml", fragment)
    assert "Infinity" not in line


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_json_output_never_holds_non_finite_numbers(value):
    with pytest.raises(SVFormerError, match=r"layers\[1\]\.energy_pj"):
        json_document({"layers": [{"energy_pj": 1.0}, {"energy_pj": value}]})
    assert json.loads(json_document({"energy_pj": 1e300})) == {"energy_pj": 1e300}


def test_checkpoint_preprocessing_with_zero_std_is_refused(capsys, tmp_path, tiny_state):
    prep = {"input": "video", "time_steps": 2, "size": 32, "frame_stride": 4, "mean": [0.45] * 3, "std": [0.0] * 3}
    path = save_raw(tmp_path / "std0.pt", dict(tiny_state, preprocessing=prep))
    one_error(cli(capsys, "info", path), "std0.pt", "std must be > 0")
