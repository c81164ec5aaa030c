"""Finding, validating and combining run records (files, folders, the newest under ./runs)."""

from __future__ import annotations

import copy
import os

import pytest
from energy_fixtures import HASH_B, hand_record, synthetic_record, write_record
from svformer_deploy.deploy.energy.cost_models import PRESETS
from svformer_deploy.deploy.energy.records import (
    aggregate,
    collect_records,
    newest_record,
    read_record,
    validate_record,
)
from svformer_deploy.svformer.errors import SVFormerError


def _broken(mutate) -> dict:
    data = copy.deepcopy(hand_record())
    mutate(data)
    return data


@pytest.mark.parametrize(("mutate", "fragment"), [
    (lambda d: d.update(format="something/else"), "format is 'something/else'"),
    (lambda d: d.update(version=4), "unsupported version 4"),
    (lambda d: d["layers"][0].pop("origin"), "origin is missing"),
    (lambda d: d["layers"][0].update(stage="blocks1"), "stage must be PE<i>, S<i>, LP or CH"),
    (lambda d: d["model"].pop("hash"), "model.hash is missing"),
    (lambda d: d.update(time_steps=0), "time_steps must be a positive integer"),
    (lambda d: d.update(layers=[]), "layers is missing or empty"),
    (lambda d: d["layers"][0]["counts"].update(mac=-1), "counts.mac must be a non-negative integer"),
    (lambda d: d["layers"][0]["counts"].update(mac=1.5), "counts.mac must be a non-negative integer"),
    (lambda d: d["layers"][0]["counts"].update(flops=3), "unknown counter 'flops'"),
    (lambda d: d["layers"][0].pop("dense_macs"), "dense_macs is missing"),
    (lambda d: d["layers"][3].update(input_neurons=["nope"]), "are not neuron layers"),
    (lambda d: d["layers"][2].update(firing_rate=0.9), "does not match spikes_out"),
    (lambda d: d["layers"][2].update(firing_rate=float("nan")), "firing_rate must be a number in [0, 1]"),
    (lambda d: d["layers"][2]["per_step"].update(spikes_out=[1, 2, 3]), "per_step.spikes_out must be 2"),
    (lambda d: d["layers"][2]["per_step"].update(spikes_out=[1, 2]), "per_step.spikes_out sums to 3"),
    (lambda d: d["layers"][1].update(name=d["layers"][0]["name"]), "duplicate layer name"),
    (lambda d: d["totals"].update(ac=1), "totals.ac is 1 but the layers sum to 726"),
    (lambda d: d["layers"][0].update(input_kind="analog"), "input_kind must be"),
])
def test_corrupt_records_are_refused_with_the_file_and_the_reason(mutate, fragment):
    with pytest.raises(SVFormerError) as e:
        validate_record(_broken(mutate), "clip7.json")
    assert "clip7.json: corrupt run record" in str(e.value) and fragment in str(e.value)


def test_unreadable_json_names_the_file(tmp_path):
    p = tmp_path / "half.json"
    p.write_text('{"format": "svformer-deploy/run-record", "layers": [')
    with pytest.raises(SVFormerError, match=r"half\.json: corrupt run record: invalid JSON"):
        read_record(p)


def test_folder_aggregation_skips_corrupt_records_and_ignores_other_json(tmp_path):
    write_record(tmp_path, "runs/a.json", hand_record())
    write_record(tmp_path, "runs/sub/b.json", hand_record(input_path="/c/b.mp4"))
    write_record(tmp_path, "runs/bad.json", _broken(lambda d: d["layers"][0]["counts"].update(mac=-5)))
    (tmp_path / "runs" / "trunc.json").write_text("{")
    write_record(tmp_path, "runs/manifest.json", {"format": "svformer-deploy/bundle", "files": {}})
    records, skipped = collect_records([tmp_path / "runs"])
    assert sorted(r.path.name for r in records) == ["a.json", "b.json"]
    assert sorted(os.path.basename(s["path"]) for s in skipped) == ["bad.json", "trunc.json"]
    report = aggregate(records, PRESETS["fp32"], skipped)
    assert report["clips"] == 2 and len(report["skipped"]) == 2


def test_a_folder_of_only_corrupt_records_is_an_error(tmp_path):
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(SVFormerError, match="no valid run records in this folder"):
        collect_records([tmp_path])


def test_an_explicit_corrupt_file_is_an_error(tmp_path):
    p = write_record(tmp_path, "bad.json", _broken(lambda d: d.update(version=9)))
    with pytest.raises(SVFormerError, match="bad.json: corrupt run record: unsupported version 9"):
        collect_records([p])


def test_records_of_different_models_are_refused(tmp_path):
    a = write_record(tmp_path, "a.json", hand_record())
    b = write_record(tmp_path, "b.json", hand_record(model_hash=HASH_B))
    records, _ = collect_records([a, b])
    with pytest.raises(SVFormerError, match="different models"):
        aggregate(records, PRESETS["fp32"])


def test_records_of_different_executors_are_refused(tmp_path):
    a = write_record(tmp_path, "a.json", hand_record())
    b = write_record(tmp_path, "b.json", hand_record(executor="integer"))
    with pytest.raises(SVFormerError, match="mix executors"):
        aggregate(collect_records([a, b])[0], PRESETS["fp32"])


def test_without_arguments_the_newest_record_under_runs_is_used(tmp_path):
    old = write_record(tmp_path, "runs/old.json", synthetic_record("3stg", seed=1, img_size=32, time_steps=2))
    new = write_record(tmp_path, "runs/new.json", synthetic_record("3stg", seed=2, img_size=32, time_steps=2))
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    assert newest_record(tmp_path).path.name == "new.json"
    records, skipped = collect_records([], cwd=tmp_path)
    assert [r.path.name for r in records] == ["new.json"] and skipped == []


def test_no_runs_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SVFormerError, match="no run records found in .*runs"):
        collect_records([], cwd=tmp_path)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(SVFormerError, match="no such run record file or folder"):
        collect_records([tmp_path / "nope.json"])
