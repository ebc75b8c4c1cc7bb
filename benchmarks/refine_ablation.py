"""Refinement net L: does warping the previous frames help, and what size to ship? Collects the runs.

    python benchmarks/refine_ablation.py [--runs train_runs/refine] [--step 400]

Reads the validation records (held-out clip, residual flicker) of every training run under --runs
at --step, and times each run's LocalRefiner on 854x480 frames (2 torch threads, median over 28
frames, the runs interleaved over 3 rounds; median of the rounds). Writes
benchmarks/results/refine_ablation.md. The runs themselves are made with, for example:

    python -m unflicker.refine.training --output train_runs/refine/ablate-w8 --cache-dir train_runs/refine/cache \\
        --steps 800 --stop-at 400 --crop 128 --batch 4 --lr 1.5e-3 --val-every 200 --threads 1 --seed 0 --width 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from unflicker.refine import LocalRefiner

RESULTS = Path(__file__).resolve().parent / "results" / "refine_ablation.md"


def validation_at(run: Path, step: int) -> dict | None:
    for line in (run / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == step and "val" in record:
            return record["val"]
    return None


def moving_frames(n: int = 30) -> list[np.ndarray]:
    """A smooth random texture panning right with a mild global flicker, 854x480."""
    base = cv2.resize(np.random.default_rng(0).random((60, 107, 3), dtype=np.float32), (854, 480))
    return [np.clip(np.roll(base, 2 * t, axis=1) * (1 + 0.05 * np.sin(t)), 0, 1).astype(np.float32) for t in range(n)]


def seconds_per_frame(refiners: dict[str, LocalRefiner], rounds: int = 3) -> dict[str, float]:
    frames = moving_frames()
    times: dict[str, list[float]] = {name: [] for name in refiners}
    for _ in range(rounds):
        for name, refiner in refiners.items():
            refiner.reset()
            refiner.apply(frames[0])
            refiner.apply(frames[1])  # warm-up: first net call
            per_frame = []
            for frame in frames[2:]:
                start = time.perf_counter()
                refiner.apply(frame)
                per_frame.append(time.perf_counter() - start)
            times[name].append(statistics.median(per_frame))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("train_runs/refine"))
    parser.add_argument("--step", type=int, default=400)
    args = parser.parse_args(argv)
    rows = []
    refiners = {}
    for run in sorted(p for p in args.runs.iterdir() if (p / "log.jsonl").is_file() and (p / "refine.json").is_file()):
        val = validation_at(run, args.step)
        if val is None:
            continue
        meta = json.loads((run / "refine.json").read_text())
        config = meta["training"]["config"]
        refiners[run.name] = LocalRefiner.load(run / "refine.safetensors")
        rows.append((run.name, meta["network"], config["seed"], val))
    speed = seconds_per_frame(refiners)
    lines = [f"Held-out clip, residual flicker; validation at step {args.step} of an 800-step cosine schedule "
             "(same data stream per seed). E_warp x1e-3 with the clean flow.", "",
             "| run | width | warp | seed | E_warp before | E_warp after | PSNR before | PSNR after | ms/frame 854x480 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, net, seed, val in rows:
        lines.append(f"| {name} | {net['width']} | {'yes' if net.get('warp', True) else 'no'} | {seed} | "
                     f"{val['ewarp_before']:.3f} | {val['ewarp_after']:.3f} | {val['psnr_before']:.2f} | "
                     f"{val['psnr_after']:.2f} | {speed[name] * 1e3:.1f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
