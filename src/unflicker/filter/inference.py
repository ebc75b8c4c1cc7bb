"""Apply a trained neural filter to full-resolution frames; save and load its weights.

Weights are a safetensors file plus a JSON file of the same stem beside it, holding the format
version, the network config and the inference settings the weights were tuned with.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from unflicker import netfiles
from unflicker.errors import InputError
from unflicker.frames import float_rgb, planes as frame_planes
from unflicker.filter.network import FilterNetConfig, FilterUNet
from unflicker.filter.upsampling import UPSAMPLE_MODES, guided_coefficients, resized_plane

FORMAT, FORMAT_VERSION = netfiles.FORMATS["filter"]
PRECISIONS = ("fp32", "bf16")


def default_weights_path() -> Path:
    """The shipped weights: src/unflicker/weights/filter.safetensors (config in filter.json beside it)."""
    return netfiles.weights_path("filter")


@dataclass
class FilterInferenceConfig:
    """How the filter is run on a frame; stored with the weights, each field overridable at load."""

    working_side: int = 512
    """The net runs with the frame's longer side scaled down to at most this many pixels."""
    upsample: str = "bilinear"
    """How coefficients reach full resolution: 'bilinear' or 'guided' (see upsampling.py)."""
    guided_radius: int = 2
    """guided: window radius at the working resolution."""
    guided_eps: float = 1e-4
    """guided: regularisation of the local colour fits."""
    precision: str = "fp32"
    """'fp32' or 'bf16': the net's convolutions in bfloat16 (its prior, head and coefficients stay
    float32); about 1.75x faster where the CPU has bf16 dot products (AVX512-BF16, AMX), several
    times slower where it has not."""


def save_weights(net: FilterUNet, path: str | Path, inference: FilterInferenceConfig | None = None,
                 extra: dict | None = None) -> Path:
    """Write net's weights to `path` (.safetensors) and its config to the .json beside it; returns path."""
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "network": net.config.to_dict(),
            "inference": asdict(inference or FilterInferenceConfig()), **(extra or {})}
    return netfiles.save_network(net, path, meta)


def load_network(path: str | Path | None = None) -> tuple[FilterUNet, dict]:
    """Read weights + JSON config; returns (net in eval mode on CPU, metadata dict).

    Raises WeightsError if either file is missing or unreadable, the format or version differs, or
    a tensor is missing, unexpected or of the wrong shape.
    """
    path = netfiles.weights_path("filter", path)
    return netfiles.load_network(path, "filter", FORMAT, FORMAT_VERSION, lambda cfg: FilterUNet(FilterNetConfig(**cfg)))


class NeuralFilter:
    """O_t = F(I_t, A_t): the frame's structure with the atlas frame's appearance.

    Build with `NeuralFilter.load()`; then `apply(frame, atlas_frame)` per frame.
    """

    def __init__(self, net: FilterUNet, config: FilterInferenceConfig | None = None, device: str | None = None):
        self.config = config or FilterInferenceConfig()
        if self.config.upsample not in UPSAMPLE_MODES:
            raise InputError(f"unknown upsample mode {self.config.upsample!r}; choose from {UPSAMPLE_MODES}")
        if self.config.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.config.precision!r}; choose from {PRECISIONS}")
        if self.config.working_side < 8:
            raise InputError(f"working_side must be >= 8, got {self.config.working_side}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels_last in fp32 too: the filter's convolutions ran 20 % faster on this CPU (175 against
        # 212-235 ms at 512x288), with coefficients equal to 1.3e-6.
        # On a copy: a net being trained keeps its own layout and dtype.
        self.net = copy.deepcopy(net).eval().to(self.device).to(memory_format=torch.channels_last)
        # The body in this config's precision, also where the given net's runs in another (another's copy).
        self.net.body_in(torch.bfloat16 if self.config.precision == "bf16" else torch.float32)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | None = None, **overrides) -> NeuralFilter:
        """Load weights (default: the shipped ones); `overrides` replace FilterInferenceConfig fields."""
        net, meta = load_network(path)
        settings = {**meta.get("inference", {}), **overrides}
        try:
            config = FilterInferenceConfig(**settings)
        except TypeError as exc:
            raise InputError(f"bad filter inference setting: {exc}") from exc
        return cls(net, config, device)

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the net runs at for an (height, width) frame: longer side <= working_side."""
        scale = min(1.0, self.config.working_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def coefficients(self, frame: np.ndarray, atlas_frame: np.ndarray) -> np.ndarray:
        """Net coefficients at the working size: frame, atlas_frame (h, w, 3) same size -> (12, h, w) float32."""
        to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].to(self.device)
        # Inputs stay in the default layout: the prior's depthwise blurs run twice as fast in it, and
        # the channels_last weights give the convolutions channels_last outputs all the same.
        i, a = to_t(frame), to_t(atlas_frame)
        with torch.inference_mode():
            coeffs = self.net.coefficients(i, a)
        return coeffs[0].float().cpu().numpy()

    def apply(self, frame: np.ndarray, atlas_frame: np.ndarray) -> np.ndarray:
        """Filter one frame.

        frame: (H, W, 3) float32 in [0, 1] (uint8 accepted), full resolution.
        atlas_frame: (h, w, 3) float32 in [0, 1] (uint8 accepted), any size (it is resized).
        Returns (H, W, 3) float32 in [0, 1], always the frame's size.
        """
        frame = float_rgb(frame, "frame", array_like=False)
        atlas_frame = float_rgb(atlas_frame, "atlas_frame", array_like=False)
        h_full, w_full = frame.shape[:2]
        h, w = self.working_size(h_full, w_full)
        small = frame if (h, w) == (h_full, w_full) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if atlas_frame.shape[:2] != (h, w):
            shrink = atlas_frame.shape[0] * atlas_frame.shape[1] > h * w
            atlas_frame = cv2.resize(atlas_frame, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        coeffs = self.coefficients(small, atlas_frame)
        if self.config.upsample == "guided" and (h, w) != (h_full, w_full):
            out_small = apply_coefficients_np(small, coeffs)
            coeffs = guided_coefficients(small, out_small, self.config.guided_radius, self.config.guided_eps)
        return np.clip(apply_coefficients_np(frame, coeffs), 0.0, 1.0)


def apply_coefficients_np(image: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """NumPy twin of network.apply_coefficients: image (H, W, 3), coeffs (12, h, w) -> (H, W, 3) float32.

    Coefficients of another size than the image are bilinearly upsampled to it (upsampling.py),
    a plane at a time as the sums use them."""
    # Contiguous planes (cv2.split / merge) and one scratch buffer per use: the same sums in the same
    # order as on interleaved channels with a full-size coefficient stack, in about half the time.
    planes = frame_planes(np.asarray(image, np.float32))
    size = planes[0].shape
    plane, scratch = np.empty(size, np.float32), np.empty(size, np.float32)
    out = []
    for i in range(3):
        acc = resized_plane(coeffs, 9 + i, size)
        for j in range(3):
            acc += np.multiply(resized_plane(coeffs, 3 * i + j, size, plane), planes[j], out=scratch)
        out.append(acc)
    return cv2.merge(out)
