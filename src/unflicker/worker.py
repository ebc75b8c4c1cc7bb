"""A local worker process: `python -m unflicker.worker` runs segment tasks read from stdin (each
task fixes its own torch/OpenCV threads).

Each message is a pickle: a SegmentTask in; ("ok", SegmentResult) or ("error", UnflickerError)
out. A MethodSpec in builds that method ahead of the first task (no reply). The process starts
clean (no state inherited from the caller, no re-import of the caller's script) and keeps its
weights loaded between tasks. See engine.LocalPool.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable


def watch_parent(on_gone: Callable[[], None], interval_s: float = 1.0) -> None:
    """Call `on_gone` (on a thread of its own) once the process that started this one is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        on_gone()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _exit_with_parent() -> None:
    """End this process (mid-task too) once the process that started it is gone: a killed run must
    not leave its workers computing segments nobody will read."""
    watch_parent(lambda: os._exit(1))


def _progress_reporter(argv: list[str]):
    """report(fraction) on the pipe `--progress-fd N` names (engine.PROGRESS_RECORD), or None without one.
    A report the pipe has no room for is dropped: the task never waits for the bar."""
    if "--progress-fd" not in argv:
        return None
    from unflicker.engine import PROGRESS_RECORD

    fd = int(argv[argv.index("--progress-fd") + 1])
    os.set_blocking(fd, False)

    def report(fraction: float) -> None:
        try:
            os.write(fd, PROGRESS_RECORD.pack(fraction))
        except OSError:  # full (BlockingIOError) or the reader gone: the result still goes on its own pipe
            pass

    return report


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the run that started this worker stops it
    # (engine.LocalPool.close); its own KeyboardInterrupt would only print a traceback on the way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    report = _progress_reporter(sys.argv[1:] if argv is None else argv)
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the results
    tasks = sys.stdin.buffer

    from unflicker.errors import UnflickerError
    from unflicker.segments import MethodSpec, build_method, file_error, own_process, run_segment

    own_process()

    while True:
        try:
            task = pickle.load(tasks)
        except EOFError:
            return 0
        if isinstance(task, MethodSpec):  # build ahead of the first task; its errors show with the task
            try:
                build_method(task)
            except UnflickerError:
                pass
            continue
        try:
            message = ("ok", run_segment(task, report))
        except UnflickerError as exc:
            message = ("error", exc)
        except OSError as exc:  # the work folder gone or full: the task's error, not a crash retried three times
            message = ("error", file_error(task, exc))
        try:
            pickle.dump(message, results, protocol=pickle.HIGHEST_PROTOCOL)
            results.flush()
        except OSError:  # the run is gone (killed outright): nothing to report to
            return 1


if __name__ == "__main__":
    sys.exit(main())
