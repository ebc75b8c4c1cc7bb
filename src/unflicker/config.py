"""Settings: `RunConfig` (the options of one `unflicker run`), `EngineConfig` (where segments run),
presets as named configs, and `resolve`, which turns the options into each component's dataclass
config (atlas, filter, refine, projection, anchor, segments) and records them with every output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unflicker import __version__, io
from unflicker.errors import InputError, OutputError, warn
from unflicker.segments import MethodSpec, SegmentConfig

ENGINES = ("local", "ray")
MAX_THREADS = 1024
"""--threads at most: OpenCV takes a C int, and more threads than this per worker is a typo."""
KINDS = ("auto", "processed", "film", "timelapse", "mains")
"""--kind: what flickers. auto measures, per segment, whether the networks' fine correction removes
flicker (unflicker.gate); processed takes all of it; the physical kinds take the smooth flicker model's
part only, and film also gives every frame of a segment the atlas's look (pumping is flicker)."""


_TYPE_NAMES = {float: "a number", int: "an int", bool: "True or False", str: "a str",
               Path: "a path (str or os.PathLike)"}


def check_types(config, prefix: str = "") -> None:
    """Raise InputError naming the first field of a dataclass config (nested ones too) whose value is not of
    its annotated type: an int passes for a float, a str or os.PathLike for a Path, a bool only for a bool.
    NumPy's numbers and bools pass as Python's and are stored as Python's (the record is JSON)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = _plain(getattr(config, f.name)), hints[f.name]
        if value is not getattr(config, f.name):
            object.__setattr__(config, f.name, value)  # frozen configs too: the same value, Python's type
        kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        if not any(_is_a(value, kind) for kind in kinds):
            expected = " or ".join("None" if kind is type(None) else _TYPE_NAMES.get(kind, kind.__name__)
                                   for kind in kinds)
            raise InputError(f"option {prefix}{f.name} must be {expected}, got {reprlib.repr(value)} "
                             f"({type(value).__name__})")
        if dataclasses.is_dataclass(value):
            check_types(value, f"{prefix}{f.name}.")


def _plain(value):
    """A NumPy number or bool as Python's own (anything else as it is)."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, int):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    return value


def _is_a(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):  # a bool is no number here
        return isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if kind is Path:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, kind)


def machine_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


PRECISIONS = ("auto", "fp32", "bf16")
"""--precision: the neural networks' convolutions (filter, refinement) in float32, in bfloat16, or (auto) in
bfloat16 where the CPU computes it natively (native_bf16), else float32."""


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU has bfloat16 dot products (x86 AVX512-BF16 or AMX-BF16), read from the
    kernel's CPU flags without loading torch; False where they cannot be read (not Linux) and where oneDNN
    is held below them (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA). Without them PyTorch emulates bfloat16:
    the filter's convolutions ran 2.5-7x slower than float32 (with them, 1.75x faster; session 30)."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(name, "").strip().upper()
        if isa and isa != "ALL" and "BF16" not in isa and "AMX" not in isa:
            return False
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


GB = 2**30
WORKER_MEMORY = (0.75 * GB, 160)
"""(bytes, bytes per pixel of a frame): the peak memory of a local worker running a segment of the default
neural method (grid atlas) at one thread, with margin. Measured peaks (session 26, `unflicker run --workers 2`):
0.52 GB at 854x480, 0.77 GB at 1920x1080, 1.65 GB at 3840x2160 with PyTorch's CPU build; about 0.8 GB at 854x480
with a CUDA build of PyTorch (its libraries), whose share the base holds. Within 10 % of the default's with
--threads 2, --preset fast and --segment-frames 120 (0.52, 0.47 and 0.56 GB at 854x480; session 27,
benchmarks/memory_settings.py), which the model leaves out."""
CLASSICAL_WORKER_MEMORY = (0.45 * GB, 110)
"""The same for the classical method (no networks; session 27, benchmarks/memory_settings.py): 0.29 GB at
854x480, 0.33 at 1280x720, 0.42 at 1920x1080 (0.26 GB and 84 B a pixel), with a margin like WORKER_MEMORY's
(30 % on the slope: no 4K run)."""
MLP_ATLAS_MEMORY = 1.7 * GB
"""What the MLP atlas (--preset paper, --atlas mlp) adds to WORKER_MEMORY on a CPU: its fit's steps (10000
pixels each), about the same at any frame size. Measured (session 27: one 60-frame segment in the run's own
process, the pre-training cut to 2 passes and the fit to 20 steps, which changes no step's size): 1.91 against
0.50 GB with the grid atlas at 854x480, 1.99 against 0.61 GB at 1280x720 (+1.41, +1.38 GB). On a GPU (its
default there) most of it is the GPU's memory instead: counted all the same."""
MAIN_MEMORY = (0.2 * GB, 190)
"""The same for the run's main process (decoding, stitching, encoding): 0.18, 0.50 and 1.50 GB measured; with
each setting above 0.16-0.17 GB at 854x480, 0.27 at 1280x720 (session 27): the method does not change it."""


def _cgroup_room(folder: Path, limit: str, usage: str, inactive: str) -> int | None:
    """Bytes a cgroup's memory limit still allows (None: no limit there, or not readable): the limit less what
    the cgroup uses, its inactive page cache (which the kernel drops for it) not counted as used."""
    try:
        text = (folder / limit).read_text().strip()
        if text == "max" or int(text) >= 2**60:  # v2's "max", v1's page-rounded LLONG_MAX: no limit
            return None
        used = int((folder / usage).read_text())
    except (OSError, ValueError):
        return None
    try:
        stat = dict(line.split()[:2] for line in (folder / "memory.stat").read_text().splitlines() if line.strip())
        used -= int(stat.get(inactive, 0))
    except (OSError, ValueError):
        pass
    return int(text) - max(used, 0)


def available_memory(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process tree may still take: the kernel's MemAvailable, less where a cgroup (a container, a
    systemd slice) allows less: this process's own and its ancestors', cgroup v2 or v1's memory controller
    (a container sees its own at the mount's root); None where nothing can be read (not Linux)."""
    sizes = []
    try:
        with open(f"{proc}/meminfo") as f:
            sizes += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        lines = Path(proc, "self", "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: one hierarchy, mounted at `cgroup`
            root, names = Path(cgroup), ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory controller's own mount
            root, names = Path(cgroup, "memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                   "total_inactive_file")
        else:
            continue
        parts = [part for part in path.strip().split("/") if part and part != ".."]
        for depth in range(len(parts), -1, -1):  # its own cgroup, then each parent: every limit binds
            folder = root.joinpath(*parts[:depth])
            room = _cgroup_room(folder, *names) if folder.is_dir() else None
            if room is not None:
                sizes.append(room)
    return min(sizes) if sizes else None


def workers_that_fit(width: int, height: int, free: int | None = None, spec: MethodSpec | None = None) -> int | None:
    """How many local workers the available memory holds beside the main process for frames of this size
    and this method (at least 1); None where the available memory is not known. free: the bytes to count on
    (None: the `available_memory` now); spec: the resolved method (None: the default, neural with a grid atlas)."""
    free = available_memory() if free is None else free
    if free is None:
        return None
    main, worker = memory_needs(width, height, spec)
    return max(1, int((free - main) // worker))


def memory_needs(width: int, height: int, spec: MethodSpec | None = None) -> tuple[float, float]:
    """(bytes, bytes): the peak memory of a run's main process and of one of its workers for frames of this
    size and this resolved method (None: the default, neural with a grid atlas): MAIN_MEMORY, and the method's
    `worker_memory` (WORKER_MEMORY, with MLP_ATLAS_MEMORY for the MLP atlas; CLASSICAL_WORKER_MEMORY). The
    other settings (threads, preset fast, segment length) change a worker's peak by 10 % or less."""
    pixels = width * height
    if spec is None:
        base, per_pixel = WORKER_MEMORY
    else:
        from unflicker.methods import METHODS  # imports config: not at the top

        base, per_pixel = METHODS[spec.name].worker_memory(spec.config)
    return MAIN_MEMORY[0] + MAIN_MEMORY[1] * pixels, base + per_pixel * pixels


@dataclass
class EngineConfig:
    """Where and how the segments of a run (or a batch) are processed."""

    engine: str = "local"
    """'local': a process pool on this machine (workers=1: in this process); 'ray': Ray tasks."""
    workers: int | None = None
    """Segments processed at once. None: the machine's cores, no more than the free memory holds for the
    video's frame size (local: `local_workers`), the cluster's CPUs (ray)."""
    threads: int = 1
    """Torch and OpenCV threads per worker. Fixed, so outputs never depend on machine load; the
    same value gives bit-identical outputs with any worker count and engine."""
    lanes: int | None = None
    """Threads of a segment at once in a local worker: with 2, the atlas fit computes each step's
    two halves on two threads, and a second thread prepares the
    next frame's stages that depend on no other frame (the neural method's atlas frame and filter)
    while this frame's refinement and projection run, and settles the next frame while the anchor
    takes this one. The same bits with any value. None: 2 where the machine has a core for the
    second lane of every worker running (a short clip's one segment), else 1."""
    ray_address: str | None = None
    """ray: address of an existing cluster ('HOST:6379' or 'auto'); None starts a local Ray
    for the run (its servers listen on 127.0.0.1 alone)."""
    shared_dir: Path | None = None
    """ray: a folder every node can read and write at the same path (NFS...): the run's temporary work folder
    is made there, and frames and results go through it (with --keep-work, that folder is used: it must be
    shared too). None: through Ray's object store (a local Ray uses the work folder on this machine)."""
    retries: int = 2
    """Times a segment whose worker died is run again before the run fails."""

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"unknown engine {self.engine!r}; choose from {', '.join(ENGINES)}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if not 1 <= self.threads <= MAX_THREADS:
            raise InputError(f"--threads must be in 1..{MAX_THREADS}, got {self.threads}")
        if self.lanes is not None and self.lanes < 1:
            raise InputError(f"engine.lanes must be at least 1, got {self.lanes}")  # no CLI flag: the keyword
        if self.engine != "ray" and (self.ray_address or self.shared_dir):
            raise InputError("--ray-address and --shared-dir apply to --engine ray only")
        if self.shared_dir is not None and not Path(self.shared_dir).is_dir():
            raise InputError(f"--shared-dir {self.shared_dir} is not a folder")
        if self.retries < 0:
            raise InputError(f"engine.retries must be >= 0, got {self.retries}")  # no CLI flag: the keyword

    def local_workers(self, frame: tuple[int, int] | None = None, free: int | None = None,
                      spec: MethodSpec | None = None) -> int:
        """Workers of a local run: --workers, else one per `threads` cores, no more than the available memory
        (`free` bytes where given) holds for frames of size `frame` (width, height) where it is given, of the
        method `spec` (`workers_that_fit`)."""
        if self.workers is not None:
            return self.workers
        cores = max(1, machine_cores() // self.threads)
        fits = None if frame is None else workers_that_fit(*frame, free, spec)
        return cores if fits is None else min(cores, fits)

    def lanes_for(self, running: int) -> int:
        """Lanes of each of `running` local workers (see `lanes`)."""
        if self.lanes is not None:
            return self.lanes
        return 2 if machine_cores() >= 2 * running * self.threads else 1

    def shares_files(self) -> bool:
        """Whether the workers read and write this machine's work folder (else frames and results
        travel through the engine: Ray's object store on a cluster)."""
        return self.engine != "ray" or self.ray_address is None or self.shared_dir is not None


# --preset of the neural method -> AtlasConfig fields; --atlas and --atlas-steps override them.
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"backend": "grid", "resolution": 160, "steps": 100},
    "balanced": {},  # AtlasConfig's defaults: grid backend, 256 px, 250 steps
    "paper": {"backend": "mlp"},  # the MLP backend's defaults are the paper's (10000 steps, lr 1e-4)
}
NEURAL_MIN_SIDE = 16
"""Smallest frame side, at the input's and at the atlas resolution, the neural method accepts:
OpenCV's DIS optical flow rejects smaller frames, and crashes on some wide ones under 16 rows."""
METHOD_NAMES = ("classical", "neural")
NEURAL_STAGES = ("atlas", "filter", "refine", "project")
"""The neural method's stages in order (unflicker.neural.STAGES; here for --stop-after's check, which loads no torch)."""


@dataclass
class RunConfig:
    """Options of one `unflicker run` (the CLI's flags; `resolve` turns them into component configs)."""

    method: str | None = None
    """'neural' or 'classical'; None: 'neural', or 'classical' (with a warning) for frames too small for it."""
    preset: str | None = None
    """neural: name in PRESETS, 'fast', 'balanced' or 'paper' (None: balanced)."""
    atlas: str | None = None
    """neural: atlas backend, 'grid' (fast) or 'mlp' (the paper's, for GPUs); None: the preset's."""
    atlas_steps: int | None = None
    """neural: atlas optimisation steps (None: the preset's, else the backend's default)."""
    stop_after: str | None = None
    """neural: last stage to run ('atlas', 'filter' or 'refine'); no output is written, each stage's
    frames go to keep_work/<stage>/."""
    projection: bool = True
    """neural: project the network's correction onto a smooth flicker model (unflicker.projection),
    which keeps every pixel's detail from the input; False takes the network's output as it is."""
    keep_slow: float | None = None
    """neural: Gaussian sigma, in frames, of the fine-scale changes of look kept from the input (see
    unflicker.anchor); faster changes count as flicker. inf turns the anchor off: every frame gets
    the atlas's look, as in the paper, and the amount of fine detail is not evened out either (the
    anchor's detail part). None: AnchorConfig's defaults."""
    kind: str = "auto"
    """neural: what flickers, one of KINDS: 'auto' (measured per segment), 'processed' (frames processed
    one by one: trust the networks' texture-level correction), 'film', 'timelapse' or 'mains'
    (physical flicker: only the smooth flicker model's correction; film also without the slow-look anchor)."""
    carry_texture: bool = False
    """neural: carry the finest texture along the motion after the anchor (unflicker.carry), for frames
    processed one by one that draw their texture afresh (img2img and the like); it also evens out sensor
    noise and film grain, so no run does it unasked. Scaled per segment by the gate (none where a
    segment is left as it is or, with kind 'auto', its flicker is measured smooth physical light; whole
    with a kind named)."""
    filter_weights: Path | None = None
    """neural: the neural filter's weights file (e.g. from `unflicker train-filter`); None: the shipped ones."""
    refine_weights: Path | None = None
    """neural: the local refinement's weights file; None: the shipped ones."""
    precision: str = "auto"
    """neural: the networks' convolutions (filter, refinement) in 'fp32', 'bf16' (their heads and coefficients
    stay float32; outputs within a fraction of an 8-bit level of fp32's) or 'auto': bf16 where the CPU has
    bf16 dot products (native_bf16, decided where the run is planned and recorded), else fp32."""
    strength: float = 1.0
    """How much of the correction to apply, 0..1: output = input + strength * (deflickered - input)."""
    crf: int = io.DEFAULT_CRF
    """H.264 quality for .mp4/.mov outputs, 0..51 (lower is better; 18 and below look lossless)."""
    codec: str | None = None
    """Output video codec: 'h264', 'hevc', 'prores' or 'ffv1'; None chooses by extension and source (io.encoders)."""
    bit_depth: int | None = None
    """Output bits per sample (8, 10, 12, 16); None keeps the source's as far as the codec holds it."""
    overwrite: bool = False
    """Replace an existing output (and existing compare / plot files)."""
    keep_work: Path | None = None
    """Work folder kept after the run: finished segments persist there, so a rerun of the same
    command (killed at any moment) only runs the unfinished ones. None: a temporary folder."""
    compare: Path | None = None
    """Also write a side-by-side (input | output) video (or PNG folder) here."""
    plot: Path | None = None
    """Also write a PNG plot of mean brightness per channel over time, input vs output, here."""
    plot_label: str | None = None
    """What the plot's title calls the clip (None: 'INPUT -> OUTPUT', their file names): a caller whose files
    have names of its own (the web page's job folder) gives the user's."""
    progress: bool = True
    """Show progress bars on stderr."""
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    """How the video is cut into segments (the unit of work)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Where the segments run."""

    @property
    def neural_options_set(self) -> bool:
        """Whether any option that only the neural method takes is given."""
        return bool(self.preset or self.stop_after or self.atlas or self.atlas_steps or self.keep_slow is not None
                    or not self.projection or self.kind != "auto" or self.carry_texture or self.filter_weights
                    or self.refine_weights or self.precision != "auto")

    def check(self) -> None:
        """Raise InputError / OutputError on options of the wrong type or that cannot work together."""
        check_types(self)
        if self.method is not None and self.method not in METHOD_NAMES:
            raise InputError(f"unknown method {self.method!r}; choose from {', '.join(METHOD_NAMES)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise InputError(f"--strength must be in 0..1, got {self.strength}")
        if not 0 <= self.crf <= 51:
            raise InputError(f"--crf must be in 0..51, got {self.crf}")
        if self.atlas_steps is not None and self.atlas_steps < 1:
            raise InputError(f"--atlas-steps must be at least 1, got {self.atlas_steps}")
        if self.keep_slow is not None and not (0.0 <= self.keep_slow <= 50.0 or self.keep_slow == math.inf):
            raise InputError(f"--keep-slow must be in 0..50 frames or off, got {self.keep_slow}")
        if self.method not in (None, "neural") and self.neural_options_set:
            raise InputError("--preset, --stop-after, --atlas, --atlas-steps, --keep-slow, --kind, --no-projection, "
                             "--carry-texture, --precision and the weights options apply to --method neural only")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.kind not in KINDS:
            raise InputError(f"unknown kind {self.kind!r}; choose from {', '.join(KINDS)}")
        if self.stop_after is not None and self.stop_after not in NEURAL_STAGES:
            raise InputError(f"unknown stage {self.stop_after!r} for --stop-after; choose from "
                             f"{', '.join(NEURAL_STAGES[:-1])}")  # the last stage is the output
        if self.stop_after and self.keep_work is None:
            raise OutputError("--stop-after needs --keep-work DIR: the stage frames are the only output")
        if self.stop_after and (self.compare or self.plot):
            raise OutputError("--compare and --plot need the output: drop --stop-after")
        if self.plot is not None and Path(self.plot).suffix.lower() != ".png":
            given = Path(self.plot).name or os.fspath(self.plot)  # '.' and '..' have no name
            raise OutputError(f"--plot writes a PNG: name it *.png, not {given}")
        self.segments.check()
        self.engine.check()


def mlp_atlas(config: RunConfig) -> bool:
    """Whether the neural method's atlas is the MLP (the paper's; slow on a CPU)."""
    return atlas_config(config).backend == "mlp"


def mlp_atlas_note(config: RunConfig) -> str:
    """What a run with the MLP atlas is told before it starts: how many steps it takes, and that it is slow."""
    from unflicker.atlas.config import MLP_DEFAULT_STEPS  # not atlas.mlp: no torch in the run's own process

    steps = atlas_config(config).steps or MLP_DEFAULT_STEPS
    return (f"the MLP atlas (--preset paper / --atlas mlp) takes {steps} steps per segment after its pre-training: "
            "without a GPU that is minutes a segment before its first frame, tens of minutes at the paper's "
            f"{MLP_DEFAULT_STEPS} (--preset balanced: seconds)")


def atlas_config(config: RunConfig):
    """The neural method's atlas settings: the preset's, then explicit --atlas / --atlas-steps."""
    from unflicker.atlas import AtlasConfig  # torch is imported only when a neural method runs

    fields = dict(PRESETS[config.preset or "balanced"])
    if config.atlas is not None:
        fields["backend"] = config.atlas
    if config.atlas_steps is not None:
        fields["steps"] = config.atlas_steps
    return AtlasConfig(**fields)


def _neural_fits(height: int, width: int, config: RunConfig) -> tuple[bool, int, int]:
    """(whether the neural method can take frames of this size, the atlas-resolution size)."""
    from unflicker.atlas import atlas_size

    low_h, low_w = atlas_size(height, width, atlas_config(config).resolution)
    return min(height, width, low_h, low_w) >= NEURAL_MIN_SIDE, low_h, low_w


def resolve_method(config: RunConfig, height: int, width: int, n_frames: int) -> RunConfig:
    """The config with its method named: the default (None) is neural, or classical for frames too
    small for the neural method's flow (with a warning); an explicit neural method is checked."""
    if config.method != "classical" and n_frames >= 2:
        fits, low_h, low_w = _neural_fits(height, width, config)
        # A preset alone (the neural method's speed) does not ask for the neural method, as --kind and the
        # other neural-only options do: without them such frames take the classical one, preset or not.
        asked = config.method is not None or dataclasses.replace(config, preset=None).neural_options_set
        if not fits and asked:
            raise InputError(f"{width}x{height} frames are too small or too thin for the neural method (its "
                             f"optical flow needs {NEURAL_MIN_SIDE} pixels a side at the atlas resolution, "
                             f"{low_w}x{low_h} here): use the classical method")
        if not fits:
            ignored = f" (--preset {config.preset} is the neural method's: ignored)" if config.preset else ""
            warn(f"{width}x{height} frames are too small for the neural method; using the classical one{ignored}")
            return dataclasses.replace(config, method="classical", preset=None)
    return config if config.method else dataclasses.replace(config, method="neural")


def anchor_config(config: RunConfig):
    """The slow-look anchor of the neural method: --keep-slow sets the fine part's window; the
    coarse, frame-wide and contrast windows are never shorter, the detail part keeps its own (None:
    no anchor, --keep-slow off, and with it no detail part). The physical kinds (timelapse, mains)
    leave the amount of detail as it is, as `auto` does where it finds smooth flicker (light does
    not change it; AnchorConfig.for_segment)."""
    from unflicker.anchor import AnchorConfig

    if config.keep_slow == math.inf or (config.keep_slow is None and config.kind == "film"):
        return None
    detail = {"detail_sigma": math.inf} if config.kind in ("timelapse", "mains") else {}
    if config.keep_slow is None:
        return AnchorConfig(**detail)
    defaults = AnchorConfig()
    return AnchorConfig(sigma=config.keep_slow, coarse_sigma=max(config.keep_slow, defaults.coarse_sigma),
                        global_sigma=max(config.keep_slow, defaults.global_sigma),
                        contrast_sigma=max(config.keep_slow, defaults.contrast_sigma), **detail)


def projection_config(config: RunConfig):
    """The flicker model: the physical kinds take the model's remainder low-passed as `auto` does
    where it finds smooth flicker (GateConfig.smooth_blur; docs/research-notes.md, Session 6)."""
    from unflicker.gate import GateConfig
    from unflicker.projection import ProjectionConfig

    if config.kind in ("film", "timelapse", "mains"):
        return ProjectionConfig(residual_blur=GateConfig().smooth_blur)
    return ProjectionConfig()


def gate_config(config: RunConfig):
    """The share of the networks' fine correction: measured (auto), all of it (processed) or none."""
    from unflicker.gate import GateConfig

    if config.kind == "auto":
        return GateConfig()
    return GateConfig(weight=1.0 if config.kind == "processed" else 0.0)


def carry_config(config: RunConfig):
    """The texture carry (unflicker.carry): only where asked for (--carry-texture)."""
    from unflicker.carry import CarryConfig

    return CarryConfig() if config.carry_texture else None


def network_precision(config: RunConfig) -> str:
    """The networks' precision for this run: --precision, 'auto' decided by this machine's CPU."""
    if config.precision != "auto":
        return config.precision
    return "bf16" if native_bf16() else "fp32"


def method_spec(config: RunConfig) -> MethodSpec:
    """The resolved method (config.method must be named, see resolve_method) and its config."""
    if config.method == "classical":
        from unflicker.classical import ClassicalConfig

        return MethodSpec("classical", ClassicalConfig())
    from unflicker.neural import NeuralConfig

    neural = NeuralConfig(atlas=atlas_config(config), stop_after=config.stop_after, anchor=anchor_config(config),
                          projection=projection_config(config), gate=gate_config(config), carry=carry_config(config),
                          filter_weights=None if config.filter_weights is None else str(config.filter_weights),
                          refine_weights=None if config.refine_weights is None else str(config.refine_weights),
                          precision=network_precision(config))
    if not config.projection:
        neural.projection = neural.gate = None
    return MethodSpec("neural", neural)


def record(spec: MethodSpec, config: RunConfig, fingerprint: dict) -> dict:
    """The resolved settings of a run, as recorded with its output (work folder, container tag)."""
    from unflicker.methods import config_record

    return {
        "unflicker": __version__,
        "method": spec.name,
        "preset": config.preset,
        "kind": config.kind,
        spec.name: config_record(spec.config),
        "weights": fingerprint,
        "segments": dataclasses.asdict(config.segments),
        "threads": config.engine.threads,
        "output": {"strength": config.strength, "crf": config.crf, "codec": config.codec,
                   "bit_depth": config.bit_depth},
    }


def digest(data: dict) -> str:
    """A short, stable digest of a JSON-able record."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
