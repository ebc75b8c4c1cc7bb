"""The pipeline end to end: stages kept by --keep-work, --stop-after, the neural method's output."""

import cv2
import numpy as np
import pytest

from unflicker import io, metrics, synth
from unflicker.errors import InputError, OutputError
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


def test_stop_after_atlas_keeps_only_the_atlas_stage(tmp_path, flickering_folder):
    work = tmp_path / "work"
    config = RunConfig(method="neural", atlas_steps=20, stop_after="atlas", keep_work=work, progress=False)
    deflicker_file(flickering_folder, None, config)
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == ["atlas"]
    names = sorted(p.name for p in (work / "atlas").iterdir())
    assert names == sorted(p.name for p in flickering_folder.iterdir())
    atlas = read_folder(work / "atlas")
    assert max(atlas[0].shape[:2]) <= 256
    # A_t carries no per-frame flicker: its global brightness barely moves, the input's does.
    assert metrics.flicker_index(atlas)["luma"] < 0.3 * metrics.flicker_index(read_folder(flickering_folder))["luma"]


def test_neural_run_keeps_size_names_and_removes_flicker(tmp_path, flickering_folder):
    work, output = tmp_path / "work", tmp_path / "out"
    config = RunConfig(method="neural", atlas_steps=20, keep_work=work, progress=False)
    deflicker_file(flickering_folder, output, config)
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == ["atlas", "filter", "project", "refine"]
    result, source = read_folder(output), read_folder(flickering_folder)
    assert [p.name for p in sorted(output.iterdir())] == [p.name for p in sorted(flickering_folder.iterdir())]
    assert result[0].shape == source[0].shape
    assert metrics.flicker_index(result)["luma"] < 0.5 * metrics.flicker_index(source)["luma"]


def test_stop_after_needs_keep_work(flickering_folder):
    with pytest.raises(OutputError, match="keep-work"):
        deflicker_file(flickering_folder, None, RunConfig(method="neural", stop_after="atlas"))


def test_frames_prepared_ahead_keep_order_and_raise_where_they_failed():
    from unflicker.pipeline import _ahead

    assert list(_ahead(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield from range(3)
        raise InputError("frame 3 is corrupt")

    got = []
    with pytest.raises(InputError, match="frame 3 is corrupt"):
        for item in _ahead(failing(), 2):
            got.append(item)
    assert got == [0, 1, 2]


def test_a_consumer_that_stops_early_stops_the_worker_and_closes_the_source():
    import threading

    from unflicker.pipeline import _ahead

    produced, closed = [], threading.Event()

    def source():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    stream = _ahead(source(), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # joins the worker
    assert closed.is_set()
    assert len(produced) <= 3 + 2 + 1  # never more than `depth` (and the one being put) ahead
    assert not any(t.name == "unflicker-ahead" for t in threading.enumerate())


def test_prepared_ahead_gives_the_same_output_as_frame_by_frame(tmp_path, flickering_folder, monkeypatch):
    from unflicker import pipeline

    config = RunConfig(method="neural", atlas_steps=20, progress=False)
    deflicker_file(flickering_folder, tmp_path / "ahead", config)
    monkeypatch.setattr(pipeline, "_prepared", lambda prepare, frames: ((t, tag, image, None) for t, tag, image in frames))
    deflicker_file(flickering_folder, tmp_path / "inline", config)
    for a, b in zip(read_folder(tmp_path / "ahead"), read_folder(tmp_path / "inline"), strict=True):
        assert np.array_equal(a, b)


def test_the_threaded_pass_halves_torch_threads_and_restores_them(tmp_path, flickering_folder, monkeypatch):
    import torch

    import unflicker.neural

    seen = []
    real_prepare = unflicker.neural.NeuralDeflicker.prepare

    def recording_prepare(self, t, frame):
        seen.append(torch.get_num_threads())
        return real_prepare(self, t, frame)

    monkeypatch.setattr(unflicker.neural.NeuralDeflicker, "prepare", recording_prepare)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        deflicker_file(flickering_folder, tmp_path / "out", RunConfig(method="neural", atlas_steps=5, progress=False))
        assert set(seen) == {1} and len(seen) == 10
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_error_in_the_main_thread_stops_the_worker_before_the_run_returns(tmp_path, flickering_folder,
                                                                            monkeypatch):
    import threading

    import unflicker.neural

    real_process = unflicker.neural.NeuralDeflicker.process

    def fails_at_frame_3(self, t, frame, prepared=None):
        if t == 3:
            raise OutputError("disk full")
        return real_process(self, t, frame, prepared)

    monkeypatch.setattr(unflicker.neural.NeuralDeflicker, "process", fails_at_frame_3)
    with pytest.raises(OutputError, match="disk full"):
        deflicker_file(flickering_folder, tmp_path / "out", RunConfig(method="neural", atlas_steps=5, progress=False))
    assert not any(t.name == "unflicker-ahead" for t in threading.enumerate())
    assert not (tmp_path / "out").exists()
