"""A local worker process: `python -m unflicker.worker` runs segment tasks read from stdin (each
task fixes its own torch/OpenCV threads).

In, each message a pickle: a SegmentTask to run, or a MethodSpec to build ahead of the first task
(no reply). Out, each a pickle after its length (8 bytes, little-endian): ("ready", SegmentReady) as
the segment's first frames become final, then ("ok", SegmentResult) or ("error", UnflickerError).
The process starts clean (no state inherited from the caller, no re-import of the caller's script)
and keeps its weights loaded between tasks. See engine.LocalPool.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time


def _exit_with_parent(interval_s: float = 1.0) -> None:
    """End this process (mid-task too) once the process that started it is gone: a killed run must
    not leave its workers computing segments nobody will read."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> int:
    _exit_with_parent()
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the results
    tasks = sys.stdin.buffer

    from unflicker.errors import UnflickerError
    from unflicker.segments import MethodSpec, build_method, run_segment

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
        def send(message) -> None:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
            results.write(len(data).to_bytes(8, "little") + data)
            results.flush()

        try:
            message = ("ok", run_segment(task, lambda event: send(("ready", event))))
        except UnflickerError as exc:
            message = ("error", exc)
        send(message)


if __name__ == "__main__":
    sys.exit(main())
