"""How well `--kind auto` names physical flicker (unflicker.kinds): the corpus's physical and real
cases, their cached refined frames projected as a run does, the probe's features and its name
against the kind the case was made with (film -> film, mains -> mains, the other physical kinds ->
timelapse; real old films -> film). Also the processed cases, for what the probe would call them.

    python benchmarks/kinds.py --split tune --out results/kinds-tune.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import corpus
from refined import cache_path, read_video
from unflicker.kinds import KindConfig, KindProbe
from unflicker.projection import FlickerModel, ProjectionConfig


def truth(case: dict) -> str | None:
    """The name the probe should give a case (None: not a physical case)."""
    kind = case["kind"]
    if kind == "real":
        return "film"  # the corpus's real clips are old films
    if not kind.startswith("physical/"):
        return None
    sub = kind.split("/")[1]
    return sub if sub in ("film", "mains") else "timelapse"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=("tune", "heldout", "all"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cases = [c for c in corpus.select(corpus.load_listing(), args.split, None) if cache_path(c).exists()
             and (truth(c) is not None or c["kind"].startswith("processed") or c["kind"] == "shared-processed")]
    lines = [f"# Physical flicker kinds named by the probe ({args.split} split; {KindConfig()})", "",
             "| case | truth | named | pumping | jumps | colour | bands | band motion | level motion | chroma |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    right = total = 0
    for case in cases:
        I = read_video(corpus.build(case).input)
        O = np.load(cache_path(case)).astype(np.float32) / 65535
        model, probe = FlickerModel(ProjectionConfig()), KindProbe()
        for t in range(len(I)):
            probe.observe(I[t], model.project(I[t], O[t]))
        f, named, want = probe.features(), probe.kind(), truth(case)
        if want is not None:
            total += 1
            right += named == want
        lines.append(f"| {case['name']} | {want or '-'} | {named} | {f['pumping']:.2f} | {f['jumps']:.2f} | {f['colour']:.2f} | {f['bands']:.2f} | "
                     f"{f['band_motion']:.4f} | {f['level_motion']:.4f} | {f['chroma']:.4f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Physical and real cases named right: {right} of {total}."]
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
