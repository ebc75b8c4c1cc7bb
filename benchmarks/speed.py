"""Per-frame speed of the neural filter at 480p and 1080p, fp32 vs bf16, and peak memory.

    python benchmarks/speed.py [--weights PATH] [--repeats 5] [--out benchmarks/results]

Each setting runs in the same process on the same random frames; the median of --repeats
timed calls (after one warm-up) is reported. Writes benchmarks/results/speed.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from unflicker.filter import NeuralFilter

SIZES = {"480p": (480, 854), "1080p": (1080, 1920)}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="filter weights (default: the shipped ones)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for precision in ("fp32", "bf16"):
        filt = NeuralFilter.load(args.weights, device="cpu", precision=precision)
        for name, (h, w) in SIZES.items():
            frame = rng.random((h, w, 3), dtype=np.float32)
            atlas = rng.random((144, 256, 3), dtype=np.float32)
            seconds = median_seconds(lambda: filt.apply(frame, atlas), args.repeats)
            rows.append((name, precision, seconds))
            print(f"{name} {precision}: {seconds:.3f} s/frame", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [f"Neural filter, torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"median of {args.repeats}; peak RSS of the whole run {peak_mb:.0f} MB.", "",
             "| frame size | precision | seconds/frame | frames/s |", "|---|---|---|---|"]
    lines += [f"| {n} | {p} | {s:.3f} | {1 / s:.1f} |" for n, p, s in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
