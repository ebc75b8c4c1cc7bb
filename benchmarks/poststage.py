"""Choose the settings of the stages after the refinement on cached refined frames (benchmarks/refined.py).

For every case of a split whose refined frames O_t are cached, each variant maps (input I, O) to
output frames; all are scored with the benchmark's Evaluator (flows computed once per case) and
summarised per kind like benchmarks/heldout.py. Variants are named in VARIANTS.

    python benchmarks/poststage.py --split tune --variants paper previous default --out results/post-tune.jsonl
    python benchmarks/poststage.py --out results/post-tune.jsonl --summary
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import corpus
import heldout
from refined import cache_path, read_video
from unflicker.anchor import AnchorConfig, SlowAppearanceAnchor
from unflicker.carry import CarryConfig, DetailCarry
from unflicker.gate import FineGate, GateConfig
from unflicker.kinds import KindProbe
from unflicker.metrics import PSNR_CAP
from unflicker.projection import FlickerModel, ProjectionConfig


def anchored(frames: np.ndarray, outputs: list[np.ndarray], config: AnchorConfig | None = None) -> list[np.ndarray]:
    anchor = SlowAppearanceAnchor(config or AnchorConfig(), [0])
    return [out for _, out in anchor.stream((t, frames[t], outputs[t]) for t in range(len(frames)))]


def v_paper(I, O, **_):
    """The paper's stages alone (`--keep-slow off --no-projection`)."""
    return list(O)


def v_previous(I, O, **_):
    """The default before the gate (commit 6b47fc7): projection, then the anchor."""
    model = FlickerModel(ProjectionConfig())
    return anchored(I, [model.project(I[t], O[t]) for t in range(len(I))])


def carried(frames: np.ndarray, outputs: list[np.ndarray], config: CarryConfig, stats: dict) -> list[np.ndarray]:
    """As a run's sweep after the anchor (segments._carried): carried in full, then taken the measured share."""
    carry = DetailCarry(config)
    if not config.on:
        return outputs
    full = [carry.apply(outputs[t], carry.motion(frames[t - 1], frames[t]) if t else None) for t in range(len(frames))]
    stats.update(carry=carry.amount(), carry_efficiency=carry.efficiency)
    return [carry.blend(o, c, carry.amount()) for o, c in zip(outputs, full)]


def gated(config: GateConfig | None = None, projection: ProjectionConfig | None = None,
          anchor: AnchorConfig | None = None, carry: CarryConfig | None = None):
    """What a neural run computes after the refinement: projection, gate (unflicker.gate), anchor."""
    def run(I, O, stats, **_):
        model, gate, probe = FlickerModel(projection or ProjectionConfig()), FineGate(config), KindProbe()
        P, M = [], []
        for t in range(len(I)):
            projected, correction = model.project_with_correction(I[t], O[t])
            P.append(projected)
            M.append(correction)
            gate.observe(I[t], P[t], O[t], correction)
            probe.observe(*gate.latest[:2])
        pumping = (probe.features() or {}).get("pumping")
        stats.update(share=gate.share, w=gate.weight(), input_share=gate.input_share, efficiency=gate.efficiency,
                     strength=gate.strength(),
                     smooth=gate.smoothness(), remainder_smooth=gate.remainder_smoothness(), fine=gate.fine_share,
                     pumping=pumping)
        # as NeuralDeflicker.anchor_config
        segment_anchor = (anchor or AnchorConfig()).for_segment(gate.smoothness(), gate.strength(), pumping)
        outputs = anchored(I, [gate.apply(I[t], P[t], M[t].apply(I[t]) if gate.remainder_smoothness() > 0 else None, O[t])
                               for t in range(len(I))], segment_anchor)
        if carry is None:  # as NeuralDeflicker.carry_config
            return outputs
        return carried(I, outputs, carry.for_segment(gate.smoothness(), gate.strength()), stats)
    return run


VARIANTS = {"paper": v_paper, "previous": v_previous, "default": gated(), "processed": gated(GateConfig(weight=1.0)),
            # session 29: --carry-texture (session 18's fifth detail carry, opt-in), with auto and with --kind processed
            "carry-texture": gated(carry=CarryConfig()),
            "processed-carry-texture": gated(GateConfig(weight=1.0), carry=CarryConfig()),
            "physical": gated(GateConfig(weight=0.0)),
            "pixelwise": gated(GateConfig(smooth_blur=0.0)),
            "finegate": gated(GateConfig(fine_side=480, fine_every=4)),  # one pair in four (session 9, not taken: cost)
            "coarsegate": gated(GateConfig(fine_side=0)),  # the default before session 9
            "finegate8": gated(GateConfig(fine_side=480, fine_every=8)),  # today's default (session 9)
            "noanchor": gated(anchor=AnchorConfig.off()),
            "window": gated(anchor=AnchorConfig(fade=False)),
            "lines": gated(anchor=AnchorConfig(physical_lines=True)),
            # session 20: the line anchor where the flicker also changes smoothly from frame to frame
            "lines-pump": gated(anchor=AnchorConfig(physical_lines=True, lines_pumping=(0.3, 0.5))),
            "lines-pump-whole": gated(anchor=AnchorConfig(physical_lines=True, lines_pumping=(0.3, 0.5),
                                                          lines_fade_share=(0.0, 1e-9))),  # the line always whole
            "lines-pump-share": gated(anchor=AnchorConfig(physical_lines=True, lines_pumping=(0.3, 0.5),
                                                          lines_fade_share=(0.35, 0.55))),
            "share03": gated(anchor=AnchorConfig(fade_share=(0.3, 0.6))),
            "processed-noanchor": gated(GateConfig(weight=1.0), anchor=AnchorConfig.off()),
            "nocontrast": gated(anchor=AnchorConfig(contrast_sigma=float("inf"), detail_sigma=float("inf"))),
            "nodetail": gated(anchor=AnchorConfig(detail_sigma=float("inf"))),  # the default before session 13
            "noefficiency": gated(GateConfig(efficient_low=0.0, efficient_high=1e-12)),  # the default before session 14
            "detail-share0.5": gated(anchor=AnchorConfig(detail_share=0.5)),  # half the way (session 15)
            # session 24: a finer first band of detail (the metric's Laplacian weighs the finest detail most)
            "finebands": gated(anchor=AnchorConfig(detail_bands=(0.5 / 270, 1 / 270, 3 / 270))),
            # session 24: the detail part on raw band energies (a level that does not vary: detail_dark large)
            "detail-raw": gated(anchor=AnchorConfig(detail_dark=100.0)),
            "contrast-off": gated(anchor=AnchorConfig(contrast_sigma=float("inf"))),  # the detail part alone
            # session 12's other candidate
            "contrast8": gated(anchor=AnchorConfig(contrast_sigma=8.0, detail_sigma=float("inf"))),
            **{f"blur{s}": gated(projection=ProjectionConfig(residual_blur=s)) for s in (0.005, 0.01, 0.02)},
            **{f"physical-blur{s}": gated(GateConfig(weight=0.0), ProjectionConfig(residual_blur=s))
               for s in (0.005, 0.01, 0.02)}}
"""default: the library's default; processed: `--kind processed`; physical: `--kind timelapse` or
`mains` (the smooth model's part only); pixelwise: the default before session 6 (both remainders
pixel by pixel; rows named "default" before session 6); blurS: the remainder always low-passed
(ProjectionConfig.residual_blur = S); noanchor / processed-noanchor: default / processed without the
slow-look anchor; window: the default before session 8 (the anchor's window means alone, a fade bent
at the shot's ends; the "default" rows of results/*-s7.jsonl and earlier). "fade" rows: session 7's
fade anchor in results/anchor-fade-tune-s7.jsonl; session 8's edge-fade anchor (today's default) in
results/fade-*-s8.jsonl. results/anchor-tune-s7.jsonl also holds "trend32"/"trend48" rows (the anchor's
windows as Gaussian-weighted straight lines, 32 / 48 frames, tried in session 7 and removed), and
results/atlas192-tune-s7.jsonl the default on paper stages fitted with a 256 / 192-pixel atlas. In results/smooth-*-s6.jsonl, "smoothw" rows are today's
default and "smooth" rows the step before it (only the model's remainder low-passed; poststage.py
at 777468f). nocontrast: the default before session 12 (the anchor without its contrast part,
AnchorConfig.contrast_sigma); in results/contrast-tune-s12.jsonl "prototype-contrast*" rows are a first
version applied after the anchor, and results/param-anchor-tune-s12.jsonl holds "param8"/"param16", the
flicker model's parameters' window means given back (tried in session 12, dropped, code removed).
nodetail: the default before session 13 (no detail part, AnchorConfig.detail_sigma inf); in
results/detail-tune-s13.jsonl "detail-v1" rows are a first version (gain sqrt(window mean / own)),
"detail-share1.0" the energy taken all the way to its window mean, "detail-share0.5" today's before the
review (energy measured on the 960-pixel copy, not relative to the mean luma, on/off by the gate's strength).
Session 15 replaced that frame-wide detail part by gains per region and band along the motion: "default"
rows of results/*-s14 and earlier have the frame-wide part (its code is gone; "detail-share1.0" rows of
session 13 too); results/mcdetail-v1-tune-s15.jsonl holds the first library version ("mcdetail-v1": bands
of every channel, exact blurs), and "detail-share0.5" takes the energies half the way.
results/shrink-tune-s22.jsonl holds session 22's "shrink*" rows: the coarse and frame-wide window means
shrunk by their chance level (results/shrink-criteria-s22.md; tried, dropped, code removed)."""


FAMILIES = {"stylize": "texture", "edgepreserve": "texture", "detail": "texture", "denoise": "texture",
            "img2img": "texture", "sharpen": "texture"}


def family(kind: str) -> str:
    """clean, physical, processed (tone/colour) or processed (texture), real."""
    if kind.startswith("processed/"):
        return f"processed ({FAMILIES.get(kind.split('/')[1], 'tone/colour')})"
    return "processed (tone/colour)" if kind == "shared-processed" else kind.split("/")[0]


def summary(rows: list[dict]) -> str:
    """Markdown: per family and method, cases and the means (min) of the benchmark's scores."""
    latest = {(r["case"], r["method"]): r for r in rows}
    groups: dict = {}
    for r in latest.values():
        groups.setdefault((family(r["kind"]), r["method"]), []).append(r)
    lines = ["| family | method | cases | gap closed % (min) | PSNR dB (min) | detail (min) | paper E_warp reduction % |",
             "|---|---|---|---|---|---|---|"]

    def stat(rs, key):
        values = [min(r[key], PSNR_CAP) if key == "psnr" else r[key] for r in rs if r.get(key) is not None]
        return f"{np.mean(values):.2f} ({min(values):.2f})" if values else ""

    for (fam, method), rs in sorted(groups.items()):
        lines.append(f"| {fam} | {method} | {len(rs)} | {stat(rs, 'gap_closed')} | {stat(rs, 'psnr')} | "
                     f"{stat(rs, 'detail')} | {stat(rs, 'paper_reduction')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="tune", choices=("tune", "heldout", "all"))
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines of scores (appended)")
    parser.add_argument("--summary", action="store_true", help="only print the summary of --out")
    parser.add_argument("--refined", metavar="TAG", help="refined frames of other weights (refined.py --tag)")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary([json.loads(line) for line in args.out.read_text().splitlines()]))
        return 0
    cases = [c for c in corpus.select(corpus.load_listing(), args.split, args.cases) if cache_path(c, args.refined).exists()]
    if not cases:
        parser.error(f"no case of the selection has cached refined frames{f' under tag {args.refined}' if args.refined else ''}")
    done = set()
    if args.out.exists():
        done = {(r["case"], r["method"], r.get("refined")) for r in map(json.loads, args.out.read_text().splitlines())}
    for case in cases:
        todo = [v for v in args.variants if (case["name"], v, args.refined) not in done]
        if not todo:
            continue
        files = corpus.build(case)
        I = read_video(files.input)
        O = np.load(cache_path(case, args.refined)).astype(np.float32) / 65535
        evaluator = heldout.case_evaluator(files)
        base = evaluator.score(files.input)
        floor = evaluator.score(files.floor) if files.floor else None
        with tempfile.TemporaryDirectory() as tmp:
            for name in todo:
                stats: dict = {}
                frames = VARIANTS[name](I, O, stats=stats)
                path = Path(tmp) / f"{name}.mkv"
                corpus._write(frames, path)
                row = heldout.relative_scores({"case": case["name"], "kind": case["kind"], "method": name,
                                               **({"refined": args.refined} if args.refined else {}),
                                               **evaluator.score(path), **stats}, base, floor)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(heldout.format_row(row), {k: None if v is None else round(v, 4) for k, v in stats.items()}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
