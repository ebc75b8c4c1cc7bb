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

# Each backend: (frames, flows, config, lanes, progress) -> Atlas; lanes (threads it may use at once) never
# changes the result; progress (None or a callable) is called with the fraction of its steps done after each.
ATLAS_BACKENDS: dict[str, Callable[[np.ndarray, Sequence[FlowPair] | None, AtlasConfig, int,
                                    Callable[[float], None] | None], Atlas]] = {
    "grid": fit_grid,
    "mlp": fit_mlp,
}


def fit(frames: np.ndarray, flows: Sequence[FlowPair] | None = None, config: AtlasConfig | None = None,
        lanes: int = 1, progress: Callable[[float], None] | None = None) -> Atlas:
    """Fit an atlas to one clip (one shot) with the backend named by config.backend.

    frames: (T, h, w, 3) float32 RGB in [0, 1] (uint8 accepted) at the atlas resolution.
    flows: T-1 FlowPair between consecutive frames at that resolution, or None to compute them
    with unflicker.flow on flicker-normalised frames.
    lanes: threads the fit may keep busy at once (the grid backend splits each step in two); the
    atlas is the same bits with any number.
    progress: called as progress(fraction of the steps done) after each step.
    Returns an Atlas: render(t) -> (h, w, 3) float32 A_t.
    """
    config = config or AtlasConfig()
    if config.backend not in ATLAS_BACKENDS:
        raise InputError(f"unknown atlas backend {config.backend!r}; choose one of {sorted(ATLAS_BACKENDS)}")
    with torch_threads(config.threads):
        return ATLAS_BACKENDS[config.backend](frames, flows, config, lanes, progress)
