"""Data-parallel training with real processes (torch.distributed, gloo on CPU): DDP step equivalence, the
``train --nproc N`` command, resume across N, bad input and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import CLI, one_error_line
from svformer_deploy.deploy.cli import main
from svformer_deploy.svformer import distributed
from svformer_deploy.svformer.checkpoint import load_checkpoint
from svformer_deploy.svformer.data.synthetic import generate_dataset
from svformer_deploy.svformer.train import TrainConfig, build_model, make_optimizer, train_step

MODEL = dict(img_size=16, time_steps=2, dims=[8, 16, 32], depths=[1, 1, 1], head_dim=8, first_patch=2)
GLOBAL_BATCH = 8


def one_step(dtype_name: str) -> dict[str, torch.Tensor]:
    """One optimiser step of a tiny 3-stage model on a fixed global batch of 8 clips; with WORLD_SIZE=N (a
    spawned rank) this rank takes its contiguous 8/N clips. Returns the weights and buffers afterwards."""
    dtype = getattr(torch, dtype_name)
    info = distributed.from_env() or distributed.SINGLE
    distributed.init(info)
    cfg = TrainConfig(arch="3stg", model=MODEL, batch_size=GLOBAL_BATCH // info.world_size, lr=1e-2)
    model = build_model(cfg, num_classes=3).to(dtype).train()
    g = torch.Generator().manual_seed(5)
    clips = torch.randn(GLOBAL_BATCH, 2, 3, 16, 16, generator=g, dtype=torch.float64).to(dtype) * 2
    labels = torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
    part = slice(info.rank * cfg.batch_size, (info.rank + 1) * cfg.batch_size)
    net = distributed.wrap(model, info)
    optimizer = make_optimizer(model, cfg)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    train_step(net, optimizer, clips[part], labels[part], loss_fn, cfg.clip_grad, cfg.lr)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update({f"grad:{k}": p.grad.detach().clone() for k, p in model.named_parameters()})
    return state


# (dtype, gradient tolerance relative to the largest gradient, gradient noise floor, weight tolerance)
TOLERANCES = [("float64", 1e-12, 1e-12, 1e-12), ("float32", 1e-5, 5e-6, 1e-4)]


@pytest.mark.parametrize("dtype,grad_rtol,noise,tol", TOLERANCES, ids=[t[0] for t in TOLERANCES])
def test_two_processes_take_the_same_step_as_one_process_on_the_global_batch(dtype, grad_rtol, noise, tol):
    """2 ranks x 4 clips (gloo, DDP gradient averaging, BN over the global batch) vs 1 process x 8 clips.

    Not bitwise: the ranks' partial sums (BN statistics, gradients) are added by all-reduce in another
    order than one process sums 8 clips, so they agree to rounding: the gradients to ``grad_rtol`` of the
    largest one. The weights after the AdamW step agree to ``tol`` (lr = 1e-2: every weight moves by about
    1e-2 in a first AdamW step), except the biases of layers followed by a BatchNorm: BN removes any
    constant, so their exact gradient is 0 and the computed one is rounding noise (< ``noise``; every
    other gradient here is > 1e-5), which AdamW's g / (|g| + 1e-8) turns into an arbitrary step in both runs.
    """
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_model(TrainConfig(arch="3stg", model=MODEL), 3).state_dict().items()}
    single = one_step(dtype)
    ranks = distributed.launch(one_step, 2, (dtype,), threads=1)
    assert single.keys() == ranks.keys()
    grads = {k[5:]: v.double() for k, v in single.items() if k.startswith("grad:")}
    scale = max(float(g.abs().max()) for g in grads.values())
    assert max(float((v - ranks[f"grad:{k}"].double()).abs().max()) for k, v in grads.items()) <= grad_rtol * scale
    vanishing = {k for k, g in grads.items() if 0 < float(g.abs().max()) < noise}  # exact zeros stay in
    assert vanishing and all(k.endswith(".bias") for k in vanishing), vanishing  # only pre-BN biases
    compared = [k for k in before if k not in vanishing and single[k].is_floating_point()]
    assert sum(single[k].numel() for k in compared) > 0.9 * sum(v.numel() for v in before.values())
    worst = max(float((single[k].double() - ranks[k].double()).abs().max()) for k in compared)
    assert worst <= tol, worst
    moved = max(float((single[k].double() - before[k].double()).abs().max()) for k in compared)
    assert moved > 10 * tol  # the step moved the weights well beyond the tolerance
    # the BN running statistics saw the global batch (compared above) and were updated
    assert float((single["dwconv_bn.running_mean"] - before["dwconv_bn.running_mean"]).abs().max()) > 10 * tol


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "set", num_classes=2, train_per_class=4,
                            test_per_class=2, size=32, frames=8)


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--synthetic", "--synthetic-dir", str(data), "--arch", "3stg", "--size", "16", "-T", "2",
            "--dims", "8,16,32", "--depths", "1,1,1", "--head-dim", "8", "--first-patch", "2", "-b", "2",
            "-o", str(out), "--quiet", *extra]


def test_train_nproc_2_writes_a_loadable_checkpoint_and_resumes_on_one_process(synthetic, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([str(CLI), *_train_args(synthetic, out, "--epochs", "1", "--nproc", "2", "--json")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SVFORMER_NO_PROGRESS="1"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["epochs"] == 1 and doc["train_data"]["samples"] == 8
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.training["processes"] == 2 and ckpt.training["global_batch"] == 4
    assert ckpt.training["metrics"]["train_samples"] == 8  # both ranks' clips, counted once each
    model = ckpt.build_model().eval()
    with torch.no_grad():
        assert model.forward_sequence(torch.zeros(2, 1, 3, 16, 16)).shape == (1, 2)
    assert sorted(p.name for p in out.iterdir()) == ["epoch-001.pt", "last.pt", "metrics.jsonl", "summary.json"]
    # the same run started by torchrun (its environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
    tr = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         str(CLI), *_train_args(synthetic, tmp_path / "tr", "--epochs", "1", "--json")],
                        capture_output=True, text=True, timeout=300, env=dict(os.environ, SVFORMER_NO_PROGRESS="1"))
    assert tr.returncode == 0, tr.stderr
    assert _same_but_time(json.loads(tr.stdout), doc)  # the same shards, the same steps, the same metrics
    # --resume with another process count: the checkpoint holds nothing specific to N
    code = main(["train", "--resume", str(out / "last.pt"), "--epochs", "2", "--nproc", "1", "--quiet"])
    assert code == 0
    again = load_checkpoint(out / "last.pt")
    assert again.training["epoch"] == 2 and again.training["processes"] == 1
    assert [h["epoch"] for h in again.training["history"]] == [1, 2]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def _same_but_time(a: dict, b: dict) -> bool:
    """Two training results with the same metrics (wall times aside)."""
    strip = lambda h: {k: v for k, v in h.items() if "seconds" not in k}  # noqa: E731
    return [strip(h) for h in a["history"]] == [strip(h) for h in b["history"]]


@pytest.mark.parametrize("nproc,fragment", [("0", "at least 1"), ("4096", "more than the")])
def test_bad_nproc_is_one_error_line(synthetic, tmp_path, capsys, nproc, fragment):
    code = main(_train_args(synthetic, tmp_path / "o", "--nproc", nproc))
    one_error_line(code, capsys.readouterr().err, "--nproc", fragment)
    assert not (tmp_path / "o").exists()


def test_nproc_under_a_launcher_is_one_error_line(synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    code = main(_train_args(synthetic, tmp_path / "o", "--nproc", "2"))
    one_error_line(code, capsys.readouterr().err, "WORLD_SIZE=2", "--nproc")


def _marked_pids(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (the CLI and every rank it spawned inherit it)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_ctrl_c_during_nproc_2_leaves_no_process_and_no_partial_checkpoint(synthetic, tmp_path):
    out = tmp_path / "run"
    marker = f"SVFORMER_TEST_MARK={uuid.uuid4().hex}"
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1", SVFORMER_TEST_MARK=marker.split("=")[1])
    args = _train_args(synthetic, out, "--epochs", "200", "--nproc", "2")
    args.remove("--quiet")  # rank 0 reports each epoch: interrupt once checkpoints are being written
    proc = subprocess.Popen([str(CLI), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (out / "last.pt").exists(), "training did not reach its first checkpoint"
        assert len(_marked_pids(marker)) >= 3  # the CLI and its two ranks
        time.sleep(0.7)  # somewhere inside a later epoch, or a checkpoint write
        proc.send_signal(signal.SIGINT)  # to the launching process only, as `kill -INT`
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, err  # the interrupt code
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: interrupted by SIGINT"), err  # after the epoch lines: one error line
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err, err
    deadline = time.monotonic() + 15
    while _marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _marked_pids(marker) == []
    names = sorted(p.name for p in out.iterdir())
    assert all(n.endswith((".pt", ".jsonl")) for n in names), names  # no temporary left beside them
    for p in out.glob("*.pt"):
        load_checkpoint(p)  # every checkpoint present is complete


def test_a_failing_rank_is_one_error_line_and_stops_the_others(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)  # every rank finds no video: each reports, the launcher once
    proc = subprocess.run([str(CLI), "train", "--videos", str(tmp_path / "empty"), "--arch", "3stg", "--size", "16",
                           "-T", "2", "--nproc", "2", "-o", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, SVFORMER_NO_PROGRESS="1"))
    one_error_line(proc.returncode, proc.stderr, "empty dataset folder")
