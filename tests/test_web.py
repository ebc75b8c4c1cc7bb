"""`unflicker serve` over HTTP: jobs, bad uploads, limits, path traversal, sessions, auth.

A real server process on a free loopback port; the browser tests are in test_web_browser.py.
"""

import asyncio
import json
import os
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import av
import cv2
import numpy as np
import pytest

from unflicker import io
from unflicker.cli import main
from unflicker.errors import InputError, OutputError
from unflicker.metrics import flicker_index
from unflicker.web.jobs import ProgressLog
from unflicker.web.server import startup_lines
from unflicker.web.store import Store
from web_server import Client, running_server, write_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve") / "work") as server:
        yield server


@pytest.fixture(scope="module")
def finished(server, clip):
    """(client, upload id, a finished classical run) of one session."""
    client = Client(server)
    status, upload = client.upload(clip)
    assert status == 200, upload
    status, job = client.json("POST", "/api/run", {"upload": upload["id"], "settings": {"method": "classical"}})
    assert status == 200, job
    return client, upload["id"], client.wait(job["id"])


def frames_of(path):
    return [io.to_float(f.image) for f in io.read_frames(path)]


def test_run_writes_the_output_the_page_offers(server, clip, finished, tmp_path):
    client, upload_id, job = finished
    assert job["state"] == "done", job["message"]
    # The engine's own progress bars, in order (their names are the engine's: not pinned here).
    names = [s["name"] for s in job["stages"]]
    assert names[-1] == "compare" and len(names) == len(set(names)) >= 2
    assert all(s["done"] == s["total"] == 12 for s in job["stages"])
    status, data, response = client.request("GET", job["files"]["output"] + "?download=1")
    assert status == 200 and 'filename="clip-unflicker.mp4"' in response.getheader("content-disposition")
    # A name with spaces keeps them; what a file system may refuse is replaced.
    named = client.upload(clip, name='Mum\'s "holiday" (2025): day 1.mp4')[1]["id"]
    named = client.json("POST", "/api/run", {"upload": named, "settings": {"method": "classical"}})[1]
    named = client.wait(named["id"])
    response = client.request("GET", named["files"]["output"] + "?download=1")[2]
    assert unquote(response.getheader("content-disposition")) == \
        "attachment; filename*=utf-8''Mum's _holiday_ (2025)_ day 1-unflicker.mp4"
    (tmp_path / "out.mp4").write_bytes(data)
    out = frames_of(tmp_path / "out.mp4")
    assert len(out) == 12 and job["result"]["frames"] == 12
    before, after = flicker_index(frames_of(clip))["luma"], flicker_index(out)["luma"]
    assert after < 0.3 * before
    assert job["result"]["flicker_after"] < 0.3 * job["result"]["flicker_before"]
    for label in ("compare", "plot"):
        status, data, _ = client.request("GET", job["files"][label])
        assert status == 200 and len(data) > 100


def test_preview_and_png_zip_output(server, clip, finished, tmp_path):
    client, upload_id, _ = finished
    status, preview = client.json("POST", "/api/preview", {"upload": upload_id, "frame": 6,
                                                           "settings": {"method": "classical"}})
    assert status == 200, preview
    status, run = client.json("POST", "/api/run", {"upload": upload_id,
                                                   "settings": {"method": "classical", "format": "png-zip"}})
    preview, run = client.wait(preview["id"]), client.wait(run["id"])
    assert preview["state"] == run["state"] == "done", (preview["message"], run["message"])
    assert [s["name"] for s in preview["stages"]][0] == "cut"
    status, data, _ = client.request("GET", preview["files"]["after"])
    assert status == 200 and data.startswith(b"\x89PNG")
    status, data, _ = client.request("GET", run["files"]["output"] + "?download=1")
    (tmp_path / "frames.zip").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "frames.zip") as archive:
        names = archive.namelist()
    assert len(names) == 12 and all(name.endswith(".png") and "/" not in name for name in names)


def test_the_output_format_and_bit_depth_are_the_pages_choices(server, clip, finished, tmp_path):
    """The page had no bit depth and its MOV was "H.264 or ProRes": the format names its codec (ProRes one of
    them), the depth is a setting, an impossible pair is refused, and each run records what it asked for."""
    client, upload_id, _ = finished
    formats = client.state()["formats"]
    assert formats["mov-prores"] == {"label": "MOV (ProRes)", "depths": [10]}
    assert formats["mp4"]["depths"] == [8, 10] and formats["png-zip"]["depths"] == [8, 16]
    status, refused = client.json("POST", "/api/run", {"upload": upload_id, "settings": {
        "method": "classical", "format": "mp4", "bit_depth": 16}})
    assert (status, refused) == (400, {"error": "MP4 (H.264) can hold 8 or 10 bits, not 16: choose MKV (FFV1) or "
                                                "PNG frames for 16 bits, or another bit depth"})
    jobs = {}
    for choice in ({"format": "mov-prores"}, {"format": "mov", "bit_depth": 10}):  # MKV at 16 bits: the browser test
        status, job = client.json("POST", "/api/run", {"upload": upload_id,
                                                       "settings": {"method": "classical", **choice}})
        assert status == 200, job
        jobs[choice["format"]] = job["id"]
    expected = {"mov-prores": (".mov", "prores", None, 10), "mov": (".mov", "h264", 10, 10)}
    for name, (suffix, codec, asked, bits) in expected.items():
        job = client.wait(jobs[name])
        assert job["state"] == "done", job["message"]
        status, data, response = client.request("GET", job["files"]["output"] + "?download=1")
        assert status == 200 and f'filename="clip-unflicker{suffix}"' in response.getheader("content-disposition")
        (tmp_path / f"out{suffix}").write_bytes(data)
        info = io.probe(tmp_path / f"out{suffix}")
        assert (info.codec, info.sample_bits) == (codec, bits)
        assert job["settings"]["bit_depth"] == (asked or "")
        output = job["result"]["output"]
        assert (output["codec"], output["bit_depth"], output["written_codec"], output["written_bits"]) == \
            (codec, asked, codec, bits)
        recorded = json.loads((server.work / "items" / job["id"] / "result.json").read_text())["config"]
        assert recorded["output"]["codec"] == codec and recorded["method"] == "classical"


def test_bad_uploads_get_a_clear_message_and_the_server_keeps_serving(server, clip, tmp_path):
    client = Client(server)
    (tmp_path / "notes.mp4").write_text("not a video at all\n")
    (tmp_path / "cut.mp4").write_bytes(clip.read_bytes()[:3000])
    (tmp_path / "empty.mp4").write_bytes(b"")
    with av.open(str(tmp_path / "zero.mp4"), "w") as container:  # a video stream with no frames
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        container.start_encoding()
    zipped = tmp_path / "nothing.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("../../readme.txt", "no images here")
    folders = len(list((server.work / "items").iterdir()))
    for name, expected in (("notes.mp4", "not a video"), ("cut.mp4", "not a video"), ("empty.mp4", "is empty"),
                           ("zero.mp4", "no video stream"), ("nothing.zip", "no images")):
        status, data = client.upload(tmp_path / name)
        assert status == 400, (name, data)
        assert data["error"].startswith(f"{name} cannot be used") and expected in data["error"], data["error"]
        assert str(server.work) not in data["error"] and data["error"].count(name) == 1, data["error"]
    assert client.state()["uploads"] == []
    assert len(list((server.work / "items").iterdir())) == folders  # nothing left behind
    status, data = client.upload(clip)
    assert status == 200 and "12 frames, 96x64" in data["facts"]


def test_a_long_file_name_is_shortened_keeping_its_extension(server, tmp_path):
    """A name over 120 characters was cut with its extension: a zip of frames was then read as a video
    and refused ("not a video")."""
    client = Client(server)
    zipped = tmp_path / "frames.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for t in range(3):
            archive.writestr(f"f{t}.png", cv2.imencode(".png", np.full((24, 32, 3), 40 * t, np.uint8))[1].tobytes())
    name = "Holiday in the mountains with the whole family, summer 2025, scanned from the old Super 8 reel, " \
           "number 3 of 12, side B.zip"
    status, data = client.upload(zipped, name=name)
    assert status == 200, data
    assert data["name"] == name[: 120 - 4] + ".zip" and "3 frames, 32x24" in data["facts"]

def test_a_zip_of_frames_of_mixed_sizes_is_refused_at_the_upload_naming_the_frame(server, tmp_path):
    client = Client(server)
    zipped = tmp_path / "frames.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for t, (w, h) in enumerate([(32, 24)] * 3 + [(40, 24), (32, 30)]):
            archive.writestr(f"shot/f{t + 1}.png", cv2.imencode(".png", np.full((h, w, 3), 40 * t, np.uint8))[1])
    status, data = client.upload(zipped)
    assert status == 400, data
    assert data["error"] == ("frames.zip cannot be used: its frames differ in size: f4.png is 40x24, "
                             "the first frame (f1.png) is 32x24")
    assert client.state()["uploads"] == []


def test_the_upload_check_reads_the_size_of_every_frame_but_the_first_from_its_header(tmp_path, monkeypatch):
    from unflicker.io import images
    from unflicker.web.jobs import check_upload
    from unflicker.web.store import Upload

    store = Store(tmp_path / "work")
    upload = Upload(*store.new_folder(), "frames.zip")
    with zipfile.ZipFile(upload.folder / "input.zip", "w") as archive:
        for t in range(20):
            archive.writestr(f"f{t}.jpg", cv2.imencode(".jpg", np.full((24, 32, 3), 10 * t, np.uint8))[1])
    decoded, read_image = [], images.read_image
    for module in (io, images):
        monkeypatch.setattr(module, "read_image", lambda path: decoded.append(path.name) or read_image(path))
    check_upload(store, upload, upload.folder / "input.zip")
    assert upload.frames == 20 and decoded == ["f0.jpg"]  # probe's look at the first frame
    # OpenEXR frames hold their size in windows the decoder chooses between: not decoded in the request
    # beyond the first (the run names a mismatch among them).
    exr = Upload(*store.new_folder(), "exr.zip")
    with zipfile.ZipFile(exr.folder / "input.zip", "w") as archive:
        for t in range(3):
            images.write_image(exr.folder / "f.exr", np.full((24, 32, 3), 0.1 * t, np.float32), None, 16, False, "")
            archive.write(exr.folder / "f.exr", f"f{t}.exr")
    decoded.clear()
    check_upload(store, exr, exr.folder / "input.zip")
    assert exr.frames == 3 and set(decoded) == {"f0.exr"}
    store.close()


def test_a_zip_of_too_many_frames_is_refused_before_they_are_unpacked(tmp_path):
    """The frame count (the length at the folder's frame rate) was checked after every image was unpacked: a
    3.4 MB zip of 20 000 tiny PNGs wrote 20 000 files (a 2 GB upload, millions) to refuse it as too long."""
    from unflicker.web.jobs import check_upload
    from unflicker.web.store import Limits, Upload

    store = Store(tmp_path / "work", Limits(max_seconds=2))
    png = cv2.imencode(".png", np.full((2, 2, 3), 100, np.uint8))[1].tobytes()
    for count, accepted in ((50, True), (51, False)):  # 25 fps: 2 s is 50 frames
        upload = Upload(*store.new_folder(), "many.zip")
        with zipfile.ZipFile(upload.folder / "input.zip", "w") as archive:
            for t in range(count):
                archive.writestr(f"f{t}.png", png)
        if accepted:
            check_upload(store, upload, upload.folder / "input.zip")
            assert upload.frames == 50
            continue
        with pytest.raises(InputError, match=r"^it is 2\.0 s long; this server takes videos up to 2 s"):
            check_upload(store, upload, upload.folder / "input.zip")
        assert len(list((upload.folder / "frames").iterdir())) <= 1  # the first frame's header gives the rate
    store.close()


def test_a_zip_of_huge_frames_is_refused_from_their_headers_before_any_is_decoded(tmp_path, monkeypatch):
    """A 2 KB zip held two 8000x8000 PNGs: the upload check decoded one (190 MB; a 30000x30000 one, GBs)
    before it refused the size."""
    from unflicker.io import images
    from unflicker.web.jobs import check_upload
    from unflicker.web.store import Upload

    store = Store(tmp_path / "work")
    upload = Upload(*store.new_folder(), "scan.zip")
    png = cv2.imencode(".png", np.zeros((8000, 8000, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]
    with zipfile.ZipFile(upload.folder / "input.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for t in range(2):
            archive.writestr(f"f{t}.png", png.tobytes())
    decoded, read_image = [], images.read_image
    for module in (io, images):
        monkeypatch.setattr(module, "read_image", lambda path: decoded.append(path.name) or read_image(path))
    with pytest.raises(InputError, match="its frames are 8000x8000; this server takes frames up to 4096 pixels"):
        check_upload(store, upload, upload.folder / "input.zip")
    assert decoded == []
    store.close()

def damaged_zip(path: Path, compression: int, encrypted: bool = False) -> Path:
    """A zip of 3 PNG frames whose second frame's compressed data is damaged (or, encrypted: every entry
    flagged as protected by a password, as `zip -e` writes them)."""
    png = cv2.imencode(".png", np.full((24, 32, 3), 100, np.uint8))[1].tobytes()
    with zipfile.ZipFile(path, "w", compression) as archive:
        for t in range(3):
            archive.writestr(f"f{t}.png", png)
    data = bytearray(path.read_bytes())
    if encrypted:
        for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the flag bits of each header
            start = 0
            while (start := data.find(signature, start)) >= 0:
                data[start + at] |= 1
                start += 4
    else:
        start = data.find(b"f1.png") + len("f1.png") + 10
        data[start:start + 20] = b"\x13" * 20
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("compression, encrypted, expected", [
    (zipfile.ZIP_DEFLATED, False, "the zip cannot be read"), (zipfile.ZIP_BZIP2, False, "the zip cannot be read"),
    (zipfile.ZIP_LZMA, False, "the zip cannot be read"), (zipfile.ZIP_STORED, True, "protected by a password")],
    ids=["deflate", "bzip2", "lzma", "password"])
def test_a_damaged_or_password_protected_zip_is_refused_in_one_line(tmp_path, compression, encrypted, expected):
    """A zip whose frames' data was damaged (deflate, LZMA) or that was protected by a password was a server error
    (the page said "the server answered 500"); a damaged bzip2 one said the server's disk could not store it (507)."""
    with app_with_an_upload(tmp_path) as (store, app, token, upload):
        data = damaged_zip(tmp_path / "frames.zip", compression, encrypted).read_bytes()
        status, body = asgi_get(app, "/api/upload", cookie=token, method="POST", body=data,
                                headers={"x-filename": "frames.zip"})
        assert status == 400, body
        error = json.loads(body)["error"]
        assert error.startswith("frames.zip cannot be used: ") and expected in error, error
        assert list(store.items.iterdir()) == [upload.folder]  # nothing left behind


def test_file_names_in_requests_cannot_reach_other_files(server, clip, finished, tmp_path):
    client, upload_id, job = finished
    job_id, job_folder = job["id"], server.work / "items" / job["id"]
    assert json.loads((job_folder / "spec.json").read_text())["name"] == "clip.mp4"  # the plot's title names it
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    refused = [f"/files/{job_id}/../../../../../etc/passwd", f"/files/{job_id}/..%2F..%2F..%2Fetc%2Fpasswd",
               f"/files/{job_id}/%2Fetc%2Fpasswd", f"/files/{job_id}//etc/passwd", f"/files/{job_id}/log.txt",
               f"/files/{job_id}/spec.json", f"/files/{upload_id}/input.mp4", f"/files/..%2F{job_id}/output.mp4",
               f"/files/{job_id}/{secret}", f"/files/{job_id}/" + str(secret).replace("/", "%2F"),
               f"/files/%2E%2E/{job_id}/output.mp4", f"/files/{job_id}/..", "/files/../../etc/passwd"]
    for path in refused:
        status, data, _ = client.request("GET", path)
        assert status == 404 and b"secret" not in data and b"root:" not in data, path
    # A link opened in the browser shows a sentence, not a JSON dump.
    status, data, response = client.request("GET", f"/files/{job_id}/gone.mp4?download=1")
    assert status == 404 and response.getheader("content-type").startswith("text/plain")
    assert data.decode().startswith("This file is no longer kept") and "{" not in data.decode()
    # A served name that has become a symlink (to a file outside the work folder) is refused.
    plot = (job_folder / "plot.png").read_bytes()
    (job_folder / "plot.png").unlink()
    (job_folder / "plot.png").symlink_to(secret)
    status, data, _ = client.request("GET", job["files"]["plot"])
    assert status == 404 and b"secret" not in data
    (job_folder / "plot.png").unlink()
    (job_folder / "plot.png").symlink_to(job_folder / "log.txt")  # even to a file beside it
    status, data, _ = client.request("GET", job["files"]["plot"])
    assert status == 404 and b"process" not in data
    (job_folder / "plot.png").unlink()
    (job_folder / "plot.png").write_bytes(plot)
    assert client.request("GET", job["files"]["plot"])[0] == 200
    # Every parameter that names an upload or a job takes only this session's ids.
    for bad in ("../" + upload_id, "/etc/passwd", str(clip), f"{upload_id}/../{upload_id}", ["x"], None):
        for route in ("/api/preview", "/api/run"):
            status, data = client.json("POST", route, {"upload": bad, "frame": 0})
            assert status == 404, (route, bad, data)
        status, data = client.json("POST", "/api/cancel", {"job": bad})
        assert status == 404, data
    # The browser's file name is only shown: nothing is written where it points.
    status, data = client.upload(clip, name="../../../escaped.mp4")
    assert status == 200 and data["name"] == "escaped.mp4"
    assert not list(server.work.parent.rglob("escaped.mp4")) and not (Path("/") / "escaped.mp4").exists()
    assert sorted(p.name for p in (server.work / "items" / data["id"]).iterdir()) == ["input.mp4"]
    # So is every name inside an uploaded zip of frames: they are unpacked flat, by base name.
    ok, png = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
    with zipfile.ZipFile(tmp_path / "frames.zip", "w") as archive:
        for i in range(3):
            archive.writestr(f"../../../zipped{i}.png", png.tobytes())
    status, data = client.upload(tmp_path / "frames.zip")
    assert status == 200 and "3 frames, 32x32" in data["facts"], data
    assert not list(server.work.parent.rglob("zipped0.png"))[1:]  # only the one inside the upload's folder
    assert list(server.work.parent.rglob("zipped0.png"))[0].parent == server.work / "items" / data["id"] / "frames"


def test_the_brightness_means_are_sent_once_not_with_every_poll(server, clip, finished):
    """The page polls /api/state every 0.7 s: it sent every upload's per-frame means each time (a 10-minute
    clip's: 0.4 MB a poll). The page names the ones it holds in ?have= and gets them no more."""
    client, upload_id, _ = finished
    other = client.upload(clip)[1]["id"]
    deadline = time.monotonic() + 30
    while not all(u["means"] for u in client.state()["uploads"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    status, state = client.json("GET", f"/api/state?have={upload_id},nonsense")
    uploads = {u["id"]: u for u in state["uploads"]}
    assert status == 200 and uploads[upload_id]["means"] is None and uploads[upload_id]["frames"] == 12
    assert len(uploads[other]["means"]) == 12

def test_sessions_do_not_see_each_other(server, finished):
    owner, upload_id, job = finished
    other = Client(server)
    state = other.state()
    assert state["uploads"] == [] and state["jobs"] == []
    for path in job["files"].values():
        assert other.request("GET", path)[0] == 404
        assert owner.request("GET", path)[0] == 200
    assert other.json("POST", "/api/run", {"upload": upload_id})[0] == 404
    assert other.json("POST", "/api/cancel", {"job": job["id"]})[0] == 404
    forged = Client(server)
    forged.cookie = "unflicker_session=" + "A" * 32
    assert forged.state()["jobs"] == [] and forged.json("POST", "/api/run", {"upload": upload_id})[0] == 404


def test_a_failing_job_says_why_and_the_queue_goes_on(server, clip, tmp_path):
    client = Client(server)
    tiny = client.upload(write_clip(tmp_path / "tiny.mp4", n=4, width=16, height=12))[1]["id"]
    failing = client.json("POST", "/api/run", {"upload": tiny, "settings": {"method": "neural"}})[1]
    after = client.json("POST", "/api/run", {"upload": tiny, "settings": {"method": "classical"}})[1]
    job = client.wait(failing["id"], 60)
    assert job["state"] == "failed" and "too small or too thin for the neural method" in job["message"]
    assert "Traceback" not in job["message"] and str(server.work) not in job["message"]
    assert client.wait(after["id"], 60)["state"] == "done"


FAILING_WORKERS = {  # what a job's process does instead of the worker (in the job's folder), as it happened
    "killed": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",  # as the out-of-memory killer does
    "library": "import json, sys, tempfile\n"
               "open('result.json', 'w').write(json.dumps({'error': f'cannot use work folder {tempfile.gettempdir()}"
               "/unflicker-3f2a/jobs/k1: Permission denied', 'type': 'OutputError'}))\nsys.exit(1)",
    "internal": "import json, sys, traceback\ntry:\n    {}['/srv/models/x']\nexcept KeyError as exc:\n"
                "    traceback.print_exc()\n    open('result.json', 'w').write(json.dumps({'error': "
                "f'internal error (KeyError: {exc})', 'type': 'KeyError'}))\nsys.exit(2)",
}


@pytest.mark.parametrize("failure", list(FAILING_WORKERS))
def test_a_failed_job_says_in_words_what_went_wrong_and_the_console_keeps_the_details(tmp_path, monkeypatch, capsys,
                                                                                     failure):
    """The page said "the job stopped unexpectedly (exit code -9)" and showed the server's temp folder. The console's
    line is written before the job shows as failed (a slow console write below: it was after, and the test read an
    empty console on a loaded machine)."""
    import subprocess
    import sys
    import tempfile

    from unflicker.web.jobs import JobQueue

    log_failure = JobQueue._log_failure

    def slow_log(*args, **kwargs):
        time.sleep(0.3)
        log_failure(*args, **kwargs)

    monkeypatch.setattr(JobQueue, "_log_failure", staticmethod(slow_log))
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kwargs: popen(
        [sys.executable, "-c", FAILING_WORKERS[failure]], **kwargs))
    with app_with_an_upload(tmp_path) as (store, app, token, upload):
        status, body = asgi_get(app, "/api/run", cookie=token, method="POST",
                                body=json.dumps({"upload": upload.id}).encode())
        assert status == 200, body
        job = store.all_jobs()[0]
        deadline = time.monotonic() + 30
        while job.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.state == "failed"
        message, console = job.message, capsys.readouterr().err
    assert {"killed": "the run was stopped: the machine ran out of memory or the process was killed. Try a shorter "
                      "video or one with smaller frames, or the classical method",
            "library": "cannot use work folder (a folder on the server): Permission denied",
            "internal": "the run failed on an internal error of unflicker (KeyError). Try again, or other settings; "
                        "whoever runs the server finds the details in its console"}[failure] == message
    assert "/" not in message and "exit code" not in message
    assert console.startswith(f"unflicker: run of clip.mp4 failed (job {job.folder}): ")
    assert {"killed": "no result; exit code -9 (ended by SIGKILL)",
            "library": f"{tempfile.gettempdir()}/unflicker-3f2a/jobs/k1: Permission denied; exit code 1",
            "internal": "Traceback (most recent call last)"}[failure] in console
    # A folder whose name holds spaces goes whole; a file keeps its name.
    from unflicker.web.jobs import without_paths

    assert without_paths("cannot read /home/ann/My Videos/unflicker/f2.png or /home/ann/My Videos/w",
                         ("/home/ann/My Videos",)) == "cannot read f2.png or (a folder on the server)"


def test_a_frame_of_a_zip_that_cannot_be_read_is_named_as_in_the_zip(server, tmp_path):
    """A run failing on a damaged frame said "cannot read image /frames/f2.png": a piece of the server's
    work folder, not the frame's name."""
    client = Client(server)
    zipped = tmp_path / "my scans.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for t in range(4):
            png = cv2.imencode(".png", np.full((40, 48, 3), 50 * t, np.uint8))[1].tobytes()
            archive.writestr(f"scan/f{t}.png", png[:40] + b"damaged" * 20 if t == 2 else png)
    upload_id = client.upload(zipped)[1]["id"]
    for kind in ("run", "preview"):
        job = client.json("POST", f"/api/{kind}", {"upload": upload_id, "frame": 1,
                                                   "settings": {"method": "classical"}})[1]
        job = client.wait(job["id"])
        assert (job["state"], job["message"]) == ("failed", "cannot read image f2.png"), kind

def test_a_failing_preview_leaves_only_its_log_and_result(tmp_path):
    from unflicker.web import worker

    tiny = write_clip(tmp_path / "tiny.mp4", n=4, width=16, height=12)
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"kind": "preview", "input": str(tiny), "frame": 1,
                                                  "options": {"method": "neural"}, "preview_seconds": 2.0}))
    assert worker.main([str(folder)]) == 1
    assert "too small or too thin" in json.loads((folder / "result.json").read_text())["error"]
    assert sorted(p.name for p in folder.iterdir()) == ["result.json", "spec.json"]


def test_a_preview_plays_at_the_videos_frame_rate(tmp_path):
    """The preview's before | after video came from its cut, a folder of frames, which holds no frame rate: a
    12 fps stretch played at 25 fps, twice as fast (its flicker too), and its 2 s showed as 0:00 in the page."""
    from unflicker.web import worker

    clip = write_clip(tmp_path / "clip.mp4", n=24, width=32, height=24, fps=12)
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"kind": "preview", "input": str(clip), "frame": 12,
                                                  "options": {"method": "classical", "progress": False},
                                                  "preview_seconds": 2.0}))
    assert worker.main([str(folder)]) == 0, (folder / "result.json").read_text()
    info = io.probe(folder / "preview.mp4")
    assert (info.fps, info.frame_count) == (12, 24)


def test_a_png_zip_that_fails_while_zipping_leaves_no_part_nor_frames(tmp_path, monkeypatch):
    import zipfile

    from unflicker.web import worker

    clip = write_clip(tmp_path / "clip.mp4", n=4, width=32, height=24)
    folder = tmp_path / "job"
    folder.mkdir()

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        worker.run({"format": ".zip", "input": str(clip), "options": {"method": "classical", "progress": False}}, folder, [])
    assert not (folder / "output.zip.part").exists() and not (folder / "frames").exists()
    assert not (folder / "output.zip").exists()


def test_cancel_frees_the_worker_for_the_next_job(server, clip):
    client = Client(server)
    upload_id = client.upload(clip)[1]["id"]
    slow = client.json("POST", "/api/run", {"upload": upload_id,
                                            "settings": {"method": "neural", "preset": "paper"}})[1]
    quick = client.json("POST", "/api/run", {"upload": upload_id, "settings": {"method": "classical"}})[1]
    queued = client.json("POST", "/api/run", {"upload": upload_id, "settings": {"method": "classical"}})[1]
    assert client.wait(slow["id"], 30, states=("running",))["state"] == "running"
    jobs = {j["id"]: j for j in client.state()["jobs"]}
    assert (jobs[quick["id"]]["state"], jobs[quick["id"]]["ahead"], jobs[queued["id"]]["ahead"]) == ("queued", 1, 2)
    assert jobs[slow["id"]]["ahead"] is None
    assert client.json("POST", "/api/cancel", {"job": queued["id"]})[1]["state"] == "cancelled"
    client.json("POST", "/api/cancel", {"job": slow["id"]})
    assert client.wait(slow["id"], 15)["state"] == "cancelled"
    assert client.wait(quick["id"], 30)["state"] == "done"
    assert not (server.work / "items" / slow["id"] / "output.mp4").exists()


def test_limits_retention_auth_and_host_checks(tmp_path, clip):
    short = write_clip(tmp_path / "short.mp4", n=4)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(60_000))
    with running_server(tmp_path / "work", "--auth", "ann:s3cret", "--max-upload-mb", "0.05",
                        "--max-seconds", "0.5", "--keep", "2") as server:
        assert Client(server).request("GET", "/")[0] == 401
        assert Client(server, auth="ann:wrong").request("GET", "/")[0] == 401
        client = Client(server, auth="ann:s3cret")
        assert client.request("GET", "/")[0] == 200
        assert client.request("GET", "/", headers={"Host": "attacker.example"})[0] == 403
        assert client.request("POST", "/api/run", b"{}", {"Origin": "http://attacker.example"})[0] == 403
        status, data = client.upload(big)
        assert status == 413 and "larger than this server's upload limit of 0.05 MB" in data["error"]
        status, data = client.upload(clip)
        assert status == 400 and "1.0 s long" in data["error"] and "up to 0.5 s" in data["error"]
        ids = [client.upload(short, name=f"short{i}.mp4")[1]["id"] for i in range(3)]
        assert [u["id"] for u in client.state()["uploads"]] == ids[1:]
        assert not (server.work / "items" / ids[0]).exists() and (server.work / "items" / ids[2]).exists()
    assert "warning" not in " ".join(server.lines)


def test_retention_keeps_each_sessions_newest_within_a_bound_over_all_sessions(tmp_path, monkeypatch):
    """--keep counted the uploads and jobs of all sessions together: one busy session removed another's fresh
    upload."""
    import itertools

    from unflicker.web import server as server_module
    from unflicker.web.store import Job, Limits, Upload

    store = Store(tmp_path / "work", Limits(keep_items=2))
    store.limits.keep_total = 4
    clock = itertools.count(time.time() - 1000)  # one second apart, in the order made

    def upload(session):
        item = Upload(*store.new_folder(), "clip.mp4", created=next(clock))
        item.path = item.folder / "input.mp4"
        store.add_upload(session, item)
        return item

    def kept(session):
        return [item.id for item in [*session.uploads.values(), *session.jobs.values()] if item.folder.exists()]

    quiet, busy, third = (store.session(None, create=True)[0] for _ in range(3))
    mine = upload(quiet)
    theirs = [upload(busy) for _ in range(4)]
    assert kept(quiet) == [mine.id] and kept(busy) == [item.id for item in theirs[2:]]  # each its newest 2
    assert not theirs[0].folder.exists() and not theirs[1].folder.exists()
    first, working = upload(third), upload(third)
    assert kept(quiet) == [] and not mine.folder.exists()  # 5 over all sessions: the oldest of any went
    job = Job(*store.new_folder(), "run", working, {}, created=next(clock), state="running")
    store.add_job(third, job)
    store.limits.keep_total = 0
    store.sweep()  # a running job and the upload it works on are never removed
    assert kept(third) == [working.id, job.id] and kept(busy) == [] and not first.folder.exists()
    store.close()
    # `unflicker serve --keep N`: N a session, 5 N over all sessions.
    limits = []
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: limits.append(args[-1]))
    assert main(["serve", "--keep", "3"]) == 0 and (limits[0].keep_items, limits[0].keep_total) == (3, 15)


def test_startup_lines_and_work_folder():
    assert not any("warning" in line for line in startup_lines("127.0.0.1", 7860, None, "/w"))
    lines = startup_lines("0.0.0.0", 7860, None, "/w")
    assert lines[0] == "unflicker: serving on http://0.0.0.0:7860/ (Ctrl+C to stop)"
    assert "warning: listening on 0.0.0.0" in lines[-1] and "--auth" in lines[-1]


def test_work_folder_must_be_empty_or_its_own(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a work folder"):
        Store(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    store = Store(tmp_path / "work")
    Store(tmp_path / "work")  # its own folder again: fine
    upload = store.new_folder()[1]
    (upload / "input.mp4").write_bytes(b"someone's video")
    store.close()
    assert (tmp_path / "work").is_dir()  # a folder the user named is kept
    assert not upload.exists() and not (tmp_path / "work" / "items").exists()  # not the uploads it held


def bar(name, done, total, eta="00:09"):
    return f"\r{name}: {100 * done // total:3d}%|##        | {done}/{total} [00:01<{eta}, 9.0frame/s]"


@pytest.mark.parametrize("cut", [0, 1, 5, 17, 33, 50, 61])
def test_progress_is_read_from_whole_bars_as_they_come(tmp_path, cut):
    """Bars read in pieces cut anywhere, the fit bar interleaved with the reading one (as the
    neural method prints them), the last count of a closed bar never printed."""
    text = "".join([bar("decode+analyse", n, 60) for n in range(0, 21)]
                   + [bar("atlas", 10, 60), bar("decode+analyse", 21, 60), bar("atlas", 60, 60, "00:00")]
                   + [bar("process", n, 60, "01:00") for n in range(0, 31)]) + "\r" + " " * 40 + "\r"
    log, progress, stages, seen = tmp_path / "log.txt", ProgressLog(tmp_path / "log.txt"), [], []
    log.write_text("")
    for start in range(0, len(text), 64):
        piece = text[start : start + 64]
        with open(log, "a") as file:
            file.write(piece[:cut] if cut < len(piece) else piece)
        progress.update(stages)
        with open(log, "a") as file:
            file.write(piece[cut:] if cut < len(piece) else "")
        progress.update(stages)
        seen.append({s["name"]: s["done"] for s in stages})
    assert stages == [{"name": "decode+analyse", "done": 60, "total": 60, "eta": 0},
                      {"name": "atlas", "done": 60, "total": 60, "eta": 0},
                      {"name": "process", "done": 30, "total": 60, "eta": 60.0}]
    for before, after in zip(seen, seen[1:]):  # no count ever goes back, no stage is made up
        assert set(before) <= set(after) <= {"decode+analyse", "atlas", "process"}
        assert all(after[name] >= done for name, done in before.items())


def test_serve_refuses_bad_options_in_one_line(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    for auth in ("nocolon", ":", "ann:", ":s3cret"):  # an empty login or password was taken
        assert main(["serve", "--port", "0", "--auth", auth]) == 1
        assert capsys.readouterr().err == "unflicker: error: --auth takes user:password, neither empty\n"
    for option, value in (("--keep", "0"), ("--max-upload-mb", "0"), ("--max-seconds", "-1")):
        assert main(["serve", "--port", "0", option, value]) == 1
        assert "must be above 0, --keep at least 1" in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--work-dir", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("unflicker: error: ") and "not a work folder" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_serve_refuses_a_port_out_of_range_and_a_work_dir_it_cannot_make_in_one_line(tmp_path, capsys):
    """--port -1 or 70000 was an OverflowError traceback from bind(); --work-dir naming a file, or a folder
    that cannot be made, a FileExistsError or FileNotFoundError one."""
    for port in ("-1", "70000"):
        assert main(["serve", "--port", port]) == 1
        assert capsys.readouterr().err == f"unflicker: error: --port must be in 0..65535, got {port}\n"
    (tmp_path / "file").write_text("keep me")
    assert main(["serve", "--port", "0", "--work-dir", str(tmp_path / "file")]) == 3
    assert capsys.readouterr().err == f"unflicker: error: --work-dir {tmp_path / 'file'} is a file: give a folder\n"
    assert main(["serve", "--port", "0", "--work-dir", str(tmp_path / "file" / "sub")]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"unflicker: error: cannot make --work-dir {tmp_path / 'file' / 'sub'}: ")
    assert len(err.splitlines()) == 1 and (tmp_path / "file").read_text() == "keep me"


def test_serve_sets_the_engines_workers_and_threads_of_its_jobs(tmp_path, clip, capsys):
    """`unflicker serve` had no --workers/--threads: every job took the machine's cores and one thread."""
    assert main(["serve", "--port", "0", "--workers", "0"]) == 2
    assert capsys.readouterr().err == "unflicker: error: --workers must be at least 1, got 0\n"
    with running_server(tmp_path / "work", "--workers", "1", "--threads", "2") as server:
        client = Client(server)
        upload_id = client.upload(clip)[1]["id"]
        job = client.json("POST", "/api/run", {"upload": upload_id, "settings": {"method": "classical"}})[1]
        assert client.wait(job["id"])["state"] == "done"
        folder = server.work / "items" / job["id"]
        assert json.loads((folder / "spec.json").read_text())["engine"] == {"workers": 1, "threads": 2}
        assert json.loads((folder / "result.json").read_text())["config"]["threads"] == 2


def test_stopping_the_server_stops_a_running_job(tmp_path, clip):
    def workers_on(folder):
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(folder).encode() in cmdline.read_bytes():
                    found.append(cmdline.parent.name)
            except OSError:
                pass
        return found

    with running_server(tmp_path / "work") as server:
        client = Client(server)
        upload_id = client.upload(clip)[1]["id"]
        job = client.json("POST", "/api/run", {"upload": upload_id,
                                               "settings": {"method": "neural", "preset": "paper"}})[1]
        client.wait(job["id"], 30, states=("running",))
        folder = server.work / "items" / job["id"]
        deadline = time.monotonic() + 10  # "running" is set just before the process starts
        while not workers_on(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers_on(folder)
    assert server.process.returncode == 0 and workers_on(folder) == []
    assert server.lines[:2] == [f"unflicker: serving on {server.url} (Ctrl+C to stop)\n",
                                f"unflicker: work folder {server.work}\n"]


def test_what_flickers_is_a_setting_of_the_neural_method():
    from unflicker.web.jobs import parse_settings, run_options

    assert run_options(parse_settings({"kind": "processed"}))["kind"] == "processed"
    assert parse_settings({})["kind"] == "auto"
    assert "kind" not in run_options(parse_settings({"method": "classical", "kind": "film"}))
    with pytest.raises(InputError, match="what flickers"):
        parse_settings({"kind": "sunset"})
    assert run_options(parse_settings({"carry_texture": True}))["carry_texture"] is True
    assert "carry_texture" not in run_options(parse_settings({}))
    assert "carry_texture" not in run_options(parse_settings({"method": "classical", "carry_texture": True}))
    with pytest.raises(InputError, match="carry texture"):
        parse_settings({"carry_texture": "yes"})


@pytest.mark.parametrize("value", [{}, [], ["mp4"]])
def test_a_setting_of_the_wrong_json_type_is_a_message_not_a_server_error(value):
    from unflicker.web.jobs import parse_settings

    for name in ("method", "preset", "kind", "carry_texture", "format", "strength", "keep_slow", "bit_depth"):
        with pytest.raises(InputError):
            parse_settings({name: value})


def asgi_get(app, path: str, query: str = "", cookie: str = "", method: str = "GET",
             body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET (or another method) through the app in this process (a server error
    is a 500, as uvicorn sends it)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": query.encode(), "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"127.0.0.1"), (b"cookie", f"unflicker_session={cookie}".encode()),
                         *((name.encode(), value.encode()) for name, value in (headers or {}).items())]}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception:  # Starlette sends its 500, then raises again for the server to log
        pass
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def sweep_right_after(store, method: str, monkeypatch) -> None:
    """The store's retention sweep runs right after each call of `store.<method>` (every finished item due):
    the racy moment of a request, forced rather than timed."""
    real = getattr(store, method)

    def swept_after(*args):
        found = real(*args)
        store.sweep()
        return found

    monkeypatch.setattr(store.limits, "keep_hours", 0.0)
    monkeypatch.setattr(store, method, swept_after)


@pytest.mark.parametrize("query", ["", "download=1"])
def test_a_job_swept_while_its_file_is_asked_for_is_served_or_gone_never_a_server_error(tmp_path, monkeypatch,
                                                                                           query):
    from unflicker.web.app import create_app
    from unflicker.web.jobs import JobQueue
    from unflicker.web.store import Job, Upload

    store = Store(tmp_path / "work")
    queue = JobQueue(store)
    try:
        session, token = store.session(None, create=True)
        upload = Upload(*store.new_folder(), "clip.mp4")
        job = Job(*store.new_folder(), "run", upload, {}, state="done", files={"output": "output.mp4"})
        (job.folder / "output.mp4").write_bytes(b"the output")
        store.add_upload(session, upload)
        store.add_job(session, job)
        app = create_app(store, queue)
        sweep_right_after(store, "served_file", monkeypatch)  # between the look-up and the sending
        assert asgi_get(app, f"/files/{job.id}/output.mp4", query, token) == (200, b"the output")
        store.sweep()  # the file is sent: its job goes with the next sweep
        assert not job.folder.exists() and store.job(session, job.id) is None
        assert asgi_get(app, f"/files/{job.id}/output.mp4", query, token)[0] == 404
    finally:
        queue.close()
        store.close()


def test_a_new_session_swept_while_its_first_upload_arrives_keeps_the_upload(tmp_path):
    from unflicker.web.store import Upload

    store = Store(tmp_path / "work")
    session, token = store.session(None, create=True)  # the upload's request begins: a new, empty session
    store.sweep()  # meanwhile another session's job ends (or its upload arrives): empty sessions are dropped
    upload = Upload(*store.new_folder(), "clip.mp4")
    upload.path = upload.folder / "input.mp4"
    store.add_upload(session, upload)  # the upload is checked
    assert store.upload(store.session(token)[0], upload.id) is upload
    store.limits.keep_hours = 0.0
    store.sweep()  # and retention removes it in its time, with its folder
    assert not upload.folder.exists() and store.upload(store.session(token)[0], upload.id) is None
    store.close()


@contextmanager
def app_with_an_upload(tmp_path):
    """(the app, a session's cookie, its upload of a 12-frame clip.mp4) on a fresh store and queue, closed after."""
    from unflicker.web.app import create_app
    from unflicker.web.jobs import JobQueue
    from unflicker.web.store import Upload

    store = Store(tmp_path / "work")
    queue = JobQueue(store)
    try:
        session, token = store.session(None, create=True)
        upload = Upload(*store.new_folder(), "clip.mp4", frames=12)
        upload.path = upload.folder / "input.mp4"
        upload.path.write_bytes(b"a video")
        store.add_upload(session, upload)
        yield store, create_app(store, queue), token, upload
    finally:
        queue.close()
        store.close()


@pytest.mark.parametrize("body", [b'{"upload": "ID", "settings": {"strength": 1%s}}' % (b"0" * 400),
                                  b"[" * 100_000 + b"]" * 100_000], ids=["huge-strength", "deeply-nested"])
def test_a_request_json_cannot_overflow_into_a_server_error(tmp_path, body):
    """A strength of 400 digits (an int too large for a float) and a request nested 100 000 deep (JSON's
    recursion limit) were server errors (500), not one line saying what is wrong."""
    with app_with_an_upload(tmp_path) as (store, app, token, upload):
        status, answer = asgi_get(app, "/api/run", cookie=token, method="POST",
                                  body=body.replace(b"ID", upload.id.encode()))
        assert status == 400 and list(json.loads(answer)) == ["error"], answer
        assert store.all_jobs() == []


@pytest.mark.parametrize("kind", ["preview", "run"])
def test_an_upload_swept_while_a_job_of_it_is_asked_for_is_gone_and_no_job_is_queued(tmp_path, monkeypatch, kind):
    with app_with_an_upload(tmp_path) as (store, app, token, upload):
        sweep_right_after(store, "upload", monkeypatch)  # between the look-up and the queueing
        status, body = asgi_get(app, f"/api/{kind}", cookie=token, method="POST",
                                body=json.dumps({"upload": upload.id}).encode())
        assert (status, json.loads(body)) == (404, {"error": "no such upload in this browser session; "
                                                             "upload the video again"})
        assert store.all_jobs() == [] and list(store.items.iterdir()) == []  # no job, nor its folder


def test_a_job_stops_when_its_server_is_killed_outright(tmp_path):
    """SIGKILL of the server left its job (and the job's workers) computing for a restarted server's folder."""
    import signal
    import subprocess
    import sys

    clip = write_clip(tmp_path / "clip.mp4", n=60, width=96, height=64)
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "spec.json").write_text(json.dumps({"kind": "run", "input": str(clip), "format": ".mkv",
                                                  "options": {"method": "neural", "preset": "paper"}}))
    server = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               f"job = subprocess.Popen([sys.executable, '-m', 'unflicker.web.worker', {str(folder)!r}])\n"
                               "print(job.pid, flush=True)\ntime.sleep(600)"], stdout=subprocess.PIPE, text=True)
    job = int(server.stdout.readline())
    time.sleep(3)  # the job under way (the paper preset's atlas takes minutes here)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(job, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(job, signal.SIGKILL)
        pytest.fail("the job outlived its server")
    assert json.loads((folder / "result.json").read_text())["error"] == "cancelled"


def test_an_upload_the_browser_abandons_leaves_no_traceback_and_no_folder(tmp_path, clip):
    import socket

    with running_server(tmp_path / "work") as server:
        data = clip.read_bytes()
        connection = socket.create_connection(("127.0.0.1", server.port))
        connection.sendall(f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filename: a.mp4\r\n"
                           f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2])
        time.sleep(1)
        connection.close()  # the tab closed mid-upload
        deadline = time.time() + 10
        while list((server.work / "items").iterdir()) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert not list((server.work / "items").iterdir())
        assert "Traceback" not in server.output() and "ClientDisconnect" not in server.output()


def test_a_phone_video_is_previewed_and_compared_upright(server, tmp_path):
    """A portrait phone video is stored sideways with a display rotation: the preview's pictures and both
    before | after videos showed it lying on its side."""
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise, as a phone held upright records
        for t in range(6):
            image = np.zeros((64, 96, 3), np.uint8)
            image[:, :48] = 200 if t % 2 else 150  # the stored left half bright: the shown bottom half
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    client = Client(server)
    status, upload = client.upload(path)
    assert status == 200 and "rotation 90" in upload["facts"], upload
    preview = client.json("POST", "/api/preview", {"upload": upload["id"], "frame": 2,
                                                   "settings": {"method": "classical"}})[1]
    run = client.json("POST", "/api/run", {"upload": upload["id"], "settings": {"method": "classical"}})[1]
    preview, run = client.wait(preview["id"]), client.wait(run["id"])
    assert preview["state"] == run["state"] == "done", (preview["message"], run["message"])
    for label in ("before", "after"):
        data = client.request("GET", preview["files"][label])[1]
        picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert picture.shape == (96, 64)  # upright: taller than wide
        assert picture[60:].mean() > 100 > picture[:36].mean()  # the bright half at the bottom
    for job in (preview, run):
        (tmp_path / "compare.mp4").write_bytes(client.request("GET", job["files"]["compare"])[1])
        info = io.probe(tmp_path / "compare.mp4")
        assert (info.width, info.height, info.rotation) == (128, 96, 0), job["kind"]
        frame = frames_of(tmp_path / "compare.mp4")[0]
        assert frame[60:].mean() > 0.4 > frame[:36].mean()


def test_an_upload_to_a_full_disk_says_so_in_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    """A full disk failed the upload with a server error (the page said "the server answered 500")."""
    import builtins

    from unflicker.web import app as app_module
    from unflicker.web.app import create_app
    from unflicker.web.jobs import JobQueue

    class FullDisk:
        def __init__(self, *args):
            self.file = builtins.open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    store = Store(tmp_path / "work")
    queue = JobQueue(store)
    try:
        monkeypatch.setattr(app_module, "open", FullDisk, raising=False)
        status, body = asgi_get(create_app(store, queue), "/api/upload", method="POST", body=b"some video")
        assert (status, json.loads(body)) == (507, {"error": "upload cannot be stored on the server: "
                                                             "No space left on device"})
        assert list(store.items.iterdir()) == []
    finally:
        queue.close()
        store.close()


@pytest.mark.parametrize("kind", ["preview", "run"])
@pytest.mark.parametrize("failing", ["folder", "spec"])
def test_a_job_asked_for_on_a_full_disk_says_so_in_one_line(tmp_path, monkeypatch, kind, failing):
    """A full disk made Preview or Run a server error (the page said "the server answered 500")."""
    with app_with_an_upload(tmp_path) as (store, app, token, upload):
        def full_disk():
            raise OSError(28, "No space left on device")

        if failing == "folder":
            monkeypatch.setattr(store, "new_folder", full_disk)
        else:
            monkeypatch.setattr(Path, "write_text", lambda *args, **kwargs: full_disk())
        status, body = asgi_get(app, f"/api/{kind}", cookie=token, method="POST",
                                body=json.dumps({"upload": upload.id}).encode())
        assert (status, json.loads(body)) == (507, {"error": "the server cannot store the job's files: "
                                                             "No space left on device"})
        assert store.all_jobs() == [] and list(store.items.iterdir()) == [upload.folder]  # no job folder left
