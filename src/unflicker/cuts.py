"""Scene-cut detection that flicker does not fool.

Flicker changes brightness and colour, globally and smoothly across the image, so cuts are found
on image *structure*: each thumbnail's luma is locally normalised (minus a blurred mean, divided by
a blurred standard deviation), which removes any smooth gain and offset field, and consecutive
frames are compared by correlation. A cut is a distance far above the typical distance around it,
so steady fast motion (large but similar distances) is not mistaken for cuts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from unflicker.errors import InputError
from unflicker.frames import LUMA, float_rgb


# Side of the square the descriptor is resampled to: the same for every video, so distances are
# comparable, and small enough that mild motion and grain average out.
DESCRIPTOR_SIDE = 32
# Blur sigma (descriptor pixels) of the local mean / std: large enough to keep edges, small enough
# that a smooth flicker field is locally constant.
_LOCAL_SIGMA = 3.0
# Frames either side whose distances set the "typical" level around a candidate cut.
_CONTEXT = 6
# Floor on the typical level, so static clips (distances near 0) need a real jump to cut.
_NOISE_FLOOR = 0.05
# Defaults of the cut rule, set on real footage (clean/, processed/, real-flicker/ clips, with and
# without synth.py flicker at strength 2): cuts between different scenes measured d >= 0.86 and
# >= 4.5x the typical level; no non-cut (fast motion, shaky old film, flicker) had both d > 0.7
# and > 3x (the worst: d 0.75 at 2.9x, and d 0.68 at 3.3x).
CUT_THRESHOLD = 3.0
MIN_CUT_DISTANCE = 0.7


def thumbnail(frame: np.ndarray, max_side: int = 64) -> np.ndarray:
    """Area-downscale a frame so its longer side is at most max_side.

    frame: (H, W, 3) float in [0, 1], uint8 or uint16. Returns (h, w, 3) float32 in [0, 1]; a frame
    already small enough is returned as float32 unchanged. An integer frame is shrunk before it is
    converted: no full-resolution float copy is made (a video's first pass allocates little).
    """
    if max_side < 1:
        raise InputError(f"max_side must be >= 1, got {max_side}")
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 3 and min(frame.shape[:2]) >= 1:
        h, w = frame.shape[:2]
        scale = max_side / max(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            source = frame if frame.dtype in (np.uint8, np.uint16, np.float32) else frame.astype(np.float32)
            frame = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    return float_rgb(frame)


def structure_descriptor(thumb: np.ndarray) -> np.ndarray:
    """Flicker-invariant structure of a thumbnail: (DESCRIPTOR_SIDE**2,) float32, zero mean, unit norm.

    thumb: (h, w, 3) float in [0, 1] or uint8 (any size; a thumbnail() keeps it cheap).
    A flat image gives the zero vector (no structure to compare).
    """
    thumb = float_rgb(thumb, "a thumbnail")
    luma = thumb @ LUMA
    side = DESCRIPTOR_SIDE
    interp = cv2.INTER_AREA if min(luma.shape) >= side else cv2.INTER_LINEAR
    luma = cv2.resize(luma, (side, side), interpolation=interp)
    # log makes a multiplicative gain additive; the local normalisation below then removes it.
    luma = np.log(luma + 0.02)
    mean = cv2.GaussianBlur(luma, (0, 0), _LOCAL_SIGMA, borderType=cv2.BORDER_REFLECT)
    detail = luma - mean
    std = np.sqrt(cv2.GaussianBlur(detail * detail, (0, 0), _LOCAL_SIGMA, borderType=cv2.BORDER_REFLECT))
    desc = (detail / (std + 0.02)).ravel()
    desc -= desc.mean()
    norm = float(np.linalg.norm(desc))
    return (desc / norm if norm > 1e-6 else np.zeros_like(desc)).astype(np.float32)


def structure_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - correlation of two structure descriptors, in [0, 2]; 1.0 if either is flat."""
    if not a.any() or not b.any():
        return 1.0
    return float(1.0 - np.clip(np.dot(a, b), -1.0, 1.0))


def cuts_from_distances(
    distances: Sequence[float], threshold: float = CUT_THRESHOLD, min_distance: float = MIN_CUT_DISTANCE
) -> list[int]:
    """Frame indices t > 0 that start a new shot, from distances d[t] between frames t-1 and t.

    distances: length T sequence; distances[0] (no predecessor) is ignored.
    threshold: a cut needs d[t] > threshold * (median of the distances in +-_CONTEXT frames around
        t, excluding t itself, floored at a noise level).
    min_distance: and d[t] > min_distance in absolute terms (1 - correlation).
    """
    d = np.asarray(distances, dtype=np.float64).ravel()
    cuts = []
    for t in range(1, len(d)):
        lo, hi = max(1, t - _CONTEXT), min(len(d), t + _CONTEXT + 1)
        around = np.concatenate([d[lo:t], d[t + 1 : hi]])
        typical = max(float(np.median(around)) if around.size else 0.0, _NOISE_FLOOR)
        if d[t] > min_distance and d[t] > threshold * typical:
            cuts.append(t)
    return cuts


def detect_cuts(
    thumbnails: Iterable[np.ndarray], threshold: float = CUT_THRESHOLD, min_distance: float = MIN_CUT_DISTANCE
) -> list[int]:
    """Indices t > 0 where a new shot starts, robust to global, colour and smooth local flicker.

    thumbnails: sequence of (h, w, 3) float32 frames in [0, 1] (e.g. from thumbnail(frame, 64)).
    threshold, min_distance: see cuts_from_distances.
    Returns a sorted list of cut indices.
    """
    distances: list[float] = []
    prev = None
    for thumb in thumbnails:
        desc = structure_descriptor(thumb)
        distances.append(0.0 if prev is None else structure_distance(prev, desc))
        prev = desc
    return cuts_from_distances(distances, threshold, min_distance)


def shots(n_frames: int, cuts: Iterable[int]) -> list[range]:
    """Split range(n_frames) at the cut indices into consecutive shots (ranges of frame indices).

    Cuts outside 1..n_frames-1 are ignored; duplicates are merged. n_frames == 0 gives [].
    """
    if n_frames < 0:
        raise InputError(f"n_frames must be >= 0, got {n_frames}")
    bounds = sorted({int(c) for c in cuts if 0 < int(c) < n_frames})
    edges = [0, *bounds, n_frames] if n_frames else []
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]
