"""Fast classical deflicker: per-shot temporal smoothing of tone statistics, applied as tone maps.

Two passes so long videos stream. `analyze` reads downscaled copies of every frame and records,
per channel, a few percentiles of the whole frame and of each cell of a coarse grid; it finds
scene cuts (cuts.py) and, inside each shot, smooths the statistics over time with a Gaussian
window: the smoothed values are each frame's targets. `process(t, frame)` maps frame t's
percentiles onto its targets with a monotone piecewise-linear tone map per channel (global
stage), then fixes what is left per cell (local stage), the cell maps blended bilinearly across
the image as in CLAHE. Per-channel, multi-percentile maps undo gain, offset, gamma and white
balance flicker; the local stage undoes smooth local flicker. Full-resolution frames are only
read in `process`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from unflicker.cuts import (
    CUT_THRESHOLD,
    cuts_from_distances,
    shots,
    structure_descriptor,
    structure_distance,
    thumbnail,
)
from unflicker.errors import InputError
from unflicker.frames import float_rgb

# Tone maps are tabulated at this many input levels (error <= 1/8190 of full scale).
_LUT_LEVELS = 4096
_LEVELS = np.linspace(0.0, 1.0, _LUT_LEVELS)


@dataclass
class ClassicalConfig:
    """Settings of the classical deflicker; the defaults suit most footage."""

    radius: int = 10
    """Half-width, in frames, of the temporal window the statistics are smoothed over."""
    sigma: float | None = None
    """Gaussian sigma of that window in frames; None means radius / 2."""
    percentiles: tuple[float, ...] = (2.0, 10.0, 25.0, 50.0, 75.0, 90.0, 98.0)
    """Percentiles (0..100, increasing) matched per channel; more handle tone curves finer."""
    grid: tuple[int, int] | None = (3, 4)
    """(rows, cols) of the local stage's grid, or None for the global stage only."""
    analysis_size: int = 192
    """Longer side, in pixels, of the copies the statistics are measured on."""
    cut_threshold: float = CUT_THRESHOLD
    """Scene cut sensitivity (cuts.cuts_from_distances threshold); no smoothing crosses a cut."""
    max_slope: float = 4.0
    """Tone map slopes are clamped to [1/max_slope, max_slope] so noise is never blown up."""

    def check(self) -> None:
        """Raise InputError on an invalid setting."""
        p = np.asarray(self.percentiles, dtype=float)
        if p.ndim != 1 or p.size < 2 or np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 100:
            raise InputError(f"percentiles must be >= 2 increasing values in [0, 100], got {self.percentiles}")
        if self.radius < 0:
            raise InputError(f"radius must be >= 0, got {self.radius}")
        if self.grid is not None and (len(self.grid) != 2 or min(self.grid) < 1):
            raise InputError(f"grid must be None or (rows, cols) >= 1, got {self.grid}")
        if self.analysis_size < 8 or self.max_slope < 1 or not self.cut_threshold > 0:
            raise InputError("analysis_size must be >= 8, max_slope >= 1 and cut_threshold > 0")


def _cell_bounds(n: int, cells: int) -> np.ndarray:
    """cells + 1 integer edges splitting n pixels into near-equal non-empty parts (if n >= cells)."""
    return np.round(np.linspace(0, n, cells + 1)).astype(int)


def frame_statistics(small: np.ndarray, percentiles: Sequence[float], grid: tuple[int, int] | None) -> tuple:
    """Per-channel percentiles of a (h, w, 3) image: global (3, P) and per cell (rows, cols, 3, P).

    The grid part is None when grid is None. A cell with no pixel (image smaller than the grid)
    borrows the global statistics.
    """
    p = np.asarray(percentiles, dtype=float)
    whole = np.percentile(small.reshape(-1, 3), p, axis=0).T.astype(np.float32)
    if grid is None:
        return whole, None
    rows, cols = grid
    ys, xs = _cell_bounds(small.shape[0], rows), _cell_bounds(small.shape[1], cols)
    cells = np.empty((rows, cols, 3, p.size), dtype=np.float32)
    for i in range(rows):
        for j in range(cols):
            block = small[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].reshape(-1, 3)
            cells[i, j] = np.percentile(block, p, axis=0).T if block.size else whole
    return whole, cells


def smooth_in_shots(stats: np.ndarray, shot_ranges: Iterable[range], radius: int, sigma: float) -> np.ndarray:
    """Gaussian-smooth (T, ...) statistics along time within each shot, never across one.

    Each frame gets the weighted mean over frames s with |s - t| <= radius in its own shot,
    weights renormalised where the window is cut short by a shot end.
    """
    out = np.empty_like(stats)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    for shot in shot_ranges:
        for t in shot:
            lo, hi = max(shot.start, t - radius), min(shot.stop, t + radius + 1)
            w = kernel[lo - t + radius : hi - t + radius]
            out[t] = np.tensordot(w / w.sum(), stats[lo:hi], axes=1)
    return out


def tone_lut(src: np.ndarray, dst: np.ndarray, max_slope: float, levels: int = _LUT_LEVELS) -> np.ndarray:
    """Monotone piecewise-linear map sending percentiles src (..., P) to dst (..., P), tabulated.

    Slopes between percentile pairs are clamped to [1/max_slope, max_slope] and the curve is
    anchored at the middle pair; beyond the outer pairs it continues linearly with the overall
    slope. Returns (..., levels) float32: the map at inputs linspace(0, 1, levels).
    """
    lead = src.shape[:-1]
    src = src.reshape(-1, src.shape[-1]).astype(np.float64)
    dst = dst.reshape(-1, dst.shape[-1]).astype(np.float64)
    inputs = np.linspace(0.0, 1.0, levels)
    luts = np.empty((src.shape[0], levels), dtype=np.float32)
    eps = 1e-4
    mid = src.shape[1] // 2
    for k, (x, y) in enumerate(zip(src, dst)):
        # Ties (saturated or flat channels) would make infinite slopes: spread them minimally.
        x = np.maximum.accumulate(x)
        tied = np.diff(x) < eps
        # Only tied pairs move apart, around the middle one: the anchor below maps src[mid] itself onto dst[mid].
        spread = eps * np.concatenate([[0], np.cumsum(tied)])
        x = x + spread - spread[mid]
        dx = np.diff(x)
        slopes = np.clip(np.diff(y) / dx, 1.0 / max_slope, max_slope)
        slopes[tied] = 1.0  # a tie says nothing about the slope: keep the input's
        y = np.concatenate([[0.0], np.cumsum(slopes * dx)])
        y += dst[k, mid] - y[mid]
        overall = np.clip((y[-1] - y[0]) / (x[-1] - x[0]), 1.0 / max_slope, max_slope)
        xs = np.concatenate([[min(0.0, x[0] - eps)], x, [max(1.0, x[-1] + eps)]])
        ys = np.concatenate([[y[0] - overall * (x[0] - xs[0])], y, [y[-1] + overall * (xs[-1] - x[-1])]])
        luts[k] = np.interp(inputs, xs, ys)
    return luts.reshape(*lead, levels)


def _cell_weights(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel along an axis: index of the lower neighbouring cell centre and the weight of the upper one."""
    u = np.clip((np.arange(n) + 0.5) * cells / n - 0.5, 0.0, cells - 1.0)
    i0 = np.minimum(np.floor(u).astype(np.int64), max(cells - 2, 0))
    return i0, (u - i0).astype(np.float32)


def _runs(index: np.ndarray) -> Iterator[tuple[slice, int]]:
    """(slice, value) for each run of equal values in a non-decreasing 1-D index array."""
    edges = np.flatnonzero(np.diff(index)) + 1
    for a, b in zip([0, *edges], [*edges, index.size]):
        yield slice(int(a), int(b)), int(index[a])


class ClassicalDeflicker:
    """Two-pass classical deflicker: `analyze(frames)` once, then `process(t, frame)` per frame."""

    def __init__(self, config: ClassicalConfig | None = None):
        self.config = config or ClassicalConfig()
        self.config.check()
        self.cuts: list[int] = []
        self._stats = self._targets = None
        self._cell_stats = self._cell_targets = None

    @property
    def n_frames(self) -> int:
        """Number of frames analysed (0 before analyze)."""
        return 0 if self._stats is None else len(self._stats)

    def analyze(self, frames: Iterable[np.ndarray]) -> ClassicalDeflicker:
        """Measure statistics of every frame, find cuts, build per-shot smoothed targets.

        frames: iterable (may be a generator) of (H, W, 3) float32 in [0, 1] or uint8, or a
        (T, H, W, 3) array. Only downscaled copies are kept. Returns self.
        """
        cfg = self.config
        whole, cells, distances, prev = [], [], [], None
        for frame in frames:
            small = thumbnail(float_rgb(frame), cfg.analysis_size)
            w, c = frame_statistics(small, cfg.percentiles, cfg.grid)
            whole.append(w)
            cells.append(c)
            desc = structure_descriptor(thumbnail(small, 64))
            distances.append(0.0 if prev is None else structure_distance(prev, desc))
            prev = desc
        if not whole:
            raise InputError("no frames to analyse")
        self.cuts = cuts_from_distances(distances, cfg.cut_threshold)
        ranges = shots(len(whole), self.cuts)
        sigma = cfg.sigma if cfg.sigma is not None else cfg.radius / 2.0
        self._stats = np.stack(whole)
        self._targets = smooth_in_shots(self._stats, ranges, cfg.radius, sigma)
        if cfg.grid is not None:
            # The local stage only fixes what the global maps leave: a monotone map moves
            # percentiles exactly, so each cell's statistics after the global map are known.
            self._cell_stats = np.stack(cells)
            for t in range(len(whole)):
                glut = self._global_lut(t)
                for ch in range(3):
                    self._cell_stats[t, :, :, ch] = np.interp(self._cell_stats[t, :, :, ch], _LEVELS, glut[ch])
            self._cell_targets = smooth_in_shots(self._cell_stats, ranges, cfg.radius, sigma)
        return self

    def _global_lut(self, t: int) -> np.ndarray:
        """(3, L) tone maps of frame t's whole-frame statistics onto their targets."""
        return np.clip(tone_lut(self._stats[t], self._targets[t], self.config.max_slope), 0.0, 1.0)

    def process(self, t: int, frame: np.ndarray) -> np.ndarray:
        """Deflicker frame t (the t-th frame given to analyze): (H, W, 3) -> (H, W, 3) float32 in [0, 1]."""
        if self._stats is None:
            raise InputError("call analyze() on the whole sequence before process()")
        if not 0 <= t < self.n_frames:
            raise InputError(f"frame index {t} outside the analysed 0..{self.n_frames - 1}")
        x = float_rgb(frame)
        cfg = self.config
        # Channel-first copies keep every gather and store contiguous.
        idx = np.rint(np.clip(x, 0.0, 1.0) * (_LUT_LEVELS - 1)).astype(np.int32).transpose(2, 0, 1).copy()
        out = np.empty((3, *x.shape[:2]), dtype=np.float32)
        if cfg.grid is None:
            luts = self._global_lut(t)
            for ch in range(3):
                out[ch] = luts[ch][idx[ch]]
            return np.clip(out, 0.0, 1.0, out=out).transpose(1, 2, 0).copy()
        rows, cols = cfg.grid
        local = tone_lut(self._cell_stats[t], self._cell_targets[t], cfg.max_slope)  # (rows, cols, 3, L)
        # Compose: each cell's table is its local map applied after the global map.
        luts = np.empty_like(local)
        for ch, g in enumerate(self._global_lut(t)):
            for i in range(rows):
                for j in range(cols):
                    luts[i, j, ch] = np.interp(g, _LEVELS, local[i, j, ch])
        i0, wy = _cell_weights(x.shape[0], rows)
        j0, wx = _cell_weights(x.shape[1], cols)
        # Between neighbouring cell centres the same 4 maps apply: blend them block by block
        # (bilinear in the pixel position, as CLAHE does), so each gather needs no offset.
        for ys, i in _runs(i0):
            i1 = min(i + 1, rows - 1)
            for xs, j in _runs(j0):
                j1 = min(j + 1, cols - 1)
                v, u = wy[ys, None], wx[None, xs]
                for ch in range(3):
                    k = idx[ch, ys, xs]
                    top = luts[i, j, ch][k]
                    top += u * (luts[i, j1, ch][k] - top)
                    bottom = luts[i1, j, ch][k]
                    bottom += u * (luts[i1, j1, ch][k] - bottom)
                    out[ch, ys, xs] = top + v * (bottom - top)
        return np.clip(out, 0.0, 1.0, out=out).transpose(1, 2, 0).copy()

    def run(self, frames: Sequence[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
        """analyze() then process() every frame of a re-iterable clip (list or (T, H, W, 3) array).

        Yields (H, W, 3) float32 frames in [0, 1], in order. For a stream, call analyze on one pass
        and process on a second pass instead.
        """
        if isinstance(frames, Iterator):
            raise InputError("run() reads the frames twice: pass a list or an array, not a generator")
        self.analyze(frames)
        for t, frame in enumerate(frames):
            yield self.process(t, frame)
