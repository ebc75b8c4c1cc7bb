"""The backend registry and `fit`, the one entry point both backends share."""

from __future__ import annotations

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
# machine: 16.5 s against 23.4 s, medians of 3) but not much further, and lose several times over
# when other processes share the cores (4x slower at load 8 on 2 cores): at most two, and never
# more than torch is allowed (OMP_NUM_THREADS=1 keeps one).
GRID_MAX_THREADS = 2

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
        threads = min(GRID_MAX_THREADS, torch.get_num_threads())
    with torch_threads(threads):
        return ATLAS_BACKENDS[config.backend](frames, flows, config)
