"""Runs at the same time, or killed: one run per job folder and per batch output folder, leftovers of killed
runs removed by the next, file system errors as one line (a helper's concurrency audit, session 24)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from unflicker import io, synth
from unflicker.batch import run_batch
from unflicker.errors import OutputError
from unflicker.io.common import _rename_new, holding, make_held
from unflicker.pipeline import RunConfig, deflicker_file
from unflicker.resume import JobFolder


def clip(folder: Path, n: int = 24, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random((140, 180, 3)).astype(np.float32), (0, 0), 2.5)
    image = (image - image.min()) / (image.max() - image.min())
    frames = synth.add_flicker(synth.camera_move_clip(image, n, (32, 40), motion="pan", seed=seed), "global", 1.5,
                               seed=seed + 1)
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"f{i:04d}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    return folder


def command(source: Path, output: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "unflicker", "run", str(source), "-o", str(output), "--method", "neural",
            "--atlas-steps", "40", "--segment-frames", "40", "--quiet", *extra]


def test_a_job_folder_is_held_by_one_run_and_cleared_of_a_killed_runs_leftovers(tmp_path):
    first = JobFolder(tmp_path, "key")
    with pytest.raises(OutputError, match="this run's already"):  # another process: "in use by another run"
        JobFolder(tmp_path, "key")
    leftovers = [first.path / ".segment-00001.npy.partial-host-1", first.frames / ".partial-00002-1.npy",
                 first.running / "key-00001.pid"]
    for path in leftovers:
        path.write_bytes(b"x")
    first.result(0).write_bytes(b"done")
    first.release()
    second = JobFolder(tmp_path, "key")
    assert not any(path.exists() for path in leftovers) and second.result(0).read_bytes() == b"done"
    second.release()


def test_a_second_run_on_the_same_work_folder_is_refused_and_the_first_ends_whole(tmp_path):
    source, work = clip(tmp_path / "clip", 90), tmp_path / "work"
    first = subprocess.Popen(command(source, tmp_path / "a.mkv", "--keep-work", str(work), "--workers", "2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(work.glob("jobs/*/config.json")) and time.time() < deadline:
        time.sleep(0.01)
    second = subprocess.run(command(source, tmp_path / "b.mkv", "--keep-work", str(work)), capture_output=True,
                            text=True, timeout=300)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 3 and "in use by another run" in second.stderr and "Traceback" not in second.stderr
    fresh = subprocess.run(command(source, tmp_path / "fresh.mkv"), capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    same = [np.array_equal(a.image, b.image) for a, b in zip(io.read_frames(tmp_path / "a.mkv"),
                                                             io.read_frames(tmp_path / "fresh.mkv"), strict=True)]
    assert all(same) and not list(work.glob("jobs/*/.segment-*"))


def test_the_work_folder_removed_mid_run_is_one_line_not_a_worker_crash(tmp_path):
    source, work = clip(tmp_path / "clip", 90), tmp_path / "work"
    run = subprocess.Popen(command(source, tmp_path / "out.mkv", "--keep-work", str(work), "--workers", "2"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(work.glob("jobs/*/running/*.pid")) and time.time() < deadline and run.poll() is None:
        time.sleep(0.01)
    shutil.rmtree(work)
    code, err = run.wait(timeout=300), run.stderr.read()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err and "died" not in err, err
    assert len(lines) == 1 and lines[0].startswith("unflicker: error:"), err
    assert not (tmp_path / "out.mkv").exists()


def test_a_killed_runs_partial_output_goes_with_the_next_run_and_a_live_ones_stays(tmp_path):
    source, out = clip(tmp_path / "clip", 8), tmp_path / "out.mkv"
    dead_file, dead_folder = tmp_path / ".out.mkv.partial-99999.mkv", tmp_path / ".out.mkv.partial-99998"
    dead_file.write_bytes(b"x")
    dead_folder.mkdir()
    (dead_folder / "frame_000000.png").write_bytes(b"x")
    live = tmp_path / ".out.mkv.partial-99997.mkv"
    lock = make_held(live, folder=False)  # another run writing it now
    try:
        deflicker_file(source, out, RunConfig(method="classical", progress=False))
    finally:
        os.close(lock)
    assert out.is_file() and live.exists() and not dead_file.exists() and not dead_folder.exists()


@pytest.mark.parametrize("folder", [False, True])
def test_another_runs_sweep_never_takes_a_partial_being_made(tmp_path, monkeypatch, folder):
    """make_held made the partial under NAME.making, which sweep_partials' .OUT.partial-* matches: another run
    sweeping between its making and its lock removed it, and this run failed ("cannot write"). The making name
    now has no ".partial-" in it."""
    import fcntl

    from unflicker.io import common
    from unflicker.io.common import sweep_partials

    out, partial = tmp_path / "out.mkv", tmp_path / ".out.mkv.partial-99997.mkv"
    flock, swept = fcntl.flock, []

    def swept_first(fd, operation):
        if not swept:
            swept.append(True)
            sweep_partials(out)  # another run starting at this moment, before this one's lock
        return flock(fd, operation)

    monkeypatch.setattr(common.fcntl, "flock", swept_first)
    lock = make_held(partial, folder=folder)
    monkeypatch.undo()
    try:
        assert partial.is_dir() == folder and partial.exists() and [p.name for p in tmp_path.iterdir()] == [partial.name]
    finally:
        os.close(lock)


def test_a_name_taken_meanwhile_is_not_replaced(tmp_path):
    """Two runs ending at once: the rename into place never replaces what the other just put there."""
    temp, final = tmp_path / ".new", tmp_path / "out.mkv"
    temp.write_text("new")
    final.write_text("first")
    with pytest.raises(FileExistsError):
        _rename_new(temp, final)
    assert final.read_text() == "first" and temp.read_text() == "new"
    final.unlink()
    _rename_new(temp, final)
    assert final.read_text() == "new" and not temp.exists()


def test_a_batch_is_one_per_output_folder_and_an_input_changed_since_is_not_skipped(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    clip(inputs / "a", 8)
    out.mkdir()
    with holding(out, "held"):  # as another batch writing there holds it
        with pytest.raises(OutputError, match="another batch is writing"):
            run_batch(inputs, out, RunConfig(method="classical", progress=False))
    config = RunConfig(method="classical", progress=False)
    assert [row.status for row in run_batch(inputs, out, config)] == ["done"]
    assert [row.status for row in run_batch(inputs, out, config)] == ["skipped"]
    later = time.time() + 5
    (inputs / "a" / ".DS_Store").write_bytes(b"x")  # a file browser's: not a change of the input
    os.utime(inputs / "a" / ".DS_Store", (later, later))
    assert [row.status for row in run_batch(inputs, out, config)] == ["skipped"]
    os.utime(inputs / "a" / "f0003.png", (later, later))  # replaced after the output was written
    rows = run_batch(inputs, out, config)
    assert rows[0].status == "failed" and "--overwrite" in rows[0].error
    assert json.loads((out / "unflicker-batch.json").read_text())[0]["status"] == "failed"


def test_the_same_run_gives_the_same_bytes(tmp_path):
    """Matroska wrote random stream ids: two runs of one command differed in 44 bytes."""
    source = clip(tmp_path / "clip", 8)
    for name in ("a.mkv", "b.mkv"):
        deflicker_file(source, tmp_path / name, RunConfig(method="classical", progress=False))
    assert (tmp_path / "a.mkv").read_bytes() == (tmp_path / "b.mkv").read_bytes()


def test_without_locks_on_the_file_system_runs_go_on_and_nothing_is_taken_for_a_killed_runs(tmp_path, monkeypatch):
    """A network file system without flock (ENOLCK): not 'in use by another run', and no partial is removed."""
    import fcntl

    from unflicker.io import common

    def no_locks(fd, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(common.fcntl, "flock", no_locks)
    source, out = clip(tmp_path / "in" / "clip", 8), tmp_path / "out.mkv"
    other = tmp_path / ".out.mkv.partial-99999.mkv"  # maybe another run's, being written: cannot be told
    other.write_bytes(b"x")
    JobFolder(tmp_path / "work", "key").release()
    deflicker_file(source, out, RunConfig(method="classical", progress=False, keep_work=tmp_path / "work"))
    assert out.is_file() and other.exists()
    assert [row.status for row in run_batch(source.parent, tmp_path / "batch", RunConfig(method="classical",
                                                                                          progress=False))] == ["done"]


def test_library_leaves_the_host_programs_allocator_alone(tmp_path):
    """keep_freed_memory (one malloc arena, a 1 GB trim threshold) is for this tool's own processes: a program
    that calls the library keeps its allocator's settings; `unflicker run` sets them in its process."""
    clip = tmp_path / "clip"
    clip.mkdir()
    for i, frame in enumerate(synth.add_flicker(np.full((6, 32, 48, 3), 0.5, np.float32), "global", seed=0)):
        cv2.imwrite(str(clip / f"{i}.png"), io.from_float(frame))
    library = ("import sys, numpy as np, unflicker; from unflicker import segments; "
               "frames = np.full((6, 32, 48, 3), 0.5, np.float32); "
               "unflicker.deflicker(frames, method='classical', progress=False); "
               "unflicker.deflicker(sys.argv[1], sys.argv[2], method='classical', progress=False); "
               "print(segments._MALLOC_KEPT)")
    out = subprocess.run([sys.executable, "-c", library, str(clip), str(tmp_path / "lib.mkv")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    cli = ("import sys; from unflicker import cli, segments; code = cli.main(['run', sys.argv[1], '-o', sys.argv[2], "
           "'--method', 'classical', '--quiet']); print(code, segments._MALLOC_KEPT)")
    out = subprocess.run([sys.executable, "-c", cli, str(clip), str(tmp_path / "cli.mkv")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 True"


def test_the_tool_s_own_processes_build_the_method_without_the_cyclic_collector():
    """In the tool's own processes a method's build (torch's imports, the weights) runs with the cyclic garbage
    collector off and freezes what it made; the library inside another program leaves its collector alone."""
    code = ("import gc, sys; from unflicker import segments; from unflicker.config import RunConfig, method_spec; "
            "seen = []; from unflicker import methods; real = methods.METHODS['neural']; "
            "methods.METHODS['neural'] = lambda config: (seen.append(gc.isenabled()), real(config))[1]; "
            "own = sys.argv[1] == 'own'; own and segments.own_process(); "
            "segments.build_method(method_spec(RunConfig(method='neural'))); "
            "print(seen, gc.isenabled(), gc.get_freeze_count() > 0)")
    for role, expected in (("host", "[True] True False"), ("own", "[False] True True")):
        out = subprocess.run([sys.executable, "-c", code, role], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected, (role, out.stdout)


def test_ray_tasks_change_the_allocator_only_on_the_runs_own_ray():
    """A Ray the host program started (or a cluster) runs the program's own tasks in its workers too: a segment
    task leaves their allocator alone; on the run's own Ray, whose workers do nothing else, it keeps freed memory."""
    code = ("from unflicker import engine, segments; engine.run_segment = lambda task, progress: None; "
            "engine._ray_segment(None, None, 0); print(segments._MALLOC_KEPT); "
            "engine._ray_segment(None, None, 0, True); print(segments._MALLOC_KEPT)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_a_segment_file_cut_short_or_unreadable_in_the_work_folder_is_run_again(tmp_path):
    """A segment's result in a --keep-work folder that a power loss (renamed, never flushed), a disk error or a copy
    cut short left incomplete: the rerun computes that segment again, with the same output as an uninterrupted
    run, rather than a traceback from the stitch."""
    from unflicker.config import EngineConfig
    from unflicker.segments import SegmentConfig

    source, work = clip(tmp_path / "clip", 16), tmp_path / "work"

    def config(**kw):
        return RunConfig(method="classical", progress=False, engine=EngineConfig(workers=1),
                         segments=SegmentConfig(frames=4, margin=1), **kw)

    deflicker_file(source, tmp_path / "reference.mkv", config())
    assert deflicker_file(source, tmp_path / "first.mkv", config(keep_work=work)).segments == 4
    results = sorted(work.glob("jobs/*/segment-*.npy"))
    with open(results[1], "r+b") as file:
        file.truncate(results[1].stat().st_size - 100)  # its last frame cut short
    results[2].write_bytes(b"")  # renamed into place, its data never reached the disk
    with open(results[3], "r+b") as file:
        file.write(b"\0" * 64)  # its header gone
    with pytest.warns(UserWarning, match="segment-0000[123].npy is incomplete or unreadable") as caught:
        summary = deflicker_file(source, tmp_path / "again.mkv", config(keep_work=work))
    assert summary.reused == 1 and len(caught) == 3
    assert (tmp_path / "again.mkv").read_bytes() == (tmp_path / "reference.mkv").read_bytes()


def test_a_batch_killed_outright_keeps_the_figures_of_the_outputs_it_finished(tmp_path):
    """kill -9 (no clean-up runs) after a batch's first output: the rerun skips that output with its figures
    (frames, flicker index), as after Ctrl-C, not with zeros."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    clip(inputs / "a", 8)
    clip(inputs / "b", 24, seed=5)
    # The batch dies as kill -9 would make it (os._exit: no handler, no finally) once the first output is there.
    script = f"""
import os
from pathlib import Path
from unflicker.batch import run_batch
from unflicker.config import EngineConfig
from unflicker.pipeline import Job, RunConfig
advance = Job.advance
def dying(self):
    if self.batch_index == 1 and Path({str(out / "a")!r}).exists():
        os._exit(137)
    return advance(self)
Job.advance = dying
run_batch(Path({str(inputs)!r}), Path({str(out)!r}), RunConfig(method="classical", progress=False,
          engine=EngineConfig(workers=1)))
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137 and (out / "a").is_dir() and not (out / "b").exists(), killed.stderr
    rows = run_batch(inputs, out, RunConfig(method="classical", progress=False))
    assert [row.status for row in rows] == ["skipped", "done"]
    assert rows[0].frames == 8 and rows[0].flicker_before > rows[0].flicker_after > 0
