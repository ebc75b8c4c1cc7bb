"""The work folder: finished segments persist there, so a run killed at any moment resumes.

A job's folder is `<work>/jobs/<key>/`, where the key is a digest of the input (path, frame count, size,
its files' sizes and modification times) and of the resolved settings the segments depend on
(method config, weights' digests, segment plan, threads). It holds:
- `segment-00003.npy`: one finished segment's span output ((T, H, W, 3) uint16), written under a
  temporary name and renamed, so a file that exists is complete;
- `segment-00003.json`: what the method reported about it (e.g. the gate's weight; shown in the summary);
- `config.json`: the resolved settings (what `config.record` returns);
- `frames/`, `running/`: spilled input frames of segments in flight and the pids of running tasks
  (both transient).
A rerun with the same input and settings finds its folder and runs only the missing segments;
new settings or a changed input get a new folder. Output-only options (strength, CRF, format)
are not in the key: changing them reruns no segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from unflicker import io
from unflicker.framestore import npy_whole
from unflicker.io.common import FULL, free_text, hold_lock, locked_by_another, size_text, try_lock


def input_fingerprint(info: io.VideoInfo) -> dict:
    """What identifies an input's content cheaply: path, count, size, and its files' sizes and mtimes."""
    files = [info.path / name for name in info.frame_names] if info.is_folder else [info.path]
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"path": str(info.path.resolve()), "frames": info.frame_count, "size": [info.width, info.height],
            "files": digest.hexdigest()}


def folder_bytes(folder: Path) -> int:
    """Bytes the files under `folder` take on disk (a file being written holds fewer than its size; 0 if none)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed meanwhile
        if path.is_file():
            blocks = getattr(stat, "st_blocks", None)  # not on every system (Windows)
            total += stat.st_size if blocks is None else min(stat.st_size, blocks * 512)
    return total


def no_space(path: str | os.PathLike, what: str = "temporary files") -> str:
    """The one line for a full disk met writing `path`: in a work folder (temporary or --keep-work; the folder
    itself too) or elsewhere, such as a frame store's temporary file (`path`: the folder it was made in). It names
    the folder to free or to move, what the run's work held there and what its disk has free now. what: the
    files' name where `path` is in no work folder."""
    path = Path(path)
    temporary = next((p for p in (path, *path.parents) if p.name.startswith(TEMP_PREFIX) and (p / OWNER).exists()),
                     None)
    kept = next((p.parent for p in path.parents if p.name == "jobs"), None)
    if temporary is not None:
        root, where, what = temporary, temporary.parent, "the temporary work folder"
    elif kept is not None:
        root, where, what = kept, kept, "the --keep-work folder"
    else:
        root, where = None, (path if path.is_dir() else path.parent)
    held = f"; the work there held {size_text(folder_bytes(root))}" if root is not None else ""
    if kept is not None and temporary is None:
        advice = "free space there, or give --keep-work a folder on a larger disk"
    elif where.resolve() == Path(tempfile.gettempdir()).resolve():
        advice = "set TMPDIR to a folder on a larger disk"
    else:
        advice = "free space there, or choose a folder on a larger disk (--shared-dir, TMPDIR)"
    return f"no space left on device in {where} for {what} ({free_text(where)}{held}): {advice}"


@contextmanager
def work_errors(folder: Path) -> Iterator[None]:
    """An OSError of the files in a work folder as one line (OutputError): a full disk's (`no_space`), else the
    error and the file."""
    from unflicker.errors import OutputError

    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise OutputError(no_space(exc.filename or folder)) from None
        raise OutputError(f"work folder {folder}: {exc.strerror or exc} ({exc.filename or 'a file in it'})") from None


TEMP_PREFIX = "unflicker-"
OWNER = "owner"
"""A temporary work folder's file: the host and pid of the run that made it (for people), locked
(flock) by that run for as long as it lives."""


class TemporaryWork:
    """The temporary work folder of a run without --keep-work, under the system's temp folder.

    Made, it first removes the temporary folders of runs on this host that were killed outright
    (SIGKILL, power loss: no clean-up ran): those whose owner file no process holds locked any more.
    A live run's folder is never taken, whatever pid namespace it runs in (the lock is the kernel's,
    and forked workers inherit it); folders of other hosts, or without an owner (another version,
    the web server's), are left alone."""

    def __init__(self, root: Path | None = None):
        """root: where to make it (default: the system's temp folder; --shared-dir for a cluster)."""
        root, host = Path(root or tempfile.gettempdir()).resolve(), socket.gethostname()
        for folder in root.glob(f"{TEMP_PREFIX}*"):
            owner = folder / OWNER
            try:
                owner_host = owner.read_text().rsplit(" ", 1)[0]
            except (OSError, ValueError):
                continue
            if owner_host == host and locked_by_another(owner) is False:
                shutil.rmtree(folder, ignore_errors=True)
        from unflicker.errors import OutputError

        self.path, self._fd = None, None
        try:
            self.path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
            self._fd = os.open(self.path / OWNER, os.O_WRONLY | os.O_CREAT, 0o600)
            try_lock(self._fd)  # just made: nobody else holds it (None: no locks here, and the folder is never swept)
            os.write(self._fd, f"{host} {os.getpid()}".encode())  # after the lock: an empty owner is never taken
        except OSError as exc:
            message = f"cannot make a temporary work folder in {root}: {exc.strerror or exc}"
            if exc.errno in FULL:  # named as a full disk of a run's work folder is, whether it was made or not
                message = no_space(self.path or root, "the temporary work folder")
            if self.path is not None:
                self.remove()
            raise OutputError(message) from None

    def remove(self) -> None:
        """Remove the folder (its lock goes with it)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JobFolder:
    """One job's part of a work folder, held by one run at a time.

    Made, it takes a lock (flock on `lock`) for as long as the run lives: a second run of the same input
    and settings on the same work folder (a repeated command, two batches) is refused with one line rather
    than let both write the same segment files. Holding it, it removes what killed runs left in it (partial
    segment results and spills, their running markers): no live run can be writing them."""

    LOCK = "lock"
    _held: set = set()
    """Job folders this process holds (a second open of one would conflict with its own lock)."""

    def __init__(self, work: Path, key: str):
        from unflicker.errors import OutputError

        self.path = Path(work) / "jobs" / key
        self.frames = self.path / "frames"
        self.running = self.path / "running"
        self._fd = None
        self._id = self.path.resolve()
        if self._id in JobFolder._held:
            raise OutputError(f"work folder {self.path} is this run's already: an input given twice (through a link?)")
        try:
            for folder in (self.path, self.frames, self.running):
                folder.mkdir(parents=True, exist_ok=True)
            self._fd = hold_lock(self.path / self.LOCK, f"work folder {self.path} is in use by another run of the "
                                 f"same input and settings: wait for it to end, or give this run another --keep-work")
        except OSError as exc:
            raise OutputError(no_space(self.path) if exc.errno in FULL else
                              f"cannot use work folder {self.path}: {exc.strerror or exc}") from None
        JobFolder._held.add(self._id)
        if self._fd is not None:  # without locks another run may be using what looks left over
            try:
                for stale in [*self.path.glob(".segment-*.partial*"), *self.frames.glob(".partial-*"),
                              *self.running.iterdir()]:
                    stale.unlink(missing_ok=True)
            except OSError:
                pass  # left for a later run: this one writes under names of its own

    def release(self) -> None:
        """Let another run have the folder (the process's end does the same)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        JobFolder._held.discard(self._id)

    def result(self, index: int) -> Path:
        return self.path / f"segment-{index:05d}.npy"

    def info(self, index: int) -> Path:
        """What the method reported about a finished segment (JSON)."""
        return self.path / f"segment-{index:05d}.json"

    def finished(self, count: int) -> set[int]:
        """Indices of the segments whose result is in place and whole. One that is not (renamed into place but
        never flushed before a power loss, a disk error, a copy cut short) is removed, with its report: it runs
        again."""
        from unflicker.errors import warn

        done = set()
        for k in range(count):
            path = self.result(k)
            if not path.is_file():
                continue
            if npy_whole(path):
                done.add(k)
                continue
            warn(f"work folder {self.path}: {path.name} is incomplete or unreadable (a power loss, a disk error?): "
                 f"that segment runs again")
            for stale in (path, self.info(k)):
                stale.unlink(missing_ok=True)
        return done

    def spill(self, index: int) -> Path:
        return self.frames / f"segment-{index:05d}.npy"

    def write_record(self, record: dict) -> None:
        self._write(self.path / "config.json", lambda file: file.write(json.dumps(record, indent=1).encode()))

    def write_result(self, index: int, info: dict, frames: np.ndarray | None = None) -> None:
        """A finished segment's report, and its frames where they came through the engine (else its task wrote them)."""
        if frames is not None:
            self._write(self.result(index), lambda file: np.save(file, frames))
        self._write(self.info(index), lambda file: file.write(json.dumps(info).encode()))

    def _write(self, path: Path, write: Callable) -> None:
        """write(file) into `path` under a temporary name, renamed into place (replacing): OutputError if it fails."""
        temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        with work_errors(self.path):
            try:
                with open(temp, "wb") as file:
                    write(file)
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise

    def clear_transient(self) -> None:
        """Spills, running markers and partial results (of workers stopped with the run: a kill, Ctrl-C)."""
        shutil.rmtree(self.frames, ignore_errors=True)
        shutil.rmtree(self.running, ignore_errors=True)
        for partial in self.path.glob(".segment-*.partial*"):
            partial.unlink(missing_ok=True)
