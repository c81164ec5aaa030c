"""Turning exceptions into the CLI contract: one ``error:`` line on stderr and an exit code.

Exit codes: 0 success; 1 a check failed; 2 bad input or usage. ``--debug`` (anywhere on the
command line) re-raises with the traceback.
"""

from __future__ import annotations

import errno
import sys
import warnings

import click
from svformer_deploy.svformer.errors import SVFormerError


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def run_cli(cli: click.Group, argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args  # accepted anywhere on the command line
    args = [a for a in args if a != "--debug"]
    if not debug:  # library warnings would break the one-line contract on stderr
        warnings.simplefilter("ignore")
    try:
        cli.main(args=args, prog_name="svformer-deploy", standalone_mode=False)
        return 0
    except SVFormerError as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(e)}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 2
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        if isinstance(e, click.UsageError) and e.ctx is not None:
            click.echo(f"(see: {e.ctx.command_path} --help)", err=True)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("error: interrupted; nothing was written", err=True)
        return 2
    except OSError as e:
        if debug:
            raise
        if e.errno == errno.ENOSPC:
            click.echo(f"error: no space left on device{': ' + e.filename if e.filename else ''}", err=True)
        else:
            click.echo(f"error: {_one_line(e)}", err=True)
        return 2
    except Exception as e:  # an internal bug: still one line, the traceback behind --debug
        if debug:
            raise
        click.echo(
            f"error: internal error ({type(e).__name__}: {_one_line(e)}); rerun with --debug for the traceback",
            err=True,
        )
        return 1
