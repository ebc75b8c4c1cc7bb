"""Longer segments: quality and time of the default at several `--segment-frames` on longer clips.

The issue-17 corpus's cases are 48 frames, one segment at any segment length; this builds the same
cases with more frames (corpus.build's n_frames; cases whose source is shorter are skipped) and runs
the default neural method once per segment length, scored like benchmarks/poststage.py.

    python benchmarks/segment_length.py --split tune --frames 90 --lengths 60 90 --out results/seglen-tune.jsonl
    python benchmarks/segment_length.py --out results/seglen-tune.jsonl --compare segment60 segment90

A 90-frame clip is two segments of 45 core frames (55 with their margins) at 60 and one at 90.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import corpus
import heldout
from unflicker import io
from unflicker.config import SegmentConfig
from unflicker.pipeline import RunConfig, deflicker_file


def compare(rows: list[dict], before: str, after: str) -> str:
    """Markdown: per case, the two lengths' warping error, PSNR and detail, and the worst changes."""
    by = {(r["case"], r["method"]): r for r in rows}
    cases = sorted({c for c, m in by if m == before and (c, after) in by})
    lines = [f"| case | E_warp x1e-3, {before} -> {after} | % | PSNR dB | dB | detail | seconds |",
             "|---|---|---|---|---|---|---|"]
    changes, drops = [], []
    for case in cases:
        a, b = by[(case, before)], by[(case, after)]
        change = 100 * (b["warp_error"] / a["warp_error"] - 1)
        # +-inf where one side was left as it is
        drop = b["psnr"] - a["psnr"] if np.isfinite(a["psnr"]) or np.isfinite(b["psnr"]) else 0.0
        changes.append(change)
        drops.append(drop)
        lines.append(f"| {case} | {a['warp_error']:.3f} -> {b['warp_error']:.3f} | {change:+.1f} | "
                     f"{a['psnr']:.2f} -> {b['psnr']:.2f} | {drop:+.2f} | {a['detail']:.3f} -> {b['detail']:.3f} | "
                     f"{a['seconds']:.1f} -> {b['seconds']:.1f} |")
    if cases:
        seconds = [by[(c, after)]["seconds"] / by[(c, before)]["seconds"] for c in cases]
        lines.append(f"\n{len(cases)} cases: warping error change {min(changes):+.1f} to {max(changes):+.1f} %, "
                     f"PSNR change {min(drops):+.2f} to {max(drops):+.2f} dB, time ratio median "
                     f"{np.median(seconds):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=("tune", "heldout", "all"))
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--frames", type=int, default=90, help="frames of each built case")
    parser.add_argument("--lengths", nargs="+", type=int, default=[60, 90], help="--segment-frames values")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines of scores (appended)")
    parser.add_argument("--label", default="",
                        help="appended to each row's method (segmentN), e.g. --label=-efficiency for another commit")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="only print the comparison of --out")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare([json.loads(line) for line in args.out.read_text().splitlines()], *args.compare))
        return 0
    done = set()
    if args.out.exists():
        done = {(r["case"], r["method"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for case in corpus.select(corpus.load_listing(), args.split, args.cases):
        todo = [n for n in args.lengths if (case["name"], f"segment{n}{args.label}") not in done]
        if not todo:
            continue
        files = corpus.build(case, n_frames=args.frames)
        if io.probe(files.input).frame_count < args.frames:
            print(f"skipped {case['name']}: its source is shorter than {args.frames} frames", flush=True)
            continue
        evaluator = heldout.case_evaluator(files)
        base = evaluator.score(files.input)
        floor = evaluator.score(files.floor) if files.floor else None
        with tempfile.TemporaryDirectory() as tmp:
            for n in todo:
                output = Path(tmp) / f"segment{n}.mkv"
                start = time.perf_counter()
                deflicker_file(files.input, output, RunConfig(method="neural", progress=False,
                                                              segments=SegmentConfig(frames=n)))
                row = heldout.relative_scores({"case": case["name"], "kind": case["kind"], "method": f"segment{n}{args.label}",
                                               "frames": args.frames, **evaluator.score(output),
                                               "seconds": time.perf_counter() - start}, base, floor)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(heldout.format_row(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
