"""The backend registry and `fit`, the one entry point both backends share."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from unflicker.atlas.common import Atlas, torch_threads
from unflicker.atlas.config import AtlasConfig
from unflicker.atlas.grid_fit import fit_grid
from unflicker.atlas.mlp import fit_mlp
from unflicker.errors import InputError
from unflicker.flow import FlowPair

# The grid backend's small tensor operations scale to two threads (goat, 90 frames, idle 2-core
# machine: 16.5 s against 23.4 s, medians of 3) but not much further, and lose badly when other
# processes share the cores (one busy process beside it: 62.7 s with two threads against 30.6 s
# with one). So: at most two, no more than torch is allowed (OMP_NUM_THREADS=1 keeps one), and no
# more than the cores other processes leave idle right now.
GRID_MAX_THREADS = 2
_BUSY_SAMPLE_S = 0.2


def _busy_jiffies() -> int:
    """Clock ticks all CPUs have spent busy since boot (Linux /proc/stat; OSError elsewhere)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def other_busy_cores(interval: float = _BUSY_SAMPLE_S) -> float | None:
    """How many cores other processes keep busy, sampled over `interval` seconds (None: unknown)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        before, mine_before = _busy_jiffies(), sum(os.times()[:2])
        time.sleep(interval)
        after, mine_after = _busy_jiffies(), sum(os.times()[:2])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, (after - before) / ticks / interval - (mine_after - mine_before) / interval)


def grid_threads() -> int:
    """Torch threads for a grid fit: up to GRID_MAX_THREADS, within torch's limit and the idle cores."""
    allowed = max(1, min(GRID_MAX_THREADS, torch.get_num_threads()))
    if allowed == 1:
        return 1
    others = other_busy_cores()
    if others is None:
        return allowed
    idle = (os.cpu_count() or 1) - others
    return max(1, min(allowed, int(idle + 0.25)))  # a core at least three quarters idle counts

ATLAS_BACKENDS: dict[str, Callable[[np.ndarray, Sequence[FlowPair] | None, AtlasConfig], Atlas]] = {
    "grid": fit_grid,
    "mlp": fit_mlp,
}


def fit(frames: np.ndarray, flows: Sequence[FlowPair] | None = None, config: AtlasConfig | None = None) -> Atlas:
    """Fit an atlas to one clip (one shot) with the backend named by config.backend.

    frames: (T, h, w, 3) float32 RGB in [0, 1] (uint8 accepted) at the atlas resolution.
    flows: T-1 FlowPair between consecutive frames at that resolution, or None to compute them
    with unflicker.flow on flicker-normalised frames.
    Returns an Atlas: render(t) -> (h, w, 3) float32 A_t.
    """
    config = config or AtlasConfig()
    if config.backend not in ATLAS_BACKENDS:
        raise InputError(f"unknown atlas backend {config.backend!r}; choose one of {sorted(ATLAS_BACKENDS)}")
    threads = config.threads
    if threads is None and config.backend == "grid":
        threads = grid_threads()
    with torch_threads(threads):
        return ATLAS_BACKENDS[config.backend](frames, flows, config)
