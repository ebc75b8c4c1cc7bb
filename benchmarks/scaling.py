"""Scaling past two cores, and what a CUDA GPU does to a run: for a machine with many cores (and a GPU).

    python benchmarks/scaling.py [--frames 960] [--workers 16 8 4] [--gpu-frames 60] [--budget 420] [--out FILE]

1. Cores: a FRAMES-frame 854x480 clip (davis-bear forwards and backwards, global flicker, as
   `engine.py --memory`) through the default `unflicker run` with each --workers count, the GPU
   hidden (CUDA_VISIBLE_DEVICES empty): wall time, frames/s, peak RSS of the whole process tree, CPU
   seconds. Counts run largest first; one that would start past --budget seconds is skipped and said.
2. GPU (only where torch sees CUDA): the first GPU-FRAMES frames of that clip with `--workers 1`, once
   with the GPU hidden and twice with it visible (each stage then puts its networks and the atlas fit
   on CUDA): times, whether the two GPU runs gave the same frames, and the PSNR of the GPU output to
   the CPU output. Outputs are FFV1 (.mkv, lossless) so the frames compare exactly.

3. Batch (--batch N): a folder of N clips of --batch-frames frames at 854x480 (the first frames of the
   .mp4 clips beside --source in turn, each with one flicker kind of global, colour, film, step, local in turn) through
   `unflicker batch` with each --batch-workers count (none given: the default only), GPU hidden: wall
   time, frames/s over all clips, peak RSS of the whole process tree, CPU seconds.

Appends a Markdown section to --out (default benchmarks/results/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import SHARED, looped_clip, timed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scaling.md"


def run_cmd(clip: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "unflicker", "run", str(clip), "-o", str(out), "--quiet", "--workers", str(workers)]


def batch_folder(count: int, length: int, folder: Path, sources: list[Path]) -> Path:
    """`count` clips of `length` frames at 854x480 in `folder`: the first frames of `sources` in turn, each
    with one flicker kind in turn; streamed, one clip in memory."""
    import dataclasses
    import itertools

    import cv2
    import numpy as np

    from unflicker import io, synth

    folder.mkdir(parents=True, exist_ok=True)
    kinds = ("global", "colour", "film", "step", "local")
    for i in range(count):
        source = sources[i % len(sources)]
        frames = [cv2.resize(io.to_float(f.image), (854, 480), interpolation=cv2.INTER_AREA)
                  for f in itertools.islice(io.read_frames(source), length)]
        clip = synth.add_flicker(np.stack(frames), kinds[i % len(kinds)], seed=i)
        layout = dataclasses.replace(io.probe(source), width=854, height=480, frame_count=len(clip), has_audio=False)
        with io.VideoWriter(folder / f"clip{i:02d}-{source.stem}.mp4", layout) as writer:
            for frame in clip:
                writer.write(frame, None, None)
    return folder


def frames_of(path: Path):
    import numpy as np

    from unflicker import io

    return np.stack([f.image for f in io.read_frames(path)])


def psnr(a, b) -> float:
    import numpy as np

    peak = float(np.iinfo(a.dtype).max) if a.dtype.kind == "u" else 1.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=SHARED / "clean" / "davis-bear.mp4")
    p.add_argument("--frames", type=int, default=960)
    p.add_argument("--workers", type=int, nargs="*", default=[16, 8, 4])
    p.add_argument("--gpu-frames", type=int, default=60)
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which no further core count starts")
    p.add_argument("--batch", type=int, default=0, metavar="N", help="also run a batch of N clips (section 3)")
    p.add_argument("--batch-frames", type=int, default=90)
    p.add_argument("--batch-workers", type=int, nargs="*", default=[])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    import torch

    start = time.perf_counter()
    cpu_env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    lines = [f"### {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
             f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
             ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.workers:
            clip = looped_clip(args.frames, tmp / "clip.mkv", args.source)
            lines += [f"Cores: {args.frames} frames at 854x480 ({args.source.name} looped, global flicker), default run, "
                      "GPU hidden", "", "| --workers | wall s | frames/s | peak RSS, all processes | CPU s | main process CPU s |",
                      "|---|---|---|---|---|---|"]
            for workers in args.workers:
                if time.perf_counter() - start > args.budget:
                    lines.append(f"| {workers} | skipped: past the {args.budget:.0f} s budget | | | | |")
                    continue
                main_cpu: list[float] = []
                wall, peak, cpu = timed(run_cmd(clip, tmp / f"w{workers}.mp4", workers), cpu_env, main_cpu)
                lines.append(f"| {workers} | {wall:.1f} | {args.frames / wall:.2f} | {peak:.0f} MB | {cpu:.0f} | "
                             f"{main_cpu[0] if main_cpu else float('nan'):.0f} |")
                print(lines[-1], flush=True)
        if args.batch:
            sources = sorted(args.source.parent.glob("*.mp4"))
            folder = batch_folder(args.batch, args.batch_frames, tmp / "batch", sources)
            total = args.batch * args.batch_frames
            lines += ["", f"Batch: {args.batch} clips of {args.batch_frames} frames at 854x480 ({total} frames; "
                      f"{len(sources)} clean sources in turn, flicker kinds in turn), `unflicker batch`, GPU hidden", "",
                      "| --workers | wall s | frames/s | peak RSS, all processes | CPU s | cores busy | main process CPU s |",
                      "|---|---|---|---|---|---|---|"]
            for workers in args.batch_workers or [None]:
                extra = [] if workers is None else ["--workers", str(workers)]
                cmd = [sys.executable, "-m", "unflicker", "batch", str(folder), "-o", str(tmp / f"batch-out-{workers}"),
                       "--quiet", *extra]
                main_cpu: list[float] = []
                wall, peak, cpu = timed(cmd, cpu_env, main_cpu)
                lines.append(f"| {workers or f'default ({os.cpu_count()})'} | {wall:.1f} | {total / wall:.2f} | "
                             f"{peak:.0f} MB | {cpu:.0f} | {cpu / wall:.1f} | {main_cpu[0] if main_cpu else float('nan'):.0f} |")
                print(lines[-1], flush=True)
        if torch.cuda.is_available() and args.gpu_frames:
            short = looped_clip(args.gpu_frames, tmp / "short.mkv", args.source)
            runs = [("CPU (GPU hidden)", cpu_env, "cpu.mkv"), ("GPU, first", dict(os.environ), "gpu1.mkv"),
                    ("GPU, second", dict(os.environ), "gpu2.mkv")]
            lines += ["", f"GPU: first {args.gpu_frames} frames, `--workers 1`", "",
                      "| run | wall s | frames/s | peak RSS |", "|---|---|---|---|"]
            for name, env, out in runs:
                wall, peak, _ = timed(run_cmd(short, tmp / out, 1), env)
                lines.append(f"| {name} | {wall:.1f} | {args.gpu_frames / wall:.2f} | {peak:.0f} MB |")
                print(lines[-1], flush=True)
            cpu, gpu1, gpu2 = (frames_of(tmp / out) for _, _, out in runs)
            lines += ["", f"GPU runs identical: {bool((gpu1 == gpu2).all())} (largest difference "
                      f"{int(abs(gpu1.astype(int) - gpu2.astype(int)).max())} levels); GPU output to CPU output: "
                      f"PSNR {psnr(gpu1, cpu):.2f} dB, largest difference {int(abs(gpu1.astype(int) - cpu.astype(int)).max())} "
                      "levels"]
    text = "\n".join(lines) + "\n\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
