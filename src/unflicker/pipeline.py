"""The data path of one video, as a job on an engine: probe, plan segments, spill, stitch, write.

`Job.start` probes the input, checks every option and path, decodes once for flicker-invariant
thumbnails (cut detection) and plans the segments (segments.plan). `next_task` decodes on, spills
the next segment's frames into the work folder and hands its task to the engine; `deliver` takes
a finished segment back; `advance` decodes a third time, in step with the finished segments, and
cross-fades, blends (--strength) and writes every frame it can, in order. Nothing holds more than
a few frames in memory; the segments' results persist in the work folder (resume.py).

`deflicker_file` (CLI `run`) and `deflicker_frames` (the array API) are both one job on
`engine.run_jobs`; `batch.py` runs many.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from unflicker import bars, cuts, io
from unflicker.config import (
    PRESETS,
    RunConfig,
    digest,
    method_spec,
    mlp_atlas,
    mlp_atlas_note,
    record,
    resolve_method,
)
from unflicker.errors import InputError, OutputError, UnflickerError, warn
from unflicker.framestore import FrameFile
from unflicker.kinds import PHYSICAL_KINDS, unmistakable
from unflicker.lanes import Behind
from unflicker.methods import METHODS
from unflicker.metrics import flicker_index
from unflicker.resume import JobFolder, TemporaryWork, folder_bytes, input_fingerprint, size_text, work_errors
from unflicker.segments import Segment, SegmentResult, SegmentTask, plan

__all__ = ["PRESETS", "Job", "RunConfig", "RunSummary", "deflicker_file", "deflicker_frames"]


@dataclass
class RunSummary:
    """What a run on a file did (`unflicker.deflicker` with a path, `deflicker_file`); `line()` says it in words."""

    output: Path | None
    """The output written, as given (a video file or a folder of frames); with stop_after, the keep_work folder."""
    frames: int
    """Frames written (with stop_after: the input's frame count)."""
    seconds: float
    """Wall time of the run, from its checks to the output complete (compare and plot included)."""
    flicker_before: float
    """Flicker index of the input (`metrics.flicker_index`, luma): the mean frame-to-frame jump of the global
    brightness left once its slow trend is taken out, in [0, 1] units (0.01 = 1 % of full scale); 0.0 with stop_after
    (nothing is measured) and for one frame."""
    flicker_after: float
    """The flicker index of the output frames as handed to the encoder (see `lossy`)."""
    segments: int = 0
    """Segments the video was cut into."""
    reused: int = 0
    """Segments read back from the work folder instead of computed."""
    extras: tuple[Path, ...] = ()
    """Compare video and plot written beside the output."""
    config: dict | None = None
    """The resolved settings (as recorded in the work folder and the output's comment tag)."""
    segment_info: tuple[dict, ...] = ()
    """What the method reported about each segment, in order ({} where unknown)."""
    work: Path | None = None
    """The job's folder in --keep-work DIR, kept after a run that wrote its output (its segments: a rerun with
    other output options reuses them); None without --keep-work."""
    work_bytes: int = 0
    """What `work` holds, in bytes."""

    @property
    def kind(self) -> str | None:
        """What flickered, as the neural method treated it: the --kind given, or for auto 'processed'
        (every flickering segment took most of the networks' fine correction), 'mixed', 'none' (no
        segment showed flicker: the video was left as it is), or where every flickering segment
        took the smooth model's part: the physical kind most of them look like ('film', 'timelapse'
        or 'mains', unflicker.kinds; 'physical' where the segments did not say)."""
        kind = (self.config or {}).get("kind")
        gated = [info for info in self.segment_info if "fine_weight" in info]
        if not gated:  # no gate ran (classical, --no-projection, --stop-after): only an explicit kind
            return None if kind == "auto" else kind
        if kind != "auto":
            return kind
        flickering = [info for info in gated if info.get("strength", 1.0) > 0]
        if not flickering:
            return "none"
        share = sum(info["fine_weight"] >= 0.5 for info in flickering) / len(flickering)
        if share > 0:
            return "processed" if share == 1 else "mixed"
        named = [info["flicker_kind"] for info in flickering if info.get("flicker_kind")]
        return max(sorted(set(named)), key=named.count) if named else "physical"

    @property
    def lossy(self) -> bool:
        """Whether the output's encoder changed the frames measured (H.264, HEVC, ProRes): its own flicker index
        (`unflicker eval`) then differs a little from the summary's, measured on the frames handed over."""
        if self.output is None or io.is_folder_output(self.output):
            return False
        codec = ((self.config or {}).get("output") or {}).get("codec")
        return not (codec == "ffv1" or (codec is None and Path(self.output).suffix.lower() == ".mkv"))

    def line(self) -> str:
        reused = f", {self.reused} of them reused from the work folder" if self.reused else ""
        weights = [info["fine_weight"] for info in self.segment_info if "fine_weight" in info]
        # --carry-texture: how much each segment took (none where its gate found no flicker or smooth light)
        asked = ((self.config or {}).get("neural") or {}).get("carry") is not None
        kind = ""
        if self.kind == "none":
            kind = ", no flicker found: left as it is"
        elif self.kind is not None and weights:
            physical = self.kind in PHYSICAL_KINDS and (self.config or {}).get("kind") == "auto"
            # The gate cannot always tell a per-frame process with little texture flicker (a colorization)
            # from smooth physical flicker: say so where the user can tell (research notes, session 23),
            # unless every flickering segment shows what only physical flicker did (old film, mains; session 27).
            clear = physical and all(
                unmistakable({k.removeprefix("kind_"): v for k, v in info.items() if k.startswith("kind_")})
                for info in self.segment_info if info.get("strength", 1.0) > 0)
            found = ""
            if physical:
                found = "found, treated as physical flicker; " + \
                    ("" if clear else "frames processed one by one? try --kind processed; ")
            carried = [info.get("carry", 0.0) for info in self.segment_info if "fine_weight" in info]
            kind = (f", kind {self.kind} ({found}fine correction weight {_span(weights)}"
                    + (f", texture carried {_span(carried)}" if asked else "") + ")")
        elif asked and any("carry" in info for info in self.segment_info):  # no gate ran (--no-projection)
            kind = f", texture carried {_span([info.get('carry', 0.0) for info in self.segment_info])}"
        return (f"wrote {self.output}: {self.frames} frame{'s' if self.frames != 1 else ''} in {self.seconds:.1f} s "
                f"({self.frames / max(self.seconds, 1e-9):.1f} fps), flicker index "
                f"{self.flicker_before * 1e3:.2f} -> {self.flicker_after * 1e3:.2f} (x1e-3"
                f"{', before lossy encoding' if self.lossy else ''}), "
                f"{self.segments} segment{'s' if self.segments != 1 else ''}{reused}{kind}{self.work_note()}")

    def work_note(self) -> str:
        """'; work kept: SIZE in FOLDER (...)' where --keep-work kept the job's segments, else ''."""
        return "" if self.work is None else kept_note(self.work, self.work_bytes)


def _span(values: list[float]) -> str:
    """'0.25' or '0.25-0.80': the range of per-segment values in a summary line."""
    return f"{min(values):.2f}" + (f"-{max(values):.2f}" if max(values) > min(values) else "")


def kept_note(folder: Path, size: int) -> str:
    """What a run's or a batch's last line says of the --keep-work folder (or the job's in it) it leaves."""
    return f"; work kept: {size_text(size)} in {folder} (reruns reuse it; delete it when done)"


# --- sources and sinks ----------------------------------------------------------------------------


class FileSource:
    """A video file or frame folder, decoded as often as the job needs (streamed each time)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.info = io.probe(self.path)

    def frames(self) -> Iterator[io.Frame]:
        return io.read_frames(self.path, self.info)

    def fingerprint(self) -> dict:
        return input_fingerprint(self.info)


class ArraySource:
    """An in-memory clip: a sequence of (H, W, 3) float32 frames in [0, 1], read on access."""

    def __init__(self, frames: Sequence[np.ndarray]):
        self._frames = frames
        first = np.asarray(frames[0])
        if first.ndim != 3 or first.shape[2] != 3:
            raise InputError(f"expected frames of shape (H, W, 3), got {first.shape}")
        self.shape = first.shape
        self.info = io.VideoInfo(Path("<array>"), False, first.shape[1], first.shape[0], len(frames), Fraction(25),
                                 "rgbf32", 32, False)

    def frames(self) -> Iterator[io.Frame]:
        for t in range(len(self._frames)):
            frame = np.asarray(self._frames[t])
            if frame.shape != self.shape:
                raise InputError(f"frame {t} has shape {frame.shape}, frame 0 has {self.shape}")
            yield io.Frame(t, io.to_float(frame), f"frame_{t:06d}.png")

    def fingerprint(self) -> dict:
        return {"array": True}  # arrays are never resumed: their work folder is always temporary


class ListSink:
    """Collects output frames in memory (the array API's writer)."""

    def __init__(self):
        self.frames: list[np.ndarray] = []

    def write(self, image: np.ndarray, pts=None, name=None, alpha=None) -> None:
        self.put(self.prepare(image, pts, name, alpha))

    def prepare(self, image: np.ndarray, pts=None, name=None, alpha=None) -> np.ndarray:
        return image

    def put(self, prepared: np.ndarray) -> None:
        self.frames.append(prepared)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.frames.clear()


class BackgroundSink:
    """Writes through another sink (its `prepare`, then its `put`) on two threads of its own, in
    order, with at most `depth` frames on their way: the next frame's conversion and this one's
    encoding run while the job decodes, stitches and measures the frames after them. The frames
    handed over must not change afterwards. An error of the sink shows at the next write or at
    close(); abort() discards what is queued and the output."""

    def __init__(self, sink, depth: int = 2):
        self.sink = sink
        self._convert = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert")
        self._encode = Behind(2, depth=depth, name="writer")  # always a thread of its own

    def write(self, image: np.ndarray, pts=None, name=None, alpha=None) -> None:
        converted = self._convert.submit(self.sink.prepare, image, pts, name, alpha)
        self._encode.submit(lambda: self.sink.put(converted.result()))

    def close(self):
        try:
            self._encode.close()
        finally:
            self._convert.shutdown(wait=True)
        return self.sink.close()

    def abort(self) -> None:
        self._convert.shutdown(wait=False, cancel_futures=True)
        self._encode.abort()  # a frame already being written ends before the output goes
        self._convert.shutdown(wait=True)
        self.sink.abort()


def _channel_means(frame: np.ndarray) -> np.ndarray:
    """(3,) per-channel mean in [0, 1] units: the global flicker index and the plot need nothing more
    per frame. An integer frame is averaged as it is, then scaled (no float copy of it is made)."""
    frame = np.ascontiguousarray(frame)
    means = np.array(cv2.mean(frame)[:3])
    return means / np.iinfo(frame.dtype).max if frame.dtype.kind in "ui" else means


def _flicker(means: np.ndarray) -> float:
    return flicker_index([m.reshape(1, 1, 3) for m in means])["luma"] if len(means) > 1 else 0.0


def _blend(frame: np.ndarray | None, out: np.ndarray, strength: float) -> np.ndarray:
    """The output frame: `out` (a fresh array, changed in place) blended with the input by strength,
    clipped (the input may be None at strength 1)."""
    if strength < 1.0:
        out = frame + np.float32(strength) * (out - frame)
    return np.clip(out, 0.0, 1.0, out=out)


# --- the job --------------------------------------------------------------------------------------


class Job:
    """One input through the engine; see the module docstring for the order of the calls."""

    def __init__(self, input_path: str | Path | None, output_path: str | Path | None, config: RunConfig | None = None,
                 frames: Sequence[np.ndarray] | None = None, watch: Callable[[int], None] | None = None):
        """input_path and output_path for files; frames (and no paths) for the array API. `watch(frames)`:
        called with each increase of the frames' worth of work done (what the deflicker bar shows;
        e.g. a batch's own bar, where the job's bars are off)."""
        self.watch = watch
        self.frames_done = 0
        """Frames' worth of the job's work done so far (see `_show_progress`)."""
        self.input_path = None if input_path is None else Path(input_path)
        self.output_path = None if output_path is None else Path(output_path)
        self.config = config or RunConfig()
        self._array = frames
        self.error: UnflickerError | None = None
        self.summary: RunSummary | None = None
        self.sink: BackgroundSink | ListSink | None = None
        self.frames_out: list[np.ndarray] = []
        self._started = time.perf_counter()
        self._temp_work: TemporaryWork | None = None
        self._bars: list[tqdm] = []
        self._decoders: list = []
        self.folder: JobFolder | None = None
        self._spills: dict[int, FrameFile] = {}
        """Segments' frames being spilled (files not complete yet)."""
        self._loaded: dict[int, FrameFile] = {}
        """Finished segments' results open for stitching."""

    @property
    def name(self) -> str:
        return str(self.input_path) if self.input_path is not None else "<array>"

    # -- start: checks, cuts, plan --

    def start(self, shared: bool = True, ready: Callable[[Job], None] | None = None) -> None:
        """Check everything, find the cuts, plan the segments. shared: whether workers read the
        work folder (else frames and results travel through the engine, e.g. Ray's object store).
        ready(job), if given, is called once `spec` and `task_hint` are known, before the first pass
        over the video (the engine starts its workers then, so they load while this one decodes)."""
        self._started = time.perf_counter()
        config = self.config
        config.check()
        self.source = ArraySource(self._array) if self._array is not None else FileSource(self.input_path)
        info = self.source.info
        config = self.config = resolve_method(config, info.height, info.width, info.frame_count)
        self.write_output = config.stop_after is None
        if self._array is not None:
            self.output = None
            self.sink = ListSink()
        else:
            # With info, check_output also decides the output's codec and depth and warns about what it
            # cannot carry.
            self.output = io.check_output(self.input_path, self.output_path, config.overwrite, info=info,
                                          codec=config.codec, bit_depth=config.bit_depth,
                                          crf=None if config.crf == io.DEFAULT_CRF else config.crf) \
                if self.write_output else None
            if self.output is not None and self.output.suffix.lower() in io.IMAGE_EXTENSIONS and \
                    not self.output.is_dir():
                warn(f"{self.output.name} is made a folder: the frames are written into it as image files")
            self._check_extras()
            self._check_input(info)
        self.spec = method_spec(config)
        self.shared = shared
        n = info.frame_count
        # Digests of the weight files, without building the method: this process never loads torch
        # when workers run the segments (they build it while it decodes), and bad weights fail here.
        self.record = record(self.spec, config, METHODS[self.spec.name].fingerprint(self.spec.config))
        key = digest({"input": self.source.fingerprint(), **{k: v for k, v in self.record.items() if k != "output"}})
        if config.keep_work is not None and self._array is None:
            work = Path(config.keep_work).resolve()  # tasks on other nodes take its paths as they are
            self._check_room(work / "jobs" / key)
        else:
            self._temp_work = TemporaryWork(config.engine.shared_dir)
            work = self._temp_work.path
            if self._array is None:
                self._check_temp_room(work)
        self.folder = JobFolder(work, key)
        self.folder.write_record(self.record)
        if ready is not None:
            ready(self)
        # Per-channel means of each input and output frame (the flicker index and the plot), in
        # arrays made once: small per-frame allocations kept between full-size frames fragment the heap.
        self._before = np.zeros((n, 3))
        self._after = np.zeros((n, 3))
        self._stamps: list[tuple[int | None, str]] = []
        """Each frame's (pts, name), from the plan's pass: the output needs no second decode of the
        input where it takes nothing else from it (see `_input_needed`)."""
        self.segments = self._plan(n) if n > 1 else []
        self._core_starts = [s.core.start for s in self.segments]
        finished = self.folder.finished(len(self.segments))
        self.results: dict[int, Path] = {k: self.folder.result(k) for k in finished}
        self.reused = len(finished)
        self._to_submit = [s for s in self.segments if s.index not in finished]
        self._finished_work = sum(len(self.segments[k].core) for k in finished)  # frames, for the bar
        self._running: dict[int, float] = {}  # segment index -> the fraction of its work it reported
        self._decoded = self._decoder()  # the spill decoder, started on demand
        self._t = 0
        self._write_bar = self._bar(n, "deflicker")
        self._show_progress()  # a resumed run's finished segments
        if self.write_output and self._array is None:
            comment = f"unflicker {self.record['unflicker']} {self.spec.name}; config {digest(self.record)}"
            self.sink = BackgroundSink(io.VideoWriter(self.output, info, crf=config.crf, overwrite=config.overwrite,
                                                      codec=config.codec, bit_depth=config.bit_depth, comment=comment))
        self._output_frames = self._decoder()

    @property
    def task_hint(self) -> int:
        """Before the plan (from `ready` on): about how many segments will run, at least one per
        `segments.frames` of the video (cuts only add), less the finished ones a resumed run reuses."""
        n = self.source.info.frame_count
        least = math.ceil(n / self.config.segments.frames) if n > 1 else 0
        return max(0, least - len(self.folder.finished(least)))

    def _bar(self, total: int, desc: str) -> tqdm:
        bar = bars.bar(total=total, desc=desc, unit="frame", disable=not self.config.progress, leave=False,
                       dynamic_ncols=True)
        self._bars.append(bar)
        return bar

    def _decoder(self) -> Iterator[io.Frame]:
        frames = self.source.frames()
        self._decoders.append(frames)
        return frames

    def _plan(self, n: int) -> list[Segment]:
        """Cut detection on thumbnails of every frame (one decode, streamed: nothing per frame is
        kept but a distance, the input's channel means and the frame's timestamp), then the segments."""
        bar = self._bar(n, "analyse")
        decoded = 0
        # A clip short enough for one segment is spilled in this same pass, as that segment's frames
        # (unless it is finished already): with no cut, the input is decoded once in the whole run.
        whole = self.folder.frames / f".partial-whole-{os.getpid()}.npy"  # another run may share the folder
        speculate = self._spill_while_planning(n)
        spill: FrameFile | None = None

        def thumbnails() -> Iterator[np.ndarray]:
            nonlocal decoded, spill
            for frame in self._decoder():
                decoded += 1
                bar.update()
                if frame.index < n:  # a longer video fails below
                    self._before[frame.index] = _channel_means(frame.image)
                    self._stamps.append((frame.pts, frame.name))
                    if speculate:
                        with work_errors(self.folder.path):
                            if spill is None:
                                spill = FrameFile.create(whole, (n, *frame.image.shape), frame.image.dtype)
                            spill[frame.index] = frame.image
                yield cuts.thumbnail(frame.image)

        try:
            found = cuts.detect_cuts(thumbnails())
            bar.close()
            if decoded != n:
                raise InputError(f"{self.name}: {decoded} frames decoded, {n} expected")
            self._warn_lost_timing()
            segments = plan(cuts.shots(n, found), self.config.segments)
            if spill is not None:
                with work_errors(self.folder.path):
                    spill.close()
                    if len(segments) == 1 and segments[0].span == range(n):
                        whole.rename(self.folder.spill(0))
        finally:
            if spill is not None:
                spill.close()
            whole.unlink(missing_ok=True)
        return segments

    def _warn_lost_timing(self) -> None:
        """A video whose frames are not evenly spaced in time, written as a folder of frames (which holds no
        timing; its nominal rate may equal a folder's, so check_output's rate warning can miss it)."""
        info = self.source.info
        if info.is_folder or not self.write_output or self.output is None or not io.is_folder_output(self.output):
            return
        steps = np.diff([pts for pts, _ in self._stamps if pts is not None])
        # A tick of slack for fine time bases (29.97 fps in milliseconds: 33 and 34), none for coarse ones (1/fps).
        if len(steps) > 1 and steps.min() > 0 and steps.max() > 1.01 * steps.min() + (steps.min() >= 10):
            warn(f"{self.name} has variable frame timing ({float(steps.min() * info.time_base) * 1e3:.0f}-"
                 f"{float(steps.max() * info.time_base) * 1e3:.0f} ms between frames): a folder of frames "
                 f"holds none; it reads back at {float(io.DEFAULT_FOLDER_FPS):g} fps")

    def _spill_while_planning(self, n: int) -> bool:
        """Whether the plan's pass spills the clip as segment 0's frames: it fits one segment (unless
        a cut splits it) and that segment has no result yet (a resumed run needs no frames for it)."""
        return n <= self.config.segments.frames and not self.folder.result(0).is_file()

    def _check_input(self, info: io.VideoInfo) -> None:
        """Say what will be lost, before any work starts."""
        if info.frame_count == 1:
            warn("the input has a single frame: there is no flicker to remove, copying it through")
        elif self.config.method == "neural" and mlp_atlas(self.config):
            warn(mlp_atlas_note(self.config))

    def _check_room(self, folder: Path) -> None:
        """--keep-work keeps every segment's result, each frame at 16 bits: refuse, before any work, a run whose
        results cannot fit on the folder's disk. The need is counted low (every frame once: no margins, no spilled
        input; less the results `folder` holds already), so a run refused would certainly fail."""
        info = self.source.info
        if self.config.stop_after is not None or info.frame_count < 2:  # stages (other sizes), or no segment
            return
        held = 0
        for path in folder.glob("segment-*.npy"):
            try:
                held += path.stat().st_size
            except OSError:
                pass  # removed meanwhile (another run's sweep)
        need = info.frame_count * info.width * info.height * 3 * 2 - held
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        try:
            free = shutil.disk_usage(existing).free
        except OSError:
            return  # unknown: the writes say
        if need > free:
            raise OutputError(f"--keep-work {self.config.keep_work} needs at least {size_text(need)} for this "
                              f"video's segments (every frame kept at 16 bits), its disk has {size_text(free)} free: "
                              f"free space there, or give --keep-work a folder on a larger disk")

    def _check_temp_room(self, folder: Path) -> None:
        """Warn, before any work, where the temporary work folder's disk cannot hold the segments the run has in
        flight at once: workers + 1 as the engine keeps them (each frame's input and its 16-bit result), and what
        the running ones' method keeps of each frame in temporary files of its own (`Method.scratch_bytes`).
        Measured (research notes, session 27): 0.9-1.2 GB at 854x480 with 2 workers; 4K, 2 segments of 60 frames,
        2 workers: 14.96 GB, this count 14.93. A warning, not a refusal: cuts change the segments."""
        info, config = self.source.info, self.config
        if info.frame_count < 2 or not config.engine.shares_files():
            return  # no segment; a cluster's frames travel through its object store
        workers = config.engine.local_workers((info.width, info.height), spec=self.spec)
        spans = sorted((len(s.span) for s in plan([range(info.frame_count)], config.segments)), reverse=True)
        pixels = info.width * info.height
        stored = (3 if info.bit_depth == 8 else 6) + 6  # the spilled input and the 16-bit result
        scratch = METHODS[self.spec.name].scratch_bytes
        need = pixels * (stored * sum(spans[:workers + 1]) + scratch * sum(spans[:workers]))
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if need > free:
            n = min(len(spans), workers + 1)
            warn(f"the temporary work folder {folder.parent} may need about {size_text(need)} at once "
                 f"({n} segment{'s' if n != 1 else ''} of up to {spans[0]} frames in flight), its disk has "
                 f"{size_text(free)} free: set TMPDIR to a folder on a larger disk, or run fewer --workers")

    def _check_extras(self) -> None:
        config = self.config
        folder_output = self.output is not None and io.is_folder_output(self.output)
        for extra, what in ((config.compare, "--compare"), (config.plot, "--plot"), (config.keep_work, "--keep-work")):
            # The output replaces its folder whole when complete: nothing else may be written inside it.
            if extra is not None and folder_output and Path(extra).resolve().is_relative_to(self.output.resolve()):
                raise OutputError(f"{what} {extra} is inside the output folder {self.output}: choose another path")
        if config.plot is not None and self.input_path is not None and Path(self.input_path).is_dir() and \
                Path(config.plot).resolve().parent == Path(self.input_path).resolve():
            # A PNG among the input's frames: the folder would no longer read (a frame of another size).
            raise OutputError(f"--plot {config.plot} is inside the input folder {self.input_path}: choose another path")
        for extra in (config.compare, config.plot):
            if extra is None:
                continue
            if self.output is not None and Path(extra).resolve() == self.output.resolve():
                raise OutputError(f"{extra} is also the output: choose another path")
            io.check_output(self.input_path, extra, config.overwrite)
        if config.compare is not None and config.plot is not None and \
                Path(config.compare).resolve() == Path(config.plot).resolve():
            raise OutputError("--compare and --plot name the same file")
        if config.keep_work is not None:
            # The work folder is made now: a file of that name could not be put in place after the whole run.
            work = Path(config.keep_work).resolve()
            for path, what in ((self.output, "the output"), (config.compare, "--compare"), (config.plot, "--plot")):
                if path is not None and Path(path).resolve() == work:
                    raise OutputError(f"--keep-work {config.keep_work} is also {what}: choose another folder")

    # -- tasks --

    def next_task(self) -> SegmentTask | None:
        """The next unfinished segment's task, its frames spilled to the work folder first."""
        if not self._to_submit:
            return None
        segment = self._to_submit.pop(0)
        pending = [segment, *self._to_submit[:1]]
        while segment.index in self._spills or not self.folder.spill(segment.index).exists():
            frame = next(self._decoded, None)
            if frame is None:
                raise InputError(f"{self.name}: the video ended before frame {segment.span.stop - 1}")
            for seg in pending:
                if frame.index in seg.span:
                    self._spill(seg, frame)
        path = self.folder.spill(segment.index)
        frames = path if self.shared else np.load(path)
        stages = self.config.keep_work if self.config.stop_after else None
        names = tuple(io.frame_name(self.source.info, t) for t in segment.span) if stages else ()
        return SegmentTask(self.folder.path.name, segment, self.spec, frames,
                           output=self.folder.result(segment.index) if self.shared else None,
                           threads=self.config.engine.threads, stages_dir=stages, names=names,
                           running_dir=self.folder.running if self.shared else None)

    def pending(self) -> int:
        """Segments still to be handed out (after the one in hand, if any)."""
        return len(self._to_submit) if self.error is None else 0

    def _spill(self, segment: Segment, frame: io.Frame) -> None:
        temp = self.folder.frames / f".partial-{segment.index:05d}-{os.getpid()}.npy"
        with work_errors(self.folder.path):  # a full disk: one line, which folder and what is free
            if segment.index not in self._spills:
                shape = (len(segment.span), *frame.image.shape)
                self._spills[segment.index] = FrameFile.create(temp, shape, frame.image.dtype)
            self._spills[segment.index][frame.index - segment.span.start] = frame.image
            if frame.index == segment.span.stop - 1:
                self._spills.pop(segment.index).close()
                temp.rename(self.folder.spill(segment.index))

    def progress(self, index: int, fraction: float) -> None:
        """Segment `index`'s task has done `fraction` of its work (engine.run_jobs, as it reports)."""
        if index not in self.results:
            self._running[index] = fraction
            self._show_progress()

    def _show_progress(self) -> None:
        """Move the deflicker bar to the frames' worth of work done: finished segments' core frames
        whole, running ones' in proportion to what they reported; never below the frames written."""
        work = self._finished_work + sum(len(self.segments[k].core) * f for k, f in self._running.items())
        value = max(self._t, min(int(work), self.source.info.frame_count))
        if value > self.frames_done:
            step, self.frames_done = value - self.frames_done, value
            self._write_bar.update(step)
            if self.watch is not None:
                self.watch(step)

    def deliver(self, result: SegmentResult) -> None:
        self.folder.write_result(result.index, result.info,
                                 result.frames if isinstance(result.frames, np.ndarray) else None)
        self.results[result.index] = self.folder.result(result.index)
        self.folder.spill(result.index).unlink(missing_ok=True)
        self._running.pop(result.index, None)
        self._finished_work += len(self.segments[result.index].core)
        self._show_progress()

    # -- stitch and write --

    def _covering(self, t: int) -> list[int]:
        """Indices of the segments whose span holds frame t (the core's owner and a neighbour)."""
        k = bisect.bisect_right(self._core_starts, t) - 1
        return [j for j in (k - 1, k, k + 1) if 0 <= j < len(self.segments) and t in self.segments[j].span]

    def _result(self, k: int) -> np.ndarray:
        if k not in self._loaded:
            self._loaded[k] = FrameFile.open(self.results[k])
        return self._loaded[k]

    def _stitched(self, t: int) -> np.ndarray:
        """Frame t's output: its segments' results cross-faded (segments.blend_weight)."""
        from unflicker.segments import blend_weight

        covering = self._covering(t)
        scale = np.float32(1 / 65535)
        if len(covering) == 1:
            k = covering[0]
            return self._result(k)[t - self.segments[k].span.start] * scale
        first, second = (self.segments[j] for j in covering)
        w = np.float32(blend_weight(first, second, t, self.config.segments.margin))
        a = self._result(first.index)[t - first.span.start].astype(np.float32)
        b = self._result(second.index)[t - second.span.start].astype(np.float32)
        return (a * (1 - w) + b * w) * scale

    def advance(self) -> bool:
        """Write every frame whose segments are finished, in order; True once the job is complete."""
        n = self.source.info.frame_count
        if not self.write_output:
            if len(self.results) < len(self.segments):
                return False
            self._finish()
            return True
        while self._t < n:
            if self.segments and any(k not in self.results for k in self._covering(self._t)):
                return False
            if self._input_needed():
                frame = next(self._output_frames)
                image, (pts, name, alpha) = io.to_float(frame.image), (frame.pts, frame.name, frame.alpha)
                if not self.segments:  # a single frame: no plan measured it
                    self._before[self._t] = _channel_means(frame.image)
            else:
                image, (pts, name), alpha = None, self._stamps[self._t], None
            out = self._stitched(self._t) if self.segments else image.copy()  # the input may be the caller's
            final = _blend(image, out, self.config.strength)
            self._after[self._t] = _channel_means(final)
            self.sink.write(final, pts, name, alpha)
            self._t += 1
            self._show_progress()
            for k in [k for k in self._loaded if self.segments[k].span.stop <= self._t]:
                self._loaded.pop(k).close()
                if self._temp_work is not None:  # written out: a temporary work folder keeps no more
                    self.results[k].unlink(missing_ok=True)
        self._finish()
        return True

    def _input_needed(self) -> bool:
        """Whether writing the output decodes the input again: for a blend with it (strength < 1),
        its alpha, or a clip with no plan (one frame); else the stitched results are the output."""
        return not self.segments or self.config.strength < 1.0 or self.source.info.has_alpha

    def _finish(self) -> None:
        if self.sink is not None:
            self.sink.close()
            if isinstance(self.sink, ListSink):
                self.frames_out = self.sink.frames
        output = self.output if self.write_output else self.config.keep_work
        written = self.source.info.frame_count if not self.write_output else self._t
        kept = self.folder.path if self._temp_work is None and self.write_output else None
        summary = RunSummary(output, written, 0.0, _flicker(self._before[: self._t]), _flicker(self._after[: self._t]),
                             len(self.segments), self.reused, config=self.record, segment_info=self._segment_info(),
                             work=kept, work_bytes=0 if kept is None else folder_bytes(kept))
        extras = []
        if self.config.compare is not None:
            from unflicker.visualize import write_side_by_side

            extras.append(write_side_by_side(self.input_path, self.output, self.config.compare,
                                             overwrite=self.config.overwrite, progress=self.config.progress))
        if self.config.plot is not None:
            from unflicker.visualize import write_brightness_plot

            label = self.config.plot_label or f"{self.input_path.name} -> {self.output.name}"
            title = (f"mean brightness per channel: {label}, flicker index "
                     f"{summary.flicker_before * 1e3:.2f} -> {summary.flicker_after * 1e3:.2f} (x1e-3)")
            extras.append(write_brightness_plot(self._before[: self._t], self._after[: self._t], self.config.plot,
                                                title, self.config.overwrite))
        self.summary = dataclasses.replace(summary, seconds=time.perf_counter() - self._started, extras=tuple(extras))
        self.close()

    def _segment_info(self) -> tuple[dict, ...]:
        """Each segment's report, read back from the work folder ({} where there is none)."""
        infos = []
        for segment in self.segments:
            try:
                infos.append(json.loads(self.folder.info(segment.index).read_text()))
            except (OSError, ValueError):
                infos.append({})
        return tuple(infos)

    def fail(self, error: BaseException) -> None:
        """Stop the job with `error` (its output is not written). Its files go with `close()`, which the
        engine calls once none of the job's segments is still running (they write into the work folder)."""
        if not isinstance(error, UnflickerError):
            raise error
        self.error = error
        if self.sink is not None:
            self.sink.abort()
        self.sink = None

    def close(self) -> None:
        """Release decoders and bars; remove the temporary work folder (a kept one keeps its results)."""
        for bar in self._bars:
            bar.close()
        self._bars.clear()
        for decoder in self._decoders:
            decoder.close()
        self._decoders.clear()
        if self.summary is None and self.sink is not None and self.error is None:
            self.sink.abort()  # interrupted: no partial output
        self.sink = None
        for handle in [*self._spills.values(), *self._loaded.values()]:
            handle.close()
        self._spills.clear()
        self._loaded.clear()
        if self.folder is not None:
            self.folder.clear_transient()
            self.folder.release()
        if self._temp_work is not None:
            self._temp_work.remove()
            self._temp_work = None


def run_one(job: Job) -> Job:
    from unflicker.engine import run_jobs

    job.config.check()  # before the engine starts its workers
    run_jobs([job], job.config.engine)
    if job.error is not None:
        raise job.error
    return job


def deflicker_file(input_path: str | Path, output_path: str | Path | None,
                   config: RunConfig | None = None) -> RunSummary:
    """Deflicker a video file or frame folder into `output_path` (video by extension, else a folder).

    Everything that can be checked (options, input, output, compare and plot paths) is checked
    before any work starts. Outputs appear only when complete; an error leaves none behind.
    """
    return run_one(Job(input_path, output_path, config)).summary


def deflicker_frames(frames: Sequence[np.ndarray], config: RunConfig | None = None) -> Iterator[np.ndarray]:
    """Deflicker an in-memory clip: yields each output frame, (H, W, 3) float32 in [0, 1], in order.

    frames: a sequence (list, (T, H, W, 3) array, or any object with len and indexing) of
    (H, W, 3) float32 RGB frames in [0, 1]. Only options that do not write files apply.
    """
    config = config or RunConfig()
    if len(frames) == 0:
        raise InputError("no frames to deflicker")
    job = run_one(Job(None, None, config, frames=frames))
    yield from job.frames_out
