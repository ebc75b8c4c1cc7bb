"""The job layer: page settings -> a RunConfig, checked uploads, and a one-at-a-time queue.

A job is one `unflicker.pipeline.deflicker_file(input, output, RunConfig)` call in a child process
(worker.py): Cancel ends that process, which frees the worker at once, and the library's tqdm bars
on the child's stderr are the progress the page shows. Nothing here knows how the engine works,
so moving to another engine with the same entry point changes only worker.py.
"""

from __future__ import annotations

import json
import lzma
import math
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unflicker import io
from unflicker.config import KINDS, EngineConfig
from unflicker.errors import InputError
from unflicker.web.store import Job, Session, Store, Upload

METHODS = ("neural", "classical")
PRESETS = ("fast", "balanced", "paper")


@dataclass(frozen=True)
class OutputFormat:
    """A 'Save as' choice of the page: the output's extension and codec (io.CODECS; None: PNG frames in a zip)."""

    suffix: str
    codec: str | None
    label: str
    """Its name in the page's messages."""

    @property
    def depths(self) -> tuple[int, ...]:
        """The page's bit depths this format holds (the library's rule, io.held_depths)."""
        return tuple(bits for bits in BIT_DEPTHS if bits in io.held_depths(self.codec))


FORMATS = {"mp4": OutputFormat(".mp4", "h264", "MP4 (H.264)"), "mkv": OutputFormat(".mkv", "ffv1", "MKV (FFV1)"),
           "mov": OutputFormat(".mov", "h264", "MOV (H.264)"),
           "mov-prores": OutputFormat(".mov", "prores", "MOV (ProRes)"),
           "png-zip": OutputFormat(".zip", None, "PNG frames")}
BIT_DEPTHS = (8, 10, 16)
"""Output bits per sample the page offers; the setting "" (the default) keeps the input's, as far as the format
holds it (`unflicker run` without --bit-depth)."""
DEFAULTS = {"method": "neural", "preset": "balanced", "kind": "auto", "carry_texture": False, "strength": 1.0,
            "keep_slow": "", "format": "mp4", "bit_depth": ""}
"""The CLI's defaults (`unflicker run` with no options), as the page shows them."""
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".mxf",
                  ".gif", ".wmv", ".flv", ".3gp", ".y4m", ".zip"}


def parse_settings(form: dict) -> dict:
    """The page's settings, checked, with the CLI's defaults for what is missing; InputError if bad."""
    if not isinstance(form, dict):
        raise InputError("settings must be an object")
    unknown = set(form) - set(DEFAULTS)
    if unknown:
        raise InputError(f"unknown setting(s): {', '.join(sorted(map(str, unknown)))}")
    settings = {**DEFAULTS, **form}
    if settings["method"] not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}")
    if settings["preset"] not in PRESETS:
        raise InputError(f"preset must be one of {', '.join(PRESETS)}")
    if settings["kind"] not in KINDS:
        raise InputError(f"'what flickers' must be one of {', '.join(KINDS)}")
    if not isinstance(settings["carry_texture"], bool):
        raise InputError("'carry texture' must be true or false")
    if not isinstance(settings["format"], str) or settings["format"] not in FORMATS:  # a JSON list is unhashable
        raise InputError(f"output format must be one of {', '.join(FORMATS)}")
    try:
        strength = float(settings["strength"])
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
        raise InputError("strength must be a number from 0 to 1") from None
    if not 0.0 <= strength <= 1.0:
        raise InputError("strength must be a number from 0 to 1")
    keep_slow = str(settings["keep_slow"]).strip().lower()
    if keep_slow not in ("", "off"):
        try:
            value = float(keep_slow)
        except ValueError:
            raise InputError("'keep slow changes' must be empty (the default), a number of frames or 'off'") from None
        if not 0.0 <= value <= 50.0:
            raise InputError("'keep slow changes' must be 0 to 50 frames, or 'off'")
    return {**settings, "strength": strength, "keep_slow": keep_slow, "bit_depth": _bit_depth(settings)}


def _bit_depth(settings: dict) -> int | str:
    """The checked bit depth of settings whose format is checked: "" (the input's) or one the format holds."""
    depth = settings["bit_depth"]
    if depth in ("", None):
        return ""
    offered = f"bit depth must be {_one_of(BIT_DEPTHS)}, or empty (the input's)"
    try:
        depth = int(depth) if not isinstance(depth, (bool, float)) else None  # 10.5 or true is not a depth
    except (TypeError, ValueError):
        depth = None
    if depth not in BIT_DEPTHS:
        raise InputError(offered)
    chosen = FORMATS[settings["format"]]
    if depth not in chosen.depths:
        others = [f.label for f in FORMATS.values() if depth in f.depths]
        raise InputError(f"{chosen.label} can hold {_one_of(chosen.depths)} bits, not {depth}: "
                         f"choose {_one_of(others)} for {depth} bits, or another bit depth")
    return depth


def _one_of(items) -> str:
    """'8, 10 or 16'"""
    items = [str(item) for item in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def run_options(settings: dict) -> dict:
    """RunConfig fields of checked settings (the neural-only ones only for the neural method)."""
    options = {"method": settings["method"], "strength": settings["strength"]}
    if settings["method"] == "neural":
        options["preset"] = settings["preset"]
        options["kind"] = settings["kind"]
        if settings["carry_texture"]:
            options["carry_texture"] = True
        if settings["keep_slow"]:
            options["keep_slow"] = math.inf if settings["keep_slow"] == "off" else float(settings["keep_slow"])
    return options


def _too_long(seconds: float, max_seconds: float) -> InputError:
    return InputError(f"it is {seconds:.1f} s long; this server takes videos up to "
                      f"{max_seconds:g} s (unflicker serve --max-seconds)")


def _extract_frames(archive: Path, folder: Path, max_bytes: int, max_seconds: float = math.inf) -> Path:
    """Unpack the images of a zip (flat, by their base names) into folder; InputError if unusable, or longer
    than max_seconds at the frame rate of its first frame (a DPX header's, else the default), found once
    that frame is unpacked: a small zip can hold a great many tiny images."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            entries = [e for e in zipped.infolist() if not e.is_dir()
                       and Path(e.filename).suffix.lower() in io.IMAGE_EXTENSIONS
                       and not Path(e.filename).name.startswith(".")]
            if not entries:
                raise InputError(f"no images ({', '.join(io.IMAGE_EXTENSIONS)}) in the zip")
            if sum(e.file_size for e in entries) > max_bytes:
                raise InputError("the frames in the zip are larger than the upload limit")
            names = [Path(e.filename).name for e in entries]
            if len(set(names)) != len(names):
                raise InputError("the zip holds two images with the same name in different folders")
            if any(e.flag_bits & 0x1 for e in entries):  # zipfile cannot open them without it
                raise InputError("it is protected by a password: zip the frames again without one")
            folder.mkdir()
            first = min(range(len(names)), key=lambda index: io.natural_key(names[index]))  # probe's first frame
            for count, (entry, name) in enumerate(sorted(zip(entries, names), key=lambda e: e[1] != names[first])):
                if count == 1:
                    rate = io.folder_timing(folder / names[first])[1] or io.DEFAULT_FOLDER_FPS
                    if len(names) / float(rate) > max_seconds:
                        raise _too_long(len(names) / float(rate), max_seconds)
                with zipped.open(entry) as source:
                    try:
                        data = source.read(max_bytes + 1)[:max_bytes]
                    except (zlib.error, lzma.LZMAError, OSError) as exc:  # damaged data (bzip2's is an OSError)
                        raise InputError(f"the zip cannot be read ({exc.__class__.__name__})") from None
                # Written under its checked base name: no path from the archive is ever used.
                with open(folder / name, "wb") as target:
                    target.write(data)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError) as exc:
        raise InputError(f"the zip cannot be read ({exc.__class__.__name__})") from None
    return folder


def _check_frame_sizes(folder: Path, names: tuple[str, ...]) -> None:
    """InputError naming the first frame whose size differs from the first one's, read from the headers
    (frames whose header says nothing here, OpenEXR's, are not decoded inside the request: the run
    names a mismatch among them)."""
    first = io.image_size(folder / names[0])
    for name in names[1:]:
        size = io.image_size(folder / name, decode=False)
        if size is not None and size != first:
            raise InputError(f"its frames differ in size: {name} is {size[0]}x{size[1]}, the first frame "
                             f"({names[0]}) is {first[0]}x{first[1]}")


def public_message(message: str, upload: Upload, received: Path | None = None) -> str:
    """A message of the library as the page shows it: a frame of a zip named as in the zip, the uploaded file
    by the name it came with, and no path of the server's work folder."""
    message = message.replace(f"{upload.folder / 'frames'}/", "")
    for path in (received, upload.path):
        if path is not None:
            message = message.replace(str(path), upload.name)
    return message.replace(str(upload.folder), "")


_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"(),;:]+")
"""An absolute path in a message (up to a space, a quote, a bracket or a colon)."""
OUT_OF_MEMORY = {"MemoryError", "OutOfMemoryError", "WorkerDied"}
"""Errors of a job's worker (its `type` in result.json) that say the machine ran short of memory."""


def without_paths(message: str, roots: tuple[str, ...] = ()) -> str:
    """A message with no path of the server: a file's path becomes its name, a folder's a few words.
    roots: folders to take out first, whole (a name with spaces ends a path that _PATH finds)."""
    for root in sorted(roots, key=len, reverse=True):
        message = message.replace(root, "/server")
    return _PATH.sub(lambda m: Path(m.group()).name if Path(m.group()).suffix else "(a folder on the server)",
                     message)


def failure_message(job: Job, result: dict, returncode: int | None, roots: tuple[str, ...] = ()) -> str:
    """What the page says of a failed job, for someone who does not use a terminal: what went wrong in
    words, no path of the server, what to try. The server's console keeps the technical message
    (JobQueue._log_failure). result: the worker's result.json ({} if none); returncode: its exit status."""
    what = "preview" if job.kind == "preview" else "run"
    error = result.get("error", "")
    # -9: SIGKILL, which the kernel sends when memory runs out (and `kill -9`)
    if returncode == -9 or result.get("type") in OUT_OF_MEMORY or "out of memory" in error.lower():
        return (f"the {what} was stopped: the machine ran out of memory or the process was killed. Try a shorter "
                f"video or one with smaller frames, or the classical method")
    if "no space left on device" in error.lower():
        return (f"the {what} stopped: the server's disk is full. Try again later, or ask whoever runs the server "
                f"to free space on its disk")
    if returncode == 1 and error:  # the library's own message, written for people: without the server's paths
        return without_paths(public_message(error, job.upload).replace(f"{job.folder}/", ""), roots)
    if returncode == 2 and error:  # an exception the library did not expect
        return (f"the {what} failed on an internal error of unflicker ({result.get('type') or 'unknown'}). Try "
                f"again, or other settings; whoever runs the server finds the details in its console")
    return (f"the {what} stopped before it finished: its process on the server ended unexpectedly. Try again; "
            f"if it happens again, try a shorter video or other settings")


def check_upload(store: Store, upload: Upload, received: Path) -> None:
    """Probe a received file and apply the limits; sets upload.path and facts, else InputError
    with a message for the page (the server's paths replaced by the upload's name)."""
    limits = store.limits

    def too_large(width: int, height: int) -> InputError:
        return InputError(f"its frames are {width}x{height}; this server takes frames up to {limits.max_side} "
                          f"pixels a side")

    try:
        path = _extract_frames(received, upload.folder / "frames", limits.max_upload_bytes, limits.max_seconds) \
            if received.suffix == ".zip" else received
        if path.is_dir():  # from the headers, before probe decodes a frame: a few KB of zip can hold gigapixels
            for frame in path.iterdir():
                size = io.image_size(frame, decode=False)
                if size is not None and max(size) > limits.max_side:
                    raise too_large(*size)
            names = io.frame_files(path)
            if names:  # in the page's words (the zip's names), before probe refuses such a folder in its own
                _check_frame_sizes(path, tuple(names))
        info = io.probe(path)
    except InputError as exc:
        raise InputError(public_message(str(exc), upload, received)) from None
    seconds = info.frame_count / float(info.fps or 25)
    if seconds > limits.max_seconds:
        raise _too_long(seconds, limits.max_seconds)
    if max(info.width, info.height) > limits.max_side:
        raise too_large(info.width, info.height)
    upload.path, upload.frames, upload.fps = path, info.frame_count, float(info.fps)
    upload.facts = info.describe().replace(path.name, upload.name, 1)


def compute_means(upload: Upload) -> None:
    """Fill upload.means: per-frame channel means of the input, for the page's flicker plot."""
    try:
        means = []
        for frame in io.read_frames(upload.path):
            image = frame.image
            scale = 65535.0 if image.dtype == np.uint16 else 255.0
            means.append([round(float(v) / scale, 5) for v in cv2.mean(image)[:3]])
        upload.means = means
    except InputError as exc:
        upload.means_error = public_message(str(exc), upload)


# A tqdm bar as the library prints it, each update after a "\r":
# "process:  42%|####      | 5/12 [00:01<00:02, 3.10frame/s]".
_BAR = re.compile(r"([\w+-][\w+ -]*?):\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:?]+)[,\]]")


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


class ProgressLog:
    """The progress bars a job's child prints on stderr (its log file), read as they come.

    `update(stages)` reads what was added since the last call and updates stages:
    [{name, done, total, eta}] in the order the bars first appeared. A new bar marks the ones
    before it finished (a bar closed with leave=False never prints its last count); a stage's
    count never goes back.
    """

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = ""

    def update(self, stages: list[dict]) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except OSError:
            return
        self.offset += len(data)
        pieces = re.split(r"[\r\n]", self.partial + data.decode("utf-8", "replace"))
        self.partial = pieces[-1]  # maybe unfinished: read again, whole, next time
        for line in pieces:
            match = _BAR.match(line)
            if match is not None:
                _apply(stages, match.group(1).strip(), int(match.group(3)), int(match.group(4)),
                       _seconds(match.group(6)))


def _apply(stages: list[dict], name: str, done: int, total: int, eta: float | None) -> None:
    stage = next((s for s in stages if s["name"] == name), None)
    if stage is None:
        for earlier in stages:
            earlier.update(done=earlier["total"], eta=0)
        stages.append({"name": name, "done": done, "total": total, "eta": eta})
    elif done >= stage["done"]:
        stage.update(done=done, total=total, eta=eta)


class JobQueue:
    """Runs queued jobs one at a time (previews before runs) in a worker thread."""

    def __init__(self, store: Store, poll: float = 0.25, engine: EngineConfig | None = None):
        self.store = store
        self.engine = engine or EngineConfig()
        """The engine's workers and threads for every job (`unflicker serve --workers/--threads`)."""
        self.poll = poll
        # Folders a message may name, taken out whole (Path.home() may be "/" for a service account).
        self.roots = tuple(str(p) for p in (store.root, Path(tempfile.gettempdir()).resolve(), Path.home(),
                                            Path(sys.prefix)) if len(Path(p).parts) > 1)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="unflicker-jobs", daemon=True)
        self.thread.start()

    def submit(self, session: Session, job: Job) -> bool:
        """Queue a job of the session (its upload checked, its settings parsed); False if its upload
        is gone (swept since it was looked up): nothing is queued (Store.add_job)."""
        chosen = FORMATS[job.settings["format"]]
        spec = {"kind": job.kind, "input": str(job.upload.path), "options": run_options(job.settings),
                "format": chosen.suffix, "codec": chosen.codec, "bit_depth": job.settings["bit_depth"] or None,
                "engine": {"workers": self.engine.workers, "threads": self.engine.threads}, "frame": job.frame,
                "name": job.upload.name, "preview_seconds": self.store.limits.preview_seconds}
        (job.folder / "spec.json").write_text(json.dumps(spec))
        if not self.store.add_job(session, job):
            return False
        self.wake.set()
        return True

    def cancel(self, job: Job) -> None:
        with self.store.lock:
            if job.state == "queued":
                job.state, job.message, job.finished = "cancelled", "cancelled before it started", time.time()
            elif job.state == "running":
                job.cancel.set()

    def _order(self) -> list[Job]:
        """The running job, then the queued ones in the order they will run."""
        active = [job for job in self.store.all_jobs() if job.active]
        return sorted(active, key=lambda job: (job.state != "running", job.kind != "preview", job.created))

    def _next(self) -> Job | None:
        return next((job for job in self._order() if job.state == "queued"), None)

    def ahead(self) -> dict[str, int]:
        """job id -> how many jobs (of any session) will run or are running before it, for queued jobs."""
        with self.store.lock:
            return {job.id: index for index, job in enumerate(self._order()) if job.state == "queued"}

    def _loop(self) -> None:
        while not self.stopping.is_set():
            with self.store.lock:
                job = self._next()
                if job is not None:
                    job.state, job.started = "running", time.time()
            if job is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self._run(job)
            except (OSError, ValueError) as exc:  # the child could not start, or its result not be read
                what = "preview" if job.kind == "preview" else "run"
                with self.store.lock:
                    job.state, job.finished = "failed", time.time()
                    job.message = (f"the {what} could not be started on the server. Try again; if it keeps "
                                   f"failing, whoever runs the server finds the reason in its console")
                self._log_failure(job, f"the job could not run: {exc}")
            self.store.sweep()

    def _run(self, job: Job) -> None:
        log = job.folder / "log.txt"
        progress = ProgressLog(log)
        with open(log, "wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "unflicker.web.worker", str(job.folder)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=job.folder)
        while process.poll() is None:
            if job.cancel.is_set() or self.stopping.is_set():
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                break
            with self.store.lock:  # the page reads job.stages under the same lock
                progress.update(job.stages)
            time.sleep(self.poll)
        with self.store.lock:
            progress.update(job.stages)
        result_file = job.folder / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        complete = process.returncode == 0 and "files" in result  # it ended before a cancel could stop it
        cancelled = (job.cancel.is_set() or self.stopping.is_set()) and not complete
        failed = not cancelled and ("error" in result or not complete)
        if failed:  # on the console before the page (or anything watching the job) sees it failed
            code = process.returncode
            ended = f" (ended by {signal.Signals(-code).name})" if code < 0 and -code in signal.valid_signals() else ""
            self._log_failure(job, f"{result.get('error') or 'no result'}; exit code {code}{ended}", log)
        with self.store.lock:
            job.finished = time.time()
            if cancelled:
                job.state, job.message = "cancelled", "cancelled"
            elif failed:
                job.state, job.message = "failed", failure_message(job, result, process.returncode, self.roots)
            else:
                for stage in job.stages:
                    stage.update(done=stage["total"], eta=0)
                job.state, job.result, job.files = "done", result["summary"], result["files"]

    @staticmethod
    def _log_failure(job: Job, technical: str, log: Path | None = None) -> None:
        """The technical side of a failed job on the server's console: its error as the worker wrote it (paths
        and all) and, for an unexpected exception, the traceback from its log (the job's folder goes with it)."""
        lines = [f"unflicker: {job.kind} of {job.upload.name} failed (job {job.folder}): {technical}"]
        try:
            text = log.read_text("utf-8", "replace") if log is not None else ""
        except OSError:
            text = ""
        start = text.rfind("Traceback (most recent call last)")
        if start >= 0:
            lines.append(text[start:].rstrip())
        print("\n".join(lines), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(10)
