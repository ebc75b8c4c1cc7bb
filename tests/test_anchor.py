import math

import numpy as np
import pytest

from unflicker.anchor import AnchorConfig, SlowAppearanceAnchor
from unflicker.errors import InputError


def frames(n, h=12, w=20, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 0.8, (n, h, w, 3)).astype(np.float32)


def run(anchor, inputs, outputs):
    return list(anchor.stream((t, i, o) for t, (i, o) in enumerate(zip(inputs, outputs))))


def test_infinite_sigmas_pass_outputs_through():
    inputs, outputs = frames(5), frames(5, seed=1)
    result = run(SlowAppearanceAnchor(AnchorConfig.off()), inputs, outputs)
    assert [t for t, _ in result] == list(range(5))
    assert all(np.array_equal(o, outputs[t]) for t, o in result)


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_a_steady_correction_is_handed_back_to_the_input(n):
    # A correction that does not change over time is a look, not flicker: the input comes back.
    inputs = frames(n)
    outputs = inputs + 0.1
    result = run(SlowAppearanceAnchor(AnchorConfig(sigma=1.5, grid_rows=4)), inputs, outputs)
    assert [t for t, _ in result] == list(range(n))
    for t, out in result:
        assert np.abs(out - inputs[t]).max() < 1e-5


def test_a_frame_to_frame_correction_is_mostly_kept():
    inputs = frames(30)
    sign = np.where(np.arange(30) % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None, None, None]
    outputs = inputs + 0.1 * sign  # removing alternating flicker: the correction flips every frame
    result = run(SlowAppearanceAnchor(AnchorConfig(sigma=2.0, global_sigma=2.0)), inputs, outputs)
    for t, out in result[3:-3]:
        kept = float(np.mean((out - inputs[t]) * sign[t]))
        assert kept > 0.095  # a Gaussian of sigma 2 passes almost nothing of period 2


def test_the_mean_never_crosses_a_cut():
    inputs = frames(10)
    outputs = inputs.copy()
    outputs[:4] += 0.1  # two shots, each with its own steady correction
    outputs[4:] -= 0.1
    result = run(SlowAppearanceAnchor(AnchorConfig(sigma=2.0, grid_rows=3), shot_starts=[4]), inputs, outputs)
    assert all(np.abs(out - inputs[t]).max() < 1e-5 for t, out in result)
    crossing = run(SlowAppearanceAnchor(AnchorConfig(sigma=2.0, grid_rows=3)), inputs, outputs)
    assert np.abs(crossing[3][1] - inputs[3]).max() > 0.05  # without the cut the shots would mix


def test_outputs_leave_radius_frames_late():
    anchor = SlowAppearanceAnchor(AnchorConfig(sigma=1.0))
    pulled = []

    def items():
        for t, image in enumerate(frames(12)):
            pulled.append(t)
            yield t, image, image

    for t, _ in anchor.stream(items()):
        assert pulled[-1] == min(t + anchor.config.radius, 11)


def test_global_and_local_parts_have_their_own_windows():
    # A global correction swinging every 3 frames is flicker for global_sigma 8 (kept), while the
    # same swing in the local part is a look for sigma 0.2 (handed back).
    n = 40
    inputs = np.full((n, 8, 8, 3), 0.5, np.float32)
    swing = (0.1 * np.sin(np.arange(n) * 2 * np.pi / 3)).astype(np.float32)
    glob = inputs + swing[:, None, None, None]
    local = inputs.copy()
    local[:, :, :4] += swing[:, None, None, None]
    local[:, :, 4:] -= swing[:, None, None, None]
    anchor = lambda: SlowAppearanceAnchor(AnchorConfig(sigma=0.2, coarse_sigma=0.2, global_sigma=8.0,  # noqa: E731
                                                       grid_rows=8))
    for t, out in run(anchor(), inputs, glob)[10:-10]:
        assert abs(float(np.mean(out - inputs[t])) - swing[t]) < 0.01
    for t, out in run(anchor(), inputs, local)[10:-10]:
        assert np.abs(out - inputs[t]).max() < 0.01


def test_coarse_and_fine_parts_have_their_own_windows():
    # A swing of smooth, frame-sized light is flicker for coarse_sigma 8 (its correction is kept);
    # the same swing in a fine pattern (a per-frame process's look) is handed back by sigma 0.2.
    n, size = 40, 48
    inputs = np.full((n, size, size, 3), 0.5, np.float32)
    swing = (0.1 * np.sin(np.arange(n) * 2 * np.pi / 3)).astype(np.float32)[:, None, None, None]
    ramp = np.linspace(-1, 1, size, dtype=np.float32)[None, None, :, None]  # smooth: zero mean, coarse
    checker = np.where((np.arange(size)[:, None] // 2 + np.arange(size) // 2) % 2 == 0, 1.0, -1.0)
    checker = checker.astype(np.float32)[None, :, :, None]  # fine: zero mean, gone after the blur
    anchor = lambda: SlowAppearanceAnchor(AnchorConfig(sigma=0.2, coarse_sigma=8.0, global_sigma=8.0,  # noqa: E731
                                                       coarse_scale=1 / 8, grid_rows=size))
    for t, out in run(anchor(), inputs, inputs + swing * ramp)[10:-10]:
        kept = out - inputs[t]
        assert np.abs(kept - (swing * ramp)[t])[:, 8:-8].max() < 0.02  # the frame's borders blur less cleanly
    for t, out in run(anchor(), inputs, inputs + swing * checker)[10:-10]:
        assert np.abs(out - inputs[t]).max() < 0.01


def test_the_parts_add_up_to_the_correction():
    correction = frames(1, 24, 40)[0] - 0.5
    parts = SlowAppearanceAnchor(AnchorConfig(coarse_scale=0.1))._parts(correction)
    assert np.allclose(sum(parts), correction, atol=1e-6)
    assert np.abs(parts[2]).max() < 0.05 and np.abs(parts[2] - correction.reshape(-1, 3).mean(0)).max() < 1e-6


@pytest.mark.parametrize("config", [AnchorConfig(sigma=-1), AnchorConfig(global_sigma=float("nan")),
                                    AnchorConfig(coarse_sigma=-2), AnchorConfig(coarse_scale=-0.1),
                                    AnchorConfig(grid_rows=0)])
def test_bad_settings_are_refused(config):
    with pytest.raises(InputError):
        SlowAppearanceAnchor(config)


def test_a_fade_goes_back_whole_and_pumping_stays_corrected():
    # The method gave every frame one look; the input fades up by 0.2 over the shot and pumps
    # (period 20 frames, plus jitter). The fade is content: it must come back whole, up to the
    # first and last frames, where a window mean bends it; the pumping is flicker. Without a fade,
    # or with pumping as large as the fade, nothing passes for a line: the output is the window
    # means', the steady look goes back.
    n = 48
    rng = np.random.default_rng(0)
    wobble = (np.sin(np.arange(n) * 2 * np.pi / 20) + 0.4 * rng.standard_normal(n)).astype(np.float32)

    def error(config, fade, pump):  # how far the output is from "the input without its pumping"
        inputs = np.full((n, 16, 16, 3), 0.4, np.float32) + (fade + pump)[:, None, None, None]
        outputs = np.full_like(inputs, 0.5)
        result = run(SlowAppearanceAnchor(config), inputs, outputs)
        return max(np.abs(out - (0.4 + fade[t])).max() for t, out in result)

    fade, steady = np.linspace(0.0, 0.2, n, dtype=np.float32), np.zeros(n, np.float32)
    window, line = AnchorConfig(grid_rows=16, fade=False), AnchorConfig(grid_rows=16)
    small, large = 0.04 * wobble, 0.08 * wobble
    assert error(line, fade, small) < 0.5 * error(window, fade, small)  # 0.008 against 0.057 (no anchor: 0.1)
    assert error(line, fade, large) == error(window, fade, large)  # the line explains too little: 0.062
    assert error(line, steady, small) == error(window, steady, small)
    assert error(AnchorConfig.off(), steady, small) > 0.09  # the steady look is the anchor's to give back
    with pytest.raises(InputError):
        AnchorConfig(fade_share=(0.8, 0.5)).check()


def test_a_fade_changes_only_frames_whose_window_the_shot_cuts():
    # Inside a shot the window mean of a line is the line: the fade option adds nothing there, so
    # flicker that passes for a line by chance costs no more than the shot's ends.
    n, rng = 120, np.random.default_rng(1)
    inputs = (0.3 + np.linspace(0, 0.3, n)[:, None, None, None] + 0.02 * rng.standard_normal((n, 8, 8, 3))
              ).astype(np.float32)
    outputs = np.full_like(inputs, 0.5)
    window = dict(run(SlowAppearanceAnchor(AnchorConfig(grid_rows=8, fade=False)), inputs, outputs))
    line = dict(run(SlowAppearanceAnchor(AnchorConfig(grid_rows=8)), inputs, outputs))
    r = AnchorConfig().window
    inside = range(r, n - r)
    assert max(np.abs(line[t] - window[t]).max() for t in inside) < 1e-5
    assert max(np.abs(line[t] - window[t]).max() for t in (0, n - 1)) > 0.02  # the ends do (0.032, 0.024)


def test_lines_give_back_a_fade_but_no_slow_swing():
    # Smooth physical flicker (lines = 1): a slow swing of the light (period 40 frames) is flicker
    # and stays corrected, where the window means give part of it back; the shot's steady
    # difference of look and a fade (here larger than the swing) still go back.
    n = 80
    swing = 0.05 * np.sin(np.arange(n) * 2 * np.pi / 40)

    def error(config, change):  # how far the output is from "the input without its swing"
        inputs = (0.3 + change + swing)[:, None, None, None] * np.ones((1, 8, 8, 3))
        outputs = np.full_like(inputs, 0.5, dtype=np.float32)
        result = run(SlowAppearanceAnchor(config), inputs.astype(np.float32), outputs)
        return max(np.abs(out - (0.3 + change[t])).max() for t, out in result)

    window, lines = AnchorConfig(grid_rows=8), AnchorConfig(grid_rows=8, lines=1.0)
    steady, fade = np.zeros(n), np.linspace(0.0, 0.3, n)
    assert error(lines, steady) < 1e-5 and error(window, steady) > 0.015  # 0.0196
    assert error(lines, fade) < error(window, fade)  # 0.024 against 0.027: the line is the fade
    assert AnchorConfig(physical_lines=True).for_segment(0.7).lines == 0.7
    assert AnchorConfig().for_segment(1.0).lines == 0.0
    with pytest.raises(InputError):
        AnchorConfig(lines=1.5).check()


def _local_std(images, cell=4):
    """Mean over frames of the luma's standard deviation in cell x cell blocks."""
    luma = np.asarray(images) @ np.float32([0.299, 0.587, 0.114])
    n, h, w = luma.shape
    blocks = luma[:, : h - h % cell, : w - w % cell].reshape(n, h // cell, cell, w // cell, cell)
    return float(blocks.std(axis=(2, 4)).mean())


def test_a_steady_loss_of_contrast_goes_back_with_the_contrast_part():
    # The method's output is the input with its texture at 0.6 of the contrast, steadily: that is
    # the method's softness, not flicker. The contrast part gives it back; the mean parts alone cannot.
    inputs = frames(12, 24, 40)
    outputs = 0.5 + 0.6 * (inputs - 0.5)
    config = dict(sigma=2.0, coarse_sigma=2.0, global_sigma=2.0, grid_rows=6, fade=False)
    with_contrast, without = ([o for _, o in run(SlowAppearanceAnchor(AnchorConfig(contrast_sigma=sigma, **config)),
                                                 inputs, outputs)] for sigma in (2.0, float("inf")))
    ratio = _local_std(with_contrast) / _local_std(inputs)
    assert 0.9 < ratio < 1.1
    assert _local_std(without) / _local_std(inputs) < 0.7
    assert np.abs(np.mean(with_contrast) - np.mean(inputs)) < 0.01  # the mean goes back as before


def test_contrast_flicker_stays_corrected():
    # The input's texture contrast alternates (0.5 and 1.0 of the picture's); the method's output
    # keeps one contrast. Only the slow part goes back: consecutive outputs keep one contrast.
    base = frames(1, 24, 40)[0]
    contrast = np.where(np.arange(24) % 2 == 0, 1.0, 0.5).astype(np.float32)
    inputs = np.stack([0.5 + c * (base - 0.5) for c in contrast])
    outputs = np.stack([0.5 + 0.8 * (base - 0.5)] * 24)
    result = [o for _, o in run(SlowAppearanceAnchor(AnchorConfig(contrast_sigma=4.0, grid_rows=6)), inputs, outputs)]
    stds = [_local_std([o]) for o in result[6:-6]]
    assert max(stds) / min(stds) < 1.05  # the input's swing is 2x
    geometric = _local_std([0.5 + np.sqrt(0.5) * (base - 0.5)])
    assert abs(np.mean(stds) / geometric - 1) < 0.1  # the slow look: the input's contrast on average


@pytest.mark.parametrize("config", [AnchorConfig(contrast_sigma=-1), AnchorConfig(contrast_floor=0),
                                    AnchorConfig(contrast_side=8), AnchorConfig(contrast_limit=0.5)])
def test_bad_contrast_settings_are_refused(config):
    with pytest.raises(InputError):
        SlowAppearanceAnchor(config)


def test_the_contrast_part_is_measured_at_a_bounded_size():
    # A frame above contrast_side is measured on an area-averaged copy: same slow parts as a frame
    # that size (up to the averaging's rounding), and the output at the full size.
    small = frames(4, 24, 40)
    large = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    outputs_small, outputs_large = 0.5 + 0.7 * (small - 0.5), 0.5 + 0.7 * (large - 0.5)
    config = AnchorConfig(grid_rows=6, contrast_side=40, detail_side=24, fade=False)
    anchor = SlowAppearanceAnchor(config)
    slow_small = [s for _, s in anchor.corrections((t, i, o) for t, (i, o) in enumerate(zip(small, outputs_small)))]
    slow_large = [s for _, s in anchor.corrections((t, i, o) for t, (i, o) in enumerate(zip(large, outputs_large)))]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(slow_small, slow_large))
    assert anchor.apply(outputs_large[0], slow_large[0]).shape == large[0].shape


def test_the_contrast_gain_is_limited():
    # The output flattened the texture to 2 % of the input's: at most `contrast_limit` of it comes back.
    inputs = frames(6, 24, 40)
    outputs = 0.5 + 0.02 * (inputs - 0.5)
    config = dict(grid_rows=6, fade=False, contrast_sigma=2.0)
    limited = [o for _, o in run(SlowAppearanceAnchor(AnchorConfig(contrast_limit=3.0, **config)), inputs, outputs)]
    ratio = _local_std(limited) / _local_std(outputs)
    assert 2.0 < ratio < 3.3


def test_keep_slow_sets_the_contrast_window_like_the_coarse_one():
    from unflicker.config import RunConfig, anchor_config

    assert anchor_config(RunConfig(keep_slow=4.0)).contrast_sigma == AnchorConfig().contrast_sigma
    assert anchor_config(RunConfig(keep_slow=40.0)).contrast_sigma == 40.0
    assert anchor_config(RunConfig(keep_slow=float("inf"))) is None
    # Physical kinds given by the user leave the amount of detail as it is (auto: where the flicker is smooth).
    for kind, detail in (("timelapse", math.inf), ("mains", math.inf), ("processed", AnchorConfig().detail_sigma),
                         ("auto", AnchorConfig().detail_sigma)):
        assert anchor_config(RunConfig(kind=kind)).detail_sigma == detail
        assert anchor_config(RunConfig(kind=kind, keep_slow=3.0)).detail_sigma == detail


def _textured(n, amounts, seed=0, h=48, w=64):
    """A still picture whose fine detail (a 1-pixel-scale texture) is scaled by amounts[t] in frame t."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0.3, 0.7, (h, w, 3)).astype(np.float32), (0, 0), 3.0)
    texture = rng.normal(0.0, 0.05, (h, w, 1)).astype(np.float32) * np.ones(3, np.float32)
    return np.stack([np.clip(base + a * texture, 0, 1) for a in amounts[:n]]).astype(np.float32)


def _fine_energy(images):
    import cv2

    luma = np.asarray(images, np.float32) @ np.float32([0.299, 0.587, 0.114])
    return np.array([np.mean((y - cv2.GaussianBlur(y, (0, 0), 1.0)) ** 2) for y in luma])  # the first band at 48 rows


BANDS = (1 / 48, 3 / 48)  # 1 and 3 pixels at the test frames' 48 rows


def test_flicker_in_the_amount_of_detail_is_evened_out():
    # A per-frame sharpening of random strength: the outputs (= the inputs, the networks left it)
    # keep their own detail, at one amount, near the clip's mean amount; the mean parts change nothing.
    amounts = np.random.default_rng(3).uniform(0.4, 1.6, 24)
    clip = _textured(24, amounts)
    config = dict(grid_rows=6, fade=False, detail_bands=BANDS)
    before = np.sqrt(_fine_energy(clip) + 1e-5)
    spread = {}
    for share in (1.0, 0.5):
        anchor = SlowAppearanceAnchor(AnchorConfig(detail_share=share, **config))
        after = np.sqrt(_fine_energy(np.stack([o for _, o in run(anchor, clip, clip)])) + 1e-5)
        spread[share] = np.std(np.log(after[4:-4])) / np.std(np.log(before[4:-4]))
        assert 0.85 < np.mean(after) / np.mean(before) < 1.15  # not blurred: the same amount on average
    assert spread[1.0] < 0.35  # what is left: the recursive mean's own wander
    assert spread[1.0] + 0.2 < spread[0.5] < 0.75  # about half the way in log
    off = np.stack([o for _, o in run(SlowAppearanceAnchor(AnchorConfig(detail_sigma=float("inf"), **config)), clip, clip)])
    assert np.abs(off - clip).max() < 1e-5  # without it the same clip comes back (a steady correction: none)


def test_steady_detail_is_left_as_it_is():
    clip = _textured(10, np.ones(10))
    result = [o for _, o in run(SlowAppearanceAnchor(AnchorConfig(grid_rows=6, detail_bands=BANDS)), clip, clip)]
    assert max(float(np.abs(o - c).max()) for o, c in zip(result, clip)) < 1e-5


def _panning(n, amounts, step=2, h=64, w=96):
    """A camera pan (step pixels a frame) over a picture whose left part has strong fine texture and
    whose right part is nearly flat; frame t's texture scaled by amounts[t] (None: steady)."""
    import cv2

    rng = np.random.default_rng(8)
    wide = w + step * n
    base = cv2.GaussianBlur(rng.uniform(0.3, 0.7, (h, wide, 3)).astype(np.float32), (0, 0), 4.0)
    texture = rng.normal(0.0, 0.06, (h, wide, 1)).astype(np.float32) * np.ones(3, np.float32)
    texture[:, wide // 2 :] *= 0.1
    frames = []
    for t in range(n):
        a = 1.0 if amounts is None else amounts[t]
        frames.append(np.clip(base + a * texture, 0, 1)[:, step * t : step * t + w])
    return np.stack(frames).astype(np.float32)


def test_the_amount_of_detail_is_evened_along_the_motion_and_a_pan_over_texture_is_kept():
    # Per region, the mean must follow the motion: a pan brings texture into a region where the
    # last frames were flat, and a region's plain window mean would flatten it (session 13).
    config = AnchorConfig(grid_rows=32, fade=False, detail_bands=(1 / 64, 3 / 64))
    steady = _panning(16, None)
    kept = [o for _, o in run(SlowAppearanceAnchor(config), steady, steady)]
    ratio = _fine_energy(kept) / _fine_energy(steady)
    assert np.all(np.abs(ratio - 1) < 0.03), ratio
    amounts = np.where(np.arange(16) % 2 == 0, 1.4, 0.6)
    flickering = _panning(16, amounts)
    evened = [o for _, o in run(SlowAppearanceAnchor(config), flickering, flickering)]
    before, after = np.log(_fine_energy(flickering)), np.log(_fine_energy(evened))
    assert np.std(np.diff(after[2:-2])) < 0.3 * np.std(np.diff(before[2:-2]))
    assert 0.85 < np.mean(np.exp(after)) / np.mean(np.exp(before)) < 1.15  # the clip's amount of detail kept


def test_the_detail_part_works_without_the_contrast_part():
    amounts = np.where(np.arange(12) % 2 == 0, 1.5, 0.5)
    clip = _textured(12, amounts)
    config = AnchorConfig(grid_rows=6, contrast_sigma=float("inf"), detail_bands=BANDS)
    anchor = SlowAppearanceAnchor(config)
    slow = [s for _, s in anchor.corrections((t, c, c) for t, c in enumerate(clip))]
    assert all(s.shape[2] == 4 + len(BANDS) for s in slow)
    gains = np.array([float(np.median(s[..., 4])) for s in slow])
    assert np.all(gains[::2] < 0.9) and np.all(gains[1::2] > 1.1)  # strong frames down, weak ones up
    every = np.stack([s[..., 4:] for s in slow])
    assert np.all(every >= 1 / config.detail_limit) and np.all(every <= config.detail_limit)


def test_a_segment_left_as_it_is_has_no_detail_part():
    config = AnchorConfig()
    assert config.for_segment(0.0, strength=0.0).detail_sigma == float("inf")
    assert config.for_segment(0.0).detail_sigma == config.detail_sigma
    assert config.for_segment(0.0, strength=0.5).detail_share == 0.5 * config.detail_share  # as the gate fades
    assert config.for_segment(0.25, strength=0.5).detail_share == 0.375 * config.detail_share
    assert config.for_segment(1.0).detail_sigma == float("inf")  # smooth (physical) flicker: the amount of detail stays
    assert AnchorConfig.off().detail_sigma == float("inf")
    assert AnchorConfig(physical_lines=True).for_segment(1.0, strength=0.0).lines == 1.0


@pytest.mark.parametrize("config", [AnchorConfig(detail_sigma=-1), AnchorConfig(detail_floor=0),
                                    AnchorConfig(detail_bands=()), AnchorConfig(detail_bands=(0.0, 0.01)),
                                    AnchorConfig(detail_bands=(0.01, math.inf)), AnchorConfig(detail_bands=0.01),
                                    AnchorConfig(detail_cell=math.inf),
                                    AnchorConfig(detail_bands=(0.02, 0.01)), AnchorConfig(detail_cell=0),
                                    AnchorConfig(detail_limit=0.5), AnchorConfig(detail_share=1.5),
                                    AnchorConfig(detail_dark=0)])
def test_bad_detail_settings_are_refused(config):
    with pytest.raises(InputError):
        SlowAppearanceAnchor(config)


@pytest.mark.parametrize("contrast", [16.0, float("inf")])
def test_a_detail_part_that_goes_none_of_the_way_changes_no_bit(contrast):
    # With a real correction (not the input itself), share 0 must give the previous code path's output.
    inputs = _textured(10, np.random.default_rng(4).uniform(0.5, 1.5, 10))
    outputs = np.clip(0.9 * inputs + 0.05, 0, 1).astype(np.float32)
    base = dict(grid_rows=6, contrast_sigma=contrast, detail_bands=BANDS)
    none = run(SlowAppearanceAnchor(AnchorConfig(detail_share=0.0, **base)), inputs, outputs)
    off = run(SlowAppearanceAnchor(AnchorConfig(detail_sigma=float("inf"), **base)), inputs, outputs)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(none, off))


def test_a_dark_frame_gets_little_detail_from_its_noise_and_a_flat_one_none():
    rng = np.random.default_rng(5)
    clip = _textured(9, np.ones(9))
    clip[4] = (0.02 + rng.normal(0, 0.004, clip[4].shape)).astype(np.float32)  # nearly black, noise only
    clip[6] = 0.5  # no detail at all: nothing to scale
    anchor = SlowAppearanceAnchor(AnchorConfig(grid_rows=6, detail_bands=BANDS))
    result = [o for _, o in run(anchor, clip, clip)]
    assert np.abs(result[6] - 0.5).max() < 1e-6
    # The energy is relative to the local mean luma: the noise is raised by far less than the limit (4).
    assert np.std(result[4]) < 1.6 * np.std(clip[4])


def test_a_frame_that_is_not_finite_does_not_spread_into_its_neighbours():
    amounts = np.random.default_rng(7).uniform(0.5, 1.5, 12)
    clean = _textured(12, amounts)
    broken = clean.copy()
    broken[2, 0, 0] = np.nan
    config = AnchorConfig(grid_rows=6, detail_bands=BANDS)

    def gains(clip):
        anchor = SlowAppearanceAnchor(config)
        return np.stack([s[..., 4:] for _, s in anchor.corrections((t, c, c) for t, c in enumerate(clip))])

    ok, bad = gains(clean), gains(broken)
    assert np.all(np.isfinite(bad)) and np.all(bad >= 1 / config.detail_limit) and np.all(bad <= config.detail_limit)
    others = [t for t in range(12) if t != 2]
    # Only the broken frame falls back to a gain of 1; its neighbours keep theirs (without it in their means).
    assert np.sum(bad[others] == 1.0) == np.sum(ok[others] == 1.0)
    assert np.any(bad[2] == 1.0)


def test_the_detail_gain_is_measured_on_a_bounded_copy_and_applied_at_full_size():
    # Frames twice the size, measured on a copy of shorter side `detail_side` (the small frames'):
    # the same gains, and the output at the full size.
    amounts = np.random.default_rng(6).uniform(0.5, 1.5, 8)
    small = _textured(8, amounts)
    large = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
    config = dict(grid_rows=6, detail_bands=BANDS, detail_side=48)
    gains_small, gains_large = (np.stack([s[..., 4:] for _, s in SlowAppearanceAnchor(AnchorConfig(**config)).corrections(
        (t, c, c) for t, c in enumerate(clip))]) for clip in (small, large))
    assert np.allclose(gains_small, gains_large, atol=1e-4) and np.ptp(gains_small) > 0.1
    anchor = SlowAppearanceAnchor(AnchorConfig(**config))
    assert anchor.apply(large[0], np.full((6, 8, 6), 1.1, np.float32)).shape == large[0].shape


def test_lines_only_where_the_flicker_drifts_and_a_fade_keeps_its_line():
    # The lines apply as far as the flicker's pumping says (a process with independent per-frame
    # parameters has no slow part of its own); where they apply, `lines_fade_share` decides how much
    # of the shot's line goes back: a fade under a swing whose line explains about half of its course.
    config = AnchorConfig(physical_lines=True, lines_pumping=(0.3, 0.5))
    assert config.for_segment(0.8, pumping=0.6).lines == pytest.approx(0.8)
    assert config.for_segment(0.8, pumping=0.4).lines == pytest.approx(0.4)
    assert config.for_segment(0.8, pumping=0.2).lines == 0.0
    assert config.for_segment(0.8).lines == 0.0  # not measured: the window means
    assert AnchorConfig(physical_lines=True).for_segment(0.8, pumping=-0.5).lines == pytest.approx(0.8)
    n = 80
    swing, fade = 0.05 * np.sin(np.arange(n) * 2 * np.pi / 40), np.linspace(0.0, 0.15, n)  # R^2 0.46
    inputs = ((0.3 + fade + swing)[:, None, None, None] * np.ones((1, 8, 8, 3))).astype(np.float32)
    outputs = np.full_like(inputs, 0.5)

    def error(**options):  # how far the output is from "the input without its swing"
        result = run(SlowAppearanceAnchor(AnchorConfig(grid_rows=8, lines=1.0, **options)), inputs, outputs)
        return max(np.abs(out - (0.3 + fade[t])).max() for t, out in result)

    default, lower, whole = error(), error(lines_fade_share=(0.35, 0.55)), error(lines_fade_share=(0.0, 0.1))
    assert whole < lower < 0.7 * default, (whole, lower, default)  # 0.075 at share 0, 0.047 at 0.55
    no_line = run(SlowAppearanceAnchor(AnchorConfig(grid_rows=8, fade=False, lines_fade_share=(0.35, 0.55))), inputs, outputs)
    assert len(list(no_line)) == n  # no shot line fitted (no fade, no lines): the option has nothing to do
    with pytest.raises(InputError):
        AnchorConfig(lines_pumping=(0.5, 0.3)).check()
    with pytest.raises(InputError):
        AnchorConfig(lines_fade_share=(0.6, 0.2)).check()
