"""Run records are untrusted input: silent layers, malformed and hostile files, and a bounded fuzz.

Every file goes through the command line (``energy-report RECORD --json``): it ends in a report
(exit 0) or in exactly one ``error:`` line with exit 2 and nothing on stdout - never a traceback,
never "internal error".
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from energy_fixtures import hand_record, synthetic_record, write_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svformer_deploy.deploy.cli import main
from svformer_deploy.simulators import record as schema


def run(*args) -> tuple[int, str, str]:
    """The CLI in-process (the same code path as the console script)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_report_or_one_error(code: int, out: str, err: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        assert json.loads(out)["format"] == "svformer-deploy/energy-report" and not errors
    else:
        assert code == 2, (code, err)
        assert out == "" and len(errors) == 1, (out, err)


# ------------------------------------------------------------------------------------------
# a: a layer silent in one record and firing in another
# ------------------------------------------------------------------------------------------
def _silent_v1(rec: dict, layer_name: str) -> dict:
    """``rec`` as the version 1 simulator wrote it when ``layer_name`` never fired: no spikes_out at all."""
    rec = copy.deepcopy(rec)
    rec["version"] = 1
    for layer in rec["layers"]:
        layer.pop("origin")
        if layer["name"] == layer_name:
            layer["counts"].pop("spikes_out")
            layer["per_step"].pop("spikes_out")
            layer["firing_rate"] = 0.0
    rec.pop("totals")
    return rec


def test_a_layer_silent_in_one_record_and_firing_in_another_is_reported(tmp_path):
    firing = write_record(tmp_path, "a.json", hand_record(input_path="/c/a.mp4"))
    silent = write_record(tmp_path, "b.json", _silent_v1(hand_record(input_path="/c/b.mp4"), "blocks1.0.attn.v_lif"))
    for order in ((firing, silent), (silent, firing)):
        code, out, err = run("energy-report", *order, "--json")
        assert code == 0, err
        report = json.loads(out)
        v = next(layer for layer in report["layers"] if layer["name"] == "blocks1.0.attn.v_lif")
        assert v["per_step_spikes"] == [1.0, 1.5]  # mean of [2, 3] and the silent [0, 0]
        assert report["activity"]["spikes_per_step"][0] > 0


def test_the_writer_represents_a_silent_neuron_layer_with_zero_spikes():
    layer = schema.layer_record(name="lif", stage="S1", op="neuron", origin=["lif"], input_kind="real",
                                input_neurons=[], dense_macs=0, params=0, per_step={"neuron_updates": [4, 4]},
                                time_steps=2, neurons=4, tau=2.0, v_threshold=1.0)
    assert layer["per_step"]["spikes_out"] == [0, 0] and layer["counts"]["spikes_out"] == 0
    assert layer["firing_rate"] == 0.0


def test_energy_report_of_simulated_clips_with_a_silent_layer(tmp_path):
    """Two records as the simulator writes them now, one with every neuron layer silent."""
    rec = synthetic_record("3stg", seed=1, img_size=32, time_steps=2)
    quiet = synthetic_record("3stg", seed=2, img_size=32, time_steps=2)
    layers = []
    for layer in quiet["layers"]:
        steps = dict(layer["per_step"])
        if layer["op"] == "neuron":
            steps["spikes_out"] = [0, 0]
        layers.append(schema.layer_record(
            name=layer["name"], stage=layer["stage"], op=layer["op"], origin=layer["origin"],
            input_kind=layer["input_kind"], input_neurons=layer["input_neurons"], dense_macs=layer["dense_macs"],
            params=layer["params"], per_step=steps, time_steps=2, neurons=layer.get("neurons"),
            tau=layer.get("tau"), v_threshold=layer.get("v_threshold")))
    quiet["layers"] = layers
    quiet["totals"] = schema.assemble_record(layers, time_steps=2, model={}, input={}, executor="float",
                                             prediction={}, timing={}, tool={})["totals"]
    a, b = write_record(tmp_path, "a.json", rec), write_record(tmp_path, "b.json", quiet)
    code, out, err = run("energy-report", a, b, "--json")
    assert code == 0, err
    assert json.loads(out)["clips"] == 2


# ------------------------------------------------------------------------------------------
# g: hostile and malformed files
# ------------------------------------------------------------------------------------------
def _text_with(mutate) -> str:
    rec = hand_record()
    mutate(rec)
    return json.dumps(rec)


HOSTILE = {
    "nested 200,000 deep": '{"format": "svformer-deploy/run-record", "version": 2, "x": ' + "[" * 200_000
                           + "]" * 200_000 + "}",
    "nested only": "[" * 200_000,
    "count of 10^400": json.dumps(hand_record()).replace('"mac": 1000', '"mac": 1' + "0" * 400, 1),
    "count of 10^5000": json.dumps(hand_record()).replace('"mac": 1000', '"mac": 1' + "0" * 5000, 1),
    "NaN literal": json.dumps(hand_record()).replace('"tau": 2.0', '"tau": NaN', 1),
    "Infinity literal": json.dumps(hand_record()).replace('"tau": 2.0', '"tau": Infinity', 1),
    "float overflow": json.dumps(hand_record()).replace('"tau": 2.0', '"tau": 1e400', 1),
    "negative count": _text_with(lambda d: d["layers"][0]["counts"].update(mac=-1)),
    "layers a string": _text_with(lambda d: d.update(layers="abc")),
    "model a list": _text_with(lambda d: d.update(model=[])),
    "input path an object": _text_with(lambda d: d["input"].update(path={"a": 1})),
    "input sha256 a list": _text_with(lambda d: d["input"].update(sha256=[1])),
    "input view a string": _text_with(lambda d: d["input"].update(view="0")),
    "top5 score a string": _text_with(lambda d: d["prediction"].update(top5=[["walk", "high"]])),
    "time_steps a string": _text_with(lambda d: d.update(time_steps="2")),
    "time_steps huge": _text_with(lambda d: d.update(time_steps=10**12)),
    "per_step strings": _text_with(lambda d: d["layers"][0]["per_step"].update(mac=["500", "500"])),
    "layer a number": _text_with(lambda d: d["layers"].append(7)),
    "layer name a list": _text_with(lambda d: d["layers"][0].update(name=["x"])),
    "origin empty": _text_with(lambda d: d["layers"][0].update(origin=[])),
    "weight_bits huge": _text_with(lambda d: d["model"].update(quantized=True, weight_bits=10**30)),
    "empty file": "",
    "binary": "\x00\xff\xfe garbage",
    "truncated": json.dumps(hand_record())[:500],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_record_is_one_error_line(tmp_path, case):
    path = tmp_path / "r.json"
    path.write_bytes(HOSTILE[case].encode("utf-8", "surrogatepass"))
    code, out, err = run("energy-report", path, "--json")
    assert code == 2, (case, code, err)
    assert_report_or_one_error(code, out, err)
    assert "r.json" in err


def test_a_config_too_big_to_be_the_records_model_is_ignored_not_rebuilt(tmp_path):
    rec = synthetic_record("3stg", seed=1, img_size=32, time_steps=2)
    rec["model"]["config"]["depths"] = [10**12, 1, 1]  # rebuilding its layer list would never end
    code, out, err = run("energy-report", write_record(tmp_path, "r.json", rec), "--json")
    assert code == 0, err
    assert json.loads(out)["methods"]["paper_eq13"]["bias_flops_source"] == "none"


def test_records_of_one_model_with_different_time_steps_are_one_error_line(tmp_path):
    a = write_record(tmp_path, "a.json", synthetic_record("3stg", seed=1, img_size=32, time_steps=2))
    b = write_record(tmp_path, "b.json", synthetic_record("3stg", seed=1, img_size=32, time_steps=3))
    code, out, err = run("energy-report", a, b, "--json")
    assert code == 2 and out == "" and "time_steps 3 differs" in err
    assert_report_or_one_error(code, out, err)


@pytest.mark.parametrize("case", ["nested 200,000 deep", "count of 10^5000"])
def test_a_hostile_record_through_the_console_script(tmp_path, case):
    path = tmp_path / "r.json"
    path.write_text(HOSTILE[case])
    assert_one_line_error(run_cli("energy-report", path, "--json"), "corrupt run record")


# ------------------------------------------------------------------------------------------
# 5: bounded fuzz of the loader through the CLI
# ------------------------------------------------------------------------------------------
BASE = synthetic_record("3stg", seed=3, img_size=32, time_steps=2)

nasty = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -1, 0, 2**63, 2**64, float("nan"), float("inf"), -0.0, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(min_value=50, max_value=300).map(lambda n: json.loads("[" * n + "]" * n)),
)


def _paths(doc, prefix=()):
    """Every (container, key) position in ``doc``."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):  # a few list items are enough
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(BASE) if p]


def _mutate(doc: dict, path: tuple, action: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parent, key = path
    target = doc
    for k in parent:
        target = target[k]
    if action == "delete":
        del target[key]
    elif action == "replace":
        target[key] = value
    elif action == "wrap":
        target[key] = [target[key]]
    return doc


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["delete", "replace", "wrap"]), nasty),
                          min_size=1, max_size=3),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4000)))
def test_fuzzed_records_end_in_a_report_or_one_error_line(tmp_path, mutations, cut):
    doc = BASE
    for path, action, value in mutations:
        try:
            doc = _mutate(doc, path, action, value)
        except (KeyError, IndexError, TypeError):
            continue  # the path vanished under an earlier mutation
    text = json.dumps(doc, allow_nan=True)  # NaN / Infinity literals included on purpose
    if cut is not None:
        text = text[:cut]
    path = Path(tmp_path) / "fuzz.json"
    path.write_text(text)
    code, out, err = run("energy-report", path, "--json")
    assert_report_or_one_error(code, out, err)
    if code == 0:
        assert all(math.isfinite(v) for v in json.loads(out)["methods"]["exact"].values()
                   if isinstance(v, float))
