"""How much of the networks' fine correction to trust: the gate between the projection and the refined frames.

The projection (projection.py) keeps only the part of the networks' correction that a smooth
flicker model can express, plus its small remainder. That protects clean video and physical
flicker from the atlas's flaws, but a per-frame process (stylization, detail enhancement, img2img,
denoising with random settings) flickers in texture, which no smooth model expresses: there the
refined frames O_t of the paper's stages are what removes the flicker. The two cases differ in
what the rest of the correction, O_t - P_t, does over time. Where it removes flicker, the refined
frames are much more consistent along the motion than the projected ones; where it only carries
the atlas's flaws (clean or smoothly flickering video, whose projected frames are already
consistent), it changes little.

`FineGate` measures that per segment: on small copies (longer side `side`), with DIS flow between
consecutive input frames and Lai et al.'s occlusion mask, the mean absolute difference of
consecutive warped frames, e_P for the projected and e_O for the refined frames. The share of
e_P that the refined frames remove, g = 1 - e_O / e_P, sets the weight w of the rest of the
correction (0 at or below `low`, 1 at or above `high`, linear between); the segment's output is
P_t + w (O_t - P_t). The weight is one number per segment, so it cannot flicker itself.

The same measurement guards clean video. Where the projected frames are not more consistent than
the input (g_in = 1 - e_P / e_I small: nothing flickered, or nothing the method removes), the whole
correction is only the atlas's flaws; `strength` then fades it out (0 at or below `clean_low`, 1 at
or above `clean_high`): the output is I_t + s (P_t + w (O_t - P_t) - I_t). A clean clip from a real
camera can still give a g_in of 0.1: the projected frames follow the atlas a little where the flow
fails, and its frames' small exposure jitter is removed. What gives it away is how little
consistency the projected frames buy for how much they change the frames: the efficiency
r = (e_I - e_P) / d, with d the mean absolute change |P_t - I_t| on the same copies. Flicker
removed is change that buys consistency (r of about 0.1 to 1.2 on the corpus's flickering cases; 0.07 for
a weak per-frame denoise on a camera clip, which the ramp half-corrects);
the atlas's flaws are change that buys almost none (0.03-0.06 on clean handheld clips). The strength is
also faded out below `efficient_high` (0 at or below `efficient_low`).

g_in also says how smooth the flicker is: where the projected frames remove most of it (g_in at or
above `smooth_high`, physical flicker) the projection's pixel-by-pixel remainder carries only the
networks' softening, so P_t takes that remainder low-passed instead (`smoothness`, linear from
`smooth_low`), and so does the share w of O_t - P_t; where they remove little (texture flicker),
both stay pixel by pixel.

Optionally (`fine_side` > 0) the gate also asks what the remainder's fine part does over time: on
copies of longer side `fine_side`, every `fine_every` frames a pair, e_P against e_L, the temporal
error of the projected frames with the remainder low-passed. f = 1 - e_P / e_L is what the
pixel-by-pixel remainder adds in consistency; where it adds none (f at or below `fine_low`), its
fine part is only the networks' softening and the remainder is taken low-passed whatever g_in
says (`remainder_smoothness`; the share w of O_t - P_t keeps g_in's smoothness).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unflicker.errors import InputError


@dataclass
class GateConfig:
    """How the share of the refined frames' correction beyond the flicker model is chosen."""

    low: float = 0.15
    """Share g of the projected frames' temporal error that the refined frames remove, at or below
    which none of the rest of their correction is taken."""
    high: float = 0.35
    """Share g at or above which all of it is taken (the paper's output, anchored)."""
    clean_low: float = 0.06
    """Share g_in of the input's temporal error that the projected frames remove, at or below which
    the segment counts as flicker-free and is left as it is."""
    clean_high: float = 0.12
    """Share g_in at or above which the whole correction is applied."""
    efficient_low: float = 0.05
    """Efficiency r (the input's temporal error that the projected frames remove, over the mean
    absolute change they make) at or below which the segment is left as it is: the change is the
    atlas's flaws, not flicker removed."""
    efficient_high: float = 0.09
    """Efficiency r at or above which it does not fade the correction (linear between)."""
    smooth_low: float = 0.32
    """Share g_in at or below which the projection's remainder is added pixel by pixel (it removes
    part of a per-frame process's texture flicker)."""
    smooth_high: float = 0.45
    """Share g_in at or above which the remainder is added low-passed (`smooth_blur`): flicker the
    smooth model removes this well is physical, and the remainder's texture-scale part is the
    networks' softening."""
    smooth_blur: float = 0.005
    """Sigma of that low pass, as a fraction of the frame's longer side (ProjectionConfig.residual_blur)."""
    side: int = 160
    """Longer side, in pixels, of the copies the temporal errors are measured on."""
    fine_side: int = 480
    """Longer side of the copies on which the remainder's fine part is measured (f, see the module
    docstring); 0 leaves it out (the remainder's smoothness follows g_in alone, as before session 9)."""
    fine_every: int = 8
    """One pair of consecutive frames measured for f in this many frames."""
    fine_low: float = 0.0
    """Share f at or below which the remainder is taken low-passed (it adds no consistency)."""
    fine_high: float = 0.02
    """Share f at or above which f leaves the remainder pixel by pixel (linear between)."""
    weight: float | None = None
    """A fixed weight in 0..1 instead of the measured one (--kind processed: 1, physical kinds: 0);
    the strength is then 1 (the user says the video flickers)."""

    def check(self) -> None:
        if not 0.0 <= self.low < self.high <= 1.0:
            raise InputError(f"gate needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")
        if not 0.0 <= self.clean_low < self.clean_high <= 1.0:
            raise InputError(f"gate needs 0 <= clean_low < clean_high <= 1, got {self.clean_low}, {self.clean_high}")
        if not 0.0 <= self.efficient_low < self.efficient_high <= 2.0:  # |e_I - e_P| <= about 2 d
            raise InputError(f"gate needs 0 <= efficient_low < efficient_high <= 2, got {self.efficient_low}, "
                             f"{self.efficient_high}")
        if not 0.0 <= self.smooth_low < self.smooth_high <= 1.0 or not 0.0 <= self.smooth_blur < 1.0:
            raise InputError(f"gate needs 0 <= smooth_low < smooth_high <= 1 and smooth_blur in [0, 1), got "
                             f"{self.smooth_low}, {self.smooth_high}, {self.smooth_blur}")
        if not 0.0 <= self.fine_low < self.fine_high <= 1.0 or self.fine_every < 1 or not (
                self.fine_side == 0 or self.fine_side >= 16):
            raise InputError(f"gate needs 0 <= fine_low < fine_high <= 1, fine_every >= 1 and fine_side 0 or >= 16, got "
                             f"{self.fine_low}, {self.fine_high}, {self.fine_every}, {self.fine_side}")
        if self.side < 16:
            raise InputError(f"gate side must be >= 16, got {self.side}")
        if self.weight is not None and not 0.0 <= self.weight <= 1.0:
            raise InputError(f"gate weight must be in 0..1, got {self.weight}")


def _warped_errors(previous: tuple[np.ndarray, ...], current: tuple[np.ndarray, ...], planes: tuple[int, ...]
                   ) -> tuple[list[float], int]:
    """Copies of two consecutive frames, the input first in each: DIS flow previous -> current on the
    inputs, then for each index in `planes` the sum over the pixels seen in both (Lai et al.'s mask)
    of the mean absolute difference of previous[k] and current[k] warped back; and that pixel count."""
    from unflicker.flow import flow_pair, remap_maps, warp_mapped

    pair = flow_pair(previous[0], current[0])
    maps = remap_maps(pair.forward)  # every plane along the same flow
    sums = [float(np.abs(previous[k] - warp_mapped(current[k], maps)).mean(2)[pair.valid].sum()) for k in planes]
    return sums, int(pair.valid.sum())


def ramp(x: float, low: float, high: float) -> float:
    """0 at or below low, 1 at or above high, linear between."""
    return float(np.clip((x - low) / (high - low), 0.0, 1.0))


def _towards(base: np.ndarray, target: np.ndarray, share: float) -> np.ndarray:
    """base + share * (target - base), computed in `target` (a fresh array the caller gives up)."""
    target -= base
    target *= np.float32(share)
    target += base
    return target


class FineGate:
    """Accumulates e_I, e_P and e_O over one segment's frames (in order) and gives the weight and strength."""

    def __init__(self, config: GateConfig | None = None):
        self.config = config or GateConfig()
        self.config.check()
        self.reset()

    def reset(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._sums = np.zeros(3)  # e_P, e_O, e_I
        self._pixels = 0
        self._change = np.zeros(2)  # sum of |P - I| (channel mean) over the copies' pixels, their count
        self._t = 0
        self._fine_previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._fine_sums = np.zeros(2)  # e_P, e_L on the fine copies

    def observe(self, frame: np.ndarray, projected: np.ndarray, refined: np.ndarray, correction=None) -> None:
        """Frame t's input, projected and refined frames (H, W, 3) float32, for t = 0, 1, ... in order;
        `correction`: the projection's fitted FlickerCorrection (needed for f where fine_side > 0)."""
        from unflicker.atlas.common import atlas_size, downsample

        if self.config.fine_side and correction is not None:
            self._observe_fine(frame, projected, correction)
        self._t += 1
        size = atlas_size(*frame.shape[:2], self.config.side)
        current = (downsample(frame, size), downsample(projected, size), downsample(refined, size))
        self._change += (float(np.abs(current[1] - current[0]).mean(2).sum()), size[0] * size[1])
        if self._previous is not None:
            sums, pixels = _warped_errors(self._previous, current, (1, 2, 0))  # e_P, e_O, e_I
            self._sums += sums
            self._pixels += pixels
        self._previous = current

    def _observe_fine(self, frame: np.ndarray, projected: np.ndarray, correction) -> None:
        """e_P and e_L (the remainder low-passed) on fine copies of the pairs (t - 1, t), t a multiple of fine_every."""
        from unflicker.atlas.common import atlas_size, downsample
        from unflicker.projection import low_pass

        every = self.config.fine_every
        first = self._t % every == every - 1  # the pair's first frame: keep its copies
        second = self._t % every == 0 and self._fine_previous is not None  # its second: measure the pair
        if not (first or second):
            return
        size = atlas_size(*frame.shape[:2], self.config.fine_side)
        small, proj = downsample(frame, size), downsample(projected, size)
        model = correction.apply(small)  # the correction is resolution-free: the model at this size
        smoothed = np.clip(model + low_pass(proj - model, self.config.smooth_blur), 0.0, 1.0)
        current = (small, proj, smoothed)
        if second:
            self._fine_sums += _warped_errors(self._fine_previous, current, (1, 2))[0]  # e_P, e_L
        self._fine_previous = current if first else None

    @property
    def fine_share(self) -> float | None:
        """f = 1 - e_P / e_L on the fine copies (None when not measured)."""
        if self._fine_sums[1] <= 0:
            return None
        return float(1.0 - self._fine_sums[0] / self._fine_sums[1])

    @property
    def latest(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The small copies (input, projected, refined) of the last frame observed."""
        return self._previous

    @property
    def share(self) -> float | None:
        """g = 1 - e_O / e_P over the frames seen (None before two frames)."""
        if self._pixels == 0 or self._sums[0] <= 0:
            return None
        return float(1.0 - self._sums[1] / self._sums[0])

    @property
    def input_share(self) -> float | None:
        """g_in = 1 - e_P / e_I over the frames seen (None before two frames)."""
        if self._pixels == 0 or self._sums[2] <= 0:
            return None
        return float(1.0 - self._sums[0] / self._sums[2])

    @property
    def efficiency(self) -> float | None:
        """r = (e_I - e_P) / d: the input's temporal error per pixel that the projected frames
        remove, over their mean absolute change of the frames (None before two frames or without
        change)."""
        if self._pixels == 0 or self._change[0] <= 0:
            return None
        return float((self._sums[2] - self._sums[0]) / self._pixels / (self._change[0] / self._change[1]))

    def strength(self) -> float:
        """The share of the whole correction applied (0: the segment is left as it is)."""
        if self.config.weight is not None:
            return 1.0
        g, r = self.input_share, self.efficiency
        if g is None:
            return 1.0
        cfg = self.config
        strength = ramp(g, cfg.clean_low, cfg.clean_high)
        return strength if r is None else min(strength, ramp(r, cfg.efficient_low, cfg.efficient_high))

    @property
    def smooths(self) -> bool:
        """Whether `smoothness` can be above 0: a measured weight and a low pass (with a fixed
        weight the kinds set the projection's own low pass)."""
        return self.config.weight is None and self.config.smooth_blur > 0

    def smoothness(self) -> float:
        """How much of the remainders is taken low-passed rather than pixel by pixel."""
        g = self.input_share
        if not self.smooths or g is None:
            return 0.0
        low, high = self.config.smooth_low, self.config.smooth_high
        return ramp(g, low, high)

    def remainder_smoothness(self) -> float:
        """How much of the projection's remainder is taken low-passed: `smoothness`, or more where f
        says its fine part adds no consistency."""
        smooth, f = self.smoothness(), self.fine_share
        if not self.smooths or f is None:
            return smooth
        low, high = self.config.fine_low, self.config.fine_high
        return max(smooth, float(np.clip((high - f) / (high - low), 0.0, 1.0)))  # a falling ramp, as written

    def apply(self, frame: np.ndarray, projected: np.ndarray, model: np.ndarray | None,
              refined: np.ndarray | None) -> np.ndarray:
        """Frame t's output once the segment is measured: the projected frame, its model's remainder
        (projected - model) and the taken share of refined - projected low-passed as far as
        `remainder_smoothness` and `smoothness` say, faded by `strength`. model is needed where
        remainder_smoothness > 0, refined where
        weight > 0 (None otherwise); returns `projected` itself when nothing changes it."""
        from unflicker.projection import low_pass  # here: the gate's measurement needs no torch

        smooth, weight, strength = self.smoothness(), self.weight(), self.strength()
        remainder = self.remainder_smoothness()
        blur, output = self.config.smooth_blur, projected
        # Each blend computes output + share * (target - output) in a fresh array it owns, in place
        # (sums and products in the same order as written out: the same bits, fewer frame-sized arrays).
        if remainder > 0.0:
            smoothed = low_pass(output - model, blur)
            smoothed += model  # = model + low_pass(...)
            output = _towards(output, np.clip(smoothed, 0.0, 1.0, out=smoothed), remainder)
        if weight > 0.0:
            taken = refined - output
            if smooth > 0.0:  # smooth flicker: the refined frames' fine part is their softness
                taken += np.float32(smooth) * (low_pass(taken, blur) - taken)
            taken *= np.float32(weight)
            taken += output
            output = taken
        if strength < 1.0:
            output = _towards(frame, output.copy() if output is projected else output, strength)
        return output

    def weight(self) -> float:
        """The weight of O_t - P_t in the segment's output."""
        if self.config.weight is not None:
            return float(self.config.weight)
        g = self.share
        if g is None:
            return 0.0
        return ramp(g, self.config.low, self.config.high)
