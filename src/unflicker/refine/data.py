"""Training clips for L: decoded once at low resolution with their clean flows, cached as .npz.

A cached clip holds uint8 frames (T, h, w, 3), the clean flow of each frame t to t-1 (float16,
(T, h, w, 2), pixels x first; entry 0 is zero) and its validity mask (T, h, w) bool (Lai et al.
consistency, matches inside the frame). Flows are computed on the clean frames, as the temporal
losses need; training windows are random crops of random scale, flows resized with them.
"""

from __future__ import annotations

import os
import re
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unflicker import io
from unflicker.errors import InputError
from unflicker.flow import compute_flow, consistency_mask, in_frame_mask, warp
from unflicker.io.common import locked_by_another, make_held


@dataclass
class CachedClip:
    """One clip at cache resolution (see the module docstring for the layouts)."""

    name: str
    frames: np.ndarray
    flows: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def _shrink(frame: np.ndarray, side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return frame
    return cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def decode_clip(path: str | Path, side: int, max_frames: int = 0, first: int = 0) -> np.ndarray:
    """Frames first .. first+max_frames-1 (0: to the end) of a video, longer side <= side.

    Returns (T, h, w, 3) float32 RGB in [0, 1].
    """
    frames = []
    for frame in io.read_frames(path):
        if frame.index < first:
            continue
        if max_frames and len(frames) >= max_frames:
            break
        frames.append(_shrink(io.to_float(frame.image), side))
    if not frames:
        raise InputError(f"no frames decoded from {path}")
    return np.stack(frames)


def clean_flows(frames: np.ndarray, preset: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """Flows t -> t-1 and their masks for a clean clip (T, h, w, 3) float32: ((T, h, w, 2) f32, (T, h, w) bool)."""
    t, h, w = frames.shape[:3]
    flows = np.zeros((t, h, w, 2), np.float32)
    masks = np.zeros((t, h, w), bool)
    for i in range(1, t):
        fw = compute_flow(frames[i], frames[i - 1], preset=preset)
        bw = compute_flow(frames[i - 1], frames[i], preset=preset)
        flows[i], masks[i] = fw, consistency_mask(fw, bw) & in_frame_mask(fw)
    return flows, masks


def _file_digest(path: Path) -> str:
    try:
        return io.common.file_sha256(path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


# The temporary name of a clip's save: the cache file's stem (CLIP_sSIDE_nFRAMES), a uuid, .tmp.npz.
_TEMPORARY = re.compile(r".+_s\d+_n\d+\.[0-9a-f]{32}\.tmp\.npz")


def _sweep_temporaries(cache_dir: Path) -> None:
    """Remove the clip saves' temporaries in `cache_dir` that no process holds locked: what saves killed
    outright (SIGKILL, power loss) left. A save under way holds its own locked (make_held), and the kernel
    lets a lock go only when its holder closes it or dies, so no live save's file is taken, however slow;
    where the file system has no locks nothing can be told, and they stay."""
    for tmp in cache_dir.glob("*.tmp.npz"):
        if _TEMPORARY.fullmatch(tmp.name) and locked_by_another(tmp) is False:
            tmp.unlink(missing_ok=True)


def load_clip(path: str | Path, cache_dir: str | Path, side: int, max_frames: int) -> CachedClip:
    """The cached clip for a video, building (decode, downscale, clean flows) and saving it if absent,
    or if it was built from another file of the same name (its SHA-256 is kept in the cache). Killed
    saves' temporaries in the cache folder are removed first."""
    path = Path(path)
    cache = Path(cache_dir) / f"{path.stem}_s{side}_n{max_frames}.npz"
    source = _file_digest(path)
    _sweep_temporaries(cache.parent)
    if cache.is_file():
        try:
            with np.load(cache) as data:
                # A cache from before the digest was kept in it is taken as it is.
                if "source" not in data or str(data["source"]) == source:
                    return CachedClip(path.stem, data["frames"], data["flows"], data["masks"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # damaged (cut short by a copy, or not a cache at all; saves here are atomic): built again
    frames = decode_clip(path, side, max_frames)
    flows, masks = clean_flows(frames)
    clip = CachedClip(path.stem, np.round(frames * 255).astype(np.uint8), flows.astype(np.float16), masks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # A name of this save's own: runs sharing a --cache-dir may build the same clip at once.
    tmp = cache.with_name(f"{cache.stem}.{uuid.uuid4().hex}.tmp.npz")
    lock = make_held(tmp, folder=False)  # locked while written: another run's sweep leaves it alone
    try:
        np.savez(tmp, frames=clip.frames, flows=clip.flows, masks=clip.masks, source=np.array(source))
        tmp.replace(cache)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return clip


def _resize(x: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=interpolation)


def sample_window(clip: CachedClip, length: int, crop: int, scale_range: tuple[float, float],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random window of `length` frames, a random square crop rescaled to crop x crop, maybe mirrored.

    Returns clean frames (L, crop, crop, 3) float32 in [0, 1], flows t -> t-1 (L, crop, crop, 2)
    float32 (entry 0 unused) and masks (L, crop, crop) bool.
    """
    t, h, w = clip.frames.shape[:3]
    if t < length:
        raise InputError(f"clip {clip.name} has {t} frames, a window needs {length}")
    t0 = int(rng.integers(0, t - length + 1))
    win = min(round(crop / rng.uniform(*scale_range)), h, w)
    scale = crop / win
    y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
    shrink = cv2.INTER_AREA if win > crop else cv2.INTER_LINEAR
    frames, flows, masks = [], [], []
    for i in range(t0, t0 + length):
        frames.append(_resize(clip.frames[i, y : y + win, x : x + win], crop, shrink))
        flow = _resize(clip.flows[i, y : y + win, x : x + win].astype(np.float32), crop, cv2.INTER_LINEAR) * scale
        flows.append(flow)
        mask = _resize(clip.masks[i, y : y + win, x : x + win].astype(np.float32), crop, cv2.INTER_LINEAR) > 0.99
        masks.append(mask & in_frame_mask(flow))  # matches that left the crop are unknown
    frames = np.stack(frames).astype(np.float32) / np.float32(255.0)
    flows, masks = np.stack(flows), np.stack(masks)
    if rng.random() < 0.5:
        frames, flows, masks = frames[:, :, ::-1], flows[:, :, ::-1].copy(), masks[:, :, ::-1]
        flows[..., 0] *= -1
    return np.ascontiguousarray(frames), np.ascontiguousarray(flows), np.ascontiguousarray(masks)


def compose_to_first(flows: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chain flows t -> t-1 into flows t -> 0 with their masks (long-term pairs).

    flows: (L, h, w, 2) flow t -> t-1 (entry 0 unused); masks: (L, h, w) bool.
    Returns flows t -> 0 (L, h, w, 2) float32 and masks (L, h, w) bool (entry 0: zero flow, all True).
    """
    out_f = np.zeros_like(flows, dtype=np.float32)
    out_m = np.ones(masks.shape, bool)
    for t in range(1, len(flows)):
        # Position in t-1 of t's pixel, then on along the chain from there.
        out_f[t] = flows[t] + warp(out_f[t - 1], flows[t])
        carried = warp(out_m[t - 1].astype(np.float32), flows[t]) > 0.99
        out_m[t] = masks[t] & carried & in_frame_mask(out_f[t])
    return out_f, out_m
