"""Cache of the paper stages' output (atlas, filter, refinement; no projection, no anchor) per corpus case.

The stages after the refinement (projection, anchor, the gate of the network's fine correction)
are cheap; choosing their settings needs only the input and the refined frames O_t of each case.
This computes O_t once per case with the library itself (`--keep-slow off --no-projection`, one
worker, one thread: the same bits the default run computes inside), stored as uint16 .npy in
benchmarks/.cache/refined/. Cases are short (48 frames), so each is one segment: applying the later
stages to the cached frames gives what the default run gives, up to 1/65535 steps.

    python benchmarks/refined.py --split tune --jobs 2       # fill the cache (resumable)
    python benchmarks/refined.py --split tune --filter-weights W.safetensors --tag texture   # other weights,
                                                             # cached in .cache/refined/texture/
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import sys
from pathlib import Path

import numpy as np

import corpus
from unflicker import io

CACHE = corpus.ROOT / ".cache" / "refined"


def read_video(path: Path) -> np.ndarray:
    """(T, H, W, 3) float32 frames of a video in [0, 1]."""
    info = io.probe(path)
    return np.stack([io.to_float(f.image) for f in io.read_frames(path, info)])


def cache_path(case: dict, tag: str | None = None) -> Path:
    """Where a case's refined frames are cached: .cache/refined/ for the shipped weights, .cache/refined/TAG/
    for others."""
    files = corpus.build(case)
    return (CACHE / tag if tag else CACHE) / f"{files.input.parent.name}.npy"


def refine_case(case: dict, tag: str | None = None, weights: dict | None = None) -> Path:
    import unflicker

    path = cache_path(case, tag)
    if path.exists():
        return path
    files = corpus.build(case)
    frames = read_video(files.input)
    out = unflicker.deflicker(frames, method="neural", keep_slow=math.inf, projection=False, progress=False,
                              **(weights or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npy")
    np.save(tmp, io.from_float(out, 16))
    tmp.replace(path)
    print(f"{case['name']}: {path.name}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=("tune", "heldout", "all"))
    parser.add_argument("--cases", nargs="*", help="fnmatch patterns of case names")
    parser.add_argument("--jobs", type=int, default=1, help="cases at once (one thread each)")
    parser.add_argument("--filter-weights", type=Path, help="filter weights other than the shipped ones (needs --tag)")
    parser.add_argument("--refine-weights", type=Path, help="refinement weights other than the shipped ones (needs --tag)")
    parser.add_argument("--tag", help="cache folder under .cache/refined/ for other weights")
    args = parser.parse_args(argv)
    weights = {k: v for k, v in (("filter_weights", args.filter_weights), ("refine_weights", args.refine_weights)) if v}
    if weights and not args.tag:
        parser.error("other weights need --tag (the shipped weights' cache must not mix with them)")
    cases = corpus.select(corpus.load_listing(), args.split, args.cases)
    job = functools.partial(refine_case, tag=args.tag, weights=weights)
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            list(pool.imap_unordered(job, cases))
    else:
        for case in cases:
            job(case)
    return 0


if __name__ == "__main__":
    sys.exit(main())
