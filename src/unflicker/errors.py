"""Typed errors raised by the library; the CLI turns each into one line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class UnflickerError(Exception):
    """Base class for every error the library raises on purpose."""

    exit_code = 1


class InputError(UnflickerError):
    """The input is missing, unreadable, empty or inconsistent."""

    exit_code = 2


class OutputError(UnflickerError):
    """The output cannot be written (exists, same as input, folder not writable)."""

    exit_code = 3


class WeightsError(UnflickerError):
    """Shipped or given network weights are missing or do not match the network."""

    exit_code = 4


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn, attributed to the first caller outside this package (a program's call of the library, the
    CLI's): what a warning filter or the shown file and line name, whichever path inside led to it."""
    level, frame = 2, sys._getframe(1)  # 2: warn's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, the web page's Cancel), raised in the main thread like Ctrl-C, so a
    run cleans up the same way: workers stopped, temporary files and folders removed, no partial output."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises `Terminated` in the main thread, once (a second one during the clean-up
    is ignored); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up runs to its end
        raise Terminated()

    with keep_sigterm_handler():
        signal.signal(signal.SIGTERM, terminated)
        yield


@contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """The SIGTERM handler as it was before, again on leaving (main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
