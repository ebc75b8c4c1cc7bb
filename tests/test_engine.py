"""Segments on engines: the plan, the same output everywhere (workers, load, Ray, a dead worker),
resume after kill -9, no seams, batch folders."""

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from unflicker import io, metrics, synth
from unflicker.cli import main
from unflicker.config import EngineConfig
from unflicker.errors import InputError, UnflickerError
from unflicker.flow import flow_pair
from unflicker.pipeline import RunConfig, deflicker_file
from unflicker.segments import Segment, SegmentConfig, blend_weight, plan

SMALL = SegmentConfig(frames=12, margin=3)


def photo(seed=3, shape=(160, 220)):
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.random((*shape, 3)).astype(np.float32), (0, 0), 2.5)
    return (image - image.min()) / (image.max() - image.min())


def write_folder(folder: Path, frames) -> Path:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"f{i:04d}.png"), cv2.cvtColor(io.from_float(frame), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def flickering(tmp_path_factory):
    clean = synth.camera_move_clip(photo(), 36, (48, 64), motion="pan", seed=3)
    return write_folder(tmp_path_factory.mktemp("engine") / "clip", synth.add_flicker(clean, "global", 1.5, seed=4))


def frames_of(path):
    return np.stack([f.image for f in io.read_frames(path)])


def neural(**kw):
    return RunConfig(method="neural", atlas_steps=5, progress=False, segments=SMALL, **kw)


# --- the plan -------------------------------------------------------------------------------------

def test_plan_cuts_shots_into_equal_segments_with_margins_inside_the_shot():
    shots = [range(0, 30), range(30, 35), range(35, 100)]
    segments = plan(shots, SegmentConfig(frames=20, margin=4))
    assert [s.core for s in segments] == [range(0, 15), range(15, 30), range(30, 35), range(35, 51),
                                          range(51, 67), range(67, 84), range(84, 100)]
    assert [s.span for s in segments] == [range(0, 19), range(11, 30), range(30, 35), range(35, 55),
                                          range(47, 71), range(63, 88), range(80, 100)]
    assert [s.shot for s in segments] == [0, 0, 1, 2, 2, 2, 2]
    cores = [t for s in segments for t in s.core]
    assert cores == list(range(100))
    with pytest.raises(InputError):
        plan(shots, SegmentConfig(frames=10, margin=4))


def test_cross_fade_weights_ramp_across_the_overlap_and_never_cross_a_cut():
    a, b = Segment(0, range(0, 10), range(0, 14), 0), Segment(1, range(10, 20), range(6, 20), 0)
    weights = [blend_weight(a, b, t, 4) for t in range(0, 20)]
    assert weights[:6] == [0.0] * 6 and weights[14:] == [0.0] * 6  # outside the overlap
    ramp = weights[6:14]
    assert all(0 < w < 1 for w in ramp) and ramp == sorted(ramp)
    assert abs(ramp[3] + ramp[4] - 1) < 1e-9  # symmetric around the boundary
    other_shot = Segment(1, range(10, 20), range(10, 20), 1)
    assert all(blend_weight(a, other_shot, t, 4) == 0 for t in range(20))


# --- the same output everywhere -----------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(flickering, tmp_path_factory):
    """The in-process (--workers 1) lossless output everything else must equal bit for bit (two
    lanes: each frame's filter and settling one frame ahead on a second thread)."""
    out = tmp_path_factory.mktemp("ref") / "ref.mkv"
    summary = deflicker_file(flickering, out, neural(engine=EngineConfig(workers=1, lanes=2)))
    assert summary.segments == 3
    return frames_of(out)


def busy_process():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def test_one_lane_gives_the_same_bits_as_two(flickering, reference, tmp_path):
    deflicker_file(flickering, tmp_path / "one.mkv", neural(engine=EngineConfig(workers=1, lanes=1)))
    assert np.array_equal(frames_of(tmp_path / "one.mkv"), reference)
    with pytest.raises(InputError):
        EngineConfig(lanes=0).check()


def test_settling_in_any_order_on_two_threads_gives_the_same_frames():
    from concurrent.futures import ThreadPoolExecutor

    from unflicker.atlas import AtlasConfig
    from unflicker.neural import NeuralConfig, NeuralDeflicker

    clean = synth.camera_move_clip(photo(), 10, (48, 64), motion="pan", seed=3)
    frames = [f.astype(np.float32) for f in synth.add_flicker(clean, "global", 1.5, seed=4)]
    method = NeuralDeflicker(NeuralConfig(atlas=AtlasConfig(steps=5)))

    def passed():
        method.analyze(iter(frames))
        return [method.process(t, f)["project"] for t, f in enumerate(frames)]

    outputs = passed()
    in_order = [method.settle(t, frames[t], outputs[t]) for t in range(len(frames))]
    assert method._refined is None  # every frame settled: the stored frames are gone
    outputs = passed()
    with ThreadPoolExecutor(2) as pool:
        backwards = list(pool.map(lambda t: method.settle(t, frames[t], outputs[t]), reversed(range(len(frames)))))
    assert method._refined is None
    assert all(np.array_equal(a, b) for a, b in zip(in_order, backwards[::-1]))


def test_one_task_in_a_fresh_process_loads_the_method_on_a_thread_meanwhile(flickering, tmp_path):
    """A one-task local run preloads the method (torch, weights) on a thread while the process plans
    and spills; the segment waits for it before setting thread counts (threadpoolctl walks the loaded
    libraries under the loader's lock, which that import may hold: this once hung). Fresh
    interpreters, so the import really runs beside the segment's start."""
    from unflicker.classical import ClassicalConfig
    from unflicker.errors import WeightsError
    from unflicker.neural import NeuralConfig
    from unflicker.segments import MethodSpec, _PRELOADING, build_method, preload_method

    for i in range(3):
        out = tmp_path / f"one{i}.mkv"
        code = ("from unflicker.config import EngineConfig\n"
                "from unflicker.pipeline import RunConfig, deflicker_file\n"
                "from unflicker.segments import SegmentConfig\n"
                f"deflicker_file({str(flickering)!r}, {str(out)!r}, RunConfig(method='neural', atlas_steps=5, progress=False,"
                " segments=SegmentConfig(frames=40, margin=3), engine=EngineConfig(workers=1, lanes=2)))\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    here = tmp_path / "here.mkv"  # built in this process, where torch was loaded long before
    deflicker_file(flickering, here, RunConfig(method="neural", atlas_steps=5, progress=False,
                                               segments=SegmentConfig(frames=40, margin=3),
                                               engine=EngineConfig(workers=1, lanes=2)))
    assert all(np.array_equal(frames_of(tmp_path / f"one{i}.mkv"), frames_of(here)) for i in range(3))
    spec = MethodSpec("classical", ClassicalConfig(radius=11))
    preload_method(spec)
    assert list(_PRELOADING) and build_method(spec) is build_method(spec) and not _PRELOADING
    bad = MethodSpec("neural", NeuralConfig(filter_weights=str(tmp_path / "missing.safetensors")))
    preload_method(bad)
    with pytest.raises(WeightsError, match="not found"):
        build_method(bad)


def test_two_workers_and_a_busy_machine_give_the_same_bits(flickering, reference, tmp_path):
    deflicker_file(flickering, tmp_path / "two.mkv", neural(engine=EngineConfig(workers=2)))
    assert np.array_equal(frames_of(tmp_path / "two.mkv"), reference)
    hog = busy_process()
    try:
        deflicker_file(flickering, tmp_path / "busy.mkv", neural(engine=EngineConfig(workers=2)))
    finally:
        hog.kill()
        hog.wait()
    assert np.array_equal(frames_of(tmp_path / "busy.mkv"), reference)
    # PNG frames too, and the 8-bit output is the same frames as the lossless video.
    deflicker_file(flickering, tmp_path / "png", neural(engine=EngineConfig(workers=2)))
    assert np.array_equal(frames_of(tmp_path / "png"), reference)


def test_default_workers_are_as_many_as_the_memory_holds(monkeypatch):
    """One worker per core took 16 x 1.65 GB at 4K on 16 cores (measured: 12.7 GB at 854x480 on an H200's
    machine): the default now counts the memory too; --workers is taken as given."""
    import unflicker.config as config

    monkeypatch.setattr(config, "machine_cores", lambda: 16)
    monkeypatch.setattr(config, "available_memory", lambda: 6 * 2**30)
    engine = EngineConfig()
    small, uhd = engine.local_workers((854, 480)), engine.local_workers((3840, 2160))
    assert 1 <= uhd < small < 16 and engine.local_workers() == 16
    for (w, h), n in (((854, 480), small), ((3840, 2160), uhd)):  # each fits, one more would not
        need = lambda k: config.MAIN_MEMORY[0] + config.MAIN_MEMORY[1] * w * h + k * (
            config.WORKER_MEMORY[0] + config.WORKER_MEMORY[1] * w * h)
        assert need(n) <= 6 * 2**30 < need(n + 1)
    assert EngineConfig(workers=16).local_workers((3840, 2160)) == 16
    monkeypatch.setattr(config, "available_memory", lambda: 2**20)
    assert engine.local_workers((3840, 2160)) == 1
    monkeypatch.setattr(config, "available_memory", lambda: None)  # unknown: one per core
    assert engine.local_workers((3840, 2160)) == 16


def test_the_memory_cap_counts_the_method_a_worker_runs(monkeypatch, flickering, tmp_path):
    """The cap was measured for the default method only (session 27): the MLP atlas's worker takes about 1.4 GB
    more (it let too many start), a classical one about 40 % less (it started needlessly few)."""
    import unflicker.config as config
    from unflicker import engine as engine_module
    from unflicker.engine import LocalPool

    monkeypatch.setattr(config, "machine_cores", lambda: 16)
    free = 8 * 2**30
    default = EngineConfig()
    specs = {"classical": config.method_spec(RunConfig(method="classical")),
             "grid": config.method_spec(RunConfig(method="neural")),
             "mlp": config.method_spec(RunConfig(method="neural", preset="paper"))}
    fits = {name: default.local_workers((1280, 720), free, spec) for name, spec in specs.items()}
    assert fits["mlp"] < fits["grid"] == default.local_workers((1280, 720), free) < fits["classical"] <= 16
    assert config.memory_needs(1280, 720, specs["mlp"])[0] == config.memory_needs(1280, 720)[0]  # the same main
    monkeypatch.setattr(config, "available_memory", lambda: free)
    with pytest.warns(UserWarning) as caught:
        pool = LocalPool(EngineConfig(), tasks=1, frame=(1280, 720), spec=specs["grid"])
        pool.fit((1280, 720), specs["mlp"])  # the same frame size, a hungrier method: the pool shrinks
    try:
        assert pool.limit == fits["mlp"]
        mlp = config.memory_needs(1280, 720, specs["mlp"])[1] / 2**30
        assert [str(w.message).split(":")[0] for w in caught] == [f"{fits['grid']} workers at once, not 16",
                                                                  f"{fits['mlp']} workers at once, not {fits['grid']}"]
        assert f"each takes up to about {mlp:.1f} GB" in str(caught[1].message)
    finally:
        pool.close()
    made = []  # a run hands its method to the executor
    monkeypatch.setattr(engine_module, "make_executor",
                        lambda *args: made.append(args) or engine_module.InProcess(args[0]))
    deflicker_file(flickering, tmp_path / "out.mkv", RunConfig(method="classical", progress=False, segments=SMALL,
                                                               engine=EngineConfig(workers=2)))
    assert made and made[0][3].name == "classical"


def test_the_free_memory_counts_every_cgroup_limit_and_not_its_page_cache(tmp_path):
    """A container's limit was read from /sys/fs/cgroup/memory.max alone: a cgroup v1 container (Docker on
    older hosts), a limit on a parent cgroup (a systemd slice) or a cgroup not at the mount's root went
    unseen, and the page cache the cgroup could drop (the input video, read) counted as taken."""
    from unflicker.config import available_memory

    gb = 2**30

    def machine(cgroup_lines: str, files: dict) -> tuple[str, str]:
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/meminfo").write_text(f"MemTotal: {64 * gb // 1024} kB\nMemAvailable: {20 * gb // 1024} kB\n")
        (root / "proc/self/cgroup").write_text(cgroup_lines)
        for name, text in files.items():
            (root / "cg" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "cg" / name).write_text(text)
        return str(root / "proc"), str(root / "cg")

    assert available_memory(*machine("0::/\n", {})) == 20 * gb  # no limit: MemAvailable
    v1 = {"memory/memory.limit_in_bytes": f"{4 * gb}\n", "memory/memory.usage_in_bytes": f"{3 * gb}\n",
          "memory/memory.stat": f"cache {2 * gb}\ninactive_file 1\ntotal_inactive_file {2 * gb}\n"}
    assert available_memory(*machine("12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n", v1)) == 3 * gb
    unlimited_v1 = {"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n"}
    assert available_memory(*machine("4:memory:/user.slice\n", unlimited_v1)) == 20 * gb
    nested = {"user.slice/memory.max": f"{2 * gb}\n", "user.slice/memory.current": f"{gb}\n",
              "user.slice/memory.stat": f"anon 1\ninactive_file {gb // 2}\n",
              "user.slice/run.scope/memory.max": "max\n", "user.slice/run.scope/memory.current": "5\n"}
    assert available_memory(*machine("0::/user.slice/run.scope\n", nested)) == gb + gb // 2
    namespaced = {"memory.max": f"{8 * gb}\n", "memory.current": f"{6 * gb}\n",
                  "memory.stat": f"inactive_file {4 * gb}\n"}
    assert available_memory(*machine("0::/\n", namespaced)) == 6 * gb


def test_a_run_takes_fewer_workers_where_memory_is_short_and_says_so(flickering, reference, tmp_path, monkeypatch):
    import unflicker.config as config

    monkeypatch.setattr(config, "machine_cores", lambda: 2)
    monkeypatch.setattr(config, "available_memory", lambda: 1 * 2**30)  # room for one worker beside the run
    with pytest.warns(UserWarning, match=r"1 worker at once, not 2: at 64x48 each takes up to about 0.8 GB"):
        deflicker_file(flickering, tmp_path / "one.mkv", neural(engine=EngineConfig()))
    assert np.array_equal(frames_of(tmp_path / "one.mkv"), reference)


def test_a_pool_retires_idle_workers_when_a_larger_video_starts(monkeypatch):
    import unflicker.config as config
    from unflicker.engine import LocalPool

    monkeypatch.setattr(config, "machine_cores", lambda: 3)
    monkeypatch.setattr(config, "available_memory", lambda: 6 * 2**30)  # 7 workers at 64x48, 2 at 4K
    pool = LocalPool(EngineConfig(), tasks=3, frame=(64, 48))
    try:
        assert len(pool._pool) == 3 and pool.capacity == 4
        with pytest.warns(UserWarning, match=r"2 workers at once, not 3: at 3840x2160"):
            pool.fit((3840, 2160))
        assert len(pool._pool) == 2 and pool.capacity == 3
    finally:
        pool.close()


def test_a_pool_counts_the_memory_it_had_before_its_own_workers_took_any(monkeypatch):
    """The free memory falls as the pool's own workers load and run: a job start (run_jobs calls `fit` after
    each) measured it again and cut the pool (and warned) for memory its workers hold, down to one worker in
    a batch; a video no larger changes nothing, a larger one counts the memory free when the pool started."""
    import warnings as warnings_module

    import unflicker.config as config
    from unflicker.engine import LocalPool

    monkeypatch.setattr(config, "machine_cores", lambda: 4)
    monkeypatch.setattr(config, "available_memory", lambda: 8 * 2**30)
    pool = LocalPool(EngineConfig(), tasks=1, frame=(1920, 1080))
    try:
        assert pool.limit == 4
        monkeypatch.setattr(config, "available_memory", lambda: 2 * 2**30)  # the pool's workers took 6 GB
        with warnings_module.catch_warnings():
            warnings_module.simplefilter("error")
            pool.fit((1920, 1080))  # the same size again (the batch's next video): no cut, no warning
            pool.fit((854, 480))
        assert pool.limit == 4 and pool.capacity == 5
        with pytest.warns(UserWarning, match=r"3 workers at once, not 4: at 3840x2160 .* with 8.0 GB free"):
            pool.fit((3840, 2160))  # (8 GB - 1.7) / 2.0 GB: 3, not the 1 of the 2 GB free now
        assert pool.limit == 3 and pool.capacity == 4
    finally:
        pool.close()


def test_a_run_on_workers_never_loads_torch_in_its_main_process(flickering, reference, tmp_path):
    """The workers build the method (networks, atlas); the process that plans, decodes and stitches
    records the weights' digests without torch, so nothing delays the workers' start (issue 18)."""
    out = tmp_path / "main.mkv"
    code = ("import sys\n"
            "from unflicker.config import EngineConfig\n"
            "from unflicker.pipeline import RunConfig, deflicker_file\n"
            "from unflicker.segments import SegmentConfig\n"
            f"deflicker_file({str(flickering)!r}, {str(out)!r}, RunConfig(method='neural', atlas_steps=5, progress=False,"
            " segments=SegmentConfig(frames=12, margin=3), engine=EngineConfig(workers=2)))\n"
            "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "no torch"
    assert np.array_equal(frames_of(out), reference)


def test_segment_progress_moves_through_analysis_pass_and_sweep_never_back(monkeypatch):
    from unflicker import segments

    monkeypatch.setattr(segments.SegmentProgress, "INTERVAL_S", 0.0)
    reports = []
    done = segments.SegmentProgress(reports.append, 0.4, frames=4)
    done.analysis(0.5)
    done.analysis(0.25)  # never back
    done.analysis(1.0)
    for i in range(4):
        done.passed(i + 1)
    for _ in range(8):  # each frame settled, then anchored
        done.swept()
    assert reports[:2] == [0.2, 0.4]
    assert reports[2:6] == pytest.approx([0.4 + 0.6 * 0.75 * k / 4 for k in range(1, 5)])
    assert reports == sorted(reports) and reports[-1] == pytest.approx(1.0)
    monkeypatch.setattr(segments.SegmentProgress, "INTERVAL_S", 0.25)
    clock = iter([0.0, 0.1, 0.2, 0.3, 10.0, 10.0, 10.0, 10.0])
    throttled = []
    done = segments.SegmentProgress(throttled.append, 0.5, frames=2, clock=lambda: next(clock))
    done.analysis(0.2)  # t 0: reported
    done.analysis(0.4)  # t 0.1: too soon
    done.analysis(0.6)  # t 0.2: too soon
    done.analysis(0.8)  # t 0.3: reported
    for _ in range(4):
        done.swept()  # t 10: the first reported, the next two too soon; 1.0 is always reported
    assert throttled == [0.1, 0.4, 0.5 + 0.5 * (0.75 + 0.25 / 4), 1.0]
    segments.SegmentProgress(None, 0.5, frames=2).analysis(1.0)  # no report callable: nothing to call


def test_segments_report_progress_from_workers_and_in_process_and_the_bar_follows(flickering, reference, tmp_path,
                                                                                  monkeypatch):
    """Each segment's task reports how far it is while it runs (in this process, and from worker
    processes through a pipe of their own); the job's deflicker bar counts it in frames before the
    segment's result arrives. Reports never change the output."""
    from unflicker import pipeline, segments
    from unflicker.neural import NeuralDeflicker

    seen: dict[int, list[float]] = {}
    original = pipeline.Job.progress

    def spy(job, index, fraction):
        seen.setdefault(index, []).append(fraction)
        before = job._write_bar.n
        original(job, index, fraction)
        core = len(job.segments[index].core)
        done = job._finished_work + sum(len(job.segments[k].core) * f for k, f in job._running.items())
        assert job._write_bar.n == max(before, job._t, int(done)) and int(done) >= int(core * fraction)

    monkeypatch.setattr(pipeline.Job, "progress", spy)
    shown = dataclasses.replace(neural(engine=EngineConfig(workers=2)), progress=True)  # the bar counts
    deflicker_file(flickering, tmp_path / "two.mkv", shown)
    assert np.array_equal(frames_of(tmp_path / "two.mkv"), reference)
    assert sorted(seen) == [0, 1, 2]
    for fractions in seen.values():  # the first report, then (throttled) later ones, the last at the end
        assert fractions == sorted(fractions) and len(fractions) >= 2 and 0 < fractions[0] and fractions[-1] == 1.0
    # In this process, every report (no throttle): the fit's steps first, within the analysis's share.
    seen.clear()
    monkeypatch.setattr(segments.SegmentProgress, "INTERVAL_S", 0.0)
    deflicker_file(flickering, tmp_path / "one.mkv", dataclasses.replace(shown, engine=EngineConfig(workers=1)))
    assert np.array_equal(frames_of(tmp_path / "one.mkv"), reference)
    share = NeuralDeflicker.analysis_share
    for index, fractions in seen.items():
        span = len(plan([range(36)], SMALL)[index].span)
        assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
        assert [f for f in fractions if f <= share] == pytest.approx([share * k / 5 for k in range(1, 6)])  # 5 steps
        assert len(fractions) == 5 + span + 2 * span


def kill_a_running_worker(work: Path, done: threading.Event, killed: list) -> None:
    """Kill -9 the first worker seen running a segment (its pid is in the work folder)."""
    while not done.is_set():
        for marker in work.glob("jobs/*/running/*.pid"):
            try:
                pid = int(marker.read_text())
            except (OSError, ValueError):
                continue
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.01)


def run_with_a_killed_worker(flickering, output, work, engine):
    done, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_running_worker, args=(work, done, killed))
    killer.start()
    try:
        summary = deflicker_file(flickering, output, neural(engine=engine, keep_work=work))
    finally:
        done.set()
        killer.join()
    return summary, killed


def test_a_worker_killed_mid_task_is_replaced_and_the_output_is_the_same(flickering, reference, tmp_path):
    summary, killed = run_with_a_killed_worker(flickering, tmp_path / "out.mkv", tmp_path / "work",
                                               EngineConfig(workers=2))
    assert killed and summary.frames == 36
    assert np.array_equal(frames_of(tmp_path / "out.mkv"), reference)


def _pool_task(index=0, frames=6):
    from unflicker.classical import ClassicalConfig
    from unflicker.segments import MethodSpec, SegmentTask

    clip = np.stack(synth.add_flicker(synth.camera_move_clip(photo(), frames, (24, 32), seed=3), "global", 1.5, seed=4))
    return SegmentTask("pool", Segment(index, range(frames), range(frames), 0),
                       MethodSpec("classical", ClassicalConfig()), clip.astype(np.float32))


def _waited(pool, handles, timeout=30.0):
    """pool.wait(handles) on a thread: its outcome, or None where it has not returned in `timeout` s (a hang)."""
    outcome = []
    waiter = threading.Thread(target=lambda: outcome.append(pool.wait(handles)), daemon=True)
    waiter.start()
    waiter.join(timeout)
    return outcome[0] if outcome else None


def test_a_task_sent_to_workers_that_died_idle_runs_on_fresh_ones_or_fails_never_hangs():
    """Workers killed between tasks (the OOM killer while the run decodes) are found dead when a task is sent to
    them: the task went back to the queue, but nothing sent it on to the fresh worker, and the one whose
    retries were spent there was dropped without its error: the run waited for it for good."""
    from unflicker.engine import LocalPool, WorkerDied

    for retries, workers in ((2, 2), (2, 3), (0, 1)):
        pool = LocalPool(EngineConfig(workers=workers, retries=retries), tasks=workers)
        try:
            for worker in pool._pool:  # every worker dies while idle
                worker.process.kill()
                worker.process.wait()
            handle = pool.submit(_pool_task())
            done = _waited(pool, [handle])
            assert done is not None, f"{workers} dead workers, {retries} retries: the task was lost"
            [(got, outcome)] = done
            assert got == handle
            if retries:
                assert outcome.frames.shape == (6, 24, 32, 3)  # run on a fresh worker
            else:  # the one try it had
                assert isinstance(outcome, WorkerDied) and "segment 0 of pool" in str(outcome)
        finally:
            pool.close()


def test_ray_engine_survives_a_killed_worker_with_the_same_output(flickering, reference, tmp_path, monkeypatch, capsys):
    """... and says nothing of it: Ray's driver printed its raylet's messages (the worker that died, each retry of
    its task; colour codes and all) on stdout, under --quiet too, before the run's own line."""
    pytest.importorskip("ray")
    from unflicker import pipeline

    seen = []  # the segments' progress, through the run's board actor (a retried task starts again from 0)
    original = pipeline.Job.progress
    monkeypatch.setattr(pipeline.Job, "progress", lambda job, index, f: seen.append((index, f)) or original(job, index, f))
    summary, killed = run_with_a_killed_worker(flickering, tmp_path / "ray.mkv", tmp_path / "work",
                                               EngineConfig(engine="ray", workers=2))
    assert killed and summary.frames == 36
    assert np.array_equal(frames_of(tmp_path / "ray.mkv"), reference)
    assert seen and all(index in (0, 1, 2) and 0 < f <= 1 for index, f in seen)
    assert capsys.readouterr().out == ""


def test_a_runs_own_ray_gets_no_more_cpus_than_the_memory_holds_workers_for(monkeypatch):
    pytest.importorskip("ray")
    import unflicker.config as config
    from unflicker.engine import RayEngine

    monkeypatch.setattr(config, "machine_cores", lambda: 2)
    monkeypatch.setattr(config, "available_memory", lambda: 4 * 2**30)  # one 4K worker beside the run
    with pytest.warns(UserWarning, match=r"1 worker at once, not 2: at 3840x2160"):
        engine = RayEngine(EngineConfig(engine="ray"), frame=(3840, 2160))
    try:
        assert engine.ray.cluster_resources()["CPU"] == 1 and engine.capacity == 2
    finally:
        engine.close()


def test_a_second_run_at_once_on_a_ray_of_its_own_is_refused_in_one_line():
    """Ray is one per process: a second deflicker call at once (another thread) took the first run's Ray, which
    the first run shut down at its end (the second's tasks raised SystemExit), or both called ray.init (an
    AssertionError). The second is refused; the first's Ray stays up, and goes with it."""
    pytest.importorskip("ray")
    from unflicker import deflicker
    from unflicker.engine import RayEngine

    first = RayEngine(EngineConfig(engine="ray", workers=1))
    try:
        outcome = []

        def second():
            try:
                deflicker(np.full((4, 24, 32, 3), 0.5, np.float32), method="classical", progress=False,
                          engine=EngineConfig(engine="ray", workers=1))
            except InputError as exc:
                outcome.append(str(exc))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
        assert len(outcome) == 1 and "one at a time" in outcome[0] and "\n" not in outcome[0]
        assert first.ray.is_initialized() and first.ray.cluster_resources()["CPU"] == 1
    finally:
        first.close()
    assert not first.ray.is_initialized()
    RayEngine(EngineConfig(engine="ray", workers=1)).close()  # once the first is done, another starts


def test_ray_with_a_shared_dir_works_there_and_an_address_nobody_serves_is_one_line(flickering, reference,
                                                                                     tmp_path, monkeypatch, capsys):
    """--shared-dir was accepted and never used; an address with nothing listening hung for good."""
    pytest.importorskip("ray")
    from unflicker import pipeline

    roots = []
    original = pipeline.TemporaryWork
    monkeypatch.setattr(pipeline, "TemporaryWork", lambda root=None: roots.append(root) or original(root))
    shared = tmp_path / "nfs"
    shared.mkdir()
    out = tmp_path / "ray.mkv"
    sessions = set(Path("/tmp/ray").glob("session_2*"))
    deflicker_file(flickering, out, neural(engine=EngineConfig(engine="ray", workers=2, shared_dir=shared)))
    assert roots == [shared] and np.array_equal(frames_of(out), reference) and not list(shared.iterdir())
    assert set(Path("/tmp/ray").glob("session_2*")) <= sessions  # the run's Ray session folder went with it
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # a fresh process, as a user's
    quiet = subprocess.run([sys.executable, "-m", "unflicker", "run", str(flickering), "-o", str(tmp_path / "q.mkv"),
                            "--method", "classical", "--engine", "ray", "--quiet"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert quiet.returncode == 0 and "Token authentication" not in quiet.stderr, quiet.stderr  # Ray's notice
    started = time.time()
    code = main(["run", str(flickering), "-o", str(tmp_path / "x.mkv"), "--engine", "ray", "--ray-address",
                 "127.0.0.1:1", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "cannot reach Ray at 127.0.0.1:1" in err and time.time() - started < 30


def listening_addresses(pids: set[int]) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp and tcp6 write them) of the TCP sockets that processes pids
    listen on (Linux)."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.append(fields[1].rsplit(":", 1)[0])
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_runs_own_ray_listens_on_the_loopback_interface_alone():
    """A local Ray of the run's own was advertised on 127.0.0.1, but Ray turns that into the machine's network
    address on Linux: its GCS, raylet, workers and the driver's own server listened on every interface, its
    runtime-env agent on the network address."""
    pytest.importorskip("ray")
    from unflicker.engine import RayEngine

    engine = RayEngine(EngineConfig(engine="ray", workers=1))
    try:
        assert engine.ray.get(engine._board.take.remote()) == {}  # the run's actor, a worker process, is up
        addresses = listening_addresses({os.getpid(), *descendants(os.getpid(), live_processes())})
    finally:
        engine.close()
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert len(addresses) >= 4 and set(addresses) <= loopback, addresses


def test_a_runs_own_ray_leaves_the_programs_environment_and_faulthandler_as_they_were():
    """ray.init sets PYTHONBREAKPOINT (Ray's remote debugger), RAY_AUTH_MODE and RAY_USAGE_STATS_ENABLED and turns
    faulthandler on, and ray.shutdown leaves them: after a call with engine ray, the program's breakpoint() went to
    Ray's debugger. A variable the program sets meanwhile stays as it set it."""
    pytest.importorskip("ray")
    program = ("import faulthandler, json, os, ray; from unflicker.config import EngineConfig; "
               "from unflicker.engine import RayEngine; "
               "changed = lambda: sorted(k for k in {*os.environ, *before} if os.environ.get(k) != before.get(k)); "
               "before = dict(os.environ); engine = RayEngine(EngineConfig(engine='ray', workers=1)); "
               "started = changed(); os.environ['RAY_USAGE_STATS_ENABLED'] = 'mine'; engine.close(); "
               "print(json.dumps([started, changed(), faulthandler.is_enabled()]))")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_") and key != "PYTHONBREAKPOINT"}
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    started, after, faults = json.loads(out.stdout.strip().splitlines()[-1])
    assert "PYTHONBREAKPOINT" in started, started  # what this test is about (another Ray may set others)
    assert after == ["RAY_USAGE_STATS_ENABLED"] and faults is False, (started, after, faults)


def test_a_head_on_the_loopback_interface_alone_is_told_from_one_on_every_interface(monkeypatch):
    """Ray reaches a loopback address at the machine's network address: a head on 127.0.0.1 alone (as the tests'
    own) is then reached with Ray's cluster mode off, a head on every interface as before."""
    from unflicker import engine

    with socket.socket() as alone:
        alone.bind(("127.0.0.1", 0))
        alone.listen()
        port = alone.getsockname()[1]
        assert engine._loopback_head(f"127.0.0.1:{port}") and engine._loopback_head(f"localhost:{port}")
        assert not engine._loopback_head(f"192.0.2.1:{port}") and not engine._loopback_head("auto")
        assert not engine._loopback_head(f"127.example.com:{port}")  # a name, which Ray does not rewrite
    tried = []  # a head on every interface (not opened here: the tests' servers stay on 127.0.0.1) takes it
    monkeypatch.setattr(engine.socket, "create_connection", lambda address, timeout: tried.append(address) or alone)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("8.8.8.8", 53))
    except OSError:
        pytest.skip("no network address here: every head is reached on the loopback interface")
    assert not engine._loopback_head(f"127.0.0.1:{port}") and tried[0][1] == port and tried[0][0] != "127.0.0.1"


def test_ray_s_cluster_mode_is_off_for_the_start_alone_even_where_it_fails(monkeypatch):
    """A run's own Ray starts with Ray's cluster mode off (a module constant of Ray's, read in the start). It is
    put back after, also where the start fails: left off, a later run of this process naming a cluster on
    127.0.0.1 (a head on every interface) would reach it at 127.0.0.1, not the head's own address."""
    ray = pytest.importorskip("ray")
    from ray._private import ray_constants

    from unflicker.engine import RayEngine

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    seen = []

    def failing_init(**options):
        seen.append((options.get("_node_ip_address"), ray_constants.ENABLE_RAY_CLUSTER))
        raise RuntimeError("no room")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(UnflickerError, match="no room"):
        RayEngine(EngineConfig(engine="ray", workers=1))
    assert seen == [("127.0.0.1", False)] and ray_constants.ENABLE_RAY_CLUSTER is True


def test_a_sigterm_inside_ray_init_leaves_a_second_one_ignored_for_the_clean_up(monkeypatch):
    """A SIGTERM inside ray.init (Ray's handler there: sys.exit(15)) is the run's: Terminated, and as anywhere
    else in a run a second one is ignored while it cleans up. The run's handler was put back on the way out of
    ray.init's start, so a second SIGTERM raised Terminated again in the middle of the clean-up."""
    ray = pytest.importorskip("ray")
    from unflicker.engine import RayEngine
    from unflicker.errors import Terminated, sigterm_as_interrupt

    def init_killed(**options):
        raise SystemExit(signal.SIGTERM)  # Ray's own handler, on a SIGTERM in ray.init

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init_killed)
    with sigterm_as_interrupt():
        with pytest.raises(Terminated):
            RayEngine(EngineConfig(engine="ray", workers=1))
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


# A test cluster's head on 127.0.0.1 alone (Ray's cluster mode off: see engine._on_loopback).
HEAD = """import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
ray.init(_node_ip_address="127.0.0.1", num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1],
         configure_logging=False, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, ray._private.worker._global_node.node_manager_port, flush=True)
sys.stdin.read()
"""


def test_a_cluster_with_ray_s_token_authentication_is_reached_with_its_token_and_refused_in_one_line(tmp_path,
                                                                                                     flickering):
    """`ray start` turns Ray's token authentication on and writes the token to ~/.ray/auth_token, but a run
    naming the cluster's address did not take it up without RAY_AUTH_MODE=token: it waited 20 s and printed 21
    lines (Ray's log line a second, then ours). Now it takes the token where one is here; without one it is
    refused in one line at once, and RAY_AUTH_MODE=token without a token was a traceback."""
    pytest.importorskip("ray")
    import shutil
    import tempfile

    home, stranger = tmp_path / "home", tmp_path / "stranger"
    home.mkdir()
    stranger.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    temp = tempfile.mkdtemp(prefix="uf-ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen([sys.executable, "-c", HEAD, temp], env={**env, "HOME": str(home)}, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        address, raylet = head.stdout.readline().split()
        assert (home / ".ray" / "auth_token").is_file()  # the head's token, as `ray start` writes

        def run(home, *extra, address=address):
            started = time.time()
            done = subprocess.run([sys.executable, "-m", "unflicker", "run", str(flickering), "-o",
                                   str(tmp_path / "out.mkv"), "--method", "classical", "--engine", "ray",
                                   "--ray-address", address, "--quiet", "--overwrite"],
                                  env={**env, "HOME": str(home), **dict(extra)}, capture_output=True, text=True,
                                  timeout=120)
            return done.returncode, done.stderr, time.time() - started

        code, err, _ = run(home)
        assert code == 0 and err == "", err
        for extra in ((), (("RAY_AUTH_MODE", "token"),)):
            code, err, seconds = run(stranger, *extra)
            assert code == 1 and len(err.splitlines()) == 1 and err.startswith("unflicker: error:"), err
            assert "token" in err and seconds < 15
        # A raylet's port (Ray's gRPC, but not the head's service) asked 20 times, too.
        code, err, seconds = run(home, address=f"{address.rpartition(':')[0]}:{raylet}")
        assert code == 1 and len(err.splitlines()) == 1 and "is not a Ray cluster's head" in err and seconds < 15, err
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_address_auto_pointing_at_a_cluster_gone_is_one_line_at_once(tmp_path, flickering):
    """--ray-address auto takes RAY_ADDRESS or the last `ray start --head` of this machine
    (/tmp/ray/ray_current_cluster, left behind when the head died): where nothing listens there any more,
    ray.init waited over 40 s on each of its 20 tries. It is checked as an address given outright now."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "unflicker", "run", str(flickering), "-o", str(tmp_path / "o.mkv"),
                           "--method", "classical", "--engine", "ray", "--ray-address", "auto", "--quiet"],
                          env={**env, "RAY_ADDRESS": "127.0.0.1:1"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot reach Ray at 127.0.0.1:1 (auto" in done.stderr and time.time() - started < 30


def test_an_address_that_is_not_ray_is_one_line_at_once(tmp_path, flickering):
    """The dashboard's address (an HTTP server) given for the cluster's: ray.init waited 40 s on each of its
    20 tries (over 5 min seen, with a line of Ray's log each). Ray's servers speak HTTP/2 (gRPC): what does not
    answer the HTTP/2 greeting is refused at once, in one line."""
    pytest.importorskip("ray")
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "unflicker", "run", str(flickering), "-o", str(tmp_path / "o.mkv"),
                               "--method", "classical", "--engine", "ray", "--ray-address", address, "--quiet"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
        assert f"nothing at {address} answers as Ray" in done.stderr and time.time() - started < 30
    finally:
        server.shutdown()
        server.server_close()


def live_processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time, command line) of every process but zombies (Linux)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fields[0] not in (b"Z", b"X"):
                table[int(entry.name)] = (int(fields[1]), int(fields[19]), command)
    return table


def descendants(root: int, table) -> set[int]:
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        children = {pid for pid, (ppid, _, _) in table.items() if ppid == parent} - found
        found |= children
        todo += children
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_ray_watchdog_finds_an_agent_of_a_session_named_through_a_symlink(tmp_path):
    """/proc names a process's open files by their real path: a session folder under a symlinked temporary
    folder (TMPDIR=/scratch, a link to a larger disk) never matched, and the agents lived their minute on."""
    from unflicker import ray_watchdog

    real = tmp_path / "disk" / "session_2026-01-01_00-00-00_000000_1"
    real.mkdir(parents=True)
    (tmp_path / "scratch").symlink_to(tmp_path / "disk")
    session = str(tmp_path / "scratch" / real.name)
    agent = subprocess.Popen(["bash", "-c", f'exec -a "ray::DashboardAgent" {sys.executable} -c "import sys, time; '
                              f'f = open(sys.argv[1], \'w\'); print(1, flush=True); time.sleep(60)" '
                              f'{real / "agent.log"}'], stdout=subprocess.PIPE)
    try:
        assert agent.stdout.readline().strip() == b"1"
        assert ray_watchdog.ray_with_files(str(agent.pid), session)
        assert not ray_watchdog.ray_with_files(str(agent.pid), str(tmp_path / "disk" / "session_other"))
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_ray_watchdog_of_a_driver_killed_in_ray_init_takes_only_its_own_session(tmp_path):
    """A driver killed inside ray.init has told its watchdog nothing: the session is the folder named with the
    driver's pid that was not there before, its processes those started since the watchdog that run a file of
    Ray's package and name that folder. Another session's folder (one of the same pid left before, or another
    pid's) and processes are left alone."""
    from unflicker import ray_watchdog

    package, temp = tmp_path / "ray", tmp_path / "temp"
    ours, older, other = (temp / f"session_2026-01-01_00-00-0{n}_000000_{pid}" for n, pid in ((1, 4242), (0, 4242),
                                                                                               (2, 4243)))
    for folder in (ours, older, other):
        (folder / "logs").mkdir(parents=True)
    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{package}/raylet", str(ours)])
    time.sleep(0.05)  # a clock tick or more: the watchdog starts after it
    watchdog = subprocess.Popen([sys.executable, "-I", "-S", ray_watchdog.__file__, str(temp), "4242", str(package),
                                 older.name], stdin=subprocess.PIPE)
    time.sleep(0.5)
    script = "import time; print(1, flush=True); time.sleep(60)"
    fakes = {name: subprocess.Popen([sys.executable, "-c", script, f"{package}/core/raylet", *args],
                                    stdout=subprocess.PIPE)
             for name, args in (("ours", [f"--log_dir={ours}/logs"]), ("other", [f"--log_dir={other}/logs"]),
                                ("not ray", []))}
    try:
        for fake in fakes.values():
            assert fake.stdout.readline().strip() == b"1"
        watchdog.stdin.close()  # the driver's end of file before its line
        watchdog.wait(timeout=30)
        assert fakes["ours"].wait(timeout=5) == -signal.SIGKILL and not ours.exists()
        assert all(fake.poll() is None for name, fake in fakes.items() if name != "ours") and old.poll() is None
        assert older.is_dir() and other.is_dir()
    finally:
        for process in (old, *fakes.values()):
            process.kill()
            process.wait()


def test_a_run_on_a_cluster_that_goes_away_ends_in_one_line_leaving_no_partial_output(tmp_path, flickering):
    """The cluster's head killed mid-run: the run waited on its tasks until Ray's own client gave up after
    60 s and ended the process (exit 1, three lines of Ray's log, a partial output left beside the output).
    It now sees the head gone within about 10 s and fails as any run does: one line of its own, nothing left."""
    pytest.importorskip("ray")
    import shutil
    import tempfile

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(tmp_path)
    temp = tempfile.mkdtemp(prefix="uf-ray-", dir="/tmp")
    head = subprocess.Popen([sys.executable, "-c", HEAD, temp], env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    out = tmp_path / "out" / "o.mkv"
    out.parent.mkdir()
    try:
        address, _ = head.stdout.readline().split()
        run = subprocess.Popen([sys.executable, "-m", "unflicker", "run", str(flickering), "-o", str(out),
                                "--atlas-steps", "100000", "--engine", "ray", "--ray-address", address, "--quiet"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not any(table[pid][2].startswith("ray::_ray_segment")
                      for table in [live_processes()] for pid in descendants(head.pid, table)):
            assert run.poll() is None and time.time() < deadline, "no segment started on the cluster"
            time.sleep(0.2)
        ray_processes = descendants(head.pid, live_processes())
        os.killpg(head.pid, signal.SIGKILL)
        for pid in ray_processes:  # a raylet's own children (its workers, agents) too
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        started = time.time()
        _, err = run.communicate(timeout=120)
        # Ray's client may log the tasks it lost as the head goes (its own lines, before ours).
        lines = [line for line in err.splitlines() if "task_manager.cc" not in line]
        assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("unflicker: error: lost the Ray "
                                                                                "cluster at"), err
        assert time.time() - started < 30
        assert list(out.parent.iterdir()) == []
    finally:
        with contextlib.suppress(OSError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_run_killed_outright_takes_its_own_ray_with_it(flickering, tmp_path):
    """kill -9 of a run with a local Ray of its own: every process under it is gone within 15 s (zombies aside)
    and so is the session folder. Ray's kernel fate sharing took the processes the driver started, but the
    raylet's (its dashboard and runtime-env agents) lived on for about 60 s and the session folder for good."""
    pytest.importorskip("ray")
    driver = subprocess.Popen([sys.executable, "-m", "unflicker", "run", str(flickering), "-o", str(tmp_path / "x.mkv"),
                               "--engine", "ray", "--workers", "2", "--atlas-steps", "5000", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:  # until a worker runs a segment: Ray is up, all of it
            table = live_processes()
            ray = {pid: table[pid] for pid in descendants(driver.pid, table)}
            if any(command.startswith("ray::_ray_segment") for _, _, command in ray.values()):
                break
            assert driver.poll() is None and time.time() < deadline, "the run ended before its Ray was seen"
            time.sleep(0.1)
        raylet = next(command for _, _, command in ray.values() if "/raylet " in command)
        session = Path(re.search(r"/[^\s=]*/session_[\d_-]+\d", raylet).group(0))
        assert session.is_dir() and len(ray) >= 7  # gcs, raylet, monitor, dashboard, log monitor, 2 agents, ...
        driver.kill()
        driver.wait()
        killed = time.time()
        while True:
            table = live_processes()
            left = [command[:40].strip() for pid, (_, start, command) in ray.items()  # the watchdog too
                    if pid in table and table[pid][1] == start]
            if not left or time.time() - killed > 15:
                break
            time.sleep(0.2)
        assert not left, f"alive {time.time() - killed:.0f} s after the run's kill -9: {left}"
        assert not session.exists()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


# A run whose ray.init stops once its Ray's processes are up, before the driver connects to them (Ray 2.60's
# ray.init starts the node, then calls worker.connect): says so on stdout, then sleeps there.
STALLED_INIT = """import sys, time
import ray._private.worker as worker
from unflicker.cli import main
connect = worker.connect
def stalled(*args, **kwargs):
    print("up", flush=True)
    time.sleep(60)
    return connect(*args, **kwargs)
worker.connect = stalled
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_killed_while_ray_starts_takes_its_own_ray_with_it(flickering, tmp_path, how):
    """kill -9 or kill of a run in its ray.init, its Ray's processes up: every one of them is gone within 15 s
    and so is the session folder. The watchdog started only once ray.init returned: the raylet's agents
    lived on for 60-70 s and the session folder for good."""
    pytest.importorskip("ray")
    driver = subprocess.Popen([sys.executable, "-c", STALLED_INIT, "run", str(flickering), "-o",
                               str(tmp_path / "x.mkv"), "--engine", "ray", "--workers", "1", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "up", "the run ended before its Ray was up"
        deadline = time.time() + 60
        while True:  # until the raylet's agents run: what outlived the driver
            table = live_processes()
            ray = {pid: table[pid] for pid in descendants(driver.pid, table)}
            if sum(command.startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))
                   for _, _, command in ray.values()) == 2:
                break
            assert driver.poll() is None and time.time() < deadline, "no agents of the run's Ray"
            time.sleep(0.1)
        raylet = next(command for _, _, command in ray.values() if "/raylet " in command)
        session = Path(re.search(r"/[^\s=]*/session_[\d_-]+\d", raylet).group(0))
        assert session.is_dir() and session.name.endswith(f"_{driver.pid}")
        driver.send_signal(how)
        _, err = driver.communicate(timeout=60)
        killed = time.time()
        if how == signal.SIGTERM:  # as anywhere else in a run (Ray's own handler in ray.init said nothing, exit 15)
            assert driver.returncode == 143 and "terminated" in err, (driver.returncode, err[-500:])
        while True:
            table = live_processes()
            left = [command[:40].strip() for pid, (_, start, command) in ray.items()
                    if pid in table and table[pid][1] == start]
            if not left and not session.exists() or time.time() - killed > 15:
                break
            time.sleep(0.2)
        assert not left, f"alive {time.time() - killed:.0f} s after the run's {how.name}: {left}"
        assert not session.exists(), f"{session} left {time.time() - killed:.0f} s after the run's {how.name}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


# --- resume after kill -9 -----------------------------------------------------------------------

def test_kill_9_then_the_same_command_runs_only_the_unfinished_segments(tmp_path):
    clean = synth.camera_move_clip(photo(7), 90, (32, 40), motion="pan", seed=7)
    source = write_folder(tmp_path / "clip", synth.add_flicker(clean, "global", 1.5, seed=8))
    work, out = tmp_path / "work", tmp_path / "out.mkv"

    def command(output, *extra):
        return [sys.executable, "-m", "unflicker", "run", str(source), "-o", str(output), "--method", "neural",
                "--atlas-steps", "5", "--segment-frames", "40", "--quiet", *extra]

    process = subprocess.Popen(command(out, "--keep-work", str(work), "--workers", "2"), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(work.glob("jobs/*/segment-*.npy")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its workers, at once
    process.wait()
    finished = sorted(p.name for p in work.glob("jobs/*/segment-*.npy"))
    assert 0 < len(finished) < 3 and not out.exists()
    rerun = subprocess.run(command(out, "--keep-work", str(work), "--workers", "2"), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"3 segments, {len(finished)} of them reused" in rerun.stdout
    fresh = subprocess.run(command(tmp_path / "fresh.mkv", "--workers", "1"), capture_output=True, text=True,
                           timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert np.array_equal(frames_of(out), frames_of(tmp_path / "fresh.mkv"))


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_sigterm_stops_a_run_like_ctrl_c_leaving_no_files(tmp_path, how):
    """`kill` (SIGTERM: a scheduler, the web page's Cancel) cleans up as Ctrl-C does: exit code 143, one
    line, no output, no partial file beside it, no temporary work folder, no worker left. Ctrl-C (SIGINT
    to the whole process group, workers too): exit code 130, the same, and no worker's traceback."""
    clean = synth.camera_move_clip(photo(7), 90, (32, 40), motion="pan", seed=7)
    source = write_folder(tmp_path / "clip", synth.add_flicker(clean, "global", 1.5, seed=8))
    temp, out = tmp_path / "temp", tmp_path / "out" / "out.mkv"
    temp.mkdir()
    out.parent.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "unflicker", "run", str(source), "-o", str(out), "--method",
                                "neural", "--atlas-steps", "5", "--segment-frames", "40", "--workers", "2", "--quiet"],
                               env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list(temp.glob("unflicker-*/jobs/*/running/*.pid")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be stopped"
    if how == "sigterm":
        process.terminate()
    else:
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: every process of the group
    _, err = process.communicate(timeout=60)
    assert not session_members(process.pid)  # its workers were stopped before it ended
    code, word = (143, "terminated") if how == "sigterm" else (130, "interrupted")
    assert process.returncode == code and f"unflicker: {word}; no partial output was left" in err.splitlines()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not list(out.parent.iterdir()) and not list(temp.glob("unflicker-*"))


def session_members(session: int) -> list[int]:
    """Pids of the live processes in a session (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[3] == str(session) and fields[0] != "Z":
            members.append(int(entry))
    return members


def test_kill_9_during_a_batch_then_the_same_command_resumes_every_input(tmp_path):
    inputs, work, out = tmp_path / "in", tmp_path / "work", tmp_path / "out"
    for name, seed in (("a", 9), ("b", 10)):
        clean = synth.camera_move_clip(photo(seed), 90, (32, 40), motion="pan", seed=seed)
        write_folder(inputs / name, synth.add_flicker(clean, "global", 1.5, seed=seed))
    options = ["--method", "neural", "--atlas-steps", "5", "--segment-frames", "40", "--quiet"]
    command = [sys.executable, "-m", "unflicker", "batch", str(inputs), "-o", str(out), *options,
               "--keep-work", str(work), "--workers", "2"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(work.glob("jobs/*/segment-*.npy")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(work.glob("jobs/*/segment-*.npy")))
    assert 0 < finished < 6
    if (out / "unflicker-batch.json").exists():  # written after each input: none may be done this early, but one could
        assert {r["status"] for r in json.loads((out / "unflicker-batch.json").read_text())} <= {"pending", "done"}
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = json.loads((out / "unflicker-batch.json").read_text())
    assert [r["status"] for r in rows] == ["done", "done"] and [r["segments"] for r in rows] == [3, 3]
    assert sum(r["reused"] for r in rows) == finished  # only the unfinished segments ran
    for name in ("a", "b"):
        fresh = tmp_path / f"{name}-fresh"
        subprocess.run([sys.executable, "-m", "unflicker", "run", str(inputs / name), "-o", str(fresh), *options,
                        "--workers", "1"], check=True, capture_output=True, timeout=300)
        assert np.array_equal(frames_of(out / name), frames_of(fresh))


def _stat(pid: int | str) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; [] if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _stat(e.name)[1:2] == [str(pid)]]


def _running(pid: int) -> bool:
    return _stat(pid)[:1] not in ([], ["Z"])


def test_workers_end_with_a_killed_run(tmp_path):
    clean = synth.camera_move_clip(photo(3), 90, (32, 40), motion="pan", seed=3)
    source = write_folder(tmp_path / "clip", synth.add_flicker(clean, "global", 1.5, seed=4))
    process = subprocess.Popen([sys.executable, "-m", "unflicker", "run", str(source), "-o", str(tmp_path / "o.mkv"),
                                "--method", "neural", "--atlas-steps", "2000", "--segment-frames", "40", "--quiet",
                                "--workers", "2", "--keep-work", str(tmp_path / "work")],  # not left in /tmp
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(workers := _children(process.pid)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2
    time.sleep(1.0)  # into their first segments
    process.kill()  # the run alone: its workers are mid-task
    process.wait()
    deadline = time.time() + 20
    while any(map(_running, workers)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(_running, workers))


# --- no seams -----------------------------------------------------------------------------------

def pair_errors(out, clean):
    errors = []
    for t in range(len(clean) - 1):
        pair = flow_pair(clean[t], clean[t + 1])
        errors.append(metrics._pair_error(out[t], out[t + 1], pair.forward, pair.valid))
    return np.array(errors)


def seams(errors, errors_one, boundaries):
    """Boundary pairs (b - 1, b) worse than 1.2x both the median of the other pairs and the
    one-segment run's same pair."""
    median = np.median([e for t, e in enumerate(errors) if t not in boundaries])
    return [t for t in boundaries if errors[t] > 1.2 * max(median, errors_one[t])]


def test_segment_boundaries_leave_no_seam(tmp_path, monkeypatch):
    # 300 frames in 5 segments against the same clip as one segment. This clip's residual flicker
    # varies from pair to pair (the input's jumps, some clipped, spike up to 30x the median pair in
    # both runs, and the one-segment run's pairs at the boundary positions reach 2.6x the median),
    # so a boundary pair counts as a seam only when it is also worse than the one-segment run there.
    # The check can fail: stitched with a hard cut instead of the cross-fade, every boundary is one.
    clean = synth.camera_move_clip(photo(5, (200, 260)), 300, (48, 64), motion="pan", seed=5)
    source = write_folder(tmp_path / "clip", synth.add_flicker(clean, "global", 1.5, seed=6))
    config = RunConfig(method="neural", progress=False, engine=EngineConfig(workers=2),  # default settings
                       keep_work=tmp_path / "work")
    cut = deflicker_file(source, tmp_path / "cut.mkv", config)
    whole = deflicker_file(source, tmp_path / "whole.mkv", RunConfig(
        method="neural", progress=False, engine=EngineConfig(workers=2), segments=SegmentConfig(frames=300)))
    assert cut.segments >= 4 and whole.segments == 1
    out = frames_of(tmp_path / "cut.mkv").astype(np.float32) / 255
    one = frames_of(tmp_path / "whole.mkv").astype(np.float32) / 255
    errors, errors_one = pair_errors(out, clean), pair_errors(one, clean)
    boundaries = [s.core.start - 1 for s in plan([range(300)], SegmentConfig())[1:]]
    assert seams(errors, errors_one, boundaries) == []
    assert metrics.sequence_psnr(out, clean) >= metrics.sequence_psnr(one, clean) - 0.2

    import unflicker.segments

    def hard_cut(segment, following, t, margin):
        return float(blend_weight(segment, following, t, margin) >= 0.5)

    monkeypatch.setattr(unflicker.segments, "blend_weight", hard_cut)
    deflicker_file(source, tmp_path / "hard.mkv", config)  # the same finished segments, stitched again
    hard = frames_of(tmp_path / "hard.mkv").astype(np.float32) / 255
    assert seams(pair_errors(hard, clean), errors_one, boundaries) == boundaries


# --- batch --------------------------------------------------------------------------------------

def test_batch_runs_a_folder_skips_finished_outputs_and_reports_a_bad_file(tmp_path, capsys):
    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    for name, seed in (("a", 1), ("nested/b", 2)):
        clean = synth.camera_move_clip(photo(seed), 10, (32, 40), motion="pan", seed=seed)
        write_folder(inputs / name, synth.add_flicker(clean, "global", 1.5, seed=seed))
    (inputs / "broken.mp4").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    code = main(["batch", str(inputs), "-o", str(out), "--method", "classical", "--workers", "2", "--quiet"])
    printed = capsys.readouterr()
    assert code == 1 and "broken.mp4" in printed.err
    assert (out / "a").is_dir() and (out / "nested" / "b").is_dir() and not (out / "broken.mp4").exists()
    rows = json.loads((out / "unflicker-batch.json").read_text())
    status = {Path(r["input"]).name: r for r in rows}
    assert status["a"]["status"] == "done" and status["a"]["frames"] == 10
    assert status["a"]["flicker_index_after"] < status["a"]["flicker_index_before"]
    assert status["broken.mp4"]["status"] == "failed" and status["broken.mp4"]["error"]
    assert (out / "unflicker-batch.csv").read_text().count("\n") == 4
    code = main(["batch", str(inputs), "-o", str(out), "--method", "classical", "--workers", "1", "--quiet"])
    again = json.loads((out / "unflicker-batch.json").read_text())
    assert code == 1 and [r["status"] for r in again] == ["skipped", "failed", "skipped"]
    # What a rerun skips keeps the figures of the run that made it (also through a second rerun).
    main(["batch", str(inputs), "-o", str(out), "--method", "classical", "--workers", "1", "--quiet"])
    third = json.loads((out / "unflicker-batch.json").read_text())
    for first, later in ((rows, again), (rows, third)):
        for a, b in zip(first, later):
            if a["status"] == "done":
                assert {k: v for k, v in b.items() if k != "status"} == {k: v for k, v in a.items() if k != "status"}
    # Not an output replaced since the summary (by `unflicker run --overwrite`, or a batch that did not finish).
    time.sleep(0.01)
    assert main(["run", str(inputs / "a"), "-o", str(out / "a"), "--method", "classical", "--strength", "0.5",
                 "--overwrite", "--quiet"]) == 0
    main(["batch", str(inputs), "-o", str(out), "--method", "classical", "--workers", "1", "--quiet"])
    fourth = {Path(r["input"]).name: r for r in json.loads((out / "unflicker-batch.json").read_text())}
    assert fourth["a"]["status"] == "skipped" and fourth["a"]["frames"] == 0 and fourth["a"]["flicker_index_after"] is None
    assert fourth["b"]["frames"] == 10


def test_a_batch_shows_one_bar_over_every_input_s_frames(tmp_path, monkeypatch, capsys):
    """Without --quiet a batch has one bar in frames for all its inputs (each job's own bars are off),
    moved by the segments' progress; an input that cannot be read counts none, and the bar ends full."""
    import unflicker.bars
    from tqdm import tqdm

    closed = []

    class Recorded(tqdm):
        def close(self):
            if not self.disable:  # the jobs' own bars, off
                closed.append((self.desc, self.n, self.total))
            super().close()

    monkeypatch.setattr(unflicker.bars, "tqdm", Recorded)  # every bar of the library is made there
    inputs = tmp_path / "in"
    for name, seed, n in (("a", 1, 10), ("b", 2, 14)):
        clean = synth.camera_move_clip(photo(seed), n, (32, 40), motion="pan", seed=seed)
        write_folder(inputs / name, synth.add_flicker(clean, "global", 1.5, seed=seed))
    (inputs / "broken.mp4").write_bytes(b"not a video" * 50)
    code = main(["batch", str(inputs), "-o", str(tmp_path / "out"), "--method", "classical", "--workers", "2"])
    printed = capsys.readouterr()
    assert code == 1 and closed == [("batch", 24, 24)]
    assert "batch: " in printed.err and "/24 [" in printed.err
    assert sorted(line.split(":")[0] for line in printed.out.splitlines() if "wrote" in line) == \
        [str(inputs / "a"), str(inputs / "b")]


def test_a_frame_that_cannot_be_read_mid_batch_fails_that_input_alone(tmp_path, monkeypatch, capsys):
    """An input whose frames fail while its segments are handed out (the video ends early, say) is
    reported failed; the batch goes on with the others (it used to end the whole run)."""
    import unflicker.pipeline

    inputs = tmp_path / "in"
    for name, seed in (("a", 1), ("b", 2)):
        clean = synth.camera_move_clip(photo(seed), 30, (32, 40), motion="pan", seed=seed)
        write_folder(inputs / name, synth.add_flicker(clean, "global", 1.5, seed=seed))
    real = unflicker.pipeline.Job.next_task

    def next_task(job):
        if job.input_path.name == "a" and job.pending() == 0:  # a's last (here: only) segment
            raise InputError("a: the video ended before frame 29")
        return real(job)

    monkeypatch.setattr(unflicker.pipeline.Job, "next_task", next_task)
    out = tmp_path / "out"
    code = main(["batch", str(inputs), "-o", str(out), "--method", "classical", "--workers", "1", "--quiet"])
    assert code == 1 and "ended before frame 29" in capsys.readouterr().err
    status = {Path(r["input"]).name: r["status"] for r in json.loads((out / "unflicker-batch.json").read_text())}
    assert status == {"a": "failed", "b": "done"} and (out / "b").is_dir() and not (out / "a").exists()


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--threads", "0"], "--threads must be in 1..1024"),
    (["--ray-address", "127.0.0.1:1"], "apply to --engine ray only"),
    (["--segment-frames", "20"], "--segment-frames must be at least 40"),
])
def test_bad_engine_options_are_one_line_errors(flickering, tmp_path, capsys, argv, message):
    code = main(["run", str(flickering), "-o", str(tmp_path / "out.mp4"), "--method", "classical", "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.mp4").exists()


def test_batch_list_file_mirrors_paths_and_refuses_two_inputs_with_one_output(tmp_path):
    from unflicker.batch import run_batch

    for name in ("x/clip", "y/clip"):
        clean = synth.camera_move_clip(photo(3), 6, (24, 32), motion="pan", seed=1)
        write_folder(tmp_path / "in" / name, synth.add_flicker(clean, "global", 1.0, seed=2))
    listing = tmp_path / "in" / "list.txt"
    listing.write_text("x/clip\n# a comment\ny/clip\n" + str(tmp_path / "in" / "x" / "clip") + "\n")
    rows = run_batch(listing, tmp_path / "out", RunConfig(method="classical", progress=False,
                                                          engine=EngineConfig(workers=1)))
    assert [r.status for r in rows] == ["done", "done", "failed"] and "same output name" in rows[2].error
    assert (tmp_path / "out" / "x" / "clip").is_dir() and (tmp_path / "out" / "y" / "clip").is_dir()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, UnflickerError("lost the Ray cluster")])
def test_a_batch_stopped_midway_lists_what_it_finished_and_a_rerun_keeps_their_figures(tmp_path, monkeypatch, stop):
    """Ctrl-C (or kill) of a batch, or an error that ends all of it (its Ray cluster lost), wrote no summary:
    the outputs it had finished were skipped by the rerun with zeros and no flicker figures. Now the summary
    lists them done (the rest 'interrupted', or 'failed' with the error), and the rerun keeps their figures."""
    import unflicker.engine
    from unflicker.batch import run_batch

    for name, seed in (("a", 1), ("b", 2)):
        clean = synth.camera_move_clip(photo(seed), 8, (24, 32), motion="pan", seed=seed)
        write_folder(tmp_path / "in" / name, synth.add_flicker(clean, "global", 1.5, seed=seed))
    real = unflicker.engine.run_jobs

    def stopped_after_the_first(jobs, engine, finished):
        real(jobs[:1], engine, finished)
        raise stop

    monkeypatch.setattr(unflicker.engine, "run_jobs", stopped_after_the_first)
    config = RunConfig(method="classical", progress=False, engine=EngineConfig(workers=1))
    out = tmp_path / "out"
    with pytest.raises(type(stop) if isinstance(stop, Exception) else stop):
        run_batch(tmp_path / "in", out, config)
    rows = json.loads((out / "unflicker-batch.json").read_text())
    stopped = ("interrupted", "") if stop is KeyboardInterrupt else ("failed", "lost the Ray cluster")
    assert [(r["status"], r["frames"], r["error"]) for r in rows] == [("done", 8, ""), (*stopped[:1], 0, stopped[1])]
    assert (out / "a").is_dir() and not (out / "b").exists()
    monkeypatch.undo()
    again = run_batch(tmp_path / "in", out, config)
    assert [(r.status, r.frames) for r in again] == [("skipped", 8), ("done", 8)]
    assert again[0].flicker_after == rows[0]["flicker_index_after"] is not None


def test_a_killed_runs_temporary_work_folder_is_removed_by_the_next_run(tmp_path, monkeypatch):
    """SIGKILL leaves no chance to clean up: the next run removes temporary work folders that no live
    process holds (their owner file's lock), on this host, and only those: a live run's (even one that
    says another pid, as from another pid namespace), another host's and one without an owner stay."""
    import socket
    import tempfile

    from unflicker.resume import OWNER, TemporaryWork

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = socket.gethostname()
    owners = {"unflicker-dead": f"{host} 999999", "unflicker-live": f"{host} 999998",
              "unflicker-elsewhere": "another-host 999999", "unflicker-serve-x": None}
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "frames.npy").write_bytes(b"x")
        if owner is not None:
            (tmp_path / name / OWNER).write_text(owner)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / "unflicker-live" / OWNER)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        work = TemporaryWork()
        assert work.path.parent == tmp_path and (work.path / OWNER).read_text() == f"{host} {os.getpid()}"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [work.path.name, "unflicker-live", "unflicker-elsewhere", "unflicker-serve-x"])
        TemporaryWork().remove()  # a second run does not take the first's folder while it lives
        assert work.path.exists()
        work.remove()
        assert not work.path.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_batch_list_mirrors_the_names_it_lists_not_those_its_links_point_to(tmp_path):
    """Inputs listed through symbolic links (a media library of links, git-annex) keep the listed names, as
    the same links found in a folder do: not the target's (out/store/SHA256-...mkv), nor 'same output name'
    for a second link to one file."""
    from unflicker.batch import find_inputs

    real = tmp_path / "real"
    (real / "store").mkdir(parents=True)
    (real / "clips").mkdir()
    (real / "store" / "SHA256E-1f2e.mkv").write_bytes(b"x")
    for name in ("shot1.mkv", "shot2.mkv"):
        (real / "clips" / name).symlink_to(real / "store" / "SHA256E-1f2e.mkv")
    (tmp_path / "linked").symlink_to(real)  # the list reached through a link to its folder
    listing = real / "list.txt"
    listing.write_text(f"clips/shot1.mkv\n{real / 'clips' / 'shot2.mkv'}\n")
    expected = [Path("clips/shot1.mkv"), Path("clips/shot2.mkv")]
    assert [relative for _, relative in find_inputs(listing)] == expected
    assert [relative for _, relative in find_inputs(tmp_path / "linked" / "list.txt")] == expected
    assert [relative for _, relative in find_inputs(real / "clips")] == [Path("shot1.mkv"), Path("shot2.mkv")]
