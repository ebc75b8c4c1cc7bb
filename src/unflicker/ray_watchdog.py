"""The watchdog of a run's own local Ray (engine.RayEngine, Linux only), run as
`python -I -S ray_watchdog.py SESSION_DIR RAYLET_PID PID...`: standard library only, it imports
neither unflicker nor Ray, so it starts in milliseconds.

Its stdin is a pipe whose write end only the driver (the `unflicker run` process) holds. The driver
writes one byte once it has shut its Ray down, and the watchdog exits. End of file without that byte
means the driver died (kill -9): Ray's own fate sharing takes the processes the driver started at
once, but those the raylet started (its dashboard and runtime-env agents, idle workers) lived on for
a minute, and the session folder for good. The watchdog then kills what is left of that session and
removes its folder.
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


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    session, raylet, known = sys.argv[1], sys.argv[2], sys.argv[2:]
    started = {pid: stat(pid) for pid in known}  # Ray's own processes, as the driver started them
    if sys.stdin.buffer.read(1) or not started[raylet]:  # a byte: the driver shut its Ray down itself
        return
    born = started[raylet][1]
    for _ in range(3):  # what was starting while the first were killed comes in the next round
        ours = session_processes(session, raylet, started, born)
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
