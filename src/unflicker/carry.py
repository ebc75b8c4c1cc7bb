"""Carry the output's finest detail along the motion: the texture flicker of a per-frame process.

The networks correct colour with smooth fields (the filter's coefficients at its working
resolution, the refinement's gains at a quarter of its own) and the anchor evens out the amount of
fine detail, but nothing before this stage makes the detail itself agree from frame to frame. A
per-frame process that draws its texture afresh every frame (img2img, stylization, denoising or
sharpening with random settings) keeps most of that flicker.

This stage filters the output's finest band of detail, D_t = O_t - G(O_t) (G a Gaussian of `band`
times the frame's shorter side), by a recursion along the motion:

    D'_t = D_t + a m_t (W(D'_{t-1}) - D_t),

W the bicubic warp from frame t to t - 1 (DIS flow between consecutive *input* frames, normalised for
flicker, as the anchor's), m_t the trust in the flow: Lai et al.'s consistency mask, inside the frame,
and where the warped base G(O_{t-1}) matches G(O_t) (a Gaussian of their mean absolute difference,
`tolerance`), times how fresh the region's detail is (`fresh_low`/`fresh_high`: where the band agrees
with its predecessor's along the motion, carrying would only add the flow's errors). Averaging and
resampling lower the band's finest energy, so D'_t is then scaled region by region (a gain in
[1, `gain_limit`]) until the local energy of its Laplacian is D_t's again: the amount of detail stays
the frame's, its pattern follows the motion. The output is
O_t + amount (D'_t - D_t).

Where the detail already agreed along the motion, carrying it only adds the flow's errors (edges
doubled where the flow is off by a fraction of a pixel). So each segment is measured as it is carried,
as the gate measures the networks' correction: the band's temporal error along the motion before
(e_D, the frame's own band against its predecessor's) and after (e_C), and the mean change |D' - D|;
the efficiency r = (e_D - e_C) / change is about 0.5-1.2 for fresh texture and 0.25-0.3 where the
detail was steady, and the carried frames are taken `amount` x ramp(r) of the way (0 at or below
`efficient_low`, all at or above `efficient_high`; `blend`, in the band, its energy kept).

Fresh texture from a per-frame process, a camera's sensor noise and film grain are the same signal
here: the carry cannot tell them apart (session 29 tried a noise floor: they do not part by level or by
spread), and grain is the film's own look. So no run carries by default: `--carry-texture` asks for it
(videos processed frame by frame that draw their texture afresh, as img2img does), and the user
accepts that it also evens out sensor noise and grain. The gate still scales it per segment
(`for_segment`): none where a segment is left as it is, none where the gate measured its flicker as smooth
physical light (`--kind auto`); with a kind the user names, the gate measures no smoothness and the carry is
whole (a video processed frame by frame can also flicker under mains light). The recursion restarts at a
segment's first frame; segments are cross-faded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from unflicker.errors import InputError
from unflicker.flow import FLOW_PRESETS, remap_maps, warp_mapped
from unflicker.frames import blur


@dataclass
class CarryConfig:
    """How the output's finest detail is carried along the motion."""

    factor: float = 0.8
    """The recursion's factor a: the share of the carried detail where the flow is trusted (0: off)."""
    band: float = 1 / 180
    """Sigma of the Gaussian that separates the finest band of detail, as a fraction of the frame's
    shorter side (1.5 pixels at 270 rows, the corpus's size, where it was chosen)."""
    tolerance: float = 0.03
    """Mean absolute difference of the blurred base and its warped predecessor at which the flow's
    trust has fallen to 1/e (a Gaussian in the difference): detail is not carried across a mismatch."""
    energy: float = 4 / 270
    """Sigma of the Gaussian that makes the Laplacian's square a local energy, as a fraction of the
    shorter side."""
    gain_limit: float = 3.0
    """The energy gain stays within [1, gain_limit]."""
    flow_preset: str = "fast"
    """DIS preset of the flows between consecutive input frames ('ultrafast', 'fast', 'medium')."""
    flow_side: int = 540
    """Flows are computed on copies whose shorter side is at most this (area averaged), then enlarged."""
    fresh_low: float = 0.1
    """Freshness c of a region's band against its predecessor's along the motion (see `DetailCarry._freshness`;
    about 1 for texture drawn afresh, 0 for steady detail) at or below which nothing is carried there."""
    fresh_high: float = 0.4
    """Freshness at or above which the region is carried in full (linear between)."""
    efficient_low: float = 0.35
    """Efficiency r (see the module docstring) at or below which the segment keeps its own detail."""
    efficient_high: float = 0.6
    """Efficiency r at or above which the carried detail is taken in full (linear between)."""
    amount: float = 1.0
    """How much of the carried detail replaces the frame's own at most (0: the stage is off); set per
    segment by `for_segment`."""

    @classmethod
    def off(cls) -> CarryConfig:
        """Nothing carried: the stage passes the outputs through."""
        return cls(amount=0.0)

    @property
    def on(self) -> bool:
        return self.amount > 0.0 and self.factor > 0.0

    def check(self) -> None:
        if not (0.0 <= self.factor <= 1.0 and 0.0 <= self.amount <= 1.0):
            raise InputError(f"carry factor and amount must be in [0, 1], got {self.factor}, {self.amount}")
        if not (0.0 < self.band < 1.0 and 0.0 < self.energy < 1.0):
            raise InputError(f"carry band and energy must be fractions in (0, 1), got {self.band}, {self.energy}")
        if not (self.tolerance > 0.0 and self.gain_limit >= 1.0 and math.isfinite(self.gain_limit)):
            raise InputError(f"carry needs tolerance > 0 and a finite gain_limit >= 1, got {self.tolerance}, "
                             f"{self.gain_limit}")
        if not 0.0 <= self.fresh_low < self.fresh_high:
            raise InputError(f"carry needs 0 <= fresh_low < fresh_high, got {self.fresh_low}, {self.fresh_high}")
        if not 0.0 <= self.efficient_low < self.efficient_high:
            raise InputError(f"carry needs 0 <= efficient_low < efficient_high, got {self.efficient_low}, "
                             f"{self.efficient_high}")
        if self.flow_preset not in FLOW_PRESETS or self.flow_side < 16:
            raise InputError(f"carry needs a flow preset of {sorted(FLOW_PRESETS)} and flow_side >= 16, got "
                             f"{self.flow_preset!r}, {self.flow_side}")

    def for_segment(self, smoothness: float, strength: float = 1.0) -> CarryConfig:
        """The config for a segment whose gate measured this smoothness and strength (0..1): `amount`
        scaled by strength x (1 - smoothness), as the anchor's detail part."""
        share = float(np.clip(strength, 0.0, 1.0)) * (1.0 - float(np.clip(smoothness, 0.0, 1.0)))
        return self if share == 1.0 else dataclasses.replace(self, amount=self.amount * share)


_ONES = np.ones((1, 3), np.float32)


def _channel_sum(x: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W) float32, the channels added in one pass (NumPy's sum over a last axis of three is
    several times slower at these sizes)."""
    return cv2.transform(x, _ONES)


def _local_energy(band: np.ndarray, sigma: float) -> np.ndarray:
    """The local mean of the band's squared Laplacian, summed over channels: (H, W) float32 (a Gaussian window,
    wide ones blurred on shrunk copies: `frames.blur`)."""
    laplacian = cv2.Laplacian(band, cv2.CV_32F)
    return blur(_channel_sum(laplacian * laplacian), sigma)


def _restore_energy(detail: np.ndarray, band: np.ndarray, sigma: float, limit: float) -> np.ndarray:
    """`detail` scaled, in place, region by region until its Laplacian's local energy is `band`'s again (a gain
    within [1, limit]): averaging and resampling, and two unrelated patterns mixed, have less energy than either."""
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.sqrt((_local_energy(band, sigma) + 1e-6) / (_local_energy(detail, sigma) + 1e-6))
    detail *= np.clip(np.nan_to_num(gain, nan=1.0), 1.0, limit).astype(np.float32)[..., None]
    return detail


class DetailCarry:
    """Feed (output O_t, `motion(I_{t-1}, I_t)`) in frame order to `apply`, which returns O_t with its
    finest detail carried (in full); once a segment is through, `amount` says how far to take them.

    `motion` needs no state (it may run ahead on another thread); `apply` keeps the previous frame's
    base and bands and the segment's measurement, so call `reset` at a segment's start (the first frame
    of a stream is returned as it is either way, as is every frame when the config is off).
    """

    def __init__(self, config: CarryConfig | None = None):
        self.config = config or CarryConfig()
        self.config.check()
        self.reset()

    def reset(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # base, own and carried band of t-1
        self._removed = self._changed = 0.0  # sums over frames of e_D - e_C and of the mean change

    @property
    def efficiency(self) -> float | None:
        """(e_D - e_C) / change over the frames carried so far (None before any was)."""
        return self._removed / self._changed if self._changed > 0 else None

    def amount(self) -> float:
        """The share of the carried frames to take for the frames applied since `reset`: the config's
        amount times the efficiency's ramp (0 where nothing was carried)."""
        r = self.efficiency
        if r is None or not self.config.on:
            return 0.0
        ramp = (r - self.config.efficient_low) / (self.config.efficient_high - self.config.efficient_low)
        return self.config.amount * float(np.clip(ramp, 0.0, 1.0))

    def _freshness(self, band: np.ndarray, previous: np.ndarray, sigma: float) -> np.ndarray:
        """Per pixel, ramp(c, fresh_low, fresh_high) of c = G(|D - P|^2) / (G(|D|^2) + G(|P|^2)), D the frame's
        band and P its predecessor's along the motion: about 1 where the texture is drawn afresh, 0 where the
        detail is steady (carrying it would only add the flow's errors)."""
        def local(x):
            return blur(_channel_sum(np.square(x)), sigma)

        c = local(band - previous) / (local(band) + local(previous) + np.float32(1e-6))
        low, high = self.config.fresh_low, self.config.fresh_high
        return np.clip((c - np.float32(low)) * np.float32(1 / (high - low)), 0.0, 1.0)

    def blend(self, output: np.ndarray, carried: np.ndarray, amount: float) -> np.ndarray:
        """Frame t's output with `amount` of the way to its carried frame taken in the finest band, whose
        Laplacian's local energy is then brought back up to the output's own (within [1, gain_limit]): two
        unrelated patterns of detail mixed have less energy than either. amount 0: output, 1: carried."""
        if amount <= 0.0:
            return output
        if amount >= 1.0:
            return carried
        base, band = self._split(output)
        mixed = carried - output  # the carried band less the frame's own (the same base)
        mixed *= np.float32(amount)
        mixed += band
        _restore_energy(mixed, band, self.config.energy * min(output.shape[:2]), self.config.gain_limit)
        result = np.add(base, mixed, out=mixed)
        return np.clip(result, 0.0, 1.0, out=result)

    def _split(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(base, band): the output's Gaussian blur of `band` times its shorter side, and the finest band left."""
        base = cv2.GaussianBlur(output, (0, 0), self.config.band * min(output.shape[:2]), borderType=cv2.BORDER_REFLECT)
        return base, output - base

    def motion(self, previous: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flow from input frame t to t - 1 at the frame's size (pixels, x first) and where it is trusted
        (consistent both ways and inside the frame) as float32 0/1; frames (H, W, 3) float32."""
        from unflicker.refine.align import align_previous

        h, w = frame.shape[:2]
        scale = min(1.0, self.config.flow_side / min(h, w))
        if scale == 1.0:
            return align_previous(frame, previous, self.config.flow_preset)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = [cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (frame, previous)]
        flow, valid = align_previous(*small, self.config.flow_preset)
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= np.float32(w / size[0])
        flow[..., 1] *= np.float32(h / size[1])
        return flow, cv2.resize(valid, (w, h), interpolation=cv2.INTER_NEAREST)

    def apply(self, output: np.ndarray, motion: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Frame t's output with its finest detail carried in full from frame t - 1's along `motion` (what
        `motion(I_{t-1}, I_t)` returned; None: not carried, the recursion starts here). (H, W, 3) float32."""
        cfg = self.config
        if not cfg.on:
            return output
        base, band = self._split(output)
        carried = band
        if self._previous is not None and motion is not None:
            flow, valid = motion
            previous_base, previous_band, previous_carried = self._previous
            if previous_base.shape != base.shape or flow.shape[:2] != base.shape[:2]:
                raise InputError(f"carry: frame {output.shape}, its predecessor {previous_base.shape} and the flow "
                                 f"{flow.shape} differ in size")
            maps = remap_maps(flow)  # the three warps along the same flow
            mismatch = _channel_sum(np.abs(base - warp_mapped(previous_base, maps, cv2.INTER_CUBIC)))
            mismatch *= np.float32(1 / (3 * cfg.tolerance))
            sigma = cfg.energy * min(output.shape[:2])
            own = warp_mapped(previous_band, maps, cv2.INTER_CUBIC)  # the predecessor's own band, along the motion
            trust = valid * np.exp(-np.square(mismatch)) * np.float32(cfg.factor) * self._freshness(band, own, sigma)
            warped = warp_mapped(previous_carried, maps, cv2.INTER_CUBIC)
            carried = _restore_energy(band + trust[..., None] * (warped - band), band, sigma, cfg.gain_limit)
            seen = valid > 0
            if seen.any():  # the band's temporal error along the motion, before and after, and the change
                before = _channel_sum(np.abs(band - own))[seen].mean() / 3
                after = _channel_sum(np.abs(carried - warped))[seen].mean() / 3
                self._removed += float(before - after)
                self._changed += float(np.abs(carried - band).mean())
        self._previous = (base, band, carried)
        if carried is band:
            return output
        result = base + carried
        return np.clip(result, 0.0, 1.0, out=result)

