"""Stage 1 of Lei et al. (CVPR 2023): a per-shot atlas whose rendering A_t is temporally consistent.

`fit(frames, flows, config)` fits one clip and returns an `Atlas` with `render(t)`; `fit_video`
splits a long video into shots and overlapping windows and renders A_t for every frame.
Backends (ATLAS_BACKENDS): 'grid' (fast: texture pyramid, flow-initialised global motion, coarse
residual warp, per-frame flicker fields) and 'mlp' (the paper's single-layer Layered Neural Atlas).
"""

from __future__ import annotations

from unflicker.atlas.backends import ATLAS_BACKENDS, fit
from unflicker.atlas.common import Atlas, atlas_size, downsample
from unflicker.atlas.config import AtlasConfig, GridOptions, LossWeights, MLPOptions
from unflicker.atlas.video import VideoAtlas, fit_video, shots_from_starts, windows

__all__ = [
    "ATLAS_BACKENDS",
    "Atlas",
    "AtlasConfig",
    "GridOptions",
    "LossWeights",
    "MLPOptions",
    "VideoAtlas",
    "atlas_size",
    "downsample",
    "fit",
    "fit_video",
    "shots_from_starts",
    "windows",
]
