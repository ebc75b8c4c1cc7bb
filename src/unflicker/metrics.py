"""Evaluation metrics: warping error (Lai et al. ECCV 2018), the All-In-One deflicker paper's
warping error (Lei et al. CVPR 2023), flicker index, a detail (sharpness) ratio, PSNR and SSIM.

A frame is (H, W, 3) RGB float32 in [0, 1] (uint8 and uint16 accepted, scaled by 255 and 65535 as
io.to_float does, so a picture scores the same at any depth); a sequence is any iterable of
frames (a generator streams: only a few frames are held) or a (T, H, W, 3) array.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from unflicker.errors import InputError
from unflicker.frames import float_rgb
from unflicker.flow import LUMA_WEIGHTS, flow_pair, warp

# Warping errors are reported multiplied by this (the papers' "x 10^-3" tables).
WARP_ERROR_SCALE = 1e3

# Most dB one frame counts in a sequence's mean PSNR (an identical frame's is inf); as benchmarks/compare.py.
PSNR_CAP = 99.0

# SSIM's window (11 x 11, as Wang et al.): frames need at least this many pixels a side.
SSIM_MIN_SIDE = 11

# Half-width of the running median that removes slow brightness trends in flicker_index.
FLICKER_TREND_RADIUS = 3


def _image(x: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) uint8, uint16 or float in [0, 1] -> float64 (H, W, C) in [0, 1]."""
    x = np.asarray(x)
    if x.ndim not in (2, 3) or x.size == 0:
        raise InputError(f"expected an image of shape (H, W) or (H, W, C), got {x.shape}")
    x = x.astype(np.float64) / {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(x.dtype, 1.0)
    return x[..., None] if x.ndim == 2 else x


def _work_size(shape: tuple[int, ...], max_side: int | None) -> tuple[int, int]:
    h, w = shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if frame.shape[:2] == size:
        return frame
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _zip_equal(a: Iterable, b: Iterable, what: str) -> Iterator[tuple]:
    """zip() that raises InputError when the two sequences differ in length."""
    end = object()
    it_a, it_b = iter(a), iter(b)
    while True:
        x, y = next(it_a, end), next(it_b, end)
        if x is end and y is end:
            return
        if x is end or y is end:
            raise InputError(f"{what} sequences differ in length")
        yield x, y


def _pairs(items: Iterable, step: int, against_first: bool) -> Iterator[tuple]:
    """Yield (item_t, item_s) for s = t + step, or for (0, s) when against_first; keeps few items."""
    if step < 1:
        raise InputError(f"step must be >= 1, got {step}")
    first, recent = None, deque(maxlen=step)
    for s, item in enumerate(items):
        if s == 0:
            first = item
        elif against_first:
            yield first, item
        if not against_first and len(recent) == step:
            yield recent[0], item
        recent.append(item)


def _pair_errors(o_t: np.ndarray, o_s: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(mean squared, mean absolute) difference of O_t and O_s warped back to t over valid pixels and channels.

    As in Lai et al.'s evaluation, squared (or absolute) differences are summed over channels and
    divided by (channels x valid pixels); with no valid pixel the pair scores 0.
    """
    n = int(valid.sum()) * o_t.shape[2]
    if n == 0:
        return 0.0, 0.0
    diff = (warp(o_s, flow) - o_t)[valid].astype(np.float64)
    return float(np.square(diff).sum() / n), float(np.abs(diff).sum() / n)


def _pair_error(o_t: np.ndarray, o_s: np.ndarray, flow: np.ndarray, valid: np.ndarray) -> float:
    """Mean squared difference of O_t and O_s warped back to t over valid pixels and channels."""
    return _pair_errors(o_t, o_s, flow, valid)[0]


@dataclass
class ReferenceFlows:
    """Flows and occlusion masks of a reference sequence, computed once to score many results.

    Build with `ReferenceFlows.compute`; memory is one (h, w, 2) flow plus an (h, w) mask per
    pair at the working size (about 1 MB per pair at 480 px), so use max_side for long clips.
    """

    size: tuple[int, int]
    """Working (h, w) at which flows live and results are compared."""
    full_shape: tuple[int, ...]
    """(H, W, 3) shape of the reference frames; results must match it."""
    step: int
    """Frame distance k of each pair (t, t + k); ignored when against_first."""
    against_first: bool
    """Pairs are (0, t) for every t > 0 instead of (t, t + step)."""
    flows: list[np.ndarray]
    """Per pair, (h, w, 2) float32 forward flow t -> s of the reference."""
    masks: list[np.ndarray]
    """Per pair, (h, w) bool consistency mask (True = non-occluded)."""
    n_frames: int
    """Number of reference frames."""

    @classmethod
    def compute(
        cls,
        reference: Iterable[np.ndarray],
        step: int = 1,
        max_side: int | None = None,
        against_first: bool = False,
        normalize: bool = True,
    ) -> ReferenceFlows:
        """Flows between reference frames t and t + step (or 0 and t), downsampled to max_side.

        reference: sequence of (H, W, 3) frames; normalize: flicker-robust flow input.
        """
        shapes: list[tuple[int, ...]] = []

        def frames() -> Iterator[np.ndarray]:
            for x in reference:
                x = float_rgb(x, "a reference frame")
                if shapes and x.shape != shapes[0]:
                    raise InputError(f"reference frames differ in size: {shapes[0]} vs {x.shape}")
                shapes.append(x.shape)
                yield _resize(x, _work_size(x.shape, max_side))

        flows, masks = [], []
        for a, b in _pairs(frames(), step, against_first):
            pair = flow_pair(a, b, normalize=normalize)
            flows.append(pair.forward)
            masks.append(pair.valid)
        if not shapes:
            raise InputError("the reference sequence is empty")
        size = _work_size(shapes[0], max_side)
        return cls(size, shapes[0], step, against_first, flows, masks, len(shapes))

    def score(self, result: Iterable[np.ndarray]) -> float:
        """Warping error of a result sequence (same length and size as the reference), raw scale."""
        return self.scores(result)[0]

    def scores(self, result: Iterable[np.ndarray]) -> tuple[float, float]:
        """(mean squared, mean absolute) warping error of a result sequence, raw scale, in one pass.

        The first is Lai et al.'s E_warp; the second is the masked L1 pair error of the All-In-One
        paper's E_warp (see paper_warp_error), averaged over this object's pairs.
        """

        def frames() -> Iterator[np.ndarray]:
            for _, x in _zip_equal(range(self.n_frames), result, "result and reference"):
                x = float_rgb(x, "a result frame")
                if x.shape != self.full_shape:
                    raise InputError(f"result frame {x.shape} does not match reference {self.full_shape}")
                yield _resize(x, self.size)

        pairs = _pairs(frames(), self.step, self.against_first)
        errors = [_pair_errors(o_t, o_s, self.flows[i], self.masks[i]) for i, (o_t, o_s) in enumerate(pairs)]
        if not errors:
            return 0.0, 0.0
        l2, l1 = np.mean(errors, axis=0)
        return float(l2), float(l1)


def warp_error(
    result: Iterable[np.ndarray],
    reference: Iterable[np.ndarray],
    step: int = 1,
    max_side: int | None = None,
    against_first: bool = False,
    normalize: bool = True,
) -> float:
    """Warping error E_warp of Lai et al. ECCV 2018, streamed pairwise.

    For each pair (t, s = t + step), or (0, s) when against_first, the forward flow t -> s and
    its occlusion mask come from the reference (the clean original when known, else the input);
    E = mean over pairs of the masked mean squared difference of O_t and O_s warped to t.
    result, reference: sequences of (H, W, 3) frames in [0, 1] of equal length and size.
    max_side: downsample both (area) so the longer side is at most this, for speed.
    Returns: the raw value (multiply by WARP_ERROR_SCALE to report in units of 1e-3).
    """
    size: tuple[int, int] | None = None
    first: tuple[int, ...] | None = None

    def both() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal size, first
        for r, o in _zip_equal(reference, result, "result and reference"):
            r, o = float_rgb(r, "a reference frame"), float_rgb(o, "a result frame")
            if r.shape != o.shape:
                raise InputError(f"result frame {o.shape} does not match reference {r.shape}")
            first = first or r.shape
            if r.shape != first:  # a frame of another size would be resized to the first's and scored
                raise InputError(f"reference frames differ in size: {first} vs {r.shape}")
            size = size or _work_size(r.shape, max_side)
            yield _resize(r, size), _resize(o, size)

    errors = []
    for (r_t, o_t), (r_s, o_s) in _pairs(both(), step, against_first):
        pair = flow_pair(r_t, r_s, normalize=normalize)
        errors.append(_pair_error(o_t, o_s, pair.forward, pair.valid))
    if size is None:
        raise InputError("the sequences are empty")
    return float(np.mean(errors)) if errors else 0.0


def paper_warp_error(
    result: Iterable[np.ndarray],
    reference: Iterable[np.ndarray],
    max_side: int | None = None,
    normalize: bool = True,
) -> float:
    """The warping error of the All-In-One deflicker paper (Lei et al. CVPR 2023, after Lai et al.).

    E_pair(t, s) = sum over valid pixels and channels of |O_t - warp(O_s -> t)|, divided by
    (channels x valid pixels): a masked L1, with flow and occlusion mask from the reference.
    E = 1/(T-1) sum over t of [E_pair short-term (t, t+1) + E_pair long-term (first frame, t)],
    i.e. the mean short-term plus the mean long-term pair error (two sums, so about twice an L1
    per-pair error). Pairs are oriented as in warp_error (the later frame is warped to the earlier
    one; the paper warps the other way, which differs only at occlusion borders).
    result, reference: sequences of (H, W, 3) frames in [0, 1]; both are read into memory.
    Returns: the raw value (multiply by WARP_ERROR_SCALE to report in units of 1e-3); 0.0 for one frame.
    """
    reference = [float_rgb(x, "a reference frame") for x in reference]
    result = list(result)
    if not reference:
        raise InputError("the sequences are empty")
    short = ReferenceFlows.compute(reference, step=1, max_side=max_side, normalize=normalize)
    first = ReferenceFlows.compute(reference, max_side=max_side, against_first=True, normalize=normalize)
    return short.scores(result)[1] + first.scores(result)[1]


def _luma(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) @ LUMA_WEIGHTS.astype(np.float32)).astype(np.float32)


def laplacian_energy(frame: np.ndarray, like: np.ndarray | None = None) -> float:
    """Mean squared 4-neighbour Laplacian of the Rec.709 luma of one (H, W, 3) frame in [0, 1].

    like: when given, the luma is first contrast matched to it (an affine map giving it `like`'s
    luma mean and standard deviation), so a global gain or contrast change does not count as detail.
    """
    y = _luma(float_rgb(frame, "a frame"))
    if like is not None:
        ref = _luma(float_rgb(like, "a frame"))
        if ref.shape != y.shape:
            raise InputError(f"frames differ in size: {y.shape} vs {ref.shape}")
        sd = float(y.std())
        gain = float(ref.std()) / sd if sd > 1e-6 else 1.0
        y = (y - float(y.mean())) * gain + float(ref.mean())
    lap = cv2.Laplacian(y, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
    return float(np.mean(np.square(lap, dtype=np.float64)))


def detail_ratio(result: Iterable[np.ndarray], reference: Iterable[np.ndarray], max_side: int | None = None) -> float:
    """Detail (sharpness) of a result relative to a reference: 1.0 = as sharp, below 1 = blurred.

    Per frame the result's luma is contrast matched to the reference frame's (same mean and
    standard deviation, see laplacian_energy), then the Laplacian energies of all frames are
    summed: ratio = sum_t E(result_t) / sum_t E(reference_t). Added noise or sharpening gives > 1.
    result, reference: equally long sequences of (H, W, 3) frames in [0, 1], streamed;
    max_side: downsample both (area) first, as the other metrics do.
    """
    num = den = 0.0
    size = first = None
    for o, r in _zip_equal(result, reference, "result and reference"):
        o, r = float_rgb(o, "a result frame"), float_rgb(r, "a reference frame")
        if o.shape != r.shape:
            raise InputError(f"result frame {o.shape} does not match reference {r.shape}")
        first = first or r.shape
        if r.shape != first:  # a frame of another size would be resized to the first's and scored
            raise InputError(f"reference frames differ in size: {first} vs {r.shape}")
        size = size or _work_size(r.shape, max_side)
        o, r = _resize(o, size), _resize(r, size)
        num += laplacian_energy(o, like=r)
        den += laplacian_energy(r)
    if size is None:
        raise InputError("the sequences are empty")
    return float(num / den) if den > 0 else (1.0 if num == 0 else float("inf"))


def flicker_index(frames: Iterable[np.ndarray]) -> dict[str, float]:
    """Mean absolute frame-to-frame jump of the global mean after removing the slow trend.

    Per frame the global mean of Rec.709 luma and of R, G, B is taken; the running median over
    +-FLICKER_TREND_RADIUS frames (ends padded point-symmetrically) is subtracted; the result
    is the mean |d_{t+1} - d_t| over adjacent frames.
    frames: sequence of (H, W, 3) frames in [0, 1]. Values are in the same [0, 1] units
    (0.01 = 1 % of full scale, about 2.55 grey levels in 8 bit); 0.0 for a single frame.
    Note: a strict period-2 alternation has its median at the opposite level, so its index tends to
    twice the raw jump; the ends' padding lowers it on short clips (0.057 for jumps of 0.05 over 8 frames,
    0.097 over 100). Two frames always score 0 (the padding continues them as a line).
    Returns: {"luma", "r", "g", "b"} -> float.
    """
    means = [float_rgb(x, "frame").reshape(-1, 3).mean(axis=0, dtype=np.float64) for x in frames]
    if not means:
        raise InputError("the sequence is empty")
    rgb = np.array(means)  # (T, 3)
    series = np.column_stack([rgb @ LUMA_WEIGHTS.astype(np.float64), rgb])  # (T, 4)
    k, t = FLICKER_TREND_RADIUS, len(series)
    # Point-symmetric padding continues a linear fade past the ends, so fades score 0 there too.
    padded = np.pad(series, ((k, k), (0, 0)), mode="reflect", reflect_type="odd")
    trend = np.array([np.median(padded[i : i + 2 * k + 1], axis=0) for i in range(t)])
    jumps = np.abs(np.diff(series - trend, axis=0))
    values = jumps.mean(axis=0) if t > 1 else np.zeros(4)
    return {key: float(v) for key, v in zip(("luma", "r", "g", "b"), values)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (data range 1); (H, W) or (H, W, C). inf if equal."""
    a, b = _image(a), _image(b)
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004): gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1.

    Computed per channel over windows fully inside the image (5 px border cropped, as
    skimage does), then averaged. a, b: (H, W) or (H, W, C) in [0, 1], at least 11 x 11.
    """
    a, b = _image(a), _image(b)
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < SSIM_MIN_SIDE:
        raise InputError(f"SSIM needs images of at least {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} pixels, got {a.shape[:2]}")
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    values = []
    for c in range(a.shape[2]):
        x, y = a[..., c], b[..., c]
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def _sequence_values(metric, result: Iterable[np.ndarray], truth: Iterable[np.ndarray]) -> list[float]:
    values = [metric(r, t) for r, t in _zip_equal(result, truth, "result and truth")]
    if not values:
        raise InputError("the sequences are empty")
    return values


def _sequence_mean(metric, result: Iterable[np.ndarray], truth: Iterable[np.ndarray]) -> float:
    return float(np.mean(_sequence_values(metric, result, truth)))


def sequence_psnr(result: Iterable[np.ndarray], truth: Iterable[np.ndarray]) -> float:
    """Mean per-frame PSNR (dB) of two equally long sequences of frames in [0, 1], streamed.

    Each frame counts at most PSNR_CAP dB, so that a frame identical to its truth (inf) does not make the
    whole sequence's mean inf; inf only when every frame is identical.
    """
    values = _sequence_values(psnr, result, truth)
    if all(v == float("inf") for v in values):
        return float("inf")
    return float(np.mean(np.minimum(values, PSNR_CAP)))


def sequence_ssim(result: Iterable[np.ndarray], truth: Iterable[np.ndarray]) -> float:
    """Mean per-frame SSIM of two equally long sequences of frames in [0, 1], streamed."""
    return _sequence_mean(ssim, result, truth)
