"""The local refinement net L of Lei et al. (CVPR 2023): O_t = L(P_t, O_{t-1}, P_{t-1}) removes the
local flicker the neural filter leaves behind, recurrently along the optical flow, as a smooth
per-pixel gain/offset applied to the full-resolution filtered frame P_t."""

from unflicker.refine.align import align_previous
from unflicker.refine.inference import (
    LocalRefiner,
    RefineInferenceConfig,
    apply_gain_offset_np,
    default_weights_path,
    load_network,
    save_weights,
)
from unflicker.refine.network import RefineNet, RefineNetConfig, apply_gain_offset, warp_tensor
from unflicker.refine.residual import ResidualFlicker, ResidualFlickerConfig


def __getattr__(name: str):
    # Training is imported lazily: `python -m unflicker.refine.training` must not find it pre-imported.
    if name in ("RefineTrainConfig", "train"):
        from unflicker.refine import training

        return getattr(training, name)
    raise AttributeError(f"module 'unflicker.refine' has no attribute {name!r}")


__all__ = [
    "LocalRefiner",
    "RefineInferenceConfig",
    "RefineNet",
    "RefineNetConfig",
    "RefineTrainConfig",
    "ResidualFlicker",
    "ResidualFlickerConfig",
    "align_previous",
    "apply_gain_offset",
    "apply_gain_offset_np",
    "default_weights_path",
    "load_network",
    "save_weights",
    "train",
    "warp_tensor",
]
