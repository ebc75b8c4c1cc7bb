"""Where in a clip the default's error sits: per-frame PSNR of the later stages (poststage.py's
'default') on the cached refined frames of a split, against each case's ground truth, and per
family the PSNR of the whole clip, of its first and last `--ends` frames, of the rest, and of the
clip if its ends had the rest's mean squared error.

    python benchmarks/ends.py --split heldout --out results/ends-heldout-s11.jsonl
    python benchmarks/ends.py --out results/ends-heldout-s11.jsonl --summary
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

import corpus
import poststage
from refined import cache_path, read_video


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float32) - np.asarray(b, np.float32)) ** 2))
    return 10 * np.log10(1 / max(mse, 1e-12))


def summary(rows: list[dict], ends: int) -> str:
    families = defaultdict(list)
    for row in rows:
        mse = 10 ** (-np.array(row["psnr"]) / 10)
        if mse.max() <= 1e-12:  # untouched: nothing to place
            continue
        edge, middle = np.r_[mse[:ends], mse[-ends:]].mean(), mse[ends:-ends].mean()
        healed = np.r_[np.full(ends, middle), mse[ends:-ends], np.full(ends, middle)].mean()
        families[poststage.family(row["kind"])].append([-10 * np.log10(v) for v in (mse.mean(), edge, middle, healed)])
    lines = [f"| family | cases | whole clip, dB | first and last {ends} frames | the rest | ends at the rest's error |",
             "|---|---|---|---|---|---|"]
    for name, values in sorted(families.items()):
        v = np.array(values)
        lines.append(f"| {name} | {len(v)} | {v[:, 0].mean():.2f} (worst {v[:, 0].min():.2f}) | {v[:, 1].mean():.2f} | "
                     f"{v[:, 2].mean():.2f} | {v[:, 3].mean():.2f} (worst {v[:, 3].min():.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="heldout", choices=("tune", "heldout", "all"))
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per case (appended)")
    parser.add_argument("--ends", type=int, default=6, help="frames counted as each end of a clip")
    parser.add_argument("--summary", action="store_true", help="only print the summary of --out")
    args = parser.parse_args(argv)
    if not args.summary:
        done = {json.loads(line)["case"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
        for case in corpus.select(corpus.load_listing(), args.split, None):
            if case["name"] in done or not cache_path(case).exists():
                continue
            files = corpus.build(case)
            frames = read_video(files.input)
            refined = np.load(cache_path(case)).astype(np.float32) / 65535
            truth = read_video(files.ground_truth) if files.ground_truth else frames
            stats: dict = {}
            output = poststage.VARIANTS["default"](frames, refined, stats=stats)
            row = {"case": case["name"], "kind": case["kind"], "psnr": [_psnr(o, t) for o, t in zip(output, truth)]}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(case["name"], flush=True)
    print(summary([json.loads(line) for line in args.out.read_text().splitlines()], args.ends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
