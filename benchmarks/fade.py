"""Slow changes of light under flicker: what the slow-look anchor keeps (issue 17, flicker kinds).

The corpus (corpus.py) has no case where the light itself changes slowly, so it cannot tell what
the anchor buys: it scores only the flicker the anchor gives back. Here each clean clip gets a fade
(exposure rising by `--fade` stops over the clip, part of the truth) and physical flicker on top;
the default and `--keep-slow off` (no anchor) are scored against the faded clean clip: PSNR, and
how much of the fade the output's mean brightness keeps (slope of output against truth means).

    python benchmarks/fade.py [--split tune] [--kinds global colour mains] [--out results/fade-tune.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import corpus
import unflicker
from unflicker import synth
from unflicker.baselines import ffmpeg_deflicker
from unflicker.metrics import PSNR_CAP, psnr

VARIANTS = {"default": {}, "keep-slow off": {"keep_slow": math.inf}, "window anchor": {}, "lines anchor": {},
            "share 0.3-0.6": {}, "lines pump": {}, "lines pump whole": {}, "lines pump share": {}, "no contrast": {}, "no detail": {}, "classical": {"method": "classical"}, "ffmpeg": {}}
ANCHORS = {"window anchor": {"fade": False}, "lines anchor": {"physical_lines": True},
           "share 0.3-0.6": {"fade_share": (0.3, 0.6)},
           "lines pump": {"physical_lines": True, "lines_pumping": (0.3, 0.5)},
           "lines pump whole": {"physical_lines": True, "lines_pumping": (0.3, 0.5), "lines_fade_share": (0.0, 1e-9)},
           "lines pump share": {"physical_lines": True, "lines_pumping": (0.3, 0.5), "lines_fade_share": (0.35, 0.55)},
           "no contrast": {"contrast_sigma": math.inf, "detail_sigma": math.inf},
           "no detail": {"detail_sigma": math.inf}}
"""`window anchor`: the default with AnchorConfig(fade=False), the anchor before session 8 (set here, as
the run goes through unflicker.config.anchor_config in this process: a 48-frame clip is one segment).
In results/fade-*.md of sessions 7 and 8, "default" is that window anchor and "fade anchor" a
candidate (session 7's in fade-anchor-*.md, session 8's, today's default, in fade-*-s8.md). `lines anchor`:
AnchorConfig(physical_lines=True), and `share 0.3-0.6`: AnchorConfig(fade_share=(0.3, 0.6)), session-8
candidates (results/lines-*-s8.*, results/share03-*-s8.*). `lines pump` / `lines pump whole`: session 20's candidates
(results/pumping-lines-*-s20.*). `no contrast`: AnchorConfig(contrast_sigma=inf,
detail_sigma=inf), the default before session 12 (the anchor without its contrast part). `no detail`:
AnchorConfig(detail_sigma=inf), the default before session 13. `classical` and `ffmpeg` (libavfilter's
`deflicker`): the baselines (results/fade-baselines-*-s8.md)."""


@contextmanager
def variant(name: str):
    """The library as variant `name` runs it."""
    if name not in ANCHORS:
        yield
        return
    from unflicker import config

    real = config.anchor_config
    config.anchor_config = lambda run: None if real(run) is None else dataclasses.replace(real(run), **ANCHORS[name])
    try:
        yield
    finally:
        config.anchor_config = real


def run(name: str, flickering: np.ndarray) -> np.ndarray:
    """Variant `name`'s output for a (T, H, W, 3) float32 clip; "ffmpeg" is libavfilter's `deflicker`."""
    if name == "ffmpeg":
        return np.stack(list(ffmpeg_deflicker(flickering)))
    options = {"method": "neural", **VARIANTS[name]}
    return unflicker.deflicker(flickering, progress=False, **options)


def faded(clean: np.ndarray, stops: float) -> np.ndarray:
    """The clip with its exposure rising linearly in log2 from -stops/2 to +stops/2 (clipped)."""
    gains = np.exp2(np.linspace(-stops / 2, stops / 2, len(clean))).astype(np.float32)
    return np.clip(clean * gains[:, None, None, None], 0, 1)


def clip_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of each frame's PSNR."""
    return float(np.mean([min(psnr(x, y), PSNR_CAP) for x, y in zip(a, b)]))


def luma_means(frames: np.ndarray) -> np.ndarray:
    return (frames @ np.float32([0.299, 0.587, 0.114])).mean((1, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=("tune", "heldout"))
    parser.add_argument("--kinds", nargs="+", default=["global", "colour", "mains"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--fade", type=float, default=1.0, help="stops of exposure change over the clip")
    parser.add_argument("--out", type=Path, default=corpus.ROOT / "results" / "fade-tune.md")
    args = parser.parse_args(argv)
    listing = corpus.load_listing()
    sources = sorted({c["source"] for c in listing if c["split"] == args.split and c["source_type"] == "video"})
    rows = []
    for k, source in enumerate(sources):
        clean = corpus._read(corpus.DATA / corpus.VIDEO_SOURCES[source], corpus.FRAMES, corpus.SIDE)[0]
        truth = faded(clean, args.fade)
        for kind in args.kinds:
            flickering = synth.add_flicker(truth, kind, 1.0, seed=1000 + k)
            row = {"case": f"{kind}/{source}", "input": clip_psnr(flickering, truth)}
            for name in args.variants:
                start = time.monotonic()
                with variant(name):
                    out = run(name, flickering)
                t_means, o_means = luma_means(truth), luma_means(out)
                slope = float(np.polyfit(t_means, o_means, 1)[0])  # 1: the fade kept, 0: flattened
                row[name] = (clip_psnr(out, truth), slope, time.monotonic() - start)
            rows.append(row)
            print(row, flush=True)
    lines = [f"# Fade under flicker ({args.split} video sources, {corpus.FRAMES} frames at {corpus.SIDE} px, "
             f"{args.fade:g} stops over the clip, flicker strength 1)", "",
             "| case | input PSNR dB | " + " | ".join(f"{v} PSNR dB / fade kept" for v in args.variants) + " |",
             "|---|---|" + "---|" * len(args.variants)]
    for row in rows:
        lines.append(f"| {row['case']} | {row['input']:.2f} | "
                     + " | ".join(f"{row[v][0]:.2f} / {row[v][1]:.2f}" for v in args.variants) + " |")
    means = [f"{np.mean([r[v][0] for r in rows]):.2f} / {np.mean([r[v][1] for r in rows]):.2f}" for v in args.variants]
    lines.append(f"| mean | {np.mean([r['input'] for r in rows]):.2f} | " + " | ".join(means) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
