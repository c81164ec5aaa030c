"""Shared fixtures: tiny models, the real-data location, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SVFORMER_DATA", REPO.parent / "shared" / "data")).resolve()
CLI = Path(sys.executable).with_name("svformer-deploy")


def data_path(*parts: str) -> Path:
    """A path inside the shared real-data folder; skips the test (with the reason) when absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (set SVFORMER_DATA to the shared data folder)")
    return p


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``svformer-deploy`` console script as a user would."""
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1")
    return subprocess.run(
        [str(CLI), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """The contract for bad input: exit ``code``, one ``error:`` line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
