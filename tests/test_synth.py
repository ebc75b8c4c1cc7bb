"""Tests for unflicker.synth: seeded synthetic flicker and synthetic camera moves."""

import cv2
import numpy as np
import pytest

from unflicker.errors import InputError
from unflicker.synth import (
    FLICKER_KINDS,
    KINDS,
    MOTIONS,
    Flicker,
    FlickerConfig,
    add_flicker,
    affine_flow,
    camera_move,
    camera_move_clip,
    relative_affine,
)

H, W = 64, 96


def _frame(seed=0, lo=0.15, hi=0.65):
    """Random smooth-ish frame kept away from 0 and 1 so gains can be read back without clipping."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.uniform(size=(H, W, 3)).astype(np.float32), (0, 0), 1.0)
    x = (x - x.min()) / (x.max() - x.min())
    return (lo + (hi - lo) * x).astype(np.float32)


def _photo(shape=(240, 320), sigma=3.0, seed=1):
    """Textured photo with values in [0.2, 0.9]; black borders would show up as values near 0."""
    rng = np.random.default_rng(seed)
    p = cv2.GaussianBlur(rng.uniform(size=shape + (3,)).astype(np.float32), (0, 0), sigma)
    p = (p - p.min()) / (p.max() - p.min())
    return (0.2 + 0.7 * p).astype(np.float32)


# ---- flicker: determinism, identity, range ----


@pytest.mark.parametrize("kind", KINDS)
def test_determinism_and_seed(kind):
    x = _frame()
    frames = (0, 1, 2, 13)  # step holds last at most 12 frames: frame 13 is in another hold
    a = [Flicker(FLICKER_KINDS[kind](), seed=5).apply(t, x) for t in frames]
    b = [Flicker(FLICKER_KINDS[kind](), seed=5).apply(t, x) for t in frames]
    c = [Flicker(FLICKER_KINDS[kind](), seed=6).apply(t, x) for t in frames]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert max(np.abs(p - q).max() for p, q in zip(a, c)) > 1e-3
    # Different frames of one seed differ too.
    assert np.abs(a[0] - a[-1]).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_apply_order_independent(kind):
    x = _frame()
    fwd = Flicker(FLICKER_KINDS[kind](), seed=2)
    rev = Flicker(FLICKER_KINDS[kind](), seed=2)
    order = [29, 9, 3, 0, 7, 3, 41]
    out_rev = {t: rev.apply(t, x) for t in order}
    for t in sorted(set(order)):
        assert np.array_equal(fwd.apply(t, x), out_rev[t])


@pytest.mark.parametrize("kind", KINDS)
def test_strength_zero_is_identity(kind):
    x = _frame(lo=0.0, hi=1.0)
    f = Flicker(FLICKER_KINDS[kind](strength=0.0), seed=3)
    for t in (0, 5, 40):
        np.testing.assert_allclose(f.apply(t, x), x, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_output_range_dtype_shape(kind):
    x = _frame(lo=0.0, hi=1.0)
    f = Flicker(FLICKER_KINDS[kind](strength=3.0), seed=4)
    outs = [f.apply(t, x) for t in range(6)]
    for out in outs:
        assert out.dtype == np.float32 and out.shape == x.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert any(o.max() == 1.0 or o.min() == 0.0 for o in outs)  # strong flicker hits the clip
    u8 = (x * 255).round().astype(np.uint8)
    np.testing.assert_allclose(f.apply(2, u8), f.apply(2, u8.astype(np.float32) / 255), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(InputError):
        Flicker(FlickerConfig(kind="strobe"))
    with pytest.raises(InputError):
        Flicker(FlickerConfig(strength=-1.0))
    f = Flicker()
    with pytest.raises(InputError):
        f.apply(0, np.zeros((H, W), np.float32))
    with pytest.raises(InputError):
        f.apply(-1, _frame())
    with pytest.raises(InputError):
        add_flicker(np.zeros((2, H, W, 3), np.float32), kind="nope")


# ---- flicker: each kind does what it says ----


def test_global_is_gain_and_gamma():
    x = _frame()
    f = Flicker(FLICKER_KINDS["global"](), seed=1)
    gains, gammas = [], []
    for t in range(16):
        out = f.apply(t, x)
        assert out.max() < 1.0  # no clipping, so the fit below is exact
        # log(out) = log(g) + gamma * log(x), the same for every pixel and channel.
        lx, ly = np.log(x).ravel(), np.log(out).ravel()
        gamma, log_g = np.polyfit(lx, ly, 1)
        assert np.abs(ly - (log_g + gamma * lx)).max() < 1e-4
        gains.append(log_g)
        gammas.append(gamma)
    assert np.std(gains) > 0.05  # about +-15 % exposure jitter
    assert np.std(np.log(gammas)) > 0.02
    means = [f.apply(t, x).mean() / x.mean() for t in range(16)]
    assert np.ptp(means) > 0.15


def test_colour_is_per_channel_gain():
    x = _frame()
    f = Flicker(FLICKER_KINDS["colour"](), seed=1)
    per_frame = []
    for t in range(12):
        ratio = f.apply(t, x) / x
        # Constant per channel (a pure gain) ...
        assert np.ptp(ratio.reshape(-1, 3), axis=0).max() < 1e-5
        per_frame.append(ratio.reshape(-1, 3).mean(0))
    per_frame = np.array(per_frame)
    # ... that differs between channels (white-balance flicker) and over time.
    assert np.median(np.ptp(per_frame, axis=1)) > 0.03
    assert per_frame.std(0).min() > 0.02


def test_local_gain_field_is_smooth_and_varies():
    x = _frame(lo=0.1, hi=0.4)  # dark enough that the brightest local light does not clip
    f = Flicker(FLICKER_KINDS["local"](), seed=1)
    fields = []
    for t in range(6):
        log_gain = np.log(f.apply(t, x) / x)
        # One luma field by default: same for all channels.
        assert np.abs(log_gain - log_gain[..., :1]).max() < 1e-4
        g = log_gain[..., 0]
        assert g.std() > 0.03  # spatially non-constant
        # Smooth: hardly any energy left after removing a small blur (noise would keep most of it).
        high = g - cv2.GaussianBlur(g, (0, 0), 2.0)
        assert (high**2).mean() < 1e-3 * ((g - g.mean()) ** 2).mean()
        fields.append(g)
    assert np.abs(fields[0] - fields[1]).max() > 0.05  # the lights change per frame


def test_local_per_channel_differs_between_channels():
    x = _frame(lo=0.1, hi=0.4)
    f = Flicker(FLICKER_KINDS["local"](local_per_channel=True), seed=1)
    log_gain = np.log(f.apply(0, x) / x)
    assert np.abs(log_gain[..., 0] - log_gain[..., 1]).max() > 0.05


def _row_profile(out, x):
    return (out / x).mean(axis=(1, 2))


def test_mains_bands_are_periodic_and_move():
    x = _frame()
    cfg = FLICKER_KINDS["mains"]()
    f = Flicker(cfg, seed=1)
    period = cfg.mains_period * H
    rows = np.arange(H)
    design = np.stack([np.sin(2 * np.pi * rows / period), np.cos(2 * np.pi * rows / period), np.ones(H)], 1)
    phases = []
    for t in range(3):
        out = f.apply(t, x)
        gain = out / x
        # Gain depends on the row only.
        assert (gain - gain.mean(axis=(1, 2), keepdims=True)).std() < 1e-5
        prof = _row_profile(out, x)
        np.testing.assert_allclose(prof[: H - int(period)], prof[int(period):], atol=1e-5)
        coef, *_ = np.linalg.lstsq(design, prof, rcond=None)
        assert np.abs(design @ coef - prof).max() < 1e-4  # a pure sinusoid along the rows
        assert np.hypot(coef[0], coef[1]) == pytest.approx(cfg.mains_amplitude, rel=0.02)
        phases.append(np.arctan2(coef[1], coef[0]))
    step = np.angle(np.exp(1j * (phases[1] - phases[0])))
    assert step == pytest.approx(2 * np.pi * cfg.mains_speed, abs=1e-3)
    assert np.angle(np.exp(1j * (phases[2] - phases[1]))) == pytest.approx(step, abs=1e-3)


def test_tone_is_monotone_per_channel_curve():
    ramp = np.repeat(np.linspace(0, 1, 256, dtype=np.float32)[None, :, None], 3, axis=2)
    f = Flicker(FLICKER_KINDS["tone"](), seed=1)
    for t in range(8):
        out = f.apply(t, ramp)[0]  # (256, 3): the curve of each channel
        assert (np.diff(out, axis=0) >= 0).all()
        np.testing.assert_allclose(out[0], 0.0, atol=1e-6)
        np.testing.assert_allclose(out[-1], 1.0, atol=1e-6)
        assert np.abs(out - ramp[0]).max() > 0.01  # not the identity
        assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-3  # channels get their own curve
    # On an image, each channel is a function of its own input: equal inputs give equal outputs.
    x = (np.random.default_rng(0).integers(0, 16, (H, W, 3)) / 15).astype(np.float32)
    out = f.apply(3, x)
    for c in range(3):
        for v in np.unique(x[..., c]):
            assert np.ptp(out[..., c][x[..., c] == v]) < 1e-6


def test_mixed_combines_components():
    x = _frame()
    out = Flicker(FLICKER_KINDS["mixed"](), seed=1).apply(0, x)
    ratio = out / x
    assert ratio[..., 0].std() > 1e-3  # spatially varying (local) ...
    assert np.abs(ratio[..., 0] - ratio[..., 1]).mean() > 1e-3  # ... and colour-dependent


def test_add_flicker_array_and_stream():
    clip = np.stack([_frame(s) for s in range(5)])
    out = add_flicker(clip, kind="colour", strength=0.5, seed=9)
    assert isinstance(out, np.ndarray) and out.shape == clip.shape and out.dtype == np.float32
    ref = Flicker(FLICKER_KINDS["colour"](strength=0.5), seed=9)
    for t in range(5):
        np.testing.assert_array_equal(out[t], ref.apply(t, clip[t]))
    stream = add_flicker(iter(list(clip)), kind="colour", strength=0.5, seed=9)
    assert not isinstance(stream, (list, np.ndarray))
    np.testing.assert_array_equal(np.stack(list(stream)), out)
    with pytest.raises(InputError):
        add_flicker(clip[0])


# ---- synthetic camera moves ----


@pytest.mark.parametrize("motion", MOTIONS)
def test_camera_move_shape_range_no_border(motion):
    photo = _photo()
    frames, transforms = camera_move(photo, 10, size=(H, W), motion=motion, seed=3)
    assert frames.shape == (10, H, W, 3) and frames.dtype == np.float32
    assert transforms.shape == (10, 2, 3)
    # The photo is >= 0.2 everywhere: any border or black fill would show as a lower value.
    assert frames.min() >= 0.2 - 1e-4 and frames.max() <= 0.9 + 1e-4
    corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1]], float).T
    for m in transforms:
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
        src = (inv @ corners)[:2]
        assert (src >= -0.5).all()
        assert (src[0] <= photo.shape[1] - 0.5).all() and (src[1] <= photo.shape[0] - 0.5).all()


def test_camera_transforms_map_photo_to_frames():
    # A very smooth photo makes the prefiltered render equal to direct sampling with the returned transform.
    photo = _photo(shape=(300, 400), sigma=12.0)
    frames, transforms = camera_move(photo, 6, size=(H, W), motion="pan", seed=1)
    for t in (0, 5):
        direct = cv2.warpAffine(photo, transforms[t], (W, H), flags=cv2.INTER_LINEAR)
        assert np.abs(direct - frames[t]).mean() < 0.01
    other = cv2.warpAffine(photo, transforms[5], (W, H), flags=cv2.INTER_LINEAR)
    assert np.abs(other - frames[0]).mean() > 0.02  # the check above can tell frames apart


def test_camera_consecutive_frames_follow_relative_transform():
    frames, transforms = camera_move(_photo(), 8, size=(H, W), motion="pan", seed=2)
    inner = (slice(8, -8), slice(8, -8))
    for t in range(7):
        rel = relative_affine(transforms[t], transforms[t + 1])
        shift = np.hypot(*(rel @ [W / 2, H / 2, 1] - [W / 2, H / 2]))
        assert 0.5 < shift < 6.0  # a few pixels per frame
        warped = cv2.warpAffine(frames[t], rel, (W, H), flags=cv2.INTER_LINEAR)
        err = np.abs(warped - frames[t + 1])[inner].mean()
        assert err < 0.2 * np.abs(frames[t] - frames[t + 1])[inner].mean()
        assert err < 0.01
        # The dense flow (x first, frame t -> t+1): frame t+1 sampled at x + flow gives frame t back.
        flow = affine_flow(rel, (H, W))
        gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
        back = cv2.remap(frames[t + 1], gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR)
        assert np.abs(back - frames[t])[inner].mean() < 0.01


def test_camera_move_determinism_and_static():
    photo = (_photo() * 255).round().astype(np.uint8)
    a = camera_move_clip(photo, 5, size=(H, W), seed=4)
    b = camera_move_clip(photo, 5, size=(H, W), seed=4)
    c = camera_move_clip(photo, 5, size=(H, W), seed=5)
    assert np.array_equal(a, b) and np.abs(a - c).mean() > 0.01
    still = camera_move_clip(photo[..., 0], 4, size=(H, W), motion="static")  # greyscale photo accepted
    assert still.shape == (4, H, W, 3) and np.array_equal(still[0], still[3])
    with pytest.raises(InputError):
        camera_move(photo, 5, motion="dolly")
    with pytest.raises(InputError):
        camera_move(photo, 0)


def test_step_holds_gain_and_colour_for_2_to_12_frames():
    x = _frame()
    f = Flicker(FLICKER_KINDS["step"](), seed=1)
    outs = np.stack([f.apply(t, x) for t in range(120)])
    changed = np.abs(np.diff(outs, axis=0)).max(axis=(1, 2, 3)) > 1e-6
    starts = np.flatnonzero(np.concatenate([[True], changed]))
    holds = np.diff(np.concatenate([starts, [120]]))[:-1]  # the last hold is cut by the clip end
    assert len(holds) >= 8 and holds.min() >= 2 and holds.max() <= 12
    assert len(set(holds.tolist())) >= 3  # random lengths, not one period
    # Within a hold the frame is a fixed per-channel gain of the input: colour changes too.
    ratios = outs[starts[:-1]].reshape(len(starts) - 1, -1, 3).mean(1) / x.reshape(-1, 3).mean(0)
    assert np.std(np.log(ratios), axis=0).min() > 0.05
    assert np.std(np.log(ratios[:, 0] / ratios[:, 1])) > 0.02
    custom = Flicker(FLICKER_KINDS["step"](step_hold=(3, 3)), seed=2)
    seq = [custom.apply(t, x) for t in range(9)]
    assert np.array_equal(seq[0], seq[2]) and not np.array_equal(seq[2], seq[3])
    with pytest.raises(InputError):
        Flicker(FLICKER_KINDS["step"](step_hold=(0, 3))).apply(0, x)


def test_film_pumps_over_10_to_30_frames_with_grain():
    x = np.full((H, W, 3), 0.4, np.float32)
    f = Flicker(FLICKER_KINDS["film"](film_jitter_sigma=0.0), seed=3)
    outs = np.stack([f.apply(t, x) for t in range(120)])
    level = np.log(outs.mean(axis=(1, 2, 3)) / 0.4)
    assert level.std() > 0.08  # strong pumping of the global brightness
    # Slow oscillation: most of its power sits at periods of 8-40 frames, little at 2-4 frames.
    spectrum = np.abs(np.fft.rfft(level - level.mean())) ** 2
    periods = 120 / np.maximum(np.arange(len(spectrum)), 1e-9)
    assert spectrum[(periods >= 8) & (periods <= 40)].sum() > 0.7 * spectrum[1:].sum()
    assert spectrum[periods <= 4].sum() < 0.05 * spectrum[1:].sum()
    # Grain: per-frame noise of about film_grain, monochrome, independent between frames.
    residual = outs - outs.mean(axis=(1, 2), keepdims=True)
    assert 0.02 < residual.std() < 0.04
    np.testing.assert_allclose(residual[..., 0], residual[..., 1], atol=1e-6)
    assert abs(np.corrcoef(residual[0, ..., 0].ravel(), residual[1, ..., 0].ravel())[0, 1]) < 0.2
    no_grain = Flicker(FLICKER_KINDS["film"](film_grain=0.0, film_jitter_sigma=0.0), seed=3).apply(5, x)
    assert np.ptp(no_grain) < 1e-6
