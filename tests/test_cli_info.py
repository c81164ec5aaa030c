"""`svformer-deploy info` and the CLI error contract, through the installed console script."""

from __future__ import annotations

import json
import pickle

import torch
from conftest import assert_one_line_error, run_cli
from svformer_deploy.svformer.checkpoint import save_checkpoint
from svformer_deploy.svformer.variants import create_model


def test_info_base_json_reports_params_and_stage_macs():
    proc = run_cli("info", "--arch", "base", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # stdout holds exactly one JSON document
    assert info["params"] == 13_801_612
    assert info["time_steps"] == 16 and info["input_shape"] == [1, 3, 16, 224, 224]
    stages = info["dense_macs_by_stage"]
    assert list(stages) == ["PE1", "S1", "PE2", "S2", "PE3", "LP", "S3", "PE4", "S4", "CH"]
    assert stages["PE1"] == 693_633_024
    assert sum(stages.values()) == info["dense_macs"]
    assert info["neuron_layers"] == 39


def test_info_text_shows_layers_and_stage_table():
    proc = run_cli("info", "--arch", "3stg")
    assert proc.returncode == 0, proc.stderr
    assert "1,879,974" in proc.stdout
    assert "blocks2.1.attn.kv" in proc.stdout and "dense MACs" in proc.stdout


def test_info_reads_a_checkpoint(tmp_path):
    model = create_model("3stg", img_size=32, time_steps=2, num_classes=4)
    save_checkpoint(tmp_path / "m.pt", model, class_names=list("abcd"))
    proc = run_cli("info", tmp_path / "m.pt", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["class_names"] == list("abcd") and info["params"] == sum(p.numel() for p in model.parameters())


def test_unknown_arch_is_one_error_line():
    assert_one_line_error(run_cli("info", "--arch", "gigantic"), "unknown architecture")


def test_missing_checkpoint_is_one_error_line(tmp_path):
    assert_one_line_error(run_cli("info", tmp_path / "nope.pt"), "nope.pt")


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_malicious_pickle_is_refused_through_the_cli(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(_Evil(), f)
    assert_one_line_error(run_cli("info", "evil.pt", cwd=tmp_path), "refused")
    assert not (tmp_path / "PWNED").exists()


def test_mismatched_state_dict_through_the_cli(tmp_path):
    sd = create_model("3stg", img_size=32, time_steps=2).state_dict()
    torch.save(sd, tmp_path / "sd.pt")
    proc = run_cli("info", tmp_path / "sd.pt", "--arch", "3stg")  # built for 128x128, T=16: shapes differ
    assert_one_line_error(proc, "does not fit", "wrong shapes", "patch_embed1.norm.weight [128] (model [1024])")


def test_debug_flag_shows_the_traceback():
    proc = run_cli("info", "--arch", "gigantic", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_usage_error_exits_2():
    proc = run_cli("info")
    assert proc.returncode == 2 and proc.stderr.startswith("error:")
