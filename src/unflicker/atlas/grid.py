"""Fast backend's model: a texture pyramid seen through a global transform and a coarse warp.

Frame t's pixel p (x, y) maps to atlas coordinates uv = M_t(p + D(p, t)), where M_t is a
flow-fitted global transform into the reference frame and D a residual displacement (pixels)
interpolated trilinearly from nodes on a coarse (t, y, x) grid. The atlas colour at uv is the sum
of the bilinearly upsampled levels of a texture pyramid. The input frame is modelled as
exp(g_t) * colour + o_t, with g_t, o_t per-channel fields on a few nodes per frame (centred over
frames): this is where flicker goes, and A_t is rendered without it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unflicker.atlas.common import check_index, pixel_grid
from unflicker.atlas.config import GridOptions


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _apply_homography(mats: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mats (B, 3, 3), coordinates x, y (B, ...) -> (u, v) (B, ...). Elementwise on coordinate planes:
    far cheaper than bmm for 3x3, and than selecting planes of a (..., 2) tensor, whose backward fills
    a zero tensor per plane."""
    m = mats.reshape(mats.shape[0], *([1] * (x.dim() - 1)), 9).unbind(-1)
    den = m[6] * x + m[7] * y + m[8]
    return (m[0] * x + m[1] * y + m[2]) / den, (m[3] * x + m[4] * y + m[5]) / den


def _line_weights(nodes: int, pixels: int) -> torch.Tensor:
    """(pixels, nodes) weights of linear interpolation (align_corners) from `nodes` to `pixels`:
    torch's own upsampling of each node's indicator, so the products equal upsampling the fields."""
    return F.interpolate(torch.eye(nodes)[None], size=pixels, mode="linear", align_corners=True)[0].T.contiguous()


class GridModel(nn.Module):
    """Parameters of the fast atlas; see the module docstring."""

    def __init__(self, n: int, h: int, w: int, mats: np.ndarray, origin: tuple[float, float], texel: float,
                 texture: np.ndarray, log_gains: np.ndarray, opts: GridOptions):
        super().__init__()
        self.n, self.h, self.w, self.texel = n, h, w, texel
        self.origin = origin
        self.tex_size = texture.shape[:2]
        self.register_buffer("mats", torch.as_tensor(mats, dtype=torch.float32))
        self.levels = nn.ParameterList(self._pyramid(torch.from_numpy(texture).permute(2, 0, 1)[None], opts.levels))
        self.stride = max(1, opts.deform_time_stride)
        nodes_t = max(2, math.ceil((n - 1) / self.stride) + 1)
        gy = max(2, math.ceil((h - 1) / opts.deform_cell) + 1)
        gx = max(2, math.ceil((w - 1) / opts.deform_cell) + 1)
        self.deform = nn.Parameter(torch.zeros(1, 2, nodes_t, gy, gx))
        self.gain = nn.Parameter(torch.as_tensor(log_gains, dtype=torch.float32).clone())
        self.offset = nn.Parameter(torch.zeros(n, 3, *opts.gain_grid))
        self.unlocked = opts.levels
        self.register_buffer("_pixels", pixel_grid(h, w)[None], persistent=False)
        self._lines: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _pyramid(self, tex: torch.Tensor, n_levels: int) -> list[nn.Parameter]:
        """Split a (1, 3, Ht, Wt) texture into Laplacian levels, coarsest first (see `texture`)."""
        ht, wt = tex.shape[-2:]
        sizes = [(max(2, math.ceil(ht / 2**k)), max(2, math.ceil(wt / 2**k))) for k in range(n_levels)][::-1]
        sizes[-1] = (ht, wt)
        gauss = [F.interpolate(tex, size=size, mode="area") for size in sizes[:-1]] + [tex]
        levels = [gauss[0]] + [g - _up(c, g.shape[-2:]) for c, g in zip(gauss[:-1], gauss[1:])]
        return [nn.Parameter(level.clone()) for level in levels]

    def texture(self) -> torch.Tensor:
        """(1, 3, Ht, Wt): each level adds detail to the upsampled coarser sum. Levels from
        `unlocked` on keep their values but take no gradient (coarse-to-fine)."""
        tex = None
        for k, level in enumerate(self.levels):
            level = level if k < self.unlocked else level.detach()
            tex = level if tex is None else _up(tex, level.shape[-2:]) + level
        return tex

    def _time_nodes(self, t: torch.Tensor) -> torch.Tensor:
        """Normalised (align_corners) time coordinate of frames t in the deformation grid."""
        return (t.float() / self.stride) / (self.deform.shape[2] - 1) * 2 - 1

    def _frame_nodes(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) frame indices -> (B, 2, gy, gx) deformation nodes, linear between time nodes."""
        pos = t.float() / self.stride
        i0 = pos.floor().long().clamp(max=self.deform.shape[2] - 2)
        a = (pos - i0.float())[:, None, None, None]
        nodes = self.deform[0].transpose(0, 1)  # (Tn, 2, gy, gx)
        return nodes[i0] * (1 - a) + nodes[i0 + 1] * a

    def _at(self, fields: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        """Per-frame node fields (B, C, gy, gx) spanning the frame, read at pts (B, h', w', 2)
        pixels -> (B, C, h', w'); bilinear between nodes (align_corners)."""
        grid = torch.stack((pts[..., 0] / max(self.w - 1, 1) * 2 - 1, pts[..., 1] / max(self.h - 1, 1) * 2 - 1), -1)
        return F.grid_sample(fields, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def _at_frame(self, fields: torch.Tensor) -> torch.Tensor:
        """`_at` at every pixel of the frame: the same bilinear values as a separable linear map,
        rows @ fields @ cols (two small matrix products forwards and backwards: several times
        faster than grid_sample, and than upsampling, whose backward scatters)."""
        gy, gx = fields.shape[-2:]
        if (gy, gx) not in self._lines:
            self._lines[gy, gx] = (_line_weights(gy, self.h), _line_weights(gx, self.w).T.contiguous())
        rows, cols = self._lines[gy, gx]
        return rows @ fields @ cols

    def frame_pixels(self, t: torch.Tensor, y0: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, h', w', 2) pixel coordinates of frames t: whole frames, or crops at (y0, x0) of `size`."""
        if size is None:
            return self._pixels.expand(len(t), -1, -1, -1)
        base = self._pixels[0, : size[0], : size[1]]
        return base + torch.stack((x0, y0), -1).float()[:, None, None, :]

    def displacement_points(self, t: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        """t (N,), pts (N, 2) pixels -> (N, 2) residual displacement, trilinear in (t, y, x)."""
        gx = pts[:, 0] / max(self.w - 1, 1) * 2 - 1
        gy = pts[:, 1] / max(self.h - 1, 1) * 2 - 1
        grid = torch.stack((gx, gy, self._time_nodes(t)), dim=-1)[None, None, None]
        out = F.grid_sample(self.deform, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[0, :, 0, 0].T

    def to_atlas(self, t: torch.Tensor, pts: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        """Atlas coordinates (reference-frame pixels) of pts + disp of frames t (B,) -> pts' shape."""
        return torch.stack(_apply_homography(self.mats[t], *(pts + disp).unbind(-1)), -1)

    def sample(self, tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
        """Colour at atlas coordinates uv (B, h, w, 2) -> (B, 3, h, w)."""
        return self._sample(tex, *uv.unbind(-1))

    def _sample(self, tex: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`sample` at atlas coordinate planes u, v (B, h, w)."""
        ht, wt = self.tex_size
        b, h, w = u.shape
        gx = (u - self.origin[0]) * (2 / (self.texel * (wt - 1))) - 1
        gy = (v - self.origin[1]) * (2 / (self.texel * (ht - 1))) - 1
        # One batch entry with the frames stacked vertically: avoids expanding the texture.
        grid = torch.stack((gx, gy), dim=-1).reshape(1, b * h, w, 2)
        out = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(3, b, h, w).transpose(0, 1)

    def render(self, t: torch.Tensor, pts: torch.Tensor | None = None, tex: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames t (B,) at pixels pts (B, h', w', 2), None for whole frames -> (A, reconstruction)
        (B, 3, h', w') and atlas coordinates uv (B, h', w', 2)."""
        tex = self.texture() if tex is None else tex
        at = (lambda fields: self._at(fields, pts)) if pts is not None else self._at_frame
        pts = self.frame_pixels(t) if pts is None else pts
        dx, dy = at(self._frame_nodes(t)).unbind(1)
        px, py = pts.unbind(-1)
        u, v = _apply_homography(self.mats[t], px + dx, py + dy)
        a = self._sample(tex, u, v)
        uv = torch.stack((u, v), -1)
        # Gain and offset fields apart: slicing one upsampled stack costs its backward a full-size fill.
        gain, offset = (at((f - f.mean(0, keepdim=True))[t]) for f in (self.gain, self.offset))
        return a, torch.exp(gain) * a + offset, uv


class GridAtlas:
    """A fitted fast atlas of one clip; see `Atlas` in unflicker.atlas.common."""

    def __init__(self, model: GridModel, losses: list[float]):
        self.model = model.eval()
        self.n_frames, self.shape, self.losses = model.n, (model.h, model.w), losses
        with torch.no_grad():
            self._tex = model.texture()

    def _frame(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tt = torch.tensor([check_index(t, self.n_frames)])
        with torch.no_grad():
            a, recon, uv = self.model.render(tt, None, self._tex)
        return a[0], recon[0], uv[0]

    def render(self, t: int) -> np.ndarray:
        """A_t: (h, w, 3) float32 in [0, 1], flicker model discarded."""
        return self._frame(t)[0].permute(1, 2, 0).clamp(0, 1).numpy()

    def reconstruct(self, t: int) -> np.ndarray:
        """(h, w, 3) float32 in [0, 1]: A_t with frame t's gain and offset fields applied."""
        return self._frame(t)[1].permute(1, 2, 0).clamp(0, 1).numpy()

    def mapping(self, t: int) -> np.ndarray:
        """(h, w, 2) float32 atlas coordinates (reference-frame pixels) of frame t's pixels."""
        return self._frame(t)[2].numpy()

    def texture(self) -> np.ndarray:
        """(Ht, Wt, 3) float32 atlas texture (for inspection)."""
        return self._tex[0].permute(1, 2, 0).clamp(0, 1).numpy()
