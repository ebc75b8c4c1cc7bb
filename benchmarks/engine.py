"""Engine benchmark: end-to-end throughput of `unflicker run` per engine setting, against a baseline
commit in the same run (interleaved, medians), with the peak memory of the whole process tree.

    git worktree add /tmp/unflicker-base abc6f85   # the commit before the engine
    python benchmarks/engine.py --baseline /tmp/unflicker-base [--previous WORKTREE] [--input DIR_OR_VIDEO] [--repeats 3]

    python benchmarks/engine.py --memory 3000 [--workers 2]
    python benchmarks/engine.py --baseline /tmp/unflicker-base --size 1920x1080 --frames 40 --only baseline "workers 2"

--size/--frames: instead of --input, the first frames of ../shared/data/clean/cockatoo.mp4 scaled to
that size with a random global gain per frame (issue 18's 1080p and 4K rows; --no-profile skips the
in-process segment profile).

Runs, each --repeats times, interleaved: the baseline's default (its src/ first on PYTHONPATH, same
interpreter and packages), this tree's `--workers 1`, `--workers 2` (the default on 2 cores) and
`--engine ray --workers 2`. Memory is the largest sum of RSS over the run's process and all its
descendants (workers, Ray's processes), sampled every 50 ms from /proc. Per-segment times come
from a separate in-process run (--workers 1) and give the serial part (probe, cut detection,
spill, stitch, encode), from which throughput on N cores is projected. Appends to
benchmarks/results/engine.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "engine.md"


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, MB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total / 2**20


def own_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the process itself so far, not its children (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def timed(cmd: list[str], env: dict, main_cpu: list[float] | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak tree RSS MB, CPU seconds of the process and its reaped descendants); `main_cpu`,
    a list: gets the main process's own CPU seconds (without its workers) at its last sample."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            own = own_cpu_seconds(proc.pid)
            if main_cpu is not None and own is not None:
                main_cpu[:] = [own]
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    err = proc.stderr.read()
    proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # usage counts the workers it waited for (not Ray's)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return wall, peak[0], usage.ru_utime + usage.ru_stime


def settings(baseline: Path | None, previous: Path | None = None) -> dict[str, tuple[list[str], dict]]:
    env = dict(os.environ)
    runs = {}
    for name, tree in (("baseline default", baseline), ("previous default", previous)):
        if tree is not None:
            runs[name] = ([], dict(env, PYTHONPATH=str(tree / "src")))
    runs["--workers 1"] = (["--workers", "1"], env)
    runs["--workers 2 (default here)"] = (["--workers", "2"], env)
    runs["--engine ray --workers 2"] = (["--engine", "ray", "--workers", "2"], env)
    return runs


def segment_profile(input_path: Path) -> tuple[list[tuple[int, float]], float, float]:
    """In-process run: (frames, seconds) per segment, the serial seconds and the total."""
    import unflicker.engine as engine
    from unflicker.config import EngineConfig
    from unflicker.pipeline import RunConfig, deflicker_file

    times = []
    real = engine.run_segment

    def timed_segment(task, progress=None):
        result = real(task, progress)
        times.append((len(task.segment.span), result.seconds))
        return result

    engine.run_segment = timed_segment
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        deflicker_file(input_path, Path(tmp) / "out.mp4", RunConfig(progress=False, engine=EngineConfig(workers=1)))
        total = time.perf_counter() - start
    engine.run_segment = real
    return times, total - sum(t for _, t in times), total


def looped_clip(length: int, out: Path, source: Path, size: tuple[int, int] = (854, 480)) -> Path:
    """`source` at `size`, forwards then backwards, with global flicker, repeated to `length` frames;
    built one frame at a time (a whole 3000-frame clip in float would not fit in memory)."""
    import dataclasses

    import cv2
    import numpy as np

    from unflicker import io, synth

    frames = [cv2.resize(io.to_float(f.image), size, interpolation=cv2.INTER_AREA) for f in io.read_frames(source)]
    loop = synth.add_flicker(np.stack(frames + frames[-2:0:-1]), "global", seed=0)
    layout = dataclasses.replace(io.probe(source), width=size[0], height=size[1], frame_count=length, has_audio=False)
    with io.VideoWriter(out, layout) as writer:
        for t in range(length):
            writer.write(loop[t % len(loop)], None, None)
    return out


def scaled_clip(length: int, size: tuple[int, int], out: Path) -> Path:
    """The first `length` frames of cockatoo scaled to `size` (bicubic), each with a random global
    gain in 0.88..1.12; streamed, one frame in memory."""
    import dataclasses

    import cv2
    import numpy as np

    from unflicker import io

    source = SHARED / "clean" / "cockatoo.mp4"
    rng = np.random.default_rng(0)
    layout = dataclasses.replace(io.probe(source), width=size[0], height=size[1], frame_count=length, has_audio=False)
    with io.VideoWriter(out, layout) as writer:
        for frame in io.read_frames(source):
            if frame.index >= length:
                break
            image = cv2.resize(io.to_float(frame.image), size, interpolation=cv2.INTER_CUBIC)
            writer.write(np.clip(image * np.float32(rng.uniform(0.88, 1.12)), 0, 1), None, None)
    return out


def memory(length: int, workers: int) -> None:
    """Peak RSS of all processes of one default run on a LENGTH-frame 854x480 clip (davis-bear
    played forwards and backwards, global flicker), appended to the results."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = looped_clip(length, Path(tmp) / f"clip{length}.mkv", SHARED / "clean" / "davis-bear.mp4")
        cmd = [sys.executable, "-m", "unflicker", "run", str(clip), "-o", str(Path(tmp) / "out.mp4"), "--quiet",
               "--workers", str(workers)]
        wall, peak, cpu = timed(cmd, dict(os.environ))
    text = (f"### {time.strftime('%Y-%m-%d %H:%M')} memory: {length} frames at 854x480, default settings, "
            f"--workers {workers}: peak RSS of all processes {peak:.0f} MB; {wall:.0f} s wall "
            f"({length / wall:.2f} frames/s, load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}), "
            f"{cpu:.0f} CPU s\n\n")
    print(text)
    with open(RESULTS, "a") as f:
        f.write(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, default=SHARED / "processed" / "goat" / "processed")
    p.add_argument("--baseline", type=Path, help="worktree of the commit to compare against")
    p.add_argument("--previous", type=Path, help="worktree of a second commit, e.g. the one before a change")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", help="run only the settings whose names contain one of these")
    p.add_argument("--memory", type=int, metavar="LENGTH", help="instead: peak memory of one run on a clip this long")
    p.add_argument("--workers", type=int, default=2, help="--memory: workers of that run")
    p.add_argument("--size", help="WxH: instead of --input, cockatoo scaled to this size (see above)")
    p.add_argument("--frames", type=int, default=40, help="--size: frames of that clip")
    p.add_argument("--no-profile", action="store_true", help="skip the in-process segment profile")
    args = p.parse_args()
    if args.memory:
        memory(args.memory, args.workers)
        return
    from unflicker import io

    clips = tempfile.TemporaryDirectory()
    if args.size:
        size = tuple(int(v) for v in args.size.split("x"))
        args.input = scaled_clip(args.frames, size, Path(clips.name) / f"cockatoo-{args.size}.mp4")
    n = io.probe(args.input).frame_count
    runs = settings(args.baseline, args.previous)
    if args.only:
        runs = {k: v for k, v in runs.items() if any(o in k for o in args.only)}
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, (extra, env) in runs.items():
                out = Path(tmp) / f"out-{r}-{len(results[name])}-{abs(hash(name))}.mp4"
                cmd = [sys.executable, "-m", "unflicker", "run", str(args.input), "-o", str(out), "--quiet", *extra]
                results[name].append(timed(cmd, env))
                print(name, results[name][-1], flush=True)
    info = io.probe(args.input)
    lines = [f"### {time.strftime('%Y-%m-%d %H:%M')} engine: {args.input.name} ({n} frames, {info.width}x{info.height}), "
             f"{os.cpu_count()} cores, medians of {args.repeats}, interleaved (load at the end "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})", "",
             "| setting | wall s (each run) | median s | frames/s | vs first | CPU s (median; not Ray's workers) "
             "| peak RSS of all processes MB |", "|---|---|---|---|---|---|---|"]
    first = None
    for name, values in results.items():
        med = statistics.median(t for t, _, _ in values)
        first = first or med
        lines.append(f"| {name} | {', '.join(f'{t:.1f}' for t, _, _ in values)} | {med:.1f} | {n / med:.2f} | "
                     f"{first / med:.2f}x | {statistics.median(c for _, _, c in values):.1f} | "
                     f"{max(m for _, m, _ in values):.0f} |")
    if args.no_profile:
        text = "\n".join(lines) + "\n\n"
        print(text)
        with open(RESULTS, "a") as f:
            f.write(text)
        return
    seg, serial, total = segment_profile(args.input)
    per_segment = [t for _, t in seg]
    lines += ["", f"In-process profile: {len(seg)} segments of {', '.join(str(f) for f, _ in seg)} frames took "
              f"{', '.join(f'{t:.1f}' for t in per_segment)} s; serial part (start-up, probe, cuts, spill, stitch, "
              f"encode) {serial:.1f} s of {total:.1f} s."]
    for cores in (2, 8, 16):
        waves = -(-len(seg) // cores)
        projected = serial + waves * max(per_segment)
        lines.append(f"- projected on {cores} cores (one segment per core, {waves} wave(s) of the longest "
                     f"segment): {projected:.1f} s = {n / projected:.2f} frames/s")
    text = "\n".join(lines) + "\n\n"
    print(text)
    with open(RESULTS, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
