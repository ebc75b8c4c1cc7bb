"""A local worker process: `python -m unflicker.worker` runs segment tasks read from stdin (each
task fixes its own torch/OpenCV threads).

Each message is a pickle: a SegmentTask in; ("ok", SegmentResult) or ("error", UnflickerError)
out. The process starts clean (no state inherited from the caller, no re-import of the caller's
script) and keeps its weights loaded between tasks. See engine.LocalPool.
"""

from __future__ import annotations

import os
import pickle
import sys


def main() -> int:
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the results
    tasks = sys.stdin.buffer

    from unflicker.errors import UnflickerError
    from unflicker.segments import run_segment

    while True:
        try:
            task = pickle.load(tasks)
        except EOFError:
            return 0
        try:
            message = ("ok", run_segment(task))
        except UnflickerError as exc:
            message = ("error", exc)
        pickle.dump(message, results, protocol=pickle.HIGHEST_PROTOCOL)
        results.flush()


if __name__ == "__main__":
    sys.exit(main())
