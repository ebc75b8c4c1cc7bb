"""The data path from a flickering input to a consistent output: probe, analyse, process, write.

Every method streams: a first pass lets it analyse the (decoded, downscaled by the method) video,
a second pass processes full-resolution frames one at a time and hands them to the writer, with
decoding and a method's order-free per-frame work (`prepare`) done by a worker thread a few
frames ahead.
Each pass, and a method's fit between them, shows a progress bar with an ETA on stderr.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from unflicker import io
from unflicker.classical import ClassicalConfig, ClassicalDeflicker
from unflicker.errors import InputError, OutputError
from unflicker.metrics import flicker_index

if TYPE_CHECKING:
    from unflicker.atlas import AtlasConfig

Progress = Callable[[int, int], None]
"""progress(done, total): how far a method's fit has got, in frames."""


class Method(Protocol):
    """A deflicker method: `analyze` sees every frame once, then `process` maps frame t.

    Frames are (H, W, 3) float32 RGB in [0, 1]. `process` returns the output frame, or a dict
    of stage name -> frame whose last entry is the output (earlier ones are kept by --keep-work).
    A method may also have `prepare(index, frame)`, the part of its per-frame work that depends on
    no other frame: the pipeline then runs it ahead in a worker thread and hands its result to
    `process(index, frame, prepared)`, inside the method's `threaded_pass()` context if it has one.
    """

    def analyze(self, frames: Iterable[np.ndarray]) -> None: ...

    def process(self, index: int, frame: np.ndarray) -> np.ndarray | dict[str, np.ndarray]: ...


PREPARE_AHEAD = 2
"""Frames decoded (and, for a method with `prepare(index, frame)`, prepared: the neural method's
atlas frame and filter) in a worker thread ahead of the one being processed. The recurrent and
single-threaded steps after them (refinement, projection, anchor, encoding) leave a core idle
that the next frame's filter uses."""


def _ahead(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a worker thread, at most `depth` items ahead of the consumer.

    An exception in the worker is raised in the consumer, at the item where it happened; closing
    the consumer (or an error there) stops the worker before this returns.
    """
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((None, item)):
                    return
            put((end, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put((exc, None))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="unflicker-ahead", daemon=True)
    worker.start()
    try:
        while True:
            error, item = slots.get()
            if error is end:
                return
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()
        worker.join()


def _prepared(prepare: Callable | None, frames: Iterable[tuple[int, object, np.ndarray]]) -> Iterator[tuple]:
    """(index, tag, image, prepare(index, image) or None) for each (index, tag, image), computed
    ahead in a worker thread."""
    return _ahead(((t, tag, image, prepare(t, image) if prepare else None) for t, tag, image in frames),
                  PREPARE_AHEAD)


def _process(method: Method, index: int, image: np.ndarray, prepared) -> np.ndarray | dict[str, np.ndarray]:
    return method.process(index, image) if prepared is None else method.process(index, image, prepared)


def _threaded_pass(method: Method, prepare: Callable | None):
    """The method's own settings for a pass whose prepare() runs in a worker thread (see
    NeuralDeflicker.threaded_pass), or nothing to change."""
    threaded = getattr(method, "threaded_pass", None)
    return threaded() if threaded is not None and prepare is not None else nullcontext()


# --preset of the neural method -> AtlasConfig fields; --atlas and --atlas-steps override them.
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"backend": "grid", "resolution": 160, "steps": 100},
    "balanced": {},  # AtlasConfig's defaults: grid backend, 256 px, 250 steps
    "paper": {"backend": "mlp"},  # the MLP backend's defaults are the paper's (10000 steps, lr 1e-4)
}
NEURAL_MIN_SIDE = 16
"""Smallest frame side, at the input's and at the atlas resolution, the neural method accepts:
OpenCV's DIS optical flow rejects smaller frames, and crashes on some wide ones under 16 rows."""


def atlas_config(config: RunConfig) -> AtlasConfig:
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
        if not fits and (config.method is not None or config.neural_options_set):
            raise InputError(f"{width}x{height} frames are too small or too thin for the neural method (its "
                             f"optical flow needs {NEURAL_MIN_SIDE} pixels a side at the atlas resolution, "
                             f"{low_w}x{low_h} here): use the classical method")
        if not fits:
            warnings.warn(f"{width}x{height} frames are too small for the neural method; using the classical one",
                          stacklevel=3)
            return dataclasses.replace(config, method="classical", preset=None)
    return config if config.method else dataclasses.replace(config, method="neural")


def _neural(config: RunConfig, progress: Progress | None) -> Method:
    from unflicker.neural import NeuralConfig, NeuralDeflicker

    neural = NeuralConfig(atlas=atlas_config(config), stop_after=config.stop_after)
    if not config.projection:
        neural.projection = None
    return NeuralDeflicker(neural, progress=progress)


METHODS: dict[str, Callable[[RunConfig, Progress | None], Method]] = {
    "classical": lambda config, progress: ClassicalDeflicker(ClassicalConfig()),
    "neural": _neural,
}


@dataclass
class RunConfig:
    """Options of one `unflicker run`."""

    method: str | None = None
    """Name in METHODS; None: 'neural', or 'classical' (with a warning) for frames too small for it."""
    preset: str | None = None
    """neural: name in PRESETS, 'fast', 'balanced' or 'paper' (None: balanced)."""
    atlas: str | None = None
    """neural: atlas backend, 'grid' (fast) or 'mlp' (the paper's, for GPUs); None: the preset's."""
    atlas_steps: int | None = None
    """neural: atlas optimisation steps (None: the preset's, else the backend's default)."""
    stop_after: str | None = None
    """neural: last stage to run ('atlas', 'filter' or 'refine'); the output is then not written,
    only the stages kept in keep_work."""
    projection: bool = True
    """neural: project the network's correction onto a smooth flicker model (unflicker.projection),
    which keeps every pixel's detail from the input; False takes the network's output as it is."""
    keep_slow: float | None = None
    """neural: Gaussian sigma, in frames, of the fine-scale changes of look kept from the input (see
    unflicker.anchor); faster changes count as flicker. inf turns the anchor off: every frame gets
    the atlas's look, as in the paper. None: AnchorConfig's defaults (chosen on the benchmark clips,
    see README, "Keeping the look")."""
    strength: float = 1.0
    """How much of the correction to apply, 0..1: output = input + strength * (deflickered - input).
    Below 1 keeps more of each frame's own look (e.g. a per-frame colorization) at the cost of
    some flicker."""
    crf: int = io.DEFAULT_CRF
    """H.264 quality for .mp4/.mov outputs, 0..51 (lower is better; 18 and below look lossless)."""
    codec: str | None = None
    """Output video codec: 'h264', 'hevc', 'prores' or 'ffv1'; None chooses by extension and source (io.encoders)."""
    bit_depth: int | None = None
    """Output bits per sample (8, 10, 12, 16); None keeps the source's as far as the codec holds it."""
    overwrite: bool = False
    """Replace an existing output (and existing compare / plot files)."""
    keep_work: Path | None = None
    """Folder that keeps each stage's frames as PNG (DIR/<stage>/), same names as the input's.
    A rerun with the same input and atlas settings reuses DIR/atlas/ instead of fitting again, and
    the filter/refine frames of a finished earlier pass with the same networks."""
    compare: Path | None = None
    """Also write a side-by-side (input | output) video (or PNG folder) here."""
    plot: Path | None = None
    """Also write a PNG plot of mean brightness per channel over time, input vs output, here."""
    progress: bool = True
    """Show progress bars on stderr."""

    @property
    def neural_options_set(self) -> bool:
        """Whether any option that only the neural method takes is given."""
        return bool(self.stop_after or self.atlas or self.atlas_steps or self.keep_slow is not None
                    or not self.projection)

    def check(self) -> None:
        """Raise InputError / OutputError on options that cannot work together."""
        if self.method is not None and self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
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
            raise InputError("--stop-after, --atlas, --atlas-steps, --keep-slow and --no-projection apply to "
                             "--method neural only")
        if self.stop_after and self.keep_work is None:
            raise OutputError("--stop-after needs --keep-work DIR: the stage frames are the only output")
        if self.stop_after and (self.compare or self.plot):
            raise OutputError("--compare and --plot need the output: drop --stop-after")
        if self.plot is not None and Path(self.plot).suffix.lower() != ".png":
            raise OutputError(f"--plot writes a PNG: name it *.png, not {Path(self.plot).name}")


@dataclass
class RunSummary:
    output: Path
    frames: int
    seconds: float
    flicker_before: float
    flicker_after: float
    resumed: tuple[str, ...] = ()
    """Stages read back from keep_work instead of computed."""
    extras: tuple[Path, ...] = ()
    """Compare video and plot written beside the output."""

    def line(self) -> str:
        reused = f", reused {' and '.join(self.resumed)} from the work folder" if self.resumed else ""
        return (f"wrote {self.output}: {self.frames} frames in {self.seconds:.1f} s "
                f"({self.frames / max(self.seconds, 1e-9):.1f} fps), flicker index "
                f"{self.flicker_before * 1e3:.2f} -> {self.flicker_after * 1e3:.2f} (x1e-3){reused}")


class _Bars:
    """tqdm bars on stderr: one per pass, and one for a method's fit fed by `fit(done, total)`."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._fit_bar: tqdm | None = None
        self._fit_start: float | None = None

    def frames(self, frames: Iterable, desc: str, total: int) -> Iterator:
        with tqdm(total=total, desc=desc, unit="frame", disable=not self.enabled, leave=False,
                  dynamic_ncols=True) as bar:
            for frame in frames:
                yield frame
                bar.update()
        # The pass has read every frame: whatever the method does before returning is its fit.
        self._fit_start = time.time()

    def fit(self, done: int, total: int) -> None:
        if self._fit_bar is None:
            # The first report comes after a whole fitting window, so the clock starts when the
            # frames were all read; smoothing=0 makes the ETA the average rate since then.
            self._fit_bar = tqdm(total=total, desc="atlas", unit="frame", disable=not self.enabled, leave=False,
                                 dynamic_ncols=True, smoothing=0)
            if self._fit_start is not None:
                self._fit_bar.start_t = self._fit_bar.last_print_t = self._fit_start
        self._fit_bar.update(done - self._fit_bar.n)
        self._fit_bar.refresh()  # reports come seldom (one per window): show each at once

    def close(self) -> None:
        if self._fit_bar is not None:
            self._fit_bar.close()
            self._fit_bar = None

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _channel_means(frame: np.ndarray) -> np.ndarray:
    """(3,) per-channel mean: the global flicker index and the plot need nothing more per frame."""
    # OpenCV sums in float64 as numpy's mean(dtype=float64) does, but 20 times faster (0.4 against
    # 9 ms at 854x480): numpy's float64 reduction over a strided axis was 3 % of a run.
    return np.array(cv2.mean(np.ascontiguousarray(frame))[:3])


def _flicker(means: list[np.ndarray]) -> float:
    return flicker_index([m.reshape(1, 1, 3) for m in means])["luma"]


def _as_stages(results: np.ndarray | dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """A method's process() result as stage name -> frame (the last entry is the output)."""
    return results if isinstance(results, dict) else {name: results}


def _blend(frame: np.ndarray, out: np.ndarray, strength: float) -> np.ndarray:
    """The output frame: `out` blended with the input by strength, clipped."""
    if strength < 1.0:
        out = frame + np.float32(strength) * (out - frame)
    return np.clip(out, 0.0, 1.0)


def _anchor(method: Method, config: RunConfig, n_frames: int):
    """The slow-look anchor after the method (a pass-through for methods without an atlas, for
    stop_after runs and for --keep-slow off)."""
    from unflicker.anchor import AnchorConfig, SlowAppearanceAnchor

    atlas = getattr(method, "atlas", None)
    if atlas is None or n_frames < 2 or config.stop_after is not None or config.keep_slow == math.inf:
        return SlowAppearanceAnchor(AnchorConfig.off())
    if config.keep_slow is None:
        return SlowAppearanceAnchor(AnchorConfig(), [shot.start for shot in atlas.shots])
    # --keep-slow sets the fine part's window; the coarse and frame-wide windows are never shorter.
    defaults = AnchorConfig()
    anchor = AnchorConfig(sigma=config.keep_slow, coarse_sigma=max(config.keep_slow, defaults.coarse_sigma),
                          global_sigma=max(config.keep_slow, defaults.global_sigma))
    return SlowAppearanceAnchor(anchor, [shot.start for shot in atlas.shots])


def _check_input(info: io.VideoInfo, output: Path | None, config: RunConfig) -> None:
    """Refuse inputs the method cannot handle and say what will be lost, before any work starts."""
    if config.preset is not None and config.method != "neural":
        warnings.warn("--preset only affects --method neural; ignored", stacklevel=3)
    if info.frame_count == 1:
        warnings.warn("the input has a single frame: there is no flicker to remove, copying it through",
                      stacklevel=3)


def _check_extras(input_path: str | Path, output: Path | None, config: RunConfig) -> None:
    for extra in (config.compare, config.plot):
        if extra is None:
            continue
        if output is not None and Path(extra).resolve() == output.resolve():
            raise OutputError(f"{extra} is also the output: choose another path")
        io.check_output(input_path, extra, config.overwrite)
    if config.compare is not None and config.plot is not None and \
            Path(config.compare).resolve() == Path(config.plot).resolve():
        raise OutputError("--compare and --plot name the same file")


def deflicker_file(input_path: str | Path, output_path: str | Path | None,
                   config: RunConfig | None = None) -> RunSummary:
    """Deflicker a video file or frame folder into `output_path` (video by extension, else a folder).

    Everything that can be checked (options, input, output, compare and plot paths) is checked
    before any work starts. Outputs appear only when complete; an error leaves none behind.
    """
    config = config or RunConfig()
    config.check()
    start = time.perf_counter()
    info = io.probe(input_path)
    config = resolve_method(config, info.height, info.width, info.frame_count)
    write_output = config.stop_after is None
    # With info, check_output also decides the output's codec and depth and warns about what it cannot carry.
    output = io.check_output(input_path, output_path, config.overwrite, info=info, codec=config.codec,
                             bit_depth=config.bit_depth) if write_output else None
    _check_extras(input_path, output, config)
    _check_input(info, output, config)
    single = info.frame_count == 1
    before: list[np.ndarray] = []
    after: list[np.ndarray] = []
    resumed: tuple[str, ...] = ()
    with ExitStack() as stack:
        bars = stack.enter_context(_Bars(config.progress))
        method = METHODS[config.method](config, bars.fit)
        work = _work_folder(method, info, config)
        # What the per-frame pass depends on beyond A_t: computed once, to look up and to record.
        fingerprint = method.pass_fingerprint() if work is not None else None
        reuse = None  # the per-frame stage read back from keep_work instead of computed
        if not single:
            if work is not None and _restore_atlas(method, work):
                resumed = ("atlas",)
                reuse = _finished_stage(method, work, fingerprint)
                resumed += (reuse,) if reuse else ()
            else:
                frames = (io.to_float(frame.image) for frame in io.read_frames(input_path, info))
                method.analyze(bars.frames(frames, "decode+analyse", info.frame_count))
                bars.close()
                if work is not None:
                    work.save(method.atlas.rendered, method.atlas.shots)
        writer = stack.enter_context(io.VideoWriter(output, info, crf=config.crf, overwrite=config.overwrite,
                                                    codec=config.codec, bit_depth=config.bit_depth)) \
            if write_output else None
        if work is not None and reuse is None:
            work.forget_pass()  # the stage folders are about to be rewritten
        stages = _StageWriters(config.keep_work, info, stack,
                               skip={"atlas", *method.stages} if reuse else {"atlas"} if work is not None else set())
        kept = io.read_frames(config.keep_work / reuse) if reuse else None

        prepare = None if single or kept is not None else getattr(method, "prepare", None)

        def processed():
            decoded = ((frame.index, frame, io.to_float(frame.image)) for frame in io.read_frames(input_path, info))
            for t, frame, image, prepared in bars.frames(_prepared(prepare, decoded), "process", info.frame_count):
                if single:
                    results = {config.method: image}
                elif kept is not None:
                    results = {reuse: io.to_float(next(kept).image)}
                else:
                    results = _as_stages(_process(method, t, image, prepared), config.method)
                stages.write(results, frame.name)
                yield frame, image, list(results.values())[-1]

        stack.enter_context(_threaded_pass(method, prepare))
        # The anchor holds frames back for its look-ahead: only the decoded frame travels with
        # each (a quarter of its float copy, which is made again below). Closed on the way out, so
        # an error here stops the worker thread at once, not when the traceback is freed.
        anchored = stack.enter_context(closing(_anchor(method, config, info.frame_count).stream(processed())))
        for frame, out in anchored:
            image = io.to_float(frame.image)
            final = _blend(image, out, config.strength)
            before.append(_channel_means(image))
            after.append(_channel_means(final))
            if writer is not None:
                writer.write(final, frame.pts, frame.name, frame.alpha)
    if work is not None and reuse is None:
        work.record_pass(method.stages, fingerprint)  # the stage folders are in place now
    summary = RunSummary(output if write_output else config.keep_work, len(before), 0.0, _flicker(before),
                         _flicker(after), resumed)
    extras = []
    if config.compare is not None:
        extras.append(_write_compare(input_path, output, config))
    if config.plot is not None:
        from unflicker.visualize import write_brightness_plot

        title = (f"mean brightness per channel: {Path(input_path).name} -> {output.name}, flicker index "
                 f"{summary.flicker_before * 1e3:.2f} -> {summary.flicker_after * 1e3:.2f} (x1e-3)")
        extras.append(write_brightness_plot(np.array(before), np.array(after), config.plot, title, config.overwrite))
    return dataclasses.replace(summary, seconds=time.perf_counter() - start, extras=tuple(extras))


def _write_compare(input_path: str | Path, output: Path, config: RunConfig) -> Path:
    from unflicker.visualize import write_side_by_side

    return write_side_by_side(input_path, output, config.compare, overwrite=config.overwrite,
                              progress=config.progress)


def _work_folder(method: Method, info: io.VideoInfo, config: RunConfig):
    """The resumable stages of keep_work, for methods that fit an atlas (else None)."""
    if config.keep_work is None or not hasattr(method, "atlas") or info.frame_count < 2:
        return None
    from unflicker.resume import WorkFolder

    return WorkFolder(config.keep_work, info, dataclasses.asdict(method.config.atlas))


def _restore_atlas(method: Method, work) -> bool:
    loaded = work.load()
    if loaded is None:
        return False
    from unflicker.atlas import VideoAtlas

    # Exactly what the method's analyze() leaves behind: the rendered A_t and the shots.
    method.atlas = VideoAtlas(*loaded)
    return True


def _finished_stage(method: Method, work, fingerprint: dict) -> str | None:
    """The last per-frame stage a finished earlier pass left in keep_work for this very run, else None."""
    if len(method.stages) < 2:
        return None  # only the atlas: nothing per frame to reuse
    done = work.finished_pass(fingerprint)
    return method.stages[-1] if done == method.stages else None


def deflicker_frames(frames: Sequence[np.ndarray], config: RunConfig | None = None) -> Iterator[np.ndarray]:
    """Deflicker an in-memory clip: yields each output frame, (H, W, 3) float32 in [0, 1], in order.

    frames: a re-iterable sequence (list, (T, H, W, 3) array, or any object with len and
    iteration) of (H, W, 3) float32 RGB frames in [0, 1]; it is read twice (analyse, process).
    Only options that do not write files apply (method, preset, atlas, atlas_steps, progress).
    """
    config = config or RunConfig()
    config.check()
    n = len(frames)
    if n == 0:
        raise InputError("no frames to deflicker")
    first = np.asarray(next(iter(frames)))
    if first.ndim != 3 or first.shape[2] != 3:
        raise InputError(f"expected frames of shape (H, W, 3), got {first.shape}")
    config = resolve_method(config, first.shape[0], first.shape[1], n)
    if n == 1:
        yield np.clip(first, 0.0, 1.0).astype(np.float32)
        return
    with _Bars(config.progress) as bars:
        method = METHODS[config.method](config, bars.fit)
        method.analyze(bars.frames(frames, "analyse", n))
        bars.close()

        def checked():
            for t, frame in enumerate(frames):
                if np.shape(frame) != first.shape:
                    raise InputError(f"frame {t} has shape {np.shape(frame)}, frame 0 has {first.shape}")
                yield t, None, io.to_float(frame)

        prepare = getattr(method, "prepare", None)

        def processed():
            for t, _, image, prepared in bars.frames(_prepared(prepare, checked()), "process", n):
                yield image, image, list(_as_stages(_process(method, t, image, prepared), config.method).values())[-1]

        with _threaded_pass(method, prepare), closing(_anchor(method, config, n).stream(processed())) as anchored:
            for image, out in anchored:
                yield _blend(image, out, config.strength)


class _StageWriters:
    """One PNG-folder writer per stage under keep_work, opened at the first frame of each stage."""

    def __init__(self, keep_work: Path | None, source: io.VideoInfo, stack: ExitStack, skip: set[str]):
        self.keep_work, self.source, self.stack, self.skip = keep_work, source, stack, skip
        self.writers: dict[str, io.VideoWriter] = {}
        if keep_work is not None:
            keep_work.mkdir(parents=True, exist_ok=True)

    def write(self, frames: dict[str, np.ndarray], name: str) -> None:
        if self.keep_work is None:
            return
        for stage, image in frames.items():
            if stage in self.skip:
                continue  # written whole, right after the fit, so that a rerun can resume from it
            if stage not in self.writers:
                # Stage frames may be smaller than the source (the atlas resolution).
                info = dataclasses.replace(self.source, height=image.shape[0], width=image.shape[1], has_alpha=False)
                self.writers[stage] = self.stack.enter_context(
                    io.VideoWriter(self.keep_work / stage, info, overwrite=True))
            self.writers[stage].write(np.clip(image, 0.0, 1.0), None, name)
