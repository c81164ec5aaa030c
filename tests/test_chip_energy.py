"""The Loihi chip table, placement and fit, and the partition priced part by part (hand-computed bills).

Every expected figure below is worked out by hand from the counts in the record and the published
per-event energies of the ``loihi`` preset (Davies et al. 2018, Table 2): 23.6 pJ per synaptic op, 81 / 52 pJ
per active / inactive neuron update, 1.7 pJ per within-tile spike, 3.0 / 4.0 pJ per E-W / N-S hop; host
parts at fp32 (E_MAC 4.6, E_AC 0.9, E_mul 3.7, E_add 0.9 pJ; a 32-bit memory word 10 pJ).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from energy_fixtures import make_layer, make_record
from svformer_deploy.deploy.energy.chip_bill import bill_record, chip_section
from svformer_deploy.deploy.energy.cost_models import LOIHI, PRESETS, ChipModel, get_chip, load_cost_model_toml
from svformer_deploy.deploy.energy.methods import evaluate_record
from svformer_deploy.deploy.energy.placement import LayerGeometry, place
from svformer_deploy.deploy.energy.records import RunRecord, aggregate, validate_record
from svformer_deploy.simulators.executor import Simulator
from svformer_deploy.simulators.record import build_record
from svformer_deploy.svformer.errors import SVFormerError
from writers_fixtures import chain_graph, event_clips

FP32 = PRESETS["fp32"]
T = 2


def conv_geo(part: int = 0, cin: int = 2, cout: int = 4, hw: int = 8, k: int = 3) -> LayerGeometry:
    return LayerGeometry(part=part, weighted=f"conv{part}", neuron=f"lif{part}", in_shape=(cin, hw, hw),
                         out_shape=(cout, hw, hw), kernel=(k, k), stride=(1, 1), padding=(k // 2, k // 2), groups=1)


def dense_geo(part: int, cin: int, cout: int) -> LayerGeometry:
    return LayerGeometry(part=part, weighted=f"fc{part}", neuron=f"lif{part}", in_shape=(cin, 1, 1),
                         out_shape=(cout, 1, 1), kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1)


def part_record(weighted: str, neuron: str, neurons: int, *, ac: int, spikes_in: int, spikes_out: int,
                active: int, bias_adds: int, version: int = 3) -> RunRecord:
    """input -> [weighted -> neuron] (the core part) -> head linear (a host layer: 40 MACs + 2 bias adds)."""
    layers = [
        make_layer(weighted, "S1", "conv2d", T, ac=ac, add=bias_adds, spikes_in=spikes_in, dense_macs=10 * ac),
        make_layer(neuron, "S1", "neuron", T, neurons=neurons, spikes_out=spikes_out, neurons_active=active),
        make_layer("head", "CH", "linear", T, input_kind="real", mac=40, add=2, dense_macs=40),
    ]
    data = make_record(layers, T=T)
    data["version"] = version
    if version < 3:
        for layer in data["layers"]:
            layer["counts"].pop("neurons_active", None)
            layer["per_step"].pop("neurons_active", None)
        data["totals"].pop("neurons_active", None)
    return RunRecord(Path("hand.json"), validate_record(data, "hand.json"))


HOST_HEAD_PJ = 40 * 4.6 + 2 * 0.9  # the head linear at fp32 exact


# ---------------------------------------------------------------------------------------------
# the chip table and its TOML form
# ---------------------------------------------------------------------------------------------
def test_loihi_preset_carries_the_published_table_and_a_source_for_every_figure():
    assert LOIHI.energy_pj == {"synaptic_op": 23.6, "neuron_update_active": 81.0, "neuron_update_inactive": 52.0,
                               "spike_within_tile": 1.7, "hop_east_west": 3.0, "hop_north_south": 4.0}
    assert LOIHI.time_ns["barrier_sync_one_tile"] == 113.0 and LOIHI.time_ns["barrier_sync_all_tiles"] == 465.0
    assert LOIHI.limits["cores_per_chip"] == 128 and LOIHI.limits["compartments_per_core"] == 1024
    assert LOIHI.limits["synaptic_memory_bytes_per_core"] == 128 * 1024
    for table in ("energy_pj", "time_ns", "limits"):
        for key in getattr(LOIHI, table):
            assert f"{table}.{key}" in LOIHI.provenance, key
    assert any("barrier" in g for g in LOIHI.gaps)  # no published barrier energy: a documented gap, not a number


def test_chip_toml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "loihi.toml"
    path.write_text(LOIHI.to_toml())
    assert load_cost_model_toml(path) == LOIHI
    assert get_chip(path) == LOIHI
    mine = tmp_path / "mychip.toml"
    mine.write_text('kind = "chip"\nbase = "loihi"\nhost = "int8"\n[energy_pj]\nsynaptic_op = 10.0\n'
                    "[limits]\ncores_per_tile = 1\nmesh_tiles_x = 16\nmesh_tiles_y = 8\n")
    chip = get_chip(mine)
    assert chip.name == "mychip" and chip.host == "int8" and chip.host_model() is PRESETS["int8"]
    assert chip.energy_pj == {**LOIHI.energy_pj, "synaptic_op": 10.0}
    assert chip.limits["cores_per_tile"] == 1 and chip.time_ns == LOIHI.time_ns
    again = tmp_path / "again.toml"
    again.write_text(chip.to_toml())
    assert load_cost_model_toml(again) == replace(chip, name="mychip")


@pytest.mark.parametrize("text, fragment", [
    ('kind = "chip"\nname = "x"\n[energy_pj]\nsynaptic_op = 1.0\n', "chip table [time_ns] is missing"),
    ('kind = "chip"\nbase = "loihi"\n[energy_pj]\nsynaptic_op = -1.0\n', "energy_pj.synaptic_op must be a finite"),
    ('kind = "chip"\nbase = "loihi"\n[limits]\ncores_per_tile = 3\n', "cores_per_tile x mesh_tiles_x"),
    ('kind = "chip"\nbase = "loihi"\n[energy_pj]\nteleport = 1.0\n', "unknown teleport"),
    ('kind = "chip"\nbase = "loihi"\nclock_ghz = 1.0\n', "unknown chip key(s) clock_ghz"),
    ('kind = "chip"\nbase = "truenorth"\n', "is not a chip preset"),
    ('kind = "gpu"\n', "kind must be"),
    ('kind = "chip"\nbase = "loihi"\n[limits]\ncompartments_per_core = 1.5\n', "must be an integer"),
    ('kind = "chip"\nbase = "loihi\n', "not a valid TOML"),
])
def test_a_bad_chip_toml_gives_one_error_line(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    proc = run_cli("energy-report", str(tmp_path / "no-records"), "--cost-model", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "bad.toml", fragment)


def test_fit_refuses_a_45nm_model_as_a_chip(tmp_path):
    proc = run_cli("fit", str(tmp_path), "--chip", "fp32", cwd=tmp_path)
    assert_one_line_error(proc, "is a 45 nm cost model, not a chip table")


# ---------------------------------------------------------------------------------------------
# placement and fit
# ---------------------------------------------------------------------------------------------
def test_placement_respects_every_per_core_limit():
    geos = [conv_geo(0, 2, 16, 32), replace(conv_geo(0, 16, 32, 32), weighted="conv0b", neuron="lif0b"),
            dense_geo(1, 1000, 3000), conv_geo(2, 64, 64, 16), dense_geo(3, 4000, 10)]
    for bits in (1, 4, 8, 9):
        p = place(geos, LOIHI, bits)
        lim = LOIHI.limits
        assert p.fits, p.problems
        by_part: dict[int, list] = {}
        for lp in p.layers:
            by_part.setdefault(lp.part, []).append(lp)
        for layers in by_part.values():
            for i, lp in enumerate(layers):
                geo = next(g for g in geos if g.neuron == lp.neuron)
                n = lp.neurons_per_core
                if i + 1 < len(layers):
                    nxt_geo = next(g for g in geos if g.neuron == layers[i + 1].neuron)
                    nxt = nxt_geo.destinations(layers[i + 1].neurons_per_core, layers[i + 1].cores)
                else:
                    nxt = 1
                assert n <= lim["compartments_per_core"]
                assert n * geo.fan_in * bits <= lim["synaptic_memory_bytes_per_core"] * 8
                assert geo.input_axons(n) <= lim["fan_in_axons_per_core"]
                assert n * nxt <= lim["fan_out_edges_per_core"]
                assert lp.cores == math.ceil(lp.neurons / n)
        assert [lp.first_core for lp in p.layers] == [sum(x.cores for x in p.layers[:i]) for i in range(len(p.layers))]
        assert p.chips == math.ceil(p.cores / 128)


def test_limits_that_cannot_hold_make_the_fit_fail_with_the_reason():
    p = place([dense_geo(0, 5000, 10)], LOIHI, 8)  # one neuron reads 5000 input axons > 4096
    assert not p.fits and "fan-in axons" in p.problems[0] and p.layers[0].broken == ["fan-in axons"]
    p = place([conv_geo(0, 2, 4, 8)], LOIHI, 12)
    assert not p.fits and "12 bits are wider than the chip's 9" in p.problems[0]
    mem = place([dense_geo(0, 4000, 100)], LOIHI, 8)  # 4000 B per neuron: 32 neurons per core by memory
    assert mem.fits and mem.layers[0].neurons_per_core == 32 and mem.layers[0].limited_by == "synaptic memory"
    assert mem.layers[0].cores == 4


# ---------------------------------------------------------------------------------------------
# hand-computed bills
# ---------------------------------------------------------------------------------------------
def test_bill_of_one_conv_part():
    geo = conv_geo()  # 4 x 8 x 8 = 256 neurons, fan-in 18: one core, core 0 (the host interface's tile)
    p = place([geo], LOIHI, 8)
    assert (p.cores, p.tiles, p.layers[0].fan_in) == (1, 1, 18)
    rec = part_record("conv0", "lif0", 256, ac=1000, spikes_in=100, spikes_out=50, active=300, bias_adds=512)
    bill = bill_record(rec, p, LOIHI, FP32)
    t = bill["terms_pj"]
    assert t["core_synaptic"] == pytest.approx(1000 * 23.6)
    assert t["core_neuron_active"] == pytest.approx(300 * 81)
    assert t["core_neuron_inactive"] == pytest.approx((512 - 300) * 52)
    assert t["core_routing"] == pytest.approx((100 + 50) * 1.7)  # in and out within tile 0
    assert t["host"] == pytest.approx(HOST_HEAD_PJ)
    assert t["boundary_io"] == pytest.approx((100 + 50) * 10.0)
    assert bill["total_pj"] == pytest.approx(23600 + 24300 + 11024 + 255 + HOST_HEAD_PJ + 1500)
    # chip time: 2 steps, each: 500 syn ops x 3.5 + 256 neurons x (150/256 x 8.4 + 106/256 x 5.3) + route 2.1 + 113
    step = 500 * 3.5 + 150 * 8.4 + 106 * 5.3 + 2.1 + 113
    assert bill["chip_time_ns"] == pytest.approx(2 * step)


def test_bill_of_one_dense_part_and_the_version_2_upper_bound():
    geo = dense_geo(0, 300, 100)  # 100 neurons, fan-in 300 -> 30,000 B at 8 bits: one core
    p = place([geo], LOIHI, 8)
    assert p.cores == 1 and p.layers[0].synapse_bytes == 30_000
    rec = part_record("fc0", "lif0", 100, ac=900, spikes_in=30, spikes_out=12, active=150, bias_adds=200)
    bill = bill_record(rec, p, LOIHI, FP32)
    assert bill["terms_pj"]["core_synaptic"] == pytest.approx(900 * 23.6)
    assert bill["terms_pj"]["core_neuron_active"] + bill["terms_pj"]["core_neuron_inactive"] == pytest.approx(
        150 * 81 + 50 * 52)
    old = part_record("fc0", "lif0", 100, ac=900, spikes_in=30, spikes_out=12, active=150, bias_adds=200, version=2)
    bill2 = bill_record(old, p, LOIHI, FP32)
    assert bill2["terms_pj"]["core_neuron_active"] == pytest.approx(200 * 81)  # every update priced active
    assert bill2["terms_pj"]["core_neuron_inactive"] == 0 and not bill2["active_counted"]


def test_bill_of_a_part_that_needs_two_cores_counts_the_hops(tmp_path):
    mine = tmp_path / "onepertile.toml"  # one core per tile, so core 1 is one E-W hop from the host interface
    mine.write_text('kind = "chip"\nbase = "loihi"\n[limits]\ncores_per_tile = 1\nmesh_tiles_x = 16\n'
                    "mesh_tiles_y = 8\n")
    chip = get_chip(mine)
    geo = dense_geo(0, 64, 1500)  # 1500 neurons > 1024 compartments: 1024 on core 0, 476 on core 1
    p = place([geo], chip, 8)
    lp = p.layers[0]
    assert (lp.cores, lp.neurons_per_core, lp.limited_by, p.tiles) == (2, 1024, "compartments", 2)
    assert lp.input_messages_per_spike == 2 and lp.input_ew_hops_per_spike == 1  # host -> cores 0 and 1
    assert lp.within_tile_per_spike == pytest.approx(1024 / 1500)
    assert lp.ew_hops_per_spike == pytest.approx(476 / 1500)
    rec = part_record("fc0", "lif0", 1500, ac=6000, spikes_in=40, spikes_out=300, active=3000, bias_adds=3000)
    bill = bill_record(rec, p, chip, FP32)
    routing_in = 40 * (1.7 + 3.0)  # each input spike: one message within tile 0, one over 1 E-W hop to core 1
    routing_out = 300 * (1024 / 1500 * 1.7 + 476 / 1500 * 3.0)
    assert bill["terms_pj"]["core_routing"] == pytest.approx(routing_in + routing_out)
    assert bill["terms_pj"]["core_neuron_active"] == pytest.approx(3000 * 81)
    assert bill["counts"]["ew_hops"] == pytest.approx(40 + 300 * 476 / 1500)
    # barrier: two tiles -> the all-tiles figure; longest route 4.1 ns (one E-W hop)
    step = 3000 * (1024 / 1500) * 3.5 + 1024 * 8.4 + 4.1 + 465
    assert bill["chip_time_ns"] == pytest.approx(2 * step)


def test_report_section_splits_the_bill_and_reconciles_it_with_the_pure_45nm_methods():
    p = place([conv_geo()], LOIHI, 8)
    recs = [part_record("conv0", "lif0", 256, ac=1000 + 100 * i, spikes_in=100, spikes_out=50, active=300,
                        bias_adds=512) for i in range(2)]
    report = aggregate(recs, FP32)
    methods = {m: report["methods"][m]["energy_mj"] for m in ("exact", "paper_eq13", "memory_aware")}
    sec = chip_section(recs, [evaluate_record(r, FP32) for r in recs], p, LOIHI, FP32, methods)
    assert sec["energy_mj"]["core_synaptic"] == pytest.approx(1050 * 23.6 / 1e9)
    assert sec["energy_mj"]["total"] == pytest.approx(sum(v for k, v in sec["energy_mj"].items() if k != "total"))
    # the host layer costs the same in the chip bill and in the pure 45 nm exact method
    core45 = sec["core_parts"]["exact_45nm_mj"]
    assert core45 + sec["energy_mj"]["host"] == pytest.approx(methods["exact"])
    assert "23.6 pJ" in sec["reconciliation"][2] and "26.2x" in sec["reconciliation"][2]


def test_a_record_of_another_model_is_refused():
    p = place([conv_geo()], LOIHI, 8)
    rec = part_record("convX", "lifX", 256, ac=10, spikes_in=1, spikes_out=1, active=1, bias_adds=1)
    with pytest.raises(SVFormerError, match="not of the same model"):
        bill_record(rec, p, LOIHI, FP32)


# ---------------------------------------------------------------------------------------------
# the record count the chip needs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_simulator_counts_active_neurons_as_non_zero_inputs(bias):
    g = chain_graph(time_steps=5, bias=bias)
    sim = Simulator(g)
    x = event_clips(g, 1)[:, 0]
    res = sim.run(x, record_values=True)
    rec = build_record(sim, res, model={"hash": "h"}, input={"kind": "tensor"})
    by = {layer["name"]: layer for layer in rec["layers"]}
    for neuron, source in (("lif1", "conv1"), ("lif2", "conv2")):
        expected = [int(torch.count_nonzero(res.values[source][t])) for t in range(5)]
        assert by[neuron]["per_step"].get("neurons_active", [0] * 5) == expected
        if bias:
            assert expected == by[neuron]["per_step"]["neuron_updates"]
    assert rec["version"] == 3
    validate_record(rec, "sim.json")


def test_chip_model_checks_its_own_numbers():
    with pytest.raises(SVFormerError, match="barrier_sync_one_tile is above"):
        ChipModel(**{**LOIHI.__dict__, "time_ns": {**LOIHI.time_ns, "barrier_sync_one_tile": 999.0}})


# ---------------------------------------------------------------------------------------------
# the HTML page shows the split (headless Chromium)
# ---------------------------------------------------------------------------------------------
def test_html_page_shows_the_chip_split_in_headless_chromium(tmp_path):
    import html as _html
    import json
    import re

    import numpy as np
    from PIL import Image
    from svformer_deploy.deploy.energy.html import PLOTS, write_html
    from test_energy_html import WIDTH, _browser, _chromium

    browser = _browser()
    p = place([conv_geo()], LOIHI, 8)
    recs = [part_record("conv0", "lif0", 256, ac=1000, spikes_in=100, spikes_out=50, active=300, bias_adds=512)]
    report = aggregate(recs, FP32)
    methods = {m: report["methods"][m]["energy_mj"] for m in ("exact", "paper_eq13", "memory_aware")}
    report["chip"] = chip_section(recs, [evaluate_record(r, FP32) for r in recs], p, LOIHI, FP32, methods)
    page = write_html(report, tmp_path / "report")
    text = page.read_text()
    section = re.search(r'<section id="chip-split">(.*?)</section>', text, re.S)
    assert section, "no chip split section"
    total = f"{report['chip']['energy_mj']['total']:.6g}"
    assert total in section.group(1) and "core parts: synaptic ops x E_syn" in section.group(1)
    assert "Why the loihi bill differs from the pure fp32 methods" in section.group(1)

    url = page.resolve().as_uri()
    dom = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},8000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<p id="plot-status"([^>]*)>', dom.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))
    n = len(PLOTS) + 1  # the split plot comes first
    assert (attrs["data-ok"], attrs["data-total"]) == (str(n), str(n)), attrs
    x, y, w, h = json.loads(_html.unescape(attrs["data-boxes"]))[0]
    height = int(attrs["data-page-height"])
    shot = tmp_path / "page.png"
    proc = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},{height}", f"--screenshot={shot}", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)[y:y + h, x:x + w]
    assert w > 200 and h > 100
    # the stacked bar's colours are on screen: synaptic (blue), active neurons (orange), host (grey)
    for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert (np.abs(img - np.array(rgb)).sum(axis=2) < 30).mean() > 0.002, rgb


def test_energy_report_with_a_chip_needs_the_bundle_and_the_host_option_needs_a_chip(tmp_path):
    from energy_fixtures import write_record

    rec = part_record("conv0", "lif0", 256, ac=10, spikes_in=1, spikes_out=1, active=1, bias_adds=1)
    write_record(tmp_path / "runs", "r.json", rec.data)
    proc = run_cli("energy-report", "runs", "--cost-model", "loihi", cwd=tmp_path)
    assert_one_line_error(proc, "the chip bill needs the model's bundle", "/models/m.svfd")
    proc = run_cli("energy-report", "runs", "--host-cost-model", "int8", cwd=tmp_path)
    assert_one_line_error(proc, "--host-cost-model goes with a chip cost model")
    proc = run_cli("energy-report", "runs", "--cost-model", "loihi", "--host-cost-model", "loihi", cwd=tmp_path)
    assert_one_line_error(proc, "a chip cannot be the host model")


def test_export_fit_and_energy_report_on_a_real_bundle_agree(tmp_path):
    """A tiny plain-BN model end to end: the export summary's fit line, `fit --json`, and the chip bill of a
    simulated clip, whose host parts cost what the pure fp32 exact method charges for them."""
    import json

    from fixtures_models import make_model
    from svformer_deploy.export.bundle import load_bundle
    from svformer_deploy.simulators.record import write_records
    from svformer_deploy.svformer.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "tiny.pt", make_model("3stg", time_steps=2, norm="bn"))
    proc = run_cli("export", str(ckpt), "-o", "tiny.svfd", "--check-clips", "0", "--targets", "nir", "--quiet",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fit_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("fit"))
    proc = run_cli("fit", "tiny.svfd", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fit = json.loads(proc.stdout)
    assert fit["cores"] > 0 and fit["fits"] and f"{fit['cores']} cores on {fit['chips']} chip(s)" in fit_line

    bundle = load_bundle(tmp_path / "tiny.svfd")
    g = bundle.graph("ir")
    sim = Simulator(g)
    torch.manual_seed(0)
    x = torch.poisson(torch.full((2, *ir_input_shape(g)), 0.5))
    rec = build_record(sim, sim.run(x), model={"hash": bundle.model_hash, "bundle": str(bundle.path)},
                       input={"kind": "tensor"})
    write_records([rec], tmp_path / "runs", "clip")
    proc = run_cli("energy-report", "runs", "--cost-model", "loihi", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chip = json.loads(proc.stdout)["chip"]
    e = chip["energy_mj"]
    assert e["total"] == pytest.approx(sum(v for k, v in e.items() if k != "total"))
    assert e["core_synaptic"] > 0 and e["core_routing"] > 0 and e["boundary_io"] > 0
    assert chip["core_parts"]["exact_45nm_mj"] + e["host"] == pytest.approx(chip["pure_45nm_mj"]["exact"])
    assert chip["placement"]["cores"] == fit["cores"]
    assert e["core_synaptic"] == pytest.approx(chip["counts"]["synaptic_ops"] * 23.6e-9)


def ir_input_shape(g) -> tuple[int, ...]:
    from svformer_deploy.export import ir

    return tuple(ir.spec(g, ir.input_node(g)).shape)


def test_axon_and_destination_bounds_by_hand():
    # 1x1 conv 128 -> 512 channels at 56 x 56, position-major: 1024 neurons cover 2 positions (+1 partial) of one
    # row segment: 2 input rows (one per possibly touched output row) x 4 columns x 128 channels
    pw = LayerGeometry(part=0, weighted="pw", neuron="n", in_shape=(128, 56, 56), out_shape=(512, 56, 56),
                       kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1)
    assert pw.input_axons(1024) == 128 * 2 * 4
    # 3x3 conv, 64 channels: an input position feeds 3 output rows x 3 positions; a row segment of 3 x 64 neurons
    # spans at most ceil(192 / 512) + 1 = 2 cores of 512 neurons -> 6 destination cores (of 100)
    c3 = conv_geo(0, 64, 64, 56)
    assert c3.destinations(512, 100) == 6
    assert dense_geo(0, 10, 3000).destinations(1024, 3) == 3  # a dense layer: every core
    # depthwise: only the touched channels' groups are read
    dw = LayerGeometry(part=0, weighted="dw", neuron="n", in_shape=(64, 8, 8), out_shape=(64, 8, 8),
                       kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
    # 10 neurons: 2 positions, 2 output rows -> 4 input rows, (2 - 1) + 2 x 3 = 7 columns, at most 11 groups
    assert dw.input_axons(10) == 11 * 4 * 7
