"""Peak memory of one local worker and of the main process of `unflicker run`, per setting (the numbers behind
`config.memory_needs`).

    python benchmarks/memory_settings.py --size 854x480 --frames 120 [--setting NAME ...] [--atlas-steps 50]

The input: the first FRAMES frames of ../shared/data/clean/cockatoo.mp4 scaled, with global flicker
(benchmarks/engine.py's scaled_clip). Each setting runs `unflicker run --workers 2` once; every process of the
run's tree is sampled every 0.1 s, and the peak of each is its kernel-kept high-water mark (VmHWM in
/proc/PID/status, exact, not sampled). Printed per setting: the largest worker's peak, the main process's, and
the rest (ffmpeg) together, in GB. Choose FRAMES so the run has two segments or more (a segment's core is
--segment-frames, 60 by default): one task runs in the main process, with no worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import scaled_clip  # noqa: E402

SETTINGS = {
    "default": [],
    "threads 2": ["--threads", "2"],
    "classical": ["--method", "classical"],
    "fast": ["--preset", "fast"],
    "segment-frames 120": ["--segment-frames", "120"],
    "paper": ["--preset", "paper"],
}


def high_water(pid: int) -> int | None:
    """A process's peak RSS so far, bytes (None: it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree(pid: int) -> dict[int, str]:
    """pid -> command line of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, stack = {}, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                out[p] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        stack.extend(children.get(p, []))
    return out


def measure(clip: Path, args: list[str], out: Path) -> tuple[float, float, float, float]:
    """(largest worker peak, main peak, rest, wall s) of one run, GB."""
    cmd = [sys.executable, "-m", "unflicker", "run", str(clip), "-o", str(out), "--quiet", "--overwrite",
           "--workers", "2", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[str, int]] = {}
    while proc.poll() is None:
        for pid, line in tree(proc.pid).items():
            hwm = high_water(pid)
            if hwm is not None:
                kind = "main" if pid == proc.pid else "worker" if "unflicker.worker" in line else "other"
                peaks[pid] = (kind, max(hwm, peaks.get(pid, (kind, 0))[1]))
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    wall = time.perf_counter() - start

    def peak(kind: str, combine=max) -> float:
        return combine([v for k, v in peaks.values() if k == kind] or [0]) / 2**30

    return peak("worker"), peak("main"), peak("other", sum), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="854x480")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--setting", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--atlas-steps", type=int, help="neural settings: fewer steps (the peak is per step)")
    p.add_argument("--extra", nargs="*", default=[], help="more options for every run")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = scaled_clip(args.frames, size, Path(tmp) / "clip.mkv")
        print(f"| setting | {args.size}, {args.frames} frames | worker GB | main GB | ffmpeg GB | wall s |")
        for name in args.setting:
            extra = list(SETTINGS[name]) + args.extra
            if args.atlas_steps and name != "classical":
                extra += ["--atlas-steps", str(args.atlas_steps)]
            worker, main_, other, wall = measure(clip, extra, Path(tmp) / "out.mp4")
            print(f"| {name} | {' '.join(extra)} | {worker:.2f} | {main_:.2f} | {other:.2f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
