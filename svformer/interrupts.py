"""SIGINT and SIGTERM as one exception, and short sections that a signal must not cut in half.

While :func:`signals_raise` is active (the CLI wraps every command in it), SIGINT (Ctrl-C) and
SIGTERM both raise :class:`Interrupted` — a ``KeyboardInterrupt`` — in the main thread, so the same
clean-up code runs for both (temporary files and folders are removed on the way out).
:func:`deferred_interrupts` holds a signal for the duration of a short critical section (creating a
temporary, renaming it into place, removing it again) and raises it when the section ends, so an
output is either complete at its final path or absent, and no temporary survives. An interrupt that
some library catches and drops is raised again when the next such section starts (no new output
appears after an interrupt), and :func:`swallowed` tells the CLI about it.

Forked children (worker pools) get the handlers that were in place before, so they keep the
default behaviour of worker processes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_previous: dict[int, object] = {}  # handlers before signals_raise, while it is active
_owner: int | None = None  # pid of the process that installed the handlers
_depth = 0  # nesting of deferred_interrupts in the main thread
_pending: int | None = None  # a signal held back by deferred_interrupts
_raised: int | None = None  # the signal last raised as Interrupted (raised again if some library swallowed it)
_hooks: list = []  # sys.unraisablehook before signals_raise, while it is active


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM while :func:`signals_raise` is active."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(self.signum)  # args stay (signum,) so the exception pickles

    def __str__(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int | None) -> str:
    """``"SIGINT"``, ``"SIGTERM"``, ...; a plain ``KeyboardInterrupt`` (``None``) counts as SIGINT."""
    return signal.Signals(signum if signum is not None else signal.SIGINT).name


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if os.getpid() != _owner:  # a forked child that still has our handler: behave as the default would
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _depth:
        if _pending is None:
            _pending = signum
        return
    _raise(signum)


def _raise(signum: int) -> None:
    global _raised
    _raised = signum
    raise Interrupted(signum)


def pending() -> int | None:
    """The signal that :func:`deferred_interrupts` holds back at the moment, if any."""
    return _pending


def swallowed() -> int | None:
    """The signal raised as :class:`Interrupted` during :func:`signals_raise`, if any (even if caught since)."""
    return _raised


def _restore_in_child() -> None:
    global _depth, _pending, _raised
    if _owner is None or not _previous:
        return
    for signum, old in _previous.items():
        try:
            signal.signal(signum, old)
        except (ValueError, TypeError):  # forked from a thread other than the main one: keep the pid check
            pass
    _depth, _pending, _raised = 0, None, None


os.register_at_fork(after_in_child=_restore_in_child)


@contextmanager
def signals_raise(then_ignore: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the block; the previous handlers come back after.

    With ``then_ignore`` (the process ends right after the block) they are ignored after it instead,
    so a signal during interpreter shutdown cannot turn a finished run into a kill. Outside the main
    thread (where Python cannot install handlers) the block runs unchanged.
    """
    global _owner, _depth, _pending, _raised
    if threading.current_thread() is not threading.main_thread() or _owner is not None:
        yield  # not the main thread, or already active (nested)
        return
    _depth, _pending, _raised, _owner = 0, None, None, os.getpid()
    _hooks.append(sys.unraisablehook)
    sys.unraisablehook = _unraisable
    try:
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # e.g. SIGINT of a background job stays ignored
                _previous[signum] = signal.signal(signum, _handler)
        yield
    finally:
        _depth += 1  # a signal from here on is only recorded, then forgotten with the handlers
        for signum, old in _previous.items():
            signal.signal(signum, signal.SIG_IGN if then_ignore else old)
        _previous.clear()
        sys.unraisablehook = _hooks.pop()
        _depth, _pending, _raised, _owner = 0, None, None, None


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    """An :class:`Interrupted` raised where Python cannot propagate it (a weakref or GC callback, e.g. inside
    the import machinery) is dropped silently instead of printed as "Exception ignored in ..."; it is already
    recorded (:func:`swallowed`) and raised again at the next safe point."""
    if not isinstance(info.exc_value, Interrupted):
        (_hooks[-1] if _hooks else sys.__unraisablehook__)(info)


class _Deferred:
    """Context manager behind :func:`deferred_interrupts`."""

    def __init__(self, drop: bool):
        self.drop = drop

    def __enter__(self) -> None:
        global _depth
        if threading.current_thread() is not threading.main_thread():
            return
        if _raised is not None and not self.drop and sys.exc_info()[1] is None:
            _raise(_raised)  # an interrupt that some library caught and dropped: no new output after it
        _depth += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        global _depth, _pending
        if threading.current_thread() is not threading.main_thread():
            return False
        _depth -= 1
        if _depth or _pending is None:
            return False
        signum, _pending = _pending, None
        if self.drop:
            return False
        unwinding = exc if exc is not None else sys.exc_info()[1]
        if isinstance(unwinding, KeyboardInterrupt):
            return False  # already on the way out for an interrupt
        _raise(signum)
        return False


def deferred_interrupts(drop: bool = False) -> _Deferred:
    """Hold SIGINT/SIGTERM during the block and raise :class:`Interrupted` right after it (nestable).

    For short sections only (a rename, removing a temporary): a signal arriving inside waits for them.
    With ``drop`` a held signal is forgotten instead (the work it would stop is already over).
    """
    return _Deferred(drop)
