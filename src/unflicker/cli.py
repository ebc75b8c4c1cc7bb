"""Command line: parses arguments and calls the library; errors become one line and an exit code."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from unflicker import __version__
from unflicker.errors import OutputError, UnflickerError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"unflicker: warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from unflicker.pipeline import METHODS

    parser = argparse.ArgumentParser(prog="unflicker", description="Remove flicker from a video, blindly.")
    parser.add_argument("--version", action="version", version=f"unflicker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="deflicker a video file or a folder of frames")
    run.add_argument("input", type=Path, help="video file (anything FFmpeg reads) or folder of frames")
    run.add_argument("-o", "--output", type=Path,
                     help="output .mp4 (H.264), .mkv (FFV1 lossless), .mov, or a folder of PNG frames")
    run.add_argument("--method", choices=sorted(METHODS), default="classical",
                     help="classical (fast statistics matching) or neural (atlas + filter, the paper's method)")
    run.add_argument("--atlas", choices=("grid", "mlp"), default="grid",
                     help="neural: atlas backend; mlp is the paper's (slow on a CPU)")
    run.add_argument("--stop-after", choices=("atlas", "filter"),
                     help="neural: stop after this stage; its frames go to --keep-work DIR, no output is written")
    run.add_argument("--crf", type=int, default=18, help="H.264 quality for .mp4/.mov (default 18)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument("--keep-work", type=Path, metavar="DIR", help="keep each stage's frames in DIR/<stage>/")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("eval", help="score a result: warping error, flicker index, PSNR/SSIM")
    evaluate.add_argument("result", type=Path, help="deflickered video or frame folder")
    evaluate.add_argument("--reference", type=Path, required=True,
                          help="sequence the optical flow is computed on (the clean original if any, else the input)")
    evaluate.add_argument("--ground-truth", type=Path, help="flicker-free ground truth for PSNR/SSIM")
    evaluate.add_argument("--long-term", type=int, default=5, metavar="K", help="also compare frame t with t+K")
    evaluate.add_argument("--max-side", type=int, default=480, help="score at this longer side (default 480)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")

    info = commands.add_parser("info", help="describe a video or frame folder")
    info.add_argument("input", type=Path)

    demo = commands.add_parser("demo", help="make a flickering clip from bundled photos and deflicker it")
    demo.add_argument("--out-dir", type=Path, default=Path("demo"))
    demo.add_argument("--frames", type=int, default=48)
    demo.add_argument("--method", choices=sorted(METHODS), default="classical")
    return parser


def _run(args) -> int:
    from unflicker.pipeline import RunConfig, deflicker_file

    if args.output is None and args.stop_after is None:
        raise OutputError("give an output with -o (only --stop-after runs without one)")
    config = RunConfig(method=args.method, atlas=args.atlas, stop_after=args.stop_after, crf=args.crf,
                       overwrite=args.overwrite, keep_work=args.keep_work, progress=not args.quiet)
    print(deflicker_file(args.input, args.output, config).line())
    return 0


def _eval(args) -> int:
    from unflicker.evaluation import evaluate, format_report

    report = evaluate(args.result, args.reference, args.ground_truth, long_term=args.long_term,
                      max_side=args.max_side)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _info(args) -> int:
    from unflicker.io import probe

    print(probe(args.input).describe())
    return 0


def _demo(args) -> int:
    from unflicker.demo import run_demo

    for line in run_demo(args.out_dir, n_frames=args.frames, method=args.method):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    handler = {"run": _run, "eval": _eval, "info": _info, "demo": _demo}[args.command]
    try:
        return handler(args)
    except UnflickerError as exc:
        print(f"unflicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("unflicker: interrupted; no partial output was left", file=sys.stderr)
        return 130
