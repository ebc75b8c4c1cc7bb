"""Bring colour-transform coefficients from the working resolution to the full frame.

Coefficients are (12, h, w) float32: channels 0-8 a row-major 3x3 matrix M, 9-11 an offset b, with
out = M I + b per pixel (see network.apply_coefficients). Two ways up:
  bilinear: interpolate the network's coefficients directly;
  guided:   refit them as a colour guided filter (He et al.) of the low-resolution output on the
            low-resolution frame, then interpolate (the "fast guided filter" upsampling). The refit
            follows edges of the frame, so nonlinear per-pixel mappings survive the upsampling better.
"""

from __future__ import annotations

import cv2
import numpy as np

from unflicker.errors import InputError

UPSAMPLE_MODES = ("bilinear", "guided")


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over (2r+1)^2 windows; x (h, w) or (h, w, c) float32, reflected borders."""
    k = 2 * radius + 1
    return cv2.boxFilter(x, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_coefficients(guide: np.ndarray, target: np.ndarray, radius: int = 2, eps: float = 1e-4) -> np.ndarray:
    """Local affine colour fits target ~ M guide + b over (2r+1)^2 windows, averaged per pixel.

    guide, target: (h, w, 3) float32. Returns (12, h, w) float32 coefficients in the layout above.
    eps regularises flat windows towards a constant (M -> 0).
    """
    if guide.shape != target.shape or guide.ndim != 3 or guide.shape[2] != 3:
        raise InputError(f"expected guide and target of the same shape (h, w, 3), got {guide.shape}, {target.shape}")
    h, w = guide.shape[:2]
    guide = guide.astype(np.float32, copy=False)
    target = target.astype(np.float32, copy=False)
    mean_i = _box(guide, radius)
    mean_p = _box(target, radius)
    # Second moments: 6 unique guide products and 9 guide x target products, box-filtered in one go.
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    ii = _box(np.stack([guide[..., a] * guide[..., b] for a, b in pairs], -1), radius)
    ip = _box((guide[..., :, None] * target[..., None, :]).reshape(h, w, 9), radius).reshape(h, w, 3, 3)
    sigma = np.empty((h, w, 3, 3), np.float32)
    for k, (a, b) in enumerate(pairs):
        sigma[..., a, b] = sigma[..., b, a] = ii[..., k] - mean_i[..., a] * mean_i[..., b]
    sigma += eps * np.eye(3, dtype=np.float32)
    cov_ip = ip - mean_i[..., :, None] * mean_p[..., None, :]  # (h, w, 3 guide, 3 target)
    a = np.linalg.solve(sigma, cov_ip)  # (h, w, 3 guide, 3 target)
    m = np.swapaxes(a, -1, -2)  # rows = output channel
    b = mean_p - np.einsum("hwij,hwj->hwi", m, mean_i)
    coeffs = np.concatenate([m.reshape(h, w, 9), b], -1)
    return np.ascontiguousarray(_box(coeffs.astype(np.float32), radius).transpose(2, 0, 1))


def resized_plane(coeffs: np.ndarray, index: int, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Plane `index` of (C, h, w) coefficients, bilinearly (half-pixel centres) resized to size = (H, W),
    written into `out` (a new float32 array when None; never a view of coeffs).

    One plane at a time: the frame-sized coefficient stack (12 planes, 100 MB at 1080p) is never made."""
    out = np.empty(size, np.float32) if out is None else out
    plane = coeffs[index]
    if plane.shape == tuple(size):
        np.copyto(out, plane)
        return out
    return cv2.resize(plane, (size[1], size[0]), dst=out, interpolation=cv2.INTER_LINEAR)
