"""Train the local refinement net L on clean video clips with synthetic residual (local) flicker.

    python -m unflicker.refine.training --output train_runs/refine/v1 --steps 2000 --threads 1

Each sample is a short window of a clean clip (random crop and scale, cached at low resolution with
its clean flows), flickered by a random residual flicker; L runs recurrently over it from O_0 = P_0.
Losses: fidelity L1 to the clean frames (so L cannot freeze the video), short-term temporal
||M_t (O_t - W(O_{t-1}))||_1 and long-term ||M_t0 (O_t - W(O_0))||_1, with W and M the clean
flows and occlusion masks. Writes under the output folder: checkpoint.pt (resumable), log.jsonl,
and refine.safetensors + refine.json (loadable by LocalRefiner.load).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from unflicker.cli import OneLineParser
from unflicker.errors import InputError, UnflickerError
from unflicker.flow import FLOW_PRESETS
from unflicker.refine.align import align_previous
from unflicker.refine.data import CachedClip, compose_to_first, decode_clip, load_clip, sample_window
from unflicker.refine.inference import LocalRefiner, RefineInferenceConfig, save_weights
from unflicker.refine.network import RefineNet, RefineNetConfig, warp_tensor
from unflicker.refine.residual import ResidualFlicker, ResidualFlickerConfig
from unflicker.training import (add_run_control_args, check_fresh_output, check_run_numbers, check_finite,
                                check_loss_weights, checkpoint_to_resume, config_record, cosine_lr, interrupted,
                                make_folder, nothing_to_do, open_log, report_step, run_control, run_folder,
                                save_checkpoint, shared_data, write_error)


@dataclass
class RefineTrainConfig:
    """Everything a refinement training run depends on; saved into the checkpoint and the weights' JSON."""

    data_root: Path = field(default_factory=lambda: shared_data("clean"))
    """Folder of clean .mp4 clips (never flickering test data)."""
    val_clip: str = "davis-bear"
    """Stem of the clip held out for validation; every other .mp4 in data_root is trained on."""
    val_frames: int = 24
    """Validation uses the first val_frames frames of the held-out clip."""
    val_draws: int = 3
    """Validation flicker draws (each a full pass over the validation frames)."""
    val_seed: int = 1_000_003
    """Seed of the validation flicker (differs from any training seed)."""
    output: Path = Path("train_runs/refine")
    """Folder for the checkpoint, log and final weights."""
    cache_dir: Path | None = None
    """Where decoded low-resolution clips and their clean flows are cached (None: output/cache)."""
    cache_side: int = 384
    """Longer side of the cached clips, pixels."""
    max_frames: int = 200
    """At most this many frames are cached per clip (the first ones)."""
    length: int = 7
    """Frames per training window."""
    crop: int = 160
    """Side of the square training crops, pixels."""
    scale_range: tuple[float, float] = (0.65, 1.0)
    """Crops are rescaled by a random factor in this range (cache pixels -> crop pixels)."""
    batch: int = 4
    """Windows per optimisation step."""
    steps: int = 2000
    """Total optimisation steps."""
    lr: float = 1e-3
    """Adam learning rate at the start; cosine decay to lr * final_lr_fraction."""
    final_lr_fraction: float = 0.05
    """Learning rate at the last step, as a fraction of lr."""
    fidelity_weight: float = 1.0
    """Weight of the L1 loss to the clean frames."""
    short_term_weight: float = 0.5
    """Weight of the masked L1 between O_t and the warped O_{t-1}."""
    long_term_weight: float = 0.1
    """Weight of the masked L1 between O_t and the warped O_0."""
    network: RefineNetConfig = field(default_factory=RefineNetConfig)
    """Shape of the net."""
    flicker: ResidualFlickerConfig = field(default_factory=ResidualFlickerConfig)
    """Ranges of the synthetic residual flicker."""
    inference: RefineInferenceConfig = field(default_factory=RefineInferenceConfig)
    """Inference settings written beside the final weights (flow_preset is also used in training)."""
    full_validation: bool = True
    """After training, also validate at the held-out clip's full resolution through LocalRefiner."""
    seed: int = 0
    """Seed of initialisation and of the training-data stream."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a killed run resumes from the last one)."""
    val_every: int = 250
    """Steps between validations (and always at the last step)."""
    log_every: int = 25
    """Steps between log lines."""
    stop_at: int = 0
    """Stop (with a checkpoint) once this step is reached, to split a run into sessions; 0 runs to `steps`."""
    resume: bool = True
    """Continue from output/checkpoint.pt when it exists."""
    max_seconds: float = 0.0
    """Stop early (with a checkpoint and the final weights) once training has run this long; 0: no limit."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    device: str | None = None
    """Torch device (None: CUDA when present, else CPU)."""


def _clip_paths(config: RefineTrainConfig) -> tuple[list[Path], Path]:
    root = Path(config.data_root)
    if not root.is_dir():
        raise InputError(f"clip folder not found: {root}")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() == ".mp4" and p.is_file())  # CLIP.MP4 too
    val = [p for p in paths if p.stem == config.val_clip]
    train = [p for p in paths if p.stem != config.val_clip]
    if not val:
        raise InputError(f"validation clip {config.val_clip}.mp4 not found in {root}")
    if not train:
        raise InputError(f"no training clips (.mp4 other than {config.val_clip}) in {root}")
    return train, val[0]


def make_sample(clip: CachedClip, config: RefineTrainConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training window as arrays with a leading time axis L (see make_batch for the keys)."""
    clean, flows, masks = sample_window(clip, config.length, config.crop, config.scale_range, rng)
    flicker = ResidualFlicker(rng, config.flicker)
    frames = np.stack([flicker.apply(t, x) for t, x in enumerate(clean)])
    in_flows = np.zeros_like(flows)
    in_masks = np.zeros(masks.shape, np.float32)
    if config.network.warp:  # an unwarped net ignores its flow inputs: skip computing them
        for t in range(1, len(frames)):
            in_flows[t], in_masks[t] = align_previous(frames[t], frames[t - 1], config.inference.flow_preset)
    lt_flows, lt_masks = compose_to_first(flows, masks)
    return {"frames": frames, "clean": clean, "in_flow": in_flows, "in_mask": in_masks,
            "flow": flows, "mask": masks, "lt_flow": lt_flows, "lt_mask": lt_masks}


def make_batch(clips: list[CachedClip], config: RefineTrainConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A batch of windows: each value (B, L, C, H, W) float32.

    frames P (3), clean (3), in_flow / in_mask (2 / 1: flow t -> t-1 on P and its validity, the net's
    inputs), flow / mask (2 / 1: clean flow t -> t-1 and occlusion mask, for the short-term loss),
    lt_flow / lt_mask (2 / 1: clean flow t -> 0 and mask, for the long-term loss).
    """
    sizes = np.array([len(c) - config.length + 1 for c in clips], float)
    picks = rng.choice(len(clips), size=config.batch, p=sizes / sizes.sum())
    samples = [make_sample(clips[i], config, rng) for i in picks]
    out = {}
    for key in samples[0]:
        x = np.stack([s[key] for s in samples]).astype(np.float32)
        x = x[..., None] if x.ndim == 4 else x
        out[key] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))
    return out


def _masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (mask * (a - b).abs()).sum() / (3 * mask.sum() + 1.0)


def unroll(net: RefineNet, batch: dict[str, torch.Tensor], config: RefineTrainConfig) -> dict[str, torch.Tensor]:
    """Run L over the windows from O_0 = P_0; returns the losses (fidelity, short, long, total), averaged over t."""
    p, clean = batch["frames"], batch["clean"]
    outs = [p[:, 0]]
    fid = short = long = p.new_zeros(())
    for t in range(1, p.shape[1]):
        o, _ = net(p[:, t], outs[-1], p[:, t - 1], batch["in_flow"][:, t], batch["in_mask"][:, t])
        fid = fid + (o - clean[:, t]).abs().mean()
        short = short + _masked_l1(o, warp_tensor(outs[-1], batch["flow"][:, t]), batch["mask"][:, t])
        long = long + _masked_l1(o, warp_tensor(outs[0], batch["lt_flow"][:, t]), batch["lt_mask"][:, t])
        outs.append(o)
    n = p.shape[1] - 1
    losses = {"fidelity": fid / n, "short": short / n, "long": long / n}
    losses["total"] = (config.fidelity_weight * losses["fidelity"] + config.short_term_weight * losses["short"]
                       + config.long_term_weight * losses["long"])
    return losses


def validation_set(clean: np.ndarray, draws: int, seed: int) -> list[np.ndarray]:
    """Flickered copies (T, H, W, 3) of a clean clip, one per draw; draw i uses the generator (seed, i).

    Validation always flickers: identity draws would only dilute the before/after comparison.
    """
    config = ResidualFlickerConfig(identity_prob=0.0)
    out = []
    for i in range(draws):
        flicker = ResidualFlicker(np.random.default_rng([seed, i]), config)
        out.append(np.stack([flicker.apply(t, x) for t, x in enumerate(clean)]))
    return out


@torch.inference_mode()
def validate(net: RefineNet, clean: np.ndarray, flickered: list[np.ndarray], inference: RefineInferenceConfig,
             device: str | None = None) -> dict[str, float]:
    """E_warp (x 1e-3, clean flow and masks) and PSNR to clean, before (P) and after (O = L(P)), averaged over draws.

    clean: (T, H, W, 3); flickered: list of (T, H, W, 3). Runs LocalRefiner (the inference path).
    """
    from unflicker.metrics import WARP_ERROR_SCALE, ReferenceFlows, sequence_psnr

    was_training = net.training
    refs = ReferenceFlows.compute(clean)
    scores: dict[str, list[float]] = {k: [] for k in ("ewarp_before", "ewarp_after", "psnr_before", "psnr_after")}
    refiner = LocalRefiner(net, inference, device)
    for frames in flickered:
        refiner.reset()
        out = [refiner.apply(x) for x in frames]
        scores["ewarp_before"].append(refs.score(frames) * WARP_ERROR_SCALE)
        scores["ewarp_after"].append(refs.score(out) * WARP_ERROR_SCALE)
        scores["psnr_before"].append(sequence_psnr(frames, clean))
        scores["psnr_after"].append(sequence_psnr(out, clean))
    net.train(was_training)
    result = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    result["ewarp_clean"] = round(refs.score(clean) * WARP_ERROR_SCALE, 4)
    return result


def _check(config: RefineTrainConfig) -> None:
    check_run_numbers(config)
    for name in ("crop", "batch", "val_draws", "cache_side"):
        if getattr(config, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(config, name)}")
    check_loss_weights(config, "fidelity_weight", "short_term_weight", "long_term_weight")
    if config.max_frames < 0:  # was "no frames decoded from CLIP" once the folders were made
        raise InputError(f"max_frames must be >= 0 (0: all of each clip), got {config.max_frames}")
    if config.crop > config.cache_side:  # no cached clip can hold it (refused before any is decoded)
        raise InputError(f"crop {config.crop} is larger than the cached clips (--cache-side {config.cache_side}); "
                         f"give a smaller --crop or a larger --cache-side")
    if config.val_frames < 2:  # one frame: E_warp 0 and O = P, a validation that measured nothing
        raise InputError(f"val_frames must be >= 2, got {config.val_frames}")
    if config.length < 2:
        raise InputError(f"length must be >= 2, got {config.length}")
    if config.inference.flow_preset not in FLOW_PRESETS:
        raise InputError(f"unknown flow preset {config.inference.flow_preset!r}; choose from {FLOW_PRESETS}")
    if config.inference.working_side < 16:  # as LocalRefiner, which validates and loads the weights, needs
        raise InputError(f"working_side must be >= 16, got {config.inference.working_side}")
    if not config.max_seconds >= 0:
        raise InputError(f"max_seconds must be >= 0, got {config.max_seconds}")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown torch device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: CUDA is not available here")
    return device


def train(config: RefineTrainConfig, command: str | None = None) -> dict:
    """Train (or resume) L; returns a summary dict (steps, seconds, validation, weights path), or where
    the run in config.output has nothing left to do, its steps and weights and a line that says so.

    command: the command line that started the run, recorded in the weights' JSON.
    """
    _check(config)
    check_fresh_output(config, "refine.safetensors")
    out_dir = Path(config.output)
    device = _device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    train_paths, val_path = _clip_paths(config)
    cache_dir = Path(config.cache_dir) if config.cache_dir is not None else out_dir / "cache"
    with run_folder(out_dir):  # only once the inputs proved usable
        ckpt_path = out_dir / "checkpoint.pt"
        state = checkpoint_to_resume(config, ckpt_path, device)  # refused before the clips are cached
        weights = out_dir / "refine.safetensors"
        done = nothing_to_do(config, state, weights, config.max_seconds)
        if done:  # a rerun of a run with nothing left to do: no step, no validation, nothing written
            return {"steps": state["step"], "weights": str(weights), "nothing_to_do": done}
        make_folder(cache_dir)
        clips = [load_clip(p, cache_dir, config.cache_side, config.max_frames) for p in train_paths]
        clips = [c for c in clips if len(c) >= config.length]
        if not clips:
            raise InputError(f"no training clip has {config.length} frames")
        largest = max(min(c.frames.shape[1:3]) for c in clips)
        if config.crop > largest:  # every window an upscaled blur
            raise InputError(f"crop {config.crop} is larger than every cached training clip (shorter sides at most "
                             f"{largest} px at --cache-side {config.cache_side}); give --crop {largest} or less, "
                             "or a larger --cache-side")
        val_clean = decode_clip(val_path, config.cache_side, config.val_frames)
        if len(val_clean) < 2:
            raise InputError(f"validation clip {val_path} has {len(val_clean)} frame; validation needs 2 or more")
        val = validation_set(val_clean, config.val_draws, config.val_seed)

        torch.manual_seed(config.seed)
        net = RefineNet(config.network).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        rng = np.random.default_rng(config.seed)
        step, seconds = 0, 0.0
        if state is not None:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            rng.bit_generator.state = json.loads(state["rng"])
            torch.set_rng_state(state["torch_rng"].cpu())
            step, seconds = state["step"], float(state.get("seconds", 0.0))
            print(f"resumed from {ckpt_path} at step {step}", flush=True)

        log = open_log(out_dir / "log.jsonl", step)
        last_val: dict[str, float] = {}
        net.train()
        start, running = time.time(), {}
        # One worker thread makes the next batch (flicker, input flows) while the net trains on this one.
        # The generator state is read before each submission, so a checkpoint regenerates the next batch.
        pool = ThreadPoolExecutor(max_workers=1)
        next_state = json.dumps(rng.bit_generator.state)
        pending = pool.submit(make_batch, clips, config, rng)
        end = min(config.stop_at, config.steps) if config.stop_at > 0 else config.steps
        timed_out = False
        if config.max_seconds and seconds >= config.max_seconds:  # resumed after its time ran out: no more steps
            end, timed_out = min(step, end), True
        try:
            while step < end:
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, config.steps, config.lr, config.final_lr_fraction)
                batch = {k: v.to(device) for k, v in pending.result().items()}
                next_state = json.dumps(rng.bit_generator.state)
                pending = pool.submit(make_batch, clips, config, rng)
                losses = unroll(net, batch, config)
                values = {k: v.item() for k, v in losses.items()}
                check_finite(step + 1, loss=values["total"])
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                opt.step()
                step += 1
                for k, v in values.items():
                    running.setdefault(k, []).append(v)
                record = None
                if config.max_seconds and seconds + time.time() - start >= config.max_seconds:
                    end, timed_out = step, True  # out of time: this step is the last one
                if step % config.log_every == 0 or step == end:
                    record = {"step": step, **{k: round(float(np.mean(v)), 5) for k, v in running.items()},
                              "lr": cosine_lr(step, config.steps, config.lr, config.final_lr_fraction), "elapsed_s": round(seconds + time.time() - start, 1)}
                    running = {}
                if step % config.val_every == 0 or step == end:
                    last_val = validate(net, val_clean, val, config.inference, str(device))
                    record = {**(record or {"step": step}), "val": last_val}
                report_step(log, record)
                if step % config.checkpoint_every == 0 or step == end:
                    check_finite(step, net=net)
                    save_checkpoint(ckpt_path, net, opt, step, next_state, asdict(config.network),
                                    seconds + time.time() - start, config)
        finally:
            pending.cancel()
            pool.shutdown(wait=True)
            log.close()
        train_seconds = round(seconds + time.time() - start, 1)
        if not last_val:
            last_val = validate(net, val_clean, val, config.inference, str(device))
        summary = {"steps": step, "seconds": train_seconds, "val": last_val}
        if timed_out:
            summary["stopped_early"] = f"max_seconds {config.max_seconds} reached"
        if config.full_validation and (step >= config.steps or timed_out):
            full_clean = decode_clip(val_path, 1 << 16, config.val_frames)
            full = validate(net, full_clean, validation_set(full_clean, config.val_draws, config.val_seed),
                            config.inference, str(device))
            summary["val_full"] = {"size": list(full_clean.shape[1:3]), **full}
        check_finite(step, net=net)
        try:
            weights = save_weights(net, weights, config.inference, extra={
                "training": {"config": config_record(config), **summary,
                             "train_clips": [c.name for c in clips], "val_clip": val_path.stem, "command": command},
            })
        except OSError as exc:
            raise write_error(weights, exc, "the weights were not saved") from None
        return {**summary, "weights": str(weights)}


def build_parser() -> argparse.ArgumentParser:
    d = RefineTrainConfig()
    p = OneLineParser(prog="unflicker train-refine",
                                description="Train the local refinement net L on clean clips with synthetic flicker.")
    p.add_argument("--data", type=Path, default=d.data_root, help="folder of clean .mp4 clips (default %(default)s)")
    p.add_argument("--val-clip", default=d.val_clip, help="stem of the held-out clip (default %(default)s)")
    p.add_argument("--val-frames", type=int, default=d.val_frames)
    p.add_argument("--val-draws", type=int, default=d.val_draws)
    p.add_argument("--output", type=Path, default=d.output, help="run folder (default %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=None, help="clip cache (default OUTPUT/cache)")
    p.add_argument("--cache-side", type=int, default=d.cache_side)
    p.add_argument("--max-frames", type=int, default=d.max_frames)
    p.add_argument("--length", type=int, default=d.length)
    p.add_argument("--crop", type=int, default=d.crop)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--fidelity-weight", type=float, default=d.fidelity_weight)
    p.add_argument("--short-term-weight", type=float, default=d.short_term_weight)
    p.add_argument("--long-term-weight", type=float, default=d.long_term_weight)
    p.add_argument("--width", type=int, default=d.network.width)
    p.add_argument("--prior-sigma", type=float, default=d.network.prior_sigma)
    p.add_argument("--no-warp", action="store_true", help="feed O_{t-1}, P_{t-1} unwarped (ablation)")
    p.add_argument("--working-side", type=int, default=d.inference.working_side)
    p.add_argument("--flow-preset", choices=FLOW_PRESETS, default=d.inference.flow_preset)
    p.add_argument("--no-full-validation", action="store_true", help="skip the final full-resolution validation")
    add_run_control_args(p, d)
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop early after this much training time")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print a one-line JSON summary; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    config = RefineTrainConfig(
        data_root=a.data, val_clip=a.val_clip, val_frames=a.val_frames, val_draws=a.val_draws, output=a.output,
        cache_dir=a.cache_dir, cache_side=a.cache_side, max_frames=a.max_frames, length=a.length, crop=a.crop,
        batch=a.batch, steps=a.steps, lr=a.lr, fidelity_weight=a.fidelity_weight,
        short_term_weight=a.short_term_weight, long_term_weight=a.long_term_weight,
        network=RefineNetConfig(width=a.width, prior_sigma=a.prior_sigma, warp=not a.no_warp),
        inference=RefineInferenceConfig(working_side=a.working_side, flow_preset=a.flow_preset),
        full_validation=not a.no_full_validation, device=a.device, max_seconds=a.max_seconds, **run_control(a),
    )
    try:
        # Quoted: an unquoted path with a space in it makes another command.
        summary = train(config, shlex.join(["python", "-m", "unflicker.refine.training", *argv]))
        print(summary.get("nothing_to_do") or json.dumps(summary))
    except UnflickerError as exc:
        print(f"unflicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return interrupted(exc, config.output, config.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
