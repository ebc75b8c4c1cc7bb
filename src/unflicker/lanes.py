"""Threads of the pass loop and of the methods, each keeping the results the same bits as on one
thread: every call computes what it would alone, with the inputs it would have alone.

- `ahead`: work for the next frames runs on other threads while the caller handles this one.
- `each`: independent calls spread over the lanes.
- `Behind`: calls made in order on a thread of their own (writes, measurements nobody waits for
  until `flush`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def ahead(work: Callable[[int], T], n: int, lanes: int, depth: int = 1) -> Iterator[tuple[int, T]]:
    """(i, work(i)) for i in range(n), in order; with 2 lanes or more, work(i + 1) ... work(i + depth)
    run on `depth` threads of their own while the caller handles i (a few frames ahead: memory does
    not grow). `work` must need nothing from the caller's handling of earlier frames (with depth > 1,
    nor from its own calls for other frames); each call computes what it would alone, so the results
    are the same bits with any number of lanes."""
    if lanes < 2 or n < 2:
        for i in range(n):
            yield i, work(i)
        return
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="lane") as pool:
        pending = deque(pool.submit(work, i) for i in range(min(depth, n)))
        try:
            for i in range(n):
                current = pending.popleft()
                if i + depth < n:
                    pending.append(pool.submit(work, i + depth))  # queued: starts as soon as a thread is free
                yield i, current.result()
        finally:
            for future in pending:  # a failed or abandoned sweep: what has not started never will
                future.cancel()


def each(work: Callable[..., None], items: Iterator[tuple], lanes: int) -> None:
    """work(*item) for every item, on `lanes` threads with at most `lanes` calls waiting (the items
    are drawn on the caller's thread); the first error is raised once the calls started have ended.
    Each call must need nothing from the others: they run in any order."""
    if lanes < 2:
        for item in items:
            work(*item)
        return
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="lane") as pool:
        pending: deque[Future] = deque()
        try:
            for item in items:
                if len(pending) >= lanes:
                    pending.popleft().result()
                pending.append(pool.submit(work, *item))
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class Behind:
    """Calls run in the order they are submitted, on a thread of their own, with at most `depth`
    waiting: the caller goes on meanwhile. What a call reads must not change after it is submitted.
    `flush()` (any thread) returns once every call has run and raises the first error; a failed call
    stays queued, so every later submit or flush raises it again. `close()` flushes and stops the
    thread; `abort()` only stops it (calls not started are dropped). With fewer than 2 `lanes` there
    is no thread: each call runs at submit, on the caller's (a worker keeps to its one core)."""

    def __init__(self, lanes: int, depth: int = 1, name: str = "behind"):
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) if lanes >= 2 else None
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()

    def submit(self, work: Callable[..., None], *args) -> None:
        with self._lock:
            self._wait(self.depth - 1)
            if self._pool is None:
                work(*args)
            else:
                self._pending.append(self._pool.submit(work, *args))

    def flush(self) -> None:
        with self._lock:
            self._wait(0)

    def _wait(self, most: int) -> None:
        while self._pending and (len(self._pending) > most or self._pending[0].done()):
            self._pending[0].result()  # raises a failed call's error, which stays queued
            self._pending.popleft()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.abort()

    def abort(self) -> None:
        with self._lock:
            for future in self._pending:
                future.cancel()
            self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a call already running ends first
