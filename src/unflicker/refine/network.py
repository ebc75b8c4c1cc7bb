"""The local refinement network L: O_t = P_t exp(g) + b, with (g, b) a smooth field predicted from
the filtered frame P_t, the previous output O_{t-1} and the previous filtered frame P_{t-1}, both
warped to t along the flow, and the occlusion mask of that flow.

The net runs at a working resolution and predicts its 6 coefficients (per-channel log gain g and
offset b) at a quarter of it, so the correction is smooth by construction; bilinearly upsampled,
it is applied to the full-resolution P_t, whose detail therefore passes through untouched.

Besides the raw inputs the net sees masked local means: the log ratio of the local mean of
W(O_{t-1}) to that of P_t is the correction a pure temporal copy would make, and the log ratio
for W(P_{t-1}) is the flicker between the two input frames; the net decides how much of each to
trust, where.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unflicker.errors import InputError
from unflicker.filter.network import gaussian_blur, is_channels_last

N_COEFFS = 6
"""Per-channel log gain g (channels 0-2) then offset b (channels 3-5)."""

OUT_STRIDE = 4
"""Coefficients are predicted at 1/OUT_STRIDE of the working resolution."""

_EPS = 0.02  # floor of local means in log ratios: dark areas must not explode


@dataclass
class RefineNetConfig:
    """Shape of the refinement net; saved beside the weights so they can be checked on load."""

    width: int = 12
    """Channels at 1/2 resolution; 2x at 1/4 and 4x at 1/8."""
    prior_sigma: float = 4.0
    """Gaussian window sigma (pixels at the working resolution) of the masked local means."""
    warp: bool = True
    """Warp O_{t-1} and P_{t-1} to t along the flow (False: feed them as they are, all pixels valid;
    the ablation that measures what the flow buys)."""

    def to_dict(self) -> dict:
        return asdict(self)


def warp_tensor(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp, out[y, x] = image[y + flow_y, x + flow_x], bilinear, borders replicated.

    image: (B, C, H, W); flow: (B, 2, H, W) pixels, x first (as unflicker.flow.warp, in torch).
    """
    b, _, h, w = image.shape
    if flow.shape != (b, 2, h, w):
        raise InputError(f"expected flow of shape {(b, 2, h, w)}, got {tuple(flow.shape)}")
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    # align_corners=True maps -1 and 1 to the centres of the edge pixels, as cv2.remap indexes.
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def apply_gain_offset(image: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """image (B, 3, H, W) times exp(coeffs[:, :3]) plus coeffs[:, 3:]; coeffs (B, 6, H, W). Unclipped."""
    if coeffs.shape != (image.shape[0], N_COEFFS, *image.shape[-2:]):
        raise InputError(f"expected coeffs of shape {(image.shape[0], N_COEFFS, *image.shape[-2:])}, "
                         f"got {tuple(coeffs.shape)}")
    return image * torch.exp(coeffs[:, :3]) + coeffs[:, 3:]


def upsample_coefficients(coeffs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (half-pixel centres) resize of (B, 6, h, w) coefficients to (B, 6, *size)."""
    if tuple(coeffs.shape[-2:]) == tuple(size):
        return coeffs
    return F.interpolate(coeffs, size=size, mode="bilinear", align_corners=False)


def local_features(frame: torch.Tensor, prev_out: torch.Tensor, prev_in: torch.Tensor, mask: torch.Tensor,
                   sigma: float) -> torch.Tensor:
    """(B, 7, H, W): log local-mean ratios W(O_{t-1})/P_t (3), W(P_{t-1})/P_t (3), mask coverage (1).

    Means are taken over Gaussian windows of the given sigma and only over valid (mask) pixels.
    frame, prev_out, prev_in: (B, 3, H, W) (the previous ones already warped); mask: (B, 1, H, W).
    """
    m = mask
    sums = gaussian_blur(torch.cat([m * frame, m * prev_out, m * prev_in, m], 1), sigma)
    cover = sums[:, 9:10]
    means = sums[:, :9] / cover.clamp_min(1e-3)
    mean_p, mean_o, mean_q = means.split(3, 1)
    log_p = torch.log(mean_p + _EPS)
    return torch.cat([torch.log(mean_o + _EPS) - log_p, torch.log(mean_q + _EPS) - log_p, cover], 1)


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation), nn.ReLU(inplace=True))


class RefineNet(nn.Module):
    """From (P_t, W(O_{t-1}), W(P_{t-1}), mask) to smooth gain/offset coefficients at 1/4 resolution.

    Encoder of stride-2 levels (1/2, 1/4, 1/8), one decoder level back to 1/4 with a skip, 1x1 head.
    The head starts at zero: a fresh net returns P_t unchanged.
    """

    IN_CHANNELS = 3 + 3 + 3 + 1 + 7

    def __init__(self, config: RefineNetConfig | None = None):
        super().__init__()
        self.config = config or RefineNetConfig()
        c = self.config.width
        if c < 1 or self.config.prior_sigma <= 0:
            raise InputError(f"refine net needs width >= 1 and prior_sigma > 0, got {c}, {self.config.prior_sigma}")
        self.enc1 = nn.Sequential(_conv(self.IN_CHANNELS, c, 2), _conv(c, c))
        self.enc2 = nn.Sequential(_conv(c, 2 * c, 2), _conv(2 * c, 2 * c))
        self.enc3 = nn.Sequential(_conv(2 * c, 4 * c, 2), _conv(4 * c, 4 * c), _conv(4 * c, 4 * c, dilation=2))
        self.dec2 = nn.Sequential(_conv(6 * c, 2 * c), _conv(2 * c, 2 * c))
        self.head = nn.Conv2d(2 * c, N_COEFFS, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def body_in(self, dtype: torch.dtype) -> RefineNet:
        """Run the convolutions between the inputs and the head in `dtype` (torch.bfloat16 for inference
        where the CPU has bf16 dot products); the local features and the 1x1 head stay float32."""
        for part in (self.enc1, self.enc2, self.enc3, self.dec2):
            part.to(dtype)
        return self

    def coefficients(self, frame: torch.Tensor, prev_out: torch.Tensor, prev_in: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """Coefficients (B, 6, ceil(H/4), ceil(W/4)) for P_t = frame.

        frame, prev_out (O_{t-1} warped to t), prev_in (P_{t-1} warped to t): (B, 3, H, W) in [0, 1];
        mask: (B, 1, H, W) in [0, 1], 1 where the warped pixels are trusted (non-occluded).
        """
        if frame.ndim != 4 or frame.shape[1] != 3 or prev_out.shape != frame.shape or prev_in.shape != frame.shape:
            raise InputError(f"expected frame, prev_out, prev_in of one shape (B, 3, H, W), got {tuple(frame.shape)}, "
                             f"{tuple(prev_out.shape)}, {tuple(prev_in.shape)}")
        if mask.shape != (frame.shape[0], 1, *frame.shape[-2:]):
            raise InputError(f"expected mask of shape {(frame.shape[0], 1, *frame.shape[-2:])}, "
                             f"got {tuple(mask.shape)}")
        feats = local_features(frame, prev_out, prev_in, mask, self.config.prior_sigma)
        x = torch.cat([frame - 0.5, prev_out - 0.5, prev_in - 0.5, mask - 0.5, feats], 1)
        weight = self.enc1[0][0].weight  # the body's dtype (body_in) and layout (channels_last at inference)
        e1 = self.enc1(x.to(weight.dtype).contiguous(memory_format=torch.channels_last if is_channels_last(weight)
                                                     else torch.contiguous_format))
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        up = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.dec2(torch.cat([up, e2], 1)).float())

    def forward(self, frame: torch.Tensor, prev_out: torch.Tensor, prev_in: torch.Tensor, flow: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One recurrent step at the working resolution.

        frame: P_t (B, 3, H, W); prev_out: O_{t-1} and prev_in: P_{t-1}, (B, 3, H, W) not yet warped;
        flow: (B, 2, H, W) flow t -> t-1 (pixels, x first); mask: (B, 1, H, W) validity of t's pixels
        (both ignored when config.warp is False).
        Returns (O_t (B, 3, H, W) clipped to [0, 1], coefficients (B, 6, ceil(H/4), ceil(W/4))).
        """
        if self.config.warp:
            warped = warp_tensor(torch.cat([prev_out, prev_in], 1), flow)
        else:
            warped, mask = torch.cat([prev_out, prev_in], 1), torch.ones_like(mask)
        coeffs = self.coefficients(frame, warped[:, :3], warped[:, 3:], mask)
        out = apply_gain_offset(frame, upsample_coefficients(coeffs, tuple(frame.shape[-2:])))
        return out.clamp(0.0, 1.0), coeffs
