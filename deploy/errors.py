"""Turning exceptions into the CLI contract: one ``error:`` line on stderr and an exit code.

Exit codes: 0 success; 1 a check failed (or an internal error); 2 bad input, usage, a file system
that cannot take the output (full, read-only, not permitted), or an interrupt (SIGINT or SIGTERM:
both raise :class:`~svformer_deploy.svformer.interrupts.Interrupted`, so the same clean-up runs).
``--debug`` (anywhere on the command line) prints the traceback as well; the exit code stays the same.
"""

from __future__ import annotations

import sys
import traceback
import warnings

import click
from svformer_deploy.svformer.errors import SVFormerError
from svformer_deploy.svformer.interrupts import (
    Interrupted,
    deferred_interrupts,
    signal_name,
    signals_raise,
    swallowed,
)

INTERRUPT_EXIT = 2  # the interrupt code (SIGINT and SIGTERM alike): see docs/guarantees.md


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


def _interrupt_line(e: BaseException) -> str:
    signum = getattr(e, "signum", None)
    if signum is None:  # a library turned our Interrupted into a plain KeyboardInterrupt (Ray's ray.wait does)
        signum = swallowed()
    return f"error: interrupted by {signal_name(signum)}; unfinished outputs were removed"


def _chained_interrupt(e: BaseException) -> BaseException | None:
    """The interrupt behind ``e`` (in its ``__cause__`` / ``__context__`` chain), if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _os_error_line(e: OSError) -> str:
    reason = e.strerror[:1].lower() + e.strerror[1:] if e.strerror else _one_line(e)  # "no space left on device"
    if e.filename is None:
        return f"error: {reason}"
    where = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"error: {where}: {reason}"


def outcome(e: BaseException) -> tuple[int, list[str], bool]:
    """Exit code, stderr lines and whether ``--debug`` shows a traceback, for an exception out of a command."""
    if isinstance(e, click.exceptions.Exit):
        return e.exit_code, [], False
    if isinstance(e, click.exceptions.Abort):  # click turns KeyboardInterrupt (our Interrupted) into Abort
        return INTERRUPT_EXIT, [_interrupt_line(e.__cause__ or e)], True
    if isinstance(e, KeyboardInterrupt):
        return INTERRUPT_EXIT, [_interrupt_line(e)], True
    if isinstance(e, SVFormerError):
        return e.exit_code, [f"error: {_one_line(e)}"], True
    if isinstance(e, click.ClickException):
        lines = [f"error: {_one_line(e.format_message())}"]
        if isinstance(e, click.UsageError) and e.ctx is not None:
            lines.append(f"(see: {e.ctx.command_path} --help)")
        return 2, lines, False
    if isinstance(e, OSError):  # files: missing, unreadable, disk full, read-only (the path is named)
        return 2, [_os_error_line(e)], True
    chained = _chained_interrupt(e)
    if chained is not None:  # a library wrapped our interrupt (e.g. a RuntimeError raised while an import was cut)
        return INTERRUPT_EXIT, [_interrupt_line(chained)], True
    if isinstance(e, Exception):  # an internal bug: still one line, the traceback behind --debug
        return 1, [f"error: internal error ({type(e).__name__}: {_one_line(e)}); "
                   "rerun with --debug for the traceback"], True
    raise e  # SystemExit, GeneratorExit


def run_cli(cli: click.Group, argv: list[str] | None = None, process_exits: bool = False) -> int:
    """Run ``cli`` on ``argv`` under the contract above; returns the exit code.

    SIGINT and SIGTERM are handled for the whole run: either one unwinds the command through its
    clean-up and gives the interrupt line and code. Signals arriving while the outcome is reported
    are held back and dropped (the command has ended). Afterwards the previous handlers come back,
    or, with ``process_exits`` (the console script), the two signals are ignored until the exit.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args  # accepted anywhere on the command line
    args = [a for a in args if a != "--debug"]
    if not debug:  # library warnings would break the one-line contract on stderr
        warnings.simplefilter("ignore")
    with signals_raise(then_ignore=process_exits):
        try:
            cli.main(args=args, prog_name="svformer-deploy", standalone_mode=False)
            if swallowed() is not None:  # a library caught the interrupt; the outputs made are complete
                raise Interrupted(swallowed())
            return 0
        except BaseException as e:  # noqa: BLE001 - every outcome is mapped by `outcome`
            with deferred_interrupts(drop=True):
                code, lines, has_traceback = outcome(e)
                if debug and has_traceback:
                    traceback.print_exception(e, file=sys.stderr)
                for line in lines:
                    click.echo(line, err=True)
                return code

