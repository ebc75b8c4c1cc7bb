"""Keep the input's own slowly changing look: apply only the temporally fast part of a correction.

The atlas gives every frame of a shot one shared appearance. For a per-frame-processed video that
replaces the look the processing gave each stretch of frames (and keeps any steady flaw of the
atlas), although flicker is what changes from frame to frame. So the correction D_t = O_t - I_t
is split in time: its slow part, a Gaussian-weighted mean over neighbouring frames of the same
shot taken on a coarse grid, is handed back to the input, and the output becomes
O_t - upsample(slow D_t). The fast part, flicker, is still removed. The mean looks `radius`
frames ahead, so outputs leave `radius` frames after their inputs arrive.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from unflicker.errors import InputError

Tag = TypeVar("Tag")


@dataclass
class AnchorConfig:
    """How much of the input's own look is kept."""

    sigma: float = 1.0
    """Temporal Gaussian sigma, frames, of the correction's slow part (0 disables the anchor)."""
    grid_rows: int = 64
    """The correction is averaged on a grid this many rows high (aspect kept), then upsampled."""

    def check(self) -> None:
        if not (self.sigma >= 0 and math.isfinite(self.sigma)):
            raise InputError(f"anchor sigma must be a finite number >= 0, got {self.sigma}")
        if self.grid_rows < 1:
            raise InputError(f"anchor grid_rows must be >= 1, got {self.grid_rows}")

    @property
    def radius(self) -> int:
        """Frames the mean looks ahead (and back)."""
        return math.ceil(3 * self.sigma)


def _coarse(image: np.ndarray, rows: int) -> np.ndarray:
    h, w = image.shape[:2]
    if rows >= h:
        return image
    return cv2.resize(image, (max(1, round(w * rows / h)), rows), interpolation=cv2.INTER_AREA)


class SlowAppearanceAnchor:
    """Streams (tag, input I_t, output O_t) in frame order and yields (tag, anchored O_t), `radius` frames late.

    shot_starts: frame indices where a shot begins (the mean never crosses a cut); frame 0 always does.
    Frames are (H, W, 3) float32 in [0, 1], one size per shot.
    """

    def __init__(self, config: AnchorConfig | None = None, shot_starts: Iterable[int] = ()):
        self.config = config or AnchorConfig()
        self.config.check()
        self.shot_starts = set(shot_starts) | {0}
        r = self.config.radius
        self.weights = np.exp(-0.5 * (np.arange(-r, r + 1) / max(self.config.sigma, 1e-6)) ** 2)

    def stream(self, items: Iterable[tuple[Tag, np.ndarray, np.ndarray]]) -> Iterator[tuple[Tag, np.ndarray]]:
        if self.config.sigma == 0:
            for tag, _, output in items:
                yield tag, output
            return
        r = self.config.radius
        shot: deque = deque()  # (tag, output, coarse correction) of the current shot, oldest first
        done = 0  # entries of `shot` already yielded
        for t, (tag, frame, output) in enumerate(items):
            if t in self.shot_starts and shot:
                yield from self._emit(shot, done, len(shot))
                shot.clear()
                done = 0
            shot.append((tag, output, _coarse(output - frame, self.config.grid_rows)))
            if len(shot) - done > r:  # frame `done` now has its whole look-ahead
                yield from self._emit(shot, done, done + 1)
                done += 1
                while done > r:  # older frames are never looked back to again
                    shot.popleft()
                    done -= 1
        yield from self._emit(shot, done, len(shot))

    def _emit(self, shot: deque, start: int, stop: int) -> Iterator[tuple[Tag, np.ndarray]]:
        r = self.config.radius
        for i in range(start, stop):
            lo, hi = max(0, i - r), min(len(shot), i + r + 1)
            w = self.weights[lo - i + r : hi - i + r]
            slow = sum(wk * shot[k][2] for wk, k in zip(w, range(lo, hi))) / w.sum()
            tag, output, _ = shot[i]
            h, wd = output.shape[:2]
            if slow.shape[:2] != (h, wd):
                slow = cv2.resize(slow, (wd, h), interpolation=cv2.INTER_LINEAR)
            yield tag, np.clip(output - slow, 0.0, 1.0)
