"""Stage 1 of Lei et al. (CVPR 2023): a per-shot atlas whose rendering A_t is temporally consistent.

`fit(frames, flows, config)` fits one clip and returns an `Atlas` with `render(t)`; `fit_video`
splits a long video into shots and overlapping windows and renders A_t for every frame.
Backends (ATLAS_BACKENDS): 'grid' (fast: texture pyramid, flow-initialised global motion, coarse
residual warp, per-frame flicker fields) and 'mlp' (the paper's single-layer Layered Neural Atlas).

The configuration and `atlas_size` load without torch; the rest on first use (a run's main process
plans segments with the config only, its workers fit).
"""

from __future__ import annotations

import importlib

from unflicker.atlas.config import AtlasConfig, GridOptions, LossWeights, MLPOptions, atlas_size

_LAZY = {
    "ATLAS_BACKENDS": "backends",
    "fit": "backends",
    "Atlas": "common",
    "downsample": "common",
    "VideoAtlas": "video",
    "fit_video": "video",
    "shots_from_starts": "video",
    "windows": "video",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"unflicker.atlas.{_LAZY[name]}"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'unflicker.atlas' has no attribute {name!r}")


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
