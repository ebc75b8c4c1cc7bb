"""Keep the input's own slowly changing look: apply only the temporally fast part of a correction.

The atlas gives every frame of a shot one shared appearance. For a per-frame-processed video that
replaces the look the processing gave each stretch of frames (and keeps any steady flaw of the
atlas), although flicker is what changes from frame to frame. So the correction D_t = O_t - I_t
is split in time: its slow part, a Gaussian-weighted mean over neighbouring frames of the same
shot taken on a coarse grid, is handed back to the input, and the output becomes
O_t - upsample(slow D_t). The fast part, flicker, is still removed.

The correction is split in space too, and each part gets its own window: the frame-wide mean of D_t
per channel (global_sigma), its spatially coarse remainder (coarse_sigma) and the fine rest (sigma).
Light-borne flicker (old film's exposure, uneven or drifting light) lives in the mean and the coarse
part and has slow swings too, so only truly slow changes go back there; the look a per-frame process
gives (colours of objects, local contrast) is finer and changes quickly, so the short window keeps it.
A window cut by a shot's ends bends a fade (a slow change of light over the shot) towards the
shot's middle; `AnchorConfig.fade` gives back what the window misses of the shot's straight line,
as far as the line explains the change (a fade is content; pumping is not a line).

The mean parts give back a change of the local mean colour only. A slow change of gain or tone (a
camera's own exposure drift taken out by the flicker model, the networks' softening) also changes
the texture's contrast, so a fourth part does the same for the log-ratio of the output's and the
input's local contrast (`contrast_sigma`): its slow part goes back as a gain on the output's
deviation from its local mean, O_t'' = g O_t + (1 - g) mean(O_t) - upsample(slow D_t).

A per-frame process with random settings (sharpening, detail enhancement, edge-preserving smoothing,
denoising) also flickers in the *amount* of fine detail, which the networks, correcting colour with
smooth fields, leave as it is. A fifth part (`detail_sigma`) evens that out, region by region and
along the motion: per frame and per band of fine detail (luma differences of Gaussian blurs,
`detail_bands`), a map of the local energy relative to the local mean luma squared; each map is
averaged over neighbouring frames of the shot by a forward and a backward recursive filter that
warp it along the input's optical flow (DIS on grid-sized copies, occluded pixels restart), and
the band is scaled by the gain that takes its energy `detail_share` of the way, in log, to that
mean. The detail stays the frame's own (nothing is resampled or averaged over frames; only the
smooth energy maps are warped), only its amount stops jumping. Without the motion (session 13) a
region's mean mixed the different textures that moved through it.

The means look `radius` frames ahead, so outputs leave `radius` frames after their inputs arrive;
`corrections` holds only coarse-grid arrays meanwhile (the caller keeps the outputs, e.g. on disk).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from unflicker.errors import InputError
from unflicker.frames import LUMA, blur, luma as luma_of
from unflicker.gate import ramp

Tag = TypeVar("Tag")


@dataclass
class AnchorConfig:
    """How much of the input's own look is kept."""

    sigma: float = 1.0
    """Temporal Gaussian sigma, frames, of the slow part of the fine-scale correction (inf: none goes
    back; with the other four sigmas inf too the anchor is off)."""
    coarse_sigma: float = 8.0
    """The same for the spatially coarse part of the correction (below the frame-wide mean)."""
    global_sigma: float = 16.0
    """The same for the frame-wide mean of the correction per channel."""
    coarse_scale: float = 1 / 24
    """Gaussian sigma, as a fraction of the frame height, that separates coarse from fine."""
    grid_rows: int = 96
    """The correction is averaged on a grid this many rows high (aspect kept), then upsampled."""
    fade: bool = True
    """Keep a fade whole up to the shot's ends. A window mean is a straight line's own value inside
    a shot, but near either end its window is cut and it bends the line towards the middle (a fade
    across a 48-frame shot comes back about half as steep). With `fade`, per shot (a segment) the
    coarse and frame-wide parts' straight lines over the shot are fitted, and what their window
    means miss of them goes back too, in proportion to how well the line explains the frame-wide
    part's variation (`fade_share`). Everything else is the window means': a change of light that
    comes and goes (slow flicker, pumping) is not a line, and if one passes for a line by chance,
    only the line's ends change."""
    lines: float = 0.0
    """How much of the coarse and frame-wide parts goes back as the shot's steady level plus its fade
    (the line's share, see `fade`) instead of the window means: nothing of a slow swing or wander
    then goes back. For segments of smooth physical flicker (old-film pumping, a time-lapse's slow
    drift: a change of light that is not a line is flicker there); the neural method sets it per
    segment from its gate (`for_segment`)."""
    physical_lines: bool = False
    """`for_segment` sets `lines` to the gate's smoothness (1: smooth physical flicker), times the
    ramp of `lines_pumping` where that is set."""
    lines_pumping: tuple[float, float] | None = None
    """With `physical_lines`: `lines` also scaled by a ramp of the flicker's pumping (the lag-1
    autocorrelation of the correction's frame-wide level, unflicker.kinds), 0 at or below the first
    value, 1 at or above the second. Light that drifts changes smoothly from frame to frame, so its
    slow part is flicker too; a process with independent parameters per frame has no slow part of its
    own, and what is slow in its correction is the video's look. None: the smoothness alone."""
    lines_fade_share: tuple[float, float] | None = None
    """Where `lines` applies, the R^2 ramp of the share of the shot's line that goes back, in place
    of `fade_share` (None: `fade_share`). With the lines nothing else gives a fade back, so a lower
    ramp: a drift of the light leaves a line that explains little of its course (tune: R^2 at most
    0.33), a fade under flicker one that explains most (0.59-1.00)."""
    contrast_sigma: float = 16.0
    """The same for the change of local contrast: per grid cell, the log-ratio of the standard
    deviations of the output's and the input's luma (`contrast_floor` added to both). The window
    means above give back a slow change of the local mean only; a slow change of gain or tone also
    changes the texture's contrast, and the networks soften it. Its slow part goes back as a gain
    on the output's deviation from its local mean: the texture of the input's own look returns, its
    fast changes (flicker) do not. inf: none goes back. It has no `lines` or `fade` (window means
    only), and does nothing where a grid cell is a pixel (frames at most `grid_rows` high)."""
    contrast_floor: float = 0.01
    """Added to both standard deviations of `contrast_sigma` (flat cells: no gain from noise)."""
    contrast_side: int = 960
    """The local contrast (and with it the local means) is measured on copies of at most this longer
    side (area averaged): at 1080p and above it costs what a 960-pixel frame does, and sees texture
    from two source pixels up (1080p) or four (4K)."""
    contrast_limit: float = 4.0
    """The contrast part's gain stays within [1 / limit, limit] (a texture the output flattened almost
    entirely would otherwise be scaled up many times, edge halos with it)."""
    detail_sigma: float = 5.0
    """Temporal reach, frames, over which the amount of fine detail is evened out: the forward and
    backward recursions' factor is a = ((s^2 + 1) - sqrt(2 s^2 + 1)) / s^2 for s = detail_sigma (0.754
    at 5; the mean of the two recursions then weighs frame t + k by about a^|k|, a standard deviation
    of 4.7 frames). inf or 0: off."""
    detail_bands: tuple[float, ...] = (1 / 270, 3 / 270)
    """Gaussian sigmas, as fractions of the frame's shorter side, whose successive differences are
    the bands of fine detail (the first band: the luma less its blur of the first sigma): 1 and 3
    pixels at 270 rows, the corpus's size, where they were chosen."""
    detail_cell: float = 0.04
    """Sigma of the Gaussian that makes each band's squared detail (and the luma it is relative to) a
    local energy, as a fraction of the frame's shorter side."""
    detail_side: int = 480
    """The energies are measured on a copy whose shorter side is at most this (area averaged; the
    blurs scaled with it): at 1080p it costs what an 854x480 frame does (detail finer than that copy
    holds is scaled with its band, not measured)."""
    detail_min_change: float = 0.002
    """Gains within this of 1 everywhere are not applied (full-size blurs saved where they would
    change nothing visible)."""
    detail_floor: float = 1e-5
    """Added to the local mean square of each band (a region flat all through the shot gets no gain from
    its noise; a flat frame between textured ones does: its noise is raised, up to `detail_limit`)."""
    detail_dark: float = 0.05
    """Added to the local mean luma that the energy is relative to: a nearly black region's noise is
    not taken for a large amount of detail to be matched."""
    detail_share: float = 1.0
    """How much of the way to the mean along the motion each band's local energy goes, in log."""
    detail_limit: float = 4.0
    """The detail gains stay within [1 / limit, limit]."""
    fade_share: tuple[float, float] = (0.5, 0.8)
    """Share of the frame-wide part's variation over the shot that its line explains (R^2), at or
    below which none of the line goes back, at or above which all of it does."""

    @classmethod
    def off(cls) -> AnchorConfig:
        """Every sigma infinite: the anchor passes the outputs through."""
        return cls(sigma=math.inf, coarse_sigma=math.inf, global_sigma=math.inf, contrast_sigma=math.inf,
                   detail_sigma=math.inf)

    def check(self) -> None:
        if not self.coarse_scale >= 0:
            raise InputError(f"anchor coarse_scale must be >= 0, got {self.coarse_scale}")
        for name in ("sigma", "coarse_sigma", "global_sigma", "contrast_sigma", "detail_sigma"):
            value = getattr(self, name)
            if not value >= 0:  # inf is allowed: that part of the correction is kept in full
                raise InputError(f"anchor {name} must be a number >= 0 or inf, got {value}")
        if not self.contrast_limit >= 1:
            raise InputError(f"anchor contrast_limit must be >= 1, got {self.contrast_limit}")
        try:
            bands = tuple(float(band) for band in self.detail_bands)
        except (TypeError, ValueError) as exc:
            raise InputError(f"anchor detail_bands must be numbers, got {self.detail_bands!r}") from exc
        if not self.detail_limit >= 1 or not self.detail_floor > 0 or not bands or not all(
                a < b for a, b in zip((0.0, *bands), bands)) or not all(map(math.isfinite, bands)) or not (
                0 < self.detail_cell < math.inf) or not (
                0.0 <= self.detail_share <= 1.0) or not self.detail_dark > 0 or self.detail_side < 16 or not (
                self.detail_min_change >= 0):
            raise InputError(f"anchor needs detail_limit >= 1, detail_floor > 0, detail_bands rising above 0, detail_cell > 0, "
                             f"detail_share in [0, 1], detail_dark > 0, detail_side >= 16, detail_min_change >= 0, got "
                             f"{self.detail_limit}, {self.detail_floor}, {self.detail_bands}, {self.detail_cell}, "
                             f"{self.detail_share}, {self.detail_dark}, {self.detail_side}, {self.detail_min_change}")
        if not self.contrast_floor > 0:
            raise InputError(f"anchor contrast_floor must be > 0, got {self.contrast_floor}")
        if self.contrast_side < 16:
            raise InputError(f"anchor contrast_side must be >= 16, got {self.contrast_side}")
        if self.grid_rows < 1:
            raise InputError(f"anchor grid_rows must be >= 1, got {self.grid_rows}")
        if not 0.0 <= self.lines <= 1.0:
            raise InputError(f"anchor lines must be in [0, 1], got {self.lines}")
        if len(self.fade_share) != 2 or not 0.0 <= self.fade_share[0] < self.fade_share[1] <= 1.0:
            raise InputError(f"anchor fade_share must be (low, high) with 0 <= low < high <= 1, got {self.fade_share}")
        if self.lines_pumping is not None and (len(self.lines_pumping) != 2
                                               or not -1.0 <= self.lines_pumping[0] < self.lines_pumping[1] <= 1.0):
            raise InputError(f"anchor lines_pumping must be (low, high) with -1 <= low < high <= 1, got {self.lines_pumping}")
        if self.lines_fade_share is not None and (len(self.lines_fade_share) != 2
                                                  or not 0.0 <= self.lines_fade_share[0] < self.lines_fade_share[1] <= 1.0):
            raise InputError(f"anchor lines_fade_share must be (low, high) with 0 <= low < high <= 1, got {self.lines_fade_share}")

    def for_segment(self, smoothness: float, strength: float = 1.0, pumping: float | None = None) -> AnchorConfig:
        """The config for a segment whose gate measured this smoothness and strength (0..1): the detail
        part goes `strength` x (1 - smoothness) of its way (none for a segment left as it is, as the
        gate's correction, nor where the flicker is smooth: light does not change the amount of detail).
        pumping: the kind probe's (None: not measured; `lines_pumping` then takes none of the lines)."""
        strength = float(np.clip(strength, 0.0, 1.0))
        share = strength * (1.0 - float(np.clip(smoothness, 0.0, 1.0)))
        config = self if share == 1.0 else dataclasses.replace(
            self, detail_share=self.detail_share * share, detail_sigma=self.detail_sigma if share > 0 else math.inf)
        if not config.physical_lines:
            return config
        lines = float(np.clip(smoothness, 0.0, 1.0))
        if config.lines_pumping is not None:
            low, high = config.lines_pumping
            lines *= 0.0 if pumping is None else ramp(pumping, low, high)
        return dataclasses.replace(config, lines=lines)

    @property
    def window(self) -> int:
        """Frames each window mean reaches ahead and back."""
        sigmas = (self.sigma, self.coarse_sigma, self.global_sigma, self.contrast_sigma, self.detail_sigma)
        finite = [x for x in sigmas if math.isfinite(x)]
        return math.ceil(3 * max(finite, default=0.0))

    @property
    def radius(self) -> int:
        """Frames the outputs leave after their inputs: `window`, or with `fade` or `lines` the whole shot."""
        return 1 << 30 if self.fade or self.lines > 0 else self.window


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A coarse-grid array at the frame's size (h, w), bilinear."""
    if grid.shape[:2] == tuple(size):
        return grid
    return cv2.resize(grid, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _shrunk(image: np.ndarray, limit: int, side=max) -> np.ndarray:
    """The image area-averaged so that side(h, w) (max: the longer side, min: the shorter) is at most limit."""
    h, w = image.shape[:2]
    if side(h, w) <= limit:
        return image
    scale = limit / side(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _coarse(image: np.ndarray, rows: int) -> np.ndarray:
    h, w = image.shape[:2]
    if rows >= h:
        return image
    return cv2.resize(image, (max(1, round(w * rows / h)), rows), interpolation=cv2.INTER_AREA)


@dataclass
class _DetailFrame:
    """One frame's part of the detail evening: its local energies per band, the input's grid-sized
    copy (until the next frame's flow is made), the flow from the previous frame of the shot to this
    one with the previous frame's consistency mask (None for a shot's first; the backward recursion's
    step) and the forward recursion's value."""

    energy: np.ndarray
    small: np.ndarray | None
    flow: np.ndarray | None = None
    valid: np.ndarray | None = None
    forward: np.ndarray | None = None


class SlowAppearanceAnchor:
    """Streams (tag, input I_t, output O_t) in frame order and yields (tag, anchored O_t), `radius` frames late.

    shot_starts: frame indices where a shot begins (the mean never crosses a cut); frame 0 always does.
    Frames are (H, W, 3) float32 in [0, 1], one size per shot.
    """

    def __init__(self, config: AnchorConfig | None = None, shot_starts: Iterable[int] = ()):
        self.config = config or AnchorConfig()
        self.config.check()
        self.shot_starts = set(shot_starts) | {0}
        r = self.config.window
        offsets = np.arange(-r, r + 1)
        # Per window-mean part (fine, coarse, frame-wide mean, local contrast): None for an infinite
        # sigma, nothing of that part goes back; sigma 0 gives everything back. The detail part has no
        # window (recursions along the motion): on for a finite sigma above 0 and a share above 0.
        self.part_weights = [None if math.isinf(sigma) else np.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
                             for sigma in (self.config.sigma, self.config.coarse_sigma, self.config.global_sigma,
                                           self.config.contrast_sigma)]
        self._contrast = self.part_weights[3] is not None
        self._detail = 0 < self.config.detail_sigma < math.inf and self.config.detail_share > 0
        # The recursions' factor a (`detail_sigma`): a forward and a backward recursion in turn would have the variance 2 a / (1 - a)^2.
        variance = self.config.detail_sigma ** 2
        self._detail_factor = ((variance + 1) - math.sqrt(2 * variance + 1)) / variance if self._detail else 0.0

    def _grids(self, frame: np.ndarray, output: np.ndarray) -> tuple:
        """Frame t's coarse-grid arrays: the (fine, coarse, frame-wide mean) parts of the correction
        O_t - I_t; with `contrast_sigma`, also the log-ratio of their luma's local standard deviations
        and O_t's local mean (the anchored output keeps its deviation from it, `_emit`), else None,
        None; with `detail_sigma`, last, O_t's local detail energies on the same grid (`_DetailFrame`),
        else None."""
        rows = self.config.grid_rows
        if not self._contrast:
            parts = self._parts(_coarse(output - frame, rows))
            return (*parts, None, None, self._detail_frame(frame, output, parts[0].shape[:2]))
        stats = []
        for image in (output, frame):
            image = _shrunk(image, self.config.contrast_side)
            mean = _coarse(image, rows)
            # E[l^2] - E[l]^2 in float64: in float32 a flat bright cell's variance is rounding noise
            # of the size of faint texture's.
            luma = (image @ LUMA).astype(np.float64)
            variance = _coarse(np.square(luma, out=luma), rows) - np.square((mean @ LUMA).astype(np.float64))
            stats.append((mean, np.sqrt(np.maximum(variance, 0.0, out=variance)).astype(np.float32)))
        (mean_o, std_o), (mean_i, std_i) = stats
        floor = np.float32(self.config.contrast_floor)
        parts = self._parts(mean_o - mean_i)
        return (*parts, np.log((std_o + floor) / (std_i + floor)), mean_o,
                self._detail_frame(frame, output, parts[0].shape[:2]))

    def _detail_frame(self, frame: np.ndarray, output: np.ndarray, grid: tuple[int, int]) -> _DetailFrame | None:
        """O_t's local energy per band of fine detail (`detail_bands`; luma measured on a copy of
        shorter side at most `detail_side`) over the square of its local mean luma plus `detail_dark`,
        as a (rows, cols, bands) grid; and the input's copy of the grid's size (for the flow)."""
        if not self._detail:
            return None
        cfg = self.config
        luma = luma_of(_shrunk(output, cfg.detail_side, min))
        side = min(luma.shape)
        blurs = [luma] + [blur(luma, band * side) for band in cfg.detail_bands]
        cell = cfg.detail_cell * side
        level = blur(luma, cell) + np.float32(cfg.detail_dark)
        level *= level
        size = (grid[1], grid[0])
        energies = []
        for k in range(len(cfg.detail_bands)):
            band = blurs[k] - blurs[k + 1]
            energy = blur(band * band, cell) + np.float32(cfg.detail_floor)
            energies.append(cv2.resize(energy / level, size, interpolation=cv2.INTER_AREA))
        small = np.nan_to_num(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), nan=0.0, posinf=1.0, neginf=0.0)
        return _DetailFrame(np.stack(energies, -1).reshape(grid[0], grid[1], -1), small)

    def _detail_forward(self, coarse: deque) -> None:
        """The forward recursion for the newest frame of the shot: its energies blended with the
        previous frame's recursion warped along the flow (where the flow is consistent)."""
        current = coarse[-1][5]
        if len(coarse) < 2:
            current.forward = current.energy
            return
        from unflicker.flow import consistency_mask, flow_pair, warp

        previous = coarse[-2][5]
        pair = flow_pair(previous.small, current.small)
        previous.small = None  # its flows are made
        current.flow, current.valid = pair.forward, pair.valid
        valid = consistency_mask(pair.backward, pair.forward)
        current.forward = self._blend(current.energy, warp(previous.forward, pair.backward), valid)

    def _blend(self, own: np.ndarray, carried: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """own + a (carried - own) where valid and carried is finite, own elsewhere (a: the recursion's
        factor): a frame that is not finite does not spread into its neighbours."""
        carried = carried.reshape(own.shape)
        mixed = own + np.float32(self._detail_factor) * (carried - own)
        return np.where(valid[..., None] & np.isfinite(carried), mixed, own).astype(np.float32)

    def _detail_gains(self, coarse: deque, i: int) -> np.ndarray:
        """Frame i's gains per band (rows, cols, bands): each band's energy goes `detail_share` of the
        way, in log, to its mean along the motion (the forward recursion's and a backward one's from up
        to `detail_sigma` x 3 frames ahead); 1 where a value is not finite."""
        from unflicker.flow import warp

        end = min(len(coarse) - 1, i + math.ceil(3 * self.config.detail_sigma))
        backward = coarse[end][5].energy
        for j in range(end - 1, i - 1, -1):
            step = coarse[j + 1][5]  # the flow from frame j to j + 1, frame j's mask
            backward = self._blend(coarse[j][5].energy, warp(backward, step.flow), step.valid)
        own = coarse[i][5]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_gain = 0.5 * self.config.detail_share * np.log(0.5 * (own.forward + backward) / own.energy)
            limit = math.log(self.config.detail_limit)
            gains = np.exp(np.clip(log_gain, -limit, limit))
        return np.where(np.isfinite(gains), gains, 1.0).astype(np.float32)

    def _scale_detail(self, image: np.ndarray, gains: np.ndarray) -> np.ndarray:
        """image + sum over bands of (gain_k - 1) band_k of its luma (added to every channel), the bands
        at the image's full size; bands whose gain is within `detail_min_change` of 1 everywhere are skipped."""
        bands = self.config.detail_bands
        changing = [float(np.abs(gains[..., k] - 1).max()) > self.config.detail_min_change for k in range(len(bands))]
        if not any(changing):
            return image
        luma = luma_of(image)
        side = min(image.shape[:2])
        detail = None
        previous = luma
        for k in range(max(k for k, c in enumerate(changing) if c) + 1):  # no blur past the last band scaled
            blurred = blur(luma, bands[k] * side)
            if changing[k]:
                # OpenCV's float32 arithmetic in place: the same sums as NumPy's without its temporaries.
                scaled = cv2.subtract(_upsample(np.ascontiguousarray(gains[..., k]), luma.shape), 1.0)
                cv2.multiply(scaled, cv2.subtract(previous, blurred), dst=scaled)
                detail = scaled if detail is None else cv2.add(detail, scaled, dst=detail)
            previous = blurred
        return np.add(image, detail[..., None], out=image)  # no frame-sized temporary (cv2.merge's faults in its pages)

    def _parts(self, correction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fine, coarse, frame-wide mean) parts of a coarse-grid correction; they sum to it."""
        frame_mean = correction.reshape(-1, 3).mean(0)
        rest = correction - frame_mean
        blur = self.config.coarse_scale * correction.shape[0]
        coarse = cv2.GaussianBlur(rest, (0, 0), blur, borderType=cv2.BORDER_REFLECT) if blur > 0 else np.zeros_like(rest)
        return rest - coarse, coarse, frame_mean

    def stream(self, items: Iterable[tuple[Tag, np.ndarray, np.ndarray]]) -> Iterator[tuple[Tag, np.ndarray]]:
        """Yield (tag, anchored O_t) for each (tag, I_t, O_t), `radius` frames late (holding the
        outputs meanwhile; `corrections` + `apply` let a caller keep them elsewhere)."""
        pending: deque = deque()

        def held():
            for tag, frame, output in items:
                pending.append(output)
                yield tag, frame, output

        for tag, slow in self.corrections(held()):
            yield tag, self.apply(pending.popleft(), slow)

    def corrections(self, items: Iterable[tuple[Tag, np.ndarray, np.ndarray]]
                    ) -> Iterator[tuple[Tag, np.ndarray | None]]:
        """Yield (tag, slow part of the correction on the coarse grid, or None for nothing) for each
        (tag, I_t, O_t), `radius` frames late; only coarse-grid arrays are held, never a frame. With
        `contrast_sigma` the slow part has a fourth channel, with `detail_sigma` one more per detail band
        (and the fourth then always), see `apply`."""
        if all(weights is None for weights in self.part_weights) and not self._detail:
            for tag, _, _ in items:
                yield tag, None
            return
        r = self.config.radius
        # The coarse corrections of the current shot from r frames back to the newest, and the
        # tags of the frames not yet yielded (r + 1 at most).
        coarse: deque = deque()
        pending: deque = deque()
        for t, (tag, frame, output) in enumerate(items):
            if t in self.shot_starts and coarse:
                yield from self._emit(coarse, pending, len(pending))
                coarse.clear()
            coarse.append(self._grids(frame, output))
            if self._detail:
                self._detail_forward(coarse)
            pending.append(tag)
            if len(pending) > r:  # the oldest pending frame now has its whole look-ahead
                yield from self._emit(coarse, pending, 1)
                while len(coarse) - len(pending) > r:  # older frames are never looked back to again
                    coarse.popleft()
        yield from self._emit(coarse, pending, len(pending))

    def _ramps(self, coarse: deque) -> tuple[float, list[np.ndarray | None], list[np.ndarray | None]]:
        """A shot's fade (see `fade`): how much of the frame-wide part's variation over the shot its line
        explains (R^2; 0 under 3 frames), and per part (fine, coarse, frame-wide) the slope per frame and
        the mean of the straight line through each grid value (least squares over the shot; None for the
        fine part, whose window stays as it is)."""
        n = len(coarse)
        if n < 3:
            return 0.0, [None, None, None], [None, None, None]
        t = np.arange(n, dtype=np.float64) - (n - 1) / 2
        slopes: list[np.ndarray | None] = [None]
        levels: list[np.ndarray | None] = [None]
        for part in (1, 2):
            values = np.stack([c[part] for c in coarse]).astype(np.float64)
            levels.append(values.mean(0))
            slopes.append(np.tensordot(t, values - levels[-1], axes=(0, 0)) / float(t @ t))
        # How much of the frame-wide part's whole variation over the shot the line is: flicker that
        # comes and goes, fast or slow, is variation the line does not explain. `values`: that part's.
        spread = float(np.sum((values - levels[2]) ** 2))
        line = levels[2] + t[:, None] * slopes[2]
        explained = 1.0 - float(np.sum((values - line) ** 2)) / spread if spread > 1e-12 else 0.0
        return explained, slopes, levels

    def _emit(self, coarse: deque, pending: deque, count: int) -> Iterator[tuple[Tag, np.ndarray]]:
        """Yield the `count` oldest pending tags with their slow corrections."""
        r, lines = self.config.window, self.config.lines
        fitted = self.config.fade or lines > 0  # the shot's lines are needed (_ramps: none under 3 frames)
        explained, slopes, levels = self._ramps(coarse) if fitted else (0.0, [None] * 3, [None] * 3)
        share = ramp(explained, *self.config.fade_share)  # of the shot's line that goes back
        line_share = share if self.config.lines_fade_share is None else ramp(explained, *self.config.lines_fade_share)

        stacked: dict[int, np.ndarray] = {}  # per part, its grids of the shot's frames held in `coarse`

        def window_mean(part: int, w: np.ndarray) -> np.ndarray:
            """The window mean of a part at the frame being emitted; w: its weights cut to [lo, hi)."""
            if part not in stacked:  # once per call: a whole shot's frames are often emitted at once
                stacked[part] = np.stack([c[part] for c in coarse])
            return np.tensordot(w, stacked[part][lo:hi], axes=(0, 0)) / w.sum()

        for _ in range(count):
            i = len(coarse) - len(pending)  # the oldest pending frame's place in `coarse`
            lo, hi = max(0, i - r), min(len(coarse), i + r + 1)
            slow = np.zeros(coarse[i][0].shape, np.float32)
            for part, weights in enumerate(self.part_weights[:3]):
                if weights is None:
                    continue
                lined = lines if slopes[part] is not None else 0.0
                w = weights[lo - i + r : hi - i + r]
                if lined < 1.0:
                    mean = window_mean(part, w)
                    if self.config.fade and share > 0 and slopes[part] is not None:
                        # The line's value at i less its window mean: zero where the window is whole.
                        bend = i - float(w @ np.arange(lo, hi)) / float(w.sum())
                        mean = mean + (share * bend * slopes[part]).astype(np.float32)
                    slow += np.float32(1.0 - lined) * mean  # x 1.0 is exact: the window means' bits
                if lined > 0.0:  # the shot's level and its fade alone
                    line = levels[part] + line_share * (i - (len(coarse) - 1) / 2) * slopes[part]
                    slow += (lined * line).astype(np.float32)
            if self._contrast:  # O_t'' = g O_t + (1 - g) mean(O_t) - slow: see `apply`
                log_gain = -window_mean(3, self.part_weights[3][lo - i + r : hi - i + r])
                limit = math.log(self.config.contrast_limit)
                gain = np.exp(np.clip(log_gain, -limit, limit)).astype(np.float32)
                offset = (1 - gain)[..., None] * coarse[i][4] - slow
                slow = np.concatenate([offset, gain[..., None]], 2)
            if self._detail:  # from the fifth channel on: the detail gains per band (`apply`)
                if not self._contrast:
                    slow = np.concatenate([-slow, np.ones((*slow.shape[:2], 1), np.float32)], 2)
                slow = np.concatenate([slow, self._detail_gains(coarse, i)], 2)
            yield pending.popleft(), slow

    def apply(self, output: np.ndarray, slow: np.ndarray | None) -> np.ndarray:
        """O_t minus the upsampled slow correction, clipped to [0, 1] (float32). A slow part with a
        fourth channel (`contrast_sigma`) is an offset and a gain: g O_t + offset, where the gain g
        gives back the slow part of the local contrast's change and the offset both the slow part of
        the local mean's and what g does to O_t's local mean. Further channels (`detail_sigma`, one
        gain h_k per band) then scale the bands of the result's luma: X + sum (h_k - 1) band_k(luma X),
        added to each channel (`detail_bands`, at the frame's size). With the detail part the slow part always has the
        offset and gain form (gain 1 without the contrast part)."""
        if slow is None:
            return output
        size = output.shape[:2]
        if slow.shape[2] >= 4:
            gain = _upsample(np.ascontiguousarray(slow[..., 3]), size)
            anchored = cv2.multiply(output, cv2.merge([gain, gain, gain]), dtype=cv2.CV_32F)
            anchored += _upsample(np.ascontiguousarray(slow[..., :3]), size)
            if slow.shape[2] > 4 and float(np.abs(slow[..., 4:] - 1).max()) > self.config.detail_min_change:
                anchored = self._scale_detail(anchored, slow[..., 4:])
            return np.clip(anchored, 0.0, 1.0, out=anchored)
        slow = _upsample(slow, size)
        # float32 throughout (the weights are float64): a float64 full-resolution frame would
        # double the cost of this and of every step after it.
        anchored = np.subtract(output, slow, dtype=np.float32)
        return np.clip(anchored, 0.0, 1.0, out=anchored)
