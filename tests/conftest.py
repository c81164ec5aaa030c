"""Shared fixtures: tiny models, the real-data location, a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Several tests send SIGINT to the commands they start. A test run started in the background by a
# shell without job control (`cmd &`, nohup) ignores SIGINT, and every process it starts inherits
# that, so those commands would never see the signal: the test processes take Ctrl-C back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


def cli_in_process(capsys, *args) -> tuple[int, str, str]:  # noqa: ANN001 - pytest's capsys fixture
    """The command in this process (``deploy.cli.main``: the console script's code path minus the interpreter
    start): exit code, stdout, stderr."""
    from svformer_deploy.deploy.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str, *fragments: str, exit_code: int = 2) -> str:
    """The contract for bad input: exit ``exit_code``, stderr starts with the one ``error:`` line (naming
    every fragment, case-insensitive), no traceback, never an internal error. Returns that line."""
    assert code == exit_code, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
    return lines[0]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """:func:`one_error_line` for a finished process."""
    one_error_line(proc.returncode, proc.stderr, *fragments, exit_code=code)
