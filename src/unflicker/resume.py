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
from pathlib import Path

from unflicker import io


def input_fingerprint(info: io.VideoInfo) -> dict:
    """What identifies an input's content cheaply: path, count, size, and its files' sizes and mtimes."""
    files = [info.path / name for name in info.frame_names] if info.is_folder else [info.path]
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"path": str(info.path.resolve()), "frames": info.frame_count, "size": [info.width, info.height],
            "files": digest.hexdigest()}


TEMP_PREFIX = "unflicker-"
OWNER = "owner"
"""A temporary work folder's file naming the host and pid of the run that made it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def temporary_work() -> Path:
    """A new temporary work folder (a run without --keep-work), its owner recorded; first, the
    temporary folders of runs on this host that were killed outright (SIGKILL, power loss: no clean-up
    ran) are removed. A folder whose owner cannot be told (no owner file, another host, a live pid)
    is left alone."""
    root, host = Path(tempfile.gettempdir()), socket.gethostname()
    for folder in root.glob(f"{TEMP_PREFIX}*"):
        try:
            owner_host, pid = (folder / OWNER).read_text().rsplit(" ", 1)
            stale = owner_host == host and not _alive(int(pid))
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    (folder / OWNER).write_text(f"{host} {os.getpid()}")
    return folder


class JobFolder:
    """One job's part of a work folder."""

    def __init__(self, work: Path, key: str):
        self.path = Path(work) / "jobs" / key
        self.frames = self.path / "frames"
        self.running = self.path / "running"
        for folder in (self.path, self.frames, self.running):
            folder.mkdir(parents=True, exist_ok=True)

    def result(self, index: int) -> Path:
        return self.path / f"segment-{index:05d}.npy"

    def info(self, index: int) -> Path:
        """What the method reported about a finished segment (JSON)."""
        return self.path / f"segment-{index:05d}.json"

    def finished(self, count: int) -> set[int]:
        """Indices of the segments whose result is in place."""
        return {k for k in range(count) if self.result(k).is_file()}

    def spill(self, index: int) -> Path:
        return self.frames / f"segment-{index:05d}.npy"

    def write_record(self, record: dict) -> None:
        io.write_file_atomically(self.path / "config.json", json.dumps(record, indent=1).encode(), overwrite=True)

    def clear_transient(self) -> None:
        shutil.rmtree(self.frames, ignore_errors=True)
        shutil.rmtree(self.running, ignore_errors=True)
