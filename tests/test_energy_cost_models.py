"""Cost models: the Horowitz 2014 presets and user-defined TOML files (validated)."""

from __future__ import annotations

import math

import pytest
from svformer_deploy.deploy.energy.cost_models import PRESETS, get_cost_model, load_cost_model_toml
from svformer_deploy.svformer.errors import SVFormerError


@pytest.mark.parametrize(("name", "mac", "ac", "mul", "add"), [
    ("fp32", 4.6, 0.9, 3.7, 0.9),
    ("fp16", 1.5, 0.4, 1.1, 0.4),
    ("int8", 0.23, 0.03, 0.2, 0.03),
])
def test_presets_hold_horowitz_numbers_and_mac_is_mult_plus_add(name, mac, ac, mul, add):
    cm = get_cost_model(name)
    assert (cm.e_mac_pj, cm.e_ac_pj, cm.e_mul_pj, cm.e_add_pj) == (mac, ac, mul, add)
    assert math.isclose(cm.e_mac_pj, cm.e_mul_pj + cm.e_add_pj)
    assert math.isclose(cm.e_neuron_update_pj, cm.e_mul_pj + cm.e_add_pj)
    assert "Horowitz" in cm.source and cm.name == name


def test_default_is_the_papers_fp32_and_memory_is_priced_per_bit_of_a_word():
    cm = get_cost_model()
    assert cm is PRESETS["fp32"]
    assert cm.e_mem_word_pj(64) == 20.0 and cm.e_mem_word_pj(32) == 10.0 and cm.e_mem_word_pj(8) == 2.5


def test_names_are_case_insensitive_and_unknown_names_are_refused():
    assert get_cost_model("INT8") is PRESETS["int8"]
    with pytest.raises(SVFormerError, match="unknown cost model 'fp64'"):
        get_cost_model("fp64")


def test_toml_cost_model_with_all_numbers(tmp_path):
    p = tmp_path / "chip.toml"
    p.write_text('description = "my chip"\ne_mac_pj = 2.0\ne_ac_pj = 0.5\ne_mul_pj = 1.5\ne_add_pj = 0.5\n'
                 "e_mem_pj_per_64bit = 8\n")
    cm = get_cost_model(str(p))
    assert cm.name == "chip" and cm.description == "my chip"
    assert (cm.e_mac_pj, cm.e_ac_pj, cm.e_mem_pj_per_64bit) == (2.0, 0.5, 8.0)
    assert cm.e_neuron_update_pj == 2.0  # mul + add by default
    assert str(p) in cm.source


def test_toml_cost_model_can_start_from_a_preset(tmp_path):
    p = tmp_path / "cheap_memory.toml"
    p.write_text('base = "int8"\nname = "int8-dram"\ne_mem_pj_per_64bit = 1300\n')
    cm = load_cost_model_toml(p)
    assert cm.name == "int8-dram" and cm.e_mac_pj == 0.23 and cm.e_mem_pj_per_64bit == 1300.0
    assert "e_mem_pj_per_64bit" in cm.source


@pytest.mark.parametrize(("text", "fragment"), [
    ('e_mac_pj = 4.6\ne_ac_pj = 0.9\ne_mul_pj = 3.7\ne_add_pj = 0.9\ne_mem_pj_per_64bit = 20\ne_foo_pj = 1\n',
     "unknown cost model key(s) e_foo_pj"),
    ('e_mac_pj = -4.6\ne_ac_pj = 0.9\ne_mul_pj = 3.7\ne_add_pj = 0.9\ne_mem_pj_per_64bit = 20\n', "e_mac_pj must be"),
    ('e_mac_pj = 4.6\ne_ac_pj = 0.9\n', "missing cost model number(s) e_mul_pj, e_add_pj, e_mem_pj_per_64bit"),
    ('e_mac_pj = "4.6"\ne_ac_pj = 0.9\ne_mul_pj = 3.7\ne_add_pj = 0.9\ne_mem_pj_per_64bit = 20\n', "must be a number"),
    ('e_mac_pj = nan\ne_ac_pj = 0.9\ne_mul_pj = 3.7\ne_add_pj = 0.9\ne_mem_pj_per_64bit = 20\n', "finite"),
    ('e_mac_pj = true\ne_ac_pj = 0.9\ne_mul_pj = 3.7\ne_add_pj = 0.9\ne_mem_pj_per_64bit = 20\n', "must be a number"),
    ('base = "fp8"\n', "not a preset"),
    ("e_mac_pj = = 4.6\n", "not a valid TOML"),
])
def test_bad_toml_cost_models_are_refused_naming_the_file(tmp_path, text, fragment):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(SVFormerError) as e:
        load_cost_model_toml(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


def test_missing_toml_file_is_an_error(tmp_path):
    with pytest.raises(SVFormerError, match="not found"):
        get_cost_model(str(tmp_path / "nope.toml"))
