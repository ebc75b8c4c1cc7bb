"""Progress bars (tqdm) that leave the program's multiprocessing start method alone."""

from __future__ import annotations

import multiprocessing

from tqdm import tqdm
from tqdm.std import TqdmDefaultWriteLock


def bar(**options) -> tqdm:
    """tqdm(**options), its lock made first where tqdm has none yet (see `_ready_lock`)."""
    _ready_lock()
    return tqdm(**options)


def _ready_lock() -> None:
    """tqdm's first bar (a disabled one too) makes its multiprocessing lock with `multiprocessing.RLock()`: from
    the default context, which fixes the start method for the rest of the program (a program calling the library
    and then `multiprocessing.set_start_method` got RuntimeError 'context has already been set'). While no start
    method is set, the same lock is made here from the default method's context by name, which sets none."""
    with TqdmDefaultWriteLock.th_lock:
        if hasattr(TqdmDefaultWriteLock, "mp_lock") or multiprocessing.get_start_method(allow_none=True) is not None:
            return  # made already, or the program chose its method: tqdm makes it as it would
        try:
            default = multiprocessing.get_all_start_methods()[0]  # the platform's default, first (documented)
            TqdmDefaultWriteLock.mp_lock = multiprocessing.get_context(default).RLock()
        except (ImportError, OSError):  # as tqdm: no semaphores here (some sandboxes), its thread lock alone
            TqdmDefaultWriteLock.mp_lock = None
