"""Network weight files: safetensors tensors plus a JSON record beside them (shared by filter and refine).

The JSON holds a format name and version, the network's config (to rebuild it) and whatever the
trainer adds (training config, command, validation). Loading checks all of it and raises
WeightsError with a one-line reason, so a wrong or damaged file never reaches the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from unflicker.errors import UnflickerError, WeightsError
from unflicker.io.common import file_sha256

if TYPE_CHECKING:  # torch loads with the networks, not with this module (a run's main process reads digests)
    import torch

SHIPPED = Path(__file__).resolve().parent / "weights"
"""Where the shipped weights live: <name>.safetensors with <name>.json beside it."""
FORMATS = {"filter": ("unflicker.filter", 1), "refine": ("unflicker.refine", 1)}
"""Network name -> (format, version) its JSON must state."""


def save_network(net: torch.nn.Module, path: str | Path, meta: dict) -> Path:
    """Write net's tensors to `path` (.safetensors) and `meta` to the .json beside it; returns path."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    # Write-then-rename so a kill mid-write never leaves a torn file. The JSON, renamed first, names the
    # tensors file's SHA-256: a kill between the two renames (the new JSON beside the old tensors) is told
    # at load rather than the old tensors taken for the new record's.
    tmp = path.with_name(path.name + ".tmp")
    json_tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_bytes(save(tensors))  # save_file made it owner-only (0600), unreadable by anyone else, the JSON not
        meta = {**meta, TENSORS_DIGEST: file_sha256(tmp)}
        json_tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        json_tmp.replace(path.with_suffix(".json"))
        tmp.replace(path)
    except BaseException:  # a full disk, or Ctrl-C / SIGTERM while writing: no partial file left
        tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)
        raise
    return path


TENSORS_DIGEST = "tensors_sha256"
"""JSON key: SHA-256 of the .safetensors file saved with it (absent in files saved before it was kept)."""


def load_network(path: Path, what: str, fmt: str, version: int,
                 build: Callable[[dict], torch.nn.Module]) -> tuple[torch.nn.Module, dict]:
    """Rebuild a network from `path` and its JSON; returns (net in eval mode on CPU, metadata).

    what: name used in error messages ("filter", "refine"). fmt, version: what the JSON must say.
    build: network config dict (meta["network"]) -> fresh network.
    Raises WeightsError if a file is missing or unreadable, the format or version differs, the
    config is bad, or a tensor is missing, unexpected or of the wrong shape.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path, what, fmt, version)
    meta_path = path.with_suffix(".json")
    try:
        # Its initial weights, overwritten below, are drawn in a fork of torch's generator: a program using the
        # library draws on as if the weights had not been loaded.
        with torch.random.fork_rng(devices=[]):
            net = build(meta["network"])
    except (KeyError, TypeError, UnflickerError) as exc:
        raise WeightsError(f"bad network config in {meta_path}: {exc}") from exc
    try:
        check_saved_together(path, meta)
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {what} weights {path}: {exc}") from exc
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(f"{path.name} does not match the network: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise WeightsError(f"{path.name}: tensor {k} has shape {tuple(tensors[k].shape)}, "
                               f"network needs {tuple(v.shape)}")
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # a diverged training run's: the network would put NaN into every frame
        raise WeightsError(f"{path.name}: tensor {bad} holds NaN or infinite values (saved by a training run "
                           "that diverged?); train them again")
    net.load_state_dict(tensors)
    return net.eval(), meta


def weights_path(name: str, path: str | Path | None = None) -> Path:
    """Network `name`'s weights file: `path` if given, else the shipped one."""
    return Path(path) if path is not None else SHIPPED / f"{name}.safetensors"


def read_meta(path: Path, what: str, fmt: str, version: int) -> dict:
    """The JSON beside weights `path`, checked (both files present, format and version as given);
    WeightsError with a one-line reason otherwise."""
    meta_path = path.with_suffix(".json")
    if path.is_dir():  # a training run's folder, say
        inside = path / f"{fmt.rsplit('.', 1)[-1]}.safetensors"
        hint = f" ({inside} is there)" if inside.is_file() else ""
        raise WeightsError(f"{what} weights {path} is a folder: give the .safetensors file in it{hint}")
    if path.suffix.lower() == ".json":  # read as its own tensors file, it failed the digest: "a save cut short"
        raise WeightsError(f"{path} is the weights' JSON: give {path.with_suffix('.safetensors')}, the file beside it")
    if not path.is_file() or not meta_path.is_file():
        raise WeightsError(f"{what} weights not found: need {path} and {meta_path.name} beside it")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read {what} config {meta_path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version") != version:
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else (None, None)
        raise WeightsError(f"{meta_path} is not {fmt} version {version} (got {got[0]!r} version {got[1]!r})")
    return meta


def check_saved_together(path: Path, meta: dict) -> None:
    """WeightsError unless the tensors file `path` is the one its JSON `meta` was saved with (the digest it
    names; a JSON without one passes); OSError as reading the file raises it."""
    if TENSORS_DIGEST in meta and file_sha256(path) != meta[TENSORS_DIGEST]:
        raise WeightsError(f"{path.name} is not the file {path.with_suffix('.json').name} was saved with (a save "
                           "cut short between the two?); save or train them again")


def weights_digest(path: Path, what: str, fmt: str, version: int) -> str:
    """SHA-256 of a weights file and its JSON (network, inference settings), read without torch:
    what an output depends on beyond the run's config. Checks the JSON as `read_meta` does, and that the
    tensors are the ones it was saved with (else they failed only when a worker loaded them, after the
    analysis pass)."""
    meta = read_meta(path, what, fmt, version)
    try:
        check_saved_together(path, meta)
        return file_sha256(path, path.with_suffix(".json"))
    except OSError as exc:
        raise WeightsError(f"cannot read {what} weights {exc.filename or path}: {exc}") from exc
