"""Fault injection for export, simulate and energy-report: a full disk (a real, tiny tmpfs) and SIGINT /
SIGTERM at seeded random moments. The contract: one ``error:`` line, exit 2, every output either complete
at its final path or absent, no temporary left behind, and the same command succeeds when run again."""

from __future__ import annotations

import csv
import errno
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import conftest
import pytest
from conftest import CLI
from energy_fixtures import hand_record, write_record
from fixtures_models import make_model
from svformer_deploy.deploy.cli import main
from svformer_deploy.deploy.energy.records import read_record
from svformer_deploy.export.bundle import load_bundle, sha256_file
from svformer_deploy.svformer.checkpoint import load_checkpoint, save_checkpoint
from test_sim_cli import write_clip

PAGE = 4096


def run(capfd, *args: object) -> tuple[int, str, str]:
    """The command in-process; ``capfd`` also catches what C libraries (libhdf5) print on fd 2."""
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


def one_error_line(code: int, err: str, *fragments: str) -> str:
    line = conftest.one_error_line(code, err, *fragments)
    assert len([x for x in err.splitlines() if x.strip()]) == 1, err  # nothing else: no HDF5 stack either
    return line


def no_temporaries(*folders: Path) -> None:
    for folder in folders:
        if folder.is_dir():
            left = [str(p.relative_to(folder)) for p in folder.rglob(".*")]
            assert left == [], f"temporaries left in {folder}: {left}"


def complete_bundle(path: Path) -> None:
    """Every file the manifest names is there with its recorded hash and size."""
    b = load_bundle(path)
    for entries in b.manifest["files"].values():
        for e in entries if isinstance(entries, list) else [entries]:
            f = path / e["path"]
            assert f.stat().st_size == e["bytes"] and sha256_file(f) == e["sha256"], f


def complete_report(csv_path: Path, html_dir: Path) -> None:
    """Whatever energy-report outputs exist are whole."""
    if csv_path.exists():
        rows = list(csv.DictReader(csv_path.open()))
        assert {r["section"] for r in rows} >= {"total", "stage", "layer"}
    if html_dir.exists():
        assert sorted(p.name for p in html_dir.iterdir()) == ["index.html"]
        assert (html_dir / "index.html").read_text().rstrip().endswith("</html>")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny RGB checkpoint, its bundle (as exported), a short video, a run record and hand-made records."""
    d = tmp_path_factory.mktemp("faults")
    save_checkpoint(d / "rgb.pt", make_model("3stg", time_steps=2, norm="bn", in_channels=3))
    write_clip(d / "clip.mp4", frames=12, size=40)
    write_record(d, "recs/clip0.json", hand_record())
    assert main(["export", str(d / "rgb.pt"), "-o", str(d / "ref.svfd"), "--quantize", "int8",
                 "--targets", "nir,netx", "--check-clips", "0", "--quiet"]) == 0
    assert main(["simulate", "--video", str(d / "clip.mp4"), "--model", str(d / "ref.svfd"),
                 "--out", str(d / "ref_runs")]) == 0
    assert main(["energy-report", str(d / "recs"), "--csv", str(d / "ref.csv"), "--html", str(d / "ref_html")]) == 0
    return d


class TinyDisk:
    """A real tmpfs that can be sized to just below what a command needs (one page holds a filler file,
    since a tmpfs cannot be smaller than a page)."""

    FILLER = "filler.bin"

    def __init__(self, path: Path):
        self.path = path

    def limit(self, room: int) -> None:
        """Leave ``room`` bytes (rounded down to whole pages) for the command."""
        (self.path / self.FILLER).unlink(missing_ok=True)
        size = (room // PAGE + 1) * PAGE
        subprocess.run(["mount", "-o", f"remount,size={size}", "tmpfs", str(self.path)], check=True,
                       capture_output=True)
        (self.path / self.FILLER).write_bytes(b"\0" * PAGE)

    def read_only(self, on: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", "tmpfs", str(self.path)], check=True,
                       capture_output=True)

    def contents(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name != self.FILLER)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield TinyDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def pages(nbytes: int) -> int:
    return math.ceil(nbytes / PAGE) * PAGE


# ---------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fails_at", ["ir.npz", "model.nir", "netx/part_0.h5"])
def test_export_on_a_full_disk_is_one_error_naming_the_file_and_leaves_no_bundle(capfd, work, tiny_disk, fails_at):
    ref = load_bundle(work / "ref.svfd").manifest["files"]
    written = []  # bundle files in the order export writes them (the manifest keeps that order)
    for entries in ref.values():
        written += entries if isinstance(entries, list) else [entries]
    sizes = {e["path"]: e["bytes"] for e in written}
    before = [e["path"] for e in written][: [e["path"] for e in written].index(fails_at)]
    tiny_disk.limit(sum(pages(sizes[p]) for p in before) + sizes[fails_at] // 2)  # room up to half of it
    out = tiny_disk.path / "b.svfd"
    args = ["export", work / "rgb.pt", "-o", out, "--quantize", "int8", "--targets", "nir,netx", "--check-clips", "0"]
    code, stdout, err = run(capfd, *args)
    line = one_error_line(code, err, f"{out / fails_at}: no space left on device")
    assert ".tmp" not in line and stdout == ""
    assert tiny_disk.contents() == []  # no bundle, no temporary folder
    tiny_disk.limit(sum(pages(e["bytes"]) for e in written) + 64 * PAGE)
    code, _, err = run(capfd, *args)
    assert code == 0, err
    complete_bundle(out)
    no_temporaries(tiny_disk.path)


def test_simulate_on_a_full_disk_leaves_no_run_record(capfd, work, tiny_disk):
    record = next((work / "ref_runs").glob("*.json"))
    tiny_disk.limit(record.stat().st_size // 2)
    runs = tiny_disk.path / "runs"
    args = ["simulate", "--video", work / "clip.mp4", "--model", work / "ref.svfd", "--out", runs]
    code, _, err = run(capfd, *args)
    one_error_line(code, err, str(runs), "no space left on device")
    assert tiny_disk.contents() == []
    tiny_disk.limit(4 * record.stat().st_size)
    code, _, err = run(capfd, *args)
    assert code == 0, err
    [rec] = runs.glob("*.json")
    read_record(rec)
    no_temporaries(tiny_disk.path)


@pytest.mark.parametrize("output", ["csv", "html"])
def test_energy_report_on_a_full_disk_is_one_error_and_leaves_no_report(capfd, work, tiny_disk, output):
    size = (work / "ref.csv").stat().st_size if output == "csv" else (work / "ref_html/index.html").stat().st_size
    target = tiny_disk.path / ("r.csv" if output == "csv" else "html")
    tiny_disk.limit(size // 2)
    args = ["energy-report", work / "recs", f"--{output}", target]
    code, _, err = run(capfd, *args)
    expected = target if output == "csv" else target / "index.html"
    one_error_line(code, err, f"{expected}: no space left on device")
    assert tiny_disk.contents() == []  # not even the folder --html would have created
    tiny_disk.limit(2 * size + 4 * PAGE)
    code, _, err = run(capfd, *args)
    assert code == 0, err
    complete_report(tiny_disk.path / "r.csv", tiny_disk.path / "html")
    assert expected.is_file()
    no_temporaries(tiny_disk.path)


def test_a_read_only_file_system_is_one_error_naming_the_output(capfd, work, tiny_disk):
    tiny_disk.limit(1 << 20)
    tiny_disk.read_only()
    try:
        code, _, err = run(capfd, "energy-report", work / "recs", "--csv", tiny_disk.path / "r.csv")
        one_error_line(code, err, f"{tiny_disk.path / 'r.csv'}: read-only file system")
        code, _, err = run(capfd, "export", work / "rgb.pt", "-o", tiny_disk.path / "b.svfd", "--targets", "nir",
                           "--check-clips", "0")
        one_error_line(code, err, str(tiny_disk.path / "b.svfd"), "read-only file system")
    finally:
        tiny_disk.read_only(False)
    assert tiny_disk.contents() == []


# ---------------------------------------------------------------------------------------------
# SIGINT and SIGTERM at random moments
# ---------------------------------------------------------------------------------------------
def handles_sigterm(pid: int) -> bool:
    """Whether the process has installed its own SIGTERM handler (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def interrupt(args: list[str], cwd: Path, sig: int, delay: float) -> subprocess.CompletedProcess:
    """Run the console script; ``delay`` seconds after it handles signals, send ``sig``; wait for it to end."""
    env = dict(os.environ, SVFORMER_NO_PROGRESS="1")
    proc = subprocess.Popen([str(CLI), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    while proc.poll() is None and not handles_sigterm(proc.pid):
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def check_outcome(proc: subprocess.CompletedProcess, sig: int) -> bool:
    """Finished (0) or one interrupt line naming the signal (2); returns whether it was interrupted."""
    if proc.returncode == 0:
        return False
    one_error_line(proc.returncode, proc.stderr, f"interrupted by {signal.Signals(sig).name}")
    return True


COMMANDS = {  # command line (in the work folder); about how long it runs once it handles signals (idle machine)
    "export": (["export", "rgb.pt", "-o", "sig.svfd", "--force", "--quantize", "int8", "--targets", "nir,netx",
                "--check-clips", "2"], 4.0),
    "simulate": (["simulate", "--video", "clip.mp4", "--model", "ref.svfd", "--out", "sig_runs"], 3.0),
    "energy-report": (["energy-report", "recs", "--csv", "sig/r.csv", "--html", "sig/html"], 2.0),
}


FINAL = {"export": ["sig.svfd/manifest.json"], "simulate": ["sig_runs"],
         "energy-report": ["sig/r.csv", "sig/html/index.html"]}


def outputs_whole(command: str, work: Path) -> None:
    if command == "export" and (work / "sig.svfd").exists():
        complete_bundle(work / "sig.svfd")
    if command == "simulate" and (work / "sig_runs").exists():
        for rec in (work / "sig_runs").iterdir():
            read_record(rec)
    if command == "energy-report":
        complete_report(work / "sig/r.csv", work / "sig/html")
    no_temporaries(work)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigint_and_sigterm_at_random_moments_leave_whole_outputs_and_a_rerun_succeeds(capfd, monkeypatch, work,
                                                                                      command):
    args, span = COMMANDS[command]
    rng = random.Random(f"signals-{command}")
    interrupted = 0
    for i, sig in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        delay = 0.0 if i < 2 else rng.uniform(0.0, span)  # the first two land during start-up for sure
        proc = interrupt(args, work, sig, delay)
        interrupted += check_outcome(proc, sig)
        outputs_whole(command, work)
    assert interrupted >= 2, "signals sent once the command had installed its handlers did not interrupt it"
    monkeypatch.chdir(work)
    code, _, err = run(capfd, *args)
    assert code == 0, err
    assert all((work / p).exists() for p in FINAL[command])
    outputs_whole(command, work)


def test_a_checkpoint_on_a_full_disk_is_an_os_error_naming_it_and_leaves_nothing(work, tiny_disk):
    ckpt = load_checkpoint(work / "rgb.pt")
    tiny_disk.limit((work / "rgb.pt").stat().st_size // 2)
    with pytest.raises(OSError) as info:  # not torch's RuntimeError from inside its zip writer
        save_checkpoint(tiny_disk.path / "train" / "last.pt", ckpt.build_model())
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tiny_disk.path / "train" / "last.pt")
    assert tiny_disk.contents() == []


# ---------------------------------------------------------------------------------------------
# --debug
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(capfd, where):
    args = ["info", "--arch", "gigantic"]
    code, _, plain = run(capfd, *args)
    code_debug, _, err = run(capfd, *(args + ["--debug"] if where == "after" else ["--debug", *args]))
    assert code == code_debug == 2
    assert "Traceback" not in plain and "Traceback (most recent call last)" in err and "SVFormerError" in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [plain.strip()]


def test_an_interrupt_raised_inside_a_callback_is_not_printed_but_other_errors_are() -> None:
    """A signal can arrive while Python runs a weakref callback (e.g. the import machinery's module-lock
    callback); the Interrupted raised there cannot propagate and Python would print "Exception ignored in ...".
    Inside signals_raise it is dropped silently (it is recorded and raised again at the next safe point);
    any other unraisable error is still printed. Run in a fresh interpreter (pytest installs its own hook)."""
    import sys

    script = """
import signal, weakref
from svformer_deploy.svformer.interrupts import Interrupted, signals_raise
class Thing: pass
def interrupted(_ref): raise Interrupted(signal.SIGINT)
def broken(_ref): raise ValueError("a real bug in a callback")
with signals_raise():
    a, b = Thing(), Thing()
    refs = [weakref.ref(a, interrupted), weakref.ref(b, broken)]
    del a, b
print("done")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert "Interrupted" not in proc.stderr and "SIGINT" not in proc.stderr, proc.stderr
    assert proc.stderr.count("Exception ignored") == 1 and "a real bug in a callback" in proc.stderr


def test_an_error_a_library_raised_because_of_our_interrupt_is_reported_as_the_interrupt() -> None:
    """A library that catches the interrupt and raises its own error (seen: a RuntimeError while matplotlib's
    import was cut) still gives the interrupt's one line and exit 2, not an internal error."""
    from svformer_deploy.deploy.errors import outcome
    from svformer_deploy.svformer.interrupts import Interrupted

    try:
        try:
            raise Interrupted(signal.SIGTERM)
        except KeyboardInterrupt:
            raise RuntimeError("could not finish the import") from None
    except RuntimeError as e:
        e.__context__ = e.__context__ or Interrupted(signal.SIGTERM)
        code, lines, _ = outcome(e)
    assert code == 2 and lines == ["error: interrupted by SIGTERM; unfinished outputs were removed"]
    code, lines, _ = outcome(RuntimeError("a real bug"))
    assert code == 1 and lines[0].startswith("error: internal error (RuntimeError: a real bug)")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_export_qat_fine_tuning_is_one_line_and_writes_nothing(tmp_path, sig):
    """``export --qat-epochs``: the signal arrives while the epochs run (seen on their progress bar, stderr on a
    terminal): exit 2, the interrupt's one line, no bundle and no temporaries."""
    import pty
    import re
    import select

    from test_qat_cli import train_float

    checkpoint = train_float(tmp_path / "float")
    master, slave = pty.openpty()  # a terminal that reports 0 columns: the bars must still be drawn
    proc = subprocess.Popen([str(CLI), "export", str(checkpoint), "--qat-epochs", "1000", "-o", "q.svfd"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 180

    def read(timeout: float) -> bool:
        nonlocal seen
        if select.select([master], [], [], timeout)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return False
            seen += chunk
            return bool(chunk)
        return True

    while b"QAT epoch 1/1000" not in seen and proc.poll() is None and time.monotonic() < deadline:
        read(0.5)
    assert b"QAT epoch 1/1000" in seen, seen.decode(errors="replace")
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(sig)
    proc.wait(timeout=120)
    while read(1.0):
        pass
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", seen.decode(errors="replace")).replace("\r", "\n")
    assert proc.returncode == 2 and "Traceback" not in text, text
    assert [line.strip() for line in text.splitlines() if "error:" in line] == [
        f"error: interrupted by {signal.Signals(sig).name}; unfinished outputs were removed"], text
    assert not (tmp_path / "q.svfd").exists()
    no_temporaries(tmp_path)
