"""Faithful backend: a single-layer Layered Neural Atlas (Kasten et al. 2021) as Lei et al. use it.

Coordinates are normalised as in the reference code: x, y divided by half the longer frame side
and t by half the frame count, minus 1. The mapping MLP sends (x, y, t) to uv in [-1, 1]; the
atlas MLP colours uv * 0.5 + 0.5 through a 10-frequency positional encoding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from unflicker.atlas.common import (
    TrustedFlows,
    check_frames,
    check_index,
    prepare_flows,
    resolve_device,
    rigidity_energy,
    seeded,
)
from unflicker.atlas.config import MLP_DEFAULT_STEPS, AtlasConfig
from unflicker.flow import FlowPair

DEFAULT_STEPS = MLP_DEFAULT_STEPS
DEFAULT_LR = 1e-4


class CoordinateMLP(nn.Module):
    """ReLU MLP on coordinates with optional positional encoding, skips and a tanh output.

    x: (N, in_dim) -> (N, out_dim) in (-1, 1). With `frequencies` > 0 the input is replaced by
    sin and cos of 2^j pi x; a layer listed in `skips` also receives that encoding.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int, layers: int,
                 frequencies: int = 0, skips: Sequence[int] = ()):
        super().__init__()
        self.register_buffer("freqs", torch.tensor([2.0**j * math.pi for j in range(frequencies)]))
        enc_dim = 2 * in_dim * frequencies if frequencies else in_dim
        self.skips = tuple(s for s in skips if 0 < s < layers)
        dims_in = [enc_dim if i == 0 else width + (enc_dim if i in self.skips else 0) for i in range(layers)]
        dims_out = [width] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.freqs.numel() == 0:
            return x
        proj = x[:, :, None] * self.freqs  # (N, in_dim, F)
        return torch.cat((torch.sin(proj), torch.cos(proj)), dim=1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encode(x)
        # The reference re-feeds a detached copy at the skips: d colour / d uv flows through layer 0 only.
        skip_in = enc.detach()
        h = enc
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = torch.relu(h)
            if i in self.skips:
                h = torch.cat((h, skip_in), dim=1)
            h = layer(h)
        return torch.tanh(h)


class MLPAtlas:
    """Fitted mapping and atlas MLPs of one clip; see `Atlas` in unflicker.atlas.common."""

    def __init__(self, mapping: CoordinateMLP, atlas: CoordinateMLP, n_frames: int,
                 shape: tuple[int, int], config: AtlasConfig, device: torch.device, losses: list[float]):
        self.mapping_net, self.atlas_net = mapping.eval(), atlas.eval()
        self.n_frames, self.shape, self.losses = n_frames, shape, losses
        self.config, self.device = config, device
        self.half_side = max(shape) / 2.0

    def _xyt(self, t: int) -> torch.Tensor:
        h, w = self.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        tt = torch.full_like(xs, t / (self.n_frames / 2.0) - 1.0)
        return torch.stack((xs / self.half_side - 1, ys / self.half_side - 1, tt), dim=-1).reshape(-1, 3)

    @torch.no_grad()
    def _uv(self, t: int) -> torch.Tensor:
        xyt = self._xyt(check_index(t, self.n_frames))
        chunk = self.config.mlp.render_chunk
        return torch.cat([self.mapping_net(xyt[i : i + chunk].to(self.device)).cpu()
                          for i in range(0, len(xyt), chunk)])

    @torch.no_grad()
    def render(self, t: int) -> np.ndarray:
        """A_t: (h, w, 3) float32 in [0, 1]."""
        uv, chunk = self._uv(t), self.config.mlp.render_chunk
        rgb = torch.cat([colour(self.atlas_net, uv[i : i + chunk].to(self.device)).cpu()
                         for i in range(0, len(uv), chunk)])
        return rgb.reshape(*self.shape, 3).clamp(0, 1).numpy()

    def reconstruct(self, t: int) -> np.ndarray:
        """(h, w, 3) float32: this model has no flicker term, so the reconstruction is A_t."""
        return self.render(t)

    def mapping(self, t: int) -> np.ndarray:
        """(h, w, 2) float32 uv in frame-pixel units (uv * half side / uv_scale)."""
        uv = self._uv(t) * (self.half_side / self.config.mlp.uv_scale)
        return uv.reshape(*self.shape, 2).numpy()


def colour(atlas: CoordinateMLP, uv: torch.Tensor) -> torch.Tensor:
    """(N, 2) uv in [-1, 1] -> (N, 3) RGB in [0, 1], sampled at uv * 0.5 + 0.5 as in the reference."""
    return (atlas(uv * 0.5 + 0.5) + 1.0) * 0.5


def _pretrain(mapping: CoordinateMLP, shape: tuple[int, int], n: int, config: AtlasConfig,
              device: torch.device, gen: torch.Generator, deadline: float = math.inf) -> None:
    """Fit the mapping to uv = uv_scale * xy (one step per frame per pass)."""
    opts, (h, w) = config.mlp, shape
    half = max(h, w) / 2.0
    opt = torch.optim.Adam(mapping.parameters(), lr=opts.pretrain_lr)
    for _ in range(opts.pretrain_iters):
        for f in range(n):
            x = torch.randint(w, (opts.batch,), generator=gen).float() / half - 1
            y = torch.randint(h, (opts.batch,), generator=gen).float() / half - 1
            xyt = torch.stack((x, y, torch.full_like(x, f / (n / 2.0) - 1)), dim=1).to(device)
            loss = (xyt[:, :2] * opts.uv_scale - mapping(xyt)).norm(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.monotonic() > deadline:
                return


class _Losses:
    """The stage-1 loss terms on a batch of integer pixel triples (x, y, t)."""

    def __init__(self, frames: torch.Tensor, flows: TrustedFlows, config: AtlasConfig, device: torch.device):
        self.frames = frames  # (T, h, w, 3) on CPU
        n, h, w = frames.shape[:3]
        self.n, self.h, self.w, self.half = n, h, w, max(h, w) / 2.0
        self.dx = torch.zeros_like(frames)
        self.dy = torch.zeros_like(frames)
        self.dx[:, :, :-1] = frames[:, :, 1:] - frames[:, :, :-1]
        self.dy[:, :-1] = frames[:, 1:] - frames[:, :-1]
        self.fw, self.bw = torch.from_numpy(flows.forward), torch.from_numpy(flows.backward)
        self.fw_ok, self.bw_ok = torch.from_numpy(flows.forward_ok), torch.from_numpy(flows.backward_ok)
        self.config, self.device = config, device

    def xyt(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.stack((x / self.half - 1, y / self.half - 1, t / (self.n / 2.0) - 1), 1).to(self.device)

    def rigidity(self, mapping, x, y, t, uv, offset: float) -> torch.Tensor:
        """Mean rigidity energy of the uv Jacobian from backward differences at `offset` pixels."""
        uv_y = mapping(self.xyt(x, y - offset, t))
        uv_x = mapping(self.xyt(x - offset, y, t))
        scale = self.half / (self.config.mlp.uv_scale * offset)
        jac = torch.stack(((uv - uv_x), (uv - uv_y)), dim=-1) * scale  # rows du, dv; cols d/dx, d/dy
        return rigidity_energy(jac).mean()

    def flow(self, mapping, x, y, t, uv) -> torch.Tensor:
        """Mean atlas-pixel distance of flow-matched points, forward (t+1) and backward (t-1)."""
        terms = []
        for flow, ok, step in ((self.fw, self.fw_ok, 1), (self.bw, self.bw_ok, -1)):
            src = t if step == 1 else t - 1  # backward flow t -> t-1 is stored at index t-1
            sel = (src >= 0) & (src < self.n - 1)
            sel_idx = sel.nonzero().squeeze(1)
            keep = ok[src[sel_idx], y[sel_idx], x[sel_idx]]
            idx = sel_idx[keep]
            if idx.numel() == 0:
                continue
            f = flow[src[idx], y[idx], x[idx]]
            match = mapping(self.xyt(x[idx] + f[:, 0], y[idx] + f[:, 1], (t[idx] + step).float()))
            dist = (match - uv[idx.to(self.device)]).norm(dim=1) * self.half / self.config.mlp.uv_scale
            terms.append(0.5 * dist.mean())
        return sum(terms) if terms else uv.new_zeros(())

    def total(self, mapping, atlas, gen: torch.Generator, global_on: bool) -> torch.Tensor:
        wts, opts = self.config.weights, self.config.mlp
        x = torch.randint(self.w, (opts.batch,), generator=gen)
        y = torch.randint(self.h, (opts.batch,), generator=gen)
        t = torch.randint(self.n, (opts.batch,), generator=gen)
        xf, yf, tf = x.float(), y.float(), t.float()
        uv = mapping(self.xyt(xf, yf, tf))
        rgb = colour(atlas, uv)
        rgb_loss = ((rgb - self.frames[t, y, x].to(self.device)) ** 2).sum(1).mean()
        rgb_x = colour(atlas, mapping(self.xyt(xf + 1, yf, tf)))
        rgb_y = colour(atlas, mapping(self.xyt(xf, yf + 1, tf)))
        grad_loss = (((self.dx[t, y, x].to(self.device) - (rgb_x - rgb)) ** 2).sum(1)
                     + ((self.dy[t, y, x].to(self.device) - (rgb_y - rgb)) ** 2).sum(1)).mean()
        loss = wts.rgb * rgb_loss + wts.gradient * grad_loss
        loss = loss + wts.rigidity * self.rigidity(mapping, xf, yf, tf, uv, opts.local_offset)
        if global_on:
            loss = loss + wts.global_rigidity * self.rigidity(mapping, xf, yf, tf, uv, opts.global_offset)
        return loss + wts.flow * self.flow(mapping, x, y, t, uv)


def fit_mlp(frames: np.ndarray, flows: Sequence[FlowPair] | None, config: AtlasConfig, lanes: int = 1,
            progress: Callable[[float], None] | None = None) -> MLPAtlas:
    """Fit the faithful atlas. frames: (T, h, w, 3) float32 in [0, 1]; flows: T-1 FlowPair or None;
    `progress(fraction of the steps done)` after each step (pre-training counts as none)."""
    frames = check_frames(frames)
    n, h, w = frames.shape[:3]
    device, opts = resolve_device(config.device), config.mlp
    gen = torch.Generator().manual_seed(config.seed)
    with seeded(config.seed):  # the initial weights
        mapping = CoordinateMLP(3, 2, opts.mapping_width, opts.mapping_layers)
        atlas = CoordinateMLP(2, 3, opts.atlas_width, opts.atlas_layers, opts.frequencies, opts.atlas_skips)
    mapping, atlas = mapping.to(device), atlas.to(device)
    start = time.monotonic()
    deadline = math.inf if config.time_budget_s is None else start + config.time_budget_s
    trusted = prepare_flows(frames, flows, opts.flow_threshold, config.flow_preset)
    _pretrain(mapping, (h, w), n, config, device, gen, deadline)
    losses = _Losses(torch.from_numpy(frames), trusted, config, device)
    params = list(mapping.parameters()) + list(atlas.parameters())
    opt = torch.optim.Adam(params, lr=config.lr or DEFAULT_LR)
    steps = DEFAULT_STEPS if config.steps is None else config.steps
    history = []
    for i in range(steps):
        # Checked before the step: one step costs seconds on a CPU, and a budget spent in
        # pre-training must not buy one more (the benchmark compares backends at equal wall time).
        if time.monotonic() > deadline:
            break
        loss = losses.total(mapping, atlas, gen, global_on=i <= config.global_rigidity_until * steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress((i + 1) / steps)
    return MLPAtlas(mapping, atlas, n, (h, w), config, device, history)
