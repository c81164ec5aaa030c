"""`svformer-deploy energy-report` through the installed console script: outputs and the error contract."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import assert_one_line_error, run_cli
from energy_fixtures import HAND, HASH_B, hand_record, synthetic_record, write_record


@pytest.fixture()
def runs_dir(tmp_path):
    write_record(tmp_path, "runs/clip0.json", hand_record())
    return tmp_path


def test_json_follows_the_contract_and_stdout_holds_only_it(runs_dir):
    proc = run_cli("energy-report", "--json", cwd=runs_dir)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    cm = rep["cost_model"]
    assert (cm["name"], cm["e_mac_pj"], cm["e_ac_pj"]) == ("fp32", 4.6, 0.9)
    assert isinstance(rep["clips"], int) and rep["clips"] == 1
    for m in ("exact", "paper_eq13", "memory_aware"):
        assert {"ac", "mac", "energy_mj"} <= set(rep["methods"][m])
    assert math.isclose(rep["methods"]["exact"]["energy_mj"], HAND["exact_pj"] / 1e9, rel_tol=1e-12)
    assert math.isclose(rep["methods"]["paper_eq13"]["energy_mj"], HAND["paper_pj"] / 1e9, rel_tol=1e-12)
    assert rep["ann_counterpart"]["macs"] == HAND["ann_macs"] and "energy_mj" in rep["ann_counterpart"]
    assert rep["methods"]["exact"]["ac"] == HAND["ac"] and rep["methods"]["exact"]["mac"] == HAND["mac"]
    names = [layer["name"] for layer in rep["layers"]]
    assert names[0] == "patch_embed1.proj" and len(names) == 13
    for layer in rep["layers"]:
        assert {"name", "firing_rate", "ac", "mac", "energy_pj"} <= set(layer)
    assert rep["layers"][2]["firing_rate"] == 0.25


def test_terminal_shows_totals_then_stages_then_layers_naming_the_cost_model(runs_dir):
    proc = run_cli("energy-report", "--cost-model", "int8", cwd=runs_dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    i_tot, i_stage, i_layer = out.index("Totals per clip"), out.index("Per stage"), out.index("Per layer")
    assert i_tot < i_stage < i_layer
    assert "cost model int8" in out and "[cost model int8]" in out[i_tot:i_stage]
    assert "paper_eq13" in out and "ANN counterpart" in out and "unfused_cascade" in out


def test_csv_markdown_and_html_are_written(runs_dir):
    write_record(runs_dir, "more/clip1.json", hand_record(input_path="/c/1.mp4", label="run"))
    write_record(runs_dir, "more/clip2.json", hand_record(input_path="/c/2.mp4", label="walk"))
    proc = run_cli("energy-report", "more", "--csv", "out/r.csv", "--markdown", "out/r.md", "--html", "out/html",
                   cwd=runs_dir)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((runs_dir / "out/r.csv").open()))
    sections = {r["section"] for r in rows}
    assert sections == {"total", "stage", "layer", "clip"}
    assert all(r["cost_model"] == "fp32" for r in rows)
    total = next(r for r in rows if r["section"] == "total")
    assert math.isclose(float(total["energy_pj_exact"]), HAND["exact_pj"], rel_tol=1e-9)
    assert {r["class"] for r in rows if r["section"] == "clip"} == {"run", "walk"}
    md = (runs_dir / "out/r.md").read_text()
    assert md.startswith("# SVFormer energy report") and "[cost model fp32]" in md and "| exact |" in md
    assert "Per class" in md
    page = (runs_dir / "out/html/index.html").read_text()
    assert page.count("<img ") == 6 and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "wrote HTML report" in proc.stdout


def test_a_toml_cost_model_is_named_in_the_report(runs_dir):
    (runs_dir / "chip.toml").write_text('base = "fp16"\nname = "my-chip"\ne_ac_pj = 0.1\n')
    proc = run_cli("energy-report", "--cost-model", "chip.toml", "--json", cwd=runs_dir)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["cost_model"]["name"] == "my-chip" and rep["cost_model"]["e_ac_pj"] == 0.1
    assert math.isclose(rep["methods"]["paper_eq13"]["energy_mj"] * 1e9, 0.1 * 763 + 1.5 * 1040)


def test_skipped_corrupt_records_in_a_folder_are_reported_on_stderr(runs_dir):
    (runs_dir / "runs" / "broken.json").write_text("{")
    proc = run_cli("energy-report", "runs", "--json", cwd=runs_dir)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 corrupt run record(s)" in proc.stderr and "broken.json" in proc.stderr
    assert json.loads(proc.stdout)["skipped"][0]["path"].endswith("broken.json")


# --- bad input: one error line, exit 2 ------------------------------------------------------
def test_no_run_records_is_one_error_line(tmp_path):
    assert_one_line_error(run_cli("energy-report", cwd=tmp_path), "no run records")


def test_records_from_different_models_is_one_error_line(tmp_path):
    write_record(tmp_path, "runs/a.json", hand_record())
    write_record(tmp_path, "runs/b.json", hand_record(model_hash=HASH_B))
    assert_one_line_error(run_cli("energy-report", "runs", cwd=tmp_path), "different models")


def test_corrupt_record_is_one_error_line_naming_the_file(tmp_path):
    rec = synthetic_record("3stg", seed=0, img_size=32, time_steps=2)
    rec["layers"][5]["counts"]["ac"] = -3
    write_record(tmp_path, "runs/clip.json", rec)
    assert_one_line_error(run_cli("energy-report", cwd=tmp_path), "clip.json", "corrupt run record")


@pytest.mark.parametrize(("spec", "toml", "fragment"), [
    ("fp64", None, "unknown cost model 'fp64'"),
    ("bad.toml", "e_mac_pj = [", "not a valid TOML"),
    ("bad.toml", 'base = "fp32"\nspeed = 3\n', "unknown cost model key(s) speed"),
    ("bad.toml", 'base = "fp32"\ne_ac_pj = -1\n', "e_ac_pj must be a finite number >= 0"),
])
def test_unknown_or_bad_cost_model_is_one_error_line(runs_dir, spec, toml, fragment):
    if toml is not None:
        (runs_dir / spec).write_text(toml)
    assert_one_line_error(run_cli("energy-report", "--cost-model", spec, cwd=runs_dir), fragment)
