"""Tests for unflicker.flow on synthetic textures with known motion and known flicker."""

import cv2
import numpy as np
import pytest

from unflicker.errors import InputError
from unflicker.flow import (
    compute_flow,
    consistency_mask,
    flow_pair,
    in_frame_mask,
    normalize_for_flow,
    warp,
)

H, W = 96, 128
M = 12  # interior margin ignored where content enters/leaves the frame


def texture(h, w, seed=0, lo=0.1, hi=0.55):
    """(h, w, 3) float32 smooth colour noise in [lo, hi]."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return lo + (hi - lo) * noise


def shifted_pair(dx, dy, seed=0, margin=16):
    """Frames a, b where b shows a's content moved by (dx, dy) pixels (sub-pixel allowed)."""
    big = texture(H + 2 * margin, W + 2 * margin, seed)
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    size = big.shape[1::-1]
    moved = cv2.warpAffine(big, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    crop = np.s_[margin : margin + H, margin : margin + W]
    return big[crop], moved[crop]


def interior(x):
    return x[M:-M, M:-M]


def epe(f, g):
    return float(np.linalg.norm(interior(f) - interior(g), axis=2).mean())


@pytest.mark.parametrize("dx, dy", [(2.5, -1.25), (-4.0, 3.0), (0.4, 0.2)])
def test_compute_flow_recovers_translation(dx, dy):
    a, b = shifted_pair(dx, dy)
    flow = compute_flow(a, b)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    err = np.abs(interior(flow) - np.float32([dx, dy]))
    assert np.median(err) < 0.1
    assert err.mean() < 0.3


def test_warp_b_by_forward_flow_gives_a():
    a, b = shifted_pair(3.0, -2.0)
    flow = compute_flow(a, b)
    warped = warp(b, flow)
    assert warped.shape == a.shape and warped.dtype == a.dtype
    assert np.abs(interior(warped) - interior(a)).mean() < 0.01
    # Without motion compensation the same frames differ far more.
    assert np.abs(interior(b) - interior(a)).mean() > 0.03


def test_warp_exact_integer_shift_and_layouts():
    img = texture(H, W, 3)
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = 2.0  # sample two pixels to the right
    out = warp(img, flow)
    np.testing.assert_allclose(out[:, :-2], img[:, 2:], atol=1e-6)
    np.testing.assert_allclose(out[:, -1], img[:, -1], atol=1e-6)  # border replicated
    np.testing.assert_allclose(warp(img[..., 0], flow)[:, :-2], img[:, 2:, 0], atol=1e-6)
    many = np.concatenate([img, img], axis=2)  # 6 channels: more than remap takes at once
    np.testing.assert_allclose(warp(many, flow)[..., 3:], out, atol=1e-6)
    with pytest.raises(InputError):
        warp(img, flow[:-1])


def test_warp_along_prepared_maps_is_warp_bit_for_bit(monkeypatch):
    from unflicker import flow as flow_module
    from unflicker.flow import remap_maps, warp_mapped

    rng = np.random.default_rng(5)
    flow = (3 * rng.standard_normal((20, 24, 2))).astype(np.float32)  # sub-pixel, some targets off the frame
    maps = remap_maps(flow)
    grid_x, grid_y = np.meshgrid(np.arange(24, dtype=np.float32), np.arange(20, dtype=np.float32))
    assert np.array_equal(maps[0], flow[..., 0] + grid_x) and np.array_equal(maps[1], flow[..., 1] + grid_y)
    images = [rng.random((20, 24, c), dtype=np.float32) for c in (1, 2, 3, 4, 7, 9)]  # 7, 9: remapped in chunks
    images += [rng.random((20, 24), dtype=np.float32), (255 * rng.random((20, 24, 3))).astype(np.uint8)]
    for image in images:
        for interpolation in (cv2.INTER_LINEAR, cv2.INTER_CUBIC):
            expected = warp(image, flow, interpolation)
            got = warp_mapped(image, maps, interpolation)
            assert got.shape == image.shape and got.dtype == image.dtype and np.array_equal(got, expected)
    built = []
    monkeypatch.setattr(flow_module, "remap_maps", lambda f: built.append(1) or remap_maps(f))
    warp(images[5], flow)  # nine channels, three chunks: the maps made once
    assert len(built) == 1
    with pytest.raises(InputError):
        warp_mapped(images[2][:-1], maps)


def test_consistency_mask_formula():
    fw = np.zeros((20, 30, 2), np.float32)
    fw[...] = (2.0, 1.0)
    assert consistency_mask(fw, -fw).all()
    # Backward flow zero: round trip |(2, 1)|^2 = 5 > 0.01 * 5 + 0.5 -> all occluded.
    assert not consistency_mask(fw, np.zeros_like(fw)).any()
    # Small round-trip error under the 0.5 px^2 tolerance stays valid.
    assert consistency_mask(fw, -fw + 0.4).all()
    # A vertical motion edge: forward difference flags the column just left of it.
    edge = np.zeros_like(fw)
    edge[:, 15:, 0] = 1.0
    mask = consistency_mask(edge, -edge)
    assert not mask[:, 14].any()
    assert mask[:, :13].all() and mask[:, 16:].all()
    # Gradient threshold 0.01 |F|^2 + 0.002: a 0.1 px step is a boundary, a 0.03 px step is not.
    edge[:, 15:, 0] = 0.1
    assert not consistency_mask(edge, -edge)[:, 14].any()
    edge[:, 15:, 0] = 0.03
    assert consistency_mask(edge, -edge).all()


def test_consistency_mask_translation_and_occlusion():
    a, b = shifted_pair(2.5, 1.5)
    assert interior(flow_pair(a, b).valid).mean() > 0.97

    # A square moves 6 px right over a static background: the background strip it
    # covers in b has no match, and the square's edges are motion boundaries.
    bg, fg = texture(H, W, 1), texture(32, 32, 2, 0.5, 0.95)
    x0, y0, d = 40, 32, 6
    a, b = bg.copy(), bg.copy()
    a[y0 : y0 + 32, x0 : x0 + 32] = fg
    b[y0 : y0 + 32, x0 + d : x0 + d + 32] = fg
    pair = flow_pair(a, b)
    assert pair.forward.shape == pair.backward.shape == (H, W, 2)
    assert pair.valid.shape == (H, W) and pair.valid.dtype == bool
    covered = pair.valid[y0 + 4 : y0 + 28, x0 + 32 : x0 + 32 + d]
    assert covered.mean() < 0.3
    far = np.ones((H, W), bool)
    far[y0 - 8 : y0 + 40, x0 - 8 : x0 + 48] = False
    assert pair.valid[far].mean() > 0.85
    assert pair.valid[y0 + 6 : y0 + 26, x0 + 6 : x0 + 26].mean() > 0.9


def test_normalize_for_flow_cancels_gain_and_gamma():
    a = texture(H, W, 4)
    flick = np.clip(1.6 * a**0.8, 0, 1)
    na, nf = normalize_for_flow(a), normalize_for_flow(flick)
    assert na.shape == (H, W) and na.dtype == np.uint8
    assert abs(float(na.mean()) - 128) < 3
    plain_a = a @ np.float32([0.2126, 0.7152, 0.0722]) * 255
    plain_f = flick @ np.float32([0.2126, 0.7152, 0.0722]) * 255
    assert np.abs(na.astype(float) - nf).mean() < 0.2 * np.abs(plain_a - plain_f).mean()
    from_uint8 = normalize_for_flow((a * 255).round().astype(np.uint8))
    assert np.abs(from_uint8.astype(float) - na).mean() < 2


def test_normalize_for_flow_cancels_smooth_gain_field():
    a = texture(H, W, 6)
    ramp = np.linspace(0.5, 1.5, W, dtype=np.float32)[None, :, None]
    shaded = a * ramp  # vignetting-like gain, 3x from left to right
    diff = np.abs(normalize_for_flow(a).astype(float) - normalize_for_flow(shaded))
    assert diff.mean() < 12  # 36 without the division by the local mean


def test_flow_on_flickering_pair_is_robust_with_normalisation():
    a, b = shifted_pair(2.5, -1.5, seed=5)
    clean = compute_flow(a, b)
    flick = np.clip(1.6 * b**0.8, 0, 1)  # gain 1.6 and a gamma change
    normed = compute_flow(a, flick, normalize=True)
    plain = compute_flow(a, flick, normalize=False)
    assert epe(normed, clean) < 0.5
    assert epe(normed, clean) < 0.5 * epe(plain, clean)


def test_in_frame_mask_and_errors():
    flow = np.zeros((10, 12, 2), np.float32)
    flow[..., 0] = 3.0
    mask = in_frame_mask(flow)
    assert mask[:, :9].all() and not mask[:, 9:].any()
    with pytest.raises(InputError):
        compute_flow(np.zeros((10, 12, 3)), np.zeros((10, 13, 3)))
    with pytest.raises(InputError):
        compute_flow(np.zeros((10, 12, 4)), np.zeros((10, 12, 4)))
    with pytest.raises(InputError):
        compute_flow(np.zeros((10, 12)), np.zeros((10, 12)), preset="slow")
    with pytest.raises(InputError):
        consistency_mask(flow, flow[..., :1])


def test_compute_flow_is_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    pairs = [shifted_pair(1.0 + i, -0.5 * i, seed=i) for i in range(4)]
    serial = [compute_flow(a, b) for a, b in pairs]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda p: compute_flow(*p), pairs * 2))
    for i, flow in enumerate(threaded):
        np.testing.assert_array_equal(flow, serial[i % 4])


def test_compute_flow_does_not_depend_on_earlier_calls():
    a, b = shifted_pair(2.0, 0.0, seed=5)
    fresh = compute_flow(a, b)
    small_a, small_b = shifted_pair(1.0, 0.0, seed=6)
    compute_flow(small_a[:24, :32], small_b[:24, :32])  # a different size in between
    np.testing.assert_array_equal(compute_flow(a, b), fresh)


def test_flow_on_clip_with_global_and_local_flicker_matches_clean_flow():
    # A 6-frame pan under synth's global (gain + gamma) and local (smooth gain field) flicker,
    # both at 1.5x their default strength: flow on the flickering clip must stay near the flow
    # of its clean original, and far nearer than without the flicker normalisation.
    from unflicker import synth

    n, (dx, dy), pad = 6, (1.75, -0.75), 16
    big = texture(H + 2 * pad, W + 2 * pad, 7)
    clean = np.stack([
        cv2.warpAffine(big, np.float32([[1, 0, dx * t - pad], [0, 1, dy * t - pad]]), (W, H), flags=cv2.INTER_LINEAR)
        for t in range(n)
    ])
    flick = synth.add_flicker(synth.add_flicker(clean, "local", 1.5, seed=3), "global", 1.5, seed=4)
    assert np.abs(flick - clean).mean() > 0.03  # the flicker is not negligible
    normed, plain = [], []
    for t in range(n - 1):
        reference = compute_flow(clean[t], clean[t + 1])
        normed.append(epe(compute_flow(flick[t], flick[t + 1]), reference))
        plain.append(epe(compute_flow(flick[t], flick[t + 1], normalize=False), reference))
    assert np.mean(normed) < 0.15
    assert np.mean(normed) < 0.3 * np.mean(plain)
    assert all(a < b for a, b in zip(normed, plain))


@pytest.mark.parametrize("shape", [(12, 40), (15, 200), (40, 9)])
def test_compute_flow_on_tiny_frames_keeps_shape(shape):
    # DIS alone crashes the interpreter on some of these sizes; compute_flow pads them.
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 1.0)
    b = np.roll(a, 1, axis=1)
    flow = compute_flow(a, b)
    assert flow.shape == (*shape, 2) and np.isfinite(flow).all()


def test_consistency_mask_terms_are_lai_et_al_s_formula_bit_for_bit():
    """The plane-by-plane sums give exactly, bit for bit, the formula's terms written over the flow's last
    axis (the flows are float32 by then), also for one-row, one-column and strided flows."""
    from unflicker.flow import _lai_terms

    def reference(fw, bw_at_a):
        dx, dy = np.zeros_like(fw), np.zeros_like(fw)
        dx[:, :-1] = fw[:, 1:] - fw[:, :-1]
        dy[:-1, :] = fw[1:, :] - fw[:-1, :]
        return (np.sum(fw**2, axis=2), np.sum(bw_at_a**2, axis=2), np.sum((fw + bw_at_a) ** 2, axis=2),
                np.sum(dx**2 + dy**2, axis=2))

    rng = np.random.default_rng(4)
    big = rng.normal(0, 3, (61, 93, 2)).astype(np.float32)
    shapes = [rng.normal(0, 3, shape).astype(np.float32) for shape in ((1, 40, 2), (40, 1, 2), (1, 1, 2), (48, 64, 2))]
    for fw in [*shapes, big[::2, ::3], big[:, ::-1, ::-1]]:
        bw_at_a = rng.normal(0, 3, fw.shape).astype(np.float32)
        for ours, theirs in zip(_lai_terms(fw, bw_at_a), reference(fw, bw_at_a)):
            assert ours.dtype == theirs.dtype == np.float32
            assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    fw = cv2.GaussianBlur(rng.normal(0, 0.5, (60, 90, 2)), (0, 0), 2).astype(np.float64)  # cast like any input
    bw = -fw + rng.normal(0, 0.1, fw.shape)
    mask = consistency_mask(fw, bw)
    assert 0.2 < mask.mean() < 0.8 and np.array_equal(mask, consistency_mask(fw.astype(np.float32), bw.astype(np.float32)))


@pytest.mark.parametrize("normalize", [True, False])
def test_uint16_frames_give_the_flow_of_their_float_values(normalize):
    """uint16 frames are scaled by 65535 like uint8 ones by 255: plain luma clipped them to white (no flow at
    all) and the normalised image lost its near-black floor."""
    a, b = shifted_pair(2.5, -1.25)
    a, b = (np.round(x * 255) / 255 for x in (a, b))  # exact at 8 and 16 bits
    as_float = compute_flow(a, b, normalize=normalize)
    assert np.median(np.abs(interior(as_float) - np.float32([2.5, -1.25]))) < 0.1
    for depth in (np.uint8, np.uint16):
        ints = (np.round(x * np.iinfo(depth).max).astype(depth) for x in (a, b))
        assert np.abs(compute_flow(*ints, normalize=normalize) - as_float).max() < 1e-3, depth
