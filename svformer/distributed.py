"""Data-parallel training on several processes: torch DDP, ``--nproc N`` local launch, ``torchrun``.

- :func:`from_env` reads the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``: what ``torchrun`` and :func:`launch` set) and
  :func:`init` joins the process group: ``gloo`` on CPU, ``nccl`` when CUDA is available (one GPU
  per local rank).
- :func:`launch` runs a function on N local processes (``torch.multiprocessing`` spawn, a free port
  on 127.0.0.1), returns rank 0's result, turns a rank's :class:`SVFormerError` into the same error
  in the caller, and on any failure or interrupt (Ctrl-C, SIGTERM) stops every rank: no process is
  left behind.
- :func:`wrap` makes the model data-parallel: every BatchNorm of the model normalises with the
  statistics of the **global** batch (:class:`SyncBatchNormMixin`, two differentiable all-reduces
  per BN layer per forward), then :class:`~torch.nn.parallel.DistributedDataParallel` averages the
  gradients. PyTorch's own ``nn.SyncBatchNorm`` refuses CPU tensors (torch 2.13: "SyncBatchNorm
  expected input tensor to be on GPU") and would replace the model's time-dependent BN classes
  (their reshapes) by plain ones, so the mixin is slotted in below each BN class instead.

With per-rank batch b on N ranks, a step sees a global batch of N·b clips: the gradients, BN batch
statistics and loss are those of one process on that global batch, up to float summation order
(``docs/training.md``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import SVFormerError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run (``world_size`` 1: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and metrics and shows progress."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


SINGLE = DistInfo()


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo`` (CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def from_env(environ: dict[str, str] | None = None) -> DistInfo | None:
    """The run described by ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (``torchrun``, :func:`launch`), or
    None when ``WORLD_SIZE`` is absent. Inconsistent values raise :class:`SVFormerError`."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SVFormerError("RANK / WORLD_SIZE / LOCAL_RANK must be integers "
                            f"(got {', '.join(f'{k}={env.get(k)!r}' for k in ENV_KEYS[:3])})") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise SVFormerError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    if world > 1 and not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise SVFormerError(f"WORLD_SIZE={world} needs MASTER_ADDR and MASTER_PORT (torchrun sets them)")
    return DistInfo(rank, world, local, default_backend())


def init(info: DistInfo) -> None:
    """Join the process group of ``info`` (env:// rendezvous); nothing for a single process."""
    if info.world_size == 1 or dist.is_initialized():
        return
    if info.backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(info.backend, init_method="env://", rank=info.rank, world_size=info.world_size)


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for a single process)."""
    if info.world_size > 1:
        dist.barrier()


def all_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64; the values themselves for a single process)."""
    if info.world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# -- BatchNorm over the global batch --------------------------------------------------------------
class SyncBatchNormMixin(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batches of all ranks (sum, then centred sum of squares,
    each all-reduced with autograd so the backward pass sees the global statistics too). Running
    statistics are updated as ``F.batch_norm`` does (unbiased variance over the global batch). In eval
    mode, or without a process group, it is the plain BatchNorm."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.reshape(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.0
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


_SYNCED: dict[type, type] = {}


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm of ``model`` global-batch statistics, in place: each BN's class becomes a subclass
    that puts :class:`SyncBatchNormMixin` right below the torch BN class, so the model's own BN classes keep
    their reshapes (time-dependent BN) and their state_dict keys."""
    for m in model.modules():
        cls = type(m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SyncBatchNormMixin):
            if cls not in _SYNCED:
                _SYNCED[cls] = type(f"Synced{cls.__name__}", (cls, SyncBatchNormMixin), {})
            m.__class__ = _SYNCED[cls]
    return model


def unsync_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`sync_batchnorm` (the model's own BN classes come back), in place."""
    for m in model.modules():
        if isinstance(m, SyncBatchNormMixin) and type(m) in _SYNCED.values():
            m.__class__ = type(m).__bases__[0]
    return model


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """The module to train: ``model`` itself for one process; else ``model`` with global-batch BN inside
    ``DistributedDataParallel`` (gradients averaged over ranks; its ``.module`` is ``model``)."""
    if info.world_size == 1:
        return model
    sync_batchnorm(model)
    model.to(info.device)
    ids = [info.local_rank] if info.backend == "nccl" else None
    # BN statistics are global, so every rank's buffers are equal already: no per-forward broadcast
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


# -- local launcher -------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def max_local_processes() -> int:
    """The most local ranks ``--nproc`` accepts: the CUDA devices, else the CPU cores this process may use."""
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_nproc(nproc: int) -> None:
    """Refuse a process count below 1 or above :func:`max_local_processes` (one clear line)."""
    limit = max_local_processes()
    what = "CUDA devices" if torch.cuda.is_available() else "CPU cores available to this process"
    if nproc < 1:
        raise SVFormerError(f"--nproc must be at least 1, got {nproc}")
    if nproc > limit:
        raise SVFormerError(f"--nproc {nproc} is more than the {limit} {what}; use at most {limit} "
                            "(or torchrun for several machines)")


def _child(rank: int, nproc: int, port: int, threads: int, fn: Callable[..., Any], args: tuple, queue: Any,
           quiet_warnings: bool) -> None:
    """One spawned rank: the launcher's environment, ``fn(*args)`` under the CLI's signal handling; rank 0 puts
    ``("ok", result)``, any rank that fails puts ``("error", message, is_user_error)``."""
    from .interrupts import signals_raise

    if quiet_warnings:  # as in the launching CLI (library warnings would break its one-line stderr contract)
        warnings.simplefilter("ignore")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        with signals_raise():
            result = fn(*args)
        if rank == 0:  # by value (plain pickle): the queue's shared-memory tensors die with this process
            queue.put(("ok", pickle.dumps(result)))
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except SVFormerError as e:
        queue.put(("error", str(e), True))
        sys.exit(1)
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, which stops the other ranks
        queue.put(("error", f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}", False))
        sys.exit(1)
    finally:
        shutdown()


def launch(fn: Callable[..., Any], nproc: int, args: tuple = (), threads: int | None = None) -> Any:
    """Run ``fn(*args)`` on ``nproc`` local ranks (spawned processes joined by :func:`from_env` / :func:`init`)
    and return rank 0's result (``fn`` must be importable and its result picklable).

    ``threads``: torch threads per rank (default: the cores divided by ``nproc``). A rank's
    :class:`SVFormerError` is raised here with its message; any failure, and any exception here
    (Ctrl-C), stops all ranks (SIGTERM, then SIGKILL after 10 s) before it propagates.
    """
    import multiprocessing.connection as mpc

    import torch.multiprocessing as mp

    check_nproc(nproc)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    threads = threads or max(1, max_local_processes() // nproc)
    quiet = bool(warnings.filters) and warnings.filters[0][0] == "ignore" and warnings.filters[0][2] is Warning
    procs = [ctx.Process(target=_child, args=(r, nproc, port, threads, fn, args, queue, quiet), daemon=False)
             for r in range(nproc)]
    got: dict[str, Any] = {"result": None, "error": None}  # rank 0's result, the first failure

    def drain() -> None:
        while not queue.empty():
            msg = queue.get()
            if msg[0] == "ok":
                got["result"] = pickle.loads(msg[1])
            elif got["error"] is None:
                got["error"] = msg

    try:
        for p in procs:
            p.start()
        alive = list(procs)
        while alive:
            mpc.wait([p.sentinel for p in alive], timeout=1.0)
            drain()
            error = got["error"]
            for p in list(alive):
                if p.exitcode is not None:
                    alive.remove(p)
                    if p.exitcode != 0 and error is None:
                        error = got["error"] = ("error", f"a training process (pid {p.pid}) exited with code "
                                                f"{p.exitcode}", False)
            if error is not None and alive:
                _stop(alive)
                alive = []
        drain()
    except BaseException:
        _stop([p for p in procs if p.pid is not None])
        raise
    error = got["error"]
    if error is not None:
        if error[2]:
            raise SVFormerError(error[1])
        raise RuntimeError(error[1])
    return got["result"]


def _stop(procs: list) -> None:
    """SIGTERM every live process, wait up to 10 s each, then SIGKILL what is left; reap them all."""
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(OSError):
                p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
