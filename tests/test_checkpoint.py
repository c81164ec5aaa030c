"""Checkpoints: the documented format round-trips; unsafe or mismatched files are refused clearly."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from svformer_deploy.svformer.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.variants import create_model

TINY = {"img_size": 32, "time_steps": 2, "dims": (16, 32, 64), "head_dim": 16, "num_classes": 3}


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = create_model("3stg", **TINY).eval()
    for m in model.modules():  # non-default BN statistics so a round trip that drops buffers fails
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.05, 0.3)
    return model


def test_save_load_round_trip_gives_identical_outputs(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.pt", tiny_model, class_names=["left", "right", "up"])
    raw = torch.load(path, weights_only=True)  # the format is loadable without arbitrary unpickling
    assert raw["format"] == FORMAT and raw["format_version"] == 1
    assert set(raw) >= {"config", "state_dict", "class_names", "preprocessing", "versions", "arch"}
    model, ckpt = load_model(path)
    assert ckpt.class_names == ["left", "right", "up"]
    assert ckpt.config == tiny_model.cfg
    assert ckpt.preprocessing["input"] == "events" and ckpt.preprocessing["time_steps"] == 2
    assert "torch" in ckpt.versions and "spikingjelly" in ckpt.versions
    x = torch.rand(2, 2, 2, 32, 32) * 3
    with torch.no_grad():
        assert torch.equal(model(x), tiny_model(x))
    assert not [p for p in tmp_path.iterdir() if p.name != "m.pt"], "no temporary files left behind"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _RunsCode(marker)}, f)
    with pytest.raises(SVFormerError, match="refused"):
        load_checkpoint(evil)
    torch.save({"payload": _RunsCode(marker)}, tmp_path / "evil_zip.pt")
    with pytest.raises(SVFormerError, match="arbitrary code"):
        load_checkpoint(tmp_path / "evil_zip.pt")
    assert not marker.exists()


def test_mismatched_state_dict_names_the_wrong_keys_and_shapes(tmp_path, tiny_model):
    sd = tiny_model.state_dict()
    sd.pop("head.bias")
    sd["head.weight"] = torch.zeros(3, 65)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(SVFormerError) as err:
        load_checkpoint(tmp_path / "bad.pt", arch="3stg", **{k: v for k, v in TINY.items() if k != "num_classes"})
    msg = str(err.value)
    assert "missing keys: head.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "head.weight [3, 65] (model [3, 64])" in msg
    assert "\n" not in msg


def test_bare_state_dict_needs_arch_and_then_loads(tmp_path, tiny_model):
    torch.save(tiny_model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(SVFormerError, match="--arch"):
        load_checkpoint(tmp_path / "sd.pt")
    overrides = {k: v for k, v in TINY.items() if k != "num_classes"}
    ckpt = load_checkpoint(tmp_path / "sd.pt", arch="3stg", **overrides)
    assert ckpt.config.num_classes == 3  # read from head.weight
    model = ckpt.build_model()
    x = torch.rand(1, 2, 2, 32, 32) * 3
    with torch.no_grad():
        assert torch.equal(model(x), tiny_model(x))


def test_authors_slowfast_checkpoint_layout_is_accepted(tmp_path, tiny_model):
    # slowfast saves {"epoch", "model_state", "optimizer_state", "cfg"}; DDP adds "module." prefixes
    state = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    torch.save({"epoch": 600, "model_state": state, "cfg": "yaml text"}, tmp_path / "authors.pyth")
    overrides = {k: v for k, v in TINY.items() if k != "num_classes"}
    ckpt = load_checkpoint(tmp_path / "authors.pyth", arch="3stg", **overrides)
    assert set(ckpt.state_dict) == set(tiny_model.state_dict())


@pytest.mark.parametrize(
    "content, fragment",
    [(None, "no such file"), (b"", "empty file"), (b"PK\x03\x04 definitely not a zip", "not a readable"),
     (b"hello world, not a checkpoint", "not a readable")],
)
def test_unreadable_files_give_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SVFormerError, match=fragment) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_foreign_object_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "foreign.pt")
    with pytest.raises(SVFormerError, match="not an SVFormer checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_wrong_number_of_class_names_is_refused(tmp_path, tiny_model):
    with pytest.raises(SVFormerError, match="class names"):
        save_checkpoint(tmp_path / "m.pt", tiny_model, class_names=["a"])
    assert not (tmp_path / "m.pt").exists()


def test_atomic_writes_follow_the_umask(tmp_path, tiny_model):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.pt", tiny_model)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
