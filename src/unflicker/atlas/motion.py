"""Per-frame global transforms into a reference frame, chained from robust fits to the flow.

A transform is a (3, 3) float64 matrix acting on homogeneous pixel coordinates (x, y, 1).
"""

from __future__ import annotations

import cv2
import numpy as np

from unflicker.atlas.common import TrustedFlows
from unflicker.errors import InputError

MODELS = ("homography", "affine", "similarity", "none")
# Fewer trusted correspondences than this: the pair is treated as static (e.g. a blank frame).
MIN_POINTS = 12
RANSAC_THRESHOLD = 1.0
SAMPLE_STRIDE = 4


def _affine(m: np.ndarray | None) -> np.ndarray | None:
    return None if m is None else np.vstack([m, [0.0, 0.0, 1.0]])


def _plausible(m: np.ndarray, size: float) -> bool:
    """Rejects fits that fold, collapse or bend the frame too much for one frame step."""
    if not np.all(np.isfinite(m)) or abs(m[2, 2]) < 1e-9:
        return False
    m = m / m[2, 2]
    det = np.linalg.det(m[:2, :2])
    return 0.5 < det < 2.0 and np.abs(m[2, :2]).max() * size < 0.2


def pair_transform(flow: np.ndarray, ok: np.ndarray, model: str) -> np.ndarray:
    """(3, 3) transform taking frame t+1 coordinates to frame t, from flow t -> t+1.

    flow: (h, w, 2) float32 pixels, x first; ok: (h, w) bool trusted pixels of frame t.
    Falls back from homography to affine, and to identity with too little evidence.
    """
    if model not in MODELS:
        raise InputError(f"unknown global motion model {model!r}; choose one of {MODELS}")
    if model == "none":
        return np.eye(3)
    h, w = ok.shape
    sub = np.zeros_like(ok)
    sub[::SAMPLE_STRIDE, ::SAMPLE_STRIDE] = True
    ys, xs = np.nonzero(ok & sub)
    if len(xs) < MIN_POINTS:
        ys, xs = np.nonzero(ok)
    if len(xs) < MIN_POINTS:
        return np.eye(3)
    src = np.stack([xs, ys], 1).astype(np.float32)
    dst = src + flow[ys, xs]
    m = None
    if model == "homography":
        m, _ = cv2.findHomography(dst, src, cv2.RANSAC, RANSAC_THRESHOLD)
        if m is not None and not _plausible(m, max(h, w)):
            m = None
    if m is None and model in ("homography", "affine"):
        m = _affine(cv2.estimateAffine2D(dst, src, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_THRESHOLD)[0])
    if m is None or model == "similarity":
        m = _affine(cv2.estimateAffinePartial2D(dst, src, method=cv2.RANSAC,
                                                ransacReprojThreshold=RANSAC_THRESHOLD)[0])
    if m is None or not _plausible(m, max(h, w)):
        return np.eye(3)
    return m / m[2, 2]


def chain_transforms(flows: TrustedFlows, n_frames: int, model: str, reference: int | None = None) -> np.ndarray:
    """(T, 3, 3) transforms M_t taking frame t's pixel coordinates to the reference frame's.

    reference: index of the frame whose coordinates the atlas uses (default: the middle one,
    which halves the drift accumulated along the chain).
    """
    mats = np.zeros((n_frames, 3, 3))
    mats[0] = np.eye(3)
    for t in range(n_frames - 1):
        mats[t + 1] = mats[t] @ pair_transform(flows.forward[t], flows.forward_ok[t], model)
    ref = n_frames // 2 if reference is None else reference
    mats = np.linalg.inv(mats[ref]) @ mats
    return mats / mats[:, 2:3, 2:3]


def apply(mats: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply (..., 3, 3) transforms to (..., N, 2) points -> (..., N, 2)."""
    homo = np.concatenate([pts, np.ones_like(pts[..., :1])], axis=-1) @ np.swapaxes(mats, -1, -2)
    return homo[..., :2] / homo[..., 2:3]
