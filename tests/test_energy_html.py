"""The HTML energy report opens in headless Chromium with every plot decoded and visible (screenshot test).

Chromium is found on PATH (``chromium``, ``chromium-browser``, ``google-chrome``); without one the
test is skipped with the reason (CI installs Debian's ``chromium`` package).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from energy_fixtures import synthetic_record
from PIL import Image
from svformer_deploy.deploy.energy.cost_models import PRESETS
from svformer_deploy.deploy.energy.html import PLOTS, write_html
from svformer_deploy.deploy.energy.records import RunRecord, aggregate, validate_record

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1280


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}); "
                "install it with `apt-get install -y chromium`")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--force-device-scale-factor=1", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    recs = []
    for seed in range(3):
        data = synthetic_record("base", seed=seed, img_size=64, time_steps=4, dims=(16, 32, 64, 64), head_dim=16,
                                label=f"class{seed % 2}", input_path=f"/clips/{seed}.mp4")
        validate_record(data, f"r{seed}.json")
        recs.append(RunRecord(out / f"r{seed}.json", data))
    return write_html(aggregate(recs, PRESETS["fp32"]), out / "report")


def test_html_report_is_self_contained(report_page):
    page = report_page.read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(srcs) == len(PLOTS) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_html_report_renders_in_headless_chromium_with_all_plots_visible(report_page, tmp_path):
    browser = _browser()
    url = report_page.resolve().as_uri()
    dom = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},8000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<p id="plot-status"([^>]*)>', dom.stdout)
    assert m, dom.stdout[-2000:]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))
    n = len(PLOTS)
    assert (attrs["data-ok"], attrs["data-total"]) == (str(n), str(n)), attrs  # every <img> decoded
    assert f"[plots {n}/{n}]" in dom.stdout
    boxes = json.loads(html.unescape(attrs["data-boxes"]))
    height = int(attrs["data-page-height"])

    shot = tmp_path / "report.png"
    proc = _chromium(browser, tmp_path / "profile", f"--window-size={WIDTH},{height}", f"--screenshot={shot}", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (height, WIDTH)
    colourful = (img.max(axis=2) - img.min(axis=2)) > 60  # plot colours, not text/greys/white
    assert colourful.mean() > 0.01, "screenshot is blank"
    for i, (x, y, w, h) in enumerate(boxes):
        assert w > 200 and h > 100, (i, w, h)
        region = colourful[y:y + h, x:x + w]
        assert region.size and region.mean() > 0.005, f"plot {i} ({PLOTS[i][0]}) is not visible in the screenshot"
