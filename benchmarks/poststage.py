"""Choose the settings of the stages after the refinement on cached refined frames (benchmarks/refined.py).

For every case of a split whose refined frames O_t are cached, each variant maps (input I, O) to
output frames; all are scored with the benchmark's Evaluator (flows computed once per case) and
summarised per kind like benchmarks/heldout.py. Variants are named in VARIANTS.

    python benchmarks/poststage.py --split tune --variants default paper gate
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

import corpus
import heldout
from refined import cache_path, read_video
from unflicker.anchor import AnchorConfig, SlowAppearanceAnchor
from unflicker.evaluation import Evaluator
from unflicker.flow import flow_pair, warp
from unflicker.gate import FineGate, GateConfig
from unflicker.projection import FlickerModel, ProjectionConfig


def anchored(frames: np.ndarray, outputs: list[np.ndarray], config: AnchorConfig | None = None) -> list[np.ndarray]:
    anchor = SlowAppearanceAnchor(config or AnchorConfig(), [0])
    return [out for _, out in anchor.stream((t, frames[t], outputs[t]) for t in range(len(frames)))]


def v_paper(I, O, **_):
    return list(O)


def v_default(I, O, **_):
    model = FlickerModel(ProjectionConfig())
    return anchored(I, [model.project(I[t], O[t]) for t in range(len(I))])


def _small(x: np.ndarray, side: int = 160) -> np.ndarray:
    h, w = x.shape[:2]
    s = side / max(h, w)
    return cv2.resize(x, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def temporal_errors(I, seqs: dict[str, list[np.ndarray]], side: int = 160) -> dict[str, float]:
    """Mean masked L1 between consecutive frames of each sequence, warped by DIS flow on I (low res)."""
    small_I = [_small(f, side) for f in I]
    small = {k: [_small(f, side) for f in v] for k, v in seqs.items()}
    sums = {k: 0.0 for k in seqs}
    count = 0
    for t in range(len(I) - 1):
        pair = flow_pair(small_I[t], small_I[t + 1])
        valid = pair.valid
        count += valid.sum()
        for k, v in small.items():
            diff = np.abs(v[t] - warp(v[t + 1], pair.forward)).mean(2)
            sums[k] += float(diff[valid].sum())
    return {k: 1e3 * v / max(count, 1) for k, v in sums.items()}


def mixed(w_fixed: float | None):
    def run(I, O, stats, **_):
        model = FlickerModel(ProjectionConfig())
        smooth = FlickerModel(ProjectionConfig(residual_tolerance=0.0))
        P = [model.project(I[t], O[t]) for t in range(len(I))]
        S = [smooth.project(I[t], O[t]) for t in range(len(I))]
        e = temporal_errors(I, {"I": list(I), "S": S, "P": P, "O": list(O)})
        stats.update({f"e_{k}": v for k, v in e.items()})
        stats["g"] = 1 - e["O"] / e["P"]
        w = w_fixed
        stats["w"] = w
        return anchored(I, [P[t] + w * (O[t] - P[t]) for t in range(len(I))])
    return run


def gated(config: GateConfig | None = None):
    """What the default neural run computes after the refinement: projection, gate, anchor."""
    def run(I, O, stats, **_):
        model, gate = FlickerModel(ProjectionConfig()), FineGate(config)
        P = []
        for t in range(len(I)):
            P.append(model.project(I[t], O[t]))
            gate.observe(I[t], P[t], O[t])
        w = gate.weight()
        stats.update(share=gate.share, w=w)
        return anchored(I, [P[t] + np.float32(w) * (O[t] - P[t]) for t in range(len(I))])
    return run


VARIANTS = {"paper": v_paper, "default": v_default, "mix50": mixed(0.5), "mix100": mixed(1.0), "gate": gated()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=("tune", "heldout", "all"))
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines of scores (appended)")
    args = parser.parse_args(argv)
    cases = [c for c in corpus.select(corpus.load_listing(), args.split, args.cases) if cache_path(c).exists()]
    done = set()
    if args.out.exists():
        done = {(r["case"], r["method"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for case in cases:
        todo = [v for v in args.variants if (case["name"], v) not in done]
        if not todo:
            continue
        files = corpus.build(case)
        I = read_video(files.input)
        O = np.load(cache_path(case)).astype(np.float32) / 65535
        evaluator = Evaluator(files.reference, files.ground_truth, like=files.input, long_term=5, max_side=480)
        base = evaluator.score(files.input)
        floor = evaluator.score(files.floor) if files.floor else None
        with tempfile.TemporaryDirectory() as tmp:
            for name in todo:
                stats: dict = {}
                frames = VARIANTS[name](I, O, stats=stats)
                path = Path(tmp) / f"{name}.mkv"
                corpus._write(frames, path)
                row = {"case": case["name"], "kind": case["kind"], "method": name, **evaluator.score(path), **stats}
                if floor and base["warp_error"] - floor["warp_error"] > 1e-9:
                    row["gap_closed"] = 100 * (base["warp_error"] - row["warp_error"]) / (base["warp_error"] - floor["warp_error"])
                row["paper_reduction"] = 100 * (base["paper_warp_error"] - row["paper_warp_error"]) / base["paper_warp_error"]
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(heldout.format_row(row), {k: round(v, 4) for k, v in stats.items()}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
