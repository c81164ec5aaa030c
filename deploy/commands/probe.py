"""``svformer-deploy probe``: what the model will see of a video or an event recording."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
from svformer_deploy.deploy.render import emit_json, fmt_int, table


def parse_views(text: str) -> tuple[int, int]:
    """``"KxS"`` -> (K temporal views, S spatial crops); S is 1 (centre) or 3 (left/centre/right)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not m:
        raise click.BadParameter(f"expected KxS such as 1x1 or 5x3, got {text!r}", param_hint="--views")
    k, s = int(m.group(1)), int(m.group(2))
    if k < 1:
        raise click.BadParameter(f"need at least 1 temporal view, got {k}", param_hint="--views")
    if s not in (1, 3):
        raise click.BadParameter(f"spatial crops must be 1 or 3, got {s}", param_hint="--views")
    return k, s


def _crop_names(spatial_crops: int, resized_hw: tuple[int, int]) -> list[str]:
    if spatial_crops == 1:
        return ["centre"]
    h, w = resized_hw
    return ["top", "centre", "bottom"] if h > w else ["left", "centre", "right"]


def probe_report(
    video: str | Path,
    time_steps: int = 16,
    size: int = 224,
    temporal_views: int = 1,
    spatial_crops: int = 1,
    frame_stride: int = 4,
    sheet: str | Path | None = None,
) -> dict[str, Any]:
    """Everything ``probe`` reports, as one JSON-ready dict (see docs/cli.md); optionally writes the sheet."""
    from svformer_deploy.svformer.data.video import DEFAULT_MEAN, DEFAULT_STD, read_views

    if sheet is not None:
        _check_sheet_path(sheet)
    views = read_views(video, time_steps=time_steps, size=size, temporal_views=temporal_views,
                       spatial_crops=spatial_crops, frame_stride=frame_stride)
    info = views.info
    t = views.tensor
    names = _crop_names(spatial_crops, views.resized_hw)
    report: dict[str, Any] = {
        "video": str(video),
        "container": info.container,
        "codec": info.codec,
        "pix_fmt": info.pix_fmt,
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 6),
        "duration_s": round(info.duration_s, 6),
        "frames": info.frames,
        "frames_source": info.frames_source,
        "has_audio": info.has_audio,
        "time_steps": time_steps,
        "size": size,
        "frame_stride": frame_stride,
        "window_frames": time_steps * frame_stride,
        "temporal_views": temporal_views,
        "spatial_crops": spatial_crops,
        "frames_decoded": views.frames_decoded,
        "views": views.indices,
        "view_crops": [
            {"temporal": v // spatial_crops, "crop": names[v % spatial_crops], "y": y, "x": x}
            for v, (y, x) in enumerate(views.crops)
        ],
        "resized": list(views.resized_hw),
        "tensor_shape": list(t.shape[1:]),
        "batch_shape": list(t.shape),
        "dtype": str(t.dtype).replace("torch.", ""),
        "normalisation": {"mean": DEFAULT_MEAN, "std": DEFAULT_STD},
        "value_range": [float(t.min()), float(t.max())],
        "sheet": None,
    }
    if sheet is not None:
        report["sheet"] = str(write_contact_sheet(sheet, t, views.indices, [c["crop"] for c in report["view_crops"]]))
    return report


def _check_sheet_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise click.BadParameter(f"the contact sheet is a PNG file, got {path.name!r}", param_hint="--sheet")
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint="--sheet")
    return path


def write_contact_sheet(path: str | Path, tensor, indices: list[list[int]], crop_names: list[str],
                        tile: int = 128) -> Path:
    """A PNG grid of the model's input: one row per view, one column per time step, frame index on each tile.

    Tiles are the normalised crops mapped back to RGB (``x * std + mean``), shown at ``tile`` pixels at most.
    """
    import numpy as np
    from PIL import Image, ImageDraw
    from svformer_deploy.svformer.data.video import DEFAULT_MEAN, DEFAULT_STD
    from svformer_deploy.svformer.fileio import atomic_path

    path = _check_sheet_path(path)
    rgb = (tensor * DEFAULT_STD + DEFAULT_MEAN).clamp(0, 1).mul(255).round().byte().permute(0, 1, 3, 4, 2).numpy()
    views, steps, size = rgb.shape[0], rgb.shape[1], rgb.shape[2]
    side = min(size, tile)
    label_w, gap, top = 84, 2, 14
    canvas = Image.new("RGB", (label_w + steps * (side + gap), top + views * (side + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for t in range(steps):
        draw.text((label_w + t * (side + gap) + 2, 1), f"t={t}", fill=(0, 0, 0))
    for v in range(views):
        y0 = top + v * (side + gap)
        draw.text((2, y0 + 2), f"view {v}", fill=(0, 0, 0))
        draw.text((2, y0 + 16), crop_names[v], fill=(80, 80, 80))
        for t in range(steps):
            img = Image.fromarray(np.ascontiguousarray(rgb[v, t]))
            if side != size:
                img = img.resize((side, side), Image.BILINEAR)
            x0 = label_w + t * (side + gap)
            canvas.paste(img, (x0, y0))
            text = f"#{indices[v][t]}"
            draw.rectangle((x0, y0 + side - 12, x0 + 6 * len(text) + 3, y0 + side), fill=(0, 0, 0))
            draw.text((x0 + 2, y0 + side - 12), text, fill=(255, 255, 255))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def events_report(path: str | Path, time_steps: int = 16, size: int = 128,
                  sheet: str | Path | None = None) -> dict[str, Any]:
    """What ``probe --events`` reports: the recording and how it is integrated into T frames of 2 polarities."""
    from svformer_deploy.svformer.data.events import load_event_clip, probe_events

    if sheet is not None:
        _check_sheet_path(sheet)
    report = probe_events(path, time_steps, size)
    report["time_steps"], report["size"], report["sheet"] = time_steps, size, None
    if sheet is not None:
        report["sheet"] = str(write_event_sheet(sheet, load_event_clip(path, time_steps, size)))
    return report


def write_event_sheet(path: str | Path, frames, tile: int = 128) -> Path:
    """A PNG row of the T event frames: ON events red, OFF events blue, brighter = more events."""
    import numpy as np
    from PIL import Image, ImageDraw
    from svformer_deploy.svformer.fileio import atomic_path

    path = _check_sheet_path(path)
    counts = frames.numpy()  # [T, 2, S, S], channel 0 = OFF, 1 = ON
    peak = max(float(counts.max()), 1.0)
    steps, size = counts.shape[0], counts.shape[-1]
    side, gap, top = min(size, tile), 2, 14
    canvas = Image.new("RGB", (steps * (side + gap), top + side), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for t in range(steps):
        rgb = np.zeros((size, size, 3), dtype=np.uint8)
        rgb[..., 0] = np.clip(255 * counts[t, 1] / peak, 0, 255)
        rgb[..., 2] = np.clip(255 * counts[t, 0] / peak, 0, 255)
        img = Image.fromarray(rgb)
        if side != size:
            img = img.resize((side, side), Image.NEAREST)
        canvas.paste(img, (t * (side + gap), top))
        draw.text((t * (side + gap) + 2, 1), f"t={t}", fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def render_events(r: dict[str, Any]) -> str:
    w, h = r["sensor_size"]
    lines = [
        f"events    {r['file']} ({r['format']})",
        f"sensor    {w}x{h}, {fmt_int(r['events'])} events ({fmt_int(r['on_events'])} ON, "
        f"{fmt_int(r['off_events'])} OFF) over {r['duration_us'] / 1e3:.1f} ms",
        f"framing   T={r['time_steps']} frames split by {'event count' if r['split'] == 'number' else 'time'}, "
        f"2 polarity channels, {r['fit']} to {r['size']}x{r['size']}"
        + (f", {fmt_int(r['dropped_events'])} events outside the field of view" if r["dropped_events"] else ""),
        f"tensor    {r['tensor_shape']} (T, polarity, H, W), event counts",
        "",
    ]
    rows = [[t, fmt_int(n), f"{d / 1e3:.2f}"] for t, (n, d) in enumerate(zip(r["frame_events"],
                                                                         r["frame_duration_us"], strict=True))]
    lines.append(table(["step", "events", "ms"], rows, "rrr"))
    if r["sheet"]:
        lines += ["", f"sheet     {r['sheet']}"]
    return "\n".join(lines)


def render_probe(r: dict[str, Any]) -> str:
    source = "declared by the container" if r["frames_source"] == "container" else "counted"
    lines = [
        f"video     {r['video']}",
        f"stream    {r['width']}x{r['height']} {r['codec']} ({r['pix_fmt']}), {r['fps']:.3f} fps, "
        f"{fmt_int(r['frames'])} frames ({source}), "
        f"{r['duration_s']:.2f} s, {r['container']}" + (", has audio (ignored)" if r["has_audio"] else ""),
        f"sampling  T={r['time_steps']} frames from a window of {r['window_frames']} (stride {r['frame_stride']}), "
        f"{r['temporal_views']} temporal x {r['spatial_crops']} spatial view(s)",
        f"resize    short side to {r['size']} -> {r['resized'][1]}x{r['resized'][0]}, crop {r['size']}x{r['size']}, "
        f"normalise mean {r['normalisation']['mean']} / std {r['normalisation']['std']}",
        f"decoded   {fmt_int(r['frames_decoded'])} frames (sequentially, stopping after the last needed one)",
        f"tensor    {r['tensor_shape']} per view (T, C, H, W), {r['dtype']}, batch {r['batch_shape']}, "
        f"values {r['value_range'][0]:.3f} .. {r['value_range'][1]:.3f}",
        "",
    ]
    rows = [[v, c["temporal"], c["crop"], " ".join(str(i) for i in idx)]
            for v, (c, idx) in enumerate(zip(r["view_crops"], r["views"], strict=True))]
    lines.append(table(["view", "temporal", "crop", "frame indices"], rows, "rrll"))
    if r["sheet"]:
        lines += ["", f"sheet     {r['sheet']}"]
    return "\n".join(lines)


@click.command()
@click.argument("video", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--events", "events", type=click.Path(dir_okay=False, path_type=Path),
              help="Probe an event recording (N-MNIST .bin/.bs2, AEDAT4, .npy) instead of a video.")
@click.option("--time-steps", "-T", type=click.IntRange(min=1), default=16, show_default=True,
              help="Frames per clip (T).")
@click.option("--size", type=click.IntRange(min=1), help="Input size in pixels [default: 224 video, 128 events].")
@click.option("--views", "views_spec", default="1x1", show_default=True,
              help="Temporal views x spatial crops, e.g. 5x3 (crops: 1 = centre, 3 = left/centre/right).")
@click.option("--frame-stride", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sampling window = T x stride raw frames.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a contact sheet PNG of the sampled frames.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def probe(video, events, time_steps, size, views_spec, frame_stride, sheet, as_json) -> None:
    """What the model will see of VIDEO (stream info, sampled frame indices per view, tensor shape)
    or of an event recording given with --events (event counts, framing into T polarity frames)."""
    if (video is None) == (events is None):
        raise click.UsageError("give either a VIDEO or --events FILE")
    if events is not None:
        report = events_report(events, time_steps=time_steps, size=size or 128, sheet=sheet)
        emit_json(report) if as_json else click.echo(render_events(report))
        return
    size = size or 224
    temporal_views, spatial_crops = parse_views(views_spec)
    report = probe_report(video, time_steps=time_steps, size=size, temporal_views=temporal_views,
                          spatial_crops=spatial_crops, frame_stride=frame_stride, sheet=sheet)
    if as_json:
        emit_json(report)
    else:
        click.echo(render_probe(report))
