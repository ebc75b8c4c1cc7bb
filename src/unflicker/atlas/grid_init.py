"""Initial state of the fast atlas: texture extent, texture by splatting, per-frame gains.

All three use the global transforms only (no residual warp yet). Frames: (T, h, w, 3) float32.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from unflicker.atlas.config import GridOptions
from unflicker.atlas.motion import apply

# Cells per side over which frame and rendered texture are compared to estimate gains.
GAIN_CELLS = 8
EPS = 1e-3


def texture_geometry(mats: np.ndarray, h: int, w: int, opts: GridOptions) -> tuple[tuple[float, float], float, tuple[int, int]]:
    """Origin (x0, y0), texel size (reference pixels) and (Ht, Wt) of a texture covering every frame."""
    xs, ys = np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 9)
    border = np.concatenate([np.stack([xs, np.zeros(9)], 1), np.stack([xs, np.full(9, h - 1.0)], 1),
                             np.stack([np.zeros(9), ys], 1), np.stack([np.full(9, w - 1.0), ys], 1)])
    pts = apply(mats, np.broadcast_to(border, (len(mats), *border.shape))).reshape(-1, 2)
    lo, hi = pts.min(0) - opts.margin, pts.max(0) + opts.margin
    texel = max(1.0, math.sqrt(float(np.prod(hi - lo)) / (opts.max_texels * h * w)))
    size = (int(math.ceil((hi[1] - lo[1]) / texel)) + 1, int(math.ceil((hi[0] - lo[0]) / texel)) + 1)
    return (float(lo[0]), float(lo[1])), texel, size


def _to_texels(origin: tuple[float, float], texel: float) -> np.ndarray:
    return np.array([[1 / texel, 0, -origin[0] / texel], [0, 1 / texel, -origin[1] / texel], [0, 0, 1]])


def splat_mean(frames: np.ndarray, mats: np.ndarray, origin: tuple[float, float], texel: float,
               size: tuple[int, int]) -> np.ndarray:
    """(Ht, Wt, 3) float32 mean of the globally aligned frames; unseen texels get the mean colour."""
    to_tex = _to_texels(origin, texel)
    acc = np.zeros((*size, 3), np.float32)
    cnt = np.zeros(size, np.float32)
    ones = np.ones(frames.shape[1:3], np.float32)
    for frame, m in zip(frames, mats):
        acc += cv2.warpPerspective(frame, to_tex @ m, size[::-1], flags=cv2.INTER_LINEAR, borderValue=0)
        cnt += cv2.warpPerspective(ones, to_tex @ m, size[::-1], flags=cv2.INTER_LINEAR, borderValue=0)
    seen = cnt > EPS
    tex = np.empty_like(acc)
    tex[seen] = acc[seen] / cnt[seen, None]
    tex[~seen] = frames.reshape(-1, 3).mean(0)
    return tex


def upsample_fields(fields: np.ndarray, h: int, w: int) -> np.ndarray:
    """(T, C, gy, gx) node values -> (T, h, w, C), interpolated exactly as the model does."""
    up = F.interpolate(torch.from_numpy(fields).float(), size=(h, w), mode="bilinear", align_corners=True)
    return up.permute(0, 2, 3, 1).numpy()


def _cell_basis(h: int, w: int, grid: tuple[int, int], cells: int) -> np.ndarray:
    """(cells^2, gy*gx): the mean of each node's interpolation weight over each cell."""
    gy, gx = grid
    onehot = np.eye(gy * gx, dtype=np.float32).reshape(gy * gx, 1, gy, gx)
    up = upsample_fields(onehot, h, w)[..., 0]
    return np.stack([cv2.resize(u, (cells, cells), interpolation=cv2.INTER_AREA).ravel() for u in up], 1)


def estimate_log_gains(frames: np.ndarray, mats: np.ndarray, origin: tuple[float, float], texel: float,
                       texture: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(T, 3, gy, gx) log-gain nodes, centred over frames, that best turn the texture into each frame.

    Per frame, log(frame / rendered texture) is averaged over GAIN_CELLS^2 cells and the node
    values are their ridge least-squares fit under the model's bilinear interpolation.
    """
    n, h, w = frames.shape[:3]
    cells = min(GAIN_CELLS, h, w)
    to_tex = _to_texels(origin, texel)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    targets = []
    for frame, m in zip(frames, mats):
        rendered = cv2.warpPerspective(texture, to_tex @ m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        small = [cv2.resize(x, (cells, cells), interpolation=cv2.INTER_AREA) for x in (frame, rendered)]
        targets.append((np.log(small[0] + EPS) - np.log(small[1] + EPS)).reshape(-1, 3))
    basis = _cell_basis(h, w, grid, cells)  # (cells^2, nodes)
    lhs = basis.T @ basis + 1e-3 * np.eye(basis.shape[1])
    rhs = basis.T @ np.concatenate(targets, 1)  # (nodes, T*3)
    nodes = np.linalg.solve(lhs, rhs).reshape(grid[0], grid[1], n, 3).transpose(2, 3, 0, 1)
    nodes = np.clip(nodes, -1.5, 1.5)
    return (nodes - nodes.mean(0, keepdims=True)).astype(np.float32)


def initial_state(frames: np.ndarray, mats: np.ndarray, origin: tuple[float, float], texel: float,
                  size: tuple[int, int], grid: tuple[int, int], rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Alternate splatting and gain estimation: -> texture (Ht, Wt, 3), log gains (T, 3, gy, gx)."""
    h, w = frames.shape[1:3]
    gains = np.zeros((len(frames), 3, *grid), np.float32)
    texture = splat_mean(frames, mats, origin, texel, size)
    for _ in range(rounds):
        gains = estimate_log_gains(frames, mats, origin, texel, texture, grid)
        texture = splat_mean(frames / np.exp(upsample_fields(gains, h, w)), mats, origin, texel, size)
    return texture, gains


def interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) 1-D linear interpolation weights, align_corners=True (the model's upsampling)."""
    pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    i0 = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    frac = pos - i0
    mat = np.zeros((n_out, n_in), np.float32)
    mat[np.arange(n_out), i0] = 1 - frac
    if n_in > 1:
        mat[np.arange(n_out), i0 + 1] += frac
    return mat


def _node_average(values: np.ndarray, weight: np.ndarray, prior: np.ndarray, strength: float,
                  ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """Node values (C, gy, gx): the interpolation-weighted mean of values (h, w, C) under weight
    (h, w), pulled towards prior (C, gy, gx) where the weight mass is below `strength`.
    ry (h, gy), rx (w, gx): interpolation matrices; their transposes spread pixels onto nodes."""
    mass = ry.T @ weight @ rx
    return np.stack([(ry.T @ (values[..., c] * weight) @ rx + strength * prior[c]) / (mass + strength)
                     for c in range(values.shape[2])])


def chain_residuals(flows, mats: np.ndarray, nodes: tuple[int, int], ref: int) -> np.ndarray:
    """(T, 2, gy, gx) residual warp nodes that carry each frame's trusted flow into the atlas.

    Starting from zero at the reference frame, frame t's residual D_t is chosen so that
    M_t(p + D_t(p)) = M_s(q + D_s(q)) with s the neighbour towards the reference and q = p + flow.
    flows: TrustedFlows; mats: (T, 3, 3) global transforms into the reference frame.
    """
    n = len(mats)
    h, w = flows.forward.shape[1:3] if n > 1 else (2, 2)
    out = np.zeros((n, 2, *nodes), np.float32)
    pix = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
    strength = 0.02 * (h * w) / (nodes[0] * nodes[1])
    ry, rx = interp_matrix(h, nodes[0]), interp_matrix(w, nodes[1])
    order = [(t, t + 1) for t in range(ref - 1, -1, -1)] + [(t, t - 1) for t in range(ref + 1, n)]
    for t, s in order:
        flow, ok = (flows.forward[t], flows.forward_ok[t]) if s > t else (flows.backward[s], flows.backward_ok[s])
        q = pix + flow
        d_s = np.stack([ry @ c @ rx.T for c in out[s]], -1)
        d_at_q = cv2.remap(d_s, q[..., 0], q[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        target = apply(np.linalg.inv(mats[t]) @ mats[s], (q + d_at_q).reshape(-1, 2)).reshape(h, w, 2) - pix
        out[t] = _node_average(target, ok.astype(np.float32), out[s], strength, ry, rx)
    return out
