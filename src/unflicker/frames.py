"""The one check-and-convert every stage applies to a frame it is handed, and its colour planes."""

from __future__ import annotations

import math

import cv2
import numpy as np

from unflicker.errors import InputError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""Rec.601 luma weights of float RGB frames (frame @ LUMA)."""


def float_rgb(frame, what: str = "a frame", *, array_like: bool = True, allow_empty: bool = False) -> np.ndarray:
    """(H, W, 3) uint8, uint16 or float in [0, 1] -> (H, W, 3) float32 in [0, 1] (no copy if already float32;
    uint16 scaled by 65535 as io.to_float does).

    what: how the error message names the argument ("a frame", "an image", ...).
    array_like: accept anything np.asarray turns into such an array; False accepts only ndarrays.
    allow_empty: accept H or W = 0.
    Raises InputError on any other shape.
    """
    if array_like:
        frame = np.asarray(frame)
    if (not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3
            or (not allow_empty and min(frame.shape[:2]) < 1)):
        raise InputError(f"expected {what} of shape (H, W, 3), got {getattr(frame, 'shape', type(frame))}")
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / np.float32(255.0)
    if frame.dtype == np.uint16:
        return np.multiply(frame, np.float32(1.0 / 65535.0), dtype=np.float32)
    return frame.astype(np.float32, copy=False)


def luma(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 Rec.601 luma of an (H, W, 3) float32 frame (cv2.transform: a fraction of the time
    of `image @ LUMA` at 1080p, same weights, float32 sums)."""
    return cv2.transform(np.ascontiguousarray(image, np.float32), LUMA.reshape(1, 3))


def planes(image: np.ndarray) -> list[np.ndarray]:
    """The channels of an (H, W, C) float32 image as C contiguous (H, W) arrays (cv2.split's values).

    Written into arrays NumPy allocates: cv2.split's own output arrays cost 6-7x the copy itself
    at 1080p in a process's main thread (24-29 against 4 ms, page faults on freshly mapped memory;
    NumPy asks for huge pages for large arrays)."""
    out = [np.empty(image.shape[:2], image.dtype) for _ in range(image.shape[2])]
    written = cv2.split(image, out)
    if len(written) != len(out) or any(a is not b for a, b in zip(written, out)):  # OpenCV took it another way
        return [np.ascontiguousarray(image[..., c]) for c in range(image.shape[2])]
    return out


_BAND_VALUES = 1 << 16
"""float32 values of one row band (256 KB): a band's arrays stay in a core's cache between the steps of
an elementwise chain, where a whole 1080p plane (8 MB) goes to memory and back at each step."""


def row_bands(height: int, width: int, channels: int = 1) -> list[slice]:
    """Row slices covering `height` rows of a (height, width, channels) image, about 256 KB of float32
    each: elementwise work done band by band gives the same values as on the whole image, faster."""
    rows = max(1, _BAND_VALUES // max(1, width * channels))
    return [slice(y, min(y + rows, height)) for y in range(0, height, rows)]


def blur(image: np.ndarray, sigma: float, exact: float = 3.0) -> np.ndarray:
    """Gaussian blur of sigma pixels (reflected borders) of an (H, W) or (H, W, C) float32 image. Above `exact`
    pixels it runs on a copy shrunk by the largest power of two f that leaves at least 1.5 pixels of sigma there
    (area averaged), with the rest of the blur, then enlarged bilinearly: a wide blur of a large frame costs a
    small one's (the anchor's detail part, the texture carry's local energies)."""
    factor = 1
    while sigma / (2 * factor) >= 1.5:
        factor *= 2
    if sigma <= exact or factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    # area averaging blurred by about (f^2 - 1) / 12
    rest = math.sqrt(max(sigma**2 - (factor**2 - 1) / 12, 0.25)) / factor
    small = cv2.GaussianBlur(small, (0, 0), rest, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(image.shape)
