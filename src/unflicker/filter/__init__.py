"""The neural filter F of Lei et al. (CVPR 2023): O_t = F(I_t, A_t) keeps the structure of frame I_t
and the consistent appearance of the atlas frame A_t, as a per-pixel affine colour transform of I_t."""

from unflicker.filter.distortions import (
    DistortionConfig,
    appearance_distortion,
    make_pair,
    structure_distortion,
)
from unflicker.filter.inference import (
    FilterInferenceConfig,
    NeuralFilter,
    apply_coefficients_np,
    default_weights_path,
    load_network,
    save_weights,
)
from unflicker.filter.network import FilterNetConfig, FilterUNet, apply_coefficients


def __getattr__(name: str):
    # Training is imported lazily: `python -m unflicker.filter.training` must not find it pre-imported.
    if name in ("FilterTrainConfig", "train"):
        from unflicker.filter import training

        return getattr(training, name)
    raise AttributeError(f"module 'unflicker.filter' has no attribute {name!r}")

__all__ = [
    "DistortionConfig",
    "FilterInferenceConfig",
    "FilterNetConfig",
    "FilterTrainConfig",
    "FilterUNet",
    "NeuralFilter",
    "appearance_distortion",
    "apply_coefficients",
    "apply_coefficients_np",
    "default_weights_path",
    "load_network",
    "make_pair",
    "save_weights",
    "structure_distortion",
    "train",
]
