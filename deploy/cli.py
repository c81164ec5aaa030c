"""The ``svformer-deploy`` command line (click). Commands are thin: parse, call one library function, render."""

from __future__ import annotations

import importlib
import sys

import click

# command name -> "module:attribute"; modules are imported only when their command runs,
# so ``--help`` is instant and does not import torch.
COMMANDS: dict[str, str] = {
    "info": "svformer_deploy.deploy.commands.info:info",
    "export": "svformer_deploy.deploy.commands.export:export",
    "probe": "svformer_deploy.deploy.commands.probe:probe",
    "train": "svformer_deploy.deploy.commands.train:train",
    "simulate": "svformer_deploy.deploy.commands.simulate:simulate",
    "energy-report": "svformer_deploy.deploy.commands.energy_report:energy_report",
    "demo": "svformer_deploy.deploy.commands.demo:demo",
    "verify": "svformer_deploy.deploy.commands.verify:verify",
    "evaluate": "svformer_deploy.deploy.commands.evaluate:evaluate",
    "fit": "svformer_deploy.deploy.commands.fit:fit",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        from svformer_deploy.svformer.interrupts import deferred_interrupts

        module, attr = COMMANDS[name].split(":")
        with deferred_interrupts():  # a signal during the command's imports (torch's C++ init) is raised after them
            return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="--debug anywhere on the command line shows the traceback of an error as well "
                    "(the exit code stays the same).")
@click.version_option(package_name="svformer-deploy")
def cli() -> None:
    """Deploy trained SVFormer spiking video transformers: export, simulate, count, report energy."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one ``error:`` line (exit 2, or 1 for failed checks); see deploy/errors.py."""
    from svformer_deploy.deploy.errors import run_cli

    return run_cli(cli, argv, process_exits=argv is None)  # argv None: the console script, which exits next


if __name__ == "__main__":
    sys.exit(main())
