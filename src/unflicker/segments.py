"""Segments, the unit of all work: a range of frames of one shot, analysed and passed in one task.

A video is cut into shots (cuts.py), each shot into segments of at most `SegmentConfig.frames`
core frames; a segment's span adds `margin` frames of its shot on either side. Boundaries depend
only on the video and the settings, never on how many workers run them. `run_segment` is the one
pass loop: it sees nothing but the span's frames and the settings, runs the method's analysis
(for the neural method: low-resolution frames, flow, atlas fit) and its per-frame pass (filter,
refinement, projection) with the slow-look anchor, and returns the span's output frames. The same
function runs in-process, in a local process pool and as a Ray task (engine.py).

Consecutive spans of a shot overlap by 2 * margin frames around each core boundary; the job
(pipeline.py) cross-fades them linearly there, so the recurrent refinement and the anchor, which restart at a
span's first frame, have warmed up (and carry little weight) where their output is used.

Layouts: span frames (T, H, W, 3) uint8, uint16 or float32 in [0, 1]; results (T, H, W, 3) uint16
(1/65535 steps, finer than any output), the same bits whichever worker made them.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import threading
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unflicker.errors import InputError, OutputError
from unflicker.framestore import FrameFile, FrameStore
from unflicker.lanes import Behind, ahead, each


@dataclass(frozen=True)
class SegmentConfig:
    """How a video is cut into segments (part of what an output depends on)."""

    frames: int = 60
    """Longest core of a segment, in frames; a longer shot is split into equal parts."""
    margin: int = 10
    """Frames of the shot added on either side of a core: the overlap that is cross-faded, where
    the recurrent refinement and the anchor warm up."""

    def check(self) -> None:
        if self.margin < 0 or self.frames < max(2, 4 * self.margin):
            raise InputError(f"--segment-frames must be at least {max(2, 4 * self.margin)} (four times the "
                             f"{self.margin}-frame margin), got {self.frames}" if self.margin >= 0 else
                             f"the segments' margin must be 0 or more frames, got {self.margin}")


@dataclass(frozen=True)
class Segment:
    """One task's frames: `core` (the frames whose output it owns; cores partition the video) and
    `span` (the core with its margins inside the shot: what it reads and returns)."""

    index: int
    core: range
    span: range
    shot: int
    """Index of the shot the segment belongs to (segments never cross a cut)."""


def plan(shots: Sequence[range], config: SegmentConfig | None = None) -> list[Segment]:
    """Segments of a video cut into `shots` (consecutive ranges from frame 0)."""
    config = config or SegmentConfig()
    config.check()
    segments: list[Segment] = []
    for s, shot in enumerate(shots):
        parts = max(1, math.ceil(len(shot) / config.frames))
        edges = [shot.start + round(i * len(shot) / parts) for i in range(parts + 1)]
        for a, b in zip(edges[:-1], edges[1:]):
            span = range(max(shot.start, a - config.margin), min(shot.stop, b + config.margin))
            segments.append(Segment(len(segments), range(a, b), span, s))
    return segments


def blend_weight(segment: Segment, following: Segment | None, t: int, margin: int) -> float:
    """Weight of `following`'s output at frame t (0: all `segment`'s), a linear ramp across the
    2 * margin frames the two spans share around their core boundary."""
    if following is None or following.shot != segment.shot or t not in following.span or t not in segment.span:
        return 0.0
    boundary = following.core.start
    return min(1.0, max(0.0, (t - (boundary - margin) + 0.5) / (2 * margin)))


# --- the task -----------------------------------------------------------------------------------


@dataclass
class MethodSpec:
    """A method by registry name and its resolved config (a dataclass, picklable)."""

    name: str
    config: object


@dataclass
class SegmentTask:
    """Everything one segment's task depends on: its frames and the settings."""

    job: str
    """Key of the job (input and settings) the segment belongs to."""
    segment: Segment
    method: MethodSpec
    frames: np.ndarray | Path
    """The span's frames, (T, H, W, 3): an array (in-process, Ray's object store), or an .npy file
    every worker can read (memory-mapped, one frame at a time)."""
    output: Path | None = None
    """Where to write the result .npy (atomically); None returns it as an array."""
    threads: int = 1
    """Torch and OpenCV threads while the task runs (fixed, so the result never depends on load)."""
    lanes: int = 1
    """Threads at once (EngineConfig.lanes; set by the executor): 2 splits each atlas step in two
    parts on two threads and runs each frame's independent stages and its settling one frame ahead
    on a second thread. Same bits either way."""
    stages_dir: Path | None = None
    """With a method stopped early (stop_after): write each stage's core frames as PNG into
    stages_dir/<stage>/<name>."""
    names: tuple[str, ...] = ()
    """File names of the span's frames (for stages_dir)."""
    running_dir: Path | None = None
    """If set, `<running_dir>/<job>-<index>.pid` holds the worker's pid while the task runs."""


@dataclass
class SegmentResult:
    job: str
    index: int
    frames: np.ndarray | Path
    """(T, H, W, 3) uint16 span output, or the .npy file holding it."""
    seconds: float
    info: dict = field(default_factory=dict)
    """What the method reported about the segment (Method.report), e.g. the gate's weight."""


_METHOD_CACHE: dict[str, object] = {}
_PRELOADING: dict[str, Future] = {}
_IN_USE: set[int] = set()
"""ids of the cached methods segments are running with (`take_method`)."""
_CACHE_LOCK = threading.Lock()


def _method_key(spec: MethodSpec) -> str:
    return f"{spec.name}:{spec.config!r}"


def _build(spec: MethodSpec):
    from unflicker.methods import METHODS

    # In the tool's own processes (own_process) the build, which imports torch and loads the weights, runs without
    # Python's cyclic garbage collector: the imports' allocations set it off over and over (a worker's build
    # 1.5 -> 1.2 s, session 30); what they made lives as long as the process, so later collections pass it by.
    quiet = _OWN_PROCESS and gc.isenabled()
    if quiet:
        gc.disable()
    try:
        method = METHODS[spec.name](spec.config)
    finally:
        if quiet:
            gc.enable()
            gc.freeze()
    _METHOD_CACHE.clear()  # one method per worker at a time: weights are not kept for old specs
    _METHOD_CACHE[_method_key(spec)] = method
    return method


def preload_method(spec: MethodSpec) -> None:
    """Start building the method for a spec on a thread of its own (imports, weights), so that this
    process can decode and plan meanwhile; `build_method` waits for it. Its errors show there."""
    key = _method_key(spec)
    if key in _METHOD_CACHE or key in _PRELOADING:
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preload")
    _PRELOADING[key] = pool.submit(_build, spec)
    pool.shutdown(wait=False)  # the thread ends with the build


def build_method(spec: MethodSpec):
    """The method for a spec, built once per process (the neural method loads its weights then)."""
    key = _method_key(spec)
    with _CACHE_LOCK:  # another thread's call may be taking them too
        done = {k: _PRELOADING.pop(k) for k in list(_PRELOADING)}
    failed = {k: preload.exception() is not None for k, preload in done.items()}  # every preload ends first
    if key in done and not failed[key]:  # a failed preload is built again below, to raise here
        return done[key].result()
    if key not in _METHOD_CACHE:
        return _build(spec)
    return _METHOD_CACHE[key]


def take_method(spec: MethodSpec):
    """The method for a spec, for one segment alone until `release_method`: the cached one (`build_method`),
    or a fresh one where another segment of this process is running with that (the library called from two
    threads at once): a method keeps its segment's analysis between its calls."""
    method = build_method(spec)
    with _CACHE_LOCK:
        if id(method) not in _IN_USE:
            _IN_USE.add(id(method))
            return method
    from unflicker.methods import METHODS

    return METHODS[spec.name](spec.config)


def release_method(method) -> None:
    """The segment that took `method` is done with it."""
    with _CACHE_LOCK:
        _IN_USE.discard(id(method))


_MALLOC_KEPT = False
_OWN_PROCESS = False


def own_process() -> None:
    """This process is the tool's own (the CLI's run, batch and demo, pool workers, the run's own Ray's tasks, the web
    page's job process): freed frames stay in it (keep_freed_memory) and a method is built without the cyclic garbage
    collector (`_build`). The library inside another program leaves that program's allocator and collector alone."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Large frames freed by one step stay in the process for the next (glibc; elsewhere nothing).

    By default glibc gives a thread's heap (64 MB at most) back to the kernel once it is free, and
    trims the main heap's free top beyond twice its mmap threshold; the next frame then takes
    freshly mapped, zeroed pages again (at 1080p a float frame is 25 MB). Here: one heap for all
    threads, allocations up to 32 MB (glibc's limit) from it, and its top kept up to 1 GB. The
    process's memory stays near the most it held at once (plus what fragments); set once per
    process, for every later allocation. So only processes of this tool's own call it (the CLI's run, batch and
    demo, pool and Ray workers, the web page's job process): the library, inside another program, leaves that
    program's allocator as it is."""
    global _MALLOC_KEPT
    if _MALLOC_KEPT:
        return
    _MALLOC_KEPT = True
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): its allocator's defaults
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # glibc's malloc.h
    mallopt(m_arena_max, 1)
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)


_THREADS_LOCK = threading.Lock()
_threads_held = 0
"""Segments of this process inside `fixed_threads` (the library called from threads at once)."""
_threads_restore: Callable[[], None] | None = None


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Torch, OpenCV and NumPy's BLAS use exactly n threads in the body (restored after).

    The BLAS matters too: OpenBLAS starts a thread per core for the projection's small matrix
    products, and its threads spin while they wait, so two one-thread workers on two cores ran
    four busy threads (the projection alone took 1.5x the time and 1.7x the CPU on a loaded machine).
    The counts are the process's: where segments run on several threads at once (the library called
    from threads of a program), the last one out restores the counts the first one in found."""
    global _threads_held, _threads_restore
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    with _THREADS_LOCK:
        if _threads_held == 0:
            old_cv, old_torch = cv2.getNumThreads(), torch.get_num_threads()
            blas = threadpool_limits(limits=n, user_api="blas")

            def restore() -> None:
                cv2.setNumThreads(old_cv)
                torch.set_num_threads(old_torch)
                blas.restore_original_limits()

            _threads_restore = restore
        else:
            threadpool_limits(limits=n, user_api="blas")
        _threads_held += 1
        cv2.setNumThreads(n)
        torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_held -= 1
            if _threads_held == 0:
                _threads_restore()
                _threads_restore = None


def _open_frames(frames: np.ndarray | Path):
    """The span's frames: the array itself, or a FrameFile read one frame at a time."""
    if isinstance(frames, (str, Path)):
        return FrameFile.open(frames)
    return frames


def _store(out, i: int, frame: np.ndarray) -> None:
    """Frame i of a segment's output, at 16 bits: converted straight into the array, or written to
    the segment's file (also on a `Behind` thread while the pass goes on)."""
    from unflicker.io import from_float

    if isinstance(out, np.ndarray):
        from_float(frame, 16, out=out[i])
    else:
        out[i] = from_float(frame, 16)


def _float(image: np.ndarray) -> np.ndarray:
    from unflicker.io import to_float

    return to_float(np.asarray(image))


class SegmentProgress:
    """How much of a segment's work is done, as a fraction in [0, 1] for a progress bar: the method's
    analysis (its `analysis_share` of the work, moved by the analysis's own fraction), then the pass
    and the settling sweep, frame by frame (the pass three quarters of the rest). `report(fraction)`
    is called with a larger fraction than the last, at most every `INTERVAL_S` seconds of `clock` (and
    at the end), from any of the segment's threads. It sees the work, never the frames: the output does
    not depend on it."""

    PASS_SHARE = 0.75
    """The pass's share of the work after the analysis (the settling sweep has the rest)."""
    INTERVAL_S = 0.25
    """Least time between two reports (a bar needs no more; a worker sends each through a pipe)."""

    def __init__(self, report: Callable[[float], None] | None, analysis_share: float, frames: int,
                 clock: Callable[[], float] = time.monotonic):
        self._report, self._clock = report, clock
        self._analysis = min(1.0, max(0.0, analysis_share))
        self._frames = max(1, frames)
        self._settled = 0
        self._sweeps = 2
        self._lock = threading.Lock()
        self._last, self._last_time = 0.0, -math.inf

    def analysis(self, fraction: float) -> None:
        """The analysis is `fraction` done."""
        self._set(self._analysis * fraction)

    def passed(self, frames: int) -> None:
        """The pass has processed `frames` frames."""
        self._set(self._analysis + (1 - self._analysis) * self.PASS_SHARE * frames / self._frames)

    def sweeps(self, count: int) -> None:
        """The sweeps after the pass take `count` steps a frame (two: settled, then anchored; four with the
        texture carry: carried, then blended); said before the first step."""
        self._sweeps = max(1, count)

    def swept(self) -> None:
        """One more step of the sweeps after the pass."""
        with self._lock:
            self._settled += 1
            steps = self._settled
        rest = 1 - self._analysis
        self._set(self._analysis + rest * (self.PASS_SHARE + (1 - self.PASS_SHARE) * steps
                                           / (self._sweeps * self._frames)))

    def _set(self, fraction: float) -> None:
        if self._report is None:
            return
        with self._lock:
            now = self._clock()
            if fraction <= self._last or (fraction < 1.0 and now - self._last_time < self.INTERVAL_S):
                return
            self._last, self._last_time = fraction, now
            self._report(min(1.0, fraction))


def _carried(carry, frames, out, lanes: int, done: SegmentProgress) -> dict:
    """The sweep after the anchor, where asked (`Method.carry_config`): each frame's output with its finest
    texture carried from the one before along the motion, in order (a recursion) into a store of its own; then
    every frame takes the share the segment's measurement gives (unflicker.carry). Returns the report's part."""
    from unflicker.io import from_float

    n = len(out)

    def moving(i):  # frame i's flow from the inputs and its anchored output: one lane ahead
        motion = carry.motion(_float(frames[i - 1]), _float(frames[i])) if i else None
        return motion, _float(out[i])

    carried = FrameStore(out.shape[1:], np.uint16)  # on disk, as the pass's own stores
    try:
        with closing(ahead(moving, n, lanes)) as carrying:
            for i, (motion, output) in carrying:
                carried.append(from_float(carry.apply(output, motion), 16))
                done.swept()
        amount = carry.amount()

        def blended(i):
            if amount > 0.0:
                _store(out, i, carry.blend(_float(out[i]), _float(carried[i]), amount))
            done.swept()

        each(blended, ((i,) for i in range(n)), min(lanes, 2))
    finally:
        carried.close()
    efficiency = carry.efficiency
    return {"carry": round(amount, 4), "carry_efficiency": None if efficiency is None else round(efficiency, 4)}


def file_error(task: SegmentTask, exc: OSError) -> OutputError:
    """A segment's failure to read or write its files (the work folder removed or full) as the task's one-line
    error, not a crash of its worker, which would be retried; other system errors are raised again. A full disk
    says where and what is free there (resume.no_space)."""
    from unflicker.resume import FULL, no_space

    if exc.errno in FULL:
        return OutputError(no_space(exc.filename or task.output or tempfile.gettempdir()))
    if exc.filename is None:
        raise exc  # not about a file (ENOMEM of a mapping...): a crash, which a retry may get past
    return OutputError(f"segment {task.segment.index}: {exc.strerror or exc} ({exc.filename})")


def run_segment(task: SegmentTask, progress: Callable[[float], None] | None = None) -> SegmentResult:
    """The one pass loop: analyse the span, process it frame by frame, settle, anchor, quantise.
    `progress(fraction)`: how much of the segment's work is done, as it goes (`SegmentProgress`)."""
    from unflicker.anchor import SlowAppearanceAnchor
    from unflicker.carry import DetailCarry
    from unflicker.io import write_png

    start = time.perf_counter()
    marker = None
    if task.running_dir is not None:
        marker = Path(task.running_dir) / f"{task.job}-{task.segment.index:05d}.pid"
        marker.write_text(str(os.getpid()))
    out: np.ndarray | FrameFile | None = None
    behind: Behind | None = None
    frames = method = None
    temp = None if task.output is None else \
        Path(task.output).with_name(f".{Path(task.output).name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        frames = _open_frames(task.frames)
        n = len(task.segment.span)
        if frames.shape[0] != n or frames.ndim != 4 or frames.shape[3] != 3:
            raise InputError(f"segment {task.segment.index}: expected {n} frames (T, H, W, 3), got {frames.shape}")
        # Built (or a preload awaited) before fixed_threads: threadpoolctl walks the loaded libraries
        # under the dynamic loader's lock, which a preload thread's import may be waiting for.
        method = take_method(task.method)
        done = SegmentProgress(progress, method.analysis_share, n)
        with fixed_threads(task.threads):
            # Each frame read and converted one ahead on the lane while the method takes the last one in.
            with closing(ahead(lambda i: _float(frames[i]), n, task.lanes)) as floats:
                method.analyze((image for _, image in floats), task.lanes, done.analysis)
            core = range(task.segment.core.start - task.segment.span.start,
                         task.segment.core.stop - task.segment.span.start)

            def prepared(i):  # what frame i needs from no other frame: one lane ahead of the pass
                image = _float(frames[i])
                return image, method.prepare(i, image)

            # closing(): the lane has stopped before the frames close, also when a frame fails
            with closing(ahead(prepared, n, task.lanes)) as passing:
                for i, (image, ready) in passing:  # the pass: every frame, in order
                    stages = method.process(i, image, ready)
                    if task.stages_dir is not None and i in core:
                        for stage, frame in stages.items():
                            write_png(Path(task.stages_dir) / stage / task.names[i], frame)
                    output = stages[method.stages[-1]]
                    if out is None:  # on disk when the result goes to a file: memory does not grow with size
                        shape = (n, *output.shape)  # a run stopped early returns its last stage (atlas: smaller)
                        out = np.empty(shape, np.uint16) if temp is None else FrameFile.create(temp, shape, np.uint16)
                        behind = Behind(task.lanes, name="store")
                    behind.submit(_store, out, i, output)  # held there until settled and anchored
                    done.passed(i + 1)
            if behind is not None:
                behind.close()

            def settled(i):  # second sweep: what the method learned from the whole segment
                image, output = _float(frames[i]), _float(out[i])
                final = method.settle(i, image, output)
                if final is not output:
                    _store(out, i, final)
                done.swept()
                return image, final

            def anchored(i, slow):
                if slow is not None:
                    _store(out, i, anchor.apply(_float(out[i]), slow))
                done.swept()

            anchor = SlowAppearanceAnchor(method.anchor_config(n), [0])
            carry = DetailCarry(method.carry_config(n))
            done.sweeps(4 if carry.config.on else 2)
            # Settling needs no other frame's: with two lanes, two frames settle at once while this
            # thread measures them for the anchor (it was the sweep's slower side at 1080p); never
            # more than two (memory). The anchor's corrections come a window or a shot late (fades:
            # all at the end), each frame's on its own: two frames at once again.
            with closing(ahead(settled, n, task.lanes, depth=min(task.lanes, 2))) as settling:
                each(anchored, anchor.corrections((i, image, final) for i, (image, final) in settling),
                      min(task.lanes, 2))
            info = method.report()
            if carry.config.on:
                info = {**info, **_carried(carry, frames, out, task.lanes, done)}
        result: np.ndarray | Path = out
        if temp is not None:
            out.close()
            os.replace(temp, task.output)
            result = Path(task.output)
        return SegmentResult(task.job, task.segment.index, result, time.perf_counter() - start, info)
    finally:
        if behind is not None:
            behind.abort()  # after a failure: what is being written ends before the file closes
        for handle in (out, frames):
            if isinstance(handle, FrameFile):
                handle.close()
        if temp is not None:
            temp.unlink(missing_ok=True)
        if marker is not None:
            marker.unlink(missing_ok=True)
        if method is not None:
            release_method(method)
