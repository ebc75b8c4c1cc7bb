"""Tests for unflicker.atlas: a textured plane moving by a known shift under known global flicker."""

import copy

import cv2
import numpy as np
import pytest
import torch

from unflicker.atlas import (
    AtlasConfig,
    GridOptions,
    MLPOptions,
    fit,
    fit_video,
    shots_from_starts,
    windows,
)
from unflicker.atlas.common import rigidity_energy
from unflicker.atlas.mlp import CoordinateMLP
from unflicker.errors import InputError
from unflicker.metrics import flicker_index, warp_error

H, W = 64, 96
SHIFT = (1.5, 0.5)  # content motion per frame, pixels (x, y)
M = 10  # interior margin: content entering the frame is not compared


def texture(h, w, seed=0, sigma=2.0):
    """(h, w, 3) float32 smooth random colour texture in [0.15, 0.75], detail size ~sigma pixels."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return 0.15 + 0.6 * noise


def moving_plane(n, shift=SHIFT, seed=0, flicker_seed=1, sigma=2.0):
    """(clean, flickering, gains): frame t shows the texture moved by t * shift, times gain_t."""
    pad = int(np.ceil(max(abs(s) for s in shift) * n)) + 4
    big = texture(H + 2 * pad, W + 2 * pad, seed, sigma)
    clean = np.stack([
        cv2.warpAffine(big, np.float32([[1, 0, shift[0] * t - pad], [0, 1, shift[1] * t - pad]]), (W, H),
                       flags=cv2.INTER_LINEAR)
        for t in range(n)
    ])
    gains = np.random.default_rng(flicker_seed).uniform(0.7, 1.3, n).astype(np.float32)
    return clean, np.clip(clean * gains[:, None, None, None], 0, 1), gains


def grid_config(**kw):
    return AtlasConfig(steps=kw.pop("steps", 80), threads=1, **kw)


def interior(x):
    return x[..., M:-M, M:-M, :]


@pytest.fixture(scope="module")
def plane_fit():
    clean, flick, _ = moving_plane(12)
    atlas = fit(flick, None, grid_config())
    rendered = np.stack([atlas.render(t) for t in range(len(flick))])
    return clean, flick, atlas, rendered


def test_grid_atlas_removes_global_flicker(plane_fit):
    clean, flick, _, rendered = plane_fit
    fi_in, fi_clean, fi_atlas = (flicker_index(x)["luma"] for x in (flick, clean, rendered))
    assert fi_in > 0.05
    assert fi_atlas < 0.05 * fi_in and fi_atlas < fi_clean + 2e-3
    e_in, e_clean, e_atlas = (warp_error(interior(x), interior(clean)) for x in (flick, clean, rendered))
    assert e_atlas < 0.05 * e_in
    assert e_atlas < 3 * e_clean + 1e-4


def test_grid_atlas_reconstructs_input_and_keeps_shape(plane_fit):
    _, flick, atlas, rendered = plane_fit
    assert rendered.shape == flick.shape and rendered.dtype == np.float32
    assert rendered.min() >= 0 and rendered.max() <= 1
    recon = np.stack([atlas.reconstruct(t) for t in range(len(flick))])
    mse = np.mean((interior(recon) - interior(flick)) ** 2)
    assert 10 * np.log10(1 / mse) > 32
    assert atlas.losses[-1] < atlas.losses[0]


def test_grid_mapping_follows_the_translation(plane_fit):
    _, flick, atlas, _ = plane_fit
    base = atlas.mapping(0)
    assert base.shape == (H, W, 2)
    for t in (3, 7, 11):
        # Frame t at pixel p shows frame 0's content at p - t * shift.
        offset = np.median((atlas.mapping(t) - base)[M:-M, M:-M].reshape(-1, 2), axis=0)
        assert np.allclose(offset, -t * np.float32(SHIFT), atol=1.0), (t, offset)


def test_whole_frame_rendering_matches_rendering_at_the_pixels(plane_fit):
    # Whole frames read the node fields by upsampling; explicit pixels by grid_sample: same model.
    model = copy.deepcopy(plane_fit[2].model)  # the fixture is shared
    with torch.no_grad():
        model.deform.normal_(0, 2.0, generator=torch.Generator().manual_seed(3))
        model.offset.normal_(0, 0.1, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 5, 11])
    fast = model.render(t)
    explicit = model.render(t, model.frame_pixels(t))
    for a, b in zip(fast, explicit):
        assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    grads = []
    for pts in (None, model.frame_pixels(t)):
        model.zero_grad()
        model.render(t, pts)[1].square().mean().backward()
        grads.append([p.grad.clone() for p in (model.deform, model.gain, model.offset)])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-7), float((a - b).abs().max())


def test_windows_cover_and_overlap():
    assert windows(50, 120, 20) == [range(0, 50)]
    wins = windows(250, 120, 20)
    assert wins[0].start == 0 and wins[-1].stop == 250
    assert all(len(w) == 120 for w in wins)
    assert all(a.stop - b.start >= 20 for a, b in zip(wins, wins[1:]))
    with pytest.raises(InputError):
        windows(10, 5, 5)


def test_fit_video_crossfades_windows_continuously():
    clean, _, _ = moving_plane(18)
    # Flicker around a rising trend, so the two windows' atlases settle at different levels.
    gains = np.random.default_rng(5).uniform(0.0, 0.3, 18) + np.where(np.arange(18) < 9, 0.6, 1.1)
    flick = np.clip(clean * gains[:, None, None, None].astype(np.float32), 0, 1)
    config = grid_config(steps=40, window=12, overlap=6)
    assert windows(18, 12, 6) == [range(0, 12), range(6, 18)]
    reports = []
    video = fit_video(flick, None, config, progress=reports.append)
    rendered = np.stack([video.render(t) for t in range(len(flick))])
    assert rendered.shape == flick.shape and rendered.dtype == np.float32
    # Progress after every step, the frames past the last window's end in proportion to the steps, and
    # each window's end (12 / 18, 18 / 18) once, when it is rendered.
    assert reports == sorted(reports) and len(reports) == 2 * 40 and reports[-1] == 1.0
    assert reports[:40] == pytest.approx([12 / 18 * k / 40 for k in range(1, 41)])
    assert reports[40:] == pytest.approx([(12 + 6 * k / 40) / 18 for k in range(1, 41)])
    assert reports.count(12 / 18) == 1 and reports.count(1.0) == 1

    def level(x):
        return float(interior(x).mean())

    # The same fits on their own: what switching from one window to the next without a fade gives.
    first, second = fit(flick[:12], None, config), fit(flick[6:], None, config)
    hard_jump = abs(level(second.render(0)) - level(first.render(6)))
    assert hard_jump > 0.03
    assert np.allclose(rendered[5], first.render(5), atol=2e-3)
    assert np.allclose(rendered[12], second.render(6), atol=2e-3)
    jumps = np.abs(np.diff([level(x) for x in rendered]))
    assert jumps.max() < 0.35 * hard_jump, (jumps, hard_jump)
    input_jumps = np.abs(np.diff([level(x) for x in flick]))
    assert jumps.max() < 0.2 * input_jumps.max()


def test_one_frame_shot_is_the_frame_and_shots_are_checked():
    clean, flick, _ = moving_plane(8)
    shots = shots_from_starts([3, 4], 8)
    assert shots == [range(0, 3), range(3, 4), range(4, 8)]
    video = fit_video(flick, shots, grid_config(steps=10))
    assert np.allclose(video.render(3), flick[3], atol=1e-3)
    assert not np.allclose(video.render(2), flick[2], atol=1e-2)
    with pytest.raises(InputError):
        fit_video(flick, [range(0, 3), range(4, 8)], grid_config())
    with pytest.raises(InputError):
        fit_video(flick, [range(0, 9)], grid_config())


def test_empty_and_malformed_inputs_raise():
    with pytest.raises(InputError):
        fit_video(np.zeros((0, H, W, 3), np.float32))
    with pytest.raises(InputError):
        fit(np.zeros((0, H, W, 3), np.float32))
    with pytest.raises(InputError):
        fit(np.zeros((4, H, W), np.float32))
    with pytest.raises(InputError):
        fit(np.zeros((4, H, W, 3), np.float32), [], grid_config())
    with pytest.raises(InputError):
        fit(np.zeros((4, H, W, 3), np.float32), None, AtlasConfig(backend="nope"))


def test_single_frame_clip_fits():
    _, flick, _ = moving_plane(1)
    atlas = fit(flick, None, grid_config(steps=20))
    assert atlas.render(0).shape == (H, W, 3)
    assert np.abs(atlas.reconstruct(0) - flick[0]).mean() < 0.02


@pytest.mark.parametrize("crop", [None, (24, 32)])
def test_grid_fit_is_the_same_bits_with_two_lanes(crop):
    """Each step's two parts run on two threads with lanes=2; the atlas must not change."""
    _, flick, _ = moving_plane(9)
    config = grid_config(steps=12, grid=GridOptions(crop=crop))
    one, two = fit(flick, None, config, lanes=1), fit(flick, None, config, lanes=2)
    assert one.losses == two.losses
    for t in (0, 4, 8):
        assert np.array_equal(one.render(t), two.render(t))
        assert np.array_equal(one.mapping(t), two.mapping(t))


def test_rigidity_energy_is_smallest_for_rotations():
    angle = 0.3
    rot = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
    e_rot = float(rigidity_energy(rot))
    assert abs(e_rot - 2 * np.sqrt(2)) < 0.01
    for other in (1.3 * rot, torch.tensor([[1.0, 0.4], [0.0, 1.0]]), torch.diag(torch.tensor([1.0, 0.5]))):
        assert float(rigidity_energy(other)) > e_rot + 0.05


def test_coordinate_mlp_layout():
    net = CoordinateMLP(2, 3, width=16, layers=8, frequencies=10, skips=(4, 7))
    assert net.layers[0].in_features == 40 and net.layers[4].in_features == 16 + 40
    assert net.layers[7].in_features == 16 + 40 and net.layers[7].out_features == 3
    assert torch.allclose(net.freqs, torch.tensor([2.0**j * np.pi for j in range(10)]))
    out = net(torch.rand(5, 2))
    assert out.shape == (5, 3) and out.abs().max() < 1


def test_mlp_short_run_reduces_loss_and_reconstructs():
    clean, _, _ = moving_plane(6, sigma=8.0)
    small = np.stack([cv2.resize(f, (32, 24), interpolation=cv2.INTER_AREA) for f in clean])
    opts = MLPOptions(mapping_width=64, atlas_width=64, batch=1024, pretrain_iters=3, global_offset=12.0)
    config = AtlasConfig(backend="mlp", steps=100, lr=3e-3, mlp=opts, device="cpu", threads=1)
    atlas = fit(small, None, config)
    first, last = np.mean(atlas.losses[:10]), np.mean(atlas.losses[-10:])
    assert last < 0.5 * first
    rendered = np.stack([atlas.render(t) for t in range(len(small))])
    assert rendered.shape == small.shape
    mse = np.mean((rendered - small) ** 2)
    baseline = np.mean((small - small.mean((0, 1, 2))) ** 2)
    assert mse < 0.5 * baseline and 10 * np.log10(1 / mse) > 25
    assert atlas.mapping(0).shape == (24, 32, 2)


def test_our_adam_matches_torchs():
    # The grid fit's Adam avoids torch.optim's import cost; it must step exactly as torch.optim.Adam,
    # with a parameter that gets no gradient for a while (a grid level not yet unlocked).
    from unflicker.atlas.grid_fit import Adam

    torch.manual_seed(0)
    ours = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = Adam([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]], "lr": 0.03}])
    opt_theirs = torch.optim.Adam([{"params": [theirs[0]], "lr": 0.1}, {"params": [theirs[1]], "lr": 0.03}])
    for step in range(12):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss = (params[0] ** 3).sum() + ((params[1] - 1) ** 2).sum() * (step >= 5)
            loss.backward()
            if step < 5:
                params[1].grad = None
            opt.step()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_our_adam_steps_a_group_of_parameters_with_different_step_counts_as_one_at_a_time():
    # Parameters of one group step together (torch's _foreach ops) when they share a step count; a level
    # unlocked later has fewer steps. The result must be the bits of stepping each one alone, and torch's.
    from unflicker.atlas.grid_fit import Adam

    torch.manual_seed(1)
    start = [torch.randn(6, 2), torch.randn(3, 4, 5), torch.randn(7)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    alone = [p.clone() for p in start]
    moments = [[torch.zeros_like(p), torch.zeros_like(p), 0] for p in start]
    opt_ours = Adam([{"params": ours[:2], "lr": 0.05}, {"params": ours[2:], "lr": 0.02}])
    opt_theirs = torch.optim.Adam([{"params": theirs[:2], "lr": 0.05}, {"params": theirs[2:], "lr": 0.02}])
    lrs = [0.05, 0.05, 0.02]

    def loss_of(params, step):
        return (params[0] ** 3).sum() + (params[1].sin() * (step >= 4)).sum() + ((params[2] - 1) ** 2).sum()

    for step in range(10):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss_of(params, step).backward()
            if step < 4:
                params[1].grad = None  # not unlocked yet: no step, its count falls behind
        opt_ours.step()
        opt_theirs.step()
        # The formula one parameter at a time, as Adam.step computed it before the _foreach ops.
        leaves = [p.clone().requires_grad_() for p in alone]
        loss_of(leaves, step).backward()
        with torch.no_grad():
            for k, (p, leaf) in enumerate(zip(alone, leaves)):
                if k == 1 and step < 4:
                    continue
                m, v, n = moments[k]
                n += 1
                moments[k][2] = n
                m.lerp_(leaf.grad, 1 - 0.9)
                v.mul_(0.999).addcmul_(leaf.grad, leaf.grad, value=1 - 0.999)
                denom = (v.sqrt() / (1 - 0.999**n) ** 0.5).add_(1e-8)
                p.addcdiv_(m, denom, value=-lrs[k] / (1 - 0.9**n))
    for a, b, c in zip(ours, alone, theirs):
        assert torch.equal(a.detach(), b)
        assert torch.allclose(a, c, atol=1e-6)


def test_default_steps_visit_each_frame_of_a_short_span_at_most_max_visits_times():
    from unflicker.atlas.grid_fit import DEFAULT_STEPS, default_steps

    opts = GridOptions()  # 4 frames per step, 24 visits
    assert default_steps(2, opts) == 24  # both frames in every step
    assert default_steps(8, opts) == 48
    assert default_steps(60, opts) == default_steps(42, opts) == DEFAULT_STEPS  # full segments: unchanged
    assert default_steps(2, GridOptions(max_visits=None)) == DEFAULT_STEPS
    # The cap is what a default fit runs; explicit steps are taken as given.
    _, flick, _ = moving_plane(3)
    assert len(fit(flick, None, AtlasConfig(threads=1)).losses) == 24
    assert len(fit(flick, None, AtlasConfig(steps=30, threads=1)).losses) == 30


@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (1, 3, 1, 5), (1, 3, 4, 1)])
def test_image_loss_and_its_backward_match_autograd_of_the_plain_formula(shape):
    from unflicker.atlas.config import LossWeights
    from unflicker.atlas.grid_fit import _ImageLoss

    wts, of = LossWeights(), 4
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randn(*shape, dtype=torch.float64, generator=gen)
    err = pred - target
    h, w = shape[-2:]
    plain = wts.rgb * err.square().sum() / (of * h * w)
    if w > 1:
        plain = plain + wts.gradient * (err[..., 1:] - err[..., :-1]).square().sum() / (of * h * (w - 1))
    if h > 1:
        plain = plain + wts.gradient * (err[..., 1:, :] - err[..., :-1, :]).square().sum() / (of * (h - 1) * w)
    ours = _ImageLoss.apply(pred, target, wts, of)
    assert torch.allclose(ours, plain, rtol=1e-12)
    (g_ours,) = torch.autograd.grad(0.37 * ours, pred)  # an output gradient other than 1 reaches backward
    (g_plain,) = torch.autograd.grad(0.37 * plain, pred)
    assert torch.allclose(g_ours, g_plain, rtol=1e-10, atol=1e-10)


def test_half_size_steps_see_the_frames_2x2_means_at_their_centres(plane_fit):
    # The early steps render at the centres of 2x2 pixel blocks and compare with the blocks' means:
    # for the fitted model, that is (up to the bilinear sampling of a smooth texture) the full-size
    # rendering's 2x2 means.
    from unflicker.atlas.grid_fit import _HalfSize

    _, flick, atlas, _ = plane_fit
    frames = torch.from_numpy(flick).permute(0, 3, 1, 2).contiguous()
    half = _HalfSize(frames)
    t = torch.tensor([0, 6, 11])
    pts, target = half.pixels_of(len(t)), half.frames.index_select(0, t)
    assert pts.shape == (3, H // 2, W // 2, 2) and target.shape == (3, 3, H // 2, W // 2)
    assert torch.equal(pts[0, 1, 2], torch.tensor([4.5, 2.5]))
    assert torch.allclose(target[1, :, 1, 2], frames[6, :, 2:4, 4:6].mean((1, 2)))
    with torch.no_grad():
        small = atlas.model.render(t, pts)[1]
        full = torch.nn.functional.avg_pool2d(atlas.model.render(t)[1], 2)
    m = M // 2
    assert (small - full)[..., m:-m, m:-m].abs().mean() < 0.01


def test_a_fit_with_half_size_steps_is_as_good_as_one_without():
    clean, flick, _ = moving_plane(12)
    scores, losses = [], []
    for coarse in (0.0, 0.5):
        atlas = fit(flick, None, grid_config(grid=GridOptions(coarse_until=coarse)))
        rendered = np.stack([atlas.render(t) for t in range(len(flick))])
        scores.append(warp_error(interior(rendered), interior(clean)))
        losses.append(atlas.losses)
    assert losses[0][:40] != losses[1][:40] and len(losses[0]) == len(losses[1])  # the half-size steps ran
    e_in = warp_error(interior(flick), interior(clean))
    assert scores[1] < 0.05 * e_in
    assert scores[1] < 1.5 * scores[0] + 1e-4


def test_half_size_steps_are_not_used_with_crops():
    _, flick, _ = moving_plane(6)
    configs = [grid_config(steps=10, grid=GridOptions(crop=(24, 32), coarse_until=c)) for c in (0.0, 0.5)]
    fits = [fit(flick, None, config) for config in configs]
    assert fits[0].losses == fits[1].losses


def test_a_fit_does_not_import_sympy():
    # autograd given an output gradient imports torch's symbolic shapes (sympy) on first use: half a
    # second of every run's start-up. The fit differentiates scalars only.
    import subprocess
    import sys

    code = ("import sys, numpy as np, torch\nfrom unflicker.atlas import fit, AtlasConfig\n"
            "before = 'sympy' in sys.modules\n"
            "fit(np.random.default_rng(0).random((3, 24, 32, 3)).astype(np.float32), None, AtlasConfig(steps=4))\n"
            "print(before, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.split()
    if before == "True":
        pytest.skip("this torch imports sympy with torch itself")
    assert after == "False"
