"""The pipeline end to end: stages kept by --keep-work, --stop-after, the neural method's output."""

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
