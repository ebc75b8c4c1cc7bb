"""Time of the paper preset (MLP atlas, the paper's settings) on this machine, extrapolated.

    python benchmarks/paper_time.py

A full fit (100 pre-training passes over the frames + 10000 atlas steps) takes hours on a CPU, so
this times three short fits of processed/goat (90 frames, atlas 256x144) and extrapolates: one
pre-training pass = fit(2 passes, 1 step) - fit(1, 1); one atlas step = (fit(1, 21) - fit(1, 1)) / 20.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from unflicker import io
from unflicker.atlas import AtlasConfig, atlas_size, downsample, fit_video
from unflicker.atlas.config import MLPOptions

CLIP = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "processed" / "goat" / "processed"
PAPER_STEPS = 10_000  # the MLP backend's default, the paper's


def fit_seconds(frames: np.ndarray, pretrain_passes: int, steps: int) -> float:
    config = AtlasConfig(backend="mlp", steps=steps, mlp=MLPOptions(pretrain_iters=pretrain_passes))
    start = time.perf_counter()
    fit_video(frames, None, config)
    return time.perf_counter() - start


def main() -> int:
    frames = [io.to_float(f.image) for f in io.read_frames(CLIP)]
    size = atlas_size(*frames[0].shape[:2], AtlasConfig().resolution)
    low = np.stack([downsample(f, size) for f in frames])
    base, more_steps, more_passes = fit_seconds(low, 1, 1), fit_seconds(low, 1, 21), fit_seconds(low, 2, 1)
    step, one_pass = (more_steps - base) / 20, more_passes - base
    passes = MLPOptions().pretrain_iters
    total = passes * one_pass + PAPER_STEPS * step
    print(f"fit(1 pass, 1 step) {base:.1f} s, fit(1, 21) {more_steps:.1f} s, fit(2, 1) {more_passes:.1f} s")
    print(f"atlas step {step:.3f} s, pre-training pass over {len(low)} frames {one_pass:.1f} s -> paper settings "
          f"({passes} passes + {PAPER_STEPS} steps) about {total / 3600:.1f} h for {len(low)} frames at {size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
