import cv2
import numpy as np
import pytest

from unflicker import synth
from unflicker.errors import InputError
from unflicker.metrics import psnr
from unflicker.projection import FlickerModel, ProjectionConfig, hat_basis, low_pass


def texture(h=96, w=160, seed=0):
    """A photo-like test image: smooth shading plus sharp-edged blocks and fine noise, in [0.05, 0.9]."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(0, 1, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    blocks = cv2.resize(rng.uniform(0, 1, (max(h // 8, 1), max(w // 8, 1), 3)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_NEAREST)
    fine = rng.normal(0, 0.03, (h, w, 3)).astype(np.float32)
    return np.clip(0.45 * coarse + 0.4 * blocks + fine + 0.05, 0.05, 0.9).astype(np.float32)


def high_pass(image):
    return image - cv2.GaussianBlur(image, (0, 0), 3)


def test_hat_basis_interpolates_linearly_and_sums_to_one():
    x = np.array([0.0, 0.1, 0.5, 1.0, 1.5])
    weights = hat_basis(x, 3)
    assert np.allclose(weights.sum(-1), 1)
    assert np.allclose(weights @ np.array([0.0, 0.5, 1.0]), np.clip(x, 0, 1))


def test_a_frame_projected_onto_itself_is_unchanged():
    frame = texture()
    assert np.abs(FlickerModel().project(frame, frame) - frame).max() < 2e-3


@pytest.mark.parametrize("kind", ["global", "colour", "local", "mains", "tone"])
def test_each_kind_of_synthetic_flicker_is_undone(kind):
    # The target is the clean image: the model must be able to express the inverse of each kind.
    clean = texture()
    flickering = synth.add_flicker(clean[None], kind=kind, strength=1.0, seed=3)[0]
    projected = FlickerModel().project(flickering, clean)
    before, after = psnr(flickering, clean), psnr(projected, clean)
    assert after > max(before + 6, 30), (kind, before, after)


@pytest.mark.parametrize("tolerance, min_detail", [(0.0, 0.9), (ProjectionConfig().residual_tolerance, 0.8)])
def test_a_flaw_in_the_target_is_ignored_and_the_input_detail_kept(tolerance, min_detail):
    # A blurred target with a wrong-coloured patch (an atlas flaw): the exposure change still
    # comes through, the patch does not, and the fine detail is the input's (the model alone keeps
    # all of it; the residual transfer takes the target's small differences, some of its blur too).
    clean = texture()
    dark = clean * 0.7
    target = cv2.GaussianBlur(clean, (0, 0), 1.5)
    target[30:50, 60:90] = [0.9, 0.1, 0.1]
    projected = FlickerModel(ProjectionConfig(residual_tolerance=tolerance)).project(dark, target)
    patch = (slice(30, 50), slice(60, 90))
    assert np.abs(projected[patch] - clean[patch]).mean() < 0.05
    assert np.abs(target[patch] - clean[patch]).mean() > 0.2
    assert psnr(projected, clean) > psnr(target, clean) + 5
    detail = np.std(high_pass(projected)) / np.std(high_pass(clean))
    assert min_detail < detail < 1.1


def test_small_differences_the_model_cannot_express_are_kept_large_ones_dropped():
    # A target = the frame plus a fine pattern of small amplitude (flicker that is not smooth, as
    # a dehazing's) and one large wrong patch (a flaw): the pattern comes through, the patch not.
    frame = texture()
    pattern = np.where((np.arange(96)[:, None] // 3 + np.arange(160) // 3) % 2 == 0, 0.006, -0.006)
    target = frame + pattern.astype(np.float32)[..., None]
    target[30:50, 60:90] += 0.3
    kept = FlickerModel().project(frame, target) - frame
    model_only = FlickerModel(ProjectionConfig(residual_tolerance=0.0)).project(frame, target) - frame
    outside = np.ones((96, 160), bool)
    outside[26:54, 56:94] = False
    gain = lambda diff: float(np.mean(diff[outside] * pattern[outside, None]) / np.mean(pattern**2))  # noqa: E731
    assert gain(kept) > 0.85 and abs(gain(model_only)) < 0.1  # weight exp(-(0.006 / 0.03)^2) = 0.96
    patch = (slice(30, 50), slice(60, 90))
    assert np.abs(kept[patch]).mean() < 0.05  # of 0.3: only what the smooth model itself bends to
    assert np.abs(kept[patch] - model_only[patch]).mean() < 0.005  # the transfer adds nothing there


def test_the_low_pass_keeps_the_mean_and_coarse_shapes_and_removes_fine_ones():
    image = texture(180, 320)
    assert low_pass(image, 0.0) is image
    fine = low_pass(high_pass(image), 0.01)  # sigma 3.2 px: the 3-px high pass is nearly gone
    assert np.std(fine) < 0.25 * np.std(high_pass(image))
    coarse = cv2.GaussianBlur(image, (0, 0), 20)
    smooth = low_pass(coarse, 0.01)
    assert smooth.shape == image.shape and smooth.dtype == np.float32
    assert abs(float(smooth.mean() - coarse.mean())) < 1e-3 and np.abs(smooth - coarse).max() < 0.02
    big = texture(1080, 1920)  # blurred at a reduced size: about the same as a full-size blur
    exact = cv2.GaussianBlur(big, (0, 0), 0.01 * 1920, borderType=cv2.BORDER_REFLECT)
    assert np.abs(low_pass(big, 0.01) - exact).mean() < 2e-3


def test_the_low_pass_of_the_kept_differences_keeps_the_input_detail_and_coarse_differences():
    # The network's output is the frame softened, plus a coarse non-smooth difference (as a
    # dehazing's, following the scene's depth). Added pixel by pixel, the small differences take
    # the softening along; low-passed, the output keeps the frame's detail and the coarse part.
    frame = texture(180, 320)
    depth = np.zeros((180, 320, 1), np.float32)
    depth[:, 160:] = 0.012
    target = cv2.GaussianBlur(frame, (0, 0), 1.5) + depth
    per_pixel = FlickerModel(ProjectionConfig(residual_blur=0.0)).project(frame, target)
    low_passed = FlickerModel(ProjectionConfig(residual_blur=0.01)).project(frame, target)
    detail = lambda out: float(np.std(high_pass(out)) / np.std(high_pass(frame)))  # noqa: E731
    assert detail(low_passed) > detail(per_pixel) + 0.02 and detail(low_passed) > 0.94  # per pixel: 0.918
    assert psnr(low_passed, frame + depth) > psnr(per_pixel, frame + depth) + 2
    step = lambda out: float(np.mean((out - frame)[20:160, 200:300]) - np.mean((out - frame)[20:160, 20:120]))  # noqa: E731
    assert step(low_passed) > 0.008  # of 0.012: the coarse difference still comes through


def test_a_stronger_spatial_ridge_fits_flatter_gains():
    clean = texture()
    flickering = synth.add_flicker(clean[None], kind="local", strength=1.0, seed=1)[0]
    loose = FlickerModel(ProjectionConfig(ridge=1e-4)).fit(flickering, clean)
    stiff = FlickerModel(ProjectionConfig(ridge=10.0)).fit(flickering, clean)
    assert np.std(loose.gain, axis=(1, 2)).min() > 0.02
    assert np.std(stiff.gain, axis=(1, 2)).max() < 0.1 * np.std(loose.gain, axis=(1, 2)).min()
    assert np.abs(stiff.row_gain).max() < 0.1 * np.abs(loose.row_gain).max()


def test_size_and_dtype_follow_the_input():
    frame = texture(33, 17)
    out = FlickerModel().project(frame, np.clip(frame * 1.2, 0, 1))
    assert out.shape == frame.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("fields", [dict(grid=(0, 3)), dict(rows=-1), dict(tone_knots=1), dict(fit_side=4),
                                    dict(ridge=-1.0), dict(global_ridge=-1.0), dict(iterations=0),
                                    dict(residual_tolerance=-0.1), dict(residual_blur=-0.01), dict(residual_blur=1.0)])
def test_bad_settings_are_refused(fields):
    with pytest.raises(InputError):
        FlickerModel(ProjectionConfig(**fields))


def test_mismatched_frames_are_refused():
    with pytest.raises(InputError, match="target"):
        FlickerModel().fit(texture(), texture(40, 40))


def test_the_returned_correction_re_applies_to_the_model_frame_the_projection_started_from():
    # The neural method keeps the fitted correction (a few numbers) instead of the model's frame
    # and re-applies it where the gate needs the model: it must be that frame bit for bit.
    frame = texture(120, 200, seed=3)
    target = np.clip(cv2.GaussianBlur(frame, (0, 0), 1.0) * 1.15 + 0.02, 0, 1).astype(np.float32)
    alone = FlickerModel(ProjectionConfig(residual_tolerance=0.0))
    projected, correction = alone.project_with_correction(frame, target)
    assert np.array_equal(correction.apply(frame), projected)  # without a remainder the output is the model
    projected, correction = FlickerModel().project_with_correction(frame, target)
    model = correction.apply(frame)
    assert np.array_equal(model, correction.apply(frame))
    assert 0 < np.abs(projected - model).max() < 0.05  # the remainder is added on top of exactly that frame
    assert np.array_equal(projected, FlickerModel().project(frame, target))


def test_a_correction_applies_its_written_out_formula_bit_for_bit():
    """FlickerCorrection.apply (planes, reused buffers, a table lookup) gives exactly the model
    written out: per channel x * (bilinear gain grid + row gain) + the tone term at the nearest of
    4096 levels, clipped; inputs outside [0, 1] included."""
    from unflicker.projection import _LUT_LEVELS, FlickerCorrection, _axis, hat_basis

    rng = np.random.default_rng(4)
    for h, w in ((37, 53), (300, 530)):  # one row band; three, the last one short (frames.row_bands)
        frame = rng.random((h, w, 3), dtype=np.float32) * 1.4 - 0.2
        for rows in (24, 0):
            fix = FlickerCorrection(rng.random((3, 4, 5), dtype=np.float32) * 0.4 + 0.8,
                                    rng.random((3, rows), dtype=np.float32) * 0.1,
                                    rng.random((3, 6), dtype=np.float32) * 0.1)
            expected = np.empty_like(frame)
            for c in range(3):
                gain = hat_basis(_axis(h), 4) @ fix.gain[c] @ hat_basis(_axis(w), 5).T
                if rows:
                    gain = gain + (hat_basis(_axis(h), rows) @ fix.row_gain[c])[:, None]
                table = np.interp(_LUT_LEVELS, np.linspace(0, 1, 6), fix.tone[c]).astype(np.float32)
                level = (np.clip(frame[..., c], 0, 1) * np.float32(4095) + np.float32(0.5)).astype(np.int32)
                expected[..., c] = np.clip(frame[..., c] * gain + table[level], 0, 1)
            assert np.array_equal(fix.apply(frame), expected)


@pytest.mark.parametrize("blur", [0.0, 0.02])
def test_the_kept_remainder_is_its_written_out_formula_bit_for_bit(blur):
    """The projected frame, computed band by band: model + exp(-(r / tolerance)^2) r (low-passed
    first with residual_blur), clipped, r = target - model, over the whole frame."""
    rng = np.random.default_rng(5)
    frame = rng.random((300, 530, 3), dtype=np.float32)
    target = np.clip(frame * 1.1 + rng.normal(0, 0.03, frame.shape), 0, 1).astype(np.float32)
    model_config = ProjectionConfig(residual_blur=blur)
    projected, correction = FlickerModel(model_config).project_with_correction(frame, target)
    model = correction.apply(frame)
    r = target - model
    weight = r / np.float32(model_config.residual_tolerance)
    kept = low_pass(np.exp(-(weight * weight)) * r, blur)
    assert np.array_equal(projected, np.clip(kept + model, 0, 1))


def test_planes_are_the_channels_of_any_layout():
    from unflicker.frames import planes

    image = np.random.default_rng(0).random((7, 10, 3), dtype=np.float32)
    for view in (image, image[:, ::2], image[::-1], np.asfortranarray(image), image.astype(np.float64)):
        out = planes(view)
        assert len(out) == 3 and all(p.flags.c_contiguous for p in out)
        for c in range(3):
            np.testing.assert_array_equal(out[c], view[..., c])


def test_luma_is_the_weighted_sum_of_the_channels_of_any_layout():
    from unflicker.frames import LUMA, luma

    image = np.random.default_rng(1).random((7, 10, 3), dtype=np.float32)
    for view in (image, image[:, ::2], image[::-1], image.astype(np.float64)):
        out = luma(view)
        assert out.shape == view.shape[:2] and out.dtype == np.float32
        np.testing.assert_allclose(out, view @ LUMA.astype(view.dtype), atol=1e-6)


def _dense_fit(model: FlickerModel, frame: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The fit written out with the whole (pixels x parameters) design in float64: per channel, robust
    (Huber, the lower median's scale) least squares with the ridge pulling towards the identity."""
    cfg = model.config
    small, small_target = model._small(frame), model._small(target)
    h, w = small.shape[:2]
    by, bx = hat_basis((np.arange(h) + 0.5) / h, cfg.grid[0]), hat_basis((np.arange(w) + 0.5) / w, cfg.grid[1])
    grid = (by[:, None, :, None] * bx[None, :, None, :]).reshape(h * w, -1).astype(np.float64)
    rows = np.repeat(hat_basis((np.arange(h) + 0.5) / h, cfg.rows), w, axis=0).astype(np.float64) if cfg.rows \
        else np.zeros((h * w, 0))
    n_grid = cfg.grid[0] * cfg.grid[1]
    mean = np.full((n_grid, n_grid), 1.0 / n_grid)
    ridge = np.zeros((n_grid + cfg.rows + cfg.tone_knots,) * 2)
    ridge[:n_grid, :n_grid] = cfg.ridge * (np.eye(n_grid) - mean) + cfg.global_ridge * mean
    ridge[n_grid:, n_grid:] = np.diag([cfg.ridge] * cfg.rows + [cfg.global_ridge] * cfg.tone_knots)
    identity = np.concatenate([np.ones(n_grid), np.zeros(cfg.rows + cfg.tone_knots)])
    thetas = []
    for c in range(3):
        x32 = np.ascontiguousarray(small[..., c]).reshape(-1)
        x, y = x32.astype(np.float64), small_target[..., c].reshape(-1).astype(np.float64)
        design = np.concatenate([x[:, None] * grid, x[:, None] * rows, hat_basis(x32, cfg.tone_knots)], 1)
        penalty = ridge * max(float(np.mean(x32 * x32)), 1e-4) * len(x)
        weights = np.ones_like(x)
        for iteration in range(cfg.iterations):
            weighted = design * weights[:, None]
            theta = np.linalg.solve(weighted.T @ design + penalty, weighted.T @ y + penalty @ identity)
            residual = np.abs(design @ theta - y)
            scale = 2.0 * 1.4826 * np.sort(residual)[(len(residual) - 1) // 2] + 1e-4
            weights = np.minimum(scale / np.maximum(residual, 1e-12), 1.0)
        thetas.append(theta)
    return np.stack(thetas)


@pytest.mark.parametrize("config", [ProjectionConfig(), ProjectionConfig(grid=(1, 1), iterations=1),
                                    ProjectionConfig(grid=(3, 2), rows=0, tone_knots=3)])
def test_the_fit_is_the_dense_least_squares_to_float32_precision(config):
    # The normal equations are summed along the bases' separable structure; they must be the dense
    # design's sums (a fit through float32 products of the design missed them by up to 2e-3).
    rng = np.random.default_rng(3)
    frame = cv2.resize(rng.uniform(0.05, 0.95, (12, 16, 3)).astype(np.float32), (170, 96))
    frame = np.clip(frame + rng.normal(0, 0.05, frame.shape), 0, 1).astype(np.float32)
    gain = cv2.resize(rng.uniform(0.8, 1.2, (2, 3, 3)).astype(np.float32), (170, 96))
    target = np.clip(frame ** 0.9 * gain + 0.02, 0, 1).astype(np.float32)
    target[30:50, 40:90] = 0.9  # a flaw: the robust weights must matter
    model = FlickerModel(config)
    correction = model.fit(frame, target)
    fitted = np.concatenate([correction.gain.reshape(3, -1), correction.row_gain, correction.tone], 1)
    np.testing.assert_allclose(fitted, _dense_fit(model, frame, target), rtol=0, atol=2e-6)
