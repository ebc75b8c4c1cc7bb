"""Command line: parses arguments and calls the library; errors become one line and an exit code."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import warnings
from pathlib import Path

from unflicker import __version__
from unflicker.errors import OutputError, UnflickerError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"unflicker: warning: {message}", file=sys.stderr)


# Subcommands that hand the rest of the command line to a training script's own parser.
DELEGATES = {
    "train-filter": ("unflicker.filter.training", "train the neural filter (see train-filter --help)"),
    "train-refine": ("unflicker.refine.training", "train the local refinement network (see train-refine --help)"),
}


def build_parser() -> argparse.ArgumentParser:
    from unflicker.pipeline import METHODS, PRESETS

    parser = argparse.ArgumentParser(prog="unflicker", description="Remove flicker from a video, blindly.")
    parser.add_argument("--version", action="version", version=f"unflicker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="deflicker a video file or a folder of frames")
    run.add_argument("input", type=Path, help="video file (anything FFmpeg reads) or folder of frames")
    run.add_argument("-o", "--output", type=Path,
                     help="output .mp4 (H.264), .mkv (FFV1 lossless), .mov, or a folder of PNG frames")
    run.add_argument("--method", choices=sorted(METHODS), default=None,
                     help="neural (default: the paper's atlas, filter and refinement) or classical (fast "
                          "statistics matching; also used, with a warning, for frames too small for neural)")
    run.add_argument("--preset", choices=tuple(PRESETS),
                     help="neural: fast (coarser, shorter atlas fit), balanced (default) or paper (MLP atlas, "
                          "the paper's settings; slow on a CPU)")
    run.add_argument("--atlas", choices=("grid", "mlp"),
                     help="neural: atlas backend, overriding the preset's; mlp is the paper's (slow on a CPU)")
    run.add_argument("--atlas-steps", type=int, metavar="N", help="neural: atlas optimisation steps (default: the "
                                                                   "preset's)")
    run.add_argument("--stop-after", choices=("atlas", "filter", "refine"),
                     help="neural: stop after this stage; its frames go to --keep-work DIR, no output is written")
    run.add_argument("--no-projection", dest="projection", action="store_false",
                     help="neural: take the networks' output as it is (the paper's way) instead of projecting "
                          "its correction onto a smooth flicker model, which keeps the input's detail")
    run.add_argument("--keep-slow", type=_frames_or_off, default=None, metavar="FRAMES|off",
                     help="neural: keep the input's own fine-scale changes of look that last longer than about "
                          "this many frames (a Gaussian sigma; default 1; frame-sized changes use at least 8, "
                          "the frame mean at least 16); only faster changes count as flicker. Larger keeps less; "
                          "'off' gives every frame the atlas's look, as the paper does")
    run.add_argument("--strength", type=float, default=1.0, metavar="S",
                     help="apply this fraction (0..1) of the correction; lower keeps more of each frame's own look")
    run.add_argument("--crf", type=int, help="H.264 quality for .mp4/.mov, lower is better (default 16)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument("--keep-work", type=Path, metavar="DIR",
                     help="keep each stage's frames in DIR/<stage>/; rerunning with the same DIR, input and "
                          "settings reuses the finished stages (the fitted atlas, then the filtered and "
                          "refined frames), so a killed run restarts from its last finished stage")
    run.add_argument("--compare", type=Path, metavar="FILE", help="also write a side-by-side input | output video")
    run.add_argument("--plot", type=Path, metavar="FILE.png",
                     help="also write a plot of mean brightness per channel over time, input vs output")
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
    demo.add_argument("--method", choices=sorted(METHODS), default=None, help="default: neural")

    serve = commands.add_parser("serve", help="open a local web page for deflickering (needs unflicker[web])")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 opens the page "
                            "to your network, with a warning)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    serve.add_argument("--auth", metavar="USER:PASSWORD", help="ask the browser for this login")
    serve.add_argument("--work-dir", type=Path, metavar="DIR",
                       help="folder for uploads and results (default: a new temporary folder, removed on exit)")
    serve.add_argument("--max-upload-mb", type=float, default=2000.0, metavar="MB", help="largest upload (2000)")
    serve.add_argument("--max-seconds", type=float, default=600.0, metavar="S", help="longest video (600 s)")
    serve.add_argument("--keep", type=int, default=40, metavar="N",
                       help="finished uploads and jobs kept in the work folder, oldest removed first (40)")

    for name, (_, text) in DELEGATES.items():
        commands.add_parser(name, help=text, add_help=False)  # parsed by the training script itself
    return parser


def _frames_or_off(text: str) -> float:
    if text.strip().lower() == "off":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of frames or 'off', got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number of frames or 'off', got {text!r}")
    return value


def _run(args) -> int:
    from unflicker.pipeline import RunConfig, deflicker_file

    if args.output is None and args.stop_after is None:
        raise OutputError("give an output with -o (only --stop-after runs without one)")
    config = RunConfig(method=args.method, preset=args.preset, atlas=args.atlas, atlas_steps=args.atlas_steps,
                       stop_after=args.stop_after, projection=args.projection, keep_slow=args.keep_slow,
                       strength=args.strength, overwrite=args.overwrite, keep_work=args.keep_work,
                       compare=args.compare, plot=args.plot, progress=not args.quiet,
                       **({} if args.crf is None else {"crf": args.crf}))
    summary = deflicker_file(args.input, args.output, config)
    for extra in summary.extras:
        print(f"wrote {extra}")
    print(summary.line())
    return 0


def _delegate(command: str, argv: list[str]) -> int:
    """Run a training script's main(argv); a missing optional module is one line, not a traceback."""
    module_name = DELEGATES[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # something the module itself imports is missing: a real bug, keep its traceback
        raise UnflickerError(f"{command} is not available in this installation ({module_name} is missing)") from None
    entry = getattr(module, "main", None)
    if entry is None:
        raise UnflickerError(f"{command} is not available: {module_name} has no main(argv)")
    return int(entry(argv) or 0)


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


def _serve(args) -> int:
    from unflicker.web.server import serve
    from unflicker.web.store import Limits

    limits = Limits(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, keep_items=args.keep)
    serve(args.host, args.port, args.auth, args.work_dir, limits)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.showwarning = _show_warning
    if argv and argv[0] in DELEGATES:
        # Not through argparse: it would claim options such as --help meant for the script.
        handler, args = (lambda rest: _delegate(argv[0], rest)), argv[1:]
    else:
        args = build_parser().parse_args(argv)
        handler = {"run": _run, "eval": _eval, "info": _info, "demo": _demo, "serve": _serve}[args.command]
    try:
        return handler(args)
    except UnflickerError as exc:
        print(f"unflicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("unflicker: interrupted; no partial output was left", file=sys.stderr)
        return 130
