"""Tests for unflicker.metrics on synthetic clips with known motion and known flicker."""

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from unflicker.errors import InputError
from unflicker.metrics import (
    WARP_ERROR_SCALE,
    ReferenceFlows,
    detail_ratio,
    flicker_index,
    laplacian_energy,
    paper_warp_error,
    psnr,
    sequence_psnr,
    sequence_ssim,
    ssim,
    warp_error,
)

T, H, W = 8, 64, 96


def texture(h, w, seed=0, lo=0.1, hi=0.55):
    """(h, w, 3) float32 smooth colour noise in [lo, hi]."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return lo + (hi - lo) * noise


@pytest.fixture(scope="module")
def clip():
    """(T, H, W, 3) smooth texture panning 1 px right and 1 px down per frame."""
    big = texture(H + 40, W + 40, seed=0, lo=0.15, hi=0.6)
    return np.stack([big[10 + t : 10 + t + H, 20 - t : 20 - t + W] for t in range(T)])


@pytest.fixture(scope="module")
def flickering(clip):
    """The clip with random global gain and per-channel colour gain per frame."""
    rng = np.random.default_rng(1)
    colour = 1 + 0.15 * rng.standard_normal((T, 1, 1, 3))
    gain = 1 + 0.1 * rng.standard_normal((T, 1, 1, 1))
    return np.clip(clip * colour * gain, 0, 1).astype(np.float32)


def test_static_identical_sequence_scores_zero():
    frames = np.repeat(texture(H, W, 2)[None], 5, axis=0)
    assert warp_error(frames, frames) < 1e-6
    assert flicker_index(frames) == {"luma": 0.0, "r": 0.0, "g": 0.0, "b": 0.0}


def test_warp_error_of_translation_against_itself_is_small(clip):
    assert warp_error(clip, clip) < 1e-4
    assert warp_error(clip, clip, step=3) < 1e-3
    assert warp_error(clip, clip, against_first=True) < 1e-3
    # Generators (streamed) and uint8 frames give the same kind of answer as arrays.
    streamed = warp_error(iter(clip), (f for f in clip))
    assert streamed == pytest.approx(warp_error(clip, clip), rel=1e-6)
    as_uint8 = (clip * 255).round().astype(np.uint8)
    assert warp_error(as_uint8, as_uint8) < 1e-4


def test_flicker_raises_warp_error_and_flicker_index(clip, flickering):
    clean = warp_error(clip, clip)
    flick = warp_error(flickering, clip)
    assert flick > 1e-3 and flick > 20 * clean
    assert warp_error(flickering, clip, step=2) > 20 * warp_error(clip, clip, step=2)
    assert warp_error(flickering, clip, against_first=True) > 10 * warp_error(clip, clip, against_first=True)
    fi_clean, fi_flick = flicker_index(clip), flicker_index(flickering)
    for key in ("luma", "r", "g", "b"):
        assert fi_flick[key] > 0.01 > 10 * fi_clean[key]
    assert WARP_ERROR_SCALE == 1e3


def test_flicker_lowers_psnr_and_ssim(clip, flickering):
    noise = 0.01 * np.random.default_rng(3).standard_normal(clip.shape).astype(np.float32)
    baseline = np.clip(clip + noise, 0, 1)
    worse = np.clip(flickering + noise, 0, 1)
    assert sequence_psnr(baseline, clip) > sequence_psnr(worse, clip) + 5
    assert sequence_ssim(baseline, clip) > sequence_ssim(worse, clip) + 0.005
    assert sequence_psnr(iter(clip), iter(clip)) == float("inf")
    with pytest.raises(InputError):
        sequence_ssim(clip, clip[:-1])


def test_reference_flows_reuse_matches_warp_error(clip, flickering):
    ref = ReferenceFlows.compute(clip, max_side=48)
    assert ref.size == (32, 48) and len(ref.flows) == len(ref.masks) == T - 1
    assert ref.flows[0].shape == (32, 48, 2) and ref.masks[0].dtype == bool
    assert ref.score(flickering) == pytest.approx(warp_error(flickering, clip, max_side=48), rel=1e-9)
    assert ref.score(flickering) > 10 * ref.score(clip)
    first = ReferenceFlows.compute(iter(clip), against_first=True, step=1)
    assert first.score(clip) == pytest.approx(warp_error(clip, clip, against_first=True), rel=1e-9)
    with pytest.raises(InputError):
        ref.score(clip[:-1])
    with pytest.raises(InputError):
        ref.score(clip[:, :-2])


def test_warp_error_input_errors(clip):
    with pytest.raises(InputError):
        warp_error(clip, clip[:-1])
    with pytest.raises(InputError):
        warp_error(clip[:, :, :-1], clip)
    with pytest.raises(InputError):
        warp_error(clip[..., :2], clip[..., :2])
    with pytest.raises(InputError):
        warp_error(clip, clip, step=0)
    with pytest.raises(InputError):
        warp_error([], [])


def test_flicker_index_trend_scale_and_channels():
    def frames(values):  # (T, 3) per-frame RGB levels -> constant frames
        return [np.broadcast_to(np.float32(v), (8, 8, 3)) for v in values]

    t = np.arange(20)
    fade = np.repeat((0.3 + 0.02 * t)[:, None], 3, axis=1)
    assert max(flicker_index(frames(fade)).values()) < 1e-9

    # On a constant base the median is scale-equivariant: twice the wobble, twice the index.
    wobble = np.random.default_rng(0).standard_normal(20) * 0.02
    small = np.full((20, 3), 0.5)
    small[:, 0] += wobble
    big = np.full((20, 3), 0.5)
    big[:, 0] += 2 * wobble
    fi_small, fi_big = flicker_index(frames(small)), flicker_index(frames(big))
    assert fi_small["r"] > 0.005
    assert fi_big["r"] == pytest.approx(2 * fi_small["r"], rel=1e-4)
    on_fade = fade.copy()
    on_fade[:, 0] += wobble
    assert flicker_index(frames(on_fade))["r"] == pytest.approx(fi_small["r"], rel=0.5)
    assert fi_small["g"] < 1e-9 and fi_small["b"] < 1e-9
    assert fi_small["luma"] == pytest.approx(0.2126 * fi_small["r"], rel=1e-4)
    assert flicker_index(iter(frames(fade[:1])))["luma"] == 0.0
    with pytest.raises(InputError):
        flicker_index([])


def test_psnr_matches_formula():
    a = texture(H, W, 4, 0.2, 0.8)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert psnr(a, a - 0.05) == pytest.approx(10 * np.log10(1 / 0.0025), abs=1e-4)
    assert psnr(a, a) == float("inf")
    assert psnr((a * 255).astype(np.uint8), (a * 255).astype(np.uint8)) == float("inf")
    with pytest.raises(InputError):
        psnr(a, a[:-1])


def test_sequence_psnr_is_not_inf_when_only_some_frames_are_identical():
    """One frame identical to the ground truth (a first frame left as it was) made the mean of the frames' PSNRs
    inf, 'perfect', whatever the others; each frame now counts at most 99 dB, inf only when all are equal."""
    a = texture(H, W, 4, 0.2, 0.8)
    assert sequence_psnr([a, a + 0.1], [a, a]) == pytest.approx((99.0 + 20.0) / 2, abs=1e-4)
    assert sequence_psnr([a + 0.05, a + 0.1], [a, a]) == pytest.approx((10 * np.log10(400) + 20.0) / 2, abs=1e-4)
    assert sequence_psnr([a, a], [a, a]) == float("inf")


def test_ssim_identity_noise_and_skimage_agreement():
    a = texture(H, W, 5, 0.1, 0.9)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(6)
    scores = []
    for sigma in (0.01, 0.05, 0.15):
        b = np.clip(a + sigma * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
        ours = ssim(a, b)
        ref = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=2, data_range=1
        )
        assert ours == pytest.approx(ref, abs=1e-3)
        gray_ref = structural_similarity(
            a[..., 1], b[..., 1], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
        )
        assert ssim(a[..., 1], b[..., 1]) == pytest.approx(gray_ref, abs=1e-3)
        scores.append(ours)
    assert scores[0] > scores[1] > scores[2]
    with pytest.raises(InputError):
        ssim(a[:8, :8], a[:8, :8])


def test_warp_error_value_is_mean_over_valid_pixels_and_channels():
    # Static reference: zero flow, every pixel valid; the result alternates by a known step.
    reference = np.repeat(texture(H, W, 7, 0.2, 0.7)[None], 4, axis=0)
    all_channels = reference + 0.1 * (np.arange(4) % 2)[:, None, None, None]
    assert warp_error(all_channels, reference) == pytest.approx(0.01, rel=1e-4)
    red_only = reference.copy()
    red_only[1::2, ..., 0] += 0.1
    assert warp_error(red_only, reference) == pytest.approx(0.01 / 3, rel=1e-4)
    # Frame t + 2 equals frame t, so the long-term error sees no change at all.
    assert warp_error(all_channels, reference, step=2) < 1e-9


def test_paper_warp_error_is_short_plus_long_term_masked_l1():
    # Static reference: zero flow, every pixel valid; the result has known per-frame offsets c_t.
    reference = np.repeat(texture(H, W, 7, 0.2, 0.7)[None], 5, axis=0)
    offsets = np.array([0.0, 0.1, 0.0, 0.2, 0.1])
    result = reference + offsets[:, None, None, None]
    short = np.abs(np.diff(offsets)).mean()  # (t, t+1)
    long = np.abs(offsets[1:] - offsets[0]).mean()  # (first frame, t)
    assert paper_warp_error(result, reference) == pytest.approx(short + long, rel=1e-4)
    # Only the red channel changing counts a third (mean over channels), and L1 is not L2.
    red = reference.copy()
    red[..., 0] += offsets[:, None, None]
    assert paper_warp_error(red, reference) == pytest.approx((short + long) / 3, rel=1e-4)
    assert paper_warp_error(reference, reference) < 1e-6
    assert paper_warp_error(reference[:1], reference[:1]) == 0.0


def test_paper_warp_error_ranks_flicker_and_follows_motion(clip, flickering):
    clean = paper_warp_error(clip, clip)
    assert clean < 0.01  # a pan of the texture is explained by the flow
    assert paper_warp_error(flickering, clip) > 5 * clean
    # It is the L1 halves of ReferenceFlows.scores on the two pair sets.
    short = ReferenceFlows.compute(clip).scores(flickering)[1]
    long = ReferenceFlows.compute(clip, against_first=True).scores(flickering)[1]
    assert paper_warp_error(iter(flickering), iter(clip)) == pytest.approx(short + long, rel=1e-9)
    with pytest.raises(InputError):
        paper_warp_error(clip, clip[:-1])
    with pytest.raises(InputError):
        paper_warp_error([], [])


def test_detail_ratio_blur_sharpen_and_contrast():
    frames = np.stack([texture(H, W, s, 0.1, 0.9) for s in range(3)])
    frames = np.clip(frames + 0.05 * np.random.default_rng(0).standard_normal(frames.shape), 0, 1).astype(np.float32)
    assert detail_ratio(frames, frames) == pytest.approx(1.0, abs=1e-6)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in frames])
    assert detail_ratio(blurred, frames) < 0.5
    assert detail_ratio(frames, blurred) > 2.0
    sharpened = np.clip(frames + 0.5 * (frames - blurred), 0, 1)
    assert detail_ratio(sharpened, frames) > 1.2
    # Per-frame contrast matching: a global gain and offset (different per frame) is not detail.
    gains = np.array([0.5, 0.8, 0.6])[:, None, None, None]
    dimmer = (0.05 + gains * frames).astype(np.float32)
    assert detail_ratio(dimmer, frames) == pytest.approx(1.0, rel=1e-3)
    assert laplacian_energy(dimmer[0]) == pytest.approx(0.25 * laplacian_energy(frames[0]), rel=1e-3)
    # Streams and uint8 frames; max_side downsamples both.
    as_uint8 = (frames * 255).round().astype(np.uint8)
    assert detail_ratio(iter(as_uint8), (f for f in as_uint8)) == pytest.approx(1.0, abs=1e-6)
    assert detail_ratio(blurred, frames, max_side=48) < 1.0
    with pytest.raises(InputError):
        detail_ratio(frames, frames[:-1])
    with pytest.raises(InputError):
        detail_ratio(frames, frames[:, :-1])
    with pytest.raises(InputError):
        detail_ratio([], [])


def test_evaluator_reports_the_new_metrics_held_or_streamed(tmp_path, clip, flickering, monkeypatch):
    from unflicker import evaluation, io

    def write(frames, path):
        info = io.VideoInfo(path, False, W, H, len(frames), io.DEFAULT_FOLDER_FPS, "rgb24", 8, False, None)
        with io.VideoWriter(path, info, overwrite=True) as writer:
            for frame in frames:
                writer.write(frame)
        return np.stack([io.to_float(f.image) for f in io.read_frames(path)])

    clean, flick = write(clip, tmp_path / "clean.mkv"), write(flickering, tmp_path / "flick.mkv")
    held = evaluation.evaluate(tmp_path / "flick.mkv", tmp_path / "clean.mkv", tmp_path / "clean.mkv")
    monkeypatch.setattr(evaluation, "HOLD_BYTES", 0)  # decode again for every metric: the same numbers
    assert evaluation.evaluate(tmp_path / "flick.mkv", tmp_path / "clean.mkv", tmp_path / "clean.mkv") == held
    assert held["paper_warp_error"] == pytest.approx(paper_warp_error(flick, clean) * WARP_ERROR_SCALE, rel=1e-6)
    assert held["detail"] == pytest.approx(detail_ratio(flick, clean), rel=1e-6)
    same = evaluation.evaluate(tmp_path / "clean.mkv", tmp_path / "clean.mkv")  # no ground truth: detail vs reference
    assert same["detail"] == pytest.approx(1.0) and "psnr" not in same
    assert same["paper_warp_error"] < 0.2 * held["paper_warp_error"]
    text = evaluation.format_report(held)
    assert "paper_warp_error" in text and "x1e-3" in text.split("paper_warp_error")[1].splitlines()[0]


def test_uint8_uint16_and_float_frames_of_one_picture_score_the_same(clip, flickering):
    """uint16 frames are scaled by 65535 (as io.to_float), not taken as values up to 65535: every
    metric gives a picture the same score at 8 bits, 16 bits and as float."""
    def at(depth, x):
        return x.astype(np.float32) if depth is None else np.round(x * np.iinfo(depth).max).astype(depth)

    # Pictures exact at 8 bits are exact at 16 (65535 = 257 x 255), so the three scores are equal.
    ref, res = (np.round(x[:5] * 255) / 255 for x in (clip, flickering))
    scores = {}
    for depth in (None, np.uint8, np.uint16):
        r, o = at(depth, ref), at(depth, res)
        scores[depth] = [warp_error(o, r), warp_error(o, r, against_first=True), paper_warp_error(o, r),
                         *ReferenceFlows.compute(r).scores(o), flicker_index(o)["luma"], detail_ratio(o, r),
                         laplacian_energy(o[0], like=r[0]), sequence_psnr(o, r), sequence_ssim(o, r),
                         psnr(o[0], r[0]), ssim(o[0], r[0])]
    assert 0 < scores[None][0] < 0.1 and 0 < scores[None][-2] < 60
    for depth in (np.uint8, np.uint16):
        assert scores[depth] == pytest.approx(scores[None], rel=1e-4), depth


def test_frames_of_different_sizes_within_a_sequence_are_refused(clip):
    """warp_error and detail_ratio resized a frame of another size to the first frame's and scored it; the
    reference flows (and paper_warp_error) refuse such a sequence, and so do they now."""
    mixed = [clip[0], clip[1][:48], clip[2]]  # the second frame is cut to 48 rows, in result and reference alike
    for score in (warp_error, detail_ratio, paper_warp_error, lambda o, r: ReferenceFlows.compute(r),
                  lambda o, r: warp_error(o, r, max_side=32), lambda o, r: detail_ratio(o, r, max_side=32)):
        with pytest.raises(InputError, match="differ in size"):
            score(mixed, mixed)


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (0, 0, 3)])
def test_frames_of_no_pixels_are_an_input_error(shape):
    """Frames of no pixels raised OpenCV's error (warping errors, detail) or scored NaN with NumPy's warnings
    (flicker index, PSNR) instead of the library's InputError."""
    empty = [np.zeros(shape, np.float32)] * 3
    for score in (warp_error, paper_warp_error, detail_ratio, sequence_psnr, sequence_ssim,
                  lambda o, r: ReferenceFlows.compute(r), lambda o, r: flicker_index(o),
                  lambda o, r: laplacian_energy(o[0]), lambda o, r: psnr(o[0], r[0]), lambda o, r: ssim(o[0], r[0])):
        with pytest.raises(InputError):
            score(empty, empty)
