"""Tests for unflicker.refine: the net, weights I/O, the training script, inference and stage 3 of the method."""

import dataclasses
import json
import shutil

import av
import cv2
import numpy as np
import pytest
import torch

from unflicker import synth
from unflicker.errors import InputError, WeightsError
from unflicker.flow import warp
from unflicker.refine import (
    LocalRefiner,
    RefineNet,
    RefineNetConfig,
    apply_gain_offset,
    apply_gain_offset_np,
    default_weights_path,
    load_network,
    save_weights,
    warp_tensor,
)
from unflicker.refine.data import compose_to_first
from unflicker.refine.training import main as train_main


def texture(h, w, seed=0):
    """(h, w, 3) float32 in [0.05, 0.95]: smooth colour noise plus hard-edged rectangles."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
    x = (x - x.min()) / (x.max() - x.min())
    for _ in range(10):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        x[y0 : y0 + rng.integers(4, h // 3), x0 : x0 + rng.integers(4, w // 3)] = rng.random(3)
    return (0.05 + 0.9 * x).astype(np.float32)


def translating_clip(n, h, w, dx=2, seed=0):
    """(n, h, w, 3) clean frames of a texture moving dx px right per frame: frame t+1 (x) = frame t (x - dx)."""
    big = texture(h, w + dx * n, seed)
    return np.stack([big[:, dx * (n - t) : dx * (n - t) + w] for t in range(n)])


def exact_warp_error(frames, dx):
    """E_warp with the known flow t -> t+1 = (dx, 0): masked MSE of O_t and O_{t+1} warped back to t."""
    h, w = frames.shape[1:3]
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = dx
    valid = np.zeros((h, w), bool)
    valid[:, : w - dx - 1] = True
    return float(np.mean([np.mean((warp(b, flow) - a)[valid] ** 2) for a, b in zip(frames[:-1], frames[1:])]))


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def refine_all(refiner, frames):
    refiner.reset()
    return np.stack([refiner.apply(f) for f in frames])


# --- network ---------------------------------------------------------------------------------------


def test_fresh_net_is_identity_and_coefficients_are_quarter_size():
    net = RefineNet(RefineNetConfig(width=4))
    p, o, q = torch.rand(2, 3, 37, 50), torch.rand(2, 3, 37, 50), torch.rand(2, 3, 37, 50)
    out, coeffs = net(p, o, q, torch.zeros(2, 2, 37, 50), torch.ones(2, 1, 37, 50))
    assert coeffs.shape == (2, 6, 10, 13)
    torch.testing.assert_close(out, p, atol=1e-6, rtol=0)


def test_warp_tensor_matches_numpy_warp():
    rng = np.random.default_rng(1)
    image = rng.random((20, 30, 3)).astype(np.float32)
    flow = rng.uniform(-3, 3, (20, 30, 2)).astype(np.float32)
    got = warp_tensor(torch.from_numpy(image.transpose(2, 0, 1))[None], torch.from_numpy(flow.transpose(2, 0, 1))[None])
    np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), warp(image, flow), atol=1e-4)


def test_gain_offset_numpy_twin_matches_torch():
    rng = np.random.default_rng(2)
    image = rng.random((9, 11, 3)).astype(np.float32)
    coeffs = rng.normal(0, 0.2, (6, 9, 11)).astype(np.float32)
    ref = apply_gain_offset(torch.from_numpy(image.transpose(2, 0, 1))[None], torch.from_numpy(coeffs)[None])
    np.testing.assert_allclose(apply_gain_offset_np(image, coeffs), ref[0].clamp(0, 1).numpy().transpose(1, 2, 0),
                               atol=1e-5)


def test_compose_to_first_chains_translations():
    flows = np.zeros((4, 20, 30, 2), np.float32)
    flows[..., 0] = -2.0  # pixel x of frame t sits at x - 2 in frame t-1
    masks = np.ones((4, 20, 30), bool)
    long_flows, long_masks = compose_to_first(flows, masks)
    np.testing.assert_allclose(long_flows[3, ..., 0], -6.0, atol=1e-5)
    assert not long_masks[3][:, :6].any() and long_masks[3][:, 6:].all()


# --- weights ----------------------------------------------------------------------------------------


def test_shipped_weights_load():
    net, meta = load_network()
    assert isinstance(net, RefineNet) and not net.training
    assert meta["format"] == "unflicker.refine" and meta["training"]["steps"] > 0
    assert default_weights_path().stat().st_size < 20e6


def test_missing_corrupt_and_mismatched_weights_raise(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_network(tmp_path / "none.safetensors")
    path = tmp_path / "r.safetensors"
    shutil.copy(default_weights_path(), path)
    shutil.copy(default_weights_path().with_suffix(".json"), path.with_suffix(".json"))
    meta = json.loads(path.with_suffix(".json").read_text())

    path.with_suffix(".json").write_text(json.dumps({**meta, "network": {**meta["network"], "width": 5}}))
    with pytest.raises(WeightsError, match="shape"):
        load_network(path)
    path.with_suffix(".json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(WeightsError, match="version"):
        load_network(path)
    path.with_suffix(".json").write_text(json.dumps(meta))
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="cannot read"):
        load_network(path)


def test_saved_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    net = RefineNet(RefineNetConfig(width=4))
    for p in net.parameters():
        p.data.normal_()
    path = save_weights(net, tmp_path / "w.safetensors")
    loaded, meta = load_network(path)
    assert meta["network"]["width"] == 4
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


# --- training ---------------------------------------------------------------------------------------


def make_video(path, frames):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "12"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.round(image * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def tiny_run(tmp_path):
    """(data folder, output folder, train-refine arguments) of a tiny run: one 6-frame clip, a 4-frame validation."""
    data = tmp_path / "clean"
    data.mkdir()
    make_video(data / "a.mp4", translating_clip(6, 48, 64, seed=1))
    make_video(data / "held.mp4", translating_clip(4, 48, 64, seed=2))
    out = tmp_path / "run"
    return data, out, ["--data", str(data), "--val-clip", "held", "--output", str(out), "--cache-side", "64",
                       "--length", "3", "--crop", "32", "--batch", "1", "--width", "4", "--val-frames", "4",
                       "--val-draws", "1", "--threads", "1", "--checkpoint-every", "1", "--log-every", "1",
                       "--val-every", "10"]


def test_training_smoke_run_writes_loadable_weights_and_resumes(tmp_path, capsys):
    data, out, args = tiny_run(tmp_path)
    assert train_main([*args, "--steps", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and {"ewarp_before", "ewarp_after", "psnr_after"} <= set(summary["val"])
    assert summary["val_full"]["size"] == [48, 64]
    net, meta = load_network(out / "refine.safetensors")
    assert meta["training"]["val_clip"] == "held" and "--steps 2" in meta["training"]["command"]
    assert (out / "cache").is_dir() and (out / "checkpoint.pt").is_file()

    assert train_main([*args, "--steps", "3", "--no-full-validation"]) == 0  # a session option: resumes
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "at step 2" in printed
    assert json.loads(printed.strip().splitlines()[-1])["steps"] == 3
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_diverging_run_stops_in_one_line_and_saves_no_nan_weights(tmp_path, capsys):
    """A learning rate far too high made the loss NaN; the run went on to its end, wrote NaN weights and a
    NaN checkpoint, and exited 0."""
    data, out, args = tiny_run(tmp_path)
    assert train_main([*args, "--steps", "6", "--lr", "1e8", "--no-full-validation"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unflicker: error: training diverged at step ") and err.count("\n") == 1
    assert not (out / "refine.safetensors").exists() and not (out / "refine.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # the last one before it diverged
    assert 1 <= state["step"] < 6 and all(torch.isfinite(v).all() for v in state["net"].values())


def test_a_resume_under_other_settings_is_refused_before_the_clips_are_cached(tmp_path, capsys):
    """The refusal came only after every training clip was decoded, its flows computed and cached."""
    data, out, args = tiny_run(tmp_path)
    args = [*args, "--steps", "1", "--no-full-validation"]
    assert train_main(args) == 0
    make_video(data / "b.mp4", translating_clip(6, 48, 64, seed=3))
    assert train_main([*args, "--lr", "0.1", "--cache-dir", str(tmp_path / "new")]) == 2
    assert "other settings" in capsys.readouterr().err and not list((tmp_path / "new").glob("*"))


@pytest.mark.parametrize("option, value", [
    ("--lr", "-1"), ("--lr", "0"), ("--checkpoint-every", "0"), ("--threads", "-1"), ("--working-side", "8"),
    ("--max-seconds", "-1"), ("--device", "nope"), ("--steps", "0"),
])
def test_training_rejects_bad_numbers_in_one_line_before_writing(tmp_path, capsys, option, value):
    # Each used to be a traceback (Adam, a modulo by zero, torch threads or device), or an error only
    # at the first validation, after training; and the output folder was made first.
    out = tmp_path / "run"
    assert train_main(["--data", str(tmp_path), "--output", str(out), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unflicker: error: ") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("option, value", [
    ("--fidelity-weight", "-1"), ("--short-term-weight", "nan"), ("--long-term-weight", "-0.5"), ("--max-frames", "-1"),
    ("--val-frames", "1"),
])
def test_training_rejects_bad_loss_weights_and_frame_counts_before_writing(tmp_path, capsys, option, value):
    """A NaN loss weight trained NaN weights and a negative one rewarded errors, exit 0; a negative
    --max-frames was "no frames decoded from CLIP" once the output folder and cache were made; --val-frames 1
    validated on one frame (E_warp 0, the output the input), exit 0."""
    data, out, args = tiny_run(tmp_path)
    assert train_main([*args, "--steps", "1", "--no-full-validation", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unflicker: error: {option[2:].replace('-', '_')} must be ") and err.count("\n") == 1
    assert not out.exists()


def test_a_one_frame_validation_clip_is_refused(tmp_path, capsys):
    """Validation on a one-frame held-out clip measured nothing (E_warp 0, the output its input), exit 0."""
    data, out, args = tiny_run(tmp_path)
    make_video(data / "held.mp4", translating_clip(1, 48, 64, seed=2))
    assert train_main([*args, "--steps", "1", "--no-full-validation"]) == 2
    assert capsys.readouterr().err == (f"unflicker: error: validation clip {data / 'held.mp4'} has 1 frame; "
                                       "validation needs 2 or more\n")
    assert not (out / "refine.safetensors").exists()


def test_a_crop_larger_than_the_cached_clips_is_refused(tmp_path, capsys):
    """Every window was upscaled from a smaller cached clip (a blur), and the run trained on, exit 0."""
    data, out, args = tiny_run(tmp_path)  # a 48 x 64 clip cached at --cache-side 64: 48 x 64
    args = [*args, "--steps", "1", "--no-full-validation"]
    assert train_main([*args, "--crop", "65"]) == 2  # larger than any clip cached at --cache-side 64
    assert capsys.readouterr().err.startswith("unflicker: error: crop 65 is larger than the cached clips (--cache-side 64)")
    assert not out.exists()
    assert train_main([*args, "--crop", "49"]) == 2
    assert capsys.readouterr().err == ("unflicker: error: crop 49 is larger than every cached training clip (shorter "
                                       "sides at most 48 px at --cache-side 64); give --crop 48 or less, or a larger "
                                       "--cache-side\n")
    assert not (out / "checkpoint.pt").exists() and not (out / "refine.safetensors").exists()
    assert train_main([*args, "--crop", "48"]) == 0


def test_a_clip_cache_is_rebuilt_for_another_file_of_the_same_name(tmp_path):
    # The cache was found by the clip's name alone: a replaced clip, or another --data folder's clip of
    # the same name under a shared --cache-dir (as README's command has), was trained on as the old one.
    from unflicker.refine.data import load_clip

    make_video(tmp_path / "a.mp4", translating_clip(3, 24, 32, seed=1))
    first = load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)
    make_video(tmp_path / "a.mp4", translating_clip(3, 24, 32, seed=2))
    second = load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)
    assert np.abs(second.frames.astype(int) - first.frames.astype(int)).mean() > 10
    again = load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)
    assert np.array_equal(again.frames, second.frames) and np.array_equal(again.flows, second.flows)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_a_damaged_clip_cache_is_built_again(tmp_path, damage):
    """A cache file cut short or not a cache at all (a copy cut short, another file of that name) was a
    BadZipFile, ValueError or pickle traceback at every later run that used the --cache-dir."""
    from unflicker.refine.data import load_clip

    make_video(tmp_path / "a.mp4", translating_clip(3, 24, 32, seed=1))
    first = load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)
    cache = next((tmp_path / "cache").glob("*.npz"))
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "garbage":
        cache.write_bytes(bytes(range(256)) * 8)
    else:
        np.savez(cache, frames=np.array([object()], dtype=object))
    again = load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)
    assert np.array_equal(again.frames, first.frames) and np.array_equal(again.flows, first.flows)
    assert np.array_equal(load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0).frames, first.frames)


def test_runs_sharing_a_cache_folder_can_build_the_same_clip_at_once(tmp_path, monkeypatch):
    # Both wrote NAME.tmp.npz: the one that finished first renamed the other's half-written file into
    # the cache, and the other's rename then failed (a FileNotFoundError traceback).
    from unflicker.refine import data

    make_video(tmp_path / "a.mp4", translating_clip(3, 24, 32, seed=1))
    real, nested = np.savez, []

    def another_run_finishes_meanwhile(file, **arrays):
        real(file, **arrays)
        if not nested:
            nested.append(None)
            nested[0] = data.load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)

    monkeypatch.setattr(data.np, "savez", another_run_finishes_meanwhile)
    clip = data.load_clip(tmp_path / "a.mp4", tmp_path / "cache", 32, 0)
    assert np.array_equal(clip.frames, nested[0].frames)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["a_s32_n0.npz"]


def test_a_save_killed_outright_leaves_no_temporary_for_good(tmp_path):
    # A clip's save killed mid-write (SIGKILL: no clean-up runs) left its uuid-named temporary beside the
    # cache, and no later save or load removed it: each such kill grew the folder by a clip.
    import os
    import subprocess
    import sys

    from unflicker.io.common import hold_lock
    from unflicker.refine.data import load_clip

    make_video(tmp_path / "a.mp4", translating_clip(3, 24, 32, seed=1))
    cache = tmp_path / "cache"
    code = ("import os, signal\n"
            "from unflicker.refine import data\n"
            "def killed_mid_save(file, **arrays):\n"
            "    with open(file, 'wb') as f:\n"
            "        f.write(b'PK half a clip')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "data.np.savez = killed_mid_save\n"
            f"data.load_clip({str(tmp_path / 'a.mp4')!r}, {str(cache)!r}, 32, 0)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == -9
    temps = lambda: sorted(p.name for p in cache.glob("*.tmp.npz"))
    assert len(temps()) == 1 and not (cache / "a_s32_n0.npz").exists()
    live = cache / f"a_s32_n0.{'b' * 32}.tmp.npz"  # another run's save under way: it holds its lock
    kept = [live, cache / "a_s32_n0.notes.tmp.npz", cache / f"notes.{'c' * 32}.tmp.npz"]  # and not a save's
    for path in kept:
        path.write_bytes(b"x")
    fd = hold_lock(live, "held by the test")
    try:
        load_clip(tmp_path / "a.mp4", cache, 32, 0)  # builds and saves the clip
        assert temps() == sorted(p.name for p in kept)
        stale = cache / f"b_s64_n9.{'d' * 32}.tmp.npz"  # another clip's, at other settings
        stale.write_bytes(b"x")
        load_clip(tmp_path / "a.mp4", cache, 32, 0)  # a load from the cache sweeps too
        assert not stale.exists() and temps() == sorted(p.name for p in kept)
    finally:
        os.close(fd)


def test_rerunning_a_run_stopped_by_max_seconds_adds_no_step(tmp_path, capsys):
    # Each rerun of the same command trained one more step (the time was checked only after a step)
    # and rewrote the weights: a finished run's command was not idempotent as a --steps one is.
    data = tmp_path / "clean"
    data.mkdir()
    make_video(data / "a.mp4", translating_clip(5, 32, 48, seed=1))
    make_video(data / "held.mp4", translating_clip(3, 32, 48, seed=2))
    args = ["--data", str(data), "--val-clip", "held", "--output", str(tmp_path / "run"), "--cache-side", "48",
            "--length", "3", "--crop", "24", "--batch", "1", "--width", "4", "--val-frames", "3", "--val-draws", "1",
            "--threads", "1", "--steps", "50", "--max-seconds", "1e-6", "--no-full-validation"]
    assert train_main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 1 and "stopped_early" in first
    before = files_of(tmp_path / "run")
    assert train_main(args) == 0
    assert capsys.readouterr().out == (f"nothing to do: the run in {tmp_path / 'run'} is at step 1, --max-seconds "
                                       f"1e-06 reached; its weights are {tmp_path / 'run' / 'refine.safetensors'} "
                                       "(more --max-seconds goes on)\n")
    assert files_of(tmp_path / "run") == before


def files_of(folder):
    """{path: (size, mtime in ns)} of every file under `folder`: what a run that writes nothing leaves alone."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerunning_a_finished_run_takes_no_step_and_writes_nothing(tmp_path, capsys):
    # It validated again and rewrote the weights (and the log), as if it had trained.
    data, out, args = tiny_run(tmp_path)
    args = [*args, "--steps", "1", "--no-full-validation"]
    assert train_main(args) == 0
    capsys.readouterr()
    before = files_of(out)
    assert train_main(args) == 0
    assert capsys.readouterr().out == (f"nothing to do: the run in {out} is finished at step 1 of --steps 1; its "
                                       f"weights are {out / 'refine.safetensors'} (more --steps goes on)\n")
    assert files_of(out) == before


def test_training_rejects_missing_validation_clip(tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"")
    assert train_main(["--data", str(tmp_path), "--val-clip", "nope", "--output", str(tmp_path / "o")]) == 2
    # A missing data folder was reported as a missing validation clip in it.
    capsys.readouterr()
    assert train_main(["--data", str(tmp_path / "nothere"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"unflicker: error: clip folder not found: {tmp_path / 'nothere'}\n"

    # An output or cache folder that cannot be made was a traceback from mkdir.
    (tmp_path / "held.mp4").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    for option in ("--output", "--cache-dir"):
        args = ["--data", str(tmp_path), "--val-clip", "held", "--output", str(tmp_path / "o"), option,
                str(tmp_path / "file")]
        assert train_main(args) == 3
        assert capsys.readouterr().err.startswith("unflicker: error: cannot make the folder ")


# --- inference --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refiner():
    return LocalRefiner.load(device="cpu")


def test_shipped_refiner_lowers_warp_error_without_losing_psnr(refiner):
    clean = translating_clip(12, 96, 128, dx=2, seed=3)
    flickered = synth.add_flicker(clean, kind="local", strength=1.0, seed=5)
    out = refine_all(refiner, flickered)
    before, after = exact_warp_error(flickered, 2), exact_warp_error(out, 2)
    assert after < 0.7 * before
    assert psnr(out, clean) >= psnr(flickered, clean) - 0.05


def test_refiner_leaves_a_clean_clip_nearly_alone(refiner):
    clean = translating_clip(6, 64, 80, dx=1, seed=4)
    out = refine_all(refiner, clean)
    assert psnr(out, clean) > 38


@pytest.mark.parametrize("size, side", [((37, 53), 320), ((45, 71), 32)])
def test_shape_is_preserved_at_odd_sizes(size, side):
    refiner = LocalRefiner.load(device="cpu", working_side=side)
    rng = np.random.default_rng(6)
    frames = [rng.random((*size, 3)).astype(np.float32) for _ in range(3)]
    out = [refiner.apply(f) for f in frames]
    assert all(o.shape == (*size, 3) and o.dtype == np.float32 for o in out)
    assert all(0.0 <= o.min() and o.max() <= 1.0 for o in out)
    np.testing.assert_array_equal(out[0], frames[0])  # no history: the first frame passes through


def test_bf16_refines_as_fp32_within_a_fraction_of_an_8_bit_level(refiner):
    """precision='bf16': the encoder and decoder in bfloat16, features and head in float32; over a
    recurrent run the outputs stay far within one 8-bit level of fp32's."""
    fast = LocalRefiner.load(device="cpu", precision="bf16")
    assert fast.net.enc1[0][0].weight.dtype == torch.bfloat16 and fast.net.dec2[-1][0].weight.dtype == torch.bfloat16
    assert fast.net.head.weight.dtype == torch.float32 and refiner.net.enc1[0][0].weight.dtype == torch.float32
    frames = synth.add_flicker(translating_clip(10, 96, 128, dx=2, seed=3), kind="local", strength=1.0, seed=5)
    exact, approx = refine_all(refiner, frames), refine_all(fast, frames)
    diff = np.abs(np.stack(approx) - np.stack(exact))
    assert 0 < diff.mean() < 0.05 / 255 and diff.max() < 2 / 255
    with pytest.raises(InputError, match="precision"):
        LocalRefiner.load(device="cpu", precision="fp16")


def test_the_refiner_runs_at_its_own_precision_whatever_the_net_it_is_given():
    """As the filter's: an 'fp32' refiner made from a bf16 refiner's net ran its convolutions in bfloat16."""
    fast = LocalRefiner.load(device="cpu", precision="bf16")
    again = LocalRefiner(fast.net, dataclasses.replace(fast.config, precision="fp32"), device="cpu")
    assert {p.dtype for p in again.net.parameters()} == {torch.float32}
    assert fast.net.enc1[0][0].weight.dtype == torch.bfloat16


def test_the_method_runs_both_networks_at_its_precision():
    from unflicker.neural import NeuralConfig, NeuralDeflicker

    method = NeuralDeflicker(NeuralConfig(precision="bf16"))
    assert method._filter.config.precision == method._refine.config.precision == "bf16"
    assert method._filter.net.down[0][0].weight.dtype == method._refine.net.enc1[0][0].weight.dtype == torch.bfloat16
    assert NeuralDeflicker(NeuralConfig())._refine.net.enc1[0][0].weight.dtype == torch.float32


def test_refiner_rejects_bad_frames(refiner):
    with pytest.raises(InputError):
        refiner.apply(np.zeros((10, 10), np.float32))


# --- stage 3 of the neural method ------------------------------------------------------------------


def test_the_networks_stay_on_the_cpu_where_a_gpu_is_present(monkeypatch):
    """On an H200 a default run was no faster with the filter and the refinement on the GPU and took
    0.7 GB more memory a worker; they took CUDA whenever torch saw it (here: a failed move to CUDA)."""
    import torch

    from unflicker.neural import NeuralConfig, NeuralDeflicker

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    method = NeuralDeflicker(NeuralConfig())
    for net in (method._filter.net, method._refine.net):
        assert {p.device.type for p in net.parameters()} == {"cpu"}


def test_neural_method_runs_refine_third_and_restarts_at_shots():
    from unflicker.atlas import VideoAtlas
    from unflicker.neural import STAGES, NeuralConfig, NeuralDeflicker

    assert STAGES == ("atlas", "filter", "refine", "project")
    assert NeuralDeflicker(NeuralConfig(stop_after="filter"))._refine is None
    method = NeuralDeflicker(NeuralConfig(device="cpu"))
    clean = translating_clip(6, 48, 64, dx=1, seed=7)
    frames = synth.add_flicker(clean, kind="local", strength=1.0, seed=8)
    method.atlas = VideoAtlas(clean.astype(np.float16), [range(0, 3), range(3, 6)])
    results = [method.process(t, f) for t, f in enumerate(frames)]
    assert all(list(r) == ["atlas", "filter", "refine", "project"] for r in results)
    # A shot's first frame has no history, so the refinement passes the filtered frame through.
    for t in (0, 3):
        np.testing.assert_array_equal(results[t]["refine"], results[t]["filter"])
    assert not np.array_equal(results[4]["refine"], results[4]["filter"])


def test_clips_named_in_capitals_are_found(tmp_path):
    """A camera's CLIP.MP4 was not a training clip (the folder was read with *.mp4 only)."""
    from unflicker.refine.training import RefineTrainConfig, _clip_paths

    make_video(tmp_path / "A.MP4", translating_clip(3, 24, 32, seed=1))
    make_video(tmp_path / "held.mp4", translating_clip(3, 24, 32, seed=2))
    train, val = _clip_paths(RefineTrainConfig(data_root=str(tmp_path), val_clip="held"))
    assert [p.name for p in train] == ["A.MP4"] and val.name == "held.mp4"
