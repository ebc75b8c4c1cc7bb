"""A full disk (ENOSPC, simulated) wherever a run writes: one line naming the folder and what is free there,
a non-zero exit, no traceback, nothing partial left; and --keep-work refused up front where it cannot fit."""

import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from unflicker import io, synth
from unflicker.cli import main


@pytest.fixture
def clip(tmp_path):
    """12 flickering frames of 48x64 as a PNG folder (one segment)."""
    rng = np.random.default_rng(1)
    photo = cv2.GaussianBlur(rng.random((160, 200, 3)).astype(np.float32), (0, 0), 3)
    frames = synth.add_flicker(synth.camera_move_clip(photo, 12, (48, 64), motion="pan", seed=1), kind="global",
                               strength=1.5, seed=2)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    return folder


def full(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_full_temporary_folder_is_one_line_and_leaves_nothing(tmp_path, clip, capsys, monkeypatch):
    """Spilling the input's frames into the temporary work folder on a full disk ended in a traceback (an OSError
    of os.pwrite, naming no file). Now: which folder, what is free there, what to do; the folder is removed."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(os, "pwrite", full)
    code, out, err = run_cli(capsys, "run", "--method", "classical", clip, "-o", tmp_path / "out.mkv", "--quiet")
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1, err
    assert lines[0].startswith(f"unflicker: error: no space left on device in {temp} for the temporary work folder (")
    assert "free" in lines[0] and lines[0].endswith("set TMPDIR to a folder on a larger disk")
    assert list(temp.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["in", "tmp"]


def test_a_full_disk_in_a_frame_store_names_its_folder(tmp_path, monkeypatch):
    """A worker's frame store (the neural method's, an unnamed file in TMPDIR) on a full disk raised an OSError
    naming no file: the worker crashed, was retried three times (a traceback each) and the run said only 'its
    worker died 3 times'. The error now names the folder, and the task's error says where and what is free."""
    from unflicker.framestore import FrameStore
    from unflicker.segments import file_error

    store = FrameStore((4, 4, 3), np.float16, directory=str(tmp_path))
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError) as caught:
        store.append(np.zeros((4, 4, 3), np.float32))
    store.close()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
    task = SimpleNamespace(segment=SimpleNamespace(index=3), output=None)
    message = str(file_error(task, caught.value))
    assert message.startswith(f"no space left on device in {tmp_path} for temporary files (") and "free)" in message


def test_keep_work_without_room_for_the_segments_is_refused_before_any_work(tmp_path, clip, capsys, monkeypatch):
    """--keep-work keeps every frame at 16 bits: a disk that cannot hold that was found full after the work (an
    hour of 1080p: over 1 TB). The run is now refused at once, naming both numbers; nothing is made."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=200_000))
    work = tmp_path / "work"
    code, out, err = run_cli(capsys, "run", "--method", "classical", clip, "-o", tmp_path / "out.mkv",
                             "--keep-work", work, "--quiet")
    need = 12 * 48 * 64 * 3 * 2  # 221 184 bytes: every frame once, 16 bits
    assert code == 3 and err.strip() == (f"unflicker: error: --keep-work {work} needs at least 221.2 kB for this video's "
                                         f"segments (every frame kept at 16 bits), its disk has 200.0 kB free: free "
                                         f"space there, or give --keep-work a folder on a larger disk"), err
    assert need == 221_184 and not work.exists() and not (tmp_path / "out.mkv").exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=need))  # just enough: it runs
    code, out, err = run_cli(capsys, "run", "--method", "classical", clip, "-o", tmp_path / "out.mkv",
                             "--keep-work", work, "--quiet")
    assert code == 0, err


def test_a_full_disk_writing_frames_is_one_line(tmp_path, clip, capsys, monkeypatch):
    """A folder output on a full disk: OpenCV's imwrite printed libpng's own lines ('libpng error: Write Error')
    and said only 'cannot write frame'. Frames are now encoded, then written by Python: its error says why."""
    written = Path.write_bytes

    def write_bytes(path, data):
        if path.suffix == ".png" and path.parent.name.startswith(".out.partial"):
            full()
        return written(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code, out, err = run_cli(capsys, "run", "--method", "classical", clip, "-o", tmp_path / "out", "--quiet")
    assert code == 3 and err.strip().startswith(f"unflicker: error: writing out failed: no space left on device in "
                                                f"{tmp_path} ("), err
    assert "free)" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_the_web_page_says_a_full_disk_in_its_words():
    """The page's message for a full disk matched the system's wording only ('No space left on device'); the
    library's line for a full work folder starts 'no space left on device in ...'."""
    from unflicker.resume import no_space
    from unflicker.web.jobs import failure_message

    message = failure_message(SimpleNamespace(kind="run"), {"error": no_space(tempfile.gettempdir())}, 1)
    assert message.startswith("the run stopped: the server's disk is full")


def test_a_temporary_folder_too_small_for_the_segments_in_flight_is_warned_of_first(tmp_path, clip, monkeypatch):
    """The temporary work folder holds the segments in flight (workers + 1: each frame's input and its 16-bit
    result), about 150 GB at 4K with 16 workers: nothing said so before the disk filled. A disk that cannot hold
    them is named first, with the numbers; a roomy one is not."""
    from unflicker import pipeline
    from unflicker.config import EngineConfig, RunConfig

    real = shutil.disk_usage
    free = {"bytes": 10_000}
    monkeypatch.setattr(pipeline.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=free["bytes"]))
    config = RunConfig(method="classical", progress=False, engine=EngineConfig(workers=2))
    # 12 frames of 48x64 at 8 bits: one segment of 12 frames, 12 x 3072 x 9 = 331776 bytes (classical: no scratch).
    with pytest.warns(UserWarning, match=r"the temporary work folder .* may need about 331.8 kB at once \(1 segment "
                                         r"of up to 12 frames in flight\), its disk has 10.0 kB free: set TMPDIR"):
        pipeline.deflicker_file(clip, tmp_path / "a.mkv", config)
    free["bytes"] = 10**12
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.deflicker_file(clip, tmp_path / "b.mkv", config)


def test_the_temporary_folders_estimate_counts_the_neural_methods_own_frames(tmp_path, monkeypatch):
    """Measured at 4K (2 segments of 60 frames, 2 workers; research notes, session 27): 14.96 GB at the peak, of
    which the neural method's own 16-bit frames of its running segments are 6 of the 15 bytes a pixel."""
    from unflicker import pipeline
    from unflicker.config import EngineConfig, RunConfig

    job = pipeline.Job(None, None, RunConfig(method="neural", engine=EngineConfig(workers=2)))
    job.source = SimpleNamespace(info=SimpleNamespace(frame_count=100, width=3840, height=2160, bit_depth=8))
    job.spec = SimpleNamespace(name="neural")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**9))
    with pytest.warns(UserWarning, match=r"may need about 14.9 GB at once \(2 segments of up to 60 frames"):
        job._check_temp_room(tmp_path)
