"""Tests for unflicker.filter: network, distortions, training smoke run, weights I/O and inference."""

import dataclasses
import json
import os
import shlex
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch

from unflicker.errors import InputError, WeightsError
from unflicker.filter import (
    DistortionConfig,
    FilterNetConfig,
    FilterUNet,
    NeuralFilter,
    appearance_distortion,
    apply_coefficients,
    apply_coefficients_np,
    default_weights_path,
    load_network,
    make_pair,
    save_weights,
    structure_distortion,
)
from unflicker.filter.distortions import texture_distortion, warp_image
from unflicker.filter.network import stats_prior
from unflicker.filter.training import FilterTrainConfig, slice_weights, train
from unflicker.filter.training import main as train_main
from unflicker.filter.upsampling import guided_coefficients
from unflicker.refine import apply_gain_offset_np


def texture(h, w, seed=0):
    """(h, w, 3) float32 in [0.05, 0.95]: smooth colour noise plus a few hard-edged rectangles."""
    rng = np.random.default_rng(seed)
    x = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        x[y0 : y0 + rng.integers(4, h // 2), x0 : x0 + rng.integers(4, w // 2)] = rng.random(3)
    return (0.05 + 0.9 * x).astype(np.float32)


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def grad_mag(x):
    y = x.mean(-1)
    return np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0), cv2.Sobel(y, cv2.CV_32F, 0, 1))[4:-4, 4:-4].ravel()


# --- network -------------------------------------------------------------------------------------


def test_network_shapes_and_identity_init():
    net = FilterUNet(FilterNetConfig(base_width=4, depth=3, prior="none"))
    frame, atlas = torch.rand(2, 3, 33, 17), torch.rand(2, 3, 33, 17)
    coeffs = net.coefficients(frame, atlas)
    assert coeffs.shape == (2, 12, 33, 17)
    torch.testing.assert_close(net(frame, atlas), frame, atol=1e-6, rtol=0)


def test_stats_prior_init_transfers_local_colour_statistics():
    x = torch.from_numpy(texture(48, 64, seed=4).transpose(2, 0, 1))[None]
    frame = 0.6 * x * torch.tensor([1.0, 0.8, 1.2]).view(1, 3, 1, 1) + 0.05  # global gain, white balance, offset
    net = FilterUNet(FilterNetConfig(base_width=4, depth=3, prior="stats", prior_sigma=6.0))
    out = net(frame, x)
    torch.testing.assert_close(out, apply_coefficients(frame, stats_prior(frame, x, 6.0)))
    assert (out - x).abs().mean() < 0.2 * (frame - x).abs().mean()
    coeffs = net.coefficients(frame, x)
    assert torch.all(coeffs[:, [1, 2, 3, 5, 6, 7]] == 0)  # the prior is per channel


def test_apply_coefficients_function_module_and_numpy_agree():
    g = torch.Generator().manual_seed(0)
    image, coeffs = torch.rand(1, 3, 9, 11, generator=g), torch.randn(1, 12, 9, 11, generator=g)
    out = apply_coefficients(image, coeffs)
    m = coeffs[0, :9].reshape(3, 3, 9, 11)
    by_hand = torch.einsum("ijhw,jhw->ihw", m, image[0]) + coeffs[0, 9:]
    torch.testing.assert_close(out[0], by_hand)
    np.testing.assert_allclose(apply_coefficients_np(image[0].permute(1, 2, 0).numpy(), coeffs[0].numpy()),
                               out[0].permute(1, 2, 0).numpy(), atol=1e-5)
    # A net whose head predicts these coefficients gives the same through forward().
    net = FilterUNet(FilterNetConfig(base_width=4, depth=2))
    torch.testing.assert_close(net(image, image), apply_coefficients(image, net.coefficients(image, image)))
    with pytest.raises(InputError):
        apply_coefficients(image, coeffs[:, :9])


def test_smaller_coefficients_are_upsampled_plane_by_plane_bilinearly():
    rng = np.random.default_rng(3)
    image = rng.random((37, 51, 3)).astype(np.float32)
    coeffs = rng.normal(0, 0.3, (12, 20, 33)).astype(np.float32)
    kept = coeffs.copy()
    full = np.stack([cv2.resize(c, (51, 37), interpolation=cv2.INTER_LINEAR) for c in coeffs])
    np.testing.assert_array_equal(apply_coefficients_np(image, coeffs), apply_coefficients_np(image, full))
    np.testing.assert_array_equal(coeffs, kept)  # the caller's coefficients are not written to
    gain_offset = coeffs[:6] * 0.3
    np.testing.assert_array_equal(apply_gain_offset_np(image, gain_offset), apply_gain_offset_np(
        image, np.stack([cv2.resize(c, (51, 37), interpolation=cv2.INTER_LINEAR) for c in gain_offset])))


def test_network_rejects_mismatched_inputs():
    net = FilterUNet(FilterNetConfig(base_width=4, depth=2))
    with pytest.raises(InputError):
        net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 8))


# --- distortions ---------------------------------------------------------------------------------


def test_distortions_are_seeded():
    x = texture(48, 64)
    a1 = make_pair(x, np.random.default_rng(7))
    a2 = make_pair(x, np.random.default_rng(7))
    b = make_pair(x, np.random.default_rng(8))
    for u, v in zip(a1, a2):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a1[0], b[0]) and not np.array_equal(a1[1], b[1])
    for y in a1:
        assert y.shape == x.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    np.testing.assert_array_equal(a1[2], x)


def test_appearance_keeps_structure_and_structure_keeps_colours():
    x = texture(96, 128, seed=3)
    g_x = grad_mag(x)
    sorted_x = np.sort(x.reshape(-1, 3), 0)
    app_corr, str_corr, app_hist, str_hist = [], [], [], []
    for seed in range(12):
        i = appearance_distortion(x, np.random.default_rng(seed), DistortionConfig(identity_prob=0))
        a = structure_distortion(x, np.random.default_rng(seed))
        app_corr.append(np.corrcoef(grad_mag(i), g_x)[0, 1])
        str_corr.append(np.corrcoef(grad_mag(a), g_x)[0, 1])
        # Colour distribution distance: mean gap between sorted channel values (1-D Wasserstein).
        app_hist.append(np.abs(np.sort(i.reshape(-1, 3), 0) - sorted_x).mean())
        str_hist.append(np.abs(np.sort(a.reshape(-1, 3), 0) - sorted_x).mean())
    assert np.median(app_corr) > 0.85
    assert np.median(str_corr) < np.median(app_corr) - 0.2
    assert np.median(str_hist) < 0.03
    assert np.median(app_hist) > 2 * np.median(str_hist)


def test_texture_distortion_changes_fine_detail_and_keeps_coarse_colours():
    x = texture(96, 128, seed=4)
    blur = lambda y: cv2.GaussianBlur(y, (0, 0), 6.0)
    fine = lambda y: y - cv2.GaussianBlur(y, (0, 0), 1.5)
    coarse_err, fine_err = [], []
    for seed in range(10):
        y = texture_distortion(x, np.random.default_rng(seed))
        assert y.shape == x.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
        np.testing.assert_array_equal(y, texture_distortion(x, np.random.default_rng(seed)))
        coarse_err.append(np.abs(blur(y) - blur(x)).mean())
        fine_err.append(np.abs(fine(y) - fine(x)).mean() / np.abs(fine(x)).mean())
    assert np.median(coarse_err) < 0.01  # large-scale colours stay
    assert np.median(fine_err) > 0.15  # the fine detail changes by a sizeable share of itself
    # A config without texture changes draws exactly what it drew before the option existed.
    cfg = DistortionConfig(identity_prob=0)
    with_prob = appearance_distortion(x, np.random.default_rng(3), dataclasses.replace(cfg, texture_prob=1.0))
    without = appearance_distortion(x, np.random.default_rng(3), cfg)
    rng = np.random.default_rng(3)
    appearance_distortion(x, rng, cfg)
    rng.random()
    np.testing.assert_array_equal(with_prob, texture_distortion(without, rng))


def test_structure_distortion_moves_pixels():
    x = texture(64, 64, seed=1)
    a = structure_distortion(x, np.random.default_rng(0), DistortionConfig(atlas_jitter=0))
    assert np.abs(a - x).mean() > 0.02
    flow = np.zeros((64, 64, 2), np.float32)
    np.testing.assert_allclose(warp_image(x, flow), x, atol=1e-6)


# --- guided upsampling ---------------------------------------------------------------------------


def test_guided_coefficients_recover_a_global_colour_transform():
    x = texture(40, 50, seed=2)
    m = np.float32([[0.9, 0.1, 0.0], [0.05, 1.1, -0.1], [0.0, 0.2, 0.7]])
    b = np.float32([0.02, -0.03, 0.05])
    coeffs = guided_coefficients(x, x @ m.T + b, radius=2, eps=1e-6)
    inner = coeffs[:, 5:-5, 5:-5]
    np.testing.assert_allclose(np.median(inner[:9].reshape(9, -1), 1), m.ravel(), atol=0.02)
    np.testing.assert_allclose(np.median(inner[9:].reshape(3, -1), 1), b, atol=0.02)


# --- training, weights ---------------------------------------------------------------------------


@pytest.fixture
def tiny_data(tmp_path):
    root = tmp_path / "images"
    for folder, n in (("train", 4), ("val", 2)):
        (root / folder).mkdir(parents=True)
        for k in range(n):
            img = (texture(40, 56, seed=10 * len(folder) + k) * 255).astype(np.uint8)
            cv2.imwrite(str(root / folder / f"{k}.png"), img)
    return root


def tiny_config(data, out, steps, stop_at=0):
    return FilterTrainConfig(stop_at=stop_at, data_root=data, train_folders=("train",), val_folder="val", val_images=2, val_crop=0,
                             output=out, crop=32, batch=2, steps=steps, network=FilterNetConfig(4, 2),
                             checkpoint_every=1, val_every=100, log_every=1, threads=1)


def test_training_smoke_writes_loadable_weights_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(tiny_data, out, steps=3, stop_at=2))
    assert summary["steps"] == 2 and (out / "checkpoint.pt").is_file()
    net, meta = load_network(out / "filter.safetensors")
    assert meta["network"]["base_width"] == 4 and meta["network"]["depth"] == 2 and meta["training"]["steps"] == 2
    # Resuming to step 3 equals an uninterrupted 3-step run: weights, optimiser and data stream are restored.
    assert train(tiny_config(tiny_data, out, steps=3))["steps"] == 3
    straight = tmp_path / "straight"
    train(tiny_config(tiny_data, straight, steps=3))
    resumed, _ = load_network(out / "filter.safetensors")
    fresh, _ = load_network(straight / "filter.safetensors")
    for (k, v), w in zip(resumed.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k)
    assert not torch.equal(resumed.head.weight, FilterUNet(FilterNetConfig(4, 2)).head.weight)


@pytest.mark.parametrize("option, value", [
    ("--lr", "-1"), ("--lr", "0"), ("--lr", "nan"), ("--checkpoint-every", "0"), ("--val-every", "0"),
    ("--log-every", "0"), ("--threads", "-1"), ("--stop-at", "-1"), ("--val-images", "0"), ("--net-scale", "0"),
    ("--prior-sigma", "0"), ("--working-side", "0"), ("--steps", "0"), ("--grad-weight", "-1"), ("--grad-weight", "nan"),
    ("--net-scale", "2"),
])
def test_training_rejects_bad_numbers_in_one_line_before_writing(tiny_data, tmp_path, capsys, option, value):
    # Each used to be a traceback (Adam, a modulo by zero, torch threads), NaN weights, weights that
    # cannot be loaded, or a run that learns nothing; and the output folder was made first.
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
            "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2", "--steps", "1", option, value]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unflicker: error: ") and "\n" not in err
    assert not out.exists()


def test_an_existing_output_folder_that_cannot_be_written_is_one_line(tiny_data, tmp_path, capsys, monkeypatch):
    """An existing read-only --output folder was a PermissionError traceback from the log's first write."""
    from unflicker.io import common

    def refuse(**_):  # root writes anywhere: the folder's refusal is simulated
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
            "--crop", "32", "--batch", "1", "--base-width", "4", "--depth", "2", "--steps", "1"]
    assert train_main(args) == 3
    assert capsys.readouterr().err == f"unflicker: error: cannot write in the folder {out}: Permission denied\n"
    assert not list(out.iterdir())


@pytest.mark.parametrize("name", ["checkpoint.pt", "filter.safetensors", "filter.json", "log.jsonl"])
def test_a_folder_where_the_run_writes_a_file_is_one_line(tiny_data, tmp_path, capsys, name):
    """A folder named checkpoint.pt (or as the weights, their JSON, the log) was an IsADirectoryError traceback at
    the first checkpoint or the final save, after training; with --no-resume at once."""
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
            "--crop", "32", "--batch", "1", "--base-width", "4", "--depth", "2", "--steps", "1"]
    for extra in ([], ["--no-resume"]):
        assert train_main([*args, *extra]) == 3
        assert capsys.readouterr().err == (f"unflicker: error: {out / name} is not a file, and the run writes one "
                                           "there; move it or use another output folder\n")
    assert [p.name for p in out.iterdir()] == [name]


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a small disk of its own (tmpfs); skipped where one cannot be mounted (not root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small disk here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_while_training_is_one_line_and_leaves_no_partial_file(tiny_data, small_disk, capsys):
    """A full disk at a checkpoint was a RuntimeError traceback from torch ("unexpected pos") that left the
    partial checkpoint.pt.tmp filling the disk; at the final save, an OSError traceback and filter.safetensors.tmp."""
    out = small_disk / "run"
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--val-every", "100",
            "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2", "--checkpoint-every", "1"]
    assert train_main([*args, "--output", str(small_disk / "sizes"), "--steps", "1"]) == 0
    sizes = {p.name: p.stat().st_size for p in (small_disk / "sizes").iterdir()}
    shutil.rmtree(small_disk / "sizes")
    filler = small_disk / "filler"
    fill = lambda leave: filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - leave))
    capsys.readouterr()

    block = os.statvfs(small_disk).f_bsize
    blocks = lambda size: -(-size // block) * block
    assert blocks(sizes["filter.safetensors"]) > block
    fill(blocks(sizes["checkpoint.pt"]) + 2 * block)  # room for the log and the checkpoint, not the weights
    assert train_main([*args, "--output", str(out), "--steps", "1"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"unflicker: error: cannot write {out / 'filter.safetensors'}: the disk is full (")
    assert err.endswith("the weights were not saved: the same command resumes from the last checkpoint\n")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.jsonl"]
    filler.unlink()
    assert train_main([*args, "--output", str(out), "--steps", "1"]) == 0  # saved now, from the checkpoint
    load_network(out / "filter.safetensors")

    fill(sizes["checkpoint.pt"] // 2)  # no room for the next checkpoint
    assert train_main([*args, "--output", str(out), "--steps", "2"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"unflicker: error: cannot write {out / 'checkpoint.pt'}: the disk is full (") and \
        err.endswith("checkpoint.pt of step 2 was not written: the same command resumes from the last checkpoint\n")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "filter.json", "filter.safetensors", "log.jsonl"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
    filler.unlink()
    fill(0)  # no room even for the log's records up to the checkpoint, rewritten as a run resumes
    assert train_main([*args, "--output", str(out), "--steps", "2"]) == 3
    assert capsys.readouterr().err.startswith(f"unflicker: error: cannot write {out / 'log.jsonl'}: the disk is full (")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "filter.json", "filter.safetensors", "log.jsonl"]


def test_a_crop_larger_than_every_training_photo_is_refused_before_writing(tiny_data, tmp_path, capsys):
    """Every crop was upscaled from a smaller photo (a blur), and a crop of thousands of pixels ran the machine
    out of memory (the process killed, exit 137), with the output folder made."""
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
            "--batch", "1", "--base-width", "4", "--depth", "2", "--steps", "1"]
    side = max(min(cv2.imread(str(p)).shape[:2]) for p in (tiny_data / "train").iterdir())
    assert train_main([*args, "--crop", str(side + 1)]) == 2
    assert capsys.readouterr().err == (f"unflicker: error: crop {side + 1} is larger than every training photo (shorter "
                                       f"sides at most {side} px); give --crop {side} or less\n")
    assert not out.exists()
    assert train_main([*args, "--crop", str(side)]) == 0  # as large as the photos is fine


def test_resuming_under_other_settings_is_refused(tiny_data, tmp_path):
    # It used to continue the checkpoint silently (a finished run: no step at all) and rewrite its
    # weights with a record stating the new settings, e.g. lr 0.1 for weights never trained at it.
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, steps=2))
    before = (out / "filter.safetensors").read_bytes(), (out / "filter.json").read_text()
    with pytest.raises(InputError, match="other settings.*lr 0.0005 -> 0.1"):
        train(dataclasses.replace(tiny_config(tiny_data, out, steps=2), lr=0.1))
    with pytest.raises(InputError, match="crop 32 -> 40"):
        train(dataclasses.replace(tiny_config(tiny_data, out, steps=3), crop=40))
    with pytest.raises(InputError, match="seed 0 -> 7"):  # the run's start and data came from seed 0
        train(dataclasses.replace(tiny_config(tiny_data, out, steps=3), seed=7))
    assert ((out / "filter.safetensors").read_bytes(), (out / "filter.json").read_text()) == before
    # Fewer steps than the checkpoint's wrote its weights with a record of the fewer.
    with pytest.raises(InputError, match="at step 2, past --steps 1"):
        train(tiny_config(tiny_data, out, steps=1))
    # More steps, another stop or cadence go on; --no-resume starts afresh.
    assert train(dataclasses.replace(tiny_config(tiny_data, out, steps=3), log_every=2))["steps"] == 3
    assert train(dataclasses.replace(tiny_config(tiny_data, out, steps=1), lr=0.1, resume=False))["steps"] == 1


def test_a_refused_resume_names_only_the_settings_that_differ(tiny_data, tmp_path, capsys):
    # The one-line refusal printed whole nested option dicts (every field of distortion, network, ...)
    # for one changed value.
    out = tmp_path / "run"
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
            "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2", "--steps", "1"]
    assert train_main(args) == 0
    capsys.readouterr()
    assert train_main([*args, "--texture-prob", "0.5", "--lr", "0.002"]) == 2
    err = capsys.readouterr().err
    assert err == (f"unflicker: error: {out / 'checkpoint.pt'} is from a run with other settings "
                   "(distortion.texture_prob 0 -> 0.5; lr 0.0005 -> 0.002); give the same options to resume it, "
                   "or use another output folder or --no-resume\n")
    assert train_main([*args, "--base-width", "8"]) == 2  # the network's own check
    err = capsys.readouterr().err
    assert "network.base_width 4 -> 8" in err and "{" not in err and err.count("\n") == 1
    many = ["--crop", "40", "--batch", "3", "--lr", "0.1", "--grad-weight", "1", "--net-scale", "1", "--val-crop", "8"]
    assert train_main([*args, *many]) == 2
    err = capsys.readouterr().err
    assert "(batch 2 -> 3; crop 32 -> 40; grad_weight 0 -> 1; lr 0.0005 -> 0.1; net_scale 0.5 -> 1; and 1 more)" in err


def test_rerunning_a_finished_run_takes_no_step_and_writes_nothing(tiny_data, tmp_path, capsys, monkeypatch):
    # It validated again and rewrote the weights (and the log), as if it had trained.
    from unflicker.filter import training

    out = tmp_path / "run"
    files = lambda: {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(out.iterdir())}
    train(tiny_config(tiny_data, out, steps=2, stop_at=1))
    before = files()
    monkeypatch.setattr(training, "validate", None)  # a call would fail
    assert train(tiny_config(tiny_data, out, steps=2, stop_at=1))["nothing_to_do"].endswith(
        f"is at step 1, --stop-at 1 reached; its weights are {out / 'filter.safetensors'} (a later --stop-at goes on)")
    assert files() == before
    monkeypatch.undo()
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--val-images", "2",
            "--val-crop", "0", "--output", str(out), "--crop", "32", "--batch", "2", "--base-width", "4", "--depth",
            "2", "--steps", "2", "--checkpoint-every", "1", "--val-every", "100", "--log-every", "1", "--threads", "1"]
    assert train_main(args) == 0  # goes on to step 2
    capsys.readouterr()
    before = files()
    assert train_main(args) == 0
    assert capsys.readouterr().out == (f"nothing to do: the run in {out} is finished at step 2 of --steps 2; its "
                                       f"weights are {out / 'filter.safetensors'} (more --steps goes on)\n")
    assert files() == before
    # Weights not saved after the last checkpoint (a kill between the two) are saved, without a step.
    (out / "filter.json").unlink()
    assert train_main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["steps"] == 2
    assert load_network(out / "filter.safetensors")[1]["training"]["steps"] == 2
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "torch"])
def test_a_damaged_checkpoint_is_a_one_line_error(tiny_data, tmp_path, capsys, content):
    # It was a traceback from torch.load (or a KeyError for a file of other tensors).
    out = tmp_path / "run"
    out.mkdir()
    if content == "torch":
        torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")
    else:
        (out / "checkpoint.pt").write_bytes(content)
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
            "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2", "--steps", "1"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unflicker: error: ") and "checkpoint.pt" in err and "\n" not in err
    assert train_main([*args, "--no-resume"]) == 0


def test_the_log_holds_each_step_once_after_a_kill_and_a_fresh_start(tiny_data, tmp_path):
    # A killed session's records after its last checkpoint stayed, and the resumed one logged those
    # steps again; --no-resume appended a new run's steps to the old run's.
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, steps=4, stop_at=2))
    with (out / "log.jsonl").open("a") as log:  # what a session killed after step 3, before its checkpoint, left
        log.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    train(tiny_config(tiny_data, out, steps=4))
    steps = lambda: [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps() == [1, 2, 3, 4]
    assert all(json.loads(line)["loss"] != 1.0 for line in (out / "log.jsonl").read_text().splitlines())
    train(dataclasses.replace(tiny_config(tiny_data, out, steps=2), resume=False))
    assert steps() == [1, 2]


def train_filter_args(data, out, steps):
    """`unflicker train-filter` arguments of a tiny run with a checkpoint every step."""
    return ["train-filter", "--data", str(data), "--train-folders", "train", "--val-folder", "val", "--val-every",
            "100", "--output", str(out), "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2",
            "--steps", str(steps), "--checkpoint-every", "1"]


def ctrl_c_at_step(monkeypatch, step):
    """Make the filter's training see Ctrl-C while making the batch of `step` (1 = the first)."""
    from unflicker.filter import training

    real, calls = training.filter_batch, []

    def batch_or_interrupt(*args):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(training, "filter_batch", batch_or_interrupt)


def test_ctrl_c_in_training_says_it_resumes_from_the_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    # The unflicker command said "interrupted; no partial output was left", a deflickering run's line,
    # while the run folder and its checkpoint stay on purpose (the same command resumes from them).
    from unflicker import cli

    ctrl_c_at_step(monkeypatch, 3)
    out = tmp_path / "run"
    args = train_filter_args(tiny_data, out, 5)
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert err == f"unflicker: interrupted; the same command resumes from {out / 'checkpoint.pt'}\n"
    monkeypatch.undo()
    assert cli.main(args) == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_diverging_run_stops_in_one_line_and_saves_no_nan_weights(tiny_data, tmp_path, capsys):
    """A learning rate far too high made the loss NaN by the second step; the run went on to its end, wrote
    NaN weights (which `unflicker run --filter-weights` took) and a NaN checkpoint, and exited 0."""
    from unflicker import cli

    out = tmp_path / "run"
    assert cli.main([*train_filter_args(tiny_data, out, 6), "--lr", "1e8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unflicker: error: training diverged at step ") and err.count("\n") == 1
    assert not (out / "filter.safetensors").exists() and not (out / "filter.json").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # the last one before it diverged
    assert 1 <= state["step"] < 6 and all(torch.isfinite(v).all() for v in state["net"].values())


@pytest.mark.parametrize("name", ["checkpoint.pt", "filter.safetensors"])
def test_ctrl_c_while_a_checkpoint_or_the_weights_are_written_leaves_no_partial_file(tiny_data, tmp_path, capsys,
                                                                                     monkeypatch, name):
    """Ctrl-C (or SIGTERM) between writing checkpoint.pt.tmp or filter.safetensors.tmp and its rename left the
    partial file beside the run's (a checkpoint's size each)."""
    from pathlib import Path

    from unflicker import cli

    real = Path.replace

    def ctrl_c_at_the_rename(self, target):
        if Path(target).name == name and (name != "checkpoint.pt" or (Path(target).parent / name).exists()):
            raise KeyboardInterrupt
        return real(self, target)

    monkeypatch.setattr(Path, "replace", ctrl_c_at_the_rename)
    out = tmp_path / "run"
    assert cli.main(train_filter_args(tiny_data, out, 2)) == 130
    capsys.readouterr()
    assert not list(out.glob("*.tmp")) and torch.load(out / "checkpoint.pt", weights_only=True)["step"] >= 1
    assert not (out / "filter.safetensors").exists()


def test_a_fine_tuning_run_resumes_without_its_init_file(tiny_data, tmp_path):
    """A fine-tuning run's resume loaded --init again, only for the checkpoint to replace it: with that file
    moved or removed since the run began, the run could not be resumed ("filter weights not found")."""
    init = save_weights(random_net(4, 2, seed=3), tmp_path / "start" / "filter.safetensors")
    config = dataclasses.replace(tiny_config(tiny_data, tmp_path / "straight", steps=3), init=init)
    train(config)
    train(dataclasses.replace(config, output=tmp_path / "run", stop_at=2))
    shutil.rmtree(tmp_path / "start")
    assert train(dataclasses.replace(config, output=tmp_path / "run"))["steps"] == 3
    assert (tmp_path / "run" / "filter.safetensors").read_bytes() == (tmp_path / "straight" / "filter.safetensors").read_bytes()
    with pytest.raises(WeightsError, match="not found"):  # a run that starts afresh still needs it
        train(dataclasses.replace(config, output=tmp_path / "new"))


def test_a_fresh_run_does_not_replace_weights_in_its_output_folder_unless_asked(tiny_data, tmp_path):
    # With no checkpoint to resume (a folder of weights, or a run's whose checkpoint was removed) a run
    # overwrote the filter.safetensors and .json there at its end, unasked.
    out = tmp_path / "weights"
    path = save_weights(random_net(4, 2, seed=1), out / "filter.safetensors")
    before = path.read_bytes(), path.with_suffix(".json").read_text()
    with pytest.raises(InputError, match="no checkpoint.*--no-resume"):
        train(tiny_config(tiny_data, out, steps=1))
    assert (path.read_bytes(), path.with_suffix(".json").read_text()) == before
    assert not (out / "log.jsonl").exists()
    assert train(dataclasses.replace(tiny_config(tiny_data, out, steps=1), resume=False))["steps"] == 1
    assert path.read_bytes() != before[0]
    # A JSON alone (its weights moved away) was refused as "OUT/filter.safetensors exists", a file not there.
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(path.with_suffix(".json"), lone / "filter.json")
    with pytest.raises(InputError, match=r"^\S*lone/filter.json exists and there is no checkpoint"):
        train(tiny_config(tiny_data, lone, steps=1))


def test_the_weights_record_the_command_that_trained_them(tiny_data, tmp_path):
    # The refinement's JSON had its command, the filter's not (README: "each weight file has a JSON with
    # its config, command, scores"; the shipped filter's was added by hand).
    # Unquoted, a path with a space in it (or a shell character) made a command that does something else.
    args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output",
            str(tmp_path / "my run"), "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2", "--steps", "1"]
    assert train_main(args) == 0
    _, meta = load_network(tmp_path / "my run" / "filter.safetensors")
    assert shlex.split(meta["training"]["command"]) == ["python", "-m", "unflicker.filter.training", *args]


def test_an_output_that_cannot_be_a_folder_is_a_one_line_error(tiny_data, tmp_path, capsys):
    # It was a FileExistsError / NotADirectoryError traceback from mkdir.
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        args = ["--data", str(tiny_data), "--train-folders", "train", "--val-folder", "val", "--output", str(out),
                "--crop", "32", "--batch", "2", "--base-width", "4", "--depth", "2", "--steps", "1"]
        assert train_main(args) == 3
        err = capsys.readouterr().err
        assert err.startswith("unflicker: error: cannot make the folder ") and err.count("\n") == 1


def test_a_run_folder_is_held_by_one_training_run_at_a_time(tiny_data, tmp_path):
    # Two runs of the same folder at once (the command started twice) wrote the same checkpoint.pt.tmp,
    # checkpoint, log and weights over each other.
    import os

    from unflicker.errors import OutputError
    from unflicker.io.common import hold_lock

    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, steps=2, stop_at=1))
    before = (out / "checkpoint.pt").read_bytes()
    fd = hold_lock(out, "held by the test")  # as another process's run would
    try:
        with pytest.raises(OutputError, match="another training run is using"):
            train(tiny_config(tiny_data, out, steps=2))
    finally:
        os.close(fd)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert train(tiny_config(tiny_data, out, steps=2))["steps"] == 2
    os.close(hold_lock(out, "let go after the run"))


def test_a_save_cut_short_between_weights_and_json_is_told_at_load(tmp_path, monkeypatch):
    # The two files were renamed in place one after the other: a kill between them left new tensors
    # beside the old JSON (or the reverse), loaded as if they belonged together.
    from pathlib import Path

    path = save_weights(random_net(4, 2, seed=1), tmp_path / "w.safetensors", extra={"training": {"run": 1}})
    real, renames = Path.replace, []

    def killed_after_the_first(self, target):
        if renames:
            raise KeyboardInterrupt
        renames.append(target)
        return real(self, target)

    monkeypatch.setattr(Path, "replace", killed_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        save_weights(random_net(4, 2, seed=2), path, extra={"training": {"run": 2}})
    monkeypatch.setattr(Path, "replace", real)
    with pytest.raises(WeightsError, match="is not the file w.json was saved with"):
        load_network(path)
    save_weights(random_net(4, 2, seed=2), path, extra={"training": {"run": 2}})
    assert load_network(path)[1]["training"] == {"run": 2}


def test_tensors_not_saved_with_their_json_fail_before_any_work(tmp_path):
    """Another run's filter.safetensors beside a filter.json (copied in, or a save cut short) passed the
    check a run makes before any work and failed only when a worker loaded it, after the analysis pass."""
    from unflicker.neural import NeuralConfig, NeuralDeflicker

    path = save_weights(random_net(4, 2, seed=1), tmp_path / "w.safetensors")
    config = NeuralConfig(filter_weights=str(path), stop_after="filter")
    NeuralDeflicker.fingerprint(config)
    save_weights(random_net(4, 2, seed=2), tmp_path / "other.safetensors")
    shutil.copy(tmp_path / "other.safetensors", path)
    with pytest.raises(WeightsError, match="w.safetensors is not the file w.json was saved with"):
        NeuralDeflicker.fingerprint(config)


def test_saved_weights_are_as_readable_as_their_json(tmp_path):
    """safetensors' save_file wrote the tensors owner-only (0600) whatever the umask, beside a JSON readable
    by all: weights trained by one user (or in a container as root) could not be loaded by another."""
    path = save_weights(random_net(4, 2, seed=1), tmp_path / "w.safetensors")
    mode = lambda p: p.stat().st_mode & 0o777
    assert mode(path) == mode(path.with_suffix(".json"))
    load_network(path)


def test_load_rejects_weights_that_are_not_finite(tmp_path):
    """NaN weights (a diverged training run's, saved before training stopped on them) were loaded and used."""
    net = random_net(4, 2, seed=1)
    path = save_weights(net, tmp_path / "w.safetensors")
    load_network(path)
    for value in (float("nan"), float("inf")):
        with torch.no_grad():
            net.head.weight[0, 0, 0, 0] = value
        save_weights(net, path)
        with pytest.raises(WeightsError, match="head.weight holds NaN or infinite values"):
            load_network(path)
        with pytest.raises(WeightsError):
            NeuralFilter.load(path)


def test_load_rejects_missing_and_mismatched_weights(tmp_path):
    with pytest.raises(WeightsError):
        load_network(tmp_path / "nothing.safetensors")
    # A training run's folder (what --output named) was "need RUN and RUN.json beside it".
    save_weights(FilterUNet(FilterNetConfig(4, 2)), tmp_path / "run" / "filter.safetensors")
    with pytest.raises(WeightsError, match=r"is a folder: give the .safetensors file in it \(.*filter.safetensors is there"):
        load_network(tmp_path / "run")
    path = save_weights(FilterUNet(FilterNetConfig(4, 2)), tmp_path / "w.safetensors")
    load_network(path)
    # The JSON given for the weights was "w.json is not the file w.json was saved with (a save cut short
    # between the two?); save or train them again": good weights called damaged.
    with pytest.raises(WeightsError, match=r"w.json is the weights' JSON: give .*w.safetensors, the file beside it$"):
        load_network(path.with_suffix(".json"))
    meta = json.loads(path.with_suffix(".json").read_text())
    for key, value in (("network", {"base_width": 8, "depth": 2}), ("version", 99)):
        bad = tmp_path / f"bad_{key}.safetensors"
        shutil.copy(path, bad)
        bad.with_suffix(".json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(WeightsError):
            load_network(bad)


# --- shipped filter ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    assert default_weights_path().is_file(), "shipped filter weights are missing"
    return NeuralFilter.load(device="cpu")


def test_shipped_filter_beats_both_inputs(shipped):
    x = texture(96, 128, seed=5)
    # Frame: the clean image with strong exposure, white-balance and smooth local flicker.
    yy, xx = np.mgrid[0:96, 0:128] / 128.0
    gain = (1.35 * np.float32([1.0, 0.85, 1.15]) * (1 + 0.2 * np.sin(3 * xx + 2 * yy))[..., None]).astype(np.float32)
    frame = np.clip(x * gain, 0, 1) ** np.float32(0.9)
    # Atlas: the clean image slightly warped (structure flaw) at a lower resolution.
    flow = np.stack([2.5 * np.sin(yy * 4), 2.0 * np.cos(xx * 3)], -1).astype(np.float32)
    atlas = cv2.resize(warp_image(x, flow), (96, 72), interpolation=cv2.INTER_AREA)
    atlas_full = cv2.resize(atlas, (128, 96), interpolation=cv2.INTER_LINEAR)
    out = shipped.apply(frame, atlas)
    assert out.shape == x.shape and out.dtype == np.float32
    assert psnr(out, x) > psnr(frame, x) + 3
    assert psnr(out, x) > psnr(atlas_full, x) + 1


@pytest.mark.parametrize("size", [(33, 17), (301, 203)])
@pytest.mark.parametrize("upsample", ["bilinear", "guided"])
def test_apply_keeps_odd_sizes(shipped, size, upsample):
    f = NeuralFilter(shipped.net, shipped.config.__class__(working_side=64, upsample=upsample), device="cpu")
    frame = texture(*size, seed=1)
    atlas = texture(20, 11, seed=2)
    out = f.apply(frame, atlas)
    assert out.shape == (*size, 3) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    out_u8 = f.apply((frame * 255).astype(np.uint8), atlas)
    assert np.abs(out_u8 - out).mean() < 0.01


def test_bf16_runs_the_body_in_bfloat16_and_stays_within_a_fraction_of_an_8_bit_level(shipped):
    """precision='bf16': the convolutions between inputs and head in bfloat16, the prior and head in
    float32; the filtered frame differs from fp32's by far less than one 8-bit level on average."""
    fast = NeuralFilter.load(device="cpu", precision="bf16")
    assert fast.net.down[0][0].weight.dtype == torch.bfloat16 and fast.net.merge[-1][0].weight.dtype == torch.bfloat16
    assert fast.net.head.weight.dtype == torch.float32
    assert shipped.net.down[0][0].weight.dtype == torch.float32  # the fp32 filter's net is its own
    given = random_net(4, 2, seed=1)
    NeuralFilter(given, shipped.config.__class__(precision="bf16"), device="cpu")
    assert {p.dtype for p in given.parameters()} == {torch.float32} and given.down[0][0].weight.is_contiguous()
    frame, atlas = texture(96, 160, seed=3), texture(48, 80, seed=4)
    exact, approx = shipped.apply(frame, atlas), fast.apply(frame, atlas)
    assert approx.dtype == np.float32 and approx.shape == exact.shape
    diff = np.abs(approx - exact)
    assert 0 < diff.mean() < 0.1 / 255 and diff.max() < 2 / 255  # not the same computation, but close
    assert fast.coefficients(cv2.resize(frame, (80, 48)), atlas).dtype == np.float32


def test_the_filter_runs_at_its_own_precision_whatever_the_net_it_is_given():
    """A filter's precision is its config's, also for a net that another filter runs in bfloat16: an 'fp32'
    filter made from a bf16 filter's net ran its convolutions in bfloat16 (the copy kept the given dtype)."""
    fast = NeuralFilter.load(device="cpu", precision="bf16")
    again = NeuralFilter(fast.net, dataclasses.replace(fast.config, precision="fp32"), device="cpu")
    assert {p.dtype for p in again.net.parameters()} == {torch.float32}
    assert fast.net.down[0][0].weight.dtype == torch.bfloat16  # the given net as it was


def test_apply_rejects_bad_frames(shipped):
    with pytest.raises(InputError):
        shipped.apply(np.zeros((10, 10), np.float32), np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InputError):
        shipped.apply(np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.float32))


def random_net(base_width, depth, seed):
    """A filter net with small random weights (a fresh one's head is zero: it would return its prior)."""
    g = torch.Generator().manual_seed(seed)
    net = FilterUNet(FilterNetConfig(base_width=base_width, depth=depth))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def test_a_student_starts_as_the_teacher_cut_to_its_widths_and_distils(tiny_data, tmp_path):
    teacher = random_net(6, 3, seed=4)
    student = FilterUNet(FilterNetConfig(base_width=4, depth=3))
    slice_weights(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(s["down.0.0.weight"], t["down.0.0.weight"][:4])
    torch.testing.assert_close(s["merge.1.0.weight"][:, :4], t["merge.1.0.weight"][:4, :4])  # up-conv half
    torch.testing.assert_close(s["merge.1.0.weight"][:, 4:], t["merge.1.0.weight"][:4, 6:10])  # skip half
    torch.testing.assert_close(s["merge.1.2.weight"], t["merge.1.2.weight"][:4, :4])  # not a concatenation
    torch.testing.assert_close(s["head.bias"], t["head.bias"])
    with pytest.raises(InputError):
        slice_weights(FilterUNet(FilterNetConfig(base_width=4, depth=2)), teacher)
    # Distillation runs end to end and writes a loadable student that records its teacher.
    path = save_weights(teacher, tmp_path / "teacher.safetensors")
    config = dataclasses.replace(tiny_config(tiny_data, tmp_path / "student", steps=2),
                                 network=FilterNetConfig(base_width=4, depth=3), teacher=path, teacher_weight=0.8)
    assert train(config)["steps"] == 2
    with pytest.raises(InputError):
        train(dataclasses.replace(config, teacher_weight=1.5, output=tmp_path / "bad"))
    _, meta = load_network(tmp_path / "student" / "filter.safetensors")
    assert meta["network"]["base_width"] == 4 and meta["training"]["config"]["teacher"] == str(path)


def test_fine_tuning_starts_from_the_given_weights_and_records_both_validations(tiny_data, tmp_path):
    start = random_net(4, 2, seed=5)
    path = save_weights(start, tmp_path / "start.safetensors")
    config = dataclasses.replace(tiny_config(tiny_data, tmp_path / "tuned", steps=1), init=path, lr=1e-12,
                                 distortion=DistortionConfig(texture_prob=0.5))
    assert train(config)["steps"] == 1
    tuned, meta = load_network(tmp_path / "tuned" / "filter.safetensors")
    for (k, v), w in zip(tuned.state_dict().items(), start.state_dict().values()):
        torch.testing.assert_close(v, w, msg=k, atol=1e-6, rtol=0)  # a step of lr 1e-12 from the start
    assert set(meta["training"]["val_psnr_appearance_only"]) == {"filter", "frame", "atlas"}
    with pytest.raises(InputError):
        train(dataclasses.replace(config, distortion=DistortionConfig(texture_prob=1.5), output=tmp_path / "bad"))
    with pytest.raises(InputError):  # weights of another network
        train(dataclasses.replace(config, network=FilterNetConfig(4, 3), output=tmp_path / "other"))


def test_ctrl_c_in_a_no_resume_run_leaves_no_old_checkpoint_and_says_how_to_go_on(tiny_data, tmp_path, capsys,
                                                                                  monkeypatch):
    """A --no-resume run stopped before its first checkpoint left the old run's checkpoint under its own (cut)
    log, and said that the same command resumes (with --no-resume it starts afresh again)."""
    from unflicker import cli

    out = tmp_path / "run"
    args = train_filter_args(tiny_data, out, 3)
    assert cli.main(args) == 0
    ctrl_c_at_step(monkeypatch, 1)
    capsys.readouterr()
    assert cli.main([*args, "--no-resume"]) == 130
    assert capsys.readouterr().err == "unflicker: interrupted; no checkpoint was written yet: the same command starts afresh\n"
    assert not (out / "checkpoint.pt").exists()
    monkeypatch.undo()
    ctrl_c_at_step(monkeypatch, 2)
    assert cli.main([*args, "--no-resume"]) == 130
    assert capsys.readouterr().err == (f"unflicker: interrupted; the same command without --no-resume resumes from "
                                       f"{out / 'checkpoint.pt'}\n")
