"""Engines run segment tasks (segments.run_segment) and only schedule: in this process, in a local
process pool, or as Ray tasks. `run_jobs` keeps every worker busy with the segments of one or many
videos (one queue), hands results back to their jobs as they finish, and lets the jobs stitch and
write in order while the workers go on.

A job (pipeline.Job) offers `start()`, `next_task()`, `pending()`, `progress(segment index, fraction)`,
`deliver(result)`, `advance() -> finished`, `fail(error)` and `close()` (called once none of its tasks is
running); errors of one job do not stop the others.

Progress: a running segment reports the fraction of its work done (segments.SegmentProgress). In this
process the report is a call; a local worker writes each fraction as 8 bytes (a float64) to a pipe of
its own, beside its results' pipe (atomic writes, dropped when the pipe is full: a report is never
worth a wait); a Ray task sends it to a small actor of the run (`_Board`, no CPU), which the driver
reads while it waits.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import ipaddress
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

from unflicker.config import EngineConfig
from unflicker.errors import InputError, UnflickerError, keep_sigterm_handler, warn
from unflicker.ray_watchdog import remove_session
from unflicker.segments import (MethodSpec, SegmentResult, SegmentTask, file_error, own_process, preload_method,
                                run_segment)


class WorkerDied(UnflickerError):
    """A segment's worker died more often than the retries allow."""


Progress = Callable[[object, float], None]
"""progress(handle, fraction): the task `handle` has done `fraction` of its work."""

PROGRESS_RECORD = struct.Struct("<d")
"""One progress report on a local worker's progress pipe: the fraction done, a little-endian float64."""


class Executor(Protocol):
    capacity: int
    """Tasks worth having in flight at once (workers, plus one ready so none waits)."""

    def warm(self, spec: MethodSpec) -> None:
        """Prepare the workers for tasks of this method ahead of the first one (or nothing)."""
        ...

    def submit(self, task: SegmentTask) -> object: ...

    def wait(self, handles: Iterable[object], progress: Progress | None = None
             ) -> list[tuple[object, SegmentResult | BaseException]]:
        """Block until at least one handle is done; (handle, result or the task's error) for each done one.
        Meanwhile `progress(handle, fraction)` as running tasks report how far they are (where they can)."""
        ...

    def fit(self, frame: tuple[int, int], spec: MethodSpec | None = None) -> None:
        """A job of frames of this size (width, height) and method starts: run no more workers than memory holds
        for them."""
        ...

    def close(self) -> None: ...


def workers_for(engine: EngineConfig, frame: tuple[int, int], limit: int, free: int | None = None,
                spec: MethodSpec | None = None) -> int:
    """At most `limit` workers, no more than the available memory (`free` bytes where given) holds for frames
    of this size and the method `spec` (`--workers` given: as given); a warning names the numbers where the
    memory is what limits them."""
    from unflicker.config import available_memory, memory_needs

    free = available_memory() if free is None else free
    fits = min(limit, engine.local_workers(frame, free, spec))
    if fits < limit:
        main, worker = memory_needs(*frame, spec)
        warn(f"{fits} worker{'s' if fits > 1 else ''} at once, not {limit}: at {frame[0]}x{frame[1]} each "
             f"takes up to about {worker / 2**30:.1f} GB and the run itself {main / 2**30:.1f} GB, with "
             f"{(free or 0) / 2**30:.1f} GB free (--workers N sets the number)")
    return fits


class InProcess:
    """Runs each task in this process when waited for (--workers 1)."""

    capacity = 1

    def __init__(self, engine: EngineConfig):
        self._tasks: dict[int, SegmentTask] = {}
        self._next = 0
        self._lanes = engine.lanes_for(1)

    def warm(self, spec: MethodSpec) -> None:
        preload_method(spec)  # imports and weights load on a thread while this process decodes

    def submit(self, task: SegmentTask) -> object:
        self._next += 1
        self._tasks[self._next] = dataclasses.replace(task, lanes=self._lanes)
        return self._next

    def wait(self, handles, progress: Progress | None = None):
        handle = next(iter(handles))
        task = self._tasks.pop(handle)
        report = None if progress is None else (lambda fraction: progress(handle, fraction))
        try:
            return [(handle, run_segment(task, report))]
        except UnflickerError as exc:
            return [(handle, exc)]
        except OSError as exc:
            return [(handle, file_error(task, exc))]

    def fit(self, frame: tuple[int, int], spec: MethodSpec | None = None) -> None:
        pass  # one segment at a time already

    def close(self) -> None:
        self._tasks.clear()


class _Worker:
    """One `python -m unflicker.worker` process, the task it is running, and the read end of the
    pipe its task's progress reports come on (PROGRESS_RECORD; None once the worker closed it)."""

    def __init__(self):
        read, write = os.pipe()
        try:
            self.process = subprocess.Popen([sys.executable, "-m", "unflicker.worker", "--progress-fd", str(write)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self.progress_fd: int | None = read
        self.handle: int | None = None

    def send(self, handle: int | None, task: SegmentTask | MethodSpec) -> None:
        """A task to run (handle: its id), or a method spec to build ahead (handle None: no reply)."""
        self.progress()  # reports of the worker's last task that came after its result are dropped
        self.handle = handle
        pickle.dump(task, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.flush()

    def progress(self) -> float | None:
        """The latest fraction reported since the last call (None: none came)."""
        latest = None
        while self.progress_fd is not None:
            try:
                data = os.read(self.progress_fd, PROGRESS_RECORD.size * 512)  # whole records: atomic writes
            except BlockingIOError:
                break
            if not data:  # the worker closed it (it is ending): stop selecting on it
                os.close(self.progress_fd)
                self.progress_fd = None
                break
            latest = PROGRESS_RECORD.unpack_from(data, len(data) - PROGRESS_RECORD.size)[0]
        return latest

    def receive(self):
        """The task's outcome, or None if the process died."""
        try:
            status, payload = pickle.load(self.process.stdout)
        except (EOFError, pickle.UnpicklingError, OSError):
            return None
        self.handle = None
        return payload

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:  # a dead worker's pipe may refuse its last flush
                pass
        if self.progress_fd is not None:
            os.close(self.progress_fd)
            self.progress_fd = None


class LocalPool:
    """Worker processes on this machine (python -m unflicker.worker), one task each at a time; a
    task whose worker died runs again on a fresh one (up to `retries` times)."""

    def __init__(self, engine: EngineConfig, tasks: int | None = None, frame: tuple[int, int] | None = None,
                 spec: MethodSpec | None = None):
        """tasks: how many tasks the run has, or will have at least, if known: that many workers start
        now (at most engine.local_workers(frame)); more start only when tasks wait for them. frame, spec: the
        (width, height) and method of the run's video so far whose worker needs the most memory (see `fit`)."""
        from unflicker.config import available_memory

        self.engine = engine
        # Measured once, before this pool's workers take any: measured again later it would count their
        # memory as taken and cut the pool at each job's start (and warn each time).
        self._free = available_memory()
        self._fitted = 0.0  # the largest worker's memory need the limit counts
        self.limit = engine.local_workers()
        if frame is not None:
            self._limit_to(frame, spec)
        self.capacity = self.limit + 1
        self.retries = engine.retries
        self._pool = [_Worker() for _ in range(min(self.limit, tasks or self.limit))]
        self._lanes = engine.lanes_for(len(self._pool))
        self._queue: list[int] = []
        self._tasks: dict[int, tuple[SegmentTask, int]] = {}
        self._failed: list[tuple[int, WorkerDied]] = []
        """Tasks whose retries ran out when they were sent (their workers found dead), for `wait` to hand back."""
        self._next = 0

    def _limit_to(self, frame: tuple[int, int], spec: MethodSpec | None) -> None:
        """Lower the limit to the workers the memory free at the pool's start holds for frames of this size and
        method (a worker needing no more than one counted already changes nothing)."""
        from unflicker.config import memory_needs

        need = memory_needs(*frame, spec)[1]
        if need > self._fitted:
            self._fitted = need
            self.limit = workers_for(self.engine, frame, self.limit, self._free, spec)

    def fit(self, frame: tuple[int, int], spec: MethodSpec | None = None) -> None:
        self._limit_to(frame, spec)
        self.capacity = self.limit + 1
        self._retire_surplus()

    def _retire_surplus(self) -> None:
        """Idle workers beyond the limit end (busy ones are retired once their task is done)."""
        for worker in [w for w in self._pool if w.handle is None][:max(len(self._pool) - self.limit, 0)]:
            worker.kill()
            self._pool.remove(worker)

    def warm(self, spec: MethodSpec) -> None:
        """Have every worker build the method now (imports, weights), ahead of its first task."""
        for worker in self._pool:
            try:
                worker.send(None, spec)
            except (BrokenPipeError, OSError):  # a dead worker is replaced when a task needs it
                pass

    def submit(self, task: SegmentTask) -> int:
        self._next += 1
        self._tasks[self._next] = (dataclasses.replace(task, lanes=self._lanes), 0)
        self._queue.append(self._next)
        self._dispatch()
        return self._next

    def _dispatch(self) -> None:
        self._retire_surplus()
        idle = sum(worker.handle is None for worker in self._pool)
        for _ in range(min(len(self._queue) - idle, self.limit - len(self._pool))):
            self._pool.append(_Worker())
        for i in range(len(self._pool)):
            # A worker found dead here (it died idle) is replaced in its place: the fresh one takes the task next.
            while self._pool[i].handle is None and self._queue:
                handle = self._queue.pop(0)
                try:
                    self._pool[i].send(handle, self._tasks[handle][0])
                except (BrokenPipeError, OSError):
                    failed = self._replace(self._pool[i], handle)
                    if failed is not None:
                        self._failed.append(failed)

    def _replace(self, worker: _Worker, handle: int) -> tuple[int, WorkerDied] | None:
        """The worker died running `handle`: a fresh worker, and the task queued again (or failed)."""
        worker.kill()
        self._pool[self._pool.index(worker)] = _Worker()
        task, tries = self._tasks[handle]
        if tries >= self.retries:
            del self._tasks[handle]
            return handle, WorkerDied(f"segment {task.segment.index} of {task.job}: its worker died {tries + 1} times")
        self._tasks[handle] = (task, tries + 1)
        self._queue.insert(0, handle)
        return None

    def wait(self, handles, progress: Progress | None = None):
        wanted = set(handles)
        while True:
            failed = [item for item in self._failed if item[0] in wanted]
            if failed:  # no worker is running these: nothing to select on
                self._failed = [item for item in self._failed if item[0] not in wanted]
                return failed
            busy = {w.process.stdout: w for w in self._pool if w.handle is not None}
            reporting = {w.progress_fd: w for w in busy.values() if progress is not None and w.progress_fd is not None}
            ready, _, _ = select.select([*busy, *reporting], [], [])
            for fd in (fd for fd in ready if fd in reporting):  # before the results: a report is its task's
                worker = reporting[fd]
                fraction = worker.progress()
                if fraction is not None and worker.handle in wanted:
                    progress(worker.handle, fraction)
            out = []
            for pipe in (pipe for pipe in ready if pipe in busy):
                worker = busy[pipe]
                handle = worker.handle
                payload = worker.receive()
                if payload is None:
                    failed = self._replace(worker, handle)
                    if failed is not None:
                        out.append(failed)
                    continue
                del self._tasks[handle]
                out.append((handle, payload))
            self._dispatch()
            out = [item for item in out if item[0] in wanted]
            if out:
                return out

    def close(self) -> None:
        for worker in self._pool:
            worker.kill()
        self._pool.clear()


class _Board:
    """A Ray actor of the run: the latest fraction each running task reported (by key), taken by the driver."""

    def __init__(self):
        self._latest: dict[int, float] = {}

    def report(self, key: int, fraction: float) -> None:
        self._latest[key] = fraction

    def take(self) -> dict[int, float]:
        latest, self._latest = self._latest, {}
        return latest


def _ray_segment(task: SegmentTask, board, key: int, own: bool = False) -> SegmentResult:
    """run_segment as a Ray task, its progress sent to the run's board (fire and forget: never waited for);
    `own`: the Ray is the run's own, whose workers do nothing else (a cluster's or a host program's Ray keeps its
    workers' allocator and collector as they are: see own_process)."""
    if own:
        own_process()
    return run_segment(task, None if board is None else (lambda fraction: board.report.remote(key, fraction)))


TOKEN_HINT = "a cluster started with Ray's token authentication (its default) needs its token here: the head's " \
    "~/.ray/auth_token, or RAY_AUTH_TOKEN"


def _host_port(address: str) -> tuple[str, int] | None:
    """A cluster's HOST:PORT, or None for what ray.init finds or refuses itself (auto, ray://, a bare host)."""
    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    return (host, int(port)) if port.isdigit() else None


HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""The client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with a SETTINGS frame."""


def _resolve_auto(address: str) -> tuple[str, str]:
    """(the address to connect to, how it was found): `auto` is RAY_ADDRESS or the last `ray start --head` of
    this machine (/tmp/ray/ray_current_cluster, which a head that died leaves behind), as Ray finds it."""
    if address != "auto":
        return address, ""
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:  # another Ray version: ray.init finds it
        return address, ""
    try:
        found = get_ray_address_from_environment("auto", None)
    except ConnectionError as exc:
        raise UnflickerError(f"--ray-address auto: {exc}") from None
    return found, " (auto: from RAY_ADDRESS)" if os.environ.get("RAY_ADDRESS") else \
        " (auto: the last `ray start --head` on this machine)"


def _check_reachable(address: str, timeout: float = 10.0, found: str = "") -> None:
    """One line at once where a cluster's HOST:PORT takes no connection (ray.init waits on it for good), or
    answers but not in HTTP/2 as Ray's servers do (the dashboard's address: ray.init waited 40 s on each of its
    20 tries)."""
    if (host_port := _host_port(address)) is None:
        return
    host, port = host_port
    try:
        connection = socket.create_connection((host.strip("[]"), port), timeout=timeout)
    except OSError as exc:
        raise UnflickerError(f"cannot reach Ray at {address}{found}: {exc.strerror or exc} (is `ray start --head` "
                             f"running there?)") from None
    reply = b""
    with connection:
        try:
            connection.sendall(HTTP2_GREETING)
            while len(reply) < 9 and (more := connection.recv(9 - len(reply))):
                reply += more
        except OSError:
            pass
    if len(reply) < 9 or reply[3] != 4:  # a frame header: 3 bytes of length, then the type (4: SETTINGS)
        raise UnflickerError(f"nothing at {address} answers as Ray: give the address `ray start --head` "
                             "printed (HOST:6379 by default; not the dashboard's)")


def _loopback_head(address: str) -> bool:
    """Whether the cluster named by a loopback HOST:PORT has its head on 127.0.0.1 alone (started with Ray's
    cluster mode off, as a run's own Ray is: see `_on_loopback`). Ray reaches a loopback address at the
    machine's network address instead, where such a head takes no connection: it then waited for good."""
    if (host_port := _host_port(address)) is None:
        return False
    host, port = host_port
    try:
        if host != "localhost" and not ipaddress.ip_address(host.strip("[]")).is_loopback:
            return False
    except ValueError:  # a host name (127.example.com too): Ray does not rewrite it
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("8.8.8.8", 53))  # sends nothing: the address of the route out, as Ray takes it
            own = probe.getsockname()[0]
        socket.create_connection((own, port), timeout=2).close()
    except OSError:
        return True
    return own.startswith("127.")


GRPC_UNIMPLEMENTED = 12
"""gRPC's status code for a service the server does not have."""


def _check_token(ray, address: str) -> None:
    """Ray's token authentication for a cluster named by its address, and one line at once where it refuses.

    `ray start` turns it on by default and writes the token (~/.ray/auth_token), but ray.init takes a token up
    by itself only for address 'auto': a run on the head node without RAY_AUTH_MODE=token asked 20 times, a
    second apart, each with a line of Ray's log, before it gave up; with RAY_AUTH_MODE=token and no token it was
    a traceback. So, where RAY_AUTH_MODE is unset and a token is here, it is used (a cluster without
    authentication takes such a client too); then the cluster is asked once whether it takes this client (a
    gRPC server without Ray's service, such as a raylet's port, is refused here too, not after 20 s)."""
    if _host_port(address) is None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            ensure_token_if_auth_enabled,
            maybe_enable_token_auth_if_token_available,
        )
        from ray._raylet import GcsClient
    except ImportError:  # another Ray version: RAY_AUTH_MODE=token as Ray's documentation says
        return
    if "RAY_AUTH_MODE" not in os.environ:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # else the client below aborts the process
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:  # Ray's log line of the refusal: the error below says it
            os.dup2(null.fileno(), 2)
        GcsClient(address=address)
    except ray.exceptions.AuthenticationError as exc:
        raise UnflickerError(f"Ray at {address} refused this client: {exc}") from None
    except ray.exceptions.RpcError as exc:
        if exc.rpc_code == GRPC_UNIMPLEMENTED:  # another of Ray's servers (a raylet's port), not the head's
            raise UnflickerError(f"{address} is not a Ray cluster's head: give the address `ray start --head` "
                                 "printed (HOST:6379 by default)") from None
    except Exception:  # noqa: BLE001 - anything else: ray.init retries it and says what it is
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _watch_local_ray(ray) -> tuple[subprocess.Popen, int] | None:
    """The watchdog of the local Ray this process is about to start (ray_watchdog.py) and the write end of its
    pipe, or None where there is none (not Linux, or a Ray whose private helpers differ). Started before ray.init:
    a driver killed inside it (its first seconds) left the raylet's agents a minute and the session folder for
    good; the watchdog then finds the session by this process's pid, which Ray puts at the end of its folder's
    name (folders of that name already there are named to it: never this run's)."""
    if not sys.platform.startswith("linux") or not sys.executable or not os.path.isdir("/proc/self"):
        return None
    try:
        from ray._common.utils import get_default_ray_temp_dir

        temp = get_default_ray_temp_dir()
    except Exception:  # noqa: BLE001 - a private API: another Ray version goes without the watchdog
        return None
    pid = os.getpid()
    try:
        before = [name for name in os.listdir(temp) if name.startswith("session_") and name.endswith(f"_{pid}")]
    except OSError:  # no such folder yet: ray.init makes it
        before = []
    read, write = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-I", "-S", str(Path(__file__).with_name("ray_watchdog.py")),
                                    temp, str(pid), os.path.dirname(os.path.abspath(ray.__file__)), *before],
                                   stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
    except OSError:
        os.close(write)
        return None
    finally:
        os.close(read)
    return process, write


def _tell_watchdog(ray, watchdog: tuple[subprocess.Popen, int]) -> tuple[subprocess.Popen, int] | None:
    """Once ray.init has returned: the watchdog told this Ray's session folder and its processes as the driver
    started them (what it then kills is theirs for sure), or sent away where Ray's private node info differs."""
    try:
        node = ray._private.worker._global_node
        session = node.get_session_dir_path()
        pids = [str(info.process.pid) for info in node.all_processes.get("raylet", [])]
        pids += [str(info.process.pid) for kind, infos in node.all_processes.items() if kind != "raylet"
                 for info in infos]
        line = os.fsencode("\0".join([session, *pids])) + b"\n"
        if pids and Path(session).name.startswith("session_") and line.count(b"\n") == 1:
            os.write(watchdog[1], line)  # a driver killed halfway through: end of file before the line's end
            return watchdog
    except Exception:  # noqa: BLE001 - a private API: another Ray version goes without the watchdog
        pass
    _end_watchdog(watchdog, b".")
    return None


def _end_watchdog(watchdog: tuple[subprocess.Popen, int], byte: bytes) -> None:
    """Send the watchdog away (b"."), or have it clean up what a failed ray.init left (b"!"), and wait for it."""
    process, write = watchdog
    try:
        os.write(write, byte)
    except OSError:  # pragma: no cover - it is gone: nothing to wait for
        pass
    finally:
        os.close(write)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover - it kills and removes in a few seconds
        pass


@contextmanager
def _on_loopback() -> Iterator[None]:
    """A local Ray started in the body listens on 127.0.0.1 alone. Ray turns the node address 127.0.0.1 into the
    machine's network address wherever it runs clusters (Linux), and then its GCS, raylet, runtime-env agent and
    workers listened on every interface (token-authenticated, but open to the network). Ray's own switch for
    that (cluster mode off, what it does on macOS and Windows) is a module constant read when the node starts:
    set for the start only, so a later run in this process can still reach a cluster."""
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - another Ray version: as Ray starts it
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextmanager
def _sigterm_in_ray_init() -> Iterator[None]:
    """The caller's SIGTERM handler again on leaving (ray.init installs Ray's own); a SIGTERM that met Ray's handler
    in the body (sys.exit(15), no word) is handed to the caller's once that is back (the CLI's: Terminated, its
    message and exit 143). Handed over only then: the CLI's ignores further SIGTERMs while the run cleans up, which
    putting it back after it took the signal undid."""
    caller = signal.getsignal(signal.SIGTERM)
    try:
        with keep_sigterm_handler():
            yield
    except SystemExit as exc:
        if exc.code == signal.SIGTERM and callable(caller):
            caller(signal.SIGTERM, None)
        raise


_RAY_LOCK = threading.Lock()
_ray_owner: RayEngine | None = None
"""The run of this process that started (ray.init) the Ray it runs on, until it shuts it down: Ray is one per
process, so a second run at once would share it and lose it when the first ends (its tasks failed with
SystemExit), or call ray.init twice (an AssertionError); it is refused instead."""


class RayEngine:
    """Segments as Ray tasks: a local Ray on 127.0.0.1 for the run, or an existing cluster. One run of a process
    at a time where the run starts Ray itself (a Ray the host program started, runs may share)."""

    POLL_S = 0.5
    """While tasks run, the driver reads their progress from the board this often."""
    LOST_S = 10.0
    """A cluster's head that takes no connection this long is gone: the run fails (Ray's own client waited 60 s
    on it, then ended the process, the run's partial output left behind)."""

    def __init__(self, engine: EngineConfig, frame: tuple[int, int] | None = None, spec: MethodSpec | None = None):
        """frame, spec: the (width, height) and method of the run's video so far whose worker needs the most
        memory: a local Ray of the run's own gets no more CPUs than the available memory holds workers for (its
        count is fixed at its start)."""
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency
            raise UnflickerError("--engine ray needs Ray: pip install 'ray==2.60.0'") from None
        self.ray = ray
        self._started = False
        self._host: _HostState | None = None
        self._watchdog = self._board = None
        self._quiet: Callable[[], None] | None = None  # puts Ray's printing of its raylet's messages back
        self.local = engine.ray_address is None
        with _RAY_LOCK:  # held through ray.init: a second run waits for it, then finds the first's Ray
            self._start(engine, frame, spec)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.capacity = (engine.workers or max(1, cpus // engine.threads)) + 1
            # run_segment fixes its own threads (Ray's workers keep torch's default otherwise).
            self._remote = ray.remote(num_cpus=engine.threads, max_retries=engine.retries)(_ray_segment)
            self._board = ray.remote(num_cpus=0)(_Board).remote()
            self._head = None if self.local else _host_port(ray.get_runtime_context().gcs_address)
        except BaseException:
            self.close()  # a Ray it started goes with it
            raise
        self._keys: dict[object, int] = {}  # a running task's ref -> the key its reports carry
        self._next = 0
        self._head_lost: float | None = None  # since when the cluster's head has taken no connection
        self._head_checked = 0.0

    def _start(self, engine: EngineConfig, frame: tuple[int, int] | None, spec: MethodSpec | None) -> None:
        """Start or reach Ray unless this process is connected already (_RAY_LOCK held)."""
        global _ray_owner
        ray = self.ray
        if _ray_owner is not None:
            raise InputError("another engine='ray' run of this program is running on the Ray it started: run them "
                             "one at a time, or call ray.init() first and they share that Ray")
        if not ray.is_initialized():
            host = _HostState()
            options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            loopback = self.local
            if self.local:
                # address "local": a Ray of its own, even where one runs on this machine or RAY_ADDRESS is set
                workers = (engine.local_workers() if frame is None else
                           workers_for(engine, frame, engine.local_workers(), spec=spec))
                options.update(address="local", num_cpus=workers * engine.threads,
                               _node_ip_address="127.0.0.1")
            else:
                address, found = _resolve_auto(engine.ray_address)
                _check_reachable(address, found=found)
                loopback = _loopback_head(address)
                options.update(address=address)
            # Ray's notice that its token authentication is on is for the operators of a cluster (a local Ray of
            # the run's own lives and goes with it; it printed under --quiet too).
            notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
            level = notice.level
            notice.setLevel(logging.ERROR)
            with _sigterm_in_ray_init():  # ray.init installs its own handler (sys.exit): a run keeps the CLI's
                # A local Ray of the run's own goes also when the run is killed outright (kill -9), in ray.init too.
                watchdog = _watch_local_ray(ray) if self.local else None
                try:
                    if not self.local:
                        _check_token(ray, address)
                    with _on_loopback() if loopback else nullcontext():
                        ray.init(**options)
                except BaseException as exc:
                    # Ray's own message names no cause where its token authentication refused (it logs that)
                    hint = f"; {TOKEN_HINT}" if not self.local and "RAY_AUTH_MODE" not in os.environ else ""
                    if watchdog is not None:  # what a failed or stopped (kill) ray.init started: its exit left
                        try:  # the raylet's agents a minute, the session folder for good
                            ray.shutdown()
                        except Exception:  # noqa: BLE001 - nothing of Ray's up to shut down
                            pass
                        _end_watchdog(watchdog, b"!")
                    host.ray_started()
                    host.restore()
                    if not isinstance(exc, (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError)):
                        raise
                    raise UnflickerError(f"cannot start or reach Ray ({engine.ray_address or 'local'}): "
                                         f"{exc}{hint}") from None
                finally:
                    notice.setLevel(level)
            host.ray_started()
            self._host = host
            self._started = True
            self._watchdog = None if watchdog is None else _tell_watchdog(ray, watchdog)
            self._quiet = _quiet_raylet(ray)
            _ray_owner = self

    def warm(self, spec: MethodSpec) -> None:
        pass  # Ray's workers build the method with their first task

    def fit(self, frame: tuple[int, int], spec: MethodSpec | None = None) -> None:
        pass  # a Ray's CPUs are fixed at its start (a local one's by `workers_for`); Ray watches its nodes' memory

    def submit(self, task: SegmentTask) -> object:
        self._next += 1
        ref = self._remote.remote(task, self._board, self._next, self._started and self.local)  # board None: no reports
        self._keys[ref] = self._next
        return ref

    def wait(self, handles, progress: Progress | None = None):
        handles = list(handles)
        while True:
            polling = progress is not None and self._board is not None
            watching = self._head is not None
            ready, _ = self.ray.wait(handles, num_returns=1, timeout=self.POLL_S if polling or watching else None)
            if watching and not ready:
                self._check_head()
            if polling:
                try:  # bounded: with the cluster's head gone, a call to its actor waits for good
                    latest = self.ray.get(self._board.take.remote(), timeout=5.0 if watching else None)
                except self.ray.exceptions.GetTimeoutError:  # this round's reports come with the next
                    latest = {}
                except self.ray.exceptions.RayError:  # the board is gone: the run goes on without reports
                    latest, self._board = {}, None
                for ref in handles:  # a report that came after its task ended has no ref left: dropped
                    if self._keys.get(ref) in latest:
                        progress(ref, latest[self._keys[ref]])
            if ready:
                break
        out = []
        for ref in ready:
            self._keys.pop(ref, None)
            try:
                out.append((ref, self.ray.get(ref)))
            except UnflickerError as exc:  # Ray re-raises the task's own error class
                out.append((ref, exc))
            except self.ray.exceptions.RayError as exc:
                out.append((ref, WorkerDied(f"a Ray task failed: {str(exc).splitlines()[0]}")))
        return out

    def _check_head(self) -> None:
        """An UnflickerError once the cluster's head has taken no connection for LOST_S seconds (asked every 2 s)."""
        now = time.monotonic()
        if now - self._head_checked < 2.0:
            return
        self._head_checked = now
        host, port = self._head
        try:
            socket.create_connection((host.strip("[]"), port), timeout=self.POLL_S).close()
            self._head_lost = None
        except OSError as exc:
            self._head_lost = self._head_lost or now
            if now - self._head_lost >= self.LOST_S:
                self._board = None  # its actor went with the cluster
                raise UnflickerError(f"lost the Ray cluster at {host}:{port}: {exc.strerror or exc} for "
                                     f"{self.LOST_S:.0f} s") from None

    def close(self) -> None:
        try:
            if self._board is not None:
                self.ray.kill(self._board)  # a cluster outlives the run: its actor goes with it
        except Exception:  # noqa: BLE001 - Ray already down or unreachable: nothing left to free
            pass
        if self._started:
            session = None
            if self.local:
                try:  # Ray keeps each local session's logs in /tmp/ray/session_* for good
                    session = Path(self.ray._private.worker._global_node.get_session_dir_path())
                except Exception:  # noqa: BLE001 - a private API: another Ray version keeps its folders
                    session = None
            clean = False
            try:
                self.ray.shutdown()
                if session is not None and session.name.startswith("session_"):
                    remove_session(str(session))
                clean = True
            finally:
                self._started = False
                if self._host is not None:
                    self._host.restore()
                    self._host = None
                if self._quiet is not None:
                    self._quiet()
                    self._quiet = None
                _release_ray(self)
                if self._watchdog is not None:  # without its byte the watchdog kills what is left
                    process, write = self._watchdog
                    self._watchdog = None
                    try:
                        if clean:
                            os.write(write, b".")
                    finally:
                        os.close(write)
                    if clean:
                        try:
                            process.wait(timeout=5)
                        except subprocess.TimeoutExpired:  # pragma: no cover - it only reads a byte and exits
                            pass


class _HostState:
    """What ray.init changes in the calling program and ray.shutdown leaves so (Ray 2.60): environment variables
    (PYTHONBREAKPOINT, which sent the program's breakpoint() to Ray's remote debugger after the run; RAY_AUTH_MODE,
    RAY_USAGE_STATS_ENABLED) and faulthandler turned on. Taken before a run starts its Ray (or reaches a cluster),
    restored once that Ray is shut down; what `import ray` changes stays (a later run imports it no more)."""

    def __init__(self):
        self.environ = dict(os.environ)
        self.faulthandler = faulthandler.is_enabled()
        self.changed: dict[str, str | None] = {}

    def ray_started(self) -> None:
        """Note the variables Ray changed, as it set them."""
        self.changed = {key: os.environ.get(key) for key in {*os.environ, *self.environ}
                        if os.environ.get(key) != self.environ.get(key)}

    def restore(self) -> None:
        """Ray's variables as they were before it (each that the program has not set since), faulthandler off
        where it was."""
        for key, value in self.changed.items():
            if os.environ.get(key) != value:
                continue
            if key in self.environ:
                os.environ[key] = self.environ[key]
            else:
                os.environ.pop(key, None)
        if not self.faulthandler:
            faulthandler.disable()


def _quiet_raylet(ray) -> Callable[[], None] | None:
    """Send the messages Ray's driver prints from its raylet (Ray 2.60: a worker that died, each retry of its task,
    several lines with colour codes, on stdout whatever log_to_driver says) to this module's debug log instead, while
    the run's Ray is up: the run retries a task whose worker died itself and says in one line what failed. Returns
    what puts Ray's printing back (None where this Ray version prints them otherwise)."""
    try:
        module = ray._private.worker
        original = module.print_to_stdstream
    except AttributeError:  # a private API: another Ray version prints them its own way
        return None
    log = logging.getLogger(__name__)

    def to_log(data, ignore_prefix):
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        for line in data.get("lines", ()):
            log.debug("raylet: %s", line)

    module.print_to_stdstream = to_log

    def restore() -> None:
        if module.print_to_stdstream is to_log:
            module.print_to_stdstream = original

    return restore


def _release_ray(engine: RayEngine) -> None:
    """The run's Ray is shut down: another run may start one."""
    global _ray_owner
    with _RAY_LOCK:
        if _ray_owner is engine:
            _ray_owner = None


def make_executor(engine: EngineConfig, tasks: int | None = None, frame: tuple[int, int] | None = None,
                  spec: MethodSpec | None = None) -> Executor:
    """The engine's executor; `tasks`, the run's number of tasks if known: one task (a short clip)
    runs in this process, whose method is loaded already, and a pool starts no idle workers; `frame` and
    `spec`, the (width, height) and method of the run's video so far whose worker needs the most memory: a pool
    runs no more workers than memory holds."""
    if engine.engine == "ray":
        return RayEngine(engine, frame, spec)
    if engine.local_workers() == 1 or tasks == 1:
        return InProcess(engine)
    return LocalPool(engine, tasks, frame, spec)


def run_jobs(jobs: Iterable, engine: EngineConfig, finished: Callable[[object], None] = lambda job: None) -> None:
    """Run every job's segments on one executor, oldest job first; `finished(job)` after each job
    completes or fails (its `error` set). Jobs start (probe, plan) only when the workers need tasks."""
    jobs = list(jobs)
    executor: Executor | None = None  # made when the first task is ready (see make_executor)
    waiting = iter(jobs)
    started = 0
    active: list = []
    starting: list = []  # the job being started, while it starts
    in_flight: dict[object, object] = {}
    segment_of: dict[object, int] = {}  # handle -> the index of the segment its task runs

    def progress(handle, fraction: float) -> None:
        job = in_flight.get(handle)
        if job is not None and job.error is None:
            job.progress(segment_of[handle], fraction)

    def hungriest() -> tuple[tuple[int, int] | None, MethodSpec | None]:
        """(width, height) and method of the job started so far whose worker needs the most memory."""
        from unflicker.config import memory_needs

        sizes = [((job.source.info.width, job.source.info.height), job.spec) for job in active + starting]
        return max(sizes, key=lambda size: memory_needs(*size[0], size[1])[1]) if sizes else (None, None)

    def warm(job) -> None:
        """Make the executor before the first job's first pass if the run will have two tasks or more
        (a lower bound: cuts only add segments); its workers load the method while this process decodes.
        With one task on this machine, this process loads the method on a thread meanwhile."""
        nonlocal executor
        hint = job.task_hint + len(jobs) - started  # every job not started yet has a task at least
        if hint > 1:
            executor = make_executor(engine, hint, *hungriest())
            executor.warm(job.spec)
        elif hint == 1 and engine.engine == "local":
            # One task: it runs in this process (cuts may still add segments; those run on workers,
            # and this process has loaded the method for nothing).
            preload_method(job.spec)

    try:
        while True:
            while executor is None or len(in_flight) < executor.capacity:
                task, owner = None, None
                for job in active:
                    if job.error is None:
                        try:
                            task = job.next_task()
                        except UnflickerError as exc:  # e.g. the video ended early: this job only
                            job.fail(exc)
                            continue
                        if task is not None:
                            owner = job
                            break
                if task is None:
                    job = next(waiting, None)
                    if job is None:
                        break
                    started += 1
                    starting[:] = [job]  # its size counts from `ready` on, before it is active
                    try:
                        job.start(shared=engine.shares_files(), ready=None if executor is not None else warm)
                        active.append(job)
                        if executor is not None:
                            executor.fit(*hungriest())
                    except UnflickerError as exc:
                        job.fail(exc)
                        job.close()
                        finished(job)
                    except BaseException:  # interrupted while starting: its temporary folder goes too
                        job.close()
                        raise
                    finally:
                        starting.clear()
                    continue
                if executor is None:
                    known = started == len(jobs)  # every job planned: the number of tasks is known
                    executor = make_executor(engine, 1 + sum(job.pending() for job in active) if known else None,
                                             *hungriest())
                handle = executor.submit(task)
                in_flight[handle], segment_of[handle] = owner, task.segment.index
            for job in list(active):
                done = job.error is not None
                if not done:
                    try:
                        done = job.advance()
                    except UnflickerError as exc:
                        job.fail(exc)
                        done = True
                if done and not any(owner is job for owner in in_flight.values()):
                    job.close()  # a failed job's files too, now that none of its segments is running
                    active.remove(job)
                    finished(job)
            if not in_flight:
                if not active:
                    return
                continue
            for handle, outcome in executor.wait(list(in_flight), progress):
                job = in_flight.pop(handle)
                del segment_of[handle]
                if job.error is not None:
                    continue
                if isinstance(outcome, BaseException):
                    job.fail(outcome)
                else:
                    job.deliver(outcome)
    finally:
        if executor is not None:
            executor.close()
        for job in active:
            job.close()
