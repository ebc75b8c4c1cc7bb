"""The watchdog of a run's own local Ray (engine.RayEngine, Linux only), run as
`python -I -S ray_watchdog.py TEMP_DIR DRIVER_PID RAY_PACKAGE_DIR [SESSION_NAME...]` just before the driver (the
`unflicker run` process) calls ray.init: standard library only, it imports neither unflicker nor Ray, so it
starts in milliseconds. TEMP_DIR is where Ray puts its session folders, the names after it those of that folder
that end in the driver's pid already (left by an earlier Ray of the same pid: never this run's).

Its stdin is a pipe whose write end only the driver holds. Once ray.init has returned, the driver writes a line:
the session folder, the raylet's pid and those of Ray's other processes it started, NUL-separated. It writes one
byte `.` once it has shut its Ray down, and the watchdog exits. End of file without that byte means the driver
died (kill -9): Ray's own fate sharing takes the processes the driver started at once, but those the raylet
started (its dashboard and runtime-env agents, idle workers) lived on for a minute, and the session folder for
good. The watchdog then kills what is left of that session and removes its folder.

End of file before the line (the driver died inside ray.init, where a kill -9 or kill lands in its first
seconds), or the byte `!` (ray.init failed: the driver asks for the clean-up and waits on it), the session is
found by the driver's pid, which Ray puts at the end of its folder's name (`session_<date>_<pid>`): a folder of
TEMP_DIR so named that was not there before, and the processes started since the watchdog whose command line
runs a file of Ray's package and names that folder (the GCS, raylet, log monitor, ...), the raylet's workers
and Ray's agents with a file open there.
"""

import os
import shutil
import signal
import sys
import time


def stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot), or None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else (int(fields[1]), int(fields[19]))


def raylets_child(pid: str, raylet: str) -> bool:
    """A worker: the raylet's pid in its environment."""
    if not raylet:
        return False
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"RAY_RAYLET_PID=" + raylet.encode() in f.read().split(b"\0")
    except OSError:
        return False


def ray_with_files(pid: str, session: str) -> bool:
    """An agent (its `ray::` title overwrote its environment in /proc): that title and a file open in the
    session folder (/proc names open files by their real path: the session's is compared, also where the
    folder is named through a symlink, a TMPDIR that links to another disk)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read(5) != b"ray::":
                return False
        session = os.path.realpath(session)
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session + "/"):
                    return True
            except OSError:
                pass
    except OSError:
        pass
    return False


def ray_naming(pid: str, session: str, package: str) -> list[str] | None:
    """The command line of one of Ray's own processes of the session (a file of Ray's package in it, and the
    session folder), or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = os.fsdecode(f.read()).split("\0")
    except OSError:
        return None
    if (any(arg.startswith(package + "/") for arg in args)
            and any(arg.endswith(session) or session + "/" in arg for arg in args)):
        return args
    return None


def session_processes(session: str, raylet: str, started: dict, born: int) -> set[str]:
    """The pids of what is left of the session: the processes the driver started (same start time),
    those the raylet started since, and all their children."""
    table = {name: stat(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()}
    ours = {pid for pid, info in table.items() if info and started.get(pid) and started[pid][1] == info[1]}
    ours |= {pid for pid, info in table.items()
             if info and info[1] >= born and pid not in ours and (raylets_child(pid, raylet) or ray_with_files(pid, session))}
    while True:
        more = {pid for pid, info in table.items() if info and str(info[0]) in ours} - ours
        if not more:
            return ours
        ours |= more


def found_processes(session: str, package: str, born: int) -> set[str]:
    """What is left of a session known by its folder alone: Ray's processes started since `born` that name it,
    as the driver would have said (the raylet among them), then as `session_processes`."""
    started, raylet = {}, ""
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid() and (info := stat(pid)) and info[1] >= born:
            if (args := ray_naming(pid, session, package)) is not None:
                started[pid] = info
                raylet = pid if os.path.basename(args[0]) == "raylet" else raylet
    return session_processes(session, raylet, started, born)


def end(session: str, processes, *args) -> None:
    """Kill what `processes(session, *args)` finds of the session, then remove its folder."""
    for _ in range(3):  # what was starting while the first were killed comes in the next round
        ours = processes(session, *args)
        if not ours:
            break
        for pid in ours:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(stat(pid) for pid in ours):
            time.sleep(0.05)
    remove_session(session)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    temp, driver, package, before = sys.argv[1], sys.argv[2], sys.argv[3], set(sys.argv[4:])
    born = stat(str(os.getpid()))[1]  # before any process of the driver's ray.init
    line = b""
    while not line.endswith(b"\n"):
        byte = sys.stdin.buffer.read(1)
        if byte == b"." and not line:  # another Ray version's node info: the driver goes without the watchdog
            return
        if not byte or byte == b"!" and not line:  # the driver died in ray.init, or it failed there
            try:
                names = [name for name in os.listdir(temp) if name.startswith("session_")
                         and name.endswith("_" + driver) and name not in before]
            except OSError:
                names = []
            for name in names:
                session = os.path.join(temp, name)
                if os.path.isdir(session) and not os.path.islink(session):
                    end(session, found_processes, package, born)
            return
        line += byte
    session, *known = os.fsdecode(line[:-1]).split("\0")
    raylet = known[0]
    started = {pid: stat(pid) for pid in known}  # Ray's own processes, as the driver started them
    if sys.stdin.buffer.read(1) or not started[raylet]:  # a byte: the driver shut its Ray down itself
        return
    end(session, session_processes, raylet, started, started[raylet][1])


def remove_session(session: str) -> None:
    """Remove a local Ray's session folder and the `session_latest` link where it points there (Ray keeps each
    session's logs for good); also called by RayEngine.close after a normal shutdown."""
    latest = os.path.join(os.path.dirname(session), "session_latest")
    if os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(session):
        try:
            os.unlink(latest)
        except OSError:
            pass
    shutil.rmtree(session, ignore_errors=True)


if __name__ == "__main__":
    main()
