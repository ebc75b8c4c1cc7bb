"""Awkward inputs through `unflicker run`: each gives a sensible output or one error line, never a traceback.

Grey video and grey PNG frames, RGBA frames (alpha kept in folders, dropped with a warning for
video), odd and tiny sizes, very dark, very bright, static and pure-noise clips, variable frame
rate; then the neural method's size limit, resume from --keep-work, progress bars, presets, and
the Python API `unflicker.deflicker`.
"""

import dataclasses
import re
import subprocess
import sys
import tempfile
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import av
import cv2

import numpy as np
import pytest

import unflicker
from unflicker import io, metrics, pipeline
from unflicker.cli import main
from unflicker.config import EngineConfig
from unflicker.errors import InputError
from unflicker.pipeline import RunConfig, deflicker_file
from unflicker.segments import SegmentConfig


def clip(n=8, h=24, w=32, base=0.5, spread=0.25, flicker=0.3, seed=0):
    """(n, h, w, 3) uint8: a smooth random texture around `base`, each frame times a random gain."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2)
    texture = (texture - texture.min()) / (texture.max() - texture.min() + 1e-9)
    gains = 1 + flicker * rng.uniform(-1, 1, n)
    frames = (base + spread * (texture - 0.5))[None] * gains[:, None, None, None]
    return np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8)


def write_pngs(folder, frames):
    """Frames (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, uint8 or uint16, as PNG files 0.png, 1.png..."""
    folder.mkdir()
    for i, frame in enumerate(frames):
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR if frame.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    return folder


def write_video(path, frames, codec="libx264", pix_fmt="yuv420p", pts=None):
    """RGB uint8 frames (or (H, W) grey with pix_fmt gray) as a video; pts in 1/1000 s gives VFR."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "8"}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="gray" if image.ndim == 2 else "rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code, err, expect_code=0):
    """The exit code, and stderr holding only one-line `unflicker:` messages (never a traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == expect_code, err
    assert all(line.startswith("unflicker: ") for line in lines), err


def read(path):
    return np.stack([io.to_float(f.image) for f in io.read_frames(path)])


def luma_flicker(frames):
    return metrics.flicker_index(list(frames))["luma"]


# --- grey, alpha, sizes -------------------------------------------------------------------------

def test_grey_video_stays_grey_in_mkv(tmp_path, capsys):
    frames = clip(6)[..., 1]  # (T, H, W) grey
    source = write_video(tmp_path / "grey.mkv", list(frames), codec="ffv1", pix_fmt="gray")
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mkv", "--quiet")
    assert_clean(code, err)
    info = io.probe(tmp_path / "out.mkv")
    assert (info.frame_count, info.width, info.height, info.pixel_format) == (6, 32, 24, "gray")
    assert luma_flicker(read(tmp_path / "out.mkv")) < 0.5 * luma_flicker(read(source))


def test_grey_png_folder_gives_grey_pngs_and_a_colour_mp4(tmp_path, capsys):
    source = write_pngs(tmp_path / "grey", list(clip(6)[..., 0]))
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out", "--quiet")
    assert_clean(code, err)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(p.name for p in source.iterdir())
    image = cv2.imread(str(tmp_path / "out" / "0.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (24, 32)  # one channel, as the input
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mp4", "--quiet")
    assert_clean(code, err)
    assert io.probe(tmp_path / "out.mp4").frame_count == 6


def test_mixed_grey_and_colour_folder_is_one_error_line(tmp_path, capsys):
    frames = clip(4)
    source = write_pngs(tmp_path / "mixed", [frames[0, ..., 0], *frames[1:]])
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out", "--quiet")
    assert_clean(code, err, expect_code=2)
    assert "mixed grey and colour" in err and not (tmp_path / "out").exists()


def test_rgba_frames_keep_alpha_in_a_folder_and_warn_for_video(tmp_path, capsys):
    rgb = clip(5)
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:3], dtype=np.uint8)
    source = write_pngs(tmp_path / "rgba", list(np.concatenate([rgb, alpha[..., None]], axis=3)))
    assert io.probe(source).has_alpha
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out", "--quiet")
    assert_clean(code, err)
    for i in range(5):
        written = cv2.imread(str(tmp_path / "out" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        assert written.shape == (24, 32, 4) and np.array_equal(written[..., 3], alpha[i])
    assert luma_flicker(read(tmp_path / "out")) < 0.5 * luma_flicker(rgb / 255.0)
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mp4", "--quiet")
    assert_clean(code, err)
    assert "alpha channel is dropped" in err and io.probe(tmp_path / "out.mp4").frame_count == 5


@pytest.mark.parametrize("output", ["out.mp4", "out"])
def test_odd_tiny_size_is_kept(tmp_path, capsys, output):
    source = write_pngs(tmp_path / "odd", list(clip(6, h=17, w=33)))
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / output, "--quiet")
    assert_clean(code, err)
    result = read(tmp_path / output)
    assert result.shape == (6, 17, 33, 3)


# --- content extremes ---------------------------------------------------------------------------

@pytest.mark.parametrize("base", [0.02, 0.97], ids=["dark", "bright"])
def test_very_dark_and_very_bright_clips_stay_so_with_less_flicker(tmp_path, capsys, base):
    frames = clip(10, base=base, spread=0.02, flicker=0.02 / base)
    source = write_pngs(tmp_path / "clip", list(frames))
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out", "--quiet")
    assert_clean(code, err)
    result, before = read(tmp_path / "out"), frames / 255.0
    assert result.shape == before.shape and np.isfinite(result).all()
    assert abs(result.mean() - before.mean()) < 0.02
    assert luma_flicker(result) <= luma_flicker(before)


def test_static_clip_is_left_alone(tmp_path, capsys):
    frames = np.repeat(clip(1, flicker=0), 8, axis=0)
    source = write_pngs(tmp_path / "static", list(frames))
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out", "--quiet")
    assert_clean(code, err)
    assert np.abs(read(tmp_path / "out") * 255 - frames).max() <= 2


def test_pure_noise_clip_runs_and_keeps_its_level(tmp_path, capsys):
    frames = np.random.default_rng(5).integers(0, 256, (8, 24, 32, 3), dtype=np.uint8)
    source = write_pngs(tmp_path / "noise", list(frames))
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mkv", "--quiet")
    assert_clean(code, err)
    result = read(tmp_path / "out.mkv")
    assert result.shape == frames.shape and abs(result.mean() - frames.mean() / 255) < 0.05


def test_variable_frame_rate_keeps_timestamps(tmp_path, capsys):
    pts = [0, 40, 80, 200, 240, 400, 440, 480]
    source = write_video(tmp_path / "vfr.mp4", list(clip(len(pts))), pts=pts)
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mp4", "--quiet")
    assert_clean(code, err)
    with av.open(str(tmp_path / "out.mp4")) as container:
        times = [round(float(f.pts * f.time_base), 3) for f in container.decode(video=0)]
    assert times == [p / 1000 for p in pts]


def test_a_video_without_a_stated_duration_is_read_and_scored(tmp_path, capsys):
    """A raw H.264 stream (.h264) states no duration: probe failed with a TypeError traceback (0.01 * None)
    in info, run and eval; a single image file given as the input the same."""
    frames = clip(6)
    raw = write_video(tmp_path / "raw.h264", list(frames))
    code, out, err = run_cli(capsys, "info", raw)
    assert_clean(code, err)
    assert io.probe(raw).frame_count == 6
    code, out, err = run_cli(capsys, "eval", raw, "--reference", raw, "--json")
    assert_clean(code, err)
    image = write_pngs(tmp_path / "one", frames[:1]) / "0.png"
    code, out, err = run_cli(capsys, "info", image)
    assert_clean(code, err)


def _neural_inputs(tmp_path):
    """name -> (input path, output name): the extremes above, for the default (neural) method."""
    rgb = clip(6)
    alpha = np.random.default_rng(1).integers(0, 256, rgb.shape[:3], dtype=np.uint8)
    return {
        "grey": (write_video(tmp_path / "grey.mkv", list(rgb[..., 1]), codec="ffv1", pix_fmt="gray"), "out.mkv"),
        "rgba": (write_pngs(tmp_path / "rgba", list(np.concatenate([rgb, alpha[..., None]], axis=3))), "out"),
        "dark": (write_pngs(tmp_path / "dark", list(clip(6, base=0.02, spread=0.02, flicker=1.0))), "out"),
        "bright": (write_pngs(tmp_path / "bright", list(clip(6, base=0.97, spread=0.02, flicker=0.02))), "out"),
        "static": (write_pngs(tmp_path / "static", list(np.repeat(clip(1, flicker=0), 6, axis=0))), "out"),
        "noise": (write_pngs(tmp_path / "noise", list(np.random.default_rng(5).integers(0, 256, (6, 24, 32, 3),
                                                                                      dtype=np.uint8))), "out"),
        "vfr": (write_video(tmp_path / "vfr.mp4", list(clip(6)), pts=[0, 40, 80, 200, 240, 400]), "out.mp4"),
    }


@pytest.mark.parametrize("name", ["grey", "rgba", "dark", "bright", "static", "noise", "vfr"])
def test_default_neural_method_on_extreme_inputs(tmp_path, capsys, name):
    source, output = _neural_inputs(tmp_path)[name]
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / output, "--atlas-steps", "5", "--quiet")
    assert_clean(code, err)
    before, after = read(source), read(tmp_path / output)
    assert after.shape == before.shape and np.isfinite(after).all()
    assert io.probe(tmp_path / output).pixel_format == io.probe(source).pixel_format or output.endswith(".mp4")
    assert abs(after.mean() - before.mean()) < 0.05  # the level is kept
    if name == "static":
        assert np.abs(after - before).max() <= 3 / 255  # nothing to do, nothing done
    if name == "rgba":
        assert np.array_equal(cv2.imread(str(tmp_path / "out" / "0.png"), cv2.IMREAD_UNCHANGED)[..., 3],
                              cv2.imread(str(source / "0.png"), cv2.IMREAD_UNCHANGED)[..., 3])


@pytest.mark.parametrize("argv, message", [
    (["--crf", "99"], "crf"),
    (["--stop-after", "atlas", "--keep-work", "w"], "neural only"),
    (["--preset", "fast"], "--preset, "),  # it was warned of and ignored, where --kind and --atlas are refused
    (["--plot", "plot.jpg"], "PNG"),
])
def test_bad_option_combinations_are_one_line(tmp_path, capsys, argv, message):
    source = write_pngs(tmp_path / "clip", list(clip(3)))
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mp4", "--quiet", *argv)
    assert code != 0 and message in err
    assert_clean(code, err, expect_code=code)


# --- neural: size limit, tiny run, resume -------------------------------------------------------

@pytest.mark.parametrize("h, w", [(9, 9), (20, 400)], ids=["tiny", "thin"])
def test_neural_rejects_frames_too_small_for_its_flow(tmp_path, capsys, h, w):
    # Not an OpenCV error nor a crash: DIS segfaults on frames under 16 rows that are wider than tall.
    source = write_pngs(tmp_path / "tiny", list(clip(4, h=h, w=w)))
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "out", "--quiet", "--method", "neural")
    assert_clean(code, err, expect_code=2)
    assert "too small" in err
    # The default method falls back to the classical one, which copes, and says so.
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "out", "--quiet")
    assert_clean(code, err)
    assert "using the classical one" in err
    # So it does with a preset (--preset balanced is the default's own): a preset chooses the neural method's
    # speed, it does not ask for that method (as --kind does); it became an error when --method classical
    # --preset was refused. Said once, with the preset named as not applying.
    for preset in ("balanced", "fast"):
        code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "out", "--quiet", "--overwrite",
                               "--preset", preset)
        assert_clean(code, err)
        assert "using the classical one" in err and "--preset" in err and len(err.splitlines()) == 1, err


def test_neural_odd_tiny_clip_through_the_filter(tmp_path):
    source = write_pngs(tmp_path / "odd", list(clip(2, h=17, w=33)))
    work = tmp_path / "work"
    deflicker_file(source, None, RunConfig(method="neural", preset="fast", atlas_steps=3, stop_after="filter",
                                           keep_work=work, progress=False))
    filtered = read(work / "filter")
    assert filtered.shape == (2, 17, 33, 3) and np.isfinite(filtered).all()


def test_keep_work_reuses_finished_segments_and_only_rewrites_the_output(tmp_path, monkeypatch):
    from unflicker.config import EngineConfig
    from unflicker.segments import SegmentConfig

    source = write_pngs(tmp_path / "clip", list(clip(16, h=20, w=28)))
    work = tmp_path / "work"
    config = RunConfig(method="neural", atlas_steps=3, keep_work=work, progress=False,
                       engine=EngineConfig(workers=1), segments=SegmentConfig(frames=8, margin=2))
    first = deflicker_file(source, tmp_path / "out1", config)
    assert (first.segments, first.reused) == (2, 0)

    import unflicker.engine

    def no_segment(task, progress=None):
        raise AssertionError("a segment was processed again")

    monkeypatch.setattr(unflicker.engine, "run_segment", no_segment)
    second = deflicker_file(source, tmp_path / "out2", dataclasses.replace(config, strength=0.5))
    assert (second.segments, second.reused) == (2, 2)
    frames, full = read(source).astype(np.float32), read(tmp_path / "out1").astype(np.float32)
    assert np.abs(read(tmp_path / "out2").astype(np.float32) - (frames + 0.5 * (full - frames))).max() <= 1.0
    # Other settings, or a changed input, mean new segments.
    with pytest.raises(AssertionError, match="processed again"):
        deflicker_file(source, tmp_path / "out3", dataclasses.replace(config, atlas_steps=4))
    cv2.imwrite(str(source / "0.png"), np.zeros((20, 28, 3), np.uint8))
    with pytest.raises(AssertionError, match="processed again"):
        deflicker_file(source, tmp_path / "out4", config)


def test_an_interrupted_run_keeps_its_finished_segments(tmp_path, monkeypatch):
    from unflicker.config import EngineConfig
    from unflicker.segments import SegmentConfig

    source = write_pngs(tmp_path / "clip", list(clip(24, h=20, w=28)))
    work = tmp_path / "work"
    config = RunConfig(method="classical", keep_work=work, progress=False, engine=EngineConfig(workers=1),
                       segments=SegmentConfig(frames=8, margin=2))
    import unflicker.engine

    real = unflicker.engine.run_segment
    ran = []

    def dies_at_the_second(task, progress=None):
        ran.append(task.segment.index)
        if task.segment.index == 1:
            raise KeyboardInterrupt
        return real(task, progress)

    monkeypatch.setattr(unflicker.engine, "run_segment", dies_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        deflicker_file(source, tmp_path / "out", config)
    assert not (tmp_path / "out").exists() and ran == [0, 1]
    ran.clear()
    monkeypatch.setattr(unflicker.engine, "run_segment", lambda task, progress=None: ran.append(task.segment.index) or real(task, progress))
    resumed = deflicker_file(source, tmp_path / "out", config)
    assert ran == [1, 2] and (resumed.segments, resumed.reused) == (3, 1)
    fresh = deflicker_file(source, tmp_path / "fresh", dataclasses.replace(config, keep_work=None))
    assert np.array_equal(read(tmp_path / "out"), read(tmp_path / "fresh")) and fresh.reused == 0


def test_a_job_failing_while_its_segments_run_on_workers_ends_without_a_traceback(tmp_path, monkeypatch, capfd):
    """An error of the job's own (here: writing the output) while workers still run its other segments:
    one error, no output, and the work folder stays until they end (it used to go at once, and a worker
    writing into it died with a traceback and ran again)."""
    from unflicker.config import EngineConfig
    from unflicker.errors import OutputError
    from unflicker.segments import SegmentConfig

    source = write_pngs(tmp_path / "clip", list(clip(60, h=48, w=64)))
    real = pipeline.Job.advance

    def advance(job):
        if job.results and len(job.results) < len(job.segments):  # one segment back, others running
            raise OutputError("the disk is full")
        return real(job)

    monkeypatch.setattr(pipeline.Job, "advance", advance)
    config = RunConfig(method="classical", progress=False, segments=SegmentConfig(frames=12, margin=3),
                       engine=EngineConfig(workers=2, lanes=1))
    with pytest.raises(OutputError, match="disk is full"):
        deflicker_file(source, tmp_path / "out.mkv", config)
    assert "Traceback" not in capfd.readouterr().err
    assert not (tmp_path / "out.mkv").exists()


def test_classical_output_is_not_touched_by_the_anchor():
    frames = clip(8, h=24, w=32)
    floats = [io.to_float(f) for f in frames]
    from unflicker.classical import ClassicalConfig, ClassicalDeflicker

    method = ClassicalDeflicker(ClassicalConfig())
    method.analyze(iter(floats))
    direct = np.stack([np.clip(method.process(t, f), 0, 1) for t, f in enumerate(floats)])
    via_pipeline = np.stack(list(pipeline.deflicker_frames(floats, RunConfig(method="classical", progress=False))))
    assert np.abs(via_pipeline - direct).max() <= 0.5 / 65535 + 1e-7  # segment results are kept in 16 bits


def test_default_method_is_neural(tmp_path, capsys):
    source = write_pngs(tmp_path / "clip", list(clip(4, h=20, w=28)))
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "out", "--atlas-steps", "3",
                           "--keep-work", tmp_path / "work", "--quiet")
    assert_clean(code, err)
    (job,) = (tmp_path / "work" / "jobs").iterdir()
    assert '"method": "neural"' in (job / "config.json").read_text()


def test_keep_slow_default_stays_nearer_the_input_than_off(tmp_path, capsys):
    source = write_pngs(tmp_path / "clip", list(clip(6, h=20, w=28)))
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "off", "--method", "neural", "--atlas-steps", "3",
                           "--keep-slow", "off", "--quiet")
    assert_clean(code, err)
    refined, frames = read(tmp_path / "off").astype(np.float32), read(source).astype(np.float32)
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "default", "--method", "neural", "--atlas-steps",
                           "3", "--quiet")
    assert_clean(code, err)
    anchored = read(tmp_path / "default").astype(np.float32)
    assert np.abs(anchored - frames).mean() < np.abs(refined - frames).mean()
    for bad in ("soon", "nan"):  # argparse's own usage error
        with pytest.raises(SystemExit) as exit_info:
            run_cli(capsys, "run", source, "-o", tmp_path / "bad", "--method", "neural", "--keep-slow", bad)
        assert exit_info.value.code == 2 and "--keep-slow" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "bad", "--method", "neural", "--keep-slow", "-1")
    assert_clean(code, err, expect_code=2)
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "bad", "--keep-slow", "2")  # classical
    assert_clean(code, err, expect_code=2)


def test_presets_map_to_atlas_settings():
    from unflicker.config import atlas_config

    fast = atlas_config(RunConfig(method="neural", preset="fast"))
    balanced = atlas_config(RunConfig(method="neural"))
    paper = atlas_config(RunConfig(method="neural", preset="paper"))
    assert fast.resolution < balanced.resolution and fast.steps < 300 and balanced.steps is None
    assert (balanced.backend, paper.backend) == ("grid", "mlp")
    assert atlas_config(RunConfig(method="neural", preset="paper", atlas="grid", atlas_steps=7)).steps == 7
    # The slow-atlas warning's test (no torch imported for it) agrees with the resolved settings.
    from unflicker.config import mlp_atlas
    for preset in (None, "fast", "balanced", "paper"):
        for atlas in (None, "grid", "mlp"):
            config = RunConfig(method="neural", preset=preset, atlas=atlas)
            assert mlp_atlas(config) == (atlas_config(config).backend == "mlp")


# --- progress -----------------------------------------------------------------------------------

def test_progress_bars_for_every_stage_unless_quiet(tmp_path, capsys):
    source = write_pngs(tmp_path / "clip", list(clip(6)))
    code, out, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out", "--compare",
                             tmp_path / "cmp.mp4", "--workers", "1")
    assert code == 0
    for stage in ("analyse", "deflicker", "compare"):
        assert f"{stage}: " in err
    assert "/6 [" in err and "<" in err  # tqdm's done/total [elapsed<remaining (the ETA)
    assert out.strip().splitlines()[-1].startswith("wrote") and "flicker index" in out
    code, _, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out2", "--quiet")
    assert code == 0 and err == ""


# --- the Python API -----------------------------------------------------------------------------

def test_api_on_arrays_keeps_dtype_and_shape(tmp_path):
    frames = clip(8)
    out = unflicker.deflicker(frames, method="classical", progress=False)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert luma_flicker(out / 255.0) < 0.5 * luma_flicker(frames / 255.0)
    floats = [f.astype(np.float64) / 255 for f in frames]
    out_f = unflicker.deflicker(floats, method="classical", progress=False)
    assert out_f.dtype == np.float64 and out_f.shape == frames.shape
    assert np.abs(out_f * 255 - out).max() <= 1.01
    grey = unflicker.deflicker(frames[..., 0], method="classical", progress=False)
    assert grey.shape == frames.shape[:3] and grey.dtype == np.uint8
    alpha = np.random.default_rng(2).integers(0, 256, frames.shape[:3] + (1,), dtype=np.uint8)
    rgba = unflicker.deflicker(np.concatenate([frames, alpha], axis=3), method="classical", progress=False)
    assert np.array_equal(rgba[..., 3:], alpha) and np.array_equal(rgba[..., :3], out)


def test_api_rejects_one_frame_passed_as_a_clip():
    """A single (H, W, 3) frame is not a grey clip of H frames W x 3 pixels: it was deflickered as one and
    returned changed; now an InputError that says what to pass."""
    frame = clip(1)[0]
    for one in (frame, frame[..., :1], np.concatenate([frame, frame[..., :1]], axis=2)):
        with pytest.raises(InputError, match=r"one \(H, W, C\) frame\?"):
            unflicker.deflicker(one, method="classical", progress=False)
    out = unflicker.deflicker(frame[None], method="classical", progress=False)
    assert out.shape == (1, *frame.shape) and np.array_equal(out[0], frame)


def test_api_on_files_returns_the_summary(tmp_path):
    source = write_pngs(tmp_path / "clip", list(clip(6)))
    summary = unflicker.deflicker(source, tmp_path / "out.mp4", plot=tmp_path / "plot.png", method="classical", progress=False)
    assert summary.frames == 6 and summary.flicker_after < summary.flicker_before
    plot = cv2.imread(str(tmp_path / "plot.png"))
    assert plot is not None and plot.shape[0] > 100 and (plot < 250).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "out.mp4", "plot.png"]


@pytest.mark.parametrize("args, kwargs", [
    ((np.zeros((0, 8, 8, 3), np.uint8),), {}),
    ((np.zeros((4, 8, 8, 5), np.uint8),), {}),
    ((np.zeros((4, 8, 8, 3), np.int64),), {}),
    (([np.zeros((8, 8, 3)), np.zeros((9, 8, 3))],), {}),
    ((np.zeros((4, 8, 8, 3)),), {"keep_work": "w"}),
    ((np.zeros((4, 8, 8, 3)),), {"codec": "ffv1"}),
    ((np.zeros((4, 8, 8, 3)),), {"bit_depth": 16}),
    ((np.zeros((4, 8, 8, 3)),), {"colour": 1}),
    (("nothing.mp4", "out.mp4"), {}),
])
def test_api_bad_arguments_raise_input_errors(args, kwargs):
    with pytest.raises(InputError):
        unflicker.deflicker(*args, method="classical", progress=False, **kwargs)


@pytest.mark.parametrize("options, message", [
    ({"strength": "0.5"}, "option strength must be a number, got '0.5' (str)"),
    ({"strength": True}, "option strength must be a number, got True (bool)"),
    ({"atlas_steps": 2.5}, "option atlas_steps must be an int or None, got 2.5 (float)"),
    ({"progress": "no"}, "option progress must be True or False, got 'no' (str)"),
    ({"filter_weights": 3}, "option filter_weights must be a path (str or os.PathLike) or None, got 3 (int)"),
    ({"engine": EngineConfig(workers="2")}, "option engine.workers must be an int or None, got '2' (str)"),
    ({"segments": SegmentConfig(frames=12.0)}, "option segments.frames must be an int, got 12.0 (float)"),
    ({"engine": {"workers": 2}}, "option engine must be EngineConfig, got {'workers': 2} (dict)"),
])
def test_api_options_of_the_wrong_type_are_one_input_error_before_any_work(tmp_path, monkeypatch, options, message):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's temporary work folder would go here
    source = write_pngs(tmp_path / "clip", list(clip(4)))
    for args in ((clip(4),), (source, tmp_path / "out.mp4")):
        with pytest.raises(InputError, match=re.escape(message)):
            unflicker.deflicker(*args, method="classical", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


def test_options_of_a_type_that_works_pass_the_check_and_run(tmp_path):
    config = RunConfig(method="neural", atlas_steps=np.int64(5), keep_slow=3, strength=1, keep_work="work",
                       filter_weights=Path("mine.safetensors"), engine=EngineConfig(workers=np.int32(2)),
                       segments=SegmentConfig(frames=np.int64(40)), overwrite=np.bool_(False))
    config.check()
    assert type(config.atlas_steps) is int and type(config.segments.frames) is int  # stored as Python's
    assert type(config.engine.workers) is int and type(config.overwrite) is bool
    # NumPy's numbers run (the run's record is JSON), in memory and into a file.
    frames = clip(6)
    out = unflicker.deflicker(frames, method="classical", strength=np.float32(0.5), progress=False)
    assert np.array_equal(out, unflicker.deflicker(frames, method="classical", strength=0.5, progress=False))
    summary = unflicker.deflicker(write_pngs(tmp_path / "clip", list(frames)), tmp_path / "out.mp4", method="classical",
                                  crf=np.int64(18), segments=SegmentConfig(frames=np.int64(40)), progress=False)
    assert summary.frames == 6 and type(summary.config["output"]["crf"]) is int
    assert type(summary.config["segments"]["frames"]) is int


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_api_rejects_nan_and_inf_frames(tmp_path, monkeypatch, value):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's temporary work folder goes here
    frames = clip(6).astype(np.float32) / 255
    frames[2, 3, 4, 1] = value
    for method in ("classical", "neural"):
        with pytest.raises(InputError, match="frame 2 holds NaN or infinite values"):
            unflicker.deflicker(frames, method=method, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_api_frames_numpy_cannot_take_are_an_input_error():
    """A list of torch tensors that require grad (or live on a GPU) was a RuntimeError traceback from NumPy's
    conversion, a ragged frame a ValueError; a list of plain CPU tensors runs as arrays do."""
    import torch

    frames = clip(4).astype(np.float32) / 255
    expected = unflicker.deflicker(frames, method="classical", progress=False)
    assert np.array_equal(unflicker.deflicker([torch.from_numpy(f) for f in frames], method="classical",
                                              progress=False), expected)
    for bad, t in (([torch.from_numpy(f).requires_grad_() for f in frames], 0),
                   ([frames[0], [[0.5, 0.5], [0.5]]], 1)):
        with pytest.raises(InputError, match=rf"^frame {t} cannot be read as an array: "):
            unflicker.deflicker(bad, method="classical", progress=False)


def test_api_clips_float_frames_outside_0_1_with_a_warning():
    frames = clip(6).astype(np.float32) / 255
    frames[:, 0, 0] = -0.5
    frames[:, 1, 1] = 1.5
    with pytest.warns(UserWarning, match=r"outside \[0, 1\]: they are clipped"):
        out = unflicker.deflicker(frames, method="classical", progress=False)
    expected = unflicker.deflicker(np.clip(frames, 0, 1), method="classical", progress=False)
    assert np.array_equal(out, expected)
    # A float RGBA clip's alpha is not a colour: passed through as it is (2.0, NaN), never checked nor clipped.
    alpha = np.full((*frames.shape[:3], 1), 2.0, np.float32)
    alpha[2, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = unflicker.deflicker(np.concatenate([np.clip(frames, 0, 1), alpha], 3), method="classical", progress=False)
    assert np.array_equal(out[..., :3], expected) and np.array_equal(out[..., 3:], alpha, equal_nan=True)


def test_api_warnings_are_the_callers_once_a_call():
    """The clipping warning came twice a call, from two lines of pipeline.py (the default filter shows each
    place once: two lines printed), and the small-frames one from engine.py: none named the program's call."""
    frames = clip(6, h=12, w=12).astype(np.float32) / 255
    frames[:, 0, 0] = 1.5
    calls = [lambda: unflicker.deflicker(frames, progress=False),
             lambda: unflicker.deflicker(list(frames), method="classical", progress=False)]
    for call, count in zip(calls, (2, 1)):  # the default method on 12x12 frames also says it takes the classical
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        assert len(caught) == count and {Path(w.filename) for w in caught} == {Path(__file__)}, \
            [(str(w.message), w.filename, w.lineno) for w in caught]
        assert sum("they are clipped" in str(w.message) for w in caught) == 1


def test_api_warnings_of_a_file_run_are_the_callers_too(tmp_path):
    """The warnings of the file path (the encoder's --crf, a single-frame input; io and pipeline) named lines
    inside the package through fixed stack levels, which also differ by the path that led there."""
    source = write_pngs(tmp_path / "one", list(clip(1)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unflicker.deflicker(source, tmp_path / "out.mkv", method="classical", crf=20, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("takes none: ignored" in m for m in messages) and any("single frame" in m for m in messages), messages
    assert {Path(w.filename) for w in caught} == {Path(__file__)}, [(str(w.message), w.filename) for w in caught]


def test_api_clips_finite_float64_values_past_float32s_range():
    """1e300 is finite: clipped with the warning as any value outside [0, 1], not 'NaN or infinite' (it is
    infinite only once cast to float32)."""
    frames = clip(6).astype(np.float64) / 255
    frames[:, 0, 0] = 1e300
    frames[:, 1, 1] = -1e300
    with pytest.warns(UserWarning, match=r"outside \[0, 1\]: they are clipped"):
        out = unflicker.deflicker(frames, method="classical", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(out, unflicker.deflicker(np.clip(frames, 0, 1), method="classical", progress=False))


def test_api_passes_a_float64_alpha_through_bit_for_bit():
    """The alpha of a float64 RGBA clip went through float32 on the way (0.1 came back 0.10000000149)."""
    frames = clip(6).astype(np.float64) / 255
    alpha = np.random.default_rng(3).random((*frames.shape[:3], 1))
    out = unflicker.deflicker(np.concatenate([frames, alpha], axis=3), method="classical", progress=False)
    assert out.dtype == np.float64 and np.array_equal(out[..., 3:], alpha)
    assert np.array_equal(out[..., :3], unflicker.deflicker(frames, method="classical", progress=False))


def test_api_takes_big_endian_frames():
    """Big-endian uint16 frames (FITS files, astropy) were refused: 'must be uint8, uint16 or float, got >u2'."""
    frames = clip(6).astype(np.uint16) * 257
    out = unflicker.deflicker(frames.astype(">u2"), method="classical", progress=False)
    assert out.dtype == np.dtype(">u2")
    assert np.array_equal(out, unflicker.deflicker(frames, method="classical", progress=False))


def test_api_unknown_stop_after_stage_fails_before_making_the_work_folder(tmp_path):
    source = write_pngs(tmp_path / "clip", list(clip(4)))
    with pytest.raises(InputError, match="unknown stage 'atals' for stop_after"):  # the keyword, not the CLI's flag
        unflicker.deflicker(source, stop_after="atals", keep_work=tmp_path / "work", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


def test_import_is_cheap():
    code = "import sys, unflicker; print(sorted(m for m in ('torch', 'av', 'cv2') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_settings_classes_come_from_the_package_and_a_config_is_taken_whole():
    """RunConfig, EngineConfig, SegmentConfig and RunSummary were importable from their modules alone, and a
    RunConfig could not be passed: `deflicker(..., **dataclasses.asdict(cfg))` failed on its nested settings."""
    from unflicker import config as config_module
    from unflicker import pipeline

    assert unflicker.RunConfig is config_module.RunConfig and unflicker.EngineConfig is config_module.EngineConfig
    assert unflicker.SegmentConfig is config_module.SegmentConfig and unflicker.RunSummary is pipeline.RunSummary
    assert {"RunConfig", "RunSummary"} <= set(dir(unflicker)) and "RunConfig" in unflicker.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        unflicker.Nope  # noqa: B018
    frames = clip(8).astype(np.float32) / 255
    settings = unflicker.RunConfig(method="classical", strength=0.5, progress=False,
                                   engine=unflicker.EngineConfig(workers=1))
    half = unflicker.deflicker(frames, config=settings)
    np.testing.assert_array_equal(half, unflicker.deflicker(frames, method="classical", strength=0.5, progress=False))
    # method= and the options replace the config's fields; the config itself is left as it was
    np.testing.assert_array_equal(unflicker.deflicker(frames, config=settings, strength=0.0), frames)
    assert settings.strength == 0.5
    with pytest.raises(InputError, match="config must be a unflicker.RunConfig, got dict"):
        unflicker.deflicker(frames, config={"strength": 0.5})
    with pytest.raises(InputError, match="unknown option"):
        unflicker.deflicker(frames, config=settings, strenght=0.5)


def test_strength_blends_the_correction_with_the_input():
    frames = clip(8).astype(np.float32) / 255
    full = unflicker.deflicker(frames, method="classical", progress=False)
    none = unflicker.deflicker(frames, method="classical", progress=False, strength=0.0)
    half = unflicker.deflicker(frames, method="classical", progress=False, strength=0.5)
    assert np.abs(none - frames).max() < 1e-6
    np.testing.assert_allclose(half, 0.5 * (frames + full), atol=1e-5)
    assert luma_flicker(frames) > luma_flicker(half) > luma_flicker(full)
    with pytest.raises(InputError):
        unflicker.deflicker(frames, method="classical", progress=False, strength=1.5)


def test_an_output_the_encoder_or_the_folder_refuses_fails_before_any_work(tmp_path, capsys):
    """FFV1 cannot encode a 1-pixel-wide frame and /proc takes no new file: both were tracebacks at
    the first frame written (after the work); now one line, exit 3, nothing left behind."""
    src = write_pngs(tmp_path / "thin", list(clip(n=4, h=48, w=1)))
    code, _, err = run_cli(capsys, "run", src, "-o", tmp_path / "out.mkv", "--method", "classical", "--quiet")
    assert_clean(code, err, 3)
    assert "ffv1 cannot encode 1x48" in err
    ok = write_video(tmp_path / "ok.mp4", list(clip(n=4, h=24, w=32)))
    code, _, err = run_cli(capsys, "run", ok, "-o", "/proc/unflicker-test.mp4", "--quiet")
    assert_clean(code, err, 3)
    assert "cannot write in output folder /proc" in err
    code, _, err = run_cli(capsys, "run", ok, "-o", tmp_path / "ok.mp4" / "x.mp4", "--quiet")
    assert_clean(code, err, 3)
    assert "is a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.mp4", "thin"]


def test_batch_never_takes_its_own_outputs_or_a_video_for_a_list(tmp_path, capsys):
    """An output folder inside the input folder is left out of the scan (a rerun deflickered last
    run's outputs again, one folder deeper each time); the input folder as the output folder and a
    video given as the list are one-line errors that create no folder."""
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "a.mp4", list(clip(n=4, h=24, w=32)))
    for rerun in (False, True):
        code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "in" / "out",
                                 "--method", "classical", "--quiet")
        assert_clean(code, err)
        assert ("0 done, 1 skipped" if rerun else "1 done, 0 skipped") in out
    assert not (tmp_path / "in" / "out" / "out").exists()
    # Nor another batch's output folder (its summary beside them): a second batch with other settings into
    # in/classical deflickered in/out's outputs again, as inputs of their own.
    code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "in" / "classical",
                             "--method", "classical", "--quiet")
    assert code == 0 and "1 done, 0 skipped" in out and not (tmp_path / "in" / "classical" / "out").exists()
    assert err.strip() == (f"unflicker: warning: left out {tmp_path / 'in' / 'out'}: another batch's outputs "
                           "(its unflicker-batch.json is there); give it as the input to take them")
    code, _, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "in", "--quiet")
    assert_clean(code, err, 3)
    assert "is the input folder" in err
    code, _, err = run_cli(capsys, "batch", tmp_path / "in" / "a.mp4", "-o", tmp_path / "new", "--quiet")
    assert_clean(code, err, 2)
    assert "not a folder or a text file" in err and not (tmp_path / "new").exists()


def test_a_batch_work_folder_inside_the_input_folder_is_no_input(tmp_path, capsys):
    """--keep-work in/work (inside the input folder): the work files a batch kept there (segments, markers)
    were taken as inputs by its rerun, each failing as not a video."""
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "a.mp4", list(clip(n=4, h=24, w=32)))
    for rerun in (False, True):
        code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", "--method", "classical",
                                 "--keep-work", tmp_path / "in" / "work", "--quiet")
        assert_clean(code, err)
        assert ("0 done, 1 skipped, 0 failed" if rerun else "1 done, 0 skipped, 0 failed") in out, out
    assert any(path.is_file() for path in (tmp_path / "in" / "work").rglob("*"))  # work was kept there


def test_a_batch_work_folder_that_is_the_input_folder_is_refused_in_one_line(tmp_path, capsys):
    """--keep-work in (the input folder itself): the batch made in/jobs/ and its rerun took the work files there
    (segments, lock files) as inputs, each failing as not a video. Refused at once, as -o in is."""
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "a.mp4", list(clip(n=4, h=24, w=32)))
    for work in (tmp_path / "in", tmp_path / "in" / "."):
        code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", "--method", "classical",
                                 "--keep-work", work, "--quiet")
        assert_clean(code, err, 3)
        assert "is the input folder" in err and out == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "in" / "jobs").exists()


@pytest.mark.parametrize("argv, message", [(("--max-side", "0"), "--max-side must be at least 16"),
                                           (("--long-term", "-1"), "--long-term must be 0"),
                                           (("--ground-truth", "big"), "the ground truth is 48x40, the reference 32x24")])
def test_eval_rejects_sizes_and_distances_that_mean_nothing(tmp_path, capsys, argv, message):
    ok = write_video(tmp_path / "ok.mp4", list(clip(n=4, h=24, w=32)))
    big = write_video(tmp_path / "big.mp4", list(clip(n=4, h=40, w=48)))
    argv = [big if a == "big" else a for a in argv]
    code, _, err = run_cli(capsys, "eval", ok, "--reference", ok, *argv)
    assert_clean(code, err, 2)
    assert message in err


def test_a_corrupt_png_among_good_ones_is_one_line_naming_it(tmp_path, capfd):
    """OpenCV printed libpng's complaint on its own line (C-level stderr) before ours."""
    folder = write_pngs(tmp_path / "frames", list(clip(n=4)))
    (folder / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 8)
    code = main(["run", str(folder), "-o", str(tmp_path / "out.mp4"), "--method", "classical", "--quiet"])
    err = capfd.readouterr().err
    assert_clean(code, err, 2)
    assert len(err.strip().splitlines()) == 1 and "2.png" in err


def test_eval_says_once_that_the_sequences_differ_in_length(tmp_path, capsys):
    long = write_video(tmp_path / "long.mp4", list(clip(n=6, h=24, w=32)))
    short = write_video(tmp_path / "short.mp4", list(clip(n=4, h=24, w=32)))
    code, _, err = run_cli(capsys, "eval", long, "--reference", long, "--ground-truth", short)
    assert_clean(code, err)
    assert err.count("differ in length") == 1


def test_a_batch_list_maps_no_output_onto_its_input_and_reads_a_bom_and_latin1_names(tmp_path, capsys):
    write_video(tmp_path / "a.mp4", list(clip(n=4, h=24, w=32)))
    latin = tmp_path / "caf\xe9.mp4".encode("latin-1").decode("utf-8", "surrogateescape")
    write_video(latin, list(clip(n=4, h=24, w=32, seed=1)))
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.mp4\ncaf\xe9.mp4\n")
    code, out, err = run_cli(capsys, "batch", tmp_path / "list.txt", "-o", tmp_path, "--method", "classical",
                             "--quiet")  # next to the list: each output would be its input
    assert code == 1 and "0 done, 0 skipped, 2 failed" in out and err.count("would be the input") == 2
    assert (tmp_path / "a.mp4").stat().st_size > 0
    code, out, err = run_cli(capsys, "batch", tmp_path / "list.txt", "-o", tmp_path / "out", "--method",
                             "classical", "--quiet")
    assert_clean(code, err)
    assert "2 done" in out and (tmp_path / "out" / "a.mp4").exists() and (tmp_path / "out" / latin.name).exists()


def test_a_batch_input_that_fails_leaves_no_empty_output_folder(tmp_path, capsys):
    """An input in a subfolder that fails (not found, unreadable) left its empty mirror folder in the outputs,
    the only trace of a run that wrote nothing for it; a folder that was there before stays."""
    write_video(tmp_path / "a.mp4", list(clip(n=4, h=24, w=32)))
    (tmp_path / "out" / "kept").mkdir(parents=True)
    (tmp_path / "list.txt").write_text("a.mp4\nsub dir/deeper/missing.mp4\nkept/missing.mp4\n")
    code, out, _ = run_cli(capsys, "batch", tmp_path / "list.txt", "-o", tmp_path / "out", "--method", "classical",
                           "--quiet")
    assert code == 1 and "1 done, 0 skipped, 2 failed" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "kept", "unflicker-batch.csv",
                                                                    "unflicker-batch.json"]


def test_a_batch_output_folder_that_cannot_be_made_fails_that_input_alone(tmp_path, capsys):
    """A file where an input's mirror folder goes (out/sub, for sub/a.mp4) was a traceback (FileExistsError from
    mkdir) that ended the batch; that input now fails alone, in one line, and the others run."""
    (tmp_path / "in" / "sub").mkdir(parents=True)
    write_video(tmp_path / "in" / "sub" / "a.mp4", list(clip(n=4, h=24, w=32)))
    write_video(tmp_path / "in" / "b.mp4", list(clip(n=4, h=24, w=32)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file, not a folder")
    code, out, err = run_cli(capsys, "batch", tmp_path / "in", "-o", tmp_path / "out", "--method", "classical",
                             "--quiet")
    assert code == 1 and "1 done, 0 skipped, 1 failed" in out, err
    assert err.strip() == (f"unflicker: failed: {tmp_path / 'in' / 'sub' / 'a.mp4'}: cannot make the folder "
                           f"{tmp_path / 'out' / 'sub'}: File exists")


def test_a_batch_stopped_before_its_first_job_writes_its_summary_and_leaves_no_empty_folder(tmp_path, monkeypatch):
    """Ctrl-C while the batch counted its inputs' frames (before any job ran: a second or more for hundreds of
    videos) left their empty mirror folders and no summary, though the stop message points at it. Now every
    input is listed 'interrupted' and the folders it made go."""
    import json

    from unflicker import batch

    for name in ("x/a.mp4", "y/b.mp4"):
        (tmp_path / "in" / name).parent.mkdir(parents=True)
        write_video(tmp_path / "in" / name, list(clip(n=4, h=24, w=32)))

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch.io, "frame_estimate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        batch.run_batch(tmp_path / "in", tmp_path / "out", RunConfig(method="classical", progress=True))
    rows = json.loads((tmp_path / "out" / "unflicker-batch.json").read_text())
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("a.mp4", "interrupted"), ("b.mp4", "interrupted")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["unflicker-batch.csv", "unflicker-batch.json"]


def test_eval_of_frames_too_small_for_ssim_gives_the_other_scores(tmp_path, capsys):
    """Frames under SSIM's 11-pixel window failed the whole report with SSIM's error; SSIM is now left out,
    said once, and every other score is given."""
    result = write_pngs(tmp_path / "result", list(clip(n=4, h=8, w=10)))
    truth = write_pngs(tmp_path / "truth", list(clip(n=4, h=8, w=10, flicker=0.0)))
    code, out, err = run_cli(capsys, "eval", result, "--reference", result, "--ground-truth", truth)
    assert_clean(code, err)
    assert err.count("SSIM needs frames of at least 11 x 11") == 1
    assert "psnr" in out and "warp_error" in out and "detail" in out and "ssim" not in out


@pytest.mark.parametrize("shape", [(3, 0, 0, 3), (3, 0, 5, 3), (3, 5, 0), (2, 0, 4, 4)])
def test_api_frames_of_no_pixels_are_an_input_error(shape):
    """(T, 0, 0, 3) raised a ZeroDivisionError from the cut detection, not the library's InputError."""
    with pytest.raises(InputError, match="hold no picture"):
        unflicker.deflicker(np.zeros(shape, np.uint8), method="classical", progress=False)


def test_api_options_for_files_are_refused_for_arrays():
    """plot_label (the plot's name for the input) was silently ignored for an array; the other file options
    were refused."""
    for option in ({"plot_label": "clip"}, {"crf": 20}):
        with pytest.raises(InputError, match="apply only to a path input"):
            unflicker.deflicker(clip(4), method="classical", progress=False, **option)


class BytesPath:
    def __fspath__(self):
        return b"out.mkv"


@pytest.mark.parametrize("output", [b"out.mkv", 3, BytesPath()])
def test_api_an_output_that_is_no_path_is_an_output_error(tmp_path, output):
    """An output of bytes, a number or a bytes os.PathLike was a TypeError traceback from pathlib."""
    source = write_pngs(tmp_path / "clip", list(clip(4)))
    with pytest.raises(unflicker.OutputError, match=r"^output must be a path \(str or os\.PathLike\), got .+ \("):
        unflicker.deflicker(source, output, method="classical", progress=False)


def test_api_an_input_path_as_bytes_is_an_input_error_that_says_so(tmp_path):
    """A bytes path with an output was 'output= applies to a path input; an in-memory clip is returned as an array'."""
    source = write_pngs(tmp_path / "clip", list(clip(4)))
    for output in (tmp_path / "out.mkv", None):
        with pytest.raises(InputError, match=r"^the input must be a path \(str or os\.PathLike\), an array or a "
                                             r"list of frames, got b'.+' \(bytes\)$"):
            unflicker.deflicker(bytes(source), output, method="classical", progress=False)


# --- the library inside another program ----------------------------------------------------------

def call_in_threads(calls):
    """Run each call on a thread of its own, all at once; their results in order (an error is raised here)."""
    results = [None] * len(calls)

    def run(i):
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


@pytest.mark.parametrize("progress", [False, True])
def test_a_call_leaves_the_programs_multiprocessing_start_method_unset(tmp_path, progress):
    """tqdm's first bar (made with progress off too) made its lock from multiprocessing's default context, which
    fixed the program's start method: its own `multiprocessing.set_start_method('spawn')` after a call raised
    RuntimeError 'context has already been set'."""
    program = ("import multiprocessing, sys, numpy as np, unflicker, tqdm; "
               "frames = np.full((4, 16, 16, 3), 0.5, np.float32); "
               "unflicker.deflicker(frames, method='classical', progress=sys.argv[1] == 'True'); "
               "print(multiprocessing.get_start_method(allow_none=True)); "
               "multiprocessing.set_start_method('spawn'); "
               "print(multiprocessing.get_start_method()); "
               "bar = tqdm.tqdm(total=1, disable=True); bar.close()")  # the program's own bars still work
    out = subprocess.run([sys.executable, "-c", program, str(progress)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "spawn"]


def test_api_called_from_two_threads_at_once_gives_each_its_own_clip(monkeypatch):
    """The segments of one process shared the cached method, which holds its segment's analysis: two calls at
    once (threads of a program embedding the library) corrected one clip with the other's flicker."""
    from unflicker.methods import ClassicalMethod

    clips = [clip(8, seed=1), clip(8, seed=2)]
    expected = [unflicker.deflicker(frames, method="classical", progress=False) for frames in clips]
    both = threading.Barrier(2, timeout=30)
    analyze = ClassicalMethod.analyze

    def analyze_together(self, *args, **kwargs):  # each call's analysis done before either call's pass
        analyze(self, *args, **kwargs)
        both.wait()

    monkeypatch.setattr(ClassicalMethod, "analyze", analyze_together)
    results = call_in_threads([lambda f=frames: unflicker.deflicker(f, method="classical", progress=False)
                               for frames in clips])
    assert all(np.array_equal(result, want) for result, want in zip(results, expected))


def test_thread_counts_are_restored_after_calls_at_once_end_in_any_order():
    """Each segment saved the OpenCV, torch and BLAS thread counts it found and set them back as it ended: of
    two at once, the one ending last set back the other's one thread, for the rest of the program."""
    import torch
    from threadpoolctl import threadpool_info

    from unflicker.segments import fixed_threads

    def counts():
        return cv2.getNumThreads(), torch.get_num_threads(), [pool["num_threads"] for pool in threadpool_info()
                                                              if pool["user_api"] == "blas"]

    old_cv, old_torch = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(3)
    torch.set_num_threads(3)
    try:
        before = counts()
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

        def first():
            with fixed_threads(1):
                first_in.set()
                second_in.wait(30)
            first_out.set()

        def second():
            first_in.wait(30)
            with fixed_threads(1):
                second_in.set()
                first_out.wait(30)
                assert counts()[:2] == (1, 1)  # still fixed while this segment runs

        call_in_threads([first, second])
        assert counts() == before
    finally:
        cv2.setNumThreads(old_cv)
        torch.set_num_threads(old_torch)


def test_the_atlas_fit_leaves_the_programs_torch_random_numbers_alone():
    """Each atlas fit (every neural call) seeded torch's global generator (torch.manual_seed): a program's own
    draws after a call were the same every time, whatever it had seeded. Its generator is now where it was
    (grid: never used; MLP: its initial weights from a generator forked for them), the atlas the same bits."""
    import torch

    from unflicker.atlas import AtlasConfig, fit
    from unflicker.atlas.config import MLPOptions

    frames = clip(4, h=32, w=32).astype(np.float32) / 255
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    small = MLPOptions(mapping_width=16, atlas_width=16, batch=256, pretrain_iters=2)  # the defaults took 200 s here
    for backend in ("grid", "mlp"):
        atlases = [fit(frames, None, AtlasConfig(backend=backend, steps=2, mlp=small, device="cpu")).render(0)
                   for _ in range(2)]
        assert torch.equal(torch.random.get_rng_state(), state) and np.array_equal(*atlases), backend


def test_loading_the_networks_leaves_the_programs_torch_random_numbers_alone():
    """Building the filter and the refinement drew their (then overwritten) initial weights from torch's global
    generator, so a program's draws after a call depended on it."""
    import torch

    from unflicker.filter import NeuralFilter
    from unflicker.refine import LocalRefiner

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    NeuralFilter.load(device="cpu"), LocalRefiner.load(device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_threads_past_what_opencv_takes_is_one_line_before_any_work(tmp_path, capsys):
    """--threads 99999999999 was a ValueError traceback from cv2.setNumThreads, after the decoding."""
    source = write_pngs(tmp_path / "clip", clip(4))
    code, _, err = run_cli(capsys, "run", source, "-o", tmp_path / "out.mkv", "--method", "classical",
                           "--threads", "99999999999")
    assert_clean(code, err, 2)
    assert "--threads must be in 1..1024" in err and not (tmp_path / "out.mkv").exists()


def test_a_batch_list_line_too_long_for_an_output_name_fails_that_line_alone(tmp_path, capsys):
    """A list line too long to name a file (a text file that is no list) was an OSError traceback from the
    output's existence check that ended the batch; now that line fails, the next ones run."""
    source = tmp_path / "clip.mkv"
    write_video(source, clip(4), codec="ffv1", pix_fmt="bgr0")
    listing = tmp_path / "list.txt"
    listing.write_text("x" * 300 + "\n" + f"{source}\n")
    code, out, err = run_cli(capsys, "batch", listing, "-o", tmp_path / "out", "--method", "classical", "--quiet")
    assert_clean(code, err, 1)
    assert "File name too long" in err and "1 done, 0 skipped, 1 failed" in out


def test_a_text_file_that_lists_nothing_here_is_refused_in_one_line(tmp_path, capsys):
    """A text file that is no list (prose, a log) ran as one: each line an input failing alone, exit 1 after a
    summary of failures and an output folder made. It is refused at once where none of its lines is here; a
    list with some missing inputs still runs the others (above)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("# my clips\nShot on the 4th, the flicker is from the lamps.\n" + "x" * 300 + "\n")
    code, out, err = run_cli(capsys, "batch", notes, "-o", tmp_path / "out", "--method", "classical", "--quiet")
    assert_clean(code, err, 2)
    assert "lists no file or folder that is here" in err and "'Shot on the 4th" in err and out == ""
    assert not (tmp_path / "out").exists()


def test_a_list_whose_lines_are_relative_to_another_folder_is_told_where_they_are_read(tmp_path, capsys,
                                                                                        monkeypatch):
    """`find clips -name '*.mp4' > lists/todo.txt`: its lines are relative to the working folder, a list's are
    read from the list's folder. The refusal said the list named nothing 'that is here', where clips/a.mp4 is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "a.mp4", list(clip(n=4, h=24, w=32)))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "todo.txt").write_text("clips/a.mp4\n")
    code, out, err = run_cli(capsys, "batch", Path("lists/todo.txt"), "-o", tmp_path / "out", "--method",
                             "classical", "--quiet")
    assert_clean(code, err, 2)
    assert "'clips/a.mp4'" in err and "read from the list's folder lists" in err, err


def test_a_demo_longer_than_the_memory_holds_is_one_line_before_any_file(tmp_path, capsys):
    """demo --frames 99999999999 was a MemoryError traceback, after making --out-dir."""
    code, _, err = run_cli(capsys, "demo", "--method", "classical", "--frames", "99999999999",
                           "--out-dir", tmp_path / "demo")
    assert_clean(code, err, 2)
    assert "of memory" in err and not (tmp_path / "demo").exists()


def test_an_output_that_is_a_device_or_a_pipe_or_a_dash_is_refused(tmp_path, capsys, monkeypatch):
    """-o NODE.mkv --overwrite, NODE a device or a FIFO, replaced the node with a regular file (as root: /dev
    nodes); without --overwrite it said "pass --overwrite". -o - made a folder called -."""
    import os

    source = write_pngs(tmp_path / "clip", clip(4))
    fifo = tmp_path / "pipe.mkv"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "run", source, "-o", fifo, "--method", "classical", "--overwrite", "--quiet")
    assert_clean(code, err, 3)
    assert "is a device or a pipe" in err and fifo.is_fifo()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "run", source, "-o", "-", "--method", "classical", "--quiet")
    assert_clean(code, err, 3)
    assert "standard output" in err and not (tmp_path / "-").exists()


def test_an_hevc_run_prints_nothing_of_x265s_own(tmp_path, capfd):
    """--codec hevc printed x265's [info] banner and "encoded 0 frames" on stderr: the check that the encoder
    opens before any work opened it without the writer's log-level option."""
    source = write_pngs(tmp_path / "clip", clip(4, 48, 64))
    code = main(["run", str(source), "-o", str(tmp_path / "out.mp4"), "--method", "classical", "--codec", "hevc",
                 "--quiet"])
    err = capfd.readouterr().err
    assert code == 0 and "x265" not in err and "encoded" not in err, err


@pytest.fixture
def read_only_folder(tmp_path):
    """An existing folder on a read-only mount (a bind mount made read-only: root ignores permission bits);
    skipped where mounts cannot be made (not root, no CAP_SYS_ADMIN)."""
    source, mount = tmp_path / "source", tmp_path / "mount"
    (source / "sub").mkdir(parents=True)
    mount.mkdir()
    made = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True).returncode == 0
    if made and subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)], capture_output=True).returncode:
        subprocess.run(["umount", str(mount)], capture_output=True)
        made = False
    if not made:
        pytest.skip("cannot make a read-only mount here")
    try:
        yield mount / "sub"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_outputs_in_an_existing_read_only_folder_are_one_line(tmp_path, capsys, read_only_folder):
    """batch -o, demo --out-dir and serve --work-dir naming an existing folder on a read-only disk were OSError
    tracebacks (the summary's, the demo's work folder's, the marker's first write); `run` already said so."""
    from unflicker.errors import OutputError
    from unflicker.web.store import Store

    batch_input = tmp_path / "videos"
    batch_input.mkdir()
    write_video(batch_input / "a.mkv", clip(4), codec="ffv1", pix_fmt="bgr0")
    code, _, err = run_cli(capsys, "batch", batch_input, "-o", read_only_folder, "--method", "classical", "--quiet")
    assert_clean(code, err, 3)
    assert f"cannot write in the output folder {read_only_folder}: Read-only file system" in err
    code, _, err = run_cli(capsys, "batch", batch_input, "-o", read_only_folder / "new", "--method", "classical")
    assert_clean(code, err, 3)
    assert f"cannot make the output folder {read_only_folder / 'new'}" in err
    code, _, err = run_cli(capsys, "demo", "--method", "classical", "--frames", "4", "--out-dir", read_only_folder)
    assert_clean(code, err, 3)
    assert f"cannot write in --out-dir {read_only_folder}" in err
    with pytest.raises(OutputError, match="cannot write in --work-dir"):
        Store(read_only_folder)


def test_api_errors_name_the_keywords_the_cli_its_flags(tmp_path, capsys):
    from unflicker.cli import main
    from unflicker.config import EngineConfig

    frames = clip(3)
    with pytest.raises(InputError, match=r"^strength must be in 0\.\.1, got 2$"):
        unflicker.deflicker(frames, strength=2, progress=False)
    with pytest.raises(InputError, match=r"^engine\.workers must be at least 1"):
        unflicker.deflicker(frames, engine=EngineConfig(workers=0), progress=False)
    with pytest.raises(InputError, match=r"kind, projection=False, carry_texture, precision .* apply to method='neural' only"):
        unflicker.deflicker(frames, method="classical", kind="film", progress=False)
    source = write_pngs(tmp_path / "clip", list(frames))
    assert main(["run", str(source), "-o", str(tmp_path / "o.mkv"), "--strength", "2"]) != 0
    assert "--strength must be in 0..1" in capsys.readouterr().err


@pytest.mark.parametrize("engine, keyword", [(EngineConfig(lanes=0), "engine.lanes"),
                                             (EngineConfig(retries=-1), "engine.retries")])
def test_api_errors_of_engine_settings_without_a_flag_name_the_keyword(engine, keyword):
    """engine.lanes and engine.retries (no CLI flags) were named 'lanes' and 'retries' alone, where every other
    engine setting's error names it as the call wrote it (engine.workers)."""
    with pytest.raises(InputError, match=rf"^{re.escape(keyword)} must be"):
        unflicker.deflicker(clip(3), method="classical", engine=engine, progress=False)
