"""Helpers shared by the training scripts of the filter and the refinement network."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch


def shared_data(*parts: str) -> Path:
    """A folder of the project's shared data, which sits beside the repository checkout."""
    return Path(__file__).resolve().parents[2].parent.joinpath("shared", "data", *parts)


def cosine_lr(step: int, steps: int, lr: float, final_fraction: float) -> float:
    """Learning rate at `step`: cosine decay from lr to lr * final_fraction over `steps`."""
    t = min(step / max(steps, 1), 1.0)
    lo = lr * final_fraction
    return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * t))


def config_record(config) -> dict:
    """A dataclass config as plain JSON values (paths as strings), for logs and weight files."""
    return json.loads(json.dumps(asdict(config), default=str))


def save_checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, step: int, rng_state: str,
                    network: dict, seconds: float) -> None:
    """Write everything a resumed run needs, atomically (a kill mid-write keeps the previous one)."""
    state = {"step": step, "net": net.state_dict(), "opt": opt.state_dict(), "rng": rng_state,
             "torch_rng": torch.get_rng_state(), "network": network, "seconds": seconds}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
