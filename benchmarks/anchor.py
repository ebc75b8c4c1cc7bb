"""How much of the input's look to keep: anchor settings scored on the neural method's refined frames.

    python benchmarks/anchor.py [--work /tmp/anchor-work] [--settings 1:8:96 1:inf:64 ...]

For each case (processed goat and bike-packing, real winter and old-film-003) the neural method
runs once with `--keep-slow off --keep-work` (skipped when the work folder already holds it);
then each setting SIGMA:GLOBAL_SIGMA:GRID_ROWS of unflicker.anchor is applied to the refined
frames and scored as benchmarks/run.py scores (E_warp with flow on the clean video, or on the
input for real film; PSNR to the processed frames). Writes benchmarks/results/anchor.md.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from unflicker import io
from unflicker.anchor import AnchorConfig, SlowAppearanceAnchor
from unflicker.evaluation import Evaluator
from unflicker.pipeline import RunConfig, deflicker_file

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results" / "anchor.md"
CASES = {  # name: (input, flow reference, ground truth)
    "processed/goat": ("processed/goat/processed", "processed/goat/input", "processed/goat/processed"),
    "processed/bike-packing": ("processed/bike-packing/processed", "processed/bike-packing/input",
                               "processed/bike-packing/processed"),
    "real/winter-scenes-in-holland": ("real-flicker/winter-scenes-in-holland.mp4",
                                      "real-flicker/winter-scenes-in-holland.mp4", None),
    "real/old-film-003": ("real-flicker/old-film-003", "real-flicker/old-film-003", None),
}
DEFAULT_SETTINGS = ["inf:inf:96", "1:1:64", "8:8:16", "1:inf:64", "1:8:96"]


def anchored(source: Path, refined: Path, config: AnchorConfig, out: Path) -> Path:
    info = io.probe(source)
    items = ((f, io.to_float(f.image), io.to_float(r.image))
             for f, r in zip(io.read_frames(source, info), io.read_frames(refined)))
    with io.VideoWriter(out, info) as writer:
        for frame, image in SlowAppearanceAnchor(config).stream(items):
            writer.write(image, None, frame.name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unflicker-anchor-work")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, metavar="SIGMA:GLOBAL:ROWS")
    args = parser.parse_args(argv)
    lines = ["| case | sigma | global sigma | grid rows | E_warp (x1e-3) | flicker index (x1e-3) | PSNR (dB) |",
             "|---|---|---|---|---|---|---|"]
    for name, (source, reference, truth) in CASES.items():
        source, reference = DATA / source, DATA / reference
        work = args.work / name.replace("/", "_")
        if not (work / "refine").is_dir():
            deflicker_file(source, None, RunConfig(method="neural", keep_slow=math.inf, keep_work=work,
                                                   stop_after="refine", progress=False))
        evaluator = Evaluator(reference, DATA / truth if truth else None, like=source, long_term=5, max_side=480)
        for setting in args.settings:
            sigma, global_sigma, rows = setting.split(":")
            # The contrast and detail parts (sessions 12, 13) are newer than this table; off here.
            config = AnchorConfig(sigma=float(sigma), global_sigma=float(global_sigma), grid_rows=int(rows),
                                  contrast_sigma=math.inf, detail_sigma=math.inf)
            with tempfile.TemporaryDirectory() as tmp:
                score = evaluator.score(anchored(source, work / "refine", config, Path(tmp) / "out"))
            psnr = f"{score['psnr']:.2f}" if "psnr" in score else ""
            lines.append(f"| {name} | {sigma} | {global_sigma} | {rows} | {score['warp_error']:.3f} | "
                         f"{score['flicker_index']:.3f} | {psnr} |")
            print(lines[-1], flush=True)
    RESULTS.write_text("Anchor settings on the refined frames (`inf:inf` = no anchor, the paper's output).\n\n"
                       + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
