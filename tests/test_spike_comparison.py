"""The one spike comparison (export.fidelity.SpikeTally / compare_spikes): flips, rates, precision,
recall, agreement and the first divergence, per layer and in total."""

from __future__ import annotations

import pytest
import torch
from fixtures_models import make_input, make_model, single_thread  # noqa: F401
from svformer_deploy.export.fidelity import SpikeTally, compare, compare_spikes, first_divergence
from svformer_deploy.export.pipeline import run_pipeline
from svformer_deploy.svformer.errors import SVFormerError


def test_counts_rates_precision_recall_and_first_divergence_by_hand() -> None:
    T = 4
    ref = {"a": torch.zeros(T, 5), "b": torch.zeros(T, 5)}
    new = {"a": torch.zeros(T, 5), "b": torch.zeros(T, 5)}
    ref["a"][0, :4] = 1
    new["a"][0, :3] = 1  # a: 4 reference spikes, 3 matched, 1 missed at step 0 ...
    new["a"][2, 4] = 1  # ... and 1 extra at step 2
    ref["b"][1, 0] = new["b"][1, 0] = 1
    new["b"][1, 1] = 1  # b: 1 matched, 1 extra at step 1
    got = compare_spikes(ref, new)
    a, b = got["layers"]
    assert (a["positions"], a["spikes_ref"], a["spikes_new"], a["flips"], a["matched"]) == (20, 4, 4, 2, 3)
    assert a["precision"] == 0.75 and a["recall"] == 0.75 and a["flip_rate"] == 0.5 and a["agreement"] == 0.9
    assert a["first_step"] == 0 and b["first_step"] == 1
    assert b["precision"] == 0.5 and b["recall"] == 1.0
    assert (got["flips"], got["spikes_ref"], got["spikes_new"]) == (3, 5, 6)
    assert got["precision"] == 4 / 6 and got["recall"] == 4 / 5 and got["spike_agreement"] == 1 - 3 / 40
    assert got["first_divergence"] == {"layer": "a", "step": 0}


def test_first_divergence_is_the_earliest_step_then_the_first_layer_in_network_order() -> None:
    tally = SpikeTally()
    late, early = torch.zeros(3, 2), torch.zeros(3, 2)
    late[2, 0], early[1, 1] = 1, 1
    tally.add("first", torch.zeros(3, 2), late)
    tally.add("second", torch.zeros(3, 2), early)
    tally.add("third", torch.zeros(3, 2), early)
    assert compare_spikes({}, {})["first_divergence"] is None
    assert first_divergence(tally.layers) == {"layer": "second", "step": 1}
    tally.add("first", torch.zeros(3, 2), early)  # more clips: the layer's first step is the earliest seen
    assert first_divergence(tally.layers) == {"layer": "first", "step": 1}


def test_identical_runs_have_no_divergence_and_full_scores() -> None:
    x = (torch.rand(5, 3, 7) > 0.7).float()
    got = compare_spikes({"l": x}, {"l": x.clone()})
    assert got["flips"] == 0 and got["first_divergence"] is None
    assert got["precision"] == got["recall"] == got["spike_agreement"] == 1.0


def test_mismatching_shapes_are_refused() -> None:
    with pytest.raises(SVFormerError, match="spike shapes differ"):
        SpikeTally().add("l", torch.zeros(2, 3), torch.zeros(3, 2))


def test_fidelity_report_carries_the_new_fields_and_keeps_the_old_ones() -> None:
    model = make_model("3stg", img_size=32, time_steps=3)
    g = run_pipeline(model).graph
    x = make_input(model, batch=2, seed=1)
    rep = compare(model, g, x, torch.float32)
    d = rep.to_dict()
    for key in ("positions", "spikes_ref", "flips", "spike_agreement", "flip_rate", "precision", "recall",
                "first_divergence"):
        assert key in d
    assert d["spikes_ref"] > 0 and d["layers"][0]["recall"] <= 1.0
    assert rep.first_divergence == d["first_divergence"]
