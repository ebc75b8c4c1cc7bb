"""The HTTP side of `unflicker serve`: the page, a small JSON API, and the job files.

    GET  /                    the page
    GET  /api/state           this session's uploads and jobs, the limits, the defaults and the output formats
                              with the bit depths each holds (?have=ID,...:
                              without the brightness means of these uploads, which the page holds)
    POST /api/upload          the file as the request body, its name in X-Filename (URL-encoded)
    POST /api/preview         {"upload", "frame", "settings"} -> a preview job
    POST /api/run             {"upload", "settings"} -> a run job
    POST /api/cancel          {"job"}
    GET  /files/{job}/{name}  a file the session's job wrote (?download=1: as an attachment)

Every request passes the same checks first: HTTP basic auth when set, a loopback Host header
when bound to loopback (against DNS rebinding), and a same-origin Origin on POSTs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import secrets
import shutil
import threading
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from unflicker.errors import InputError
from unflicker.web.jobs import DEFAULTS, FORMATS, VIDEO_SUFFIXES, JobQueue, check_upload, compute_means, \
    parse_settings
from unflicker.web.store import Job, Session, Store, Upload

COOKIE = "unflicker_session"
UPLOAD_IDLE_S = 60.0
"""An upload that sends nothing for this long is ended (408) and its folder removed."""
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
MAX_ACTIVE_JOBS = 10
"""Queued or running jobs one session may have."""
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


class _JobFile(FileResponse):
    """A job's file; `sent` is called once it is sent or its sending failed (Store.served_file)."""

    def __init__(self, path: Path, sent, **kwargs):
        super().__init__(path, **kwargs)
        self.sent = sent

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.sent()


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def _basic_auth_ok(header: str | None, user_password: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return secrets.compare_digest(given.encode(), user_password.encode())


def _host_name(value: str) -> str:
    return (urlsplit(f"//{value}").hostname or "").lower()


def create_app(store: Store, queue: JobQueue, auth: str | None = None, loopback: bool = True) -> Starlette:
    """The Starlette app over a Store and its JobQueue.

    auth: "user:password" for HTTP basic auth, or None. loopback: the server listens on a
    loopback address only, so any other Host header is refused.
    """

    def refusal(request: Request) -> Response | None:
        if auth is not None and not _basic_auth_ok(request.headers.get("authorization"), auth):
            return Response("log in to use this page", 401, {"WWW-Authenticate": 'Basic realm="unflicker"'})
        host = request.headers.get("host", "")
        if loopback and _host_name(host) not in LOOPBACK_NAMES:
            return _error("this server only answers to its local address (127.0.0.1 or localhost)", 403)
        origin = request.headers.get("origin")
        if request.method == "POST" and origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return _error("requests from other sites are refused", 403)
        return None

    def guarded(handler, creates_session: bool = False):
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            refused = refusal(request)
            if refused is not None:
                return refused
            session, new_token = store.session(request.cookies.get(COOKIE), creates_session)
            try:
                response = await handler(request, session)
            except InputError as exc:
                response = _error(str(exc))
            except OSError as exc:  # a job's folder or spec cannot be written: the disk is full, or read-only
                response = _error(f"the server cannot store the job's files: {exc.strerror or exc}", 507)
            for name, value in _HEADERS.items():
                response.headers.setdefault(name, value)
            if new_token is not None:
                response.set_cookie(COOKIE, new_token, httponly=True, samesite="strict")
            return response

        return endpoint

    async def body_json(request: Request) -> dict:
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise InputError("the request is not JSON") from None
        except RecursionError:  # nested deeper than the JSON decoder goes
            raise InputError("the request is nested too deeply") from None
        if not isinstance(data, dict):
            raise InputError("the request must be a JSON object")
        return data

    @guarded
    async def page(request: Request, session: Session) -> Response:
        return HTMLResponse(resources.files("unflicker.web").joinpath("page.html").read_text("utf-8"))

    @guarded
    async def state(request: Request, session: Session) -> Response:
        with store.lock:
            # The means (3 numbers a frame) go once: the page names the uploads whose means it holds in ?have=
            have = set(request.query_params.get("have", "").split(","))
            uploads = [{**u.public(), **({"means": None} if u.id in have else {})}
                       for u in sorted(session.uploads.values(), key=lambda u: u.created)]
            ahead = queue.ahead()
            jobs = [{**j.public(), "ahead": ahead.get(j.id)} for j in sorted(session.jobs.values(),
                                                                             key=lambda j: j.created)]
        limits = store.limits
        # Each format with the bit depths it holds, so the page greys out the others (the server refuses them too).
        formats = {key: {"label": chosen.label, "depths": list(chosen.depths)} for key, chosen in FORMATS.items()}
        return JSONResponse({"uploads": uploads, "jobs": jobs, "defaults": DEFAULTS, "formats": formats,
                             "limits": {"max_upload_mb": limits.max_upload_mb, "max_seconds": limits.max_seconds,
                                        "max_side": limits.max_side, "preview_seconds": limits.preview_seconds}})

    async def upload(request: Request, session: Session) -> Response:
        # The browser's file name is shown and used for the download's name, never as a path.
        name = Path(unquote(request.headers.get("x-filename", "")).replace("\\", "/")).name or "upload"
        if len(name) > 120:  # shortened, its extension kept: it tells a zip of frames from a video
            extension = Path(name).suffix if len(Path(name).suffix) <= 8 else ""
            name = name[: 120 - len(extension)] + extension
        suffix = Path(name).suffix.lower()
        limit = store.limits.max_upload_bytes
        too_large = (f"{name} is larger than this server's upload limit of {store.limits.max_upload_mb:g} MB "
                     f"(unflicker serve --max-upload-mb)")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _error(too_large, 413)
        item_id, folder = store.new_folder()
        item = Upload(item_id, folder, name)
        received = folder / f"input{suffix if suffix in VIDEO_SUFFIXES else '.video'}"
        size = 0
        try:
            with open(received, "wb") as file:
                chunks = request.stream()
                while True:
                    try:  # a client that stops sending (its connection still open) does not hold a folder for ever
                        chunk = await asyncio.wait_for(anext(chunks), UPLOAD_IDLE_S)
                    except StopAsyncIteration:
                        break
                    size += len(chunk)
                    if size > limit:
                        return _error(too_large, 413)
                    file.write(chunk)
            if size == 0:
                raise InputError("the file is empty")
            await run_in_threadpool(check_upload, store, item, received)
        except InputError as exc:
            # The sentence names the file once: "x.mp4 cannot be used: no video stream", not "... in x.mp4".
            reason = str(exc).removeprefix(f"cannot read {name}: ").removeprefix(f"{name}: ")
            reason = reason.removesuffix(f" in {name}")
            return _error(f"{name} cannot be used: {reason}")
        except ClientDisconnect:  # the browser went away mid-upload: nothing to answer, nothing kept
            return Response(status_code=400)
        except asyncio.TimeoutError:
            return _error(f"{name}: the upload stopped sending for {UPLOAD_IDLE_S:g} s", 408)
        except OSError as exc:  # after TimeoutError, one of its kind: the work folder's disk is full, or read-only
            return _error(f"{name} cannot be stored on the server: {exc.strerror or exc}", 507)
        finally:
            if item.path is None:
                shutil.rmtree(folder, ignore_errors=True)
        store.add_upload(session, item)
        threading.Thread(target=compute_means, args=(item,), name="unflicker-means", daemon=True).start()
        return JSONResponse(item.public())

    upload = guarded(upload, creates_session=True)

    def new_job(session: Session, data: dict, kind: str) -> Response:
        gone = "no such upload in this browser session; upload the video again"
        item = store.upload(session, data.get("upload"))
        if item is None:
            return _error(gone, 404)
        settings = parse_settings(data.get("settings") or {})
        frame = data.get("frame", 0)
        if not isinstance(frame, int) or not 0 <= frame < item.frames:
            raise InputError(f"frame must be a whole number from 0 to {item.frames - 1}")
        with store.lock:
            if sum(job.active for job in session.jobs.values()) >= MAX_ACTIVE_JOBS:
                return _error(f"at most {MAX_ACTIVE_JOBS} jobs can wait at once; cancel one or wait", 429)
        job_id, folder = store.new_folder()
        job = Job(job_id, folder, kind, item, settings, frame)
        try:
            submitted = queue.submit(session, job)
        except OSError:  # its spec could not be written: no folder is left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not submitted:  # a sweep removed the upload since the look-up above
            return _error(gone, 404)
        return JSONResponse(job.public())

    @guarded
    async def preview(request: Request, session: Session) -> Response:
        return new_job(session, await body_json(request), "preview")

    @guarded
    async def run(request: Request, session: Session) -> Response:
        return new_job(session, await body_json(request), "run")

    @guarded
    async def cancel(request: Request, session: Session) -> Response:
        job = store.job(session, (await body_json(request)).get("job"))
        if job is None:
            return _error("no such job in this browser session", 404)
        queue.cancel(job)
        return JSONResponse(job.public())

    @guarded
    async def files(request: Request, session: Session) -> Response:
        job_id, name = request.path_params["job"], request.path_params["name"]
        found = store.served_file(session, job_id, name)  # one look-up: the job is kept until the file is sent
        if found is None:
            # Opened by a link, an image or a player, never by the page's script: a sentence, not JSON.
            return PlainTextResponse("This file is no longer kept by the server (or belongs to another browser); "
                                     "run the job again.", 404)
        job, path = found
        if request.query_params.get("download"):
            # Letters, digits and spaces kept ("My holiday-unflicker.mp4"); what a file system may refuse replaced.
            stem = "".join(c if c.isalnum() or c in " -_.(),'&+" else "_" for c in Path(job.upload.name).stem)
            stem = stem.strip(" .")
            label = "compare" if name.startswith(("compare", "preview")) else "unflicker"
            return _JobFile(path, lambda: store.sent(job_id), filename=f"{stem}-{label}{path.suffix}")
        return _JobFile(path, lambda: store.sent(job_id))

    routes = [Route("/", page), Route("/api/state", state), Route("/api/upload", upload, methods=["POST"]),
              Route("/api/preview", preview, methods=["POST"]), Route("/api/run", run, methods=["POST"]),
              Route("/api/cancel", cancel, methods=["POST"]), Route("/files/{job}/{name}", files)]
    return Starlette(routes=routes)
