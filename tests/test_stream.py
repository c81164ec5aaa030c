"""The one-step ONNX graph (model_step.onnx) and StreamSession: real onnxruntime sessions against the graph simulator.

float64: identical top-1, |dlogit| <= 1e-9 and identical spikes; fixed point: exact; float32: reported
(only bounded loosely). A stream cut in two (state saved, resumed in a new onnxruntime session) gives the
same logits as the uncut one. Bad states, step indices, frames and foreign step files are one error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import one_error_line
from fixtures_models import CASES, make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.deploy.cli import main
from svformer_deploy.export.bundle import load_bundle
from svformer_deploy.export.passes.fold_bn import fold_bn
from svformer_deploy.export.trace import trace
from svformer_deploy.export.writers.onnx_step import StepModel, step_module, write_onnx_step, zero_states
from svformer_deploy.export.writers.onnx_writer import onnx_module
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.simulators.stream import StreamSession
from svformer_deploy.svformer.checkpoint import save_checkpoint
from svformer_deploy.svformer.errors import SVFormerError
from test_sim_cli import write_clip
from writers_fixtures import chain_graph, event_clips, quantized_chain


def tiny(seed: int = 0):
    """The bundles' model: a tiny 3-stage SVFormer on RGB frames, T = 3, time-dependent BN."""
    return make_model("3stg", seed=seed, time_steps=3, in_channels=3)


def export(root: Path, name: str, *flags: str, seed: int = 0) -> Path:
    ckpt = save_checkpoint(root / f"{name}.pt", tiny(seed))
    code = main(["export", str(ckpt), "-o", str(root / f"{name}.svfd"), "--check-clips", "2",
                 "--calibration-clips", "2", "--quiet", *flags])
    assert code == 0
    return root / f"{name}.svfd"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    return {"float": export(root, "f", "--targets", "onnx"), "other": export(root, "o", "--targets", "onnx", seed=1),
            "fixed": export(root, "q", "--targets", "onnx", "--quantize", "int8")}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 16)


def sim_run(graph, frames: torch.Tensor, mode: str, dtype=torch.float64):
    sim = Simulator(graph, mode=mode, dtype=dtype) if mode == "float" else Simulator(graph, mode=mode)
    return sim.run(frames, record_spikes=True)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_one_step_of_the_reference_run_T_times_is_the_reference_on_every_variant(case: str) -> None:
    """StepModel (the module model_step.onnx is exported from) carried over T steps gives the unrolled reference's
    logits in float64, for every zoo variant and ablation, time-dependent BN included: the head's running sum
    adds the same products in another order (step by step instead of one Conv3d), so equal to ~1e-16 relative."""
    variant, over = next((v, o) for c, v, o in CASES if c == case)
    model = make_model(variant, **over)
    graph = fold_bn(trace(model))
    x = make_input(model, batch=2).double()
    ref = onnx_module(graph, "float64")
    step = StepModel(ref)
    states = list(zero_states(step.states, 2).values())
    with torch.no_grad():
        want = ref(x)
        for t in range(x.shape[0]):
            logits, *rest = step(x[t], torch.tensor(t), *states)
            states = rest[:len(step.states)]
        assert (logits - want).abs().max() <= 1e-12 * max(1.0, float(want.abs().max()))
        assert torch.equal(logits.argmax(-1), want.argmax(-1))
        if any(graph.nodes[n]["op"].op == "affine" and graph.nodes[n]["op"].per_step for n in graph.nodes):
            # the step index selects the per-step affine: a wrong t changes the result
            states = list(zero_states(step.states, 2).values())
            outs = [step(x[0], torch.tensor(t), *states)[1:] for t in (0, 1)]
            assert any(not torch.equal(a, b) for a, b in zip(*outs, strict=True))


def test_default_export_writes_the_step_graph_with_its_state_table(bundles) -> None:
    b = bundles["float"]
    man = json.loads((b / "manifest.json").read_text())
    assert (b / "model_step.onnx").is_file() and not (b / "model.onnx").exists()
    assert man["files"]["onnx_step"]["path"] == "model_step.onnx" and "onnx" not in man["files"]
    info = man["onnx_step"]
    assert info["file"] == "model_step.onnx" and info["mode"] == "float64"
    m = onnx.load(str(b / "model_step.onnx"))
    onnx.checker.check_model(m)
    names = [i.name for i in m.graph.input]
    assert names == [i["name"] for i in info["inputs"]] == ["frame", "t", *(s["name"] for s in info["states"])]
    assert [o.name for o in m.graph.output][:1 + len(info["states"])] == \
        ["logits", *(s["output"] for s in info["states"])]
    kinds = [s["kind"] for s in info["states"]]
    assert kinds.count("head_accumulator") == 1 and kinds.count("membrane") >= 5
    for s, inp in zip(info["states"], m.graph.input[2:], strict=True):
        dims = inp.type.tensor_type.shape.dim
        assert s["name"].startswith("state.") and s["init"] == "zeros" and s["dtype"] == "float64"
        assert [d.dim_value for d in dims[1:]] == s["shape"][1:] and s["shape"][0] == "B"
    rows = {r["label"]: r for r in man["fidelity"]["checks"]}
    row = rows["onnx step float64 (model_step.onnx)"]
    assert row["passed"] and row["max_abs_diff"] <= 1e-9 and row["clips"] == 2


def test_onnx_both_writes_the_unrolled_and_the_step_files(tmp_path: Path) -> None:
    b = export(tmp_path, "both", "--targets", "onnx", "--onnx", "both")
    man = json.loads((b / "manifest.json").read_text())
    assert {"onnx", "onnx_fp32", "onnx_step"} <= set(man["files"])
    labels = {r["label"] for r in man["fidelity"]["checks"]}
    assert {"onnx float64 (model.onnx)", "onnx step float64 (model_step.onnx)"} <= labels


@pytest.mark.parametrize("kind", ["float", "fixed"])
def test_stream_session_equals_the_graph_simulator(bundles, kind: str) -> None:
    b = load_bundle(bundles[kind])
    graph = b.graph("ir_quantized" if kind == "fixed" else "ir")
    T = int(graph.graph["time_steps"])
    x = make_input(tiny(), batch=2, seed=5)
    s = StreamSession(b)
    for v in range(2):
        frames = x[:, v]
        logits, spikes = s.run(frames)
        res = sim_run(graph, frames, "integer" if kind == "fixed" else "float")
        assert logits.shape == (1, len(res.logits)) and spikes.keys() == res.spikes.keys()
        if kind == "fixed":
            assert np.array_equal(logits[0], res.logits)
        else:
            assert np.abs(logits[0] - res.logits).max() <= 1e-9
            assert logits[0].argmax() == res.logits.argmax()
        for n, sp in spikes.items():
            assert sp.shape[0] == T and np.array_equal(sp[:, 0], res.spikes[n].numpy()), n
        assert sum(int(sp.sum()) for sp in spikes.values()) > 0


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_step_file_in_onnxruntime_equals_the_simulator_on_every_variant(tmp_path: Path, case: str) -> None:
    """model_step.onnx of every zoo variant and ablation (small sizes), run frame by frame in onnxruntime with the
    state carried over: float64 identical spikes in every layer and step, |dlogit| <= 1e-9; fixed point exact
    (logits and spikes) against the integer executor."""
    from svformer_deploy.export.passes.quantize import QuantConfig, quantize

    variant, over = next((v, o) for c, v, o in CASES if c == case)
    model = make_model(variant, **over)
    graph = fold_bn(trace(model))
    x = make_input(model, batch=2, seed=7)
    graphs = {"float64": graph, "fixed": quantize(graph, make_input(model, batch=2, seed=8), QuantConfig())}
    import onnxruntime as ort

    for mode, g in graphs.items():
        path = write_onnx_step(g, tmp_path / f"{mode}.onnx", mode=mode)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        specs = step_module(g, mode).states
        names = [o.name for o in sess.get_outputs()]
        dt = np.float64 if mode == "float64" else np.float32
        st = {k: a.numpy() for k, a in zero_states(specs, 2).items()}
        got: dict[str, list[np.ndarray]] = {}
        for t in range(x.shape[0]):
            outs = dict(zip(names, sess.run(None, {"frame": x[t].numpy().astype(dt), "t": np.array(t), **st}),
                            strict=True))
            st = {s.name: outs[s.output] for s in specs}
            for k, v in outs.items():
                if k.startswith("spikes."):
                    got.setdefault(k.removeprefix("spikes."), []).append(v != 0)
        for v in range(2):
            res = sim_run(g, x[:, v], "integer" if mode == "fixed" else "float")
            if mode == "fixed":
                assert np.array_equal(outs["logits"][v], res.logits), (case, v)
            else:
                assert np.abs(outs["logits"][v] - res.logits).max() <= 1e-9, (case, v)
            assert got.keys() == res.spikes.keys()
            for n, sp in got.items():
                assert np.array_equal(np.stack(sp)[:, v], res.spikes[n].numpy()), (case, mode, n)
        assert sum(int(np.stack(sp).sum()) for sp in got.values()) > 0


@pytest.mark.parametrize("mode", ["float64", "fixed", "float32"])
def test_step_file_of_the_chain_graph_matches_the_simulator_in_every_mode(tmp_path: Path, mode: str) -> None:
    """The hand-built chain (grouped/asymmetric convs, PLIF and LIF, head): float64 <= 1e-9, fixed exact, float32
    reported (printed) and only bounded loosely."""
    if mode == "fixed":
        g, x = quantized_chain()
    else:
        g = chain_graph()
        x = event_clips(g, 2, seed=2)
    path = write_onnx_step(g, tmp_path / "s.onnx", mode=mode)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs = step_module(g, mode).states
    dt = np.float64 if mode == "float64" else np.float32
    for v in range(x.shape[1]):
        st = {k: a.numpy() for k, a in zero_states(specs, 1).items()}
        for t in range(x.shape[0]):
            outs = sess.run(None, {"frame": x[t, v:v + 1].numpy().astype(dt), "t": np.array(t), **st})
            st = dict(zip((s.name for s in specs), outs[1:1 + len(specs)], strict=True))
        res = sim_run(g, x[:, v], "integer" if mode == "fixed" else "float",
                      torch.float32 if mode == "float32" else torch.float64)
        diff = np.abs(outs[0][0].astype(np.float64) - res.logits).max()
        print(f"{mode} clip {v}: max |dlogit| = {diff:.3g}")
        assert diff == 0 if mode == "fixed" else diff <= (1e-9 if mode == "float64" else 1e-3)


def test_a_stream_cut_in_two_and_resumed_in_a_new_session_gives_the_same_result(bundles, tmp_path: Path) -> None:
    x = make_input(tiny(), batch=1, seed=7)[:, 0]
    whole = StreamSession(bundles["float"])
    want, _ = whole.run(x)
    first = StreamSession(bundles["float"])
    first.step(x[0])
    saved = first.save_state()
    np.savez(tmp_path / "state.npz", t=saved["t"], **saved["states"])  # e.g. to disk, another process
    del first
    z = np.load(tmp_path / "state.npz")
    second = StreamSession(bundles["float"])  # a new onnxruntime session
    assert second.session is not whole.session
    second.restore_state({"t": int(z["t"]), "states": {k: z[k] for k in z.files if k != "t"}})
    outs = [second.step(x[t]) for t in range(1, 3)]
    assert outs[-1].final and not outs[0].final
    assert np.array_equal(outs[-1].logits, want)
    # and not cut at all but restarted from zeros at step 1 differs (the state matters)
    third = StreamSession(bundles["float"])
    third.t = 1
    got = [third.step(x[t]) for t in range(1, 3)][-1].logits
    assert not np.array_equal(got, want)


def test_bad_states_steps_and_frames_are_refused(bundles) -> None:
    s = StreamSession(bundles["float"])
    x = make_input(tiny(), batch=1)[:, 0]
    saved = s.save_state()
    name = next(iter(saved["states"]))
    bad = {**saved["states"], name: saved["states"][name][..., :-1]}
    with pytest.raises(SVFormerError, match=f"state {name}: shape"):
        s.restore_state({"t": 0, "states": bad})
    bad = {**saved["states"], name: saved["states"][name].astype(np.float32)}
    with pytest.raises(SVFormerError, match=f"state {name}: dtype float32"):
        s.restore_state({"t": 0, "states": bad})
    with pytest.raises(SVFormerError, match="missing"):
        s.restore_state({"t": 0, "states": {}})
    for t in (-1, 3, 99):
        with pytest.raises(SVFormerError, match=r"outside \[0, 3\)"):
            s.step(x[0], t=t)
    with pytest.raises(SVFormerError, match="does not fit the model"):
        s.step(x[0, :, :16])
    for t in range(3):
        s.step(x[t])
    with pytest.raises(SVFormerError, match="outside"):
        s.step(x[0])  # a fourth frame of a 3-step clip


def test_a_step_file_from_another_bundle_is_refused(bundles, tmp_path: Path, clip: Path, capsys) -> None:
    bad = Path(shutil.copytree(bundles["float"], tmp_path / "bad.svfd"))
    shutil.copyfile(bundles["other"] / "model_step.onnx", bad / "model_step.onnx")
    with pytest.raises(SVFormerError, match="model_step.onnx"):
        StreamSession(bad)
    code = main(["simulate", "--video", str(clip), "--model", str(bad), "--runtime", "onnx"])
    one_error_line(code, capsys.readouterr().err, "model_step.onnx")


def test_simulate_runtime_onnx_live_prints_the_running_top5_and_agrees_with_the_graph(bundles, clip: Path,
                                                                                       tmp_path: Path, capsys) -> None:
    code = main(["simulate", "--video", str(clip), "--model", str(bundles["float"]), "--runtime", "onnx", "--live",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["runtime"] == "onnx" and doc["mode"] == "float64" and len(doc["top5"]) == 5
    b = load_bundle(bundles["float"])
    want_bytes = sum(8 * int(np.prod(s["shape"][1:])) for s in b.manifest["onnx_step"]["states"])  # float64, B = 1
    assert doc["state_bytes"] == want_bytes > 0
    assert 0 < doc["timing"]["step_median_s"] <= doc["timing"]["step_p99_s"]
    live = [line for line in err.splitlines() if line.startswith("view 0 step ")]
    assert len(live) == 3 and live[-1].split(": ", 1)[1].startswith(doc["top5"][0][0])
    code = main(["simulate", "--video", str(clip), "--model", str(bundles["float"]), "--out", str(tmp_path),
                 "--json", "--quiet"])
    graph = json.loads(capsys.readouterr().out)
    assert code == 0 and graph["top5"][0][0] == doc["top5"][0][0]
    # the graph simulator runs float32 by default: agreement within float32 rounding
    assert np.abs(np.array(graph["logits"]) - np.array(doc["logits"])).max() <= 1e-3
    code = main(["simulate", "--video", str(clip), "--model", str(bundles["float"]), "--runtime", "onnx",
                 "--integer"])
    one_error_line(code, capsys.readouterr().err, "--integer")


def test_verify_runs_the_step_graph(bundles, capsys) -> None:
    code = main(["verify", str(bundles["fixed"]), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    row = json.loads(out)["fidelity"]["onnx step fixed (model_step.onnx, onnxruntime)"]
    assert row["passed"] and row["max_abs_diff"] == 0.0
