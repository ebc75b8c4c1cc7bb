"""Align the previous frame to the current one for the refinement net: flow t -> t-1 and its mask.

The flow is computed on flicker-normalised frames (unflicker.flow), so the residual flicker the net
is to remove does not bend it; the mask drops occluded pixels, motion boundaries and pixels whose
match falls outside the frame.
"""

from __future__ import annotations

import numpy as np

from unflicker.flow import compute_flow, consistency_mask, in_frame_mask


def align_previous(frame: np.ndarray, previous: np.ndarray, preset: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """Flow from frame t to frame t-1 and the validity of t's pixels.

    frame, previous: (H, W, 3) float32 in [0, 1], same size.
    preset: DIS preset ('ultrafast', 'fast', 'medium').
    Returns (flow (H, W, 2) float32 pixels x first, such that warp(previous, flow) ~ frame;
    mask (H, W) float32, 1 where valid, else 0).
    """
    forward = compute_flow(frame, previous, preset=preset)
    backward = compute_flow(previous, frame, preset=preset)
    mask = consistency_mask(forward, backward) & in_frame_mask(forward)
    return forward, mask.astype(np.float32)
