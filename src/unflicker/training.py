"""Helpers shared by the training scripts of the filter and the refinement network."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from unflicker.errors import InputError, OutputError, Terminated, UnflickerError
from unflicker.io.common import FULL, check_writable, file_sha256, free_text, holding
from unflicker.netfiles import TENSORS_DIGEST


def shared_data(*parts: str) -> Path:
    """A folder of the project's shared data, which sits beside the repository checkout."""
    return Path(__file__).resolve().parents[2].parent.joinpath("shared", "data", *parts)


# Options of every training script that steer the run rather than what is learnt.
_RUN_CONTROL = ("seed", "checkpoint_every", "val_every", "log_every", "threads", "stop_at")


def add_run_control_args(parser: argparse.ArgumentParser, defaults) -> None:
    """Add the shared run options (seed, checkpoint, validation and log cadence, threads, stop and
    resume) to a training script's parser, with `defaults` (its config) supplying the values."""
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--val-every", type=int, default=defaults.val_every)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--stop-at", type=int, default=0, help="stop at this step (resume later); 0: run to --steps")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")


def check_run_numbers(config) -> None:
    """InputError with a one-line reason unless a training config's learning rate and shared run
    options are usable (checked before anything is read or written)."""
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise InputError(f"lr must be a number > 0, got {config.lr}")
    for name in ("steps", "checkpoint_every", "val_every", "log_every"):
        if getattr(config, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("threads", "stop_at"):
        if getattr(config, name) < 0:
            raise InputError(f"{name} must be >= 0, got {getattr(config, name)}")


def check_loss_weights(config, *names: str) -> None:
    """InputError unless each of the config's loss weights `names` is a number >= 0 (NaN trains NaN weights or
    counts as 0; a negative weight rewards the error it weighs)."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a number >= 0, got {value}")


def run_control(args: argparse.Namespace) -> dict:
    """The shared run options parsed by `add_run_control_args`, as config fields."""
    return {**{name: getattr(args, name) for name in _RUN_CONTROL}, "resume": not args.no_resume}


def interrupted(exc: KeyboardInterrupt, output: Path, resume: bool = True) -> int:
    """Say in one line that a training run was stopped (Ctrl-C, or SIGTERM under the unflicker command)
    and what a rerun does next; returns the exit code (130, or 143 for SIGTERM). Unlike a deflickering
    run's, the run folder stays: its checkpoint is what a rerun resumes from. resume: False for a
    --no-resume run (the same command would start afresh again)."""
    checkpoint = Path(output) / "checkpoint.pt"
    if not checkpoint.is_file():
        then = "no checkpoint was written yet: the same command starts afresh"
    elif resume:
        then = f"the same command resumes from {checkpoint}"
    else:
        then = f"the same command without --no-resume resumes from {checkpoint}"
    print(f"unflicker: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; {then}", file=sys.stderr)
    return 143 if isinstance(exc, Terminated) else 130


def check_finite(step: int, loss: float | None = None, net: torch.nn.Module | None = None) -> None:
    """UnflickerError in one line where a run has diverged: its `loss` at `step` (checked before the
    update it would drive) or `net`'s weights (checked before they are saved) are not finite. Without
    it a diverged run went on to its end, wrote NaN weights and their checkpoint, and exited 0."""
    if loss is not None and not math.isfinite(loss):
        what = f"the loss is {loss}"
    elif net is not None and not all(bool(torch.isfinite(p).all()) for p in net.parameters()):
        what = "the weights are not finite"
    else:
        return
    raise UnflickerError(f"training diverged at step {step} ({what}); nothing of it was saved: try a lower --lr, "
                         "with --no-resume or another output folder")


def cosine_lr(step: int, steps: int, lr: float, final_fraction: float) -> float:
    """Learning rate at `step`: cosine decay from lr to lr * final_fraction over `steps`."""
    t = min(step / max(steps, 1), 1.0)
    lo = lr * final_fraction
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * t))


def config_record(config) -> dict:
    """A dataclass config as plain JSON values (paths as strings), for logs and weight files."""
    return json.loads(json.dumps(asdict(config), default=str))


_UNSET = object()  # a key one record lacks (a field added since the other was written)


def _flat(record: dict, prefix: str = "") -> dict:
    """A nested record as {dotted key: leaf value}: {"distortion": {"texture_prob": 0}} has distortion.texture_prob."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value) -> str:
    if value is _UNSET:
        return "(unset)"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text  # 0.0 -> 0, as typed
    return repr(value)


def differences(old: dict, new: dict, prefix: str = "", most: int = 5) -> str:
    """The settings that differ between two config records, short and on one line: dotted keys with
    old -> new values ("distortion.texture_prob 0 -> 0.5; lr 0.001 -> 0.002"), the first `most` of
    them by name and a count of the rest; "" where none differ."""
    old, new = _flat(old, prefix), _flat(new, prefix)
    changed = [f"{k} {_shown(old.get(k, _UNSET))} -> {_shown(new.get(k, _UNSET))}"
               for k in sorted(old.keys() | new.keys()) if old.get(k, _UNSET) != new.get(k, _UNSET)]
    more = f"; and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(changed[:most]) + more


# Config fields a resumed session may change: how the run goes on, not what it learns.
# Not the seed: the run's start and data stream came from the checkpoint's.
_SESSION_FIELDS = {*_RUN_CONTROL, "resume", "steps", "output", "cache_dir", "max_seconds", "device",
                   "full_validation"} - {"seed"}


def check_resumable(state: dict, config, path: Path) -> None:
    """InputError unless checkpoint `state` (read from `path`) was made with `config`'s settings, but for
    the session fields (steps, stop and cadences, threads, ...): resuming under other settings would
    mix two runs in one set of weights, and their record would state the second's alone. Nor may it be
    past config.steps (the weights would be recorded as of fewer steps than they had)."""
    if state["step"] > config.steps:
        raise InputError(f"{path} is at step {state['step']}, past --steps {config.steps}; give at least "
                         f"--steps {state['step']}, or use another output folder or --no-resume")
    saved = state.get("config")
    if saved is None:  # a checkpoint from before the config was kept in it
        return
    now = config_record(config)
    changed = differences({k: v for k, v in saved.items() if k not in _SESSION_FIELDS},
                          {k: v for k, v in now.items() if k not in _SESSION_FIELDS})
    if changed:
        raise InputError(f"{path} is from a run with other settings ({changed}); give the same "
                         "options to resume it, or use another output folder or --no-resume")


def make_folder(path: Path) -> Path:
    """Create a run's output (or cache) folder; OutputError in one line if it cannot be (a file there,
    no permission, a missing or read-only place) or files cannot be written in it (an existing read-only
    folder: the log's first write was a traceback)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the folder {path}: {exc.strerror or exc}") from None
    check_writable(path, "the folder")
    return path


@contextmanager
def run_folder(path: Path) -> Iterator[Path]:
    """Make a run's output folder and hold it while inside: a second run of the same folder at the same
    time, which would write the same checkpoint, log and weights over this one's, is refused in one line."""
    path = make_folder(path)
    with holding(path, f"another training run is using {path}: wait for it to end, or use another output folder"):
        yield path


def check_fresh_output(config, weights_name: str) -> None:
    """InputError if a run that starts afresh only because no checkpoint is there (it would resume one)
    would replace weights already in its output folder (another run's, or copied there): --no-resume
    asks for that. OutputError if something other than a file (a folder) is where the run writes one."""
    out_dir = Path(config.output)
    weights = out_dir / weights_name
    for path in (out_dir / "checkpoint.pt", out_dir / "log.jsonl", weights, weights.with_suffix(".json")):
        if path.exists() and not path.is_file():  # a folder there: a traceback at its first write, after training
            raise OutputError(f"{path} is not a file, and the run writes one there; move it or use another "
                              "output folder")
    there = next((path for path in (weights, weights.with_suffix(".json")) if path.exists()), None)
    if config.resume and not (out_dir / "checkpoint.pt").is_file() and there is not None:
        raise InputError(f"{there} exists and there is no checkpoint in {out_dir} to resume; use another output "
                         "folder, or --no-resume to replace it")


def nothing_to_do(config, state: dict | None, weights: Path, max_seconds: float = 0.0) -> str | None:
    """The one line a rerun says instead of running where its run has nothing left to do: checkpoint
    `state` is at --steps (or --stop-at, or out of `max_seconds`, the run's --max-seconds where it has
    one) and `weights` are the ones saved at that step (their JSON records its step and config, their
    digest matches). None where the run goes on: steps left, or no such weights (a kill after the last
    checkpoint: validated and saved again)."""
    if state is None or state.get("config") is None:
        return None
    step = state["step"]
    if step >= config.steps:
        why, then = f"finished at step {step} of --steps {config.steps}", "more --steps goes on"
    elif config.stop_at and step >= config.stop_at:
        why, then = f"at step {step}, --stop-at {config.stop_at} reached", "a later --stop-at goes on"
    elif max_seconds and float(state.get("seconds", 0.0)) >= max_seconds:
        why, then = f"at step {step}, --max-seconds {max_seconds:g} reached", "more --max-seconds goes on"
    else:
        return None
    try:
        meta = json.loads(weights.with_suffix(".json").read_text())
        record, digest = meta["training"], file_sha256(weights)
        if (record["steps"], record["config"]) != (step, state["config"]) or meta.get(TENSORS_DIGEST, digest) != digest:
            return None
    except (OSError, ValueError, KeyError, TypeError):  # missing, torn or of another kind
        return None
    return f"nothing to do: the run in {weights.parent} is {why}; its weights are {weights} ({then})"


def load_checkpoint(path: Path, device="cpu") -> dict:
    """A checkpoint written by save_checkpoint; InputError in one line if it cannot be read."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, pickle and zip errors, EOFError, ... on a bad file
        raise InputError(f"cannot read checkpoint {path}: damaged or not a training checkpoint ({type(exc).__name__}); "
                         "use another output folder or --no-resume") from None
    if not isinstance(state, dict) or not {"step", "net", "opt", "rng", "torch_rng", "network"} <= state.keys():
        raise InputError(f"{path} is not a training checkpoint; use another output folder or --no-resume")
    return state


def checkpoint_to_resume(config, path: Path, device="cpu") -> dict | None:
    """The checkpoint at `path` a run resumes from, checked against `config` (network, settings, steps;
    InputError in one line), or None where the run starts afresh. A --no-resume run removes an old
    checkpoint first (its folder held): a rerun must not resume the old run under the new one's log."""
    if not config.resume:
        path.unlink(missing_ok=True)
        return None
    if not path.is_file():
        return None
    state = load_checkpoint(path, device)
    changed = differences(state["network"], asdict(config.network), "network.")
    if changed:
        raise InputError(f"{path} was trained with another network ({changed}); give the same options to "
                         "resume it, or use another output folder or --no-resume")
    check_resumable(state, config, path)
    return state


def open_log(path: Path, step: int):
    """The run's log (one JSON record a line) opened to append after `step`, the step it starts or
    resumes at: records of later steps (a killed session's since its last checkpoint, or a run started
    afresh over an old one) are dropped, so each step is logged once, by the session that kept it."""
    kept = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a line torn by a kill
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(kept))
        tmp.replace(path)
        return path.open("a")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc, "no step was taken") from None


def report_step(log, record: dict | None) -> None:
    """A step's record (loss, validation...) printed and appended to the run's log; nothing without one."""
    if record:
        print(json.dumps(record), flush=True)
        try:
            log.write(json.dumps(record) + "\n")
            log.flush()
        except OSError as exc:
            raise write_error(Path(log.name), exc, f"step {record['step']} was not logged") from None


def save_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, step: int, rng_state: str,
                    network: dict, seconds: float, config=None) -> None:
    """Write everything a resumed run needs, atomically (a kill mid-write keeps the previous one);
    config: the run's config, which a resumed session must match (check_resumable)."""
    state = {"step": step, "net": net.state_dict(), "opt": opt.state_dict(), "rng": rng_state,
             "torch_rng": torch.get_rng_state(), "network": network, "seconds": seconds,
             "config": None if config is None else config_record(config)}
    data = io.BytesIO()
    torch.save(state, data)  # in memory: torch's own file writer told a full disk as "unexpected pos" (RuntimeError)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data.getbuffer())
        tmp.replace(path)
    except BaseException as exc:  # a full disk, or Ctrl-C / SIGTERM while writing: no partial file left
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc, f"{path.name} of step {step} was not written") from None
        raise


def write_error(path: Path, exc: OSError, then: str) -> OutputError:
    """The one line for a training run's file that could not be written (a full disk named with what it has
    free); then: what that means for the run."""
    reason = f"the disk is full ({free_text(path.parent)})" if exc.errno in FULL else (exc.strerror or str(exc))
    rerun = ("resumes from the last checkpoint" if (path.parent / "checkpoint.pt").is_file()
             else "starts afresh (no checkpoint was written)")
    return OutputError(f"cannot write {path}: {reason}; {then}: the same command {rerun}")
