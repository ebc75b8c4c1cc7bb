"""Training pairs for the neural filter, made from still photographs.

From a clean image X: the frame stand-in I' = appearance distortion of X (same structure, flickered
colours) and the atlas stand-in A' = structure distortion of X (same colours, flawed geometry). The
filter learns to return X from (I', A'). Images are float32 (H, W, 3) RGB in [0, 1]; every random
draw comes from the numpy Generator passed in, so a seed gives the same pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unflicker.frames import float_rgb


@dataclass
class DistortionConfig:
    """Strength of the synthetic distortions used to train the filter."""

    appearance_strength: float = 1.0
    """Multiplies the spread of every appearance (flicker) parameter of I'; 0 keeps I' = X."""
    identity_prob: float = 0.05
    """Probability that I' = X exactly, so the filter learns to leave consistent frames alone."""
    max_warp_px: float = 15.0
    """Largest smooth displacement of A', in pixels at a 256-pixel longer side (scaled with the image)."""
    atlas_jitter: float = 1.0
    """Multiplies the small appearance jitter of A' (the atlas is consistent, not exact)."""
    texture_prob: float = 0.0
    """Probability that I' also gets a texture-level change (`texture_distortion`: detail gains per
    scale, edge-preserving smoothing, fresh fine noise): the flicker of per-frame enhancement,
    stylization and img2img. 0 (the shipped filter's first training) draws nothing for it."""


def smooth_field(shape: tuple[int, int], grid: tuple[int, int], rng: np.random.Generator,
                 channels: int = 1) -> np.ndarray:
    """(H, W, channels) float32 unit-variance noise on a coarse (rows, cols) grid, smoothly upsampled."""
    h, w = shape
    coarse = rng.standard_normal((grid[0], grid[1], channels)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return field.reshape(h, w, channels)


def _luma(x: np.ndarray) -> np.ndarray:
    return (x @ np.float32([0.299, 0.587, 0.114]))[..., None]


def _tone_curves(x: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Random monotone piecewise-linear curve per channel (a shared part plus a per-channel part)."""
    k = int(rng.integers(3, 8))
    log_slopes = sigma * (rng.standard_normal(k) + 0.5 * rng.standard_normal((3, k)))
    slopes = np.exp(log_slopes)
    knots = np.linspace(0.0, 1.0, k + 1)
    out = np.empty_like(x)
    for c in range(3):
        ys = np.concatenate([[0.0], np.cumsum(slopes[c]) / slopes[c].sum()])
        out[..., c] = np.interp(x[..., c], knots, ys)
    return out


def appearance_distortion(x: np.ndarray, rng: np.random.Generator, config: DistortionConfig | None = None) -> np.ndarray:
    """Flicker-like colour change of x that keeps its structure: the stand-in for a frame I_t.

    x: (H, W, 3) float32 in [0, 1] (uint8 accepted). Returns a new (H, W, 3) float32 in [0, 1].
    A random subset of: tone curves, gamma, contrast, saturation, hue mixing, channel gains,
    exposure, smooth spatial gain fields, haze / black-level offsets; sized to cover processing
    flicker (per-frame colourisation, enhancement, dehazing) and film flicker; then, with
    probability config.texture_prob, a texture-level change (`texture_distortion`).
    """
    x = float_rgb(x, "an image", array_like=False, allow_empty=True)
    cfg = config or DistortionConfig()
    s = float(cfg.appearance_strength)
    if s <= 0 or rng.random() < cfg.identity_prob:
        return x.copy()
    h, w = x.shape[:2]
    y = x
    if rng.random() < 0.5:
        y = _tone_curves(y, rng, 0.45 * s)
    if rng.random() < 0.5:
        y = np.power(np.maximum(y, 0.0), np.float32(np.exp(0.3 * s * rng.standard_normal())))
    if rng.random() < 0.4:
        mean = y.mean((0, 1), keepdims=True)
        y = mean + np.float32(np.exp(0.25 * s * rng.standard_normal())) * (y - mean)
    if rng.random() < 0.4:
        lum = _luma(y)
        # Sometimes near-grey: colourisation flicker can drop most of the chroma.
        sat = 0.15 if rng.random() < 0.1 else np.exp(0.4 * s * rng.standard_normal())
        y = lum + np.float32(sat) * (y - lum)
    if rng.random() < 0.3:
        mix = np.eye(3) + 0.1 * s * rng.standard_normal((3, 3))
        mix /= mix.sum(1, keepdims=True)  # hue shift, grey axis kept
        y = y @ mix.T.astype(np.float32)
    if rng.random() < 0.7:
        y = y * np.exp(0.15 * s * rng.standard_normal(3)).astype(np.float32)
    if rng.random() < 0.8:
        y = y * np.float32(np.exp(0.35 * s * rng.standard_normal()))
    if rng.random() < 0.5:
        grid = (int(rng.integers(2, 7)), int(rng.integers(2, 7)))
        channels = 3 if rng.random() < 0.3 else 1
        y = y * np.exp(0.25 * s * smooth_field((h, w), grid, rng, channels))
    if rng.random() < 0.2:
        amount = np.float32(rng.uniform(0.0, 0.25) * min(s, 2.0))
        veil = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        if rng.random() < 0.5:
            y = y * (1 - amount) + amount * veil  # haze veil
        else:
            y = (y - 0.3 * amount * veil) / (1 - 0.3 * amount)  # crushed blacks (over-dehazed)
    y = np.clip(y, 0.0, 1.0).astype(np.float32)
    if cfg.texture_prob > 0 and rng.random() < cfg.texture_prob:
        y = texture_distortion(y, rng)
    return y


def texture_distortion(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture-level change of x that keeps its large-scale colours: one to three of detail gains on two
    difference-of-Gaussian bands (sharpened or softened detail), an edge-preserving (bilateral) smoothing
    blended in, and fresh fine multiplicative noise. x: (H, W, 3) float32 in [0, 1]; returns a new one."""
    h, w = x.shape[:2]
    scale = max(h, w) / 256.0
    y = x
    kinds = rng.permutation(3)[: int(rng.integers(1, 4))]
    for kind in kinds:
        if kind == 0:  # detail gain per band: sharpening, local contrast enhancement or softening
            s1, s2 = rng.uniform(0.6, 1.5) * np.sqrt(scale), rng.uniform(2.0, 6.0) * np.sqrt(scale)
            b1, b2 = cv2.GaussianBlur(y, (0, 0), s1), cv2.GaussianBlur(y, (0, 0), s2)
            g1, g2 = np.exp(rng.normal(0.0, 0.6, 2)).astype(np.float32)
            y = b2 + g2 * (b1 - b2) + g1 * (y - b1)
        elif kind == 1:  # edge-preserving smoothing, partly blended
            d = int(rng.integers(5, 10))
            smooth = cv2.bilateralFilter(np.clip(y, 0, 1).astype(np.float32), d, float(rng.uniform(0.05, 0.25)),
                                         float(rng.uniform(2.0, 8.0) * scale))
            a = np.float32(rng.uniform(0.4, 1.0))
            y = a * smooth + (1 - a) * y
        else:  # fresh fine texture, as a generator re-rendering each frame
            cell = rng.uniform(1.5, 5.0) * scale
            grid = (max(2, int(h / cell)), max(2, int(w / cell)))
            field = smooth_field((h, w), grid, rng, 3 if rng.random() < 0.3 else 1)
            y = y * np.exp(np.float32(rng.uniform(0.02, 0.08)) * field)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _displacement(shape: tuple[int, int], rng: np.random.Generator, max_px: float) -> np.ndarray:
    """(H, W, 2) smooth random displacement (x first) from elastic noise, bumps, sinusoids and a radial mirror."""
    h, w = shape
    # Every component is smooth, so it is evaluated on a 4x coarser grid (in full-size pixel units) and upsampled.
    step = 4
    hs, ws = -(-h // step), -(-w // step)
    yy, xx = (np.mgrid[0:hs, 0:ws].astype(np.float32) * step)
    flow = np.zeros((hs, ws, 2), np.float32)
    if rng.random() < 0.7:
        grid = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
        flow += rng.uniform(0.1, 0.4) * max_px * smooth_field((hs, ws), grid, rng, 2)
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(0.08, 0.35) * max(h, w)
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        angle = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.2, 1.0) * max_px
        flow += bump[..., None] * np.float32([amp * np.cos(angle), amp * np.sin(angle)])
    if rng.random() < 0.3:
        angle = rng.uniform(0, 2 * np.pi)
        cycles = rng.uniform(0.5, 4.0)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi * cycles / max(h, w)) + rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.1, 0.5) * max_px
        direction = rng.uniform(0, 2 * np.pi)
        flow += (amp * np.sin(phase))[..., None] * np.float32([np.cos(direction), np.sin(direction)])
    if rng.random() < 0.3:
        # Fun-house mirror: radial stretch or squeeze around a point, peaking at distance `radius`.
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius = rng.uniform(0.1, 0.4) * max(h, w)
        dy, dx = yy - cy, xx - cx
        profile = np.exp(0.5 - (dx**2 + dy**2) / (2 * radius**2)) / radius  # max of r*profile is 1
        k = rng.uniform(-1.0, 1.0) * max_px
        flow += (k * profile)[..., None] * np.stack([dx, dy], -1)
    if rng.random() < 0.5:
        # Local elastic wobble on a fine grid (about 16 px cells).
        grid = (max(2, h // 16), max(2, w // 16))
        flow += rng.uniform(0.03, 0.15) * max_px * smooth_field((hs, ws), grid, rng, 2)
    return cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)


def warp_image(x: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: out[y, x] = x[y + flow_y, x + flow_x] (bilinear, reflected borders). x: (H, W, C)."""
    h, w = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(x, xx + flow[..., 0], yy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def structure_distortion(x: np.ndarray, rng: np.random.Generator, config: DistortionConfig | None = None) -> np.ndarray:
    """Flawed-atlas-like geometry of x that keeps its colours: the stand-in for an atlas frame A_t.

    x: (H, W, 3) float32 in [0, 1] (uint8 accepted). Returns a new (H, W, 3) float32 in [0, 1].
    A smooth random warp (elastic, bumps, sinusoids, radial mirror, fine wobble), then maybe blur or
    lost resolution, ghosting (blend with a shifted copy), misplaced patches, and a small appearance jitter.
    """
    x = float_rgb(x, "an image", array_like=False, allow_empty=True)
    cfg = config or DistortionConfig()
    h, w = x.shape[:2]
    scale = max(h, w) / 256.0
    y = warp_image(x, _displacement((h, w), rng, cfg.max_warp_px * scale))
    r = rng.random()
    if r < 0.35:
        y = cv2.GaussianBlur(y, (0, 0), rng.uniform(0.5, 2.0) * np.sqrt(scale))
    elif r < 0.6:
        f = rng.uniform(1.5, 4.0)
        small = cv2.resize(y, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
        y = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        angle = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(2.0, 10.0) * scale
        shift = np.float32([[1, 0, d * np.cos(angle)], [0, 1, d * np.sin(angle)]])
        ghost = cv2.warpAffine(y, shift, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = np.float32(rng.uniform(0.15, 0.5))
        y = (1 - alpha) * y + alpha * ghost
    if rng.random() < 0.3:
        y = y.copy()
        for _ in range(int(rng.integers(1, 4))):
            ph, pw = (max(1, int(rng.uniform(0.06, 0.25) * n)) for n in (h, w))
            sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            y[ty : ty + ph, tx : tx + pw] = x[sy : sy + ph, sx : sx + pw]
    j = float(cfg.atlas_jitter)
    if j > 0:
        gain = np.exp(j * (0.04 * rng.standard_normal() + 0.02 * rng.standard_normal(3))).astype(np.float32)
        field = np.exp(0.04 * j * smooth_field((h, w), (2, 3), rng))
        y = y * gain * field
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def make_pair(x: np.ndarray, rng: np.random.Generator,
              config: DistortionConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training triple from a clean image x: (frame I', atlas A', target X), each (H, W, 3) float32."""
    x = float_rgb(x, "an image", array_like=False, allow_empty=True)
    frame = appearance_distortion(x, rng, config)
    atlas = structure_distortion(x, rng, config)
    return frame, atlas, x
