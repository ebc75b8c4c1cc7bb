"""Benchmark of the stage-1 atlas backends: fit time, peak memory, reconstruction and consistency.

    python benchmarks/atlas.py [--data ../shared/data] [--frames 80] [--out benchmarks/results]

Cases (first --frames frames, downsampled to the atlas resolution, 256 px on the longer side):
  synth/davis-bear-global  clean clip + synth global flicker (seed 0, strength 1, applied at full
                           size); flow reference and ground truth: the clean clip.
  processed/goat           per-frame-processed video; flow reference: its unprocessed input.
  real/winter-scenes...    real flickering film; flow reference: the input itself.
Every fit runs in its own spawned process (peak RSS: its VmHWM, reset before the fit) with 1 torch
thread and 1 OpenCV thread; flows are computed inside fit() and count in its time. 'grid' runs
with its defaults; 'mlp' gets time_budget_s = the grid's fit time on the same clip.
Metrics are taken at the atlas resolution on every --eval-stride'th frame t and its pair (t, t+1)
(the mlp renders about 1.5 s per frame on one thread): reconstruction PSNR (reconstruct(t) vs
the input), E_warp (Lai et al.; flow on the reference) of the input, of A_t and of the reference,
and PSNR of A_t to the clean clip where there is one.
--long also measures fit_video's peak memory on long synthetic videos at 144x256.
Writes <out>/atlas.md and <out>/atlas.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import numpy as np

ROOT = Path(__file__).resolve().parent
BACKENDS = ("grid", "mlp")
RESOLUTION = 256
# Default lengths (frames of 144 x 256) of the long-video memory check; windows hold AtlasConfig.window frames.
LONG_LENGTHS = (120, 480)
LONG_STEPS = 20  # memory of a window's fit depends on its frames and size, not on the step count


@dataclass
class Case:
    name: str
    input: Path
    reference: Path
    clean: bool  # the reference is the flicker-free ground truth
    flicker: str | None = None  # synth kind added to the input (then `input` is the clean clip)


def cases(data: Path) -> list[Case]:
    found = [
        Case("synth/davis-bear-global", data / "clean" / "davis-bear.mp4", data / "clean" / "davis-bear.mp4",
             True, "global"),
        Case("processed/goat", data / "processed" / "goat" / "processed", data / "processed" / "goat" / "input",
             False),
        Case("real/winter-scenes-in-holland", data / "real-flicker" / "winter-scenes-in-holland.mp4",
             data / "real-flicker" / "winter-scenes-in-holland.mp4", False),
    ]
    return [c for c in found if c.input.exists() and c.reference.exists()]


def load(path: Path, n_frames: int, flicker: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """First n_frames of a video, optionally flickered at full size, area-downsampled to the atlas size.

    Returns ((T, h, w, 3) float32, full (H, W)).
    """
    from unflicker import io, synth
    from unflicker.atlas import atlas_size, downsample

    effect = synth.Flicker(synth.FLICKER_KINDS[flicker](strength=1.0), seed=0) if flicker else None
    frames, full = [], (0, 0)
    for frame in io.read_frames(path):
        if frame.index >= n_frames:
            break
        image = io.to_float(frame.image)
        if effect is not None:
            image = effect.apply(frame.index, image)
        full = image.shape[:2]
        frames.append(downsample(image, atlas_size(*full, RESOLUTION)))
    return np.stack(frames), full


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB. The kernel's per-process high-water mark is used rather
    than getrusage's ru_maxrss, which a spawned child inherits from its parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fit_child(frames_path: str, out_path: str, backend: str, budget: float | None,
               eval_frames: list[int], queue) -> None:
    """Child process: fit one atlas, report time and peak RSS, save A_t and reconstructions."""
    import cv2

    from unflicker.atlas import AtlasConfig, fit

    cv2.setNumThreads(1)
    frames = np.load(frames_path)
    config = AtlasConfig(backend=backend, resolution=RESOLUTION, threads=1, time_budget_s=budget, device="cpu")
    base = _status_mb("VmRSS")
    _reset_peak()
    start, cpu = time.monotonic(), _cpu_s()
    atlas = fit(frames, None, config)
    seconds, cpu = time.monotonic() - start, _cpu_s() - cpu
    peak = _status_mb("VmHWM")
    rendered = np.stack([atlas.render(t) for t in eval_frames])
    recon = rendered if backend == "mlp" else np.stack([atlas.reconstruct(t) for t in eval_frames])
    np.savez(out_path, rendered=rendered, recon=recon)
    queue.put({"fit_s": seconds, "cpu_s": cpu, "rss_base_mb": base, "rss_peak_mb": peak,
               "steps": len(atlas.losses), "final_loss": atlas.losses[-1] if atlas.losses else None})


def _long_child(n_frames: int, steps: int, photo: str, queue) -> None:
    """Child process: fit_video on a synthetic flickering camera move of n_frames at 144x256."""
    import cv2

    from unflicker import synth
    from unflicker.atlas import AtlasConfig, fit_video
    from unflicker.atlas.video import windows

    cv2.setNumThreads(1)
    image = cv2.cvtColor(cv2.imread(photo), cv2.COLOR_BGR2RGB)
    base = _status_mb("VmRSS")
    frames = synth.add_flicker(synth.camera_move_clip(image, n_frames, (144, 256), "pan", seed=1), "global", seed=2)
    with_frames = _status_mb("VmRSS")
    _reset_peak()  # the generator's temporaries are not fit_video's
    config = AtlasConfig(steps=steps, threads=1)
    frame_mb = frames[0].size * 2 / 2**20  # one rendered A_t, float16
    peaks: list[float] = []

    window_ends = {w.stop / n_frames for w in windows(n_frames, config.window, config.overlap)}

    def progress(fraction: float) -> None:
        # Per window (fit_video reports exactly stop / T once a window is rendered, fractions short of
        # it after each step): peak RSS beyond the frames (the rendered A_t go to a file on disk); then start
        # the next window's high-water mark afresh.
        if fraction not in window_ends:
            return
        peaks.append(_status_mb("VmHWM"))
        _reset_peak()
        working.append(peaks[-1] - with_frames)

    working: list[float] = []
    start = time.monotonic()
    video = fit_video(frames, None, config, progress=progress)
    seconds = time.monotonic() - start
    queue.put({"frames": n_frames, "windows": config.window, "overlap": config.overlap, "fit_s": seconds,
               "rss_base_mb": base, "rss_frames_mb": with_frames, "rss_peak_mb": max(peaks),
               "frames_mb": frames.nbytes / 2**20, "rendered_mb": len(video) * frame_mb,
               "working_per_window_mb": working})


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: its peak RSS is this job's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():  # died before reporting (an exception, or killed for memory)
                raise RuntimeError(f"child {target.__name__}{args[:3]} failed with exit code {proc.exitcode}")
    proc.join()
    return result


def _pair_warp_error(sequence: dict[int, np.ndarray], reference: np.ndarray, starts: list[int]) -> float:
    """Mean E_warp over the pairs (t, t+1), t in starts; flow from reference frames t, t+1."""
    from unflicker.metrics import WARP_ERROR_SCALE, warp_error

    values = [warp_error([sequence[t], sequence[t + 1]], reference[t : t + 2]) for t in starts]
    return WARP_ERROR_SCALE * float(np.mean(values))


def bench_case(case: Case, n_frames: int, stride: int, work: Path) -> list[dict]:
    from unflicker.metrics import sequence_psnr

    t0 = time.monotonic()
    if case.flicker:
        clean, full = load(case.input, n_frames)
        frames, _ = load(case.input, n_frames, case.flicker)
        reference = clean
    else:
        frames, full = load(case.input, n_frames)
        reference = frames if case.reference == case.input else load(case.reference, n_frames)[0]
    prep_s = time.monotonic() - t0
    n = len(frames)
    starts = list(range(0, n - 1, stride))
    eval_frames = sorted({t for s in starts for t in (s, s + 1)})
    frames_path = work / "frames.npy"
    np.save(frames_path, frames)

    def as_dict(seq: np.ndarray) -> dict[int, np.ndarray]:
        return {t: seq[t] for t in eval_frames}

    e_input = _pair_warp_error(as_dict(frames), reference, starts)
    e_ref = None if reference is frames else _pair_warp_error(as_dict(reference), reference, starts)
    rows, grid_s = [], None
    for backend in BACKENDS:
        budget = grid_s if backend == "mlp" else None
        out = work / f"{backend}.npz"
        stats = _in_child(_fit_child, str(frames_path), str(out), backend, budget, eval_frames)
        if backend == "grid":
            grid_s = stats["fit_s"]
        saved = np.load(out)
        rendered = dict(zip(eval_frames, saved["rendered"]))
        recon = dict(zip(eval_frames, saved["recon"]))
        row = {
            "case": case.name, "backend": backend, "frames": n, "full_size": list(full),
            "atlas_size": list(frames.shape[1:3]), "budget_s": budget, "prep_s": prep_s, **stats,
            "recon_psnr": sequence_psnr([recon[t] for t in eval_frames], frames[eval_frames]),
            "ewarp_input": e_input, "ewarp_at": _pair_warp_error(rendered, reference, starts),
            "ewarp_reference": e_ref,
            "psnr_at_clean": (sequence_psnr([rendered[t] for t in eval_frames], reference[eval_frames])
                              if case.clean else None),
            "eval_frames": len(eval_frames), "eval_pairs": len(starts),
        }
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def bench_long(data: Path, lengths: list[int], steps: int) -> list[dict]:
    photos = sorted((data / "images" / "bsds500" / "train").glob("*.jpg"))
    if not photos:
        return []
    rows = []
    for n in lengths:
        row = _in_child(_long_child, n, steps, str(photos[0]))
        row["working_mb"] = max(row["working_per_window_mb"])
        rows.append(row)
        print(row, flush=True)
    return rows


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _format_row(r: dict) -> str:
    return (f"| {r['case']} | {r['backend']} | {_num(r['budget_s'], '.1f')} | {r['fit_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['steps']} | "
            f"{r['rss_peak_mb']:.0f} ({r['rss_peak_mb'] - r['rss_base_mb']:+.0f}) | {r['recon_psnr']:.2f} | "
            f"{r['ewarp_input']:.3f} | {r['ewarp_at']:.3f} | {_num(r['ewarp_reference'], '.3f')} | "
            f"{_num(r['psnr_at_clean'], '.2f')} |")


def _goals(rows: list[dict]) -> list[str]:
    lines = []
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["backend"]] = r
    for name, found in by_case.items():
        grid, mlp = found.get("grid"), found.get("mlp")
        if grid is None:
            continue
        h, w = grid["full_size"]
        verdict = ("meets" if grid["fit_s"] <= 60 else
                   "wall time MISSES, CPU time meets" if grid["cpu_s"] <= 60 else "MISSES")
        lines.append(f"- {name}: grid fit of {grid['frames']} frames ({w}x{h} source) {grid['fit_s']:.1f} s wall, "
                     f"{grid['cpu_s']:.1f} s CPU: {verdict} the <= 60 s goal"
                     + ("" if grid["frames"] >= 80 and (h, w) == (480, 854) else " (not the 80-frame 854x480 case)"))
        if mlp is not None:
            gap = grid["recon_psnr"] - mlp["recon_psnr"]
            lines.append(f"- {name}: reconstruction PSNR grid - mlp at equal wall time = {gap:+.2f} dB: "
                         f"{'meets' if gap >= -1 else 'MISSES'} the 'within 1 dB or better' goal")
        lines.append(f"- {name}: E_warp of A_t {grid['ewarp_at']:.3f} vs input {grid['ewarp_input']:.3f} (x1e-3): "
                     f"{'lower' if grid['ewarp_at'] < grid['ewarp_input'] else 'NOT lower'}")
    return lines


def _long_table(rows: list[dict]) -> str:
    head = ("| frames (144x256) | windows of | fit_video s | RSS after imports MB | frames MB | RSS with frames MB | "
            "A_t on disk MB (float16) | peak RSS MB | working MB per window | max working MB |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    body = [f"| {r['frames']} | {r['windows']} (overlap {r['overlap']}) | {r['fit_s']:.1f} | {r['rss_base_mb']:.0f} | "
            f"{r['frames_mb']:.0f} | {r['rss_frames_mb']:.0f} | {r['rendered_mb']:.0f} | {r['rss_peak_mb']:.0f} | "
            f"{', '.join(f'{x:.0f}' for x in r['working_per_window_mb'])} | {r['working_mb']:.0f} |"
            for r in rows]
    return "\n".join([head, *body])


def markdown(rows: list[dict], long_rows: list[dict], long_steps: int, note: str) -> str:
    head = ("| case | backend | time budget s | fit s (wall) | fit CPU s | steps | peak RSS MB (growth) | "
            "recon PSNR dB | E_warp input | E_warp A_t | E_warp reference | PSNR A_t to clean dB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    parts = [note, head, *[_format_row(r) for r in rows], "", "Goals (issue 3):", *_goals(rows)]
    if long_rows:
        parts += ["", "## Long videos: fit_video memory", "",
                  f"Synthetic pan over a BSDS500 photo with global flicker, {long_steps} steps per window "
                  "(memory does not depend on the step count). Each length in its own process. Working memory: "
                  "a window's peak RSS beyond the RSS holding the low-resolution frames and the A_t rendered "
                  "so far (the window's flows, model and optimiser state, and what the allocator keeps).",
                  "", _long_table(long_rows)]
        a, b = long_rows[0], long_rows[-1]
        data = b["frames_mb"] + b["rendered_mb"] - a["frames_mb"] - a["rendered_mb"]
        per_window = b["working_per_window_mb"]
        slope = np.polyfit(np.arange(len(per_window)), per_window, 1)[0] if len(per_window) > 1 else 0.0
        parts.append(f"\nFrom {a['frames']} to {b['frames']} frames the peak RSS grows by "
                     f"{b['rss_peak_mb'] - a['rss_peak_mb']:.0f} MB, of which the frames and A_t account for "
                     f"{data:.0f} MB; the largest working memory goes from {a['working_mb']:.0f} to "
                     f"{b['working_mb']:.0f} MB; over the {len(per_window)} windows of the {b['frames']}-frame run "
                     f"it changes by {slope:+.0f} MB per window (least-squares slope).")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--frames", type=int, default=80, help="frames per clip")
    parser.add_argument("--eval-stride", type=int, default=8, help="score the pairs (t, t+1), t = 0, n, 2n, ...")
    parser.add_argument("--cases", nargs="*", help="only the cases whose name contains one of these")
    parser.add_argument("--no-long", action="store_true", help="skip the long-video memory check")
    parser.add_argument("--long-frames", type=int, nargs="+", default=list(LONG_LENGTHS),
                        help="lengths of the long synthetic videos (144x256)")
    parser.add_argument("--long-steps", type=int, default=LONG_STEPS, help="grid steps per window there")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"no data folder at {args.data}")
    selected = [c for c in cases(args.data) if not args.cases or any(s in c.name for s in args.cases)]
    started, load = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="unflicker-atlas-bench-"))
    try:
        rows = [row for case in selected for row in bench_case(case, args.frames, args.eval_stride, work)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    long_rows = [] if args.no_long else bench_long(args.data, args.long_frames, args.long_steps)
    note = (f"# Atlas backends\n\nRun of {started}, {time.monotonic() - t0:.0f} s in all, on {os.cpu_count()} shared "
            f"CPU cores (load average {load:.1f} at the start), 1 torch thread and 1 OpenCV thread per fit, "
            f"no GPU. Fit time includes the flows fit() computes on the flickering input. 'mlp' runs with "
            f"the grid's fit time on the same clip as its budget (pre-training included). "
            f"Metrics at the atlas resolution on {args.frames} frames, pairs (t, t+1) for t = 0, "
            f"{args.eval_stride}, {2 * args.eval_stride}, ...; E_warp x1e-3 with flow on the reference (clean clip / unprocessed input / the input "
            "itself). Peak RSS includes the interpreter and torch; in brackets the growth over it after "
            "loading the frames (flows, model, optimiser). Fit CPU s: user + system time of the fit, "
            "about its wall time on an idle core.\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "atlas.md").write_text(markdown(rows, long_rows, args.long_steps, note))
    (args.out / "atlas.json").write_text(json.dumps({"fits": rows, "long": long_rows}, indent=1))
    print((args.out / "atlas.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
