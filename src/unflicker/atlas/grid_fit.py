"""Fitting the fast atlas: global motion from flow, texture initialised by splatting, then Adam.

Losses (same roles as the paper's stage 1, weights from LossWeights): colour MSE and 1-pixel
gradient error of the reconstruction, rigidity of the residual warp p -> p + D(p, t) at a local and
(first part of the fit) a global offset, flow consistency of atlas coordinates, and a small penalty
on the flicker fields.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from unflicker.atlas.common import TrustedFlows, check_frames, prepare_flows, rigidity_energy_of
from unflicker.atlas.config import AtlasConfig, GridOptions
from unflicker.atlas.grid import GridAtlas, GridModel
from unflicker.atlas.grid_init import chain_residuals, initial_state, texture_geometry
from unflicker.atlas.motion import chain_transforms
from unflicker.flow import FlowPair

DEFAULT_STEPS = 250
# The grid's learning rates in GridOptions are relative to this base rate.
BASE_LR = 1e-2
# Pixels of the forward-backward round trip above which a flow vector is not trusted.
FLOW_THRESHOLD = 1.0


def _cat(parts: list[np.ndarray], dtype, tail: tuple[int, ...]) -> torch.Tensor:
    if not parts:
        return torch.from_numpy(np.zeros((0, *tail), dtype))
    return torch.from_numpy(np.concatenate(parts).astype(dtype))


class _FlowSamples:
    """Trusted flow correspondences: pixel src of frame src_t matches pixel dst of frame dst_t."""

    def __init__(self, flows: TrustedFlows, stride: int):
        src_t, dst_t, src, dst = [], [], [], []
        for t in range(len(flows.forward)):
            for flow, ok, a, b in ((flows.forward[t], flows.forward_ok[t], t, t + 1),
                                   (flows.backward[t], flows.backward_ok[t], t + 1, t)):
                ys, xs = np.nonzero(ok[::stride, ::stride])
                ys, xs = ys * stride, xs * stride
                p = np.stack([xs, ys], 1).astype(np.float32)
                src.append(p)
                dst.append(p + flow[ys, xs])
                src_t.append(np.full(len(xs), a))
                dst_t.append(np.full(len(xs), b))
        # Both ends of a correspondence in one row: one gather per step for the frames, one for the points.
        self.frames = torch.stack((_cat(src_t, np.int64, ()), _cat(dst_t, np.int64, ())), 1)
        self.points = torch.cat((_cat(src, np.float32, (2,)), _cat(dst, np.float32, (2,))), 1)

    def draw(self, count: int, gen: torch.Generator) -> torch.Tensor | None:
        """Indices of `count` random correspondences (None when there are none)."""
        return None if len(self.points) == 0 else torch.randint(len(self.points), (count,), generator=gen)

    def loss(self, model: GridModel, idx: torch.Tensor | None) -> torch.Tensor:
        """Mean atlas-pixel distance between the two ends of the correspondences idx (from `draw`)."""
        if idx is None:
            return torch.zeros(())
        t0, t1 = self.frames.index_select(0, idx).unbind(1)
        p0, p1 = self.points.index_select(0, idx).split(2, 1)
        uv0 = model.to_atlas(t0, p0, model.displacement_points(t0, p0))
        uv1 = model.to_atlas(t1, p1, model.displacement_points(t1, p1))
        return (uv1 - uv0).norm(dim=1).mean()


def residual_rigidity(model: GridModel, k: int) -> torch.Tensor:
    """Mean rigidity energy of p -> p + D(p, t) from node differences k cells apart."""
    d = model.deform[0]  # (2, Tn, gy, gx)
    gy, gx = d.shape[-2:]
    if k >= gy or k >= gx:
        return d.new_zeros(())
    sx, sy = (model.w - 1) / (gx - 1), (model.h - 1) / (gy - 1)
    ddx = ((d[..., k:] - d[..., :-k]) / (k * sx))[..., : gy - k, :]
    ddy = ((d[..., k:, :] - d[..., :-k, :]) / (k * sy))[..., : gx - k]
    return rigidity_energy_of(1 + ddx[0], ddy[0], ddx[1], 1 + ddy[1]).mean()


class _ImageLoss(torch.autograd.Function):
    """wts.rgb x the colour MSE (summed over channels) plus wts.gradient x the 1-pixel gradient error of
    (B, 3, h, w) images, as means over `of` images (a step's parts add up to its means). Its own
    backward: the gradient in a few whole-image operations rather than autograd's one per op of the
    forward and a zero-filled image per slice."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, wts, of: int) -> torch.Tensor:
        err = pred - target
        h, w = err.shape[-2:]
        dx = err[..., :, 1:] - err[..., :, :-1]
        dy = err[..., 1:, :] - err[..., :-1, :]
        scales = (wts.rgb / (of * h * w), wts.gradient / (of * h * max(w - 1, 1)),
                  wts.gradient / (of * max(h - 1, 1) * w))
        ctx.save_for_backward(err, dx, dy)
        ctx.scales = scales
        return scales[0] * (err * err).sum() + scales[1] * (dx * dx).sum() + scales[2] * (dy * dy).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        err, dx, dy = ctx.saved_tensors
        c_rgb, c_x, c_y = (2 * c * grad for c in ctx.scales)
        out = err * c_rgb
        dx, dy = dx * c_x, dy * c_y
        out[..., :, 1:] += dx
        out[..., :, :-1] -= dx
        out[..., 1:, :] += dy
        out[..., :-1, :] -= dy
        return out, None, None, None


def _batch(model: GridModel, frames: torch.Tensor, opts, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From frames (T, 3, h, w), random frames, whole or (with `opts.crop`) each through a random crop:
    (t (B,), pixels (B, ch, cw, 2) or None for whole frames, target (B, 3, ch, cw))."""
    n, _, h, w = frames.shape
    t = torch.randperm(n, generator=gen)[: opts.frames_per_step]
    if opts.crop is None:
        return t, None, frames.index_select(0, t)
    ch, cw = min(opts.crop[0], h), min(opts.crop[1], w)
    y0 = torch.randint(h - ch + 1, (len(t),), generator=gen)
    x0 = torch.randint(w - cw + 1, (len(t),), generator=gen)
    ys = (y0[:, None] + torch.arange(ch))[:, :, None]
    xs = (x0[:, None] + torch.arange(cw))[:, None, :]
    target = frames.permute(0, 2, 3, 1)[t[:, None, None], ys, xs].permute(0, 3, 1, 2)
    return t, model.frame_pixels(t, y0, x0, (ch, cw)), target


class _HalfSize:
    """The frames at half size (2x2 means) and the frame-pixel coordinates of their pixels' centres:
    the early steps of the fit (`GridOptions.coarse_until`), while motion, flicker fields and the
    texture's coarser levels settle, render these (a quarter of the pixels)."""

    def __init__(self, frames: torch.Tensor):
        h, w = frames.shape[-2] // 2, frames.shape[-1] // 2
        self.frames = F.avg_pool2d(frames[..., : 2 * h, : 2 * w], 2)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * 2 + 0.5,
                                torch.arange(w, dtype=torch.float32) * 2 + 0.5, indexing="ij")
        self.pixels = torch.stack((xs, ys), -1)[None]

    def pixels_of(self, count: int) -> torch.Tensor:
        """(count, h/2, w/2, 2): the half-size pixels' centres of `count` frames."""
        return self.pixels.expand(count, -1, -1, -1)


class Adam:
    """Adam (Kingma and Ba; torch.optim.Adam's defaults and update, no weight decay) over parameter
    groups, each a dict with "params" and "lr"; `state[p]` holds p's moments and its step count (a
    parameter without a gradient, such as a grid level not yet unlocked, does not step).

    Ours because torch.optim imports torch._dynamo on first use: about 1.3-2.8 s of every run here.
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(group, params=list(group["params"])) for group in groups]
        self.betas, self.eps = betas, eps
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for group in self.param_groups:
            # The parameters of a group that share a step count (a level unlocked later has fewer) step
            # together through torch's _foreach ops: the same arithmetic per element, a few calls instead
            # of seven per parameter (the same bits as one parameter at a time).
            by_step: dict[int, list[tuple[torch.Tensor, dict]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {"step": 0, "exp_avg": torch.zeros_like(p),
                                                  "exp_avg_sq": torch.zeros_like(p)})
                state["step"] += 1
                by_step.setdefault(state["step"], []).append((p, state))
            for step, members in by_step.items():
                params = [p for p, _ in members]
                grads = [p.grad for p in params]
                exp_avgs = [state["exp_avg"] for _, state in members]
                exp_avg_sqs = [state["exp_avg_sq"] for _, state in members]
                correction1, correction2 = 1 - beta1 ** step, 1 - beta2 ** step
                torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
                torch._foreach_mul_(exp_avg_sqs, beta2)
                torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
                denom = torch._foreach_sqrt(exp_avg_sqs)
                torch._foreach_div_(denom, correction2**0.5)
                torch._foreach_add_(denom, self.eps)
                torch._foreach_addcdiv_(params, exp_avgs, denom, value=-group["lr"] / correction1)


@contextmanager
def _lazy(opt: Adam, params: list[torch.Tensor], rows: torch.Tensor) -> Iterator[None]:
    """Undo an optimiser step (values and Adam moments) for rows (dim 0) other than `rows`.

    Per-frame parameters seen in few steps would otherwise keep drifting on stale momentum.
    """
    keep = torch.ones(len(params[0]), dtype=torch.bool)
    keep[rows] = False
    saved = [(p.detach()[keep].clone(), {k: v[keep].clone() for k, v in opt.state.get(p, {}).items()
                                         if torch.is_tensor(v) and v.dim() > 0}) for p in params]
    yield
    with torch.no_grad():
        for p, (values, moments) in zip(params, saved):
            p[keep] = values
            for k, v in moments.items():
                opt.state[p][k][keep] = v


def _regularisers(model: GridModel, opts: GridOptions, wts, global_rigidity: bool) -> torch.Tensor:
    """The residual warp's rigidity (local; global while `global_rigidity`) and the flicker fields' size."""
    loss = wts.rigidity * residual_rigidity(model, 1)
    if global_rigidity:
        loss = loss + wts.global_rigidity * residual_rigidity(model, max(1, round(opts.global_offset / opts.deform_cell)))
    g = model.gain - model.gain.mean(0, keepdim=True)
    o = model.offset - model.offset.mean(0, keepdim=True)
    return loss + wts.gain * ((g * g).mean() + (o * o).mean())


class _Part:
    """One part of a step's loss: the image losses of frames t (their share of the mean over `of`
    frames), rendered from the step's texture `tex`, plus `extra()`; `gradients` differentiates it
    alone (no shared .grad: safe on a thread)."""

    def __init__(self, model: GridModel, tex: torch.Tensor, t: torch.Tensor, pts: torch.Tensor | None,
                 target: torch.Tensor, of: int, extra: Callable[[], torch.Tensor]):
        self.model, self.tex, self.t, self.pts, self.target, self.of, self.extra = model, tex, t, pts, target, of, extra

    def gradients(self, inputs: list[torch.Tensor], wts) -> tuple[float, list[torch.Tensor | None]]:
        loss = self.extra()
        if len(self.t):
            _, pred, _ = self.model.render(self.t, self.pts, self.tex)
            loss = loss + _ImageLoss.apply(pred, self.target, wts, self.of)
        if not loss.requires_grad:
            return float(loss), [None] * len(inputs)
        return float(loss.detach()), list(torch.autograd.grad(loss, inputs, allow_unused=True))


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Part one's gradient plus part two's, always in that order: the same bits with any lanes."""
    return a if b is None else b if a is None else a + b


def _set_lr(opt: Adam, base: list[float], progress: float) -> None:
    # Full rate for the first half, then linear decay to a tenth: settles texture and warp.
    factor = 1.0 if progress < 0.5 else 1.0 - 1.8 * (progress - 0.5)
    for group, lr in zip(opt.param_groups, base):
        group["lr"] = lr * factor


def default_steps(n_frames: int, opts: GridOptions) -> int:
    """DEFAULT_STEPS, capped at opts.max_visits renderings of each of n_frames frames."""
    if opts.max_visits is None:
        return DEFAULT_STEPS
    per_step = max(1, min(n_frames, opts.frames_per_step))
    return max(1, min(DEFAULT_STEPS, math.ceil(opts.max_visits * n_frames / per_step)))


def fit_grid(frames: np.ndarray, flows: Sequence[FlowPair] | None, config: AtlasConfig, lanes: int = 1,
             progress: Callable[[float], None] | None = None) -> GridAtlas:
    """Fit the fast atlas. frames: (T, h, w, 3) float32 in [0, 1]; flows: T-1 FlowPair or None.

    Each step's loss is two parts (half of the step's frames with the warp and flicker-field
    regularisers, the other half with the flow loss), each differentiated on its own and the
    gradients added: with lanes >= 2 the second part runs on a second thread. Every op still runs
    on one thread with the same inputs, so the atlas is the same bits with any number of lanes.
    The first `coarse_until` of the steps render whole frames at half size (`_HalfSize`).
    `progress(fraction of the steps done)` after each step."""
    start = time.monotonic()
    frames = check_frames(frames)
    n, h, w = frames.shape[:3]
    opts, wts = config.grid, config.weights
    gen = torch.Generator().manual_seed(config.seed)  # its only random numbers: the program's are not touched
    trusted = prepare_flows(frames, flows, FLOW_THRESHOLD, config.flow_preset, lanes)
    ref = n // 2
    mats = chain_transforms(trusted, n, opts.motion, ref)
    origin, texel, size = texture_geometry(mats, h, w, opts)
    texture, log_gains = initial_state(frames, mats, origin, texel, size, opts.gain_grid)
    model = GridModel(n, h, w, mats, origin, texel, texture, log_gains, opts)
    if opts.init_residual and n > 1:
        residual = chain_residuals(trusted, mats, tuple(model.deform.shape[-2:]), ref)
        frames_of_nodes = np.minimum(np.arange(model.deform.shape[2]) * model.stride, n - 1)
        with torch.no_grad():
            model.deform.copy_(torch.from_numpy(residual[frames_of_nodes]).permute(1, 0, 2, 3)[None])
    samples = _FlowSamples(trusted, max(1, opts.flow_stride))
    target_all = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
    coarse = _HalfSize(target_all) if opts.coarse_until > 0 and opts.crop is None and min(h, w) >= 4 else None
    scale = (config.lr or BASE_LR) / BASE_LR
    base = [opts.lr_texture * scale, opts.lr_deform * scale, opts.lr_gain * scale]
    levels, others = list(model.levels), [model.deform, model.gain, model.offset]
    opt = Adam([{"params": levels, "lr": base[0]}, {"params": [model.deform], "lr": base[1]},
                {"params": [model.gain, model.offset], "lr": base[2]}])
    steps = default_steps(n, opts) if config.steps is None else config.steps
    budget = config.time_budget_s
    history: list[float] = []

    def position(k: int) -> float:
        """Where step k is in the schedule (with a time budget: in time, if that is further)."""
        return k / steps if budget is None else max(k / steps, (time.monotonic() - start) / budget)

    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="atlas")) if lanes >= 2 else None
        for i in range(steps):
            schedule = position(i)
            if schedule >= 1.0:
                break
            _set_lr(opt, base, schedule)
            model.unlocked = 1 + int((opts.levels - 1) * min(1.0, schedule / max(opts.unlock_until, 1e-6)))
            half_size = coarse is not None and schedule < opts.coarse_until
            t, pts, target = _batch(model, coarse.frames if half_size else target_all, opts, gen)
            if half_size:  # whole frames (no crops with half-size steps), seen at the half-size pixels
                pts = coarse.pixels_of(len(t))
            idx = samples.draw(opts.flow_points, gen)
            half = (len(t) + 1) // 2
            # The texture pyramid's sum once per step for both parts: each part differentiates up to
            # the summed texture, and one backward through the pyramid takes both parts' gradient.
            tex = model.texture()
            shared = tex.detach().requires_grad_()
            first = _Part(model, shared, t[:half], None if pts is None else pts[:half], target[:half], len(t),
                          lambda: _regularisers(model, opts, wts, schedule <= config.global_rigidity_until))
            second = _Part(model, shared, t[half:], None if pts is None else pts[half:], target[half:], len(t),
                           lambda: wts.flow * samples.loss(model, idx))
            inputs = [*others, shared]
            pending = None if pool is None else pool.submit(second.gradients, inputs, wts)
            loss_a, grads_a = first.gradients(inputs, wts)
            loss_b, grads_b = second.gradients(inputs, wts) if pending is None else pending.result()
            *grads, g_tex = [_add(ga, gb) for ga, gb in zip(grads_a, grads_b)]
            # Through the pyramid as the gradient of <tex, g_tex>: a scalar output, as autograd given an
            # output gradient imports sympy on its first use (half a second of every run).
            grads += (torch.autograd.grad((tex * g_tex).sum(), levels, allow_unused=True) if g_tex is not None
                      else [None] * len(levels))
            for p, g in zip([*others, *levels], grads):
                p.grad = g
            with _lazy(opt, [model.gain, model.offset], t):
                opt.step()
            history.append(loss_a + loss_b)
            if progress is not None:
                progress(min(1.0, position(i + 1)))
    model.unlocked = opts.levels
    return GridAtlas(model, history)
