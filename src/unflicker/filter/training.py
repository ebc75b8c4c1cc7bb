"""Train the neural filter on still photographs with synthetic appearance / structure distortions.

    python -m unflicker.filter.training --data ../shared/data/images --output train_runs/filter --steps 4000

Writes under the output folder: checkpoint.pt (resumable), log.jsonl (one record per log line),
and filter.safetensors + filter.json (the final weights, loadable by NeuralFilter.load).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from unflicker.cli import OneLineParser
from unflicker.errors import InputError, UnflickerError
from unflicker.filter.distortions import DistortionConfig, make_pair
from unflicker.filter.inference import FilterInferenceConfig, load_network, save_weights
from unflicker.filter.network import PRIORS, FilterNetConfig, FilterUNet, apply_coefficients
from unflicker.training import (add_run_control_args, check_fresh_output, check_run_numbers, check_finite,
                                check_loss_weights, checkpoint_to_resume, config_record, cosine_lr, interrupted,
                                nothing_to_do, open_log, report_step, run_control, run_folder, save_checkpoint,
                                shared_data, write_error)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class FilterTrainConfig:
    """Everything a filter training run depends on; saved into the checkpoint and the weights' JSON."""

    data_root: Path = field(default_factory=lambda: shared_data("images"))
    """Folder holding the training and validation image folders."""
    train_folders: tuple[str, ...] = ("bsds500/train", "bsds500/val", "urban100")
    """Image folders (relative to data_root) to draw training crops from."""
    val_folder: str = "bsds500/test"
    """Held-out image folder (relative to data_root) for validation."""
    val_images: int = 40
    """Number of validation images (the first ones in sorted order)."""
    val_crop: int = 256
    """Validate on the central val_crop x val_crop window of each image (0: the whole image)."""
    val_seed: int = 1_000_003
    """Seed of the validation distortions (differs from any training seed)."""
    output: Path = Path("train_runs/filter")
    """Folder for the checkpoint, log and final weights."""
    crop: int = 160
    """Side of the square training crops, in pixels."""
    min_scale: float = 0.5
    """Crops are taken from the photo downscaled by a random factor in [min_scale, 1]."""
    batch: int = 8
    """Crops per optimisation step."""
    steps: int = 4000
    """Total optimisation steps."""
    lr: float = 5e-4
    """Adam learning rate at the start; cosine decay to lr * final_lr_fraction."""
    final_lr_fraction: float = 0.05
    """Learning rate at the last step, as a fraction of lr."""
    net_scale: float = 0.5
    """The net sees the crop downscaled by this factor (area) and its coefficients are bilinearly
    upsampled back before they are applied, as at inference; 1 runs it at the crop size."""
    grad_weight: float = 0.0
    """Weight of an L1 loss on image gradients, added to the L1 loss on colours."""
    network: FilterNetConfig = field(default_factory=FilterNetConfig)
    """Shape of the UNet."""
    distortion: DistortionConfig = field(default_factory=DistortionConfig)
    """Strength of the synthetic training distortions."""
    inference: FilterInferenceConfig = field(default_factory=FilterInferenceConfig)
    """Inference settings written beside the final weights."""
    seed: int = 0
    """Seed of initialisation and of the training-data stream."""
    checkpoint_every: int = 200
    """Steps between checkpoints (a killed run resumes from the last one)."""
    val_every: int = 500
    """Steps between validations (and always at the last step)."""
    log_every: int = 50
    """Steps between log lines."""
    stop_at: int = 0
    """Stop (with a checkpoint) once this step is reached, to split a run into sessions; 0 runs to `steps`."""
    resume: bool = True
    """Continue from output/checkpoint.pt when it exists."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    teacher: Path | None = None
    """Distillation: filter weights (e.g. the shipped ones) whose output on the same distorted crops
    is the target, mixed with the clean photo by teacher_weight; the student starts from the
    teacher's weights cut to its widths. None trains on the clean photos alone."""
    teacher_weight: float = 1.0
    """Distillation: share of the loss on matching the teacher (the rest on the clean photo)."""
    init: Path | None = None
    """Fine-tuning: filter weights of the same network config to start from (e.g. the shipped ones)."""


def load_images(folder: Path) -> list[np.ndarray]:
    """All images in folder (sorted by name) as (H, W, 3) uint8 RGB arrays."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"cannot read image {path}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images


def random_crop(image: np.ndarray, crop: int, min_scale: float, rng: np.random.Generator) -> np.ndarray:
    """(crop, crop, 3) float32 in [0, 1]: a random window of a randomly downscaled, flipped, rotated image."""
    h, w = image.shape[:2]
    scale = max(rng.uniform(min_scale, 1.0), crop / min(h, w))  # upscale only if the photo is too small
    win = min(round(crop / scale), h, w)
    y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
    flags = cv2.INTER_AREA if win > crop else cv2.INTER_LINEAR
    out = cv2.resize(image[y : y + win, x : x + win], (crop, crop), interpolation=flags)
    out = np.rot90(out, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out).astype(np.float32) / np.float32(255.0)


def center_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The central (min(side, H), min(side, W)) window of an (H, W, C) image; side 0 keeps it whole."""
    if side <= 0:
        return image
    h, w = image.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[y : y + side, x : x + side]


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())


def make_batch(images: list[np.ndarray], config: FilterTrainConfig,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frame I', atlas A', target X), each (B, 3, crop, crop) float32, from random crops of images."""
    triples = []
    for _ in range(config.batch):
        x = random_crop(images[int(rng.integers(len(images)))], config.crop, config.min_scale, rng)
        triples.append(make_pair(x, rng, config.distortion))
    return tuple(_to_tensor([t[k] for t in triples]) for k in range(3))


def validation_set(images: list[np.ndarray], seed: int,
                   distortion: DistortionConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed (I', A', X) triples at full image size; image i uses the generator seeded (seed, i)."""
    return [make_pair(img, np.random.default_rng([seed, i]), distortion) for i, img in enumerate(images)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two arrays with values in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def filter_batch(net: FilterUNet, frame: torch.Tensor, atlas: torch.Tensor, net_scale: float) -> torch.Tensor:
    """Filter (B, 3, H, W) frames with the net run at net_scale times their size; returns (B, 3, H, W) unclipped.

    Mirrors NeuralFilter.apply: area downscaling in, bilinear (half-pixel centres) coefficients out.
    """
    h, w = frame.shape[-2:]
    size = (max(1, round(h * net_scale)), max(1, round(w * net_scale)))
    if size == (h, w):
        return net(frame, atlas)
    coeffs = net.coefficients(F.interpolate(frame, size=size, mode="area"), F.interpolate(atlas, size=size, mode="area"))
    return apply_coefficients(frame, F.interpolate(coeffs, size=(h, w), mode="bilinear", align_corners=False))


@torch.inference_mode()
def validate(net: FilterUNet, val: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
             net_scale: float = 1.0) -> dict[str, float]:
    """Mean PSNR (dB) against X of the filter output and of the baselines I' (frame) and A' (atlas)."""
    was_training = net.training
    net.eval()
    scores = {"filter": [], "frame": [], "atlas": []}
    for frame, atlas, target in val:
        out = filter_batch(net, _to_tensor([frame]), _to_tensor([atlas]), net_scale)
        out = out[0].clamp(0, 1).numpy().transpose(1, 2, 0)
        scores["filter"].append(psnr(out, target))
        scores["frame"].append(psnr(frame, target))
        scores["atlas"].append(psnr(atlas, target))
    net.train(was_training)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _loss(out: torch.Tensor, target: torch.Tensor, grad_weight: float) -> torch.Tensor:
    loss = (out - target).abs().mean()
    if grad_weight > 0:
        for dim in (-1, -2):
            loss = loss + grad_weight * (out.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    return loss


def slice_weights(student: FilterUNet, teacher: FilterUNet) -> None:
    """Start a narrower student from the teacher: each tensor cut to the student's channels (the first
    ones of every level; both halves of a merge's concatenated input). Same depth and prior needed."""
    s_cfg, t_cfg = student.config, teacher.config
    if (s_cfg.depth, s_cfg.prior) != (t_cfg.depth, t_cfg.prior) or s_cfg.base_width > t_cfg.base_width:
        raise InputError(f"a student needs the teacher's depth and prior and no more width; got {s_cfg} for {t_cfg}")
    teacher_state = teacher.state_dict()
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            source = teacher_state[name]
            index = []
            for dim, (n_s, n_t) in enumerate(zip(tensor.shape, source.shape)):
                if n_s == n_t:
                    index.append(torch.arange(n_t))
                elif dim == 1 and name.startswith("merge.") and name.endswith(".0.weight"):
                    half_s, half_t = n_s // 2, n_t // 2  # [up-conv channels, skip channels]
                    index.append(torch.cat([torch.arange(half_s), half_t + torch.arange(half_s)]))
                else:
                    index.append(torch.arange(n_s))
            for dim, idx in enumerate(index):
                source = source.index_select(dim, idx)
            tensor.copy_(source)


def train(config: FilterTrainConfig, command: str | None = None) -> dict:
    """Train (or resume) a filter; returns a summary dict (steps, seconds, last validation, weights path),
    or where the run in config.output has nothing left to do, its steps and weights and a line that says so.

    command: the command line that started the run, recorded in the weights' JSON.
    """
    out_dir = Path(config.output)
    check_run_numbers(config)
    check_fresh_output(config, "filter.safetensors")
    for name in ("crop", "batch", "val_images"):
        if getattr(config, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(config, name)}")
    check_loss_weights(config, "grad_weight")
    # Above 1 the net trains on upscaled crops, as inference never runs it (and a large value runs out of memory).
    if not (math.isfinite(config.net_scale) and 0 < config.net_scale <= 1):
        raise InputError(f"net_scale must be a number in (0, 1], got {config.net_scale}")
    if not (math.isfinite(config.network.prior_sigma) and config.network.prior_sigma > 0):
        raise InputError(f"prior_sigma must be a number > 0, got {config.network.prior_sigma}")
    if config.inference.working_side < 8:  # as NeuralFilter, which loads the weights, needs
        raise InputError(f"working_side must be >= 8, got {config.inference.working_side}")
    if config.threads:
        torch.set_num_threads(config.threads)
    if not 0.0 <= config.distortion.texture_prob <= 1.0:
        raise InputError(f"texture_prob must be in 0..1, got {config.distortion.texture_prob}")
    if not 0.0 <= config.teacher_weight <= 1.0:
        raise InputError(f"teacher_weight must be in 0..1, got {config.teacher_weight}")
    root = Path(config.data_root)
    images = [img for folder in config.train_folders for img in load_images(root / folder)]
    largest = max(min(img.shape[:2]) for img in images)
    if config.crop > largest:  # every crop an upscaled blur; a crop of thousands ran out of memory
        raise InputError(f"crop {config.crop} is larger than every training photo (shorter sides at most "
                         f"{largest} px); give --crop {largest} or less")
    val_images = [center_crop(img, config.val_crop) for img in load_images(root / config.val_folder)[: config.val_images]]
    val = validation_set(val_images, config.val_seed, config.distortion)

    torch.manual_seed(config.seed)
    net = FilterUNet(config.network)
    teacher = None
    if config.teacher is not None:
        teacher, _ = load_network(config.teacher)
        teacher.requires_grad_(False)
        slice_weights(net, teacher)
    # The start of a fine-tuning run that resumes is in its checkpoint: --init's file is not needed (it may be gone).
    if config.init is not None and not (config.resume and (out_dir / "checkpoint.pt").is_file()):
        start_net, _ = load_network(config.init)
        if start_net.config != net.config:
            raise InputError(f"--init weights are a {start_net.config.to_dict()} network, not the {net.config.to_dict()} "
                             "this run trains: give the same --base-width, --depth, --prior and --prior-sigma")
        net.load_state_dict(start_net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    step, seconds = 0, 0.0
    with run_folder(out_dir):  # only once the inputs proved usable
        ckpt_path = out_dir / "checkpoint.pt"
        state = checkpoint_to_resume(config, ckpt_path, "cpu")
        weights = out_dir / "filter.safetensors"
        done = nothing_to_do(config, state, weights)
        if done:  # a rerun of a run with nothing left to do: no step, no validation, nothing written
            return {"steps": state["step"], "weights": str(weights), "nothing_to_do": done}
        if state is not None:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            step, seconds = state["step"], float(state.get("seconds", 0.0))
            print(f"resumed from {ckpt_path} at step {step}", flush=True)

        log = open_log(out_dir / "log.jsonl", step)
        last_val: dict[str, float] = {}
        net.train()
        start, running = time.time(), []
        # One worker thread makes the next batch while the net trains on this one. The generator state
        # is read before each submission (the worker is idle then), so a checkpoint stores the state that
        # regenerates exactly the next unseen batch.
        pool = ThreadPoolExecutor(max_workers=1)
        next_state = json.dumps(rng.bit_generator.state)
        pending = pool.submit(make_batch, images, config, rng)
        end = min(config.stop_at, config.steps) if config.stop_at > 0 else config.steps
        try:
            while step < end:
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, config.steps, config.lr, config.final_lr_fraction)
                frame, atlas, target = pending.result()
                next_state = json.dumps(rng.bit_generator.state)
                pending = pool.submit(make_batch, images, config, rng)
                out = filter_batch(net, frame, atlas, config.net_scale)
                loss = _loss(out, target, config.grad_weight)
                if teacher is not None and config.teacher_weight > 0:
                    with torch.no_grad():
                        taught = filter_batch(teacher, frame, atlas, config.net_scale)
                    loss = config.teacher_weight * _loss(out, taught, config.grad_weight) + (1 - config.teacher_weight) * loss
                value = loss.item()
                check_finite(step + 1, loss=value)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                running.append(value)
                record = None
                if step % config.log_every == 0 or step == end:
                    record = {"step": step, "loss": float(np.mean(running)), "lr": cosine_lr(step, config.steps, config.lr, config.final_lr_fraction),
                              "elapsed_s": round(seconds + time.time() - start, 1)}
                    running = []
                if step % config.val_every == 0 or step == end:
                    last_val = validate(net, val, config.net_scale)
                    record = {**(record or {"step": step}), "val_psnr": last_val}
                report_step(log, record)
                if step % config.checkpoint_every == 0 or step == end:
                    check_finite(step, net=net)
                    save_checkpoint(ckpt_path, net, opt, step, next_state, asdict(config.network),
                                    seconds + time.time() - start, config)
        finally:
            pending.cancel()
            pool.shutdown(wait=True)
            log.close()
        if not last_val:
            last_val = validate(net, val, config.net_scale)
        extra_val = {}
        if config.distortion.texture_prob > 0:  # also the appearance-only set of a run without texture changes
            plain = replace(config.distortion, texture_prob=0.0)
            extra_val["val_psnr_appearance_only"] = validate(net, validation_set(val_images, config.val_seed, plain),
                                                             config.net_scale)
        check_finite(step, net=net)
        try:
            weights = save_weights(net, weights, config.inference, extra={
                "training": {"config": config_record(config), "steps": step, "val_psnr": last_val,
                             **extra_val, "train_images": len(images), "val_images": len(val),
                             "seconds": round(seconds + time.time() - start, 1), "command": command},
            })
        except OSError as exc:
            raise write_error(weights, exc, "the weights were not saved") from None
        return {"steps": step, "seconds": round(seconds + time.time() - start, 1), "val_psnr": last_val,
                "weights": str(weights)}


def build_parser() -> argparse.ArgumentParser:
    d = FilterTrainConfig()
    p = OneLineParser(prog="unflicker train-filter", description="Train the neural filter on photographs.")
    p.add_argument("--data", type=Path, default=d.data_root, help="folder holding the image folders (default %(default)s)")
    p.add_argument("--train-folders", nargs="+", default=list(d.train_folders), help="training folders under --data")
    p.add_argument("--val-folder", default=d.val_folder, help="held-out folder under --data")
    p.add_argument("--val-images", type=int, default=d.val_images)
    p.add_argument("--val-crop", type=int, default=d.val_crop, help="central validation window (0: whole image)")
    p.add_argument("--output", type=Path, default=d.output, help="run folder (default %(default)s)")
    p.add_argument("--crop", type=int, default=d.crop)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--net-scale", type=float, default=d.net_scale, help="net input size / crop size")
    p.add_argument("--grad-weight", type=float, default=d.grad_weight)
    p.add_argument("--base-width", type=int, default=d.network.base_width)
    p.add_argument("--depth", type=int, default=d.network.depth)
    p.add_argument("--prior", choices=PRIORS, default=d.network.prior, help="starting point the net corrects")
    p.add_argument("--prior-sigma", type=float, default=d.network.prior_sigma,
                   help="stats prior window sigma, in net input pixels")
    p.add_argument("--working-side", type=int, default=d.inference.working_side,
                   help="inference working resolution written beside the weights")
    p.add_argument("--teacher", type=Path, default=None,
                   help="distil: filter weights whose output is the target (the student starts from them, cut)")
    p.add_argument("--teacher-weight", type=float, default=d.teacher_weight,
                   help="distil: share of the loss on the teacher's output (the rest on the clean photo)")
    p.add_argument("--init", type=Path, default=None, help="fine-tune: start from these filter weights")
    p.add_argument("--texture-prob", type=float, default=d.distortion.texture_prob,
                   help="share of training frames that also get a texture-level change")
    add_run_control_args(p, d)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print a one-line JSON summary; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    config = FilterTrainConfig(
        data_root=a.data, train_folders=tuple(a.train_folders), val_folder=a.val_folder, val_images=a.val_images,
        val_crop=a.val_crop,
        output=a.output, crop=a.crop, batch=a.batch, steps=a.steps, lr=a.lr, net_scale=a.net_scale, grad_weight=a.grad_weight,
        network=FilterNetConfig(base_width=a.base_width, depth=a.depth, prior=a.prior, prior_sigma=a.prior_sigma),
        inference=FilterInferenceConfig(working_side=a.working_side), teacher=a.teacher,
        teacher_weight=a.teacher_weight, init=a.init, distortion=DistortionConfig(texture_prob=a.texture_prob),
        **run_control(a),
    )
    try:
        # Quoted: an unquoted path with a space in it makes another command.
        summary = train(config, shlex.join(["python", "-m", "unflicker.filter.training", *argv]))
        print(summary.get("nothing_to_do") or json.dumps(summary))
    except UnflickerError as exc:
        print(f"unflicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return interrupted(exc, config.output, config.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
