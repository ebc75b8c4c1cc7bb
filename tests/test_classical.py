"""Classical deflicker and the ffmpeg baseline on small synthetic clips with known flicker."""

import cv2
import numpy as np
import pytest

from unflicker.baselines import ffmpeg_deflicker
from unflicker.classical import ClassicalConfig, ClassicalDeflicker, tone_lut
from unflicker.errors import InputError

T = 16


def texture(seed: int, h: int = 80, w: int = 112) -> np.ndarray:
    """Smooth random colour texture in [0.15, 0.7], (h, w, 3) float32."""
    noise = np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 3.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.15 + 0.55 * smooth).astype(np.float32)


def clean_clip(seed: int = 0, n: int = T, h: int = 48, w: int = 64) -> np.ndarray:
    """(n, h, w, 3): left half static, right half sliding by 1 px per frame."""
    big = texture(seed)
    frames = []
    for t in range(n):
        f = big[:h, :w].copy()
        f[:, w // 2 :] = big[t : t + h, w // 2 + t : w + t]
        frames.append(f)
    return np.stack(frames)


def gains(seed: int, n: int = T, per_channel: bool = False) -> np.ndarray:
    """(n, 1, 1, 1 or 3) mean-one random gains, +-25 %."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.75, 1.25, size=(n, 3 if per_channel else 1)).astype(np.float32)
    return (g / g.mean(axis=0))[:, None, None, :]


def luma_jumps(clip: np.ndarray) -> float:
    return float(np.abs(np.diff(clip.mean(axis=(1, 2, 3)))).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("grid", [None, (3, 4)])
def test_global_flicker_is_reduced(grid):
    clean = clean_clip()
    flickering = np.clip(clean * gains(1), 0, 1)
    out = np.stack(list(ClassicalDeflicker(ClassicalConfig(grid=grid)).run(flickering)))
    assert out.shape == clean.shape and out.dtype == np.float32
    assert luma_jumps(out) < 0.25 * luma_jumps(flickering)
    assert psnr(out, clean) > psnr(flickering, clean) + 6
    # Streaming (analyze on a generator, process frame by frame) gives the same frames.
    streamed = ClassicalDeflicker(ClassicalConfig(grid=grid)).analyze(f for f in flickering)
    np.testing.assert_array_equal(streamed.process(5, flickering[5]), out[5])


def test_colour_flicker_is_reduced_per_channel():
    clean = clean_clip(2)
    flickering = np.clip(clean * gains(3, per_channel=True), 0, 1)
    out = np.stack(list(ClassicalDeflicker(ClassicalConfig(grid=None)).run(flickering)))
    for ch in range(3):
        before = np.abs(np.diff(flickering[..., ch].mean(axis=(1, 2)))).mean()
        after = np.abs(np.diff(out[..., ch].mean(axis=(1, 2)))).mean()
        assert after < 0.25 * before
    assert psnr(out, clean) > psnr(flickering, clean) + 6


def test_local_flicker_needs_the_grid():
    clean = clean_clip(4)
    rng = np.random.default_rng(5)
    ramps = np.stack([np.linspace(1.0, rng.uniform(0.6, 1.4), clean.shape[2]) for _ in range(T)])
    flickering = np.clip(clean * ramps[:, None, :, None].astype(np.float32), 0, 1)
    flat = np.stack(list(ClassicalDeflicker(ClassicalConfig(grid=None)).run(flickering)))
    local = np.stack(list(ClassicalDeflicker(ClassicalConfig(grid=(3, 4))).run(flickering)))
    assert psnr(local, clean) > psnr(flat, clean) + 2
    assert psnr(local, clean) > psnr(flickering, clean) + 3


def test_never_blends_across_a_cut():
    dark = clean_clip(6, n=8) * 0.4
    bright = clean_clip(7, n=8) * 0.8 + 0.2
    clip = np.concatenate([dark, bright]) * gains(8, n=16)
    deflicker = ClassicalDeflicker()
    out = np.stack(list(deflicker.run(clip)))
    assert deflicker.cuts == [8]
    # Frames beside the cut keep the mean level of their own shot.
    assert abs(out[7].mean() - clip[:8].mean()) < 0.02
    assert abs(out[8].mean() - clip[8:].mean()) < 0.02
    # The same clip with cut detection disabled does blend: the check above can fail.
    blind = np.stack(list(ClassicalDeflicker(ClassicalConfig(cut_threshold=np.inf)).run(clip)))
    assert abs(blind[7].mean() - clip[:8].mean()) > 0.05


def test_odd_sizes_single_frame_and_uint8():
    frame = np.random.default_rng(9).random((33, 17, 3)).astype(np.float32)
    deflicker = ClassicalDeflicker().analyze([frame])
    out = deflicker.process(0, frame)
    assert out.shape == (33, 17, 3)
    # One frame is its own temporal target: the map is the identity.
    np.testing.assert_allclose(out, frame, atol=2e-3)
    frame8 = (frame * 255).astype(np.uint8)
    out8 = ClassicalDeflicker(ClassicalConfig(grid=None)).analyze([frame8]).process(0, frame8)
    assert out8.dtype == np.float32 and out8.shape == (33, 17, 3)
    np.testing.assert_allclose(out8, frame8 / 255.0, atol=2e-3)


def test_errors():
    with pytest.raises(InputError):
        ClassicalDeflicker().process(0, np.zeros((8, 8, 3), np.float32))
    deflicker = ClassicalDeflicker().analyze(clean_clip(n=3))
    with pytest.raises(InputError):
        deflicker.process(3, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InputError):
        deflicker.process(0, np.zeros((8, 8), np.float32))
    with pytest.raises(InputError):
        ClassicalDeflicker(ClassicalConfig(percentiles=(50.0, 10.0)))
    with pytest.raises(InputError):
        ClassicalDeflicker().analyze([])
    with pytest.raises(InputError):
        list(ClassicalDeflicker().run(iter(clean_clip(n=3))))


def test_tone_lut_is_monotone_and_matches_percentiles():
    levels = np.linspace(0, 1, 4096)
    src = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    identity = tone_lut(src, src, max_slope=4.0)
    np.testing.assert_allclose(identity, levels, atol=1e-3)
    curve = tone_lut(src, src**2, max_slope=4.0)
    assert np.all(np.diff(curve) >= 0)
    np.testing.assert_allclose(np.interp(src, levels, curve), src**2, atol=1e-3)
    # Ties (a saturated channel) still give a finite, monotone map.
    tied = tone_lut(np.array([0.2, 1.0, 1.0, 1.0, 1.0]), np.array([0.1, 0.8, 0.8, 0.9, 0.9]), max_slope=4.0)
    assert np.all(np.isfinite(tied)) and np.all(np.diff(tied) >= 0)


def test_ffmpeg_deflicker_count_shape_and_effect():
    clean = clean_clip(10)
    flickering = np.clip(clean * gains(11), 0, 1)
    out = list(ffmpeg_deflicker(flickering))
    assert len(out) == T
    assert all(f.shape == clean.shape[1:] and f.dtype == np.float32 for f in out)
    assert luma_jumps(np.stack(out)) < 0.5 * luma_jumps(flickering)
    # Order is kept: each output is most correlated with the input of the same index.
    distinct = np.stack([texture(100 + t)[:48, :64] for t in range(8)]) * gains(14, n=8)
    result = np.stack(list(ffmpeg_deflicker(distinct, size=3))).reshape(8, -1)
    corr = np.corrcoef(result, distinct.reshape(8, -1))[:8, 8:]
    assert np.array_equal(corr.argmax(axis=1), np.arange(8))
    out8 = list(ffmpeg_deflicker(iter((flickering[:3] * 255).astype(np.uint8)), size=2))
    assert len(out8) == 3 and out8[0].dtype == np.uint8
    assert list(ffmpeg_deflicker([])) == []
    with pytest.raises(InputError):
        list(ffmpeg_deflicker(flickering, size=1))


def test_classical_beats_ffmpeg_on_colour_flicker():
    clean = clean_clip(12)
    flickering = np.clip(clean * gains(13, per_channel=True), 0, 1)
    ours = np.stack(list(ClassicalDeflicker().run(flickering)))
    theirs = np.stack(list(ffmpeg_deflicker(flickering)))
    assert psnr(ours, clean) > psnr(theirs, clean) + 3


def test_static_tiny_clip_is_left_alone():
    # Cells of one or two pixels give tied percentiles; they must not flatten the tone map.
    rng = np.random.default_rng(0)
    frame = rng.random((3, 5, 3)).astype(np.float32)
    clip = np.stack([frame] * 6)
    out = np.stack(list(ClassicalDeflicker().run(clip)))
    assert np.abs(out - clip).max() < 0.02


@pytest.mark.parametrize("level", [0.0, 0.4, 1.0])
def test_a_constant_clip_is_left_as_it_is(level):
    # Spreading tied percentiles apart must not shift the map: an all-white clip came out 0.9994 (65496 in 16 bits).
    clip = np.full((6, 24, 32, 3), level, np.float32)
    for grid in [(3, 4), None]:
        out = np.stack(list(ClassicalDeflicker(ClassicalConfig(grid=grid)).run(clip)))
        assert np.abs(out - clip).max() <= 1 / 8190 + 1e-6, (level, grid)


def test_tone_lut_of_a_pair_onto_itself_is_the_identity():
    levels = np.linspace(0, 1, 4096)
    for src in ([0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.9], [0.1, 0.2, 0.3, 0.5, 1.0, 1.0, 1.0], [0.4] * 7):
        src = np.array(src)
        np.testing.assert_allclose(tone_lut(src, src, max_slope=4.0), levels, atol=1e-6)
