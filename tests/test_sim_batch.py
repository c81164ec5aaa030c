"""Batched simulation: B clips in one executor pass give each clip the logits and counts of running it alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export.passes.quantize import QuantConfig
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.simulators.counting import K
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.svformer.errors import SVFormerError

# input scales of the four clips of a batch: a silent clip (no input MACs, biases drive the spikes), a faint, a
# normal and a loud one: the tiny random models fire 1.4-2.9x more spikes on the loud clip than on the silent one,
# so averaged counts would match none of them
SCALES = (0.0, 0.3, 1.0, 16.0)


def _clips(model, seed: int, events: bool = False) -> torch.Tensor:
    """``[B, T, C, H, W]``: one random clip per scale of :data:`SCALES`."""
    x = make_input(model, batch=len(SCALES), seed=seed)
    if events:
        x = x.abs()
    clips = torch.stack([x[:, b] * s for b, s in enumerate(SCALES)])
    return clips.round() if events else clips


def _spike_total(result) -> int:
    """Spikes emitted by every neuron layer of one clip over all steps."""
    return sum(int(table[K["spikes_out"]].sum()) for table in result.counts.values())


def _assert_batch_equals_single(sim: Simulator, clips: torch.Tensor, exact_logits: bool = True) -> list[int]:
    """Run ``clips`` as one batch and one by one; every clip's counts (and logits) must be identical."""
    batch = sim.run_batch(clips, record_spikes=True)
    assert len(batch) == clips.shape[0]
    spikes = []
    for b, got in enumerate(batch):
        one = sim.run(clips[b], record_spikes=True)
        assert got.counts.keys() == one.counts.keys()
        for name, table in one.counts.items():
            assert got.counts[name].shape == table.shape  # [keys, T]: per layer and per step
            assert np.array_equal(got.counts[name], table), (b, name)
        for name, s in one.spikes.items():
            assert torch.equal(got.spikes[name], s), (b, name)
        if exact_logits:
            assert np.array_equal(got.logits, one.logits), (b, np.abs(got.logits - one.logits).max())
        else:
            np.testing.assert_allclose(got.logits, one.logits, rtol=0, atol=1e-12)
        spikes.append(_spike_total(one))
    return spikes


def _assert_activity_differs(spikes: list[int], batch) -> None:
    """The clips' activity differs a lot, so a batch-averaged count would be wrong for every clip."""
    assert min(spikes) * 1.4 < max(spikes) and len(set(spikes)) == len(spikes), spikes
    macs = [sum(int(t[K["mac"]].sum()) for t in r.counts.values()) for r in batch]
    assert macs[0] < min(macs[1:]), macs  # the silent clip multiplies no pixel
    mean = {n: np.mean([r.counts[n] for r in batch], axis=0) for n in batch[0].counts}
    for r in batch:
        assert any(not np.array_equal(r.counts[n], mean[n]) for n in mean)


@pytest.mark.parametrize("variant", ["base", "3stg", "dp"])
def test_float64_batch_gives_every_clip_its_own_logits_and_counts(variant):
    model = make_model(variant)
    graph = run_pipeline(model).graph
    clips = _clips(model, seed=5)
    for kernel in ("dense", "events", "auto"):
        sim = Simulator(graph, "float", torch.float64, kernel=kernel)
        spikes = _assert_batch_equals_single(sim, clips)
        _assert_activity_differs(spikes, sim.run_batch(clips))
    # a batch of 1 and a batch in another order give the same per-clip results
    sim = Simulator(graph, "float", torch.float64)
    order = [2, 0, 3, 1]
    shuffled = sim.run_batch(clips[order])
    for i, b in enumerate(order):
        assert np.array_equal(shuffled[i].logits, sim.run(clips[b]).logits)


@pytest.mark.parametrize("variant,events", [("base", False), ("3stg", True)], ids=["base", "3stg-events"])
def test_integer_batch_is_bit_exact_with_one_clip_at_a_time(variant, events):
    overrides = dict(in_channels=2) if events else {}
    model = make_model(variant, **overrides)
    calib = make_input(model, batch=4, seed=21)
    if events:
        calib = calib.abs().round()
    qg = run_pipeline(model, quant=QuantConfig(), calibration=calib).graphs["quantized"]
    clips = _clips(model, seed=22, events=events)
    for kernel in ("events", "auto"):
        sim = Simulator(qg, "integer", kernel=kernel)
        spikes = _assert_batch_equals_single(sim, clips)
    _assert_activity_differs(spikes, sim.run_batch(clips))


def test_float32_batch_matches_single_clips():
    model = make_model("base")
    sim = Simulator(run_pipeline(model).graph, "float", torch.float32)
    _assert_batch_equals_single(sim, _clips(model, seed=7))


def test_a_batch_of_the_wrong_shape_is_refused():
    model = make_model("3stg")
    sim = Simulator(run_pipeline(model).graph)
    T, C, S = model.cfg.time_steps, model.cfg.in_channels, model.cfg.img_size
    for bad in (torch.zeros(T, C, S, S), torch.zeros(0, T, C, S, S), torch.zeros(2, T, C, S, S + 1)):
        with pytest.raises(SVFormerError, match=r"\[B, T, C, H, W\]"):
            sim.run_batch(bad)


# ---------------------------------------------------------------------------------------------
# the commands: a folder and a multi-view clip give the same records batched as one at a time
# ---------------------------------------------------------------------------------------------
def _clip_of(path, amplitude: int, frames: int = 20, size: int = 48):
    """A video of random pixels around grey with ``amplitude`` (0: a flat grey clip): activity grows with it."""
    import av

    rng = np.random.default_rng(amplitude)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for _ in range(frames):
            rgb = np.clip(128 + rng.integers(-amplitude, amplitude + 1, (size, size, 3)), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _same_records(a_paths, b_paths) -> None:
    """Two sets of run records (same clips and views) with identical logits and per-layer, per-step counts."""
    from svformer_deploy.simulators.record import read_record

    key = lambda rec: (rec["input"]["path"], rec["input"]["view"])  # noqa: E731
    a = sorted((read_record(p).data for p in a_paths), key=key)
    b = sorted((read_record(p).data for p in b_paths), key=key)
    assert [key(r) for r in a] == [key(r) for r in b] and a
    for ra, rb in zip(a, b, strict=True):
        assert ra["prediction"]["logits"] == rb["prediction"]["logits"]
        assert ra["layers"] == rb["layers"] and ra["totals"] == rb["totals"]


def test_folder_batched_equals_one_clip_at_a_time(tmp_path):
    from svformer_deploy.deploy.batch import group_clips, simulate_folder
    from test_sim_cli import make_bundle

    bundle = make_bundle(tmp_path / "m.svfd", img_size=32, time_steps=4)
    for i, amp in enumerate((0, 20, 60, 127)):
        (tmp_path / "clips" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        _clip_of(tmp_path / "clips" / f"c{i % 2}" / f"amp{amp}.mp4", amp)
    (tmp_path / "clips" / "c0" / "broken.mp4").write_bytes(b"not a video")  # fails alone inside its group
    for executor in ("float", "integer"):
        one = simulate_folder(tmp_path / "clips", bundle, tmp_path / f"one-{executor}", workers=1,
                              executor=executor, batch=1)
        many = simulate_folder(tmp_path / "clips", bundle, tmp_path / f"many-{executor}", workers=1,
                               executor=executor, batch=16)
        assert one.simulated == many.simulated == 4
        assert [c for c, _ in one.failures] == [c for c, _ in many.failures] and len(many.failures) == 1
        _same_records(one.records, many.records)
        totals = [r["totals"] for r in (read_data(p) for p in many.records)]
        assert len({t["spikes"] for t in totals}) == 4  # four different activities, each counted on its own
    # groups: at most batch // views clips, and every worker gets a share
    assert [len(g) for g in group_clips(list(range(10)), 1, 2, 16)] == [2, 2, 2, 2, 2]  # >= 4 groups per worker
    assert [len(g) for g in group_clips(list(range(10)), 3, 1, 16)] == [3, 3, 3, 1]  # at most 16 // 3 views
    assert [len(g) for g in group_clips(list(range(200)), 1, 2, 16)] == [16] * 12 + [8]
    assert [len(g) for g in group_clips(list(range(3)), 20, 2, 16)] == [1, 1, 1]


def read_data(path):
    from svformer_deploy.simulators.record import read_record

    return read_record(path).data


def test_simulate_views_batched_equals_one_view_at_a_time(tmp_path, capsys):
    import json

    from svformer_deploy.deploy.cli import main
    from test_sim_cli import make_bundle

    bundle = make_bundle(tmp_path / "m.svfd", img_size=32, time_steps=4)
    clip = _clip_of(tmp_path / "clip.mp4", 90, frames=40)  # 2x3 = 6 views: passes of 4 + 2 views with --batch 4
    docs = []
    for batch in (1, 4):
        code = main(["simulate", "--video", str(clip), "--model", str(bundle), "--views", "2x3", "--batch", str(batch),
                     "--out", str(tmp_path / f"runs{batch}"), "--json", "-q"])
        out, err = capsys.readouterr()
        assert code == 0, err
        docs.append(json.loads(out))
    assert docs[0]["logits"] == docs[1]["logits"] and docs[0]["layers"] == docs[1]["layers"]
    _same_records(docs[0]["records"], docs[1]["records"])
    code = main(["simulate", "--video", str(clip), "--model", str(bundle), "--batch", "0"])
    from conftest import one_error_line

    one_error_line(code, capsys.readouterr().err, "--batch")
