"""The lanes' threads: results in order, errors passed on, never more waiting than allowed."""

import threading
import time

import pytest

from unflicker.errors import InputError
from unflicker.lanes import Behind, ahead, each


def test_a_second_lane_runs_one_frame_ahead_in_order_and_passes_errors_on():
    started, handled = [], []

    def work(i):
        started.append((i, len(handled)))  # how many frames the caller had handled when i started
        if i == 5:
            raise InputError("frame 5 is bad")
        return i * i

    results = []
    with pytest.raises(InputError, match="frame 5"):
        for i, value in ahead(work, 8, 2):
            time.sleep(0.01)  # the caller's own work on frame i
            handled.append(i)
            results.append((i, value))
    assert results == [(i, i * i) for i in range(5)]
    assert all(i - 1 <= done <= i for i, done in started)  # never more than one frame ahead
    assert any(done == i - 1 for i, done in started[1:])  # and ahead while the caller works
    assert list(ahead(lambda i: -i, 3, 1)) == [(0, 0), (1, -1), (2, -2)]


def test_two_lanes_settle_two_frames_ahead_in_order_and_pass_errors_on():
    started, handled, running, most = [], [], [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append((i, len(handled)))
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        if i == 6:
            raise InputError("frame 6 is bad")
        return i * i

    results = []
    with pytest.raises(InputError, match="frame 6"):
        for i, value in ahead(work, 10, 2, depth=2):
            time.sleep(0.005)
            handled.append(i)
            results.append((i, value))
    assert results == [(i, i * i) for i in range(6)]  # in order, up to the failure
    assert all(i - 2 <= done <= i for i, done in started)  # never more than two frames ahead
    assert most[0] == 2  # two at once


def test_each_spreads_independent_calls_over_two_lanes_and_passes_errors_on():
    done, threads, running, most, drawn = [], set(), [0], [0], []
    lock = threading.Lock()

    def work(i, value):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            done.append((i, value))

    def items(n, bad=None):
        for i in range(n):
            drawn.append((i, len(done)))  # how many calls had ended when item i was drawn
            yield (i, "bad" if i == bad else i * i)

    each(work, items(8), 2)
    assert sorted(done) == [(i, i * i) for i in range(8)] and most[0] == 2
    assert threading.get_ident() not in threads
    assert all(i - done_then <= 2 for i, done_then in drawn)  # never more than two calls waiting

    def failing(i, value):
        if value == "bad":
            raise InputError(f"frame {i} is bad")
        work(i, value)

    done.clear()
    with pytest.raises(InputError, match="frame 3"):
        each(failing, items(20, bad=3), 2)
    assert len(done) < 20  # stopped drawing at the failure
    done.clear()
    each(work, items(3), 1)  # one lane: in order on the caller's thread
    assert done == [(0, 0), (1, 1), (2, 4)]


def test_behind_runs_calls_in_order_on_its_own_thread_and_reports_errors():
    done, threads = [], set()

    def work(t, value, pause=0.005):
        time.sleep(pause)
        if value is None:
            raise OSError("disk full")
        threads.add(threading.get_ident())
        done.append((t, value))

    behind = Behind(2, depth=1)
    start = time.perf_counter()
    behind.submit(work, 0, 0, 0.2)
    assert time.perf_counter() - start < 0.1 and done == []  # the caller goes on meanwhile
    for t in range(1, 6):
        behind.submit(work, t, t * 2)
        assert len(behind._pending) <= 1  # never more than depth waiting
    behind.flush()
    assert done == [(t, t * 2) for t in range(6)] and threading.get_ident() not in threads
    behind.close()
    behind.close()  # twice is fine

    done.clear()
    failing = Behind(2, depth=2)
    failing.submit(work, 0, 0)
    failing.submit(work, 1, None)
    with pytest.raises(OSError, match="disk full"):
        failing.flush()
    with pytest.raises(OSError, match="disk full"):  # and again: a failed call is not forgotten
        failing.submit(work, 2, 4)
    with pytest.raises(OSError, match="disk full"):
        failing.close()  # raises, and stops the thread all the same
    assert failing._pool._shutdown and done == [(0, 0)]  # nothing after the failure ran

    threads.clear()
    inline = Behind(1)  # one lane: no thread, each call at submit
    inline.submit(work, 7, 7)
    assert done[-1] == (7, 7) and threads == {threading.get_ident()}
    with pytest.raises(OSError, match="disk full"):
        inline.submit(work, 8, None)
    inline.close()
