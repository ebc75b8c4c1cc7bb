"""Helpers of the web tests: a synthetic flickering clip, a real `unflicker serve` process on a
free loopback port, and a small HTTP client with its own session cookie."""

from __future__ import annotations

import http.client
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import av
import numpy as np


def write_clip(path: Path, n: int = 12, width: int = 96, height: int = 64, fps: int = 12) -> Path:
    """An H.264 clip of a drifting pattern whose brightness jumps up and down every frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    pattern = 0.4 + 0.25 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    base = np.stack([pattern, 0.9 * pattern, 0.75 * pattern + 0.1], axis=2)
    gains = 1 + 0.25 * np.where(np.arange(n) % 2, 1.0, -1.0) * np.random.default_rng(0).uniform(0.6, 1.0, n)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        for t in range(n):
            image = np.clip(np.roll(base, 2 * t, axis=1) * gains[t], 0, 1)
            for packet in stream.encode(av.VideoFrame.from_ndarray((image * 255).astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class Server:
    def __init__(self, process: subprocess.Popen, port: int, work: Path, lines: list[str], more: queue.Queue):
        self.process, self.port, self.work, self.lines, self._more = process, port, work, lines, more
        self.url = f"http://127.0.0.1:{port}/"

    def output(self) -> str:
        """What the server printed since it started (its console), so far."""
        while True:
            try:
                self.lines.append(self._more.get_nowait())
            except queue.Empty:
                return "".join(self.lines)


@contextmanager
def running_server(work: Path, *options: str, timeout: float = 30.0):
    """`python -m unflicker serve --port 0 --work-dir work OPTIONS` until the block ends (Ctrl+C)."""
    process = subprocess.Popen([sys.executable, "-m", "unflicker", "serve", "--port", "0", "--work-dir", str(work),
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = []
    try:
        deadline = time.monotonic() + timeout
        while not seen or "serving on" not in seen[0]:
            try:
                seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                raise AssertionError(f"the server did not start: {seen}") from None
        port = int(seen[0].split("http://127.0.0.1:")[1].split("/")[0])
        seen.append(lines.get(timeout=5))  # the work folder line
        yield Server(process, port, work, seen, lines)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Client:
    """HTTP to the server with one session cookie; `raw` sends a path exactly as given."""

    def __init__(self, server: Server, auth: str | None = None):
        self.server, self.cookie, self.auth = server, None, auth

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        headers = dict(headers or {})
        if self.cookie:
            headers.setdefault("Cookie", self.cookie)
        if self.auth:
            import base64

            headers.setdefault("Authorization", "Basic " + base64.b64encode(self.auth.encode()).decode())
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)  # path as given
        for name, value in {**headers, "Content-Length": str(len(body or b""))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        cookie = response.getheader("set-cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        connection.close()
        return response.status, data, response

    def json(self, method: str, path: str, payload=None) -> tuple[int, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        status, data, _ = self.request(method, path, body, {"Content-Type": "application/json"} if body else None)
        return status, json.loads(data)

    def state(self) -> dict:
        status, data = self.json("GET", "/api/state")
        assert status == 200, data
        return data

    def upload(self, path: Path, name: str | None = None) -> tuple[int, dict]:
        status, data, _ = self.request("POST", "/api/upload", Path(path).read_bytes(),
                                       {"X-Filename": quote(name or Path(path).name)})
        return status, json.loads(data)

    def wait(self, job_id: str, timeout: float = 60.0, states=("done", "failed", "cancelled")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = next(j for j in self.state()["jobs"] if j["id"] == job_id)
            if job["state"] in states:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} is still {job['state']} after {timeout} s")
