"""Which physical flicker a segment has: old-film pumping, time-lapse exposure jumps, or mains light.

The projection (projection.py) maps each input frame onto the networks' output with a smooth
flicker model; what that correction does over a segment's frames is the flicker the method
removed, free of the scene's own content. `KindProbe` watches it on small copies of the input
I_t and the projected frame P_t (frame t's log ratio log(P_t / I_t) per channel and per row band)
and names the kind:

- **mains**: light from the mains under a rolling shutter lays bands across the rows that move
  from frame to frame. Their share of the correction (how much the row profile changes between
  consecutive frames, against how much the frame-wide level does) is large.
- **timelapse**: exposure and white balance jumping from frame to frame (the auto exposure of a
  time-lapse), also levels held a few frames and then changed at once (chunks of a generated
  video): the largest few frame-to-frame changes carry nearly all of the change.
- **film**: old film pumps: its exposure swings over 10-30 frames, so the frame-wide correction
  changes smoothly from frame to frame (lag-1 autocorrelation high). A black-and-white picture
  (toned or not) whose flicker is grey is taken as film too: a time-lapse or a lamp-lit scene
  rarely is one.
- otherwise timelapse.

It names what the method saw; `--kind` given explicitly is never overridden. The numbers behind
the name go to the segment's report.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unflicker.errors import InputError

PHYSICAL_KINDS = ("film", "timelapse", "mains")


@dataclass
class KindConfig:
    """Thresholds of `KindProbe` (chosen on the tune split of benchmarks/corpus.json)."""

    bands: float = 3.0
    """Band motion (rms change of the row profile between consecutive frames) over the rms change of
    the frame-wide level, at or above which the segment is mains light (tune: mains 10.9; local
    light 1.0-1.2)."""
    jumps: float = 0.9
    """Share of the level's frame-to-frame change in its largest fifth of changes at or above which
    the flicker is held levels that jump (time-lapse, generated chunks; tune: 1.00 for those, film
    0.60-0.66, old film 0.78)."""
    pumping: float = 0.75
    """Lag-1 autocorrelation of the frame-wide level at or above which the flicker is film's pumping
    (tune: film 0.86; global and colour flicker 0.43-0.59)."""
    monochrome: float = 0.01
    """Chroma that does not follow the luma (rms, [0, 1] units) at or below which the picture is
    black and white, toned or not (tune: old film 0.005, colour sources 0.02-0.15)."""
    grey: float = 0.3
    """Colour of the flicker (rms of the channels' parting over the level's) at or below which it
    is grey, as a black-and-white film's is (tune: old film 0.04; colour flicker 0.7-1.3)."""
    clear_bands: float = 6.0
    """Band motion over level motion at or above which mains light is unmistakable (`unmistakable`; tune and
    heldout: mains 8.5-13.5, per-frame processed clips named mains 3.2-5.2)."""
    clear_pumping: float = 0.5
    """Pumping at or above which a black-and-white picture flickering in grey is unmistakably film (real old
    film 0.59-0.82; black-and-white clips processed frame by frame -0.07-0.33)."""
    rows: int = 24
    """Row bands of the row profile."""
    side: int = 160
    """Longer side, in pixels, of the copies the probe measures on."""

    def check(self) -> None:
        if self.rows < 2 or self.side < 16:
            raise InputError(f"kind probe needs rows >= 2 and side >= 16, got {self.rows}, {self.side}")
        if not (self.bands > 0 and self.clear_bands >= self.bands and 0 < self.jumps <= 1 and -1 <= self.pumping <= 1
                and self.monochrome >= 0 and self.grey >= 0):
            raise InputError("kind probe needs bands > 0, clear_bands >= bands, jumps in (0, 1], pumping in [-1, 1], "
                             "monochrome and grey >= 0")


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(a / b) of means of intensities, kept finite near black."""
    return np.log(a + 1e-3) - np.log(b + 1e-3)


class KindProbe:
    """Accumulates one segment's per-frame corrections (in frame order) and names the flicker kind."""

    def __init__(self, config: KindConfig | None = None):
        self.config = config or KindConfig()
        self.config.check()
        self.reset()

    def reset(self) -> None:
        self._levels: list[np.ndarray] = []  # (3,) log ratio per channel, per frame
        self._profiles: list[np.ndarray] = []  # (rows,) log ratio of the luma per row band, less the level
        self._chroma: list[float] = []

    def observe(self, frame: np.ndarray, projected: np.ndarray) -> None:
        """Frame t's input and projected frames (H, W, 3) float32 in [0, 1], for t = 0, 1, ... in order;
        frames larger than `side` are measured on small copies (pass small copies where they exist)."""
        from unflicker.atlas.common import atlas_size, downsample

        small_i, small_p = frame, projected
        if max(frame.shape[:2]) > self.config.side:
            size = atlas_size(*frame.shape[:2], self.config.side)
            small_i, small_p = downsample(frame, size), downsample(projected, size)
        level = _log_ratio(small_p.mean((0, 1)), small_i.mean((0, 1)))
        luma_i, luma_p = small_i.mean(2), small_p.mean(2)
        rows = (self.config.rows, 1)
        band_i = cv2.resize(luma_i.mean(1, keepdims=True), rows[::-1], interpolation=cv2.INTER_AREA)[:, 0]
        band_p = cv2.resize(luma_p.mean(1, keepdims=True), rows[::-1], interpolation=cv2.INTER_AREA)[:, 0]
        profile = _log_ratio(band_p, band_i)
        self._levels.append(level)
        self._profiles.append(profile - profile.mean())
        # Colour that is not a tint: chroma (R - G, B - G) less its straight-line fit on the luma
        # (a sepia or blue-toned black-and-white film has chroma that follows the luma).
        luma = luma_i.reshape(-1).astype(np.float64)
        basis = np.stack([luma, np.ones_like(luma)], 1)
        chroma = np.stack([(small_i[..., 0] - small_i[..., 1]).reshape(-1),
                           (small_i[..., 2] - small_i[..., 1]).reshape(-1)], 1).astype(np.float64)
        residual = chroma - basis @ np.linalg.lstsq(basis, chroma, rcond=None)[0]
        self._chroma.append(float(np.sqrt(np.mean(residual**2))))

    def features(self) -> dict[str, float] | None:
        """The numbers behind `kind` (None before three frames)."""
        if len(self._levels) < 3:
            return None
        levels = np.asarray(self._levels, np.float64)
        level = levels.mean(1)
        centred = level - level.mean()
        spread = float(centred @ centred)
        pumping = float(centred[1:] @ centred[:-1] / spread) if spread > 1e-12 else 0.0
        profiles = np.asarray(self._profiles, np.float64)
        band_motion = float(np.sqrt(np.mean(np.diff(profiles, axis=0) ** 2)))
        level_motion = float(np.sqrt(np.mean(np.diff(level) ** 2)))
        # Jumps: the share of the level's frame-to-frame change that its largest fifth of changes
        # carry (a level held for a few frames, then changed at once, puts nearly all of it there).
        steps = np.sort(np.diff(level) ** 2)[::-1]
        top = max(1, round(0.2 * len(steps)))
        jumps = float(steps[:top].sum() / steps.sum()) if steps.sum() > 1e-12 else 0.0
        # Colour of the flicker: how far the channels' corrections part from their mean, against
        # how far that mean moves (a black-and-white film flickers in grey).
        tint = levels - level[:, None]
        tint -= tint.mean(0)
        colour = float(np.sqrt(np.mean(tint**2)) / max(np.sqrt(spread / len(level)), 1e-6))
        return {"pumping": pumping, "jumps": jumps, "colour": colour, "band_motion": band_motion, "level_motion": level_motion,
                "bands": band_motion / max(level_motion, 1e-6), "chroma": float(np.mean(self._chroma))}

    def kind(self) -> str | None:
        """'mains', 'film' or 'timelapse' (None before three frames)."""
        return self.name(self.features())

    def name(self, f: dict[str, float] | None) -> str | None:
        """The kind `features` f say (None for None)."""
        return name_kind(f, self.config)


def name_kind(f: dict[str, float] | None, config: KindConfig | None = None) -> str | None:
    """The kind features f (KindProbe.features) say: 'mains', 'film' or 'timelapse' (None for None)."""
    if f is None:
        return None
    cfg = config or KindConfig()
    if f["bands"] >= cfg.bands:
        return "mains"
    if f["jumps"] >= cfg.jumps:
        return "timelapse"
    if f["pumping"] >= cfg.pumping or (f["chroma"] <= cfg.monochrome and f["colour"] <= cfg.grey):
        return "film"
    return "timelapse"


def unmistakable(f: dict[str, float] | None, config: KindConfig | None = None) -> bool:
    """Whether features f (KindProbe.features) name physical flicker by what no per-frame process of the tune and
    heldout sets gave: mains with strong bands, or film where a black-and-white picture flickering in grey also
    pumps. A name alone is not that: clips processed frame by frame get named film (goat's colorization), mains
    or timelapse (research notes, sessions 23 and 27)."""
    if not f:
        return False
    cfg = config or KindConfig()
    kind = name_kind(f, cfg)
    if kind == "mains":
        return f["bands"] >= cfg.clear_bands
    return (kind == "film" and f["chroma"] <= cfg.monochrome and f["colour"] <= cfg.grey
            and f["pumping"] >= cfg.clear_pumping)
