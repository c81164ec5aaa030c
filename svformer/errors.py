"""Errors a user can fix. The CLI turns them into one ``error:`` line and an exit code."""


class SVFormerError(Exception):
    """Bad input or usage (unreadable file, unknown architecture, shape mismatch...): exit 2."""

    exit_code = 2


class CheckFailed(SVFormerError):
    """A check the user asked for did not pass (e.g. fidelity below target with ``--strict``): exit 1."""

    exit_code = 1
