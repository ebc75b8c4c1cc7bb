"""Start the page: bind, print the address, serve until Ctrl+C, then stop the jobs and clean up."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

from unflicker.config import EngineConfig
from unflicker.errors import Terminated, UnflickerError
from unflicker.web.store import Limits


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_lines(host: str, port: int, auth: str | None, work_dir: str) -> list[str]:
    """What `unflicker serve` prints: the address, the work folder, and a warning off loopback."""
    shown = f"[{host}]" if ":" in host else host
    lines = [f"unflicker: serving on http://{shown}:{port}/ (Ctrl+C to stop)", f"unflicker: work folder {work_dir}"]
    if not is_loopback(host):
        lines.append(f"unflicker: warning: listening on {host}: anyone who can reach this machine on port {port} "
                     f"can use the page" + ("" if auth else "; add --auth user:password to ask for a login"))
    return lines


def serve(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, work_dir: str | None = None,
          limits: Limits | None = None, engine: EngineConfig | None = None) -> None:
    """Run the page until interrupted. port 0: a free port (the printed address tells which).
    engine: the workers and threads of every job (default: EngineConfig's, as `unflicker run`)."""
    try:
        import uvicorn

        from unflicker.web.app import create_app
    except ModuleNotFoundError as exc:
        raise UnflickerError(f"the web page needs {exc.name}: pip install 'unflicker[web]'") from None
    from unflicker.web.jobs import JobQueue
    from unflicker.web.store import Store

    if not 0 <= port <= 65535:
        raise UnflickerError(f"--port must be in 0..65535, got {port}")
    if auth is not None and (":" not in auth or not all(auth.partition(":")[::2])):
        raise UnflickerError("--auth takes user:password, neither empty")
    limits = limits or Limits()
    if not (limits.max_upload_mb > 0 and limits.max_seconds > 0 and limits.keep_items >= 1):
        raise UnflickerError("--max-upload-mb and --max-seconds must be above 0, --keep at least 1")
    engine = engine or EngineConfig()
    engine.check()
    os.environ.setdefault("TQDM_MININTERVAL", "0.2")
    store = Store(work_dir, limits)
    try:
        sock = _listen(host, port)
        queue = JobQueue(store, engine=engine)
        try:
            app = create_app(store, queue, auth, loopback=is_loopback(host))
            for line in startup_lines(host, sock.getsockname()[1], auth, str(store.root)):
                print(line, flush=True)
            config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
            try:
                uvicorn.Server(config).run(sockets=[sock])
            except Terminated:  # SIGTERM, re-raised by uvicorn once stopped: the CLI says so (exit 143)
                raise
            except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it stopped on: the normal way out
                pass
        finally:
            queue.close()
            sock.close()
            print("unflicker: stopped", file=sys.stderr)
    finally:
        store.close()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections wait from now on, so the printed address works at once
    except OSError as exc:
        sock.close()
        raise UnflickerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
