"""``svformer-deploy train``: train an SVFormer on CPU from videos, event recordings or the synthetic set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.render import emit_json, table

# CLI option -> SVFormerConfig field (model overrides)
MODEL_OPTIONS = {
    "time_steps": "time_steps", "size": "img_size", "dims": "dims", "depths": "depths",
    "stage_types": "stage_types", "head_dim": "head_dim", "mlp_ratio": "mlp_ratio", "first_patch": "first_patch",
    "neuron": "neuron", "norm": "norm", "drop_path": "drop_path", "v_threshold": "v_threshold",
}
# CLI option -> TrainConfig field
TRAIN_OPTIONS = {
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "min_lr": "min_lr", "warmup_epochs": "warmup_epochs",
    "weight_decay": "weight_decay", "label_smoothing": "label_smoothing", "clip_grad": "clip_grad", "flip": "flip",
    "erase": "erase", "shift": "shift", "frame_stride": "frame_stride",
    "video_input": "video_input", "event_split": "event_split",
    "event_fit": "event_fit", "sensor_size": "sensor_size", "seed": "seed", "workers": "workers",
    "eval_every": "eval_every", "keep": "keep", "out": "out_dir", "holdout": "holdout", "test": "test_data",
    "cache": "cache",
}
SYNTHETIC_OPTIONS = {"synthetic_classes": "num_classes", "synthetic_train": "train_per_class",
                     "synthetic_test": "test_per_class", "synthetic_size": "size", "synthetic_frames": "frames"}
SOURCE_OPTIONS = ("videos", "csv", "nmnist", "events")


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _str_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _sensor(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    parts = _int_list(ctx, param, value)
    if not parts or len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"expected WxH in pixels, e.g. 346x260, got {value!r}")
    return parts


def build_config(params: dict[str, Any], explicit: set[str]) -> Any:
    """The :class:`svformer.train.TrainConfig` for these CLI parameters (``explicit``: options given by the user).

    With ``--resume`` the checkpoint's stored config is the base and only explicit options change it.
    """
    from svformer_deploy.svformer.train import TrainConfig, resume_config

    sources = [s for s in SOURCE_OPTIONS if params.get(s)] + (["synthetic"] if params.get("synthetic") else [])
    if len(sources) > 1:
        raise click.UsageError(f"give one data source, not {' and '.join('--' + s for s in sources)}")
    train_kwargs = {field: params[opt] for opt, field in TRAIN_OPTIONS.items()
                    if opt in explicit or (not params.get("resume") and params.get(opt) is not None)}
    synthetic = {field: params[opt] for opt, field in SYNTHETIC_OPTIONS.items() if params.get(opt) is not None}
    if sources:
        train_kwargs["source"] = sources[0]
        train_kwargs["data"] = str(params[sources[0]]) if sources[0] != "synthetic" else (
            str(params["synthetic_dir"]) if params.get("synthetic_dir") else None)
    if synthetic:
        train_kwargs["synthetic"] = synthetic
    if params.get("quiet"):
        train_kwargs["quiet"] = True
    model = {field: params[opt] for opt, field in MODEL_OPTIONS.items() if params.get(opt) is not None}
    if params.get("no_local_pathway"):
        model["local_pathway"] = False
    if params.get("resume"):
        if model or "arch" in explicit:
            raise click.UsageError("--resume continues the checkpoint's model; model options (--arch, --dims, "
                                   "--time-steps, ...) cannot change it")
        return resume_config(params["resume"], **train_kwargs)
    if not sources:
        raise click.UsageError("give a data source: --videos DIR, --csv FILE, --nmnist DIR, --events DIR "
                               "or --synthetic")
    if not params.get("arch"):
        raise click.UsageError("give the architecture with --arch NAME (e.g. 3stg, base, st) or --resume CKPT")
    return TrainConfig(arch=params["arch"], model=model, **train_kwargs)


def render_result(result: Any) -> str:
    m = result.metrics
    lines = [f"trained {result.epochs} epochs in {result.seconds:.1f} s"
             + (f" (resumed after epoch {result.resumed_from})" if result.resumed_from else "")
             + f"; {result.params:,} parameters, {len(result.class_names)} classes"]
    rows = [[h["epoch"], f"{h['loss']:.4f}", f"{h['lr']:.2e}", f"{h['train_acc']:.3f}",
             f"{h['test_top1']:.3f}" if "test_top1" in h else "-", f"{h['test_top5']:.3f}" if "test_top5" in h else "-",
             f"{h['seconds']:.1f}"] for h in result.history[-10:]]
    lines.append(table(["epoch", "loss", "lr", "train acc", "test top-1", "test top-5", "s"], rows))
    skipped = result.train_data["skipped"] + result.test_data["skipped"]
    lines.append(f"data: {result.train_data['samples']} train / {result.test_data['samples']} test clips used, "
                 f"{skipped} bad file(s) skipped")
    if "test_top1" in m:
        lines.append(f"final test top-1 {m['test_top1']:.3f}, top-5 {m['test_top5']:.3f}")
    lines.append(f"checkpoint: {result.checkpoint}  (every epoch: {Path(result.out_dir) / 'epoch-NNN.pt'}; "
                 f"metrics: {Path(result.out_dir) / 'metrics.jsonl'})")
    return "\n".join(lines)


@click.command(context_settings={"max_content_width": 110})
@click.option("--videos", type=click.Path(path_type=Path), help="Video folder: DIR/<class>/<clip> (or DIR/train "
              "and DIR/test of that layout).")
@click.option("--csv", type=click.Path(path_type=Path), help="CSV list of 'path,label' lines (paths relative to it).")
@click.option("--nmnist", type=click.Path(path_type=Path), help="N-MNIST small folder (<n>.bs2, train1K.txt, "
              "test100.txt); 2-channel event frames.")
@click.option("--events", type=click.Path(path_type=Path), help="Event-file folder: DIR/<class>/<file> "
              "(.aedat4, .bin, .bs2, .npy).")
@click.option("--synthetic", is_flag=True, help="The built-in synthetic action set (generated when missing).")
@click.option("--test", type=click.Path(path_type=Path), help="Held-out folder/CSV for --videos/--events/--csv "
              "(default: DIR/test if present, else --holdout of every class).")
@click.option("--holdout", type=float, default=0.2, show_default=True, help="Fraction of each class held out "
              "for testing when there is no test set.")
@click.option("--synthetic-dir", type=click.Path(path_type=Path), help="Where the synthetic set lives or is "
              "generated [default: OUT/synthetic-data].")
@click.option("--synthetic-classes", type=int, help="Synthetic set: number of classes.")
@click.option("--synthetic-train", type=int, help="Synthetic set: training clips per class.")
@click.option("--synthetic-test", type=int, help="Synthetic set: held-out clips per class.")
@click.option("--synthetic-size", type=int, help="Synthetic set: frame size (pixels).")
@click.option("--synthetic-frames", type=int, help="Synthetic set: frames per clip.")
@click.option("--arch", help="Variant to start from: base, ss, st, dp, wd, 3stg (model options override it).")
@click.option("--time-steps", "-T", type=int, help="Model: T, frames per clip.")
@click.option("--size", type=int, help="Model: input size S (pixels, S x S).")
@click.option("--dims", callback=_int_list, help="Model: channels per stage, e.g. 32,64,128.")
@click.option("--depths", callback=_int_list, help="Model: blocks per stage, e.g. 1,1,1.")
@click.option("--stage-types", callback=_str_list, help="Model: block type per stage, e.g. lfe,gsa,gsa.")
@click.option("--head-dim", type=int, help="Model: attention head width d.")
@click.option("--mlp-ratio", type=float, help="Model: MLP expansion ratio.")
@click.option("--first-patch", type=int, help="Model: stride of the first patch embedding (4 in the paper).")
@click.option("--no-local-pathway", is_flag=True, help="Model: remove the local pathway.")
@click.option("--neuron", type=click.Choice(["plif", "lif"]), help="Model: neuron type.")
@click.option("--norm", type=click.Choice(["tdbn", "bn"]), help="Model: time-dependent or plain BN.")
@click.option("--drop-path", type=float, help="Model: stochastic depth rate.")
@click.option("--v-threshold", type=float, help="Model: neuron threshold.")
@click.option("--epochs", type=int, default=10, show_default=True,
              help="Epochs in total (with --resume: the new total).")
@click.option("--batch-size", "-b", type=int, default=16, show_default=True, help="Clips per batch (>= 2).")
@click.option("--lr", type=float, default=5e-3, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--min-lr", type=float, default=1e-6, show_default=True, help="Learning rate at the end of the cosine.")
@click.option("--warmup-epochs", type=float, default=1.0, show_default=True, help="Linear warm-up length (epochs).")
@click.option("--weight-decay", type=float, default=0.05, show_default=True, help="AdamW decay (not on BN/1-D params).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True, help="Label smoothing of the loss.")
@click.option("--clip-grad", type=float, default=20.0, show_default=True, help="Gradient-norm clipping (0: off).")
@click.option("--flip", type=float, help="Horizontal flip probability [default: 0.5 for --videos/--csv, else 0].")
@click.option("--erase", type=float, default=0.25, show_default=True, help="Random erasing probability.")
@click.option("--shift", type=int, help="Random shift of event frames, pixels [default: 2 for events, else 0].")
@click.option("--frame-stride", type=int, default=4, show_default=True, help="Video: window = T x stride frames.")
@click.option("--video-input", type=click.Choice(["rgb", "events"]), default="rgb", show_default=True,
              help="Video: RGB frames, or emulated event frames (luma changes between sampled frames, 2 channels).")
@click.option("--event-split", type=click.Choice(["number", "time"]), default="number", show_default=True,
              help="Events: T slices of equal event counts or equal durations.")
@click.option("--event-fit", type=click.Choice(["auto", "pad", "resize"]), default="auto", show_default=True,
              help="Events: sensor to S x S by centre pad/crop or by scaling coordinates.")
@click.option("--sensor-size", callback=_sensor, help="Events: sensor WxH for .npy arrays (default: bounding box).")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("train-out"),
              show_default=True, help="Output folder: epoch-NNN.pt, last.pt, metrics.jsonl, summary.json.")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), help="Continue from a checkpoint "
              "written by train (its stored options are the defaults).")
@click.option("--cache/--no-cache", default=None, help="Decode every clip once and keep it in memory [default: "
              "when all clips fit in 2 GiB]; cached videos get random shifts instead of decode-time random crops.")
@click.option("--workers", "-j", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--threads", type=int, help="Torch CPU threads [default: torch's choice; with --nproc: the cores "
              "divided by N]; 1 is often faster when other jobs share the cores.")
@click.option("--nproc", type=int, help="Train data-parallel on N local processes (DDP: gloo on CPU, nccl on GPUs); "
              "--batch-size is per process, so the global batch is N x --batch-size. For several machines start "
              "the command with torchrun instead (docs/training.md).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, shuffling, augmentation.")
@click.option("--eval-every", type=int, default=1, show_default=True, help="Evaluate every N epochs (and at the end).")
@click.option("--keep", type=int, help="Keep only the last N epoch-NNN.pt files [default: all].")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning of --init: quantize it (calibrated on its "
              "recorded training data), fine-tune the integer model itself and write OUT/qat.pt, whose integer graph "
              "export writes as it is (docs/qat.md). Uses --epochs [default 2], --lr [default 1e-4], --batch-size.")
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path), help="--qat: the float checkpoint to start "
              "from (written by train: its training record names the data).")
@click.option("--bits", type=int, default=8, show_default=True, help="--qat: weight bits (2..16).")
@click.option("--per-channel", is_flag=True, help="--qat: per-channel weight scales even when the model has netx "
              "parts [default: per-tensor scales and Lava thresholds then, as export --targets netx needs].")
@click.option("--max-clips", type=int, help="--qat: training clips per epoch at most [default: all].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@click.pass_context
def train(ctx: click.Context, as_json: bool, **params: Any) -> None:
    """Train an SVFormer on CPU: AdamW, warm-up + cosine, label smoothing, a checkpoint every epoch.

    \b
    Examples:
      svformer-deploy train --synthetic --synthetic-classes 4 --arch 3stg --size 32 -T 8 --dims 16,32,64 \\
          --depths 1,1,1 --head-dim 16 --first-patch 2 --epochs 16 --threads 1 -o runs/syn
      svformer-deploy train --nmnist nmnist-small --arch 3stg --size 34 -T 8 \\
          --dims 32,64,128 --depths 1,1,1 --head-dim 32 --epochs 30 -b 32 -o runs/nmnist
      svformer-deploy train --resume runs/nmnist/last.pt --epochs 40
      svformer-deploy train --synthetic --arch 3stg --size 32 -T 8 --nproc 2 -b 8 -o runs/ddp
    """
    from svformer_deploy.svformer import distributed
    from svformer_deploy.svformer.errors import SVFormerError
    from svformer_deploy.svformer.progress import set_quiet
    from svformer_deploy.svformer.train import train_model

    explicit = {name for name in params
                if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    qat_only = {"init", "bits", "per_channel", "max_clips"}
    if params.pop("qat"):
        return _qat(params, explicit, as_json)
    given = sorted(explicit & qat_only)
    if given:
        raise SVFormerError(f"--{given[0].replace('_', '-')} needs --qat")
    for name in qat_only:
        params.pop(name)
    params["out"] = str(params["out"])
    nproc = params.get("nproc")
    launched = distributed.from_env()  # started by torchrun (or another launcher setting WORLD_SIZE)
    if nproc is not None:
        if launched is not None:
            raise SVFormerError(f"started by a launcher (WORLD_SIZE={launched.world_size}); do not also give --nproc")
        distributed.check_nproc(nproc)
    if params.get("threads") is not None and params["threads"] < 1:
        raise SVFormerError(f"--threads must be at least 1, got {params['threads']}")
    cfg = build_config(params, explicit)
    if params.get("quiet"):
        set_quiet(True)
    if nproc is not None and nproc > 1:
        result = distributed.launch(_train_rank, nproc, (cfg, bool(params.get("quiet"))), params.get("threads"))
    else:
        if params.get("threads"):
            import torch

            torch.set_num_threads(params["threads"])
        result = train_model(cfg)
        if launched is not None and not launched.is_main:
            return  # rank 0 reports

    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(render_result(result))


def _train_rank(cfg: Any, quiet: bool) -> Any:
    """One rank of ``train --nproc N`` (spawned by :func:`svformer.distributed.launch`)."""
    from svformer_deploy.svformer.progress import set_quiet
    from svformer_deploy.svformer.train import train_model

    if quiet:
        set_quiet(True)
    return train_model(cfg)


QAT_OPTIONS = {"qat", "init", "bits", "per_channel", "max_clips", "epochs", "lr", "batch_size", "out", "threads",
               "seed", "quiet"}


def _qat(params: dict[str, Any], explicit: set[str], as_json: bool) -> None:
    """``train --qat``: export.qat.qat_checkpoint, reported as a table or JSON."""
    from svformer_deploy.export.qat import QATOptions, qat_checkpoint
    from svformer_deploy.svformer.errors import SVFormerError

    stray = sorted(explicit - QAT_OPTIONS)
    if stray:
        raise SVFormerError(f"--{stray[0].replace('_', '-')} does not apply to --qat (the data and model come "
                            "from --init)")
    if params.get("init") is None:
        raise SVFormerError("--qat needs --init CHECKPOINT (the float model to fine-tune)")
    if params["batch_size"] < 1:
        raise SVFormerError(f"--batch-size must be at least 1, got {params['batch_size']}")
    if params.get("threads") is not None:
        if params["threads"] < 1:
            raise SVFormerError(f"--threads must be at least 1, got {params['threads']}")
        import torch

        torch.set_num_threads(params["threads"])
    opts = QATOptions(weight_bits=params["bits"], epochs=params["epochs"] if "epochs" in explicit else 2,
                      lr=params["lr"] if "lr" in explicit else 1e-4, batch_size=params["batch_size"],
                      per_channel=True if params["per_channel"] else None, max_train_clips=params.get("max_clips"),
                      seed=params["seed"])
    if opts.epochs < 1:
        raise SVFormerError(f"--epochs must be at least 1, got {opts.epochs}")
    out = Path(params["out"]) / "qat.pt"
    quiet = bool(params.get("quiet")) or as_json

    def on_epoch(row: dict[str, float]) -> None:
        if not quiet:
            click.echo(f"qat epoch {row['epoch']}/{opts.epochs}: loss {row['loss']:.4f}, train acc "
                       f"{row['train_acc']:.3f}", err=True)

    summary = qat_checkpoint(str(params["init"]), str(out), opts, on_epoch)
    summary["checkpoint"] = str(out)
    if as_json:
        emit_json(summary)
        return
    q = summary["quant"]
    click.echo(f"QAT int{q['weight_bits']} ({'per-channel' if q['per_channel'] else 'per-tensor, Lava thresholds'}) "
               f"of {summary['init']} on {summary['data']}, {summary['epochs']} epoch(s) in {summary['seconds']:.0f} s")
    rows = [[name, f"{m['accuracy']:.2%}", f"{m['top1_agreement']:.2%}", f"{m['flip_rate']:.2%}"]
            for name, m in (("PTQ", summary["ptq"]), ("QAT", summary["qat"]))]
    click.echo(table(["integer model", "accuracy", "top-1 agreement with float", "spike flips per float spike"],
                     rows))
    click.echo(f"float accuracy {summary['float_accuracy']:.2%} on {summary['held_out_clips']} held-out clips")
    click.echo(f"checkpoint: {out}  (svformer-deploy export {out} writes the QAT integer graph)")
