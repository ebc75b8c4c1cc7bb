"""Benchmark: every method on the shared cases, with ffmpeg's deflicker as an external anchor.

    python benchmarks/run.py [--data ../shared/data] [--methods classical ...] [--frames 60]

Cases:
  processed/*    per-frame-processed video; flow on the clean input, PSNR to the processed frames
                 (the look of the processing must be kept); the clean original's row is the floor.
  real/*         real flickering film; flow on the input itself; no ground truth.
  synth/*        clean clips with seeded synthetic flicker; flow on and PSNR to the clean clip.
Writes benchmarks/results/latest.md (the table) and latest.json.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unflicker import io, synth
from unflicker.baselines import ffmpeg_deflicker
from unflicker.evaluation import Evaluator
from unflicker.config import METHOD_NAMES as METHODS
from unflicker.pipeline import RunConfig, deflicker_file

ROOT = Path(__file__).resolve().parent
SYNTH_CLIPS = ("davis-bear.mp4", "sam2-02_cups.mp4")
SYNTH_KINDS = ("global", "colour", "local", "mains", "tone")


@dataclass
class Case:
    name: str
    input: Path
    reference: Path
    ground_truth: Path | None
    floor: Path | None = None  # a flicker-free version to show the best reachable warping error


def processed_cases(data: Path) -> list[Case]:
    cases = []
    for folder in sorted((data / "processed").iterdir()):
        cases.append(Case(f"processed/{folder.name}", folder / "processed", folder / "input",
                          folder / "processed", folder / "input"))
    return cases


def real_cases(data: Path) -> list[Case]:
    real = data / "real-flicker"
    inputs = [real / "winter-scenes-in-holland.mp4", real / "old-film-001", real / "old-film-003"]
    return [Case(f"real/{p.stem}", p, p, None) for p in inputs if p.exists()]


def synthetic_cases(data: Path, work: Path, n_frames: int, max_side: int) -> list[Case]:
    """Write each clean clip (first n_frames, downscaled to max_side) and its flickering copies losslessly."""
    cases = []
    for clip in SYNTH_CLIPS:
        source = data / "clean" / clip
        if not source.exists():
            continue
        clean = _load(source, n_frames, max_side)
        clean_path = work / f"{source.stem}-clean.mkv"
        _write(clean, clean_path)
        for seed, kind in enumerate(SYNTH_KINDS):
            path = work / f"{source.stem}-{kind}.mkv"
            _write(synth.add_flicker(clean, kind=kind, strength=1.0, seed=seed), path)
            cases.append(Case(f"synth/{source.stem}/{kind}", path, clean_path, clean_path, clean_path))
    return cases


def _load(path: Path, n_frames: int, max_side: int) -> np.ndarray:
    import cv2

    frames = []
    for frame in io.read_frames(path):
        if frame.index >= n_frames:
            break
        image = io.to_float(frame.image)
        scale = max_side / max(image.shape[:2])
        if scale < 1:
            size = (round(image.shape[1] * scale / 2) * 2, round(image.shape[0] * scale / 2) * 2)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        frames.append(image)
    return np.stack(frames)


def _write(frames: np.ndarray, path: Path) -> None:
    h, w = frames.shape[1:3]
    info = io.VideoInfo(path, False, w, h, len(frames), io.DEFAULT_FOLDER_FPS, "rgb24", 8, False, None)
    with io.VideoWriter(path, info, overwrite=True) as writer:
        for frame in frames:
            writer.write(frame)


def _output_path(case: Case, work: Path, method: str) -> Path:
    stem = case.name.replace("/", "_") + f"_{method}"
    return work / stem if case.input.is_dir() else work / f"{stem}.mkv"


def _work_dir(case: Case, work: Path, method: str) -> Path:
    return work / (case.name.replace("/", "_") + f"-{method}-work")


def run_ffmpeg(source: Path, output: Path) -> None:
    """ffmpeg's `deflicker` filter (libavfilter inside PyAV), default settings."""
    info = io.probe(source)
    frames = list(io.read_frames(source, info))
    with io.VideoWriter(output, info, overwrite=True) as writer:
        for frame, image in zip(frames, ffmpeg_deflicker(f.image for f in frames)):
            writer.write(image, frame.pts, frame.name)


ABLATIONS = {
    "neural, no anchor": {"keep_slow": math.inf},
    "paper (no projection, no anchor)": {"keep_slow": math.inf, "projection": False},
    "paper, no refine": {"keep_slow": math.inf, "projection": False, "stop_after": "filter"},
}


def run_method(case: Case, method: str, work: Path, options: dict | None = None) -> tuple[Path, float]:
    """Returns the result path and wall seconds (decode + method + encode)."""
    if method == "input":
        return case.input, 0.0
    if method == "clean":
        return case.floor, 0.0
    output = _output_path(case, work, method)
    start = time.perf_counter()
    if method == "ffmpeg":
        run_ffmpeg(case.input, output)
    else:
        options = options or {}
        if options.get("stop_after"):  # the stage's frames are the result
            keep = _work_dir(case, work, method) / "-".join(map(str, options.values()))
            deflicker_file(case.input, None, RunConfig(method=method, progress=False, keep_work=keep, **options))
            return keep / options["stop_after"], time.perf_counter() - start
        if options:
            output = output.with_name(f"{output.stem}-{'-'.join(map(str, options.values()))}{output.suffix}")
        deflicker_file(case.input, output, RunConfig(method=method, overwrite=True, progress=False, **options))
    return output, time.perf_counter() - start


def benchmark(data: Path, methods: list[str], n_frames: int, synth_side: int, work: Path,
              patterns: list[str] | None = None, ablations: bool = False) -> list[dict]:
    selected = lambda name: not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)  # noqa: E731
    cases = [c for c in processed_cases(data) + real_cases(data) if selected(c.name)]
    if any(selected(f"synth/{Path(clip).stem}/{kind}") for clip in SYNTH_CLIPS for kind in SYNTH_KINDS):
        cases += [c for c in synthetic_cases(data, work, n_frames, synth_side) if selected(c.name)]
    rows = []
    for case in cases:
        evaluator = Evaluator(case.reference, case.ground_truth, like=case.input, long_term=5, max_side=480)
        rows_methods = ["input"] + (["clean"] if case.floor else []) + ["ffmpeg"] + methods
        for method in rows_methods:
            result, seconds = run_method(case, method, work)
            report = evaluator.score(result)
            row = {"case": case.name, "method": method, **report, "seconds": seconds,
                   "fps": report["frames"] / seconds if seconds else None}
            rows.append(row)
            print(_format_row(row), file=sys.stderr, flush=True)
            if method == "neural" and ablations:
                # Ablation, each a run of its own: without our slow-look anchor; without our projection
                # either (the paper's method); and the filter's output before the local refinement.
                for label, options in ABLATIONS.items():
                    result, _ = run_method(case, "neural", work, options)
                    rows.append({"case": case.name, "method": label, **evaluator.score(result), "seconds": None,
                                 "fps": None})
                    print(_format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _format_row(row: dict) -> str:
    def num(key, fmt):
        value = row.get(key)
        return "" if value is None else format(value, fmt)

    return (f"| {row['case']} | {row['method']} | {num('warp_error', '.3f')} | {num('warp_error_k5', '.3f')} | "
            f"{num('flicker_index', '.3f')} | {num('psnr', '.2f')} | {num('ssim', '.4f')} | "
            f"{num('paper_warp_error', '.2f')} | {num('detail', '.3f')} | "
            f"{num('seconds', '.1f') if row['seconds'] else ''} | {num('fps', '.1f')} |")


def markdown_table(rows: list[dict]) -> str:
    header = ("| case | method | E_warp (x1e-3) | E_warp t,t+5 (x1e-3) | flicker index (x1e-3) | PSNR (dB) | "
              "SSIM | paper E_warp (x1e-3) | detail | seconds | frames/s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([header] + [_format_row(r) for r in rows])


METHOD_ORDER = ("input", "clean", "ffmpeg", "classical", "neural")


def merge(parts: list[Path]) -> list[dict]:
    """Rows of several runs' JSON files as one table; a later file's row replaces an earlier one of
    the same case and method (e.g. a rerun of one method). Cases keep their first order."""
    rows: dict[tuple[str, str], dict] = {}
    for part in parts:
        for row in json.loads(part.read_text()):
            rows[(row["case"], row["method"])] = row
    cases = list(dict.fromkeys(case for case, _ in rows))
    rank = lambda method: next((i for i, m in enumerate(METHOD_ORDER) if method.startswith(m)),  # noqa: E731
                               len(METHOD_ORDER))
    return [rows[key] for case in cases
            for key in sorted((k for k in rows if k[0] == case), key=lambda k: (rank(k[1]), k[1]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--frames", type=int, default=60, help="frames per synthetic clip")
    parser.add_argument("--synth-side", type=int, default=854, help="longer side of the synthetic clips")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN", help="only cases matching these globs, e.g. 'synth/*'")
    parser.add_argument("--ablations", action="store_true",
                        help="also run the neural method without the anchor, without the projection, and the "
                             "filter's output (three more runs per case)")
    parser.add_argument("--name", default="latest", help="file stem of the written table (default %(default)s)")
    parser.add_argument("--merge", nargs="+", metavar="NAME",
                        help="write --name from earlier runs' results/NAME.json (later ones win) instead of running")
    args = parser.parse_args(argv)
    if args.merge:
        rows = merge([args.out / f"{name}.json" for name in args.merge])
        note = f"Merged from {', '.join(args.merge)} (see their .md files for when and how each ran).\n\n"
        (args.out / f"{args.name}.md").write_text(note + markdown_table(rows) + "\n")
        (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1))
        print(markdown_table(rows))
        return 0
    if not args.data.is_dir():
        parser.error(f"no data folder at {args.data}")
    work = Path(tempfile.mkdtemp(prefix="unflicker-bench-"))
    try:
        started = time.strftime("%Y-%m-%d %H:%M")
        rows = benchmark(args.data, args.methods, args.frames, args.synth_side, work, args.cases, args.ablations)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    note = (f"Benchmark of {started} on this machine ({', '.join(args.methods)}; ffmpeg = libavfilter "
            f"`deflicker` defaults; synthetic clips: first {args.frames} frames at {args.synth_side} px). "
            "PSNR/SSIM: to the processed frames (processed/*), to the clean clip (synth/*). "
            "Seconds: decode + method + encode.\n\n")
    (args.out / f"{args.name}.md").write_text(note + markdown_table(rows) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps(rows, indent=1))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
