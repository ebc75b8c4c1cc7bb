"""End-to-end speed and peak memory of `unflicker run`, timed from outside with /usr/bin/time -v.

    python benchmarks/e2e.py speed [--input DIR_OR_VIDEO] [--repeats 3] [--runs "neural:balanced" ...]
    python benchmarks/e2e.py memory [--lengths 100 1000] [--size 854x480] [--runs "neural:balanced"]

speed: each run setting ("method:preset", or "method") on one input, --repeats times, the runs of
different settings interleaved so that a change in machine load hits them alike; reports the median
wall time, frames/s and peak RSS. memory: builds clips of each length (854x480, or --size) (a clean clip played
forwards and backwards with synthetic global flicker), runs each setting once per length and
reports peak RSS and its ratio to the shortest clip's. Appends a section to
benchmarks/results/e2e.md (the command and the machine's load are recorded with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "e2e.md"


def timed_run(input_path: Path, setting: str, out_dir: Path) -> tuple[float, float]:
    """One `unflicker run` under /usr/bin/time -v: (wall seconds, peak RSS MB)."""
    method, _, preset = setting.partition(":")
    out = out_dir / f"out-{time.monotonic_ns()}.mp4"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "unflicker", "run", str(input_path), "-o", str(out),
           "--method", method, "--quiet"] + (["--preset", preset] if preset else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    out.unlink()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return seconds, rss_kb / 1024


def frame_count(input_path: Path) -> int:
    from unflicker import io

    return io.probe(input_path).frame_count


def make_clip(length: int, out: Path, source: Path, size: tuple[int, int] = (854, 480)) -> Path:
    """A clip of `length` frames of size (w, h): `source` forwards, backwards, ... with global flicker."""
    import cv2

    from unflicker import io, synth

    frames = [cv2.resize(io.to_float(f.image), size, interpolation=cv2.INTER_AREA)
              for f in io.read_frames(source)]
    loop = frames + frames[-2:0:-1]
    clip = [loop[t % len(loop)] for t in range(length)]
    flickered = synth.add_flicker(np.stack(clip), "global", seed=0)
    layout = dataclasses.replace(io.probe(source), width=size[0], height=size[1], frame_count=length, has_audio=False)
    with io.VideoWriter(out, layout) as writer:
        for frame in flickered:
            writer.write(frame, None, None)
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def speed(args: argparse.Namespace, out_dir: Path) -> str:
    n = frame_count(args.input)
    times: dict[str, list[tuple[float, float]]] = {s: [] for s in args.runs}
    for _ in range(args.repeats):
        for setting in args.runs:
            times[setting].append(timed_run(args.input, setting, out_dir))
            print(setting, times[setting][-1], flush=True)
    lines = [f"### speed: {args.input.relative_to(ROOT.parent) if args.input.is_relative_to(ROOT.parent) else args.input}"
             f", {n} frames, median of {args.repeats} (load average at the end {load_average()})", "",
             "| setting | wall s (each run) | median s | frames/s | peak RSS MB |", "|---|---|---|---|---|"]
    for setting, runs in times.items():
        med = statistics.median(t for t, _ in runs)
        lines.append(f"| {setting} | {', '.join(f'{t:.1f}' for t, _ in runs)} | {med:.1f} | {n / med:.2f} | "
                     f"{max(r for _, r in runs):.0f} |")
    return "\n".join(lines)


def memory(args: argparse.Namespace, out_dir: Path) -> str:
    size = tuple(int(x) for x in args.size.split("x"))
    clips = {n: make_clip(n, out_dir / f"clip-{n}.mp4", args.source, size) for n in args.lengths}
    lines = [f"### memory: {args.source.name} looped to {args.size} clips with global flicker "
             f"(load average at the end {load_average()})", "",
             "| setting | frames | wall s | peak RSS MB | RSS / shortest |", "|---|---|---|---|---|"]
    for setting in args.runs:
        base = None
        for n, clip in clips.items():
            seconds, rss = timed_run(clip, setting, out_dir)
            base = base or rss
            print(setting, n, seconds, rss, flush=True)
            lines.append(f"| {setting} | {n} | {seconds:.1f} | {rss:.0f} | {rss / base:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--input", type=Path, default=SHARED / "processed" / "goat" / "processed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", nargs="+", default=["neural:balanced", "classical"])
    m = sub.add_parser("memory")
    m.add_argument("--lengths", type=int, nargs="+", default=[100, 1000])
    m.add_argument("--source", type=Path, default=SHARED / "clean" / "davis-bear.mp4")
    m.add_argument("--runs", nargs="+", default=["neural:balanced"])
    m.add_argument("--size", default="854x480", help="WxH of the clips (default %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        section = (speed if args.mode == "speed" else memory)(args, Path(tmp))
    command = "python benchmarks/e2e.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"{section}\n\n`{command}`, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    earlier = RESULTS.exists() and RESULTS.stat().st_size > 0
    with RESULTS.open("a") as f:
        f.write(("\n" if earlier else "") + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
