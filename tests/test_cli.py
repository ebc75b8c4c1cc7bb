"""The command line: a working run and eval, and one clear line (never a traceback) for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from unflicker import io, synth
from unflicker.cli import main


def write_folder(folder, frames, first=0):
    folder.mkdir()
    for i, frame in enumerate(frames, first):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    return folder


def write_mkv(path, frames):
    """A lossless (FFV1) video of float frames."""
    h, w = frames[0].shape[:2]
    with io.VideoWriter(path, io.VideoInfo(path, False, w, h, len(frames), io.DEFAULT_FOLDER_FPS, "rgb24", 8, False,
                                           None)) as writer:
        for frame in frames:
            writer.write(io.from_float(frame))
    return path


@pytest.fixture
def clips(tmp_path):
    rng = np.random.default_rng(1)
    photo = cv2.GaussianBlur(rng.random((160, 200, 3)).astype(np.float32), (0, 0), 3)
    photo = (photo - photo.min()) / (photo.max() - photo.min())
    clean = synth.camera_move_clip(photo, 12, (48, 64), motion="pan", seed=1)
    flickering = synth.add_flicker(clean, kind="global", strength=1.5, seed=2)
    return write_folder(tmp_path / "clean", clean), write_folder(tmp_path / "flicker", flickering)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_then_eval_shows_less_flicker(tmp_path, clips, capsys):
    clean, flickering = clips
    output = tmp_path / "out"
    code, out, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", output, "--quiet")
    assert code == 0 and "wrote" in out and "Traceback" not in err
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in flickering.iterdir())
    code, out, _ = run_cli(capsys, "eval", output, "--reference", clean, "--ground-truth", clean, "--json")
    after = json.loads(out)
    code, out, _ = run_cli(capsys, "eval", flickering, "--reference", clean, "--ground-truth", clean, "--json")
    before = json.loads(out)
    assert after["flicker_index"] < 0.5 * before["flicker_index"]
    assert after["psnr"] > before["psnr"]
    assert after["warp_error"] < before["warp_error"]
    # The paper's E_warp (masked L1, short- plus long-term) falls too; the detail ratio to the clean
    # clip stays near 1 for a global correction, and the text report shows both.
    assert after["paper_warp_error"] < before["paper_warp_error"]
    assert 0.8 < after["detail"] < 1.25 and 0.5 < before["detail"] < 2.0
    assert {"frames", "warp_error", "flicker_index", "psnr", "ssim"} <= set(after)
    code, out, _ = run_cli(capsys, "eval", output, "--reference", clean, "--ground-truth", clean)
    assert code == 0 and "paper_warp_error" in out and "detail" in out
    # The text report: the frame count as a count; beside each score the reference's own (before and after).
    code, out, _ = run_cli(capsys, "eval", output, "--reference", flickering)
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert code == 0 and lines["frames"].split()[-1] == "12"
    own = float(lines["flicker_index"].split("(reference ")[1].split(")")[0])
    assert own == pytest.approx(before["flicker_index"], rel=1e-4) and "lower" in lines["flicker_index"]


@pytest.mark.parametrize("case", ["missing", "empty_folder", "corrupt", "exists", "same_as_input", "no_folder",
                                  "mixed_sizes", "bad_extension"])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, clips, capsys, case):
    _, flickering = clips
    source, output = flickering, tmp_path / "out.mp4"
    if case == "missing":
        source = tmp_path / "nothing.mp4"
    elif case == "empty_folder":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "corrupt":
        source = tmp_path / "broken.mp4"
        source.write_bytes(os.urandom(2000))
    elif case == "exists":
        output.write_bytes(b"keep me")
    elif case == "same_as_input":
        output = flickering
    elif case == "no_folder":
        output = tmp_path / "no" / "such" / "out.mp4"
    elif case == "mixed_sizes":
        cv2.imwrite(str(flickering / "99.png"), np.zeros((10, 10, 3), np.uint8))
    elif case == "bad_extension":
        output = tmp_path / "out.xyz"
    code, out, err = run_cli(capsys, "run", "--method", "classical", source, "-o", output, "--quiet")
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("unflicker: error:"), err
    if case == "exists":
        assert output.read_bytes() == b"keep me"
    leftovers = [p.name for p in tmp_path.iterdir() if "partial" in p.name]
    assert leftovers == []


def test_single_frame_is_copied_with_a_warning(tmp_path, capsys):
    source = write_folder(tmp_path / "one", [np.full((9, 13, 3), 0.5, np.float32)])
    code, out, err = run_cli(capsys, "run", "--method", "classical", source, "-o", tmp_path / "out.mkv", "--quiet")
    assert code == 0 and "single frame" in err
    assert io.probe(tmp_path / "out.mkv").frame_count == 1


def test_unwritable_output_folder(tmp_path, clips, capsys, monkeypatch):
    # CI runs as root, which can write anywhere, so the folder's refusal is simulated.
    from unflicker.io import common

    def refuse(**_):
        raise PermissionError(13, "Permission denied")

    _, flickering = clips
    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    code, _, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / "out.mp4", "--quiet")
    assert code == 3 and "cannot write in output folder" in err and "Permission denied" in err
    assert not (tmp_path / "out.mp4").exists()


def test_overwrite_replaces_a_folder_of_frames_only_never_the_input_or_other_files(tmp_path, clips, capsys):
    """--overwrite replaces an existing folder output whole: a folder of frames from an earlier run, never
    a folder that holds the input or other files (a project folder given as the output by mistake)."""
    _, flickering = clips
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    video = project / "clip.mp4"
    run_cli(capsys, "run", "--method", "classical", flickering, "-o", video, "--quiet")  # an input inside it
    (project / "notes" / "todo.txt").write_text("important")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    code, _, err = run_cli(capsys, "run", "--method", "classical", video, "-o", project, "--overwrite", "--quiet")
    assert code == 3 and "holds the input" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", project, "--overwrite", "--quiet")
    assert code == 3 and "holds more than frames written for it" in err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    assert (project / "notes" / "todo.txt").read_text() == "important"
    # Nor a folder of someone's pictures: only frames named as this tool writes them.
    photos = tmp_path / "holiday"
    photos.mkdir()
    (photos / "beach.jpg").write_bytes(b"a photo")
    code, _, err = run_cli(capsys, "run", "--method", "classical", video, "-o", photos, "--overwrite", "--quiet")
    assert code == 3 and "beach.jpg" in err and (photos / "beach.jpg").exists()
    # A folder of frames (an earlier output, a file browser's .DS_Store beside them) is replaced; nothing
    # else may be written inside it meanwhile (it would go with the old folder).
    frames = tmp_path / "frames"
    assert run_cli(capsys, "run", "--method", "classical", flickering, "-o", frames, "--quiet")[0] == 0
    (frames / ".DS_Store").write_bytes(b"")
    for inside in ("--keep-work", "--plot"):
        code, _, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", frames, "--overwrite",
                               inside, frames / ("work" if inside == "--keep-work" else "p.png"), "--quiet")
        assert code == 3 and "inside the output folder" in err
    assert run_cli(capsys, "run", "--method", "classical", flickering, "-o", frames, "--overwrite", "--quiet")[0] == 0
    assert len(os.listdir(frames)) == 12
    code, _, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", ".", "--overwrite", "--quiet")
    assert code == 3 and "name the output" in err


def test_module_entry_point_runs(tmp_path, clips):
    _, flickering = clips
    result = subprocess.run([sys.executable, "-m", "unflicker", "info", str(flickering)],
                            capture_output=True, text=True, check=True)
    assert "12 frames" in result.stdout and "64x48" in result.stdout


def test_compare_and_plot_beside_the_output_respect_overwrite(tmp_path, clips, capsys):
    _, flickering = clips
    output, compare, plot = tmp_path / "out.mp4", tmp_path / "compare.mp4", tmp_path / "brightness.png"
    code, out, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", output, "--compare", compare, "--plot", plot, "--quiet")
    assert code == 0 and err == ""
    assert f"wrote {compare}" in out and f"wrote {plot}" in out
    assert out.strip().splitlines()[-1].startswith(f"wrote {output}")  # the summary stays the last line
    info = io.probe(compare)
    assert (info.width, info.height, info.frame_count) == (128, 48, 12)
    pair = io.to_float(next(io.read_frames(compare)).image)
    left, right = pair[:, :64], pair[:, 64:]
    assert np.abs(left - right).mean() > 0.005  # input and output differ: the flicker was removed
    picture = cv2.imread(str(plot))
    assert picture is not None and picture.ndim == 3 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 10
    # An existing compare file stops a new run before any work, without --overwrite only.
    stamp = compare.stat().st_mtime_ns
    code, _, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / "other.mp4", "--compare", compare, "--quiet")
    assert code == 3 and "exists" in err and len(err.strip().splitlines()) == 1
    assert compare.stat().st_mtime_ns == stamp and not (tmp_path / "other.mp4").exists()
    code, _, _ = run_cli(capsys, "run", "--method", "classical", flickering, "-o", output, "--compare", compare, "--plot", plot, "--quiet",
                         "--overwrite")
    assert code == 0
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name or p.name.startswith(".")] == []


def test_run_options_reach_the_pipeline(tmp_path, clips, capsys, monkeypatch):
    from unflicker import pipeline

    seen = {}

    def fake(input_path, output_path, config):
        seen["config"] = config
        return pipeline.RunSummary(output_path, 1, 1.0, 0.0, 0.0)

    monkeypatch.setattr(pipeline, "deflicker_file", fake)
    _, flickering = clips
    code, _, _ = run_cli(capsys, "run", flickering, "-o", tmp_path / "o.mp4", "--method", "neural", "--preset", "fast",
                         "--atlas-steps", "7", "--plot", tmp_path / "p.png", "--quiet")
    config = seen["config"]
    assert code == 0 and (config.preset, config.atlas_steps, config.atlas, config.progress) == ("fast", 7, None, False)
    assert config.plot == tmp_path / "p.png" and config.compare is None
    assert config.crf == io.DEFAULT_CRF
    run_cli(capsys, "run", flickering, "-o", tmp_path / "o.mp4", "--crf", "23", "--quiet")
    assert seen["config"].crf == 23
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert f"(default {io.DEFAULT_CRF})" in " ".join(capsys.readouterr().out.split())  # help wraps lines
    with pytest.raises(SystemExit):
        main(["run", str(flickering), "-o", "x.mp4", "--preset", "slowest"])


def test_training_subcommands_hand_over_their_arguments(capsys, monkeypatch):
    import types

    calls = []
    fake = types.ModuleType("unflicker.filter.training")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "unflicker.filter.training", fake)
    assert main(["train-filter", "--steps", "2", "--help"]) == 0
    assert calls == [["--steps", "2", "--help"]]
    monkeypatch.setitem(sys.modules, "unflicker.refine.training", None)  # as if not installed
    code, _, err = run_cli(capsys, "train-refine", "--steps", "2")
    assert code == 1 and err.strip() == ("unflicker: error: train-refine is not available in this installation "
                                         "(unflicker.refine.training is missing)")



@pytest.mark.parametrize("command", ["train-filter", "train-refine"])
def test_training_help_and_errors_name_the_command_the_readme_gives(command, capsys):
    """`unflicker train-refine --help` showed `usage: python -m unflicker.refine.training`, and its errors that name."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--steps", "x"])
    _, err = capsys.readouterr()
    assert exit_.value.code == 2 and err.startswith(f"unflicker {command}: error: argument --steps"), err

def test_weights_options_reach_the_method_and_missing_weights_fail_in_one_line(tmp_path, clips, capsys):
    from unflicker.config import RunConfig, method_spec

    spec = method_spec(RunConfig(method="neural", filter_weights=Path("mine.safetensors")))
    assert spec.config.filter_weights == "mine.safetensors" and spec.config.refine_weights is None
    _, flickering = clips
    output = tmp_path / "o.mp4"
    for args in (["--filter-weights", tmp_path / "none.safetensors"], ["--refine-weights", tmp_path / "none.safetensors"],
                 ["--method", "classical", "--filter-weights", tmp_path / "none.safetensors"]):
        code, _, err = run_cli(capsys, "run", flickering, "-o", output, "--quiet", *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("unflicker: error:"), err
        assert ("weights" in err) and not output.exists()


def test_precision_auto_follows_the_cpu_flags_and_is_recorded_resolved(tmp_path, monkeypatch, capsys, clips):
    """--precision auto takes bf16 where the CPU has bf16 dot products (flags of /proc/cpuinfo; an ISA cap
    for oneDNN below them counts as none), else fp32; the method's config (recorded) holds the choice."""
    from unflicker import config as cfg

    def cpu(flags):
        path = tmp_path / f"cpuinfo-{len(flags)}"
        path.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu " + " ".join(flags) + "\n\n")
        return str(path)

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cfg.native_bf16(cpu(["avx2", "avx512f", "avx512_bf16"])) and cfg.native_bf16(cpu(["amx_tile", "amx_bf16"]))
    assert not cfg.native_bf16(cpu(["avx2", "avx512f", "avx512_vnni"])) and not cfg.native_bf16(str(tmp_path / "none"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cfg.native_bf16(cpu(["avx512_bf16"]))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert cfg.native_bf16(cpu(["avx512_bf16"]))
    for native in (True, False):
        monkeypatch.setattr(cfg, "native_bf16", lambda native=native: native)
        spec = cfg.method_spec(cfg.RunConfig(method="neural"))
        assert spec.config.precision == ("bf16" if native else "fp32")
        assert cfg.record(spec, cfg.RunConfig(), {})["neural"]["precision"] == spec.config.precision
        for given in ("fp32", "bf16"):
            assert cfg.method_spec(cfg.RunConfig(method="neural", precision=given)).config.precision == given
    _, flickering = clips
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(flickering), "-o", str(tmp_path / "o.mp4"), "--precision", "fp16"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "--precision" in err, err
    code, _, err = run_cli(capsys, "run", flickering, "-o", tmp_path / "o.mp4", "--quiet", "--method", "classical",
                           "--precision", "bf16")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--precision" in err, err


def test_eval_json_is_strict_json(tmp_path, capsys):
    """A result identical to its ground truth has an infinite PSNR: JSON has no Infinity, so it is null there
    (Python's json wrote the non-standard `Infinity`, which strict parsers reject)."""
    frames = [np.full((12, 16, 3), 0.4 + 0.05 * (t % 2), np.float32) for t in range(4)]
    clip = write_folder(tmp_path / "clip", frames)
    code, out, err = run_cli(capsys, "eval", clip, "--reference", clip, "--ground-truth", clip, "--json")
    assert code == 0 and "Traceback" not in err

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    report = json.loads(out, parse_constant=refuse)
    assert report["psnr"] is None and report["ssim"] == pytest.approx(1.0)


def test_eval_json_counts_frames_as_an_integer_as_the_text_does(tmp_path, capsys):
    clip = write_folder(tmp_path / "clip", [np.full((12, 16, 3), 0.4 + 0.05 * (t % 2), np.float32) for t in range(4)])
    code, out, _ = run_cli(capsys, "eval", clip, "--reference", clip, "--json")
    assert code == 0 and '"frames": 4,' in out  # was 4.0
    code, out, _ = run_cli(capsys, "eval", clip, "--reference", clip)
    assert code == 0 and out.splitlines()[0].split() == ["frames:", "4"]


def test_eval_json_gives_ssim_as_null_for_frames_too_small_for_it(tmp_path, capsys):
    """Frames under SSIM's 11-pixel window: `ssim` was left out of the JSON, so its keys depended on the frame size;
    it is null now, said once on stderr; the text report has no ssim line and says so once too."""
    frames = [np.full((8, 10, 3), 0.4 + 0.05 * (t % 2), np.float32) for t in range(4)]
    result = write_folder(tmp_path / "result", frames)
    truth = write_folder(tmp_path / "truth", [np.full((8, 10, 3), 0.42, np.float32)] * 4)
    argv = ("eval", result, "--reference", result, "--ground-truth", truth, "--long-term", "0")
    code, out, err = run_cli(capsys, *argv, "--json")
    report = json.loads(out)
    assert code == 0 and "ssim" in report and report["ssim"] is None and report["psnr"] > 0
    assert err.count("SSIM needs frames of at least 11 x 11") == 1 and len(err.splitlines()) == 1
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and "psnr" in out and "ssim" not in out and "None" not in out
    assert err.count("SSIM needs frames of at least 11 x 11") == 1 and len(err.splitlines()) == 1


def test_eval_json_gives_the_long_term_error_as_null_for_a_clip_too_short_for_it(tmp_path, capsys):
    """A clip of --long-term frames or fewer has no t -> t+K pair: warp_error_k5 was left out of the JSON; it is
    null now (the keys depend on the options, not the clip), said once; the text report has no line for it."""
    clip = write_folder(tmp_path / "clip", [np.full((12, 16, 3), 0.4 + 0.05 * (t % 2), np.float32) for t in range(4)])
    code, out, err = run_cli(capsys, "eval", clip, "--reference", clip, "--json")
    report = json.loads(out)
    assert code == 0 and "warp_error_k5" in report and report["warp_error_k5"] is None
    assert err.splitlines() == ["unflicker: warning: the clip has 4 frames: no long-term error at 5 frames"]
    code, out, err = run_cli(capsys, "eval", clip, "--reference", clip)
    assert code == 0 and "warp_error:" in out and "warp_error_k5" not in out and "None" not in out
    assert err.count("no long-term error") == 1


def test_eval_of_a_shorter_result_warns_once(tmp_path, capsys):
    """The text report scores the result and the reference: the reference's own scores came from the sequences
    aligned (and warned about) once already, not a second time."""
    frames = [np.full((12, 16, 3), 0.4 + 0.05 * (t % 2), np.float32) for t in range(6)]
    reference = write_mkv(tmp_path / "reference.mkv", frames)
    result = write_folder(tmp_path / "result", frames[:4])
    code, out, err = run_cli(capsys, "eval", result, "--reference", reference, "--long-term", "0")
    assert code == 0 and out.splitlines()[0].split() == ["frames:", "4"]
    assert err.splitlines() == ["unflicker: warning: sequences differ in length; comparing the first 4 frames"]


def distinct_frames(n):
    """Frames each unlike the others (a different grey), so that frames paired wrongly show."""
    return [np.full((12, 16, 3), 0.2 + 0.05 * t, np.float32) for t in range(n)]


def test_eval_with_a_video_among_the_inputs_refuses_folders_that_would_pair_other_frames(tmp_path, capsys):
    """A result folder that lacks the first frames, a reference video and a ground truth folder: the folders were
    paired by frame name (0002.png with 0002.png) but the video cut to its first frames (its frame 0 with them),
    scoring the flow of other frames. With a video among the inputs frames are paired by position, so folders
    that would pair other frames are one line's error now."""
    frames = distinct_frames(8)
    reference = write_mkv(tmp_path / "reference.mkv", frames)
    truth = write_folder(tmp_path / "truth", frames)
    result = write_folder(tmp_path / "result", frames[2:], first=2)
    for argv in ((result, "--reference", reference, "--ground-truth", truth),
                 (reference, "--reference", result, "--ground-truth", truth)):
        code, out, err = run_cli(capsys, "eval", *argv, "--json")
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert err.startswith("unflicker: error: cannot pair the frames") and "frame 1 is 2.png in" in err


def test_eval_with_a_video_among_the_inputs_pairs_folders_by_position(tmp_path, capsys):
    """Folders holding the same frames (one shorter) and a video: paired by position, cut to the shortest, said
    once; each result frame met its own ground truth frame (PSNR of identical frames: null)."""
    frames = distinct_frames(8)
    reference = write_mkv(tmp_path / "reference.mkv", frames)
    truth = write_folder(tmp_path / "truth", frames)
    result = write_folder(tmp_path / "result", frames[:6])
    code, out, err = run_cli(capsys, "eval", result, "--reference", reference, "--ground-truth", truth, "--json")
    report = json.loads(out)
    assert code == 0 and report["frames"] == 6 and report["psnr"] is None and report["ssim"] == pytest.approx(1.0)
    assert err.splitlines() == ["unflicker: warning: sequences differ in length; comparing the first 6 frames"]


def test_a_side_by_side_of_an_odd_height_is_4_2_0_and_plays_in_browsers(tmp_path):
    """H.264 keeps an odd size only as 4:4:4, which browsers do not play: the web page's preview and compare
    videos of an odd-height upload (and --compare) did not play. The canvas gets the last row twice."""
    from unflicker.visualize import write_side_by_side

    photo = cv2.GaussianBlur(np.random.default_rng(1).random((160, 200, 3)).astype(np.float32), (0, 0), 3)
    frames = synth.add_flicker(synth.camera_move_clip(photo, 6, (47, 64), motion="pan", seed=1), "global", seed=2)
    source = write_folder(tmp_path / "odd", frames)
    compare = write_side_by_side(source, source, tmp_path / "compare.mp4")
    info = io.probe(compare)
    assert (info.width, info.height, info.chroma) == (128, 48, "420")
    first = next(io.read_frames(compare)).image.astype(int)
    assert np.abs(first[-1] - first[-2]).mean() < 2  # the repeated row, give or take H.264's losses


def test_eval_of_frame_folders_alone_says_which_frames_it_compares(tmp_path, capsys):
    """Frame folders alone are paired by name, on the frames they all share: a result that lacks frames was
    compared on fewer frames without a word; now said once."""
    frames = distinct_frames(8)
    truth = write_folder(tmp_path / "truth", frames)
    result = write_folder(tmp_path / "result", frames[2:], first=2)
    code, out, err = run_cli(capsys, "eval", result, "--reference", truth, "--ground-truth", truth, "--json")
    report = json.loads(out)
    assert code == 0 and report["frames"] == 6 and report["psnr"] is None
    assert err.splitlines() == ["unflicker: warning: the frame folders hold different frames; comparing the 6 whose "
                                "names they all share"]


def test_output_read_by_a_pipe_that_closed_ends_quietly(tmp_path):
    """`unflicker info clip | head -0`: the reader gone, printing was a BrokenPipeError traceback; now a quiet
    exit 141 (128 + SIGPIPE), as Unix tools end."""
    import subprocess
    import sys

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    process = subprocess.Popen([sys.executable, "-m", "unflicker", "info", str(folder)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # before the child prints: its write fails
    err = process.stderr.read().decode()
    assert process.wait() == 141 and err == ""


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_output_to_a_full_or_closed_standard_output_is_one_line_or_nothing(tmp_path, stdout):
    """`unflicker info clip >/dev/full` was an OSError traceback; `... >&-` (stdout closed) an AttributeError one
    (sys.stdout is None). Now a full one is one error line, exit 3; a closed one reads as /dev/null, so nothing
    the command opens can take its number."""
    import subprocess
    import sys

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    command = [sys.executable, "-m", "unflicker", "info", str(folder)]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            process = subprocess.run(command, stdout=full, stderr=subprocess.PIPE)
        assert process.returncode == 3
        assert process.stderr.decode() == "unflicker: error: cannot write to standard output: No space left on device\n"
    else:
        process = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *command], stderr=subprocess.PIPE)
        assert process.returncode == 0 and process.stderr.decode() == ""


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["--version"]])
def test_help_to_a_full_standard_output_is_one_line(argv):
    """argparse drops a failed write: `unflicker --help >/dev/full` said nothing and exited 0."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        process = subprocess.run([sys.executable, "-m", "unflicker", *argv], stdout=full, stderr=subprocess.PIPE)
    prog = "unflicker run" if argv[0] == "run" else "unflicker"
    assert process.returncode == 3
    assert process.stderr.decode() == f"{prog}: error: cannot write to standard output: No space left on device\n"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["--version"]])
def test_help_read_by_a_pipe_that_closed_ends_quietly(argv):
    """`unflicker --help | head -0`: as any other output to a reader gone, a quiet exit 141 (argparse dropped the
    failed write: exit 0, as if the help had been read)."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "unflicker", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # before the child prints: its write fails
    err = process.stderr.read().decode()
    assert process.wait() == 141 and err == ""


def test_an_error_naming_a_path_with_a_line_break_stays_one_line(tmp_path, capsys):
    """A path holding a line break made the error two lines; the break is now written as \\n."""
    assert main(["info", str(tmp_path / "a\nb.mp4")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "a\\nb.mp4" in err, err


@pytest.mark.parametrize("case", ["name_too_long", "file_not_permitted", "folder_not_permitted"])
def test_info_of_an_input_that_cannot_be_read_is_one_line(tmp_path, clips, capsys, monkeypatch, case):
    """A name too long for the file system was a traceback (OSError from the existence check); a file or folder
    the user may not read was a traceback (the folder's listing) or "not a video FFmpeg can decode" (the file).
    CI runs as root, which reads anything, so the refusals are simulated."""
    import unflicker.io as unflicker_io

    _, source = clips
    if case == "name_too_long":
        source = tmp_path / ("b" * 300 + ".mp4")
    elif case == "file_not_permitted":
        source = tmp_path / "private.mp4"
        source.write_bytes(b"\0" * 100)

        def refuse(*_, **__):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(unflicker_io.av, "open", refuse)
    else:
        def refuse(folder):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(unflicker_io, "_list_frame_files", refuse)
    code, out, err = run_cli(capsys, "info", source)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("unflicker: error: cannot read"), err
    assert ("File name too long" if case == "name_too_long" else "Permission denied") in err


def test_info_of_a_folder_of_mixed_frame_sizes_is_one_line(clips, capsys):
    """`info` told the first frame's size for the whole folder; a run found the odd frame only when the
    pass over the frames reached it. The frames' headers are read when the folder is probed."""
    _, flickering = clips
    cv2.imwrite(str(flickering / "5a.png"), np.zeros((30, 40, 3), np.uint8))  # between 5.png and 6.png
    code, out, err = run_cli(capsys, "info", flickering)
    assert code == 2 and out == ""
    assert err.strip() == f"unflicker: error: mixed frame sizes in {flickering}: 5a.png is 40x30, the first frame is 64x48"


@pytest.mark.parametrize("same_as", ["-o", "--compare", "--plot"])
def test_keep_work_naming_an_output_is_refused_before_the_run(tmp_path, clips, capsys, same_as):
    """--keep-work made its folder where an output was to go: the whole run ran, then the output could not be
    put in place ("appeared while writing", "exists"), the video written already where --compare or --plot
    failed. Refused up front now, nothing made."""
    _, flickering = clips
    output, work = tmp_path / "out.mp4", tmp_path / ("work.png" if same_as == "--plot" else "work.mp4")
    outputs = {"-o": output, "--compare": tmp_path / "compare.mp4", "--plot": tmp_path / "plot.png", same_as: work}
    code, out, err = run_cli(capsys, "run", "--method", "classical", flickering, *(a for pair in outputs.items() for a in pair),
                             "--keep-work", work, "--quiet")
    what = "the output" if same_as == "-o" else same_as
    assert code == 3 and err.strip() == f"unflicker: error: --keep-work {work} is also {what}: choose another folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "flicker"]


def test_demo_replaces_nothing_unasked_and_leaves_nothing_when_interrupted(tmp_path, capsys, monkeypatch):
    """`demo` rewrote input.mp4, output.mp4 and compare.mp4 of an earlier demo without a word, and Ctrl-C after
    its new input left that beside the earlier output as if they belonged together. Now an existing file is
    refused before any work (--overwrite replaces), and the three are put in place together at the end."""
    from unflicker import demo

    files = ("compare.mp4", "input.mp4", "output.mp4")
    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    for name in files:
        (out_dir / name).write_bytes(b"an earlier demo")

    def no_work(*_, **__):
        raise AssertionError("the demo started its work")

    monkeypatch.setattr(demo, "make_demo_clip", no_work)
    code, out, err = run_cli(capsys, "demo", "--out-dir", out_dir, "--frames", "3", "--method", "classical")
    assert code == 3 and out == "" and err.strip() == (f"unflicker: error: {out_dir / 'input.mp4'} exists: pass "
                                                       "--overwrite to replace the demo's files, or choose another --out-dir")
    monkeypatch.undo()

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_side_by_side", interrupted)
    code, _, err = run_cli(capsys, "demo", "--out-dir", out_dir, "--frames", "3", "--method", "classical", "--overwrite")
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in out_dir.iterdir()) == list(files)  # no partial folder left
    assert all((out_dir / name).read_bytes() == b"an earlier demo" for name in files)
    for args, message in ((["--out-dir", out_dir / "input.mp4"], "is a file"), (["--frames", "1"], "at least 2")):
        code, _, err = run_cli(capsys, "demo", *args)
        assert code != 0 and err.startswith("unflicker: error:") and message in err and len(err.splitlines()) == 1


def test_demo_sweeps_what_a_killed_demo_left_and_never_a_running_ones(tmp_path, capsys, monkeypatch):
    """`demo` killed outright (SIGKILL) left its .demo.partial-* folder (input, output, spills) in --out-dir for
    good. Its folder is now made locked, as a run's partial output is: the next demo removes a killed one's,
    keeps one that a live demo holds, and holds its own while it works."""
    from unflicker import demo
    from unflicker.io.common import locked_by_another, make_held

    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    killed = out_dir / ".demo.partial-99999-dead"
    killed.mkdir()
    (killed / "input.mp4").write_bytes(b"a killed demo's input")
    running = out_dir / ".demo.partial-1-live"
    lock = make_held(running, folder=True)  # another demo at work
    held = []

    def side_by_side(*args, **kwargs):
        held.extend(locked_by_another(p) for p in out_dir.glob(".demo.partial-*"))
        return write_side_by_side(*args, **kwargs)

    write_side_by_side = demo.write_side_by_side
    monkeypatch.setattr(demo, "write_side_by_side", side_by_side)
    try:
        code, _, err = run_cli(capsys, "demo", "--out-dir", out_dir, "--frames", "3", "--method", "classical")
        assert code == 0, err
        assert held == [True, True]  # this demo's own and the live one
        assert sorted(p.name for p in out_dir.iterdir()) == sorted([*demo.DEMO_FILES, running.name])
    finally:
        os.close(lock)


@pytest.mark.parametrize("length", [227, 300])
def test_an_output_name_too_long_is_one_line_before_the_run(tmp_path, clips, capsys, length):
    """300 bytes, too long for the file system, was a traceback (OSError from the existence check); 231 bytes
    fits, but the writer's temporary name beside it did not: a traceback as the writer started, after the
    pass over the input. Both are refused up front in one line now; 227 bytes (+ .mp4) is written."""
    _, flickering = clips
    for name in ("c" * (length - 4) + ".mp4", "d" * length + ".mp4"):
        fits = len(name) <= 227
        code, out, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / name, "--quiet")
        if fits:
            assert code == 0 and (tmp_path / name).is_file(), err
            continue
        lines = err.strip().splitlines()
        assert code == 3 and len(lines) == 1 and lines[0].startswith("unflicker: error:"), err
        assert ("File name too long" if len(name) > 255 else "choose a shorter one") in err
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("command", ["run", "batch"])
def test_a_stopped_run_with_keep_work_says_its_segments_stay(tmp_path, capsys, monkeypatch, command):
    """Ctrl-C (or kill) of a run with --keep-work said only "no partial output was left", as if its work were
    lost: the finished segments stay in the work folder and the same command resumes from them."""
    from unflicker import cli

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_" + command, interrupted)
    # A batch's finished outputs stay too, listed in its summary (it said nothing of them).
    outputs = f"1 finished output stays, listed in {tmp_path / 'out.mp4' / 'unflicker-batch.csv'}; " \
        if command == "batch" else ""
    if command == "batch":  # as a batch stopped midway leaves it (one stopped before it has none: not named)
        code, _, err = run_cli(capsys, command, tmp_path / "in.mp4", "-o", tmp_path / "out.mp4")
        assert code == 130 and err.strip() == "unflicker: interrupted; no partial output was left"
        from unflicker.batch import BatchItem, write_summary

        (tmp_path / "out.mp4").mkdir()
        write_summary(tmp_path / "out.mp4", [BatchItem("a.mp4", "a.mp4", "done", 3), BatchItem("b", "b", "interrupted")])
    code, _, err = run_cli(capsys, command, tmp_path / "in.mp4", "-o", tmp_path / "out.mp4",
                           "--keep-work", tmp_path / "work")
    assert code == 130 and err.strip() == (f"unflicker: interrupted; no partial output was left; {outputs}finished "
                                           f"segments stay in {tmp_path / 'work'}: the same command runs only the rest")
    code, _, err = run_cli(capsys, command, tmp_path / "in.mp4", "-o", tmp_path / "out.mp4")
    assert code == 130 and err.strip() == ("unflicker: interrupted; no partial output was left" +
                                           (f"; {outputs[:-2]}: the same command runs only the rest" if outputs else ""))


def test_a_finished_run_says_its_kept_work_folder_stays_and_can_go(tmp_path, clips, capsys):
    """After a run or batch with --keep-work had written its outputs, nothing said that DIR (every frame at 16 bits)
    was still there. Their last line now names the job's folder and its size: a rerun reuses it, delete it when
    done (README's advice). A run without --keep-work says nothing of the kind."""
    from unflicker.pipeline import size_text
    from unflicker.resume import folder_bytes

    _, flickering = clips
    work = tmp_path / "work"
    code, out, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / "out.mkv",
                             "--keep-work", work, "--quiet")
    (job,) = (work / "jobs").iterdir()
    assert code == 0 and out.rstrip().endswith(f"; work kept: {size_text(folder_bytes(job))} in {job.resolve()} "
                                               "(reruns reuse it; delete it when done)"), out + err
    assert any(job.glob("segment-*.npy"))  # kept
    code, out, _ = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / "out.mkv",
                           "--keep-work", work, "--quiet", "--overwrite", "--strength", "0.5")
    assert code == 0 and "1 of them reused from the work folder; work kept" in out  # what the note promises
    (tmp_path / "list.txt").write_text("flicker\n")
    code, out, err = run_cli(capsys, "batch", "--method", "classical", tmp_path / "list.txt", "-o", tmp_path / "batch",
                             "--keep-work", work, "--quiet")
    assert code == 0 and out.rstrip().endswith(f"; work kept: {size_text(folder_bytes(work))} in {work} "
                                               "(reruns reuse it; delete it when done)"), out + err
    code, out, _ = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / "plain.mkv", "--quiet")
    assert code == 0 and "work kept" not in out
    assert size_text(999) == "999 bytes" and size_text(28_364_709) == "28.4 MB" and size_text(1.5e12) == "1500.0 GB"


def test_the_stopped_message_takes_the_work_folder_not_the_args(tmp_path, monkeypatch):
    """_stopped read --keep-work off whatever main had as args (getattr: a Namespace, or a delegated command's
    argv list); main now passes the folder itself (None for commands without --keep-work)."""
    from unflicker import cli

    assert cli._stopped(Path("work")) == ("no partial output was left; finished segments stay in work: the same "
                                          "command runs only the rest")
    assert cli._stopped(None) == "no partial output was left"
    monkeypatch.chdir(tmp_path)
    from unflicker.batch import BatchItem, write_summary

    Path("out").mkdir()
    # A batch stopped before any input finished said "finished outputs stay" too; now it counts them.
    write_summary(Path("out"), [BatchItem("a.mp4", "out/a.mp4", "interrupted"), BatchItem("b.mp4", "out/b.mp4", "failed")])
    assert cli._stopped(None, Path("out/unflicker-batch.csv")) == "no partial output was left"
    write_summary(Path("out"), [BatchItem("a.mp4", "out/a.mp4", "done", 12), BatchItem("b.mp4", "out/b.mp4", "skipped"),
                                BatchItem("c.mp4", "out/c.mp4", "interrupted")])
    assert cli._stopped(None, Path("out/unflicker-batch.csv")) == ("no partial output was left; 2 finished outputs "
                                                                 "stay, listed in out/unflicker-batch.csv: the same "
                                                                 "command runs only the rest")


def test_the_batch_csv_names_the_flicker_index_it_holds(tmp_path):
    """The terminal shows the flicker index x1e-3 (0.35), the batch CSV held the raw value (0.00035) under
    'flicker_before': nothing said which. Its columns are now flicker_index_before/after, raw as `eval --json`'s
    flicker_index (README says so); the JSON names them alike (it kept the field names: two names for one
    figure), and a rerun still takes the figures of a JSON written before."""
    import csv

    from unflicker.batch import BatchItem, write_summary

    rows = [BatchItem("a.mp4", "out/a.mp4", "done", 12, 1.5, 3.5e-4, 1.2e-4, "film", 1),
            BatchItem("b.mp4", "out/b.mp4", "failed", error="cannot read b.mp4")]
    csv_path, json_path = write_summary(tmp_path, rows)
    with open(csv_path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["input", "output", "status", "frames", "seconds", "flicker_index_before",
                             "flicker_index_after", "kind", "segments", "reused", "error"]
    assert float(read[0]["flicker_index_before"]) == 3.5e-4 and float(read[0]["flicker_index_after"]) == 1.2e-4
    assert read[1]["flicker_index_before"] == "" and read[1]["error"] == "cannot read b.mp4"
    assert list(json.loads(json_path.read_text())[0]) == list(read[0])
    assert json.loads(json_path.read_text())[0]["flicker_index_before"] == 3.5e-4
    from unflicker.batch import _keep_earlier

    (tmp_path / "a.mp4").write_bytes(b"")
    for key in ("flicker_index_before", "flicker_before"):  # this JSON's name, an earlier one's
        item = BatchItem("a.mp4", str(tmp_path / "a.mp4"), "skipped")
        _keep_earlier(item, {"status": "done", key: 3.5e-4, "summary_time": (tmp_path / "a.mp4").stat().st_mtime})
        assert item.flicker_before == 3.5e-4, key


@pytest.mark.parametrize("argv", [["run", "in.mp4", "-o", "out.mp4", "--strength", "abc"], ["run"], ["nope"],
                                  ["batch", "clips"], ["run", "in.mp4", "-o", "out.mp4", "--kind", "foo"]])
def test_an_option_argparse_refuses_is_one_line_too(capsys, argv):
    """argparse printed its usage (several lines) before its error; every other bad input is one line."""
    from unflicker import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("unflicker") and ": error: " in err and err.rstrip().endswith("--help)")


def test_crf_for_an_output_that_takes_none_is_said(tmp_path, capsys):
    """--crf with a lossless FFV1 or a folder output was ignored without a word."""
    frames = [np.full((32, 48, 3), 0.3 + 0.1 * i, np.float32) for i in range(4)]
    clip = write_folder(tmp_path / "in", frames)
    for output, what in (("o.mkv", "ffv1 (.mkv)"), ("frames", "a folder of frames")):
        code, _, err = run_cli(capsys, "run", clip, "-o", tmp_path / output, "--method", "classical", "--crf", "20",
                               "--quiet")
        assert code == 0 and f"--crf 20 is for H.264 and H.265 outputs; {what} takes none: ignored" in err, err
    code, _, err = run_cli(capsys, "run", clip, "-o", tmp_path / "o.mp4", "--method", "classical", "--crf", "20",
                           "--quiet")
    assert code == 0 and "--crf" not in err


def test_a_plot_named_dot_is_named_in_the_refusal(tmp_path, capsys):
    """`--plot .` was refused with 'name it *.png, not ' (the path's name is empty)."""
    code, _, err = run_cli(capsys, "run", tmp_path / "in.mp4", "-o", tmp_path / "o.mkv", "--plot", ".")
    assert code == 3 and err.strip().endswith("--plot writes a PNG: name it *.png, not ."), err


@pytest.mark.parametrize("command", ["run", "batch"])
def test_a_mistyped_option_name_is_named_by_its_command(capsys, command):
    """README: `unflicker run: error:` for a mistyped option. `--strenght` was reported by the top-level parser
    ('unflicker: error: unrecognized arguments ... (see unflicker --help)'), whose help lists no run options."""
    from unflicker import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([command, "in.mp4", "-o", "out", "--strenght", "0.5"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"unflicker {command}: error: ") and "--strenght" in err, err
    assert err.rstrip().endswith(f"(see unflicker {command} --help)"), err


@pytest.mark.parametrize("argv", [["train-filter", "--stpes", "3"], ["train-refine", "--steps", "x"]])
def test_a_training_command_refuses_an_option_in_one_line(capsys, argv):
    """README: bad input gives one line. The training commands' own parsers printed argparse's usage (about 20
    lines) before their error, as `run` did before its parser was made one-line."""
    from unflicker import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"unflicker {argv[0]}: error: ") and err.rstrip().endswith(f"(see unflicker {argv[0]} --help)")


def test_a_plot_is_never_written_among_the_input_frames(tmp_path, clips, capsys):
    """`--plot FRAMES/p.png` put a 960x600 PNG among the input's frames: the folder then failed to read ("mixed frame
    sizes"). Refused before any work, as a plot inside the output folder is."""
    _, flickering = clips
    before = sorted(os.listdir(flickering))
    code, _, err = run_cli(capsys, "run", "--method", "classical", flickering, "-o", tmp_path / "out.mkv",
                           "--plot", flickering / "p.png", "--quiet")
    assert code == 3 and "input folder" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(os.listdir(flickering)) == before and not (tmp_path / "out.mkv").exists()
