"""Configuration of the stage-1 neural atlas (Lei et al. CVPR 2023), both backends, and the size it
is fitted at (no torch here: a run's main process plans with it without loading torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from unflicker.errors import InputError


def atlas_size(h: int, w: int, resolution: int) -> tuple[int, int]:
    """(h', w') with the longer side at most `resolution`, aspect kept (never upsampled)."""
    if resolution < 8:
        raise InputError(f"atlas resolution must be at least 8 pixels, got {resolution}")
    s = min(1.0, resolution / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


MLP_DEFAULT_STEPS = 10000
"""The MLP backend's optimisation steps when none are given (the paper's)."""

@dataclass
class LossWeights:
    """Weights of the atlas losses; the defaults are the paper's stage-1 settings."""

    rgb: float = 5000.0
    """Mean squared colour error of the reconstruction."""
    gradient: float = 1000.0
    """Squared error of the 1-pixel colour differences (x and y) of the reconstruction."""
    rigidity: float = 1.0
    """||J^T J|| + ||(J^T J)^-1|| of the uv Jacobian, finite differences at the local offset."""
    global_rigidity: float = 5.0
    """The same at the global offset, during the first `global_rigidity_until` of the steps."""
    flow: float = 500.0
    """Distance in atlas pixels between uv(x, t) and uv(x + flow, t +- 1) where the flow is trusted."""
    gain: float = 10.0
    """grid only: squared size of the per-frame log-gain and offset fields (flicker model)."""


@dataclass
class MLPOptions:
    """Faithful backend: single-layer Layered Neural Atlas as configured by the paper's code."""

    mapping_width: int = 256
    """Hidden width of the mapping MLP (x, y, t) -> (u, v)."""
    mapping_layers: int = 6
    """Linear layers of the mapping MLP, output layer included."""
    atlas_width: int = 256
    """Hidden width of the atlas MLP (u, v) -> RGB."""
    atlas_layers: int = 8
    """Linear layers of the atlas MLP, output layer included."""
    atlas_skips: tuple[int, ...] = (4, 7)
    """Layers of the atlas MLP whose input is re-fed the positional encoding."""
    frequencies: int = 10
    """Positional-encoding frequencies of the atlas MLP: sin, cos of 2^j pi u, j < frequencies."""
    batch: int = 10000
    """Random pixels (over all frames) per step."""
    uv_scale: float = 0.8
    """Pre-training target uv = uv_scale * xy; also the unit conversion of rigidity and flow losses."""
    pretrain_iters: int = 100
    """Pre-training passes; each pass takes one step per frame (batch pixels of that frame)."""
    pretrain_lr: float = 1e-4
    """Adam learning rate of the mapping pre-training."""
    local_offset: float = 1.0
    """Finite-difference offset (pixels) of the rigidity loss."""
    global_offset: float = 100.0
    """Finite-difference offset (pixels) of the global rigidity loss."""
    flow_threshold: float = 1.0
    """Forward-backward check: flow is trusted where |F_fw + F_bw(x + F_fw)| < this (pixels)."""
    render_chunk: int = 65536
    """Pixels per forward pass when rendering."""


@dataclass
class GridOptions:
    """Fast backend: texture pyramid + flow-initialised global motion + coarse residual warp."""

    motion: str = "homography"
    """Per-pair global motion fitted to the flow: 'homography', 'affine', 'similarity' or 'none'."""
    levels: int = 4
    """Texture pyramid levels; level k has 2^(levels-1-k) times fewer texels per side than the finest."""
    max_texels: float = 8.0
    """Cap on the texture's area in units of the frame's area (long pans get a coarser texture)."""
    margin: int = 8
    """Texture border (frame pixels) around the union of the globally aligned frames."""
    deform_cell: int = 8
    """Spacing (frame pixels) of the residual deformation grid nodes."""
    init_residual: bool = True
    """Start the residual warp from trusted flow chained towards the reference frame."""
    deform_time_stride: int = 1
    """Frames between residual deformation nodes in time (linear in between)."""
    gain_grid: tuple[int, int] = (3, 3)
    """Nodes (rows, cols) of each frame's per-channel log-gain and offset fields."""
    frames_per_step: int = 4
    """Frames rendered per step (whole, or each through a random `crop`) for the colour and gradient losses."""
    max_visits: float | None = 24.0
    """With the default number of steps: at most this many renderings of each frame, so a short span
    is not fitted as long as a full one (2 frames: 24 steps instead of 250). A segment of 42 frames
    or more is not affected (a default 60-frame segment with margins gets 12-18 visits). None: no cap."""
    crop: tuple[int, int] | None = None
    """(rows, cols) of each frame's random crop per step; None renders whole frames."""
    flow_points: int = 8192
    """Flow correspondences sampled per step for the flow loss (each direction)."""
    flow_stride: int = 2
    """Pixel stride of the candidate flow correspondences."""
    lr_texture: float = 0.02
    """Adam learning rate of the texture levels (colour units)."""
    lr_deform: float = 0.5
    """Adam learning rate of the residual deformation (pixels)."""
    lr_gain: float = 0.02
    """Adam learning rate of the log-gain and offset fields."""
    unlock_until: float = 0.4
    """Fraction of the steps after which every texture level is trainable (coarse-to-fine)."""
    global_offset: float = 64.0
    """Global-rigidity finite-difference offset in pixels (rounded to whole deformation cells)."""
    coarse_until: float = 0.5
    """Fraction of the steps that render whole frames at half size (2x2 means of the frames as the
    target), at a quarter of the cost: the early steps, in which motion, flicker fields and the coarser
    texture levels settle (with the defaults the finest level, unlocked at `unlock_until`, also takes
    its first tenth of the steps from them). 0: every step at full size. Not used with `crop`."""


@dataclass
class AtlasConfig:
    """Stage 1: a per-shot atlas whose rendering A_t is temporally consistent."""

    backend: str = "grid"
    """Name in ATLAS_BACKENDS: 'grid' (fast, CPU) or 'mlp' (faithful Layered Neural Atlas)."""
    resolution: int = 256
    """Longer side (pixels) of the frames the atlas is fitted on; the caller downsamples to it
    (`atlas_size`). The paper fits at a quarter of the source size (214 px for 854x480)."""
    steps: int | None = None
    """Optimisation steps; None: the backend's default (grid 250, mlp 10000 as in the paper)."""
    lr: float | None = None
    """mlp: Adam learning rate (None: 1e-4 as in the paper). grid: scales its three rates
    relative to 1e-2 (None: unscaled)."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Loss weights."""
    global_rigidity_until: float = 0.5
    """Fraction of the steps during which the global rigidity loss is on (paper: first half)."""
    window: int = 120
    """fit_video: longest stretch of frames fitted by one atlas."""
    overlap: int = 20
    """fit_video: frames shared by consecutive windows, cross-faded linearly."""
    time_budget_s: float | None = None
    """Stop optimising once the fit has run this many seconds, flows and pre-training included
    (None: run all steps)."""
    seed: int = 0
    """Seed of parameter initialisation and pixel sampling."""
    device: str | None = None
    """mlp: torch device; None: CUDA when present, else CPU. The grid backend always runs on CPU."""
    threads: int | None = None
    """Torch intra-op threads while fitting; None: leave torch's setting alone (the engine sets a
    fixed number per worker, EngineConfig.threads, so the fit never depends on machine load)."""
    flow_preset: str = "medium"
    """DIS preset used when fit() computes the flows itself."""
    mlp: MLPOptions = field(default_factory=MLPOptions)
    """Options of the 'mlp' backend."""
    grid: GridOptions = field(default_factory=GridOptions)
    """Options of the 'grid' backend."""
