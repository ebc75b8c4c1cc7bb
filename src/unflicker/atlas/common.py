"""Pieces both atlas backends share: input checks, flows and trust masks, rigidity, the Atlas protocol.

Layouts: frames (T, h, w, 3) float32 RGB in [0, 1]; flow (h, w, 2) float32 pixels, x first;
uv / atlas coordinates (h, w, 2) float32 in frame-pixel units (a shift of the content by s pixels
shifts uv by s), x first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from unflicker.atlas.config import atlas_size  # noqa: F401  (kept importable from here)
from unflicker.errors import InputError
from unflicker.flow import FlowPair, flow_pair, warp


class Atlas(Protocol):
    """A fitted atlas of one clip of T frames of size (h, w)."""

    n_frames: int
    shape: tuple[int, int]
    losses: list[float]
    """The fit's loss per step (grid: steps at half size and at full size are not comparable)."""

    def render(self, t: int) -> np.ndarray:
        """A_t: (h, w, 3) float32 in [0, 1], the consistent (flicker-free) rendering of frame t."""
        ...

    def reconstruct(self, t: int) -> np.ndarray:
        """(h, w, 3) float32: the model's reconstruction of input frame t (flicker model included)."""
        ...

    def mapping(self, t: int) -> np.ndarray:
        """(h, w, 2) float32 atlas coordinates of frame t's pixels, frame-pixel units, x first."""
        ...


def check_frames(frames: np.ndarray) -> np.ndarray:
    """(T, h, w, 3) uint8 or float in [0, 1] -> contiguous float32; InputError otherwise."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise InputError(f"expected frames of shape (T, h, w, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise InputError("no frames to fit an atlas on")
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray(frames, dtype=np.float32)


def check_index(t: int, n: int) -> int:
    if not 0 <= t < n:
        raise InputError(f"frame index {t} outside [0, {n})")
    return int(t)


def resolve_device(device: str | None) -> torch.device:
    """None -> CUDA when present else CPU; a requested but missing CUDA is an InputError."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


_SEEDED = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's default (CPU) generator starts from `seed` in the body (networks' initial weights); after it,
    the program's own generator is where it was (a program embedding the library draws on as if it had not
    run; CUDA's generators are left alone). One thread at a time: the generator is the process's."""
    with _SEEDED, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the body with n torch intra-op threads (None: leave the setting alone), then restore."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def downsample(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) frame -> (h, w, 3) float32 by area averaging (what the atlas is fitted on)."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint8:
        frame = frame.astype(np.float32) * np.float32(1 / 255)
    frame = frame.astype(np.float32, copy=False)
    if frame.shape[:2] == tuple(size):
        return frame
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def fb_consistent(forward: np.ndarray, backward: np.ndarray, threshold: float) -> np.ndarray:
    """(h, w) bool: |F_fw(x) + F_bw(x + F_fw(x))| < threshold, the Layered Neural Atlases check."""
    round_trip = forward + warp(backward, forward)
    return np.linalg.norm(round_trip, axis=2) < threshold


@dataclass
class TrustedFlows:
    """Flows between consecutive frames with both directions' trust masks, stacked."""

    forward: np.ndarray
    """(T-1, h, w, 2) float32 flow t -> t+1."""
    backward: np.ndarray
    """(T-1, h, w, 2) float32 flow t+1 -> t (indexed by t)."""
    forward_ok: np.ndarray
    """(T-1, h, w) bool, frame t's pixels whose forward flow passes the check."""
    backward_ok: np.ndarray
    """(T-1, h, w) bool, frame t+1's pixels whose backward flow passes the check."""


def prepare_flows(
    frames: np.ndarray, flows: Sequence[FlowPair] | None, threshold: float, preset: str = "medium", lanes: int = 1
) -> TrustedFlows:
    """Check or compute (on flicker-normalised frames) the T-1 consecutive flows of a clip; with
    lanes >= 2 two pairs at a time on two threads (each pair the same bits either way)."""
    n, h, w = frames.shape[:3]
    if flows is None:
        pair = lambda t: flow_pair(frames[t], frames[t + 1], normalize=True, preset=preset)  # noqa: E731
        if lanes >= 2 and n > 2:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="flow") as pool:
                flows = list(pool.map(pair, range(n - 1)))
        else:
            flows = [pair(t) for t in range(n - 1)]
    flows = list(flows)
    if len(flows) != n - 1:
        raise InputError(f"expected {n - 1} flow pairs for {n} frames, got {len(flows)}")
    fw = np.zeros((max(n - 1, 0), h, w, 2), np.float32)
    bw = np.zeros_like(fw)
    for t, pair in enumerate(flows):
        for name, src, dst in (("forward", pair.forward, fw), ("backward", pair.backward, bw)):
            src = np.asarray(src, np.float32)
            if src.shape != (h, w, 2):
                raise InputError(f"flow pair {t}: {name} flow is {src.shape}, frames need {(h, w, 2)}")
            dst[t] = src
    fw_ok = np.stack([fb_consistent(fw[t], bw[t], threshold) for t in range(n - 1)]) if n > 1 else fw[..., 0] > 0
    bw_ok = np.stack([fb_consistent(bw[t], fw[t], threshold) for t in range(n - 1)]) if n > 1 else fw_ok
    return TrustedFlows(fw, bw, fw_ok, bw_ok)


def rigidity_energy(jac: torch.Tensor) -> torch.Tensor:
    """||J^T J||_F + ||(J^T J + 1e-3 I)^-1||_F per Jacobian (Kasten et al. 2021, Eq. 9).

    jac: (..., 2, 2), rows (du, dv), columns (d/dx, d/dy), in units where the target map has
    J = identity. Minimum 2 sqrt(2) (less the 1e-3 regulariser) at a rotation. Returns (...).
    """
    return rigidity_energy_of(jac[..., 0, 0], jac[..., 0, 1], jac[..., 1, 0], jac[..., 1, 1])


def rigidity_energy_of(j00: torch.Tensor, j01: torch.Tensor, j10: torch.Tensor, j11: torch.Tensor) -> torch.Tensor:
    """`rigidity_energy` of the Jacobians [[j00, j01], [j10, j11]] given as four tensors: elementwise,
    several times faster than batched 2x2 matrix products forwards and backwards."""
    p = j00 * j00 + j10 * j10  # J^T J = [[p, q], [q, r]]
    q = j00 * j01 + j10 * j11
    r = j01 * j01 + j11 * j11
    a, d = p + 1e-3, r + 1e-3
    det = a * d - q * q
    inv_norm = torch.sqrt(a**2 + 2 * q**2 + d**2) / det.abs()
    return torch.sqrt(p**2 + 2 * q**2 + r**2) + inv_norm


def pixel_grid(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(h, w, 2) float32 pixel coordinates (x, y) of a frame."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack((xs, ys), dim=-1)
