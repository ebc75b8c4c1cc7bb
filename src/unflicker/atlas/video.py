"""Atlases for whole videos: one per shot, long shots as overlapping windows cross-faded linearly.

The rendered A_t (float16) go to a FrameStore on disk, so memory does not grow with the video's
length; each window's atlas is dropped once its frames are rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from unflicker.atlas.backends import fit
from unflicker.atlas.common import check_frames, check_index
from unflicker.atlas.config import AtlasConfig
from unflicker.errors import InputError
from unflicker.flow import FlowPair
from unflicker.framestore import FrameStore


class VideoAtlas:
    """A_t of every frame of a video, rendered by per-shot, per-window atlases."""

    def __init__(self, rendered: np.ndarray | FrameStore, shots: list[range]):
        self.rendered = rendered
        """(T, h, w, 3) float16 A_t in [0, 1]: an array, or a FrameStore indexed alike."""
        self.shots = shots
        self.n_frames, self.shape = rendered.shape[0], rendered.shape[1:3]

    def __len__(self) -> int:
        return self.n_frames

    def render(self, t: int) -> np.ndarray:
        """A_t: (h, w, 3) float32 in [0, 1]."""
        return self.rendered[check_index(t, self.n_frames)].astype(np.float32)


def windows(length: int, window: int, overlap: int) -> list[range]:
    """Windows of `window` frames covering range(length), consecutive ones sharing >= overlap frames.

    The last window ends at `length` (so it may overlap its predecessor by more).
    """
    if window < 2 or not 0 <= overlap < window:
        raise InputError(f"need window >= 2 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if length <= window:
        return [range(0, length)]
    starts = list(range(0, length - window, window - overlap)) + [length - window]
    return [range(s, s + window) for s in starts]


def shots_from_starts(starts: Sequence[int], n_frames: int) -> list[range]:
    """Shot start indices (e.g. from cut detection) -> ranges partitioning range(n_frames)."""
    if n_frames < 1:
        raise InputError("the video has no frames")
    bad = [s for s in starts if not 0 <= s < n_frames]
    if bad:
        raise InputError(f"shot starts {bad} outside [0, {n_frames})")
    edges = sorted({0, *map(int, starts)}) + [n_frames]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _check_shots(shots: Sequence[range], n: int) -> list[range]:
    shots = list(shots)
    expected = 0
    for shot in shots:
        if not isinstance(shot, range) or shot.step != 1 or len(shot) == 0 or shot.start != expected:
            raise InputError(f"shots must be consecutive non-empty ranges from 0 to {n}, got {shot!r} "
                             f"where a range starting at {expected} was expected")
        expected = shot.stop
    if expected != n:
        raise InputError(f"shots cover frames [0, {expected}) but the video has {n} frames")
    return shots


def fit_video(
    frames: np.ndarray | FrameStore,
    shots: Sequence[range] | None = None,
    config: AtlasConfig | None = None,
    flows: Sequence[FlowPair] | None = None,
    progress: Callable[[float], None] | None = None,
    lanes: int = 1,
) -> VideoAtlas:
    """Fit atlases over a whole (low-resolution) video and render A_t for every frame.

    frames: (T, h, w, 3) float in [0, 1] (uint8 accepted) at the atlas resolution, an array or a
    FrameStore (read one window at a time).
    shots: consecutive ranges partitioning range(T) (None: one shot); a 1-frame shot's A_t is
    the frame itself. Shots longer than config.window are fitted as windows overlapping by
    config.overlap frames, whose A_t are cross-faded linearly across each overlap.
    flows: optional T-1 FlowPair between consecutive frames (pairs across a cut are ignored).
    progress: called as progress(fraction) after every step of every fit, fraction the share of the
    video's frames fitted (a window's frames beyond the previous window's end, in proportion to its
    steps done), and exactly b / T once the window ending at frame b is fitted and rendered.
    lanes: threads each fit may keep busy at once (`fit`); the result does not depend on it.
    """
    config = config or AtlasConfig()
    if not isinstance(frames, FrameStore):
        frames = np.asarray(frames)
    if len(frames.shape) != 4 or frames.shape[3] != 3:
        raise InputError(f"expected frames of shape (T, h, w, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise InputError("no frames to fit an atlas on")
    n = len(frames)
    shots = _check_shots([range(n)] if shots is None else shots, n)
    if flows is not None and len(flows) != n - 1:
        raise InputError(f"expected {n - 1} flow pairs for {n} frames, got {len(flows)}")
    out = FrameStore(frames.shape[1:], np.float16)
    for shot in shots:
        if len(shot) == 1:
            out[shot.start] = check_frames(frames[shot.start : shot.stop])[0]
            if progress is not None:
                progress(shot.stop / n)
            continue
        prev_end = shot.start
        for win in windows(len(shot), config.window, config.overlap):
            a, b = shot.start + win.start, shot.start + win.stop
            clip_flows = None if flows is None else flows[a : b - 1]
            # The fit's steps short of its last: the window's end (b / T) is reported once, rendered.
            steps = None if progress is None else \
                (lambda f, done=prev_end, new=b - prev_end: f < 1.0 and progress((done + new * f) / n))
            atlas = fit(check_frames(frames[a:b]), clip_flows, config, lanes, steps)
            for t in range(a, b):
                rendered = atlas.render(t - a)
                if t < prev_end:  # inside the overlap with the previous window
                    w_new = (t - a + 1) / (prev_end - a + 1)
                    rendered = (1 - w_new) * out[t].astype(np.float32) + w_new * rendered
                out[t] = rendered
            prev_end = b
            del atlas
            if progress is not None:
                progress(b / n)  # also where the fit took no step (a time budget spent)
    return VideoAtlas(out, shots)
