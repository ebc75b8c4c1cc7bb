"""Run the trained refinement net L over a shot frame by frame; save and load its weights.

Weights are a safetensors file plus a JSON file of the same stem beside it, holding the format
version, the network config and the inference settings the weights were trained for.
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
from unflicker.filter.inference import PRECISIONS
from unflicker.filter.upsampling import resized_plane
from unflicker.flow import FLOW_PRESETS
from unflicker.refine.align import align_previous
from unflicker.refine.network import RefineNet, RefineNetConfig

FORMAT, FORMAT_VERSION = netfiles.FORMATS["refine"]


def default_weights_path() -> Path:
    """The shipped weights: src/unflicker/weights/refine.safetensors (config in refine.json beside it)."""
    return netfiles.weights_path("refine")


@dataclass
class RefineInferenceConfig:
    """How L is run; stored with the weights (training matches its scale), each field overridable at load."""

    working_side: int = 320
    """Flow, warping and the net run with the frame's longer side scaled down to at most this."""
    flow_preset: str = "fast"
    """DIS preset of the flow t -> t-1 on flicker-normalised filtered frames."""
    precision: str = "fp32"
    """'fp32' or 'bf16': the net's convolutions in bfloat16 (its local features, head and coefficients stay
    float32), as the filter's (FilterInferenceConfig.precision)."""


def save_weights(net: RefineNet, path: str | Path, inference: RefineInferenceConfig | None = None,
                 extra: dict | None = None) -> Path:
    """Write net's weights to `path` (.safetensors) and its config to the .json beside it; returns path."""
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "network": net.config.to_dict(),
            "inference": asdict(inference or RefineInferenceConfig()), **(extra or {})}
    return netfiles.save_network(net, path, meta)


def load_network(path: str | Path | None = None) -> tuple[RefineNet, dict]:
    """Read weights + JSON config; returns (net in eval mode on CPU, metadata dict).

    Raises WeightsError if either file is missing or unreadable, the format or version differs, or
    a tensor is missing, unexpected or of the wrong shape.
    """
    path = netfiles.weights_path("refine", path)
    return netfiles.load_network(path, "refine", FORMAT, FORMAT_VERSION, lambda cfg: RefineNet(RefineNetConfig(**cfg)))


def _to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, C) or (H, W) numpy -> (1, C, H, W) float32 tensor."""
    x = x[..., None] if x.ndim == 2 else x
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)


class LocalRefiner:
    """O_t = L(P_t, O_{t-1}, P_{t-1}): recurrent over the frames of a shot.

    Build with `LocalRefiner.load()`; call `apply(P_t)` for t = 0, 1, ... in order and `reset()` at
    every shot boundary. The first frame after a reset passes through unchanged (no history yet).
    """

    def __init__(self, net: RefineNet, config: RefineInferenceConfig | None = None, device: str | None = None):
        self.config = config or RefineInferenceConfig()
        if self.config.working_side < 16:
            raise InputError(f"working_side must be >= 16, got {self.config.working_side}")
        if self.config.flow_preset not in FLOW_PRESETS:
            raise InputError(f"unknown flow preset {self.config.flow_preset!r}; choose from {FLOW_PRESETS}")
        if self.config.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.config.precision!r}; choose from {PRECISIONS}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels_last: the net's convolutions ran 2.5x faster on this CPU (5.4 against 13.6 ms at 320x180).
        # On a copy: a net being trained (its validation runs here) keeps its own layout and dtype.
        self.net = copy.deepcopy(net).eval().to(self.device).to(memory_format=torch.channels_last)
        # The body in this config's precision, also where the given net's runs in another (another's copy).
        self.net.body_in(torch.bfloat16 if self.config.precision == "bf16" else torch.float32)
        self._prev_in: np.ndarray | None = None
        self._prev_out: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | None = None, **overrides) -> LocalRefiner:
        """Load weights (default: the shipped ones); `overrides` replace RefineInferenceConfig fields."""
        net, meta = load_network(path)
        try:
            config = RefineInferenceConfig(**{**meta.get("inference", {}), **overrides})
        except TypeError as exc:
            raise InputError(f"bad refine inference setting: {exc}") from exc
        return cls(net, config, device)

    def reset(self) -> None:
        """Forget the history (call at a shot boundary)."""
        self._prev_in = self._prev_out = None

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) flow and net run at for an (height, width) frame: longer side <= working_side."""
        scale = min(1.0, self.config.working_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Refine the next filtered frame P_t.

        frame: (H, W, 3) float32 in [0, 1] (uint8 accepted), full resolution, same size within a shot.
        Returns O_t: (H, W, 3) float32 in [0, 1], the frame's size.
        """
        frame = float_rgb(frame, array_like=False)
        h_full, w_full = frame.shape[:2]
        h, w = self.working_size(h_full, w_full)
        small = frame if (h, w) == (h_full, w_full) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if self._prev_in is not None and self._prev_in.shape != small.shape:
            self.reset()  # a size change cannot be a continuation of the same shot
        if self._prev_in is None:
            self._prev_in, self._prev_out = small, small
            return frame.copy()
        if self.net.config.warp:
            flow, mask = align_previous(small, self._prev_in, self.config.flow_preset)
        else:  # the net ignores them: skip the two flow computations
            flow, mask = np.zeros((h, w, 2), np.float32), np.ones((h, w), np.float32)
        d = self.device
        with torch.inference_mode():
            out, coeffs = self.net(_to_tensor(small, d), _to_tensor(self._prev_out, d), _to_tensor(self._prev_in, d),
                                   _to_tensor(flow, d), _to_tensor(mask, d))
        self._prev_in, self._prev_out = small, out[0].cpu().numpy().transpose(1, 2, 0)
        return apply_gain_offset_np(frame, coeffs[0].float().cpu().numpy())


def apply_gain_offset_np(image: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """NumPy twin of network.apply_gain_offset, clipped: image (H, W, 3), coeffs (6, h, w) -> (H, W, 3)
    float32; coefficients of another size are bilinearly upsampled to the image's, a plane at a time."""
    if coeffs.ndim != 3 or coeffs.shape[0] != 6:
        raise InputError(f"expected coeffs of shape (6, h, w), got {coeffs.shape}")
    planes = frame_planes(np.asarray(image, np.float32))  # contiguous planes: faster than strided channels
    size = planes[0].shape
    offset = np.empty(size, np.float32)
    out = []
    for c in range(3):
        plane = resized_plane(coeffs, c, size)  # a new array: exponentiated in place
        np.exp(plane, out=plane)
        plane *= planes[c]
        plane += resized_plane(coeffs, 3 + c, size, offset)
        out.append(np.clip(plane, 0.0, 1.0, out=plane))
    return cv2.merge(out)
