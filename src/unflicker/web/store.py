"""What the web page keeps: a work folder, per-browser sessions, their uploads and jobs.

Everything the server writes lives in `<work>/items/<id>/`, one folder per upload or job, with a
random id. A browser session (a random cookie) owns the ids it created and sees nothing else;
`Store.served_file` hands out only files a job recorded as its output, never a path a request
names. Retention removes a session's oldest finished items beyond a count, then the oldest of any
session beyond a total count, and any older than an age; a running job and its upload are never removed.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from unflicker.errors import OutputError
from unflicker.io.common import writable_folder

MARKER = ".unflicker-serve"
"""File that marks a folder as a work folder of `unflicker serve` (the only kind it empties)."""
ID_PATTERN = re.compile(r"[0-9a-f]{16}")
KEEP_TOTAL_SESSIONS = 5
"""The work folder keeps at most this many sessions' worth of finished items (Limits.keep_total)."""


@dataclass
class Limits:
    """What one upload and the work folder may hold; the `serve` options set them."""

    max_upload_mb: float = 2000.0
    """Largest upload, in MB (10^6 bytes)."""
    max_seconds: float = 600.0
    """Longest video, in seconds (frames / frame rate)."""
    max_side: int = 4096
    """Largest frame width or height, in pixels."""
    keep_items: int = 40
    """Finished uploads and jobs each browser session keeps; its oldest are removed first."""
    keep_total: int = 200
    """Finished uploads and jobs kept over all sessions (the work folder's bound); beyond it the oldest of any
    session are removed first. `unflicker serve --keep N` sets it to KEEP_TOTAL_SESSIONS * N."""
    keep_hours: float = 24.0
    """Finished uploads and jobs older than this are removed."""
    preview_seconds: float = 2.0
    """Length of the stretch a preview deflickers."""

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


@dataclass
class Upload:
    """A video (or a zip of frames) one session uploaded, and what the page shows about it."""

    id: str
    folder: Path
    name: str
    """The file name the browser gave, for display and for the download's name only."""
    created: float = field(default_factory=time.time)
    path: Path | None = None
    """The file (or frame folder) to read: set once the upload is checked."""
    facts: str = ""
    frames: int = 0
    fps: float = 0.0
    means: list[list[float]] | None = None
    """(T, 3) per-frame channel means in [0, 1], computed after the upload; None until then."""
    means_error: str | None = None

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "facts": self.facts, "frames": self.frames, "fps": self.fps,
                "means": self.means, "means_error": self.means_error}


@dataclass
class Job:
    """One preview or run of an upload; the queue in jobs.py runs it, the page polls it."""

    id: str
    folder: Path
    kind: str
    """'preview' or 'run'."""
    upload: Upload
    settings: dict
    frame: int = 0
    """preview: the frame the stretch is centred on."""
    created: float = field(default_factory=time.time)
    state: str = "queued"
    """queued, running, done, failed or cancelled."""
    message: str = ""
    stages: list[dict] = field(default_factory=list)
    """[{name, done, total, eta}] per progress bar seen so far, in order."""
    started: float | None = None
    finished: float | None = None
    result: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    """label -> file name in `folder`: the only files of this job the server serves."""
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def public(self) -> dict:
        seconds = None
        if self.started is not None:
            seconds = round((self.finished or time.time()) - self.started, 1)
        return {"id": self.id, "kind": self.kind, "upload": self.upload.id, "upload_name": self.upload.name,
                "settings": self.settings, "frame": self.frame, "state": self.state, "message": self.message,
                "stages": [dict(stage) for stage in self.stages], "seconds": seconds, "result": dict(self.result),
                "files": {label: f"/files/{self.id}/{name}" for label, name in self.files.items()}}


@dataclass
class Session:
    key: str = ""
    """Its key in the store (the digest of its cookie token); "" for a session that is not kept."""
    uploads: dict[str, Upload] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)


class Store:
    """Sessions and the work folder. Thread-safe: every method takes the lock it needs.

    work_dir: the folder for uploads and job files (created; must be empty or an earlier work
    folder of `unflicker serve`, whose items are removed); None: a new temporary folder.
    `close()` removes the items (and a temporary folder).
    """

    def __init__(self, work_dir: str | os.PathLike | None = None, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.temporary = work_dir is None
        root = Path(tempfile.mkdtemp(prefix="unflicker-serve-")) if work_dir is None else Path(work_dir)
        writable_folder(root, "--work-dir")
        if any(root.iterdir()) and not (root / MARKER).is_file():
            raise OutputError(f"{root} is not empty and is not a work folder of `unflicker serve`: give an empty "
                              f"or new folder")
        (root / MARKER).write_text("work folder of `unflicker serve`: its items/ are removed on start and on stop\n")
        self.root = root.resolve()
        self.items = self.root / "items"
        # Sessions live in memory: items an earlier server left cannot be reached any more.
        shutil.rmtree(self.items, ignore_errors=True)
        self.items.mkdir()
        self.lock = threading.RLock()
        self._sessions: dict[str, Session] = {}
        self._sending: collections.Counter[str] = collections.Counter()
        """Job id -> its files being sent now: the sweep leaves these jobs alone (see served_file)."""

    # -- sessions ---------------------------------------------------------------------------
    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def session(self, token: str | None, create: bool = False) -> tuple[Session, str | None]:
        """(the session of a cookie token, a new token to set if one was created).

        A missing or unknown token gets a new session only when `create` (an upload), else an
        empty one that is not kept: requests that store nothing leave nothing behind.
        """
        with self.lock:
            if token and self._key(token) in self._sessions:
                return self._sessions[self._key(token)], None
            if not create:
                return Session(), None
            token = secrets.token_urlsafe(24)
            session = self._sessions[self._key(token)] = Session(self._key(token))
            return session, token

    # -- items ------------------------------------------------------------------------------
    def new_folder(self) -> tuple[str, Path]:
        item_id = secrets.token_hex(8)
        folder = self.items / item_id
        folder.mkdir()
        return item_id, folder

    def add_upload(self, session: Session, upload: Upload) -> None:
        with self.lock:
            session.uploads[upload.id] = upload
            self._keep(session)
        self.sweep()

    def add_job(self, session: Session, job: Job) -> bool:
        """Add a job of one of the session's uploads; False, with the job's folder removed, if a sweep
        removed that upload since it was looked up (once added, the active job keeps it from the sweep)."""
        with self.lock:  # the sweep cannot remove the upload between this check and the add
            if session.uploads.get(job.upload.id) is not job.upload:
                shutil.rmtree(job.folder, ignore_errors=True)
                return False
            session.jobs[job.id] = job
            self._keep(session)
        self.sweep()
        return True

    def _keep(self, session: Session) -> None:
        """Keep a session again that a sweep dropped while it was empty (a new one, during its first upload)."""
        if session.key:
            self._sessions[session.key] = session

    def upload(self, session: Session, upload_id: str) -> Upload | None:
        """The session's checked upload with this id, or None (a malformed or foreign id too)."""
        with self.lock:
            upload = session.uploads.get(upload_id) if isinstance(upload_id, str) else None
            return upload if upload is not None and upload.path is not None else None

    def job(self, session: Session, job_id: str) -> Job | None:
        with self.lock:
            return session.jobs.get(job_id) if isinstance(job_id, str) else None

    def served_file(self, session: Session, job_id: str, name: str) -> tuple[Job, Path] | None:
        """(the session's job, the path of a file it wrote and recorded under `name`), else None.

        Only names in `job.files` are looked up, and the file must be a regular file (not a
        symlink) directly inside the job's folder inside the work folder. The sweep leaves the
        job alone until `sent(job_id)`: call it once the file is sent (or its sending failed).
        """
        with self.lock:  # the sweep cannot remove the job between the look-up and the pin
            job = session.jobs.get(job_id)
            if job is None or not ID_PATTERN.fullmatch(job_id) or name not in job.files.values():
                return None
            path = job.folder / name
            try:
                info = os.lstat(path)
            except OSError:
                return None
            if not stat.S_ISREG(info.st_mode) or path.resolve().parent != (self.items / job_id).resolve() \
                    or not path.resolve().is_relative_to(self.root):
                return None
            self._sending[job_id] += 1
            return job, path

    def sent(self, job_id: str) -> None:
        """A file that `served_file` handed out is sent: its job may be swept again."""
        with self.lock:
            self._sending[job_id] -= 1
            if self._sending[job_id] <= 0:
                del self._sending[job_id]

    def sweep(self) -> None:
        """Remove finished items older than `keep_hours`, a session's oldest beyond its `keep_items` (so one
        busy session does not evict another's), then the oldest of any session beyond `keep_total`."""
        with self.lock:
            in_use = {job.upload.id for s in self._sessions.values() for job in s.jobs.values() if job.active}
            too_old = time.time() - self.limits.keep_hours * 3600
            kept, removed = [], []
            for sid, s in self._sessions.items():
                finished = sorted(((item.created, sid, kind, item)
                                   for kind, items in (("uploads", s.uploads), ("jobs", s.jobs))
                                   for item in items.values()
                                   if not (kind == "jobs" and (item.active or item.id in self._sending))
                                   and not (kind == "uploads" and item.id in in_use)), key=lambda entry: entry[0])
                excess = len(finished) - self.limits.keep_items
                for index, entry in enumerate(finished):
                    (removed if index < excess or entry[0] < too_old else kept).append(entry)
            kept.sort(key=lambda entry: entry[0])
            removed += kept[: max(len(kept) - self.limits.keep_total, 0)]
            for created, sid, kind, item in removed:
                getattr(self._sessions[sid], kind).pop(item.id, None)
                shutil.rmtree(item.folder, ignore_errors=True)
            for sid in [sid for sid, s in self._sessions.items() if not s.uploads and not s.jobs]:
                del self._sessions[sid]  # its browser gets a new one with its next upload

    def forget(self, session: Session, upload: Upload) -> None:
        """Drop an upload that failed its checks, with its folder."""
        with self.lock:
            session.uploads.pop(upload.id, None)
        shutil.rmtree(upload.folder, ignore_errors=True)

    def all_jobs(self) -> list[Job]:
        with self.lock:
            return [job for s in self._sessions.values() for job in s.jobs.values()]

    def close(self) -> None:
        """Remove every upload and job (a new server could not reach them): the whole folder if temporary, else
        its items, the folder the user named being kept."""
        shutil.rmtree(self.root if self.temporary else self.items, ignore_errors=True)
