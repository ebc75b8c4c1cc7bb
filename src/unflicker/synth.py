"""Seeded synthetic flicker and synthetic camera moves, for tests, benchmarks, the demo and training.

Frames are float32 (H, W, 3) RGB in [0, 1]. Every random draw is keyed by (seed, component, t), so
`Flicker.apply(t, frame)` gives the same result whatever order frames are visited in; slow drift is a
fixed sum of seeded sinusoids of t, so long videos can be streamed without precomputation.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from unflicker.errors import InputError
from unflicker.frames import float_rgb

KINDS = ("global", "colour", "local", "mains", "tone", "step", "film", "mixed")
_COMPONENT_ID = {"global": 1, "colour": 2, "local": 3, "mains": 4, "tone": 5, "step": 6, "film": 7}
MOTIONS = ("pan", "shake", "static")


@dataclass
class FlickerConfig:
    """Synthetic flicker of one kind; every amplitude is multiplied by `strength`."""

    kind: str = "global"
    """One of KINDS: global, colour, local, mains, tone, step, film or mixed."""
    strength: float = 1.0
    """Scale of all amplitudes; 0 gives the identity."""
    drift_weight: float = 0.5
    """Share of variance from slow drift; the rest is independent per-frame jitter."""
    drift_period: float = 24.0
    """Typical period of the slow drift, in frames."""
    gain_sigma: float = 0.15
    """global: std of the log exposure gain (about +-15 %)."""
    gamma_sigma: float = 0.08
    """global: std of the log gamma exponent."""
    colour_sigma: float = 0.06
    """colour: std of each channel's log gain (white-balance flicker)."""
    colour_global_sigma: float = 0.04
    """colour: std of a log gain shared by all channels."""
    local_sigma: float = 0.2
    """local: std of the log gain at each coarse grid node."""
    local_grid: tuple[int, int] = (3, 4)
    """local: coarse grid (rows, cols) smoothly upsampled to the frame."""
    local_per_channel: bool = False
    """local: independent fields per channel (coloured lights) instead of one luma field."""
    mains_amplitude: float = 0.15
    """mains: relative amplitude of the rolling bands."""
    mains_period: float = 0.5
    """mains: band period as a fraction of the frame height."""
    mains_speed: float = 0.13
    """mains: band phase advance per frame, in cycles."""
    tone_sigma: float = 0.3
    """tone: std of the log slope of each segment of the per-channel tone curve."""
    tone_points: int = 5
    """tone: control points of the piecewise-linear curve (ends fixed at 0 and 1)."""
    step_hold: tuple[int, int] = (2, 12)
    """step: each gain/colour is held for a random number of frames in this range (inclusive), as in
    AI-video chunk jumps or BlazeBVD's protocol; the value changes abruptly between holds."""
    step_gain_sigma: float = 0.12
    """step: std of the log exposure gain of each hold."""
    step_colour_sigma: float = 0.05
    """step: std of each channel's log gain of each hold."""
    film_period: tuple[float, float] = (10.0, 30.0)
    """film: old-film pumping, a brightness oscillation whose two component periods (frames) are drawn here."""
    film_pump_sigma: float = 0.12
    """film: std of the oscillating log gain."""
    film_jitter_sigma: float = 0.03
    """film: std of an extra independent per-frame log gain."""
    film_grain: float = 0.03
    """film: std of the per-frame monochrome grain (slightly blurred Gaussian noise), in [0, 1] units."""
    mixed_kinds: tuple[str, ...] = ("local", "colour", "global", "tone")
    """mixed: kinds applied in this order; mains banding is a capture condition of its own, left out."""
    mixed_scale: float = 0.6
    """mixed: extra factor on every component so the sum stays plausible."""


# name -> config factory, e.g. FLICKER_KINDS["local"](strength=0.5); also feeds CLI choices.
FLICKER_KINDS = {k: partial(FlickerConfig, kind=k) for k in KINDS}


def _smooth_interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights interpolating n_in nodes spanning the axis; smoothstep keeps it C1."""
    if n_in == 1:
        return np.ones((n_out, 1), np.float32)
    pos = np.linspace(0.0, n_in - 1, n_out)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    f = pos - i0
    f = f * f * (3 - 2 * f)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - f
    m[np.arange(n_out), i0 + 1] = f
    return m


class Flicker:
    """Deterministic flicker generator: `apply(t, frame)` depends only on (config, seed, t, frame)."""

    def __init__(self, config: FlickerConfig | None = None, seed: int = 0):
        self.config = config or FlickerConfig()
        if self.config.kind not in FLICKER_KINDS:
            raise InputError(f"unknown flicker kind {self.config.kind!r}; choose from {', '.join(KINDS)}")
        if self.config.strength < 0:
            raise InputError(f"flicker strength must be >= 0, got {self.config.strength}")
        if int(seed) < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self._drift_params: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._hold_ends: list[int] = []  # step: cumulative ends of the holds drawn so far

    def _noise(self, t: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Unit-variance noise of `shape` at frame t: per-frame white jitter mixed with slow drift."""
        comp = _COMPONENT_ID[name]
        white = np.random.default_rng([self.seed, comp, 1, t]).standard_normal(shape)
        key = (comp, shape)
        if key not in self._drift_params:  # cache only; values depend on (seed, comp, shape) alone
            rng = np.random.default_rng([self.seed, comp, 0, 0])
            freq = 1.0 / (self.config.drift_period * rng.uniform(0.5, 2.0, shape + (4,)))
            self._drift_params[key] = (freq, rng.uniform(0, 2 * np.pi, shape + (4,)))
        freq, phase = self._drift_params[key]
        # Random-phase cosines have variance 1/2 each, so sqrt(2/4) makes the drift unit variance.
        drift = np.sqrt(0.5) * np.cos(2 * np.pi * freq * t + phase).sum(-1)
        w = float(np.clip(self.config.drift_weight, 0.0, 1.0))
        return np.sqrt(1 - w) * white + np.sqrt(w) * drift

    def _global(self, t, x, s):
        z = self._noise(t, "global", (2,))
        # Python floats keep the float32 frame float32 (NumPy scalars would promote it).
        gain = float(np.exp(s * self.config.gain_sigma * z[0]))
        gamma = float(np.exp(s * self.config.gamma_sigma * z[1]))
        return gain * np.power(np.maximum(x, 0), gamma)

    def _colour(self, t, x, s):
        z = self._noise(t, "colour", (4,))
        log_gain = s * (self.config.colour_sigma * z[:3] + self.config.colour_global_sigma * z[3])
        return x * np.exp(log_gain).astype(np.float32)

    def _local(self, t, x, s):
        gh, gw = self.config.local_grid
        c = 3 if self.config.local_per_channel else 1
        z = self._noise(t, "local", (c, gh, gw)).astype(np.float32)
        h, w = x.shape[:2]
        my, mx = _smooth_interp_matrix(h, gh), _smooth_interp_matrix(w, gw)
        gain = np.exp(float(s * self.config.local_sigma) * np.stack([my @ zc @ mx.T for zc in z], -1))
        return x * gain

    def _mains(self, t, x, s):
        phase0 = np.random.default_rng([self.seed, _COMPONENT_ID["mains"], 0, 0]).uniform()
        rows = np.arange(x.shape[0])
        angle = 2 * np.pi * (rows / (self.config.mains_period * x.shape[0]) + phase0 + self.config.mains_speed * t)
        gain = 1 + s * self.config.mains_amplitude * np.sin(angle)
        return x * gain.astype(np.float32)[:, None, None]

    def _tone(self, t, x, s):
        k = max(int(self.config.tone_points), 2)
        # Positive random slopes normalised to sum 1: the curve is monotone and keeps 0 and 1 fixed.
        slopes = np.exp(s * self.config.tone_sigma * self._noise(t, "tone", (3, k - 1)))
        ys = np.concatenate([np.zeros((3, 1)), np.cumsum(slopes, 1) / slopes.sum(1, keepdims=True)], 1)
        xs = np.linspace(0.0, 1.0, k)
        return np.stack([np.interp(x[..., c], xs, ys[c]).astype(np.float32) for c in range(3)], -1)

    def _hold_index(self, t: int) -> int:
        """step: index of the hold that frame t falls in; holds are drawn in order from one seeded stream."""
        lo, hi = (int(v) for v in self.config.step_hold)
        if lo < 1 or hi < lo:
            raise InputError(f"step_hold must be 1 <= min <= max, got {self.config.step_hold}")
        if not self._hold_ends:
            self._rng_hold = np.random.default_rng([self.seed, _COMPONENT_ID["step"], 2])
        while not self._hold_ends or self._hold_ends[-1] <= t:
            self._hold_ends.append((self._hold_ends[-1] if self._hold_ends else 0)
                                   + int(self._rng_hold.integers(lo, hi + 1)))
        return int(np.searchsorted(self._hold_ends, t, side="right"))

    def _step(self, t, x, s):
        z = np.random.default_rng([self.seed, _COMPONENT_ID["step"], 3, self._hold_index(t)]).standard_normal(4)
        log_gain = s * (self.config.step_gain_sigma * z[3] + self.config.step_colour_sigma * z[:3])
        return x * np.exp(log_gain).astype(np.float32)

    def _film(self, t, x, s):
        cfg = self.config
        comp = _COMPONENT_ID["film"]
        rng = np.random.default_rng([self.seed, comp, 0, 0])
        periods, phases = rng.uniform(*cfg.film_period, 2), rng.uniform(0, 2 * np.pi, 2)
        # Two random-phase cosines of variance 1/2 each: the pump has unit variance.
        pump = float(np.cos(2 * np.pi * t / periods + phases).sum())
        frame_rng = np.random.default_rng([self.seed, comp, 1, t])
        log_gain = s * (cfg.film_pump_sigma * pump + cfg.film_jitter_sigma * frame_rng.standard_normal())
        y = x * float(np.exp(log_gain))
        if s * cfg.film_grain > 0:
            grain = frame_rng.standard_normal(x.shape[:2]).astype(np.float32)
            grain = cv2.GaussianBlur(grain, (0, 0), 0.6)
            grain *= float(s * cfg.film_grain) / max(float(grain.std()), 1e-6)
            y = y + grain[..., None]
        return y

    def apply(self, t: int, frame: np.ndarray) -> np.ndarray:
        """Flicker frame number t (>= 0). frame: (H, W, 3) float32 in [0, 1] or uint8.

        Returns a new (H, W, 3) float32 array clipped to [0, 1].
        """
        t = operator.index(t)
        if t < 0:
            raise InputError(f"frame index must be >= 0, got {t}")
        x = float_rgb(frame, array_like=False, allow_empty=True)
        cfg = self.config
        mixed = cfg.kind == "mixed"
        scale = cfg.strength * (cfg.mixed_scale if mixed else 1.0)
        for kind in cfg.mixed_kinds if mixed else (cfg.kind,):
            if kind not in _COMPONENT_ID:
                raise InputError(f"unknown flicker kind {kind!r} in mixed_kinds")
            x = getattr(self, "_" + kind)(t, x, scale)
        return np.clip(x, 0.0, 1.0).astype(np.float32)


def add_flicker(
    frames: np.ndarray | Iterable[np.ndarray], kind: str = "global", strength: float = 1.0, seed: int = 0
) -> np.ndarray | Iterator[np.ndarray]:
    """Add flicker of one kind to a clip.

    frames: a (T, H, W, 3) array (returns a (T, H, W, 3) float32 array) or an iterable of
    (H, W, 3) frames (returns a lazy generator, for streaming long videos). Frame t gets `Flicker.apply(t, .)`.
    """
    if kind not in FLICKER_KINDS:
        raise InputError(f"unknown flicker kind {kind!r}; choose from {', '.join(KINDS)}")
    flicker = Flicker(FLICKER_KINDS[kind](strength=strength), seed)
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise InputError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
        return np.stack([flicker.apply(t, f) for t, f in enumerate(frames)]) if len(frames) else frames
    return (flicker.apply(t, f) for t, f in enumerate(frames))


def _trajectory(n: int, motion: str, rng: np.random.Generator):
    """Per-frame (offset (n, 2) in output px, zoom (n,), angle (n,) radians) of the camera."""
    t = np.arange(n, dtype=np.float64)
    u = t / max(n - 1, 1)
    if motion == "pan":
        direction = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(1.5, 3.0)  # output px per frame
        offset = speed * t[:, None] * np.array([np.cos(direction), np.sin(direction)])
        zoom = np.exp(rng.choice([-1, 1]) * rng.uniform(0.03, 0.08) * u)
        angle = np.deg2rad(rng.choice([-1, 1]) * rng.uniform(1.0, 3.0)) * u
    elif motion == "shake":  # handheld jitter: a few smooth sinusoids per axis
        periods, phases = rng.uniform(6, 20, (4, 3)), rng.uniform(0, 2 * np.pi, (4, 3))
        waves = np.sin(2 * np.pi * t[:, None, None] / periods + phases).mean(-1)  # (n, 4)
        offset, zoom, angle = 2.0 * waves[:, :2], 1 + 0.01 * waves[:, 2], np.deg2rad(0.3) * waves[:, 3]
    else:
        offset, zoom, angle = np.zeros((n, 2)), np.ones(n), np.zeros(n)
    return offset, zoom, angle


def _rot(a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def camera_move(
    image: np.ndarray, n_frames: int, size: tuple[int, int] = (64, 96), motion: str = "pan", seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render a smooth simulated camera move over a still photo.

    image: (H0, W0, 3) or (H0, W0) photo, uint8 or float in [0, 1]. size: output (h, w).
    motion: "pan" (a few px per frame, plus slight zoom and rotation), "shake" (handheld jitter) or "static".
    Returns frames (T, h, w, 3) float32 in [0, 1] (bilinear, always inside the photo: no borders) and
    transforms (T, 2, 3) float64: frame pixel (x, y) = M_t @ (photo x, photo y, 1), pixel centres at integers.
    """
    if motion not in MOTIONS:
        raise InputError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or min(img.shape[:2]) < 8:
        raise InputError(f"expected a photo of shape (H, W, 3) at least 8x8, got {img.shape}")
    img = img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    h, w = int(size[0]), int(size[1])
    if n_frames < 1 or h < 2 or w < 2:
        raise InputError(f"need n_frames >= 1 and size >= 2x2, got {n_frames} frames of {size}")
    offset, zoom, angle = _trajectory(n_frames, motion, np.random.default_rng([seed, 7]))

    # Photo-space extent of all frame corners at base scale 1; every term scales as 1/base, so
    # the base scale that fits the whole move inside the photo has a closed form.
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64) - centre
    pts = np.concatenate([offset[i] + corners @ _rot(-angle[i]).T / zoom[i] for i in range(n_frames)])
    lo, hi = pts.min(0), pts.max(0)
    margin = 1.0

    def fit(src):
        return max((hi - lo)[0] / (src.shape[1] - 1 - 2 * margin), (hi - lo)[1] / (src.shape[0] - 1 - 2 * margin))

    base, fx, fy, src = fit(img), 1.0, 1.0, img
    if base < 1:  # prefilter instead of letting bilinear sampling alias while shrinking
        new_w, new_h = max(round(img.shape[1] * base), 8), max(round(img.shape[0] * base), 8)
        src = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / img.shape[1], new_h / img.shape[0]
        base = fit(src)
    photo_centre = np.array([(src.shape[1] - 1) / 2, (src.shape[0] - 1) / 2]) - (lo + hi) / (2 * base)
    # src pixel = S @ original pixel, with cv2.resize's pixel-centre alignment.
    s_mat = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
    frames = np.empty((n_frames, h, w, 3), np.float32)
    transforms = np.empty((n_frames, 2, 3))
    for i in range(n_frames):
        a = base * zoom[i] * _rot(angle[i])
        m = np.hstack([a, (centre - a @ (photo_centre + offset[i] / base))[:, None]])
        frames[i] = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        transforms[i] = m @ s_mat
    return np.clip(frames, 0.0, 1.0), transforms


def camera_move_clip(
    image: np.ndarray, n_frames: int, size: tuple[int, int] = (64, 96), motion: str = "pan", seed: int = 0
) -> np.ndarray:
    """Frames only of `camera_move`: (T, h, w, 3) float32 in [0, 1]."""
    return camera_move(image, n_frames, size, motion, seed)[0]


def relative_affine(m_a: np.ndarray, m_b: np.ndarray) -> np.ndarray:
    """(2, 3) affine taking pixel positions in frame a to frame b, given both (2, 3) photo->frame transforms."""
    full_a = np.vstack([m_a, [0, 0, 1]])
    return (np.vstack([m_b, [0, 0, 1]]) @ np.linalg.inv(full_a))[:2]


def affine_flow(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Dense flow (h, w, 2) float32, x first, of a (2, 3) frame-a -> frame-b affine.

    flow[y, x] = m(x, y) - (x, y), the flow_fw(a -> b) convention of the package.
    """
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    nx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ny = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([nx - xs, ny - ys], -1).astype(np.float32)
