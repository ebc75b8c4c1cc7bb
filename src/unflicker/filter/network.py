"""The neural filter's network: a small UNet that predicts a per-pixel affine colour transform.

O = M(x) I + b(x), with x = concat(I, A): the output keeps every detail of the input frame I (the net
only chooses colours), and the smooth coefficients can be computed at a working resolution and
applied to the full-resolution frame.

With prior="stats" the UNet predicts a correction to a closed-form starting point, the local colour
statistics transfer (per channel, O = (I - mean_I) std_A / std_I + mean_A over Gaussian windows),
which already removes most smooth flicker and is robust to small misalignments of the atlas; the
net then only learns where and how that transfer fails, which it does in far fewer CPU steps than
learning the transfer from scratch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unflicker.errors import InputError

N_COEFFS = 12
"""3x3 colour matrix (row-major, out_i = sum_j M[i, j] I_j) followed by the 3 offsets b."""

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


@dataclass
class FilterNetConfig:
    """Shape of the filter UNet; saved beside the weights so they can be checked on load."""

    base_width: int = 16
    """Channels of the first level; each deeper level doubles them."""
    depth: int = 4
    """Number of levels (depth - 1 max-pool downsamplings)."""
    prior: str = "stats"
    """Starting point the net corrects: 'none' (identity on I) or 'stats' (local statistics transfer)."""
    prior_sigma: float = 8.0
    """stats prior: Gaussian window sigma in pixels at the net's input resolution."""

    def to_dict(self) -> dict:
        return asdict(self)


def apply_coefficients(image: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Apply per-pixel affine colour transforms.

    image: (B, 3, H, W); coeffs: (B, 12, H, W), channels 0-8 the row-major 3x3 matrix M, 9-11 the
    offset b. Returns (B, 3, H, W) with out_i = sum_j M[i, j] * image_j + b_i (no clipping).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise InputError(f"expected image of shape (B, 3, H, W), got {tuple(image.shape)}")
    b, _, h, w = image.shape
    if tuple(coeffs.shape) != (b, N_COEFFS, h, w):
        raise InputError(f"expected coeffs of shape {(b, N_COEFFS, h, w)}, got {tuple(coeffs.shape)}")
    m = coeffs[:, :9].reshape(b, 3, 3, h, w)
    return (m * image.unsqueeze(1)).sum(2) + coeffs[:, 9:]


PRIORS = ("none", "stats")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) with replicated borders; large sigmas run on a downsampled copy."""
    h, w = x.shape[-2:]
    f = max(1, int(sigma // 2))
    small = F.interpolate(x, size=(-(-h // f), -(-w // f)), mode="area") if f > 1 else x
    s = sigma / f
    r = max(1, int(3 * s + 0.5))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    small = F.conv2d(F.pad(small, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    small = F.conv2d(F.pad(small, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if f == 1:
        return small
    # Upsampled channels_last, handed back in x's layout: 2-7x faster on a CPU than in the default layout.
    up = F.interpolate(small.contiguous(memory_format=torch.channels_last), size=(h, w), mode="bilinear",
                       align_corners=False)
    return up.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-d tensor (activations or conv weights) is laid out channels_last (and not also plain)."""
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def stats_prior(frame: torch.Tensor, atlas: torch.Tensor, sigma: float, eps: float = 0.02,
                max_gain: float = 8.0) -> torch.Tensor:
    """Local colour statistics transfer from atlas to frame as coefficients.

    frame, atlas: (B, 3, H, W). Returns (B, 12, H, W): per channel gain g = (std_A + eps) / (std_I + eps)
    (clamped to [0, max_gain]) on the diagonal of M, offset b = mean_A - g mean_I; means and
    standard deviations over Gaussian windows of the given sigma (pixels).
    """
    stats = gaussian_blur(torch.cat([frame, atlas, frame * frame, atlas * atlas], 1), sigma)
    mean_i, mean_a, sq_i, sq_a = stats.split(3, 1)
    std_i = (sq_i - mean_i**2).clamp_min(0).sqrt()
    std_a = (sq_a - mean_a**2).clamp_min(0).sqrt()
    gain = ((std_a + eps) / (std_i + eps)).clamp(0, max_gain)
    zero = torch.zeros_like(gain[:, :1])
    g = gain.split(1, 1)
    return torch.cat([g[0], zero, zero, zero, g[1], zero, zero, zero, g[2], mean_a - gain * mean_i], 1)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True),
    )


class FilterUNet(nn.Module):
    """UNet from (I, A) to affine colour coefficients.

    Levels of two 3x3 conv + ReLU; max-pool down; bilinear up + 3x3 conv; skip concatenation; 1x1 head.
    The head starts at zero weight and bias: a fresh net returns its prior (I itself for prior='none').
    """

    def __init__(self, config: FilterNetConfig | None = None):
        super().__init__()
        self.config = config or FilterNetConfig()
        c, depth = self.config.base_width, self.config.depth
        if c < 1 or depth < 1:
            raise InputError(f"filter net needs base_width >= 1 and depth >= 1, got {c}, {depth}")
        if self.config.prior not in PRIORS:
            raise InputError(f"unknown filter prior {self.config.prior!r}; choose from {PRIORS}")
        widths = [c * 2**i for i in range(depth)]
        # With a prior the net also sees the prior's output, to judge where it went wrong.
        self.down = nn.ModuleList([_double_conv(6 if self.config.prior == "none" else 9, widths[0])])
        self.down.extend(_double_conv(widths[i - 1], widths[i]) for i in range(1, depth))
        self.up_conv = nn.ModuleList(nn.Conv2d(widths[i], widths[i - 1], 3, padding=1) for i in range(depth - 1, 0, -1))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i - 1], widths[i - 1]) for i in range(depth - 1, 0, -1))
        self.head = nn.Conv2d(widths[0], N_COEFFS, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Input sides need not be multiples of this (inputs are padded), but it costs nothing if they are."""
        return 2 ** (self.config.depth - 1)

    def body_in(self, dtype: torch.dtype) -> FilterUNet:
        """Run the convolutions between the inputs and the head in `dtype` (torch.bfloat16 for
        inference where the CPU has bf16 dot products); the prior and the 1x1 head stay float32."""
        for part in (self.down, self.up_conv, self.merge):
            part.to(dtype)
        return self

    def coefficients(self, frame: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
        """frame, atlas: (B, 3, H, W) in [0, 1], same size. Returns coeffs (B, 12, H, W) in float32."""
        if frame.ndim != 4 or frame.shape[1] != 3 or frame.shape != atlas.shape:
            raise InputError(f"expected frame and atlas of the same shape (B, 3, H, W), got "
                             f"{tuple(frame.shape)} and {tuple(atlas.shape)}")
        h, w = frame.shape[-2:]
        frame, atlas = frame.float(), atlas.float()
        if self.config.prior == "stats":  # statistics in float32 whatever the body runs in
            prior = stats_prior(frame, atlas, self.config.prior_sigma)
            inputs = [frame, atlas, apply_coefficients(frame, prior).clamp(0, 1)]
        else:
            prior = torch.tensor(_IDENTITY, device=frame.device).view(1, N_COEFFS, 1, 1)
            inputs = [frame, atlas]
        k = self.multiple
        pad = (0, -w % k, 0, -h % k)
        # Centred inputs; replicate padding keeps the borders' statistics for odd sizes.
        x = (torch.cat(inputs, 1) - 0.5).to(self.down[0][0].weight.dtype)  # the body's dtype (body_in)
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up_conv, self.merge):
            skip = skips.pop()
            x = up(F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False))
            x = merge(torch.cat([F.relu(x), skip], 1))
        # The head runs in float32 whatever the body does: coefficient precision is output precision.
        return prior + self.head(x.float())[..., :h, :w]

    def forward(self, frame: torch.Tensor, atlas: torch.Tensor) -> torch.Tensor:
        """frame, atlas: (B, 3, H, W) in [0, 1]. Returns the filtered frame (B, 3, H, W), unclipped."""
        return apply_coefficients(frame.float(), self.coefficients(frame, atlas))
