"""The pipeline end to end (in-process): --stop-after stages, the recorded settings, errors."""

import cv2
import numpy as np
import pytest

from unflicker import io, metrics, synth
from unflicker.errors import OutputError
from unflicker.pipeline import RunConfig, deflicker_file


@pytest.fixture(scope="module")
def flickering_folder(tmp_path_factory):
    rng = np.random.default_rng(3)
    photo = cv2.GaussianBlur(rng.random((200, 260, 3)).astype(np.float32), (0, 0), 2.5)
    photo = (photo - photo.min()) / (photo.max() - photo.min())
    clean = synth.camera_move_clip(photo, 10, (60, 84), motion="pan", seed=3)
    folder = tmp_path_factory.mktemp("clip") / "frames"
    folder.mkdir()
    for i, frame in enumerate(synth.add_flicker(clean, kind="global", strength=1.5, seed=4)):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    return folder


def read_folder(folder):
    return [io.to_float(f.image) for f in io.read_frames(folder)]


def workers1(**kw):
    from unflicker.config import EngineConfig

    return RunConfig(progress=False, engine=EngineConfig(workers=1), **kw)


def test_stop_after_atlas_keeps_only_the_atlas_stage(tmp_path, flickering_folder):
    work = tmp_path / "work"
    deflicker_file(flickering_folder, None, workers1(method="neural", atlas_steps=20, stop_after="atlas",
                                                     keep_work=work))
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == ["atlas", "jobs"]
    names = sorted(p.name for p in (work / "atlas").iterdir())
    assert names == sorted(p.name for p in flickering_folder.iterdir())
    atlas = read_folder(work / "atlas")
    assert max(atlas[0].shape[:2]) <= 256
    # A_t carries no per-frame flicker: its global brightness barely moves, the input's does.
    assert metrics.flicker_index(atlas)["luma"] < 0.3 * metrics.flicker_index(read_folder(flickering_folder))["luma"]


def test_neural_run_keeps_size_names_and_removes_flicker_and_records_its_settings(tmp_path, flickering_folder):
    import json

    work, output = tmp_path / "work", tmp_path / "out"
    summary = deflicker_file(flickering_folder, output, workers1(method="neural", atlas_steps=20, keep_work=work))
    result, source = read_folder(output), read_folder(flickering_folder)
    assert [p.name for p in sorted(output.iterdir())] == [p.name for p in sorted(flickering_folder.iterdir())]
    assert result[0].shape == source[0].shape
    assert metrics.flicker_index(result)["luma"] < 0.5 * metrics.flicker_index(source)["luma"]
    (job,) = (work / "jobs").iterdir()
    recorded = json.loads((job / "config.json").read_text())
    assert recorded == summary.config and recorded["method"] == "neural"
    assert recorded["neural"]["atlas"]["steps"] == 20 and len(recorded["weights"]["filter"]) == 64
    assert sorted(p.name for p in job.glob("segment-*.npy")) == ["segment-00000.npy"]


def test_a_video_output_carries_a_short_settings_tag(tmp_path, flickering_folder):
    import av

    summary = deflicker_file(flickering_folder, tmp_path / "out.mp4", workers1(method="classical"))
    with av.open(str(tmp_path / "out.mp4")) as container:
        comment = container.metadata.get("comment", "")
    from unflicker.config import digest

    assert comment.startswith("unflicker ") and "classical" in comment and digest(summary.config) in comment


def test_stop_after_needs_keep_work(flickering_folder):
    with pytest.raises(OutputError, match="keep-work"):
        deflicker_file(flickering_folder, None, RunConfig(method="neural", stop_after="atlas"))


def test_an_error_in_a_segment_leaves_no_output_and_no_work_folder(tmp_path, flickering_folder, monkeypatch):
    import tempfile

    import unflicker.neural

    real_process = unflicker.neural.NeuralDeflicker.process

    def fails_at_frame_3(self, t, frame, prepared=None):
        if t == 3:
            raise OutputError("disk full")
        return real_process(self, t, frame, prepared)

    monkeypatch.setattr(unflicker.neural.NeuralDeflicker, "process", fails_at_frame_3)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(OutputError, match="disk full"):
        deflicker_file(flickering_folder, tmp_path / "out", workers1(method="neural", atlas_steps=5))
    assert not (tmp_path / "out").exists()
    assert list(temp.iterdir()) == []  # the temporary work folder is gone
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_the_background_writer_keeps_order_and_reports_the_sinks_errors():
    import threading
    import time

    from unflicker.errors import OutputError
    from unflicker.pipeline import BackgroundSink

    class Sink:
        def __init__(self, fail_at=None, fail_in="put"):
            self.written, self.threads, self.closed, self.aborted = [], set(), False, False
            self.fail_at, self.fail_in, self.converting = fail_at, fail_in, set()

        def prepare(self, image, pts=None, name=None, alpha=None):
            self.converting.add(threading.get_ident())
            time.sleep(0.005)
            if pts == self.fail_at and self.fail_in == "prepare":
                raise OutputError("cannot convert")
            return pts

        def put(self, pts):
            time.sleep(0.005)
            if pts == self.fail_at and self.fail_in == "put":
                raise OutputError("disk full")
            self.written.append(pts)
            self.threads.add(threading.get_ident())

        def close(self):
            self.closed = True
            return "done"

        def abort(self):
            self.aborted = True

    sink = Sink()
    background = BackgroundSink(sink, depth=2)
    for t in range(10):
        background.write(np.zeros((2, 2, 3), np.float32), t)
        assert len(background._encode._pending) <= 2  # never more than depth frames waiting
    assert background.close() == "done" and sink.closed
    assert sink.written == list(range(10)) and threading.get_ident() not in sink.threads
    # conversion and encoding each on a thread of their own, neither the caller's
    assert len(sink.converting) == 1 and len(sink.threads) == 1 and not sink.converting & sink.threads

    for stage, message in (("put", "disk full"), ("prepare", "cannot convert")):
        failing = Sink(fail_at=3, fail_in=stage)
        background = BackgroundSink(failing, depth=1)
        with pytest.raises(OutputError, match=message):
            for t in range(10):
                background.write(np.zeros((2, 2, 3), np.float32), t)
        assert failing.written == [0, 1, 2]
        background.abort()
        assert failing.aborted and not failing.closed


def test_a_one_segment_clip_is_decoded_once_and_its_output_is_the_same(tmp_path, flickering_folder, monkeypatch):
    """The plan's pass also spills a clip that fits one segment and keeps each frame's timestamp and
    name, so the run decodes the input once; the output equals a run that decodes it again to write
    (names, timestamps, bits). Two segments, or a blend with the input, decode it again."""
    from unflicker.framestore import FrameFile
    from unflicker.pipeline import FileSource, Job
    from unflicker.segments import SegmentConfig

    info = io.probe(flickering_folder)
    video = tmp_path / "in.mkv"
    with io.VideoWriter(video, info, codec="ffv1") as writer:
        for frame in io.read_frames(flickering_folder, info):
            writer.write(frame.image, None, frame.name)
    decodes = []
    original = FileSource.frames

    def counted(self):  # a decode counts once it yields a frame (decoders are made before they are used)
        for i, frame in enumerate(original(self)):
            if i == 0:
                decodes.append(1)
            yield frame

    monkeypatch.setattr(FileSource, "frames", counted)

    def run(source, name, **kw):
        decodes.clear()
        summary = deflicker_file(source, tmp_path / name, workers1(method="classical", **kw))
        return len(decodes), summary

    assert run(flickering_folder, "once")[0] == 1 and run(video, "once.mkv")[0] == 1
    assert run(video, "two.mkv", segments=SegmentConfig(frames=4, margin=1))[0] == 2  # plan, then spill
    assert run(video, "half.mkv", strength=0.5)[0] == 2  # plan and spill, then the blend's
    work = tmp_path / "work"
    assert run(video, "kept.mkv", keep_work=work)[0] == 1
    assert not list(work.rglob(".partial-*"))
    spilled = []
    original_create = FrameFile.create
    monkeypatch.setattr(FrameFile, "create", classmethod(lambda cls, path, *a: spilled.append(path) or
                                                         original_create(path, *a)))
    count, resumed = run(video, "resumed.mkv", keep_work=work)  # segment 0 is done: nothing to spill
    assert count == 1 and resumed.reused == 1 and spilled == []
    # The reference: no spill while planning, and the input decoded again for the output.
    monkeypatch.setattr(Job, "_input_needed", lambda self: True)
    monkeypatch.setattr(Job, "_spill_while_planning", lambda self, n: False)
    assert run(flickering_folder, "again")[0] == 3 and run(video, "again.mkv")[0] == 3
    assert [p.name for p in sorted((tmp_path / "once").iterdir())] == [p.name for p in sorted(flickering_folder.iterdir())]
    for a, b in (("once", "again"), ("once.mkv", "again.mkv"), ("kept.mkv", "again.mkv"), ("resumed.mkv", "again.mkv")):
        first, second = list(io.read_frames(tmp_path / a)), list(io.read_frames(tmp_path / b))
        assert [(f.pts, f.name) for f in first] == [(f.pts, f.name) for f in second]
        assert all(np.array_equal(f.image, g.image) for f, g in zip(first, second))


def test_a_short_clip_with_a_cut_drops_the_spill_made_while_planning(tmp_path, monkeypatch):
    """A clip short enough for one segment but cut in two: the whole-clip spill is dropped (nothing
    of it stays in the work folder) and each segment gets its own frames; the output equals a run
    that spills nothing while planning."""
    from unflicker.pipeline import Job

    def shot(seed):  # a window sliding over its own smooth random texture
        big = cv2.GaussianBlur(np.random.default_rng(seed).random((80, 112, 3)).astype(np.float32), (0, 0), 3.0)
        big = 0.15 + 0.55 * (big - big.min()) / (big.max() - big.min())
        return [big[t : t + 48, t : t + 64] for t in range(10)]

    folder = tmp_path / "cut"
    folder.mkdir()
    for i, frame in enumerate([*shot(1), *shot(2)]):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    work = tmp_path / "work"
    summary = deflicker_file(folder, tmp_path / "out", workers1(method="classical", keep_work=work))
    assert summary.segments == 2 and not list(work.rglob("*.partial*")) and not list(work.rglob("frames/*"))
    monkeypatch.setattr(Job, "_spill_while_planning", lambda self, n: False)
    deflicker_file(folder, tmp_path / "reference", workers1(method="classical"))
    assert all(np.array_equal(a, b) for a, b in zip(read_folder(tmp_path / "out"), read_folder(tmp_path / "reference")))


def test_the_plot_title_names_the_clip_as_the_caller_says(tmp_path, flickering_folder, monkeypatch):
    import unflicker.visualize as visualize

    titles = []
    real = visualize.write_brightness_plot
    monkeypatch.setattr(visualize, "write_brightness_plot",
                        lambda before, after, path, title="", overwrite=False: titles.append(title) or
                        real(before, after, path, title, overwrite))
    deflicker_file(flickering_folder, tmp_path / "a", RunConfig(method="classical", progress=False,
                                                                plot=tmp_path / "a.png"))
    deflicker_file(flickering_folder, tmp_path / "b", RunConfig(method="classical", progress=False,
                                                                plot=tmp_path / "b.png", plot_label="holiday.mov"))
    assert f"{flickering_folder.name} -> a," in titles[0] and "channel: holiday.mov, flicker" in titles[1]


def test_an_output_that_is_a_link_stays_a_link(tmp_path, flickering_folder):
    """--overwrite through a symlink replaces its target, not the link (which pointed to the old output)."""
    config = RunConfig(method="classical", progress=False)
    elsewhere = tmp_path / "nas"
    elsewhere.mkdir()
    deflicker_file(flickering_folder, elsewhere / "frames", config)
    deflicker_file(flickering_folder, elsewhere / "clip.mkv", config)
    (tmp_path / "frames").symlink_to(elsewhere / "frames")
    (tmp_path / "clip.mkv").symlink_to(elsewhere / "clip.mkv")
    stamp = {p: p.stat().st_mtime_ns for p in [*(elsewhere / "frames").iterdir(), elsewhere / "clip.mkv"]}
    redo = RunConfig(method="classical", progress=False, overwrite=True, strength=0.5)
    for name in ("frames", "clip.mkv"):
        deflicker_file(flickering_folder, tmp_path / name, redo)
        assert (tmp_path / name).is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv", "frames", "nas"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["clip.mkv", "frames"]  # nothing left beside
    assert all(p.stat().st_mtime_ns != stamp.get(p, 0) for p in [*(elsewhere / "frames").iterdir(), elsewhere / "clip.mkv"])
    assert len(list((elsewhere / "frames").iterdir())) == len(list(flickering_folder.iterdir()))


def test_a_link_to_another_kind_of_output_is_refused(tmp_path, flickering_folder):
    config = RunConfig(method="classical", progress=False, overwrite=True)
    (tmp_path / "real.mp4").write_bytes(b"old")
    (tmp_path / "out.mkv").symlink_to(tmp_path / "real.mp4")  # an FFV1 .mkv would go into real.mp4
    (tmp_path / "frames").symlink_to(tmp_path / "clip.mkv")  # dangling: frames would become a video file
    for name in ("out.mkv", "frames"):
        with pytest.raises(OutputError, match="another kind of output"):
            deflicker_file(flickering_folder, tmp_path / name, config)
    assert (tmp_path / "real.mp4").read_bytes() == b"old" and not (tmp_path / "clip.mkv").exists()


def test_the_summary_says_when_its_flicker_index_is_of_the_frames_before_lossy_encoding(tmp_path, flickering_folder):
    config = RunConfig(method="classical", progress=False)
    lossy = deflicker_file(flickering_folder, tmp_path / "out.mp4", config)
    exact = deflicker_file(flickering_folder, tmp_path / "out.mkv", config)
    ffv1 = deflicker_file(flickering_folder, tmp_path / "ffv1.mp4", RunConfig(method="classical", progress=False,
                                                                               codec="ffv1"))
    assert "before lossy encoding" in lossy.line() and "before lossy encoding" not in exact.line()
    assert "before lossy encoding" not in ffv1.line()


def test_an_output_named_like_an_image_is_a_folder_and_says_so(tmp_path, flickering_folder):
    with pytest.warns(UserWarning, match="out.png is made a folder"):
        deflicker_file(flickering_folder, tmp_path / "out.png", RunConfig(method="classical", progress=False))
    assert (tmp_path / "out.png").is_dir() and len(list((tmp_path / "out.png").iterdir())) == \
        len(list(flickering_folder.iterdir()))


def test_the_summary_line_of_a_one_frame_input_says_frame():
    """A one-frame input was summed up as "wrote out.mp4: 1 frames in ..."."""
    from pathlib import Path

    from unflicker.pipeline import RunSummary

    assert RunSummary(Path("out.mkv"), 1, 1.0, 0.0, 0.0).line().startswith("wrote out.mkv: 1 frame in 1.0 s")
    assert RunSummary(Path("out.mkv"), 2, 1.0, 0.0, 0.0, 1).line().startswith("wrote out.mkv: 2 frames in 1.0 s")



def test_mlp_atlas_note_names_the_steps_the_run_takes():
    """The MLP atlas's warning said 'its 10000 steps' whatever --atlas-steps gave."""
    from unflicker.config import mlp_atlas_note

    assert "takes 3 steps per segment" in mlp_atlas_note(RunConfig(preset="paper", atlas_steps=3))
    assert "takes 10000 steps per segment" in mlp_atlas_note(RunConfig(preset="paper"))
