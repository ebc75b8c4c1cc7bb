"""Optical flow (OpenCV DIS) on flicker-normalised frames, backward warping, occlusion masks.

Layouts used throughout:
  frame: (H, W, 3) RGB float32 in [0, 1] (uint8 and uint16 accepted), or (H, W) gray;
  flow:  (H, W, 2) float32 in pixels, x first; flow_fw(a->b)[y, x] = (dx, dy) means pixel
         (x, y) of frame a moves to (x + dx, y + dy) in frame b.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from unflicker.errors import InputError

# Rec.709 luma weights (R, G, B).
LUMA_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# The DIS presets' names, fastest first: what every config that names a flow preset (the carry's, the
# refinement's) accepts.
FLOW_PRESETS: tuple[str, ...] = tuple(_PRESETS)

# Frames are padded to at least this many pixels per side before DIS.
_MIN_FLOW_SIDE = 32


def _dis(preset: str) -> cv2.DISOpticalFlow:
    # A fresh object per call (~12 us): a reused DIS object's result depends on the sizes it
    # saw before (measured: 0.12 px differences), and sharing one across threads races.
    if preset not in _PRESETS:
        raise InputError(f"unknown flow preset {preset!r}; choose one of {sorted(_PRESETS)}")
    return cv2.DISOpticalFlow_create(_PRESETS[preset])


def _luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (H, W), uint8, uint16 or float in [0, 1] -> (H, W) float32 luma in [0, 1]."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise InputError(f"expected a frame of shape (H, W, 3) or (H, W), got {frame.shape}")
    scale = {np.dtype(np.uint8): 1.0 / 255.0, np.dtype(np.uint16): 1.0 / 65535.0}.get(frame.dtype, 1.0)
    frame = frame.astype(np.float32) * np.float32(scale)
    return frame @ LUMA_WEIGHTS if frame.ndim == 3 else frame


def _local_mean(y: np.ndarray) -> np.ndarray:
    """Gaussian blur with sigma = 10 % of the longer side, computed at <= 64 px for speed."""
    h, w = y.shape
    scale = min(1.0, 64.0 / max(h, w))
    small = cv2.resize(y, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 0.1 * max(small.shape), borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def normalize_for_flow(frame: np.ndarray) -> np.ndarray:
    """Gray structure image of a frame with brightness, contrast and smooth gain removed.

    Flicker breaks the brightness constancy that flow relies on; dividing by a heavily
    blurred copy cancels a smooth multiplicative gain field, and per-frame mean/std
    standardisation cancels global gain, offset and (to first order) gamma changes.

    frame: (H, W, 3) RGB or (H, W), float in [0, 1] or uint8.
    Returns: (H, W) uint8, mean 128, one standard deviation = 40 grey levels.
    """
    y = _luma(frame)
    ratio = y / (_local_mean(y) + 0.01)  # the floor keeps near-black areas from exploding into noise
    z = (ratio - ratio.mean()) / (ratio.std() + 1e-6)
    return np.clip(128.0 + 40.0 * z, 0, 255).astype(np.uint8)


def _plain_gray(frame: np.ndarray) -> np.ndarray:
    return np.clip(_luma(frame) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def compute_flow(
    frame_a: np.ndarray, frame_b: np.ndarray, normalize: bool = True, preset: str = "medium"
) -> np.ndarray:
    """Forward optical flow a -> b with OpenCV DIS.

    frame_a, frame_b: (H, W, 3) RGB or (H, W), float in [0, 1] or uint8, same H, W.
    normalize: run DIS on `normalize_for_flow` images (robust to flicker) instead of plain luma.
    preset: "ultrafast", "fast" or "medium".
    Returns: (H, W, 2) float32 flow in pixels, x first.
    """
    gray = normalize_for_flow if normalize else _plain_gray
    a, b = gray(frame_a), gray(frame_b)
    if a.shape != b.shape:
        raise InputError(f"frames differ in size: {a.shape} vs {b.shape}")
    h, w = a.shape
    pad_y, pad_x = max(0, _MIN_FLOW_SIDE - h), max(0, _MIN_FLOW_SIDE - w)
    if pad_y or pad_x:
        # DIS crashes the process on some tiny frames (e.g. 12x40): flow a reflected border.
        border = (0, pad_y, 0, pad_x, cv2.BORDER_REFLECT)
        a, b = cv2.copyMakeBorder(a, *border), cv2.copyMakeBorder(b, *border)
    flow = _dis(preset).calc(a, b, None)[:h, :w]
    return np.ascontiguousarray(flow, dtype=np.float32)


def _check_flow(flow: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"expected a flow of shape (H, W, 2), got {flow.shape}")
    if shape is not None and flow.shape[:2] != tuple(shape[:2]):
        raise InputError(f"flow size {flow.shape[:2]} does not match image size {tuple(shape[:2])}")
    return flow


def remap_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where `warp` along this flow reads each output pixel: (map_x, map_y), each (H, W) float32, the flow plus
    the pixel grid (x + flow[..., 0], y + flow[..., 1]). Made once, they warp several images along the same flow
    (`warp_mapped`) bit for bit as `warp` does. flow: (H, W, 2) float32 pixels, x first."""
    flow = _check_flow(flow)
    h, w = flow.shape[:2]
    return (flow[..., 0] + np.arange(w, dtype=np.float32)[None, :],
            flow[..., 1] + np.arange(h, dtype=np.float32)[:, None])


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InputError(f"expected an image of shape (H, W) or (H, W, C), got {image.shape}")
    return image


def warp(image: np.ndarray, flow: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Backward warp: out[y, x] = image[y + flow[y, x, 1], x + flow[y, x, 0]].

    Bilinear (or another cv2 interpolation: the texture carry's bicubic keeps more of the finest detail),
    borders replicated. So warp(frame_b, flow_fw(a->b)) approximates frame_a.
    image: (H, W) or (H, W, C), any float or uint8 dtype (kept).
    flow: (H, W, 2) float32 pixels, x first.
    Returns: array of the same shape and dtype as image.
    """
    image = _check_image(image)
    return warp_mapped(image, remap_maps(_check_flow(flow, image.shape)), interpolation)


def warp_mapped(
    image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """`warp` along the flow whose `remap_maps` these are (the same bits): several images warped along one flow
    build the maps once. image: (H, W) or (H, W, C); maps: (map_x, map_y), each (H, W) float32."""
    image = _check_image(image)
    map_x, map_y = maps
    if map_x.shape != image.shape[:2] or map_y.shape != image.shape[:2]:
        raise InputError(f"maps of size {map_x.shape}, {map_y.shape} do not match image size {image.shape[:2]}")
    # cv2.remap handles at most 4 channels at a time: more are warped in chunks, all with these maps.
    if image.ndim == 3 and image.shape[2] > 4:
        parts = [warp_mapped(image[..., i : i + 4], maps, interpolation) for i in range(0, image.shape[2], 4)]
        return np.concatenate([p.reshape(*image.shape[:2], -1) for p in parts], axis=2)
    out = cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)


def consistency_mask(flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Valid (non-occluded, off motion boundaries) pixels of frame a, after Lai et al. ECCV 2018.

    A pixel is occluded where |F_fw + W(F_bw)|^2 > 0.01 (|F_fw|^2 + |W(F_bw)|^2) + 0.5, with
    W(F_bw) the backward flow warped by the forward flow; it lies on a motion boundary where
    |grad u|^2 + |grad v|^2 > 0.01 |F_fw|^2 + 0.002 (forward differences of the forward flow).

    flow_fw: (H, W, 2) flow a -> b; flow_bw: (H, W, 2) flow b -> a; pixels, x first.
    Returns: (H, W) bool, True where valid.
    """
    flow_fw = _check_flow(flow_fw)
    flow_bw = _check_flow(flow_bw, flow_fw.shape)
    mag_fw, mag_bw, round_trip, grad = _lai_terms(flow_fw, warp(flow_bw, flow_fw))
    occluded = round_trip > 0.01 * (mag_fw + mag_bw) + 0.5
    boundary = grad > 0.01 * mag_fw + 0.002
    return ~(occluded | boundary)


def _lai_terms(flow_fw: np.ndarray, bw_at_a: np.ndarray) -> tuple[np.ndarray, ...]:
    """|F_fw|^2, |W(F_bw)|^2, |F_fw + W(F_bw)|^2 and the forward differences' |grad u|^2 + |grad v|^2 (zero
    on the last row and column), each (H, W). Computed on the u and v planes: the same sums in the same
    order as over the last axis (a + b for two components), without NumPy's slow reduction over an axis of two."""
    u, v = flow_fw[..., 0], flow_fw[..., 1]
    bu, bv = bw_at_a[..., 0], bw_at_a[..., 1]
    su, sv = u + bu, v + bv
    dxu, dxv, dyu, dyv = (np.zeros_like(u) for _ in range(4))
    np.subtract(u[:, 1:], u[:, :-1], out=dxu[:, :-1])
    np.subtract(v[:, 1:], v[:, :-1], out=dxv[:, :-1])
    np.subtract(u[1:], u[:-1], out=dyu[:-1])
    np.subtract(v[1:], v[:-1], out=dyv[:-1])
    return (u * u + v * v, bu * bu + bv * bv, su * su + sv * sv,
            (dxu * dxu + dyu * dyu) + (dxv * dxv + dyv * dyv))


def in_frame_mask(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where the flow target x + flow lies inside the frame.

    Not part of Lai et al.'s mask (their warping clamps at the border); useful where
    border-replicated values must not be trusted. flow: (H, W, 2) pixels, x first.
    """
    tx, ty = remap_maps(flow)
    h, w = tx.shape
    return (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)


@dataclass
class FlowPair:
    """Flows between two frames a and b and the validity of a's pixels."""

    forward: np.ndarray
    """(H, W, 2) float32 flow a -> b, pixels, x first."""
    backward: np.ndarray
    """(H, W, 2) float32 flow b -> a, pixels, x first."""
    valid: np.ndarray
    """(H, W) bool, True where a's pixel is seen in b (Lai et al. consistency mask)."""


def flow_pair(
    frame_a: np.ndarray, frame_b: np.ndarray, normalize: bool = True, preset: str = "medium"
) -> FlowPair:
    """Forward and backward flow between two frames plus the forward consistency mask.

    frame_a, frame_b: (H, W, 3) RGB or (H, W), float in [0, 1] or uint8, same H, W.
    """
    forward = compute_flow(frame_a, frame_b, normalize=normalize, preset=preset)
    backward = compute_flow(frame_b, frame_a, normalize=normalize, preset=preset)
    return FlowPair(forward, backward, consistency_mask(forward, backward))
