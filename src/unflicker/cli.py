"""Command line: parses arguments and calls the library; errors become one line and an exit code."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

from unflicker import __version__
from unflicker.errors import OutputError, Terminated, UnflickerError, sigterm_as_interrupt


def _one_line(text: object) -> str:
    """A message on one line: a line break in it (a file name may hold one) is written as \\n."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"unflicker: warning: {_one_line(message)}", file=sys.stderr)


# Subcommands that hand the rest of the command line to a training script's own parser.
DELEGATES = {
    "train-filter": ("unflicker.filter.training", "train the neural filter (see train-filter --help)"),
    "train-refine": ("unflicker.refine.training", "train the local refinement network (see train-refine --help)"),
}


def _engine_options(parser: argparse.ArgumentParser) -> None:
    from unflicker.config import ENGINES
    from unflicker.segments import SegmentConfig

    group = parser.add_argument_group("engine")
    group.add_argument("--workers", type=int, metavar="N",
                       help="segments processed at once (default: the machine's cores, fewer where the free memory holds "
                            "fewer for the video's frame size, said in a warning; 1: in this process; "
                            "with --engine ray: the cluster's CPUs)")
    group.add_argument("--threads", type=int, default=1, metavar="N",
                       help="torch/OpenCV threads per worker (default 1; outputs are bit-identical for any "
                            "--workers and engine at the same value)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="local: a process pool on this machine (default); ray: Ray tasks")
    group.add_argument("--ray-address", metavar="ADDR",
                       help="ray: an existing cluster (HOST:6379 or auto); default: a local Ray for this run")
    group.add_argument("--shared-dir", type=Path, metavar="DIR",
                       help="ray: a folder every node reads and writes; frames and results go through it "
                            "(default: Ray's object store)")
    group.add_argument("--segment-frames", type=int, default=SegmentConfig.frames, metavar="N",
                       help=f"longest segment core in frames (default {SegmentConfig.frames}); part of what the "
                            "output depends on")


def _method_options(parser: argparse.ArgumentParser) -> None:
    from unflicker.config import KINDS, METHOD_NAMES, PRECISIONS, PRESETS

    parser.add_argument("--method", choices=METHOD_NAMES, default=None,
                        help="neural (default: the paper's atlas, filter and refinement) or classical (fast "
                             "statistics matching; also used, with a warning, for frames too small for neural)")
    parser.add_argument("--preset", choices=tuple(PRESETS),
                        help="neural: fast (coarser, shorter atlas fit), balanced (default) or paper (MLP atlas, "
                             "the paper's settings; slow on a CPU)")
    parser.add_argument("--atlas", choices=("grid", "mlp"),
                        help="neural: atlas backend, overriding the preset's; mlp is the paper's (slow on a CPU)")
    parser.add_argument("--atlas-steps", type=int, metavar="N",
                        help="neural: atlas optimisation steps (default: the preset's)")
    parser.add_argument("--no-projection", dest="projection", action="store_false",
                        help="neural: take the networks' output as it is (the paper's way) instead of projecting "
                             "its correction onto a smooth flicker model, which keeps the input's detail")
    parser.add_argument("--keep-slow", type=_frames_or_off, default=None, metavar="FRAMES|off",
                        help="neural: keep the input's own fine-scale changes of look that last longer than about "
                             "this many frames (a Gaussian sigma; default 1; frame-sized changes use at least 8, "
                             "the frame mean at least 16); only faster changes count as flicker. Larger keeps "
                             "less; 'off' gives every frame the atlas's look, as the paper does")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="neural: what flickers. auto (default) measures per segment whether the networks' "
                             "texture-level correction removes flicker; processed (frames processed one by one: "
                             "stylized, enhanced, AI) takes all of it; film, timelapse, mains take only the "
                             "smooth flicker model's correction (film: also the atlas's look across a segment, "
                             "so slow pumping goes too)")
    parser.add_argument("--carry-texture", action="store_true",
                        help="neural: also carry the finest texture along the motion, for frames processed one by "
                             "one that draw their texture afresh (img2img and the like); it also evens out sensor "
                             "noise and film grain")
    parser.add_argument("--filter-weights", type=Path, metavar="FILE",
                        help="neural: the filter's weights (.safetensors with its .json beside it, e.g. from "
                             "`unflicker train-filter`); default: the shipped ones")
    parser.add_argument("--refine-weights", type=Path, metavar="FILE",
                        help="neural: the local refinement's weights; default: the shipped ones")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="neural: the networks' convolutions in float32 or bfloat16 (outputs within a fraction of "
                             "an 8-bit level); auto (default): bf16 where the CPU has bf16 instructions "
                             "(AVX512-BF16, AMX), where it is faster, else fp32")
    parser.add_argument("--strength", type=float, default=1.0, metavar="S",
                        help="apply this fraction (0..1) of the correction; lower keeps more of each frame's own "
                             "look")
    parser.add_argument("--crf", type=int, help="H.264 quality for .mp4/.mov, lower is better (default 16)")
    parser.add_argument("--codec", choices=("h264", "hevc", "prores", "ffv1"),
                        help="output video codec (default: by extension and the input's depth, see README)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 10, 12, 16),
                        help="output bits per sample (default: the input's, as far as the codec holds it; most "
                             "browsers and many players do not play 10-bit H.264: 8 bits at an even frame size play "
                             "nearly everywhere)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--keep-work", type=Path, metavar="DIR",
                        help="keep the work folder: finished segments persist in DIR, so the same command, "
                             "killed at any moment and run again, only runs the unfinished segments (also after "
                             "success: a rerun with other output options reuses them; delete DIR when done)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (argparse prints its usage first), as every other error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, but an unknown option after a command (`run --strenght`) is named by that command's
        parser, whose --help lists its options, rather than by the top-level one."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = [action for action in self._actions if isinstance(action, argparse._SubParsersAction)]
            command = getattr(parsed, "command", None)
            parser = commands[0].choices.get(command, self) if commands and command else self
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _print_message(self, message: str, file=None) -> None:
        """argparse's, which drops a failed write: `--help` to a full disk said nothing and exited 0."""
        if not message:
            return
        file = file or sys.stderr
        try:
            file.write(message)
            file.flush()
        except BrokenPipeError:  # `--help | head -1`: quietly, as Unix tools do
            _drop_stdout()
            raise SystemExit(141) from None
        except OSError as exc:
            if file is not sys.stdout:
                return  # standard error itself: nowhere left to say it
            _drop_stdout()
            self.exit(3, f"{self.prog}: error: cannot write to standard output: {exc.strerror or exc}\n")


def build_parser() -> argparse.ArgumentParser:
    from unflicker.config import METHOD_NAMES

    parser = OneLineParser(prog="unflicker", description="Remove flicker from a video, blindly.")
    parser.add_argument("--version", action="version", version=f"unflicker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(keep_work=None)  # every command's args have it: None where it takes no --keep-work

    run = commands.add_parser("run", help="deflicker a video file or a folder of frames")
    run.add_argument("input", type=Path, help="video file (anything FFmpeg reads) or folder of frames")
    run.add_argument("-o", "--output", type=Path,
                     help="output .mp4 (H.264), .mkv (FFV1 lossless), .mov, or a folder of PNG frames")
    _method_options(run)
    run.add_argument("--stop-after", choices=("atlas", "filter", "refine"),
                     help="neural: stop after this stage; its frames go to --keep-work DIR/<stage>/, no output "
                          "is written")
    run.add_argument("--compare", type=Path, metavar="FILE", help="also write a side-by-side input | output video")
    run.add_argument("--plot", type=Path, metavar="FILE.png",
                     help="also write a plot of mean brightness per channel over time, input vs output")
    _engine_options(run)

    batch = commands.add_parser("batch", help="deflicker every video and frame folder under a folder (or listed "
                                              "in a text file) on one queue, with a CSV/JSON summary")
    batch.add_argument("input", type=Path, help="folder (searched recursively) or text file with one path per line")
    batch.add_argument("-o", "--output", type=Path, required=True,
                       help="output folder: outputs mirror the input names; finished ones are skipped on rerun")
    _method_options(batch)
    _engine_options(batch)

    evaluate = commands.add_parser("eval", help="score a result: warping error, flicker index, PSNR/SSIM")
    evaluate.add_argument("result", type=Path, help="deflickered video or frame folder")
    evaluate.add_argument("--reference", type=Path, required=True,
                          help="sequence the optical flow is computed on (the clean original if any, else the input)")
    evaluate.add_argument("--ground-truth", type=Path, help="flicker-free ground truth for PSNR/SSIM")
    evaluate.add_argument("--long-term", type=int, default=5, metavar="K", help="also compare frame t with t+K")
    evaluate.add_argument("--max-side", type=int, default=480,
                          help="compute the warping errors and detail at this longer side (default 480; PSNR, SSIM "
                               "and the flicker index at full size)")
    evaluate.add_argument("--json", action="store_true",
                          help="print JSON instead of text (an infinite score, the PSNR of identical frames, is null)")

    info = commands.add_parser("info", help="describe a video or frame folder")
    info.add_argument("input", type=Path)

    demo = commands.add_parser("demo", help="make a flickering clip from bundled photos and deflicker it")
    demo.add_argument("--out-dir", type=Path, default=Path("demo"))
    demo.add_argument("--frames", type=int, default=48)
    demo.add_argument("--method", choices=METHOD_NAMES, default=None, help="default: neural")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the input.mp4, output.mp4 and compare.mp4 of an earlier demo in --out-dir")

    serve = commands.add_parser("serve", help="open a local web page for deflickering (needs unflicker[web])")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this computer only; 0.0.0.0 opens the page "
                            "to your network, with a warning)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    serve.add_argument("--auth", metavar="USER:PASSWORD", help="ask the browser for this login")
    serve.add_argument("--work-dir", type=Path, metavar="DIR",
                       help="folder for uploads and results, which are removed on exit (default: a new "
                            "temporary folder)")
    serve.add_argument("--max-upload-mb", type=float, default=2000.0, metavar="MB", help="largest upload (2000)")
    serve.add_argument("--max-seconds", type=float, default=600.0, metavar="S", help="longest video (600 s)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="segments of a job processed at once (default: the machine's cores, fewer where the free "
                            "memory holds fewer; 1: in the job's own process); jobs run one at a time")
    serve.add_argument("--threads", type=int, default=1, metavar="N",
                       help="torch/OpenCV threads per worker (default 1)")
    serve.add_argument("--keep", type=int, default=40, metavar="N",  # 5: web.store.KEEP_TOTAL_SESSIONS
                       help="finished uploads and jobs each browser session keeps, its oldest removed first, so "
                            "one busy session does not remove another's (40); the work folder keeps at most 5 "
                            "times N in all, removing the oldest of any session first, and none older than 24 "
                            "hours. A running job and the video it works on are never removed")

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


def _config(args, **extra):
    from unflicker.config import EngineConfig, RunConfig
    from unflicker.segments import SegmentConfig

    engine = EngineConfig(engine=args.engine, workers=args.workers, threads=args.threads,
                          ray_address=args.ray_address, shared_dir=args.shared_dir)
    return RunConfig(method=args.method, preset=args.preset, atlas=args.atlas, atlas_steps=args.atlas_steps,
                     projection=args.projection, keep_slow=args.keep_slow, kind=args.kind,
                     carry_texture=args.carry_texture, strength=args.strength,
                     filter_weights=args.filter_weights, refine_weights=args.refine_weights, precision=args.precision,
                     overwrite=args.overwrite, keep_work=args.keep_work, progress=not args.quiet,
                     codec=args.codec, bit_depth=args.bit_depth,
                     segments=SegmentConfig(frames=args.segment_frames), engine=engine,
                     **({} if args.crf is None else {"crf": args.crf}), **extra)


def _run(args) -> int:
    from unflicker.pipeline import deflicker_file

    if args.output is None and args.stop_after is None:
        raise OutputError("give an output with -o (only --stop-after runs without one)")
    config = _config(args, stop_after=args.stop_after, compare=args.compare, plot=args.plot)
    summary = deflicker_file(args.input, args.output, config)
    for extra in summary.extras:
        print(f"wrote {extra}")
    print(summary.line())
    return 0


def _batch(args) -> int:
    from unflicker.batch import SUMMARY_NAME, check_out_dir, run_batch
    from unflicker.pipeline import kept_note
    from unflicker.resume import folder_bytes

    check_out_dir(args.output)
    rows = run_batch(args.input, args.output, _config(args))
    failed = [row for row in rows if row.status == "failed"]
    for row in failed:
        print(_one_line(f"unflicker: failed: {row.input}: {row.error}"), file=sys.stderr)
    counts = {status: sum(row.status == status for row in rows) for status in ("done", "skipped", "failed")}
    kept = kept_note(args.keep_work, folder_bytes(args.keep_work)) \
        if args.keep_work is not None and args.keep_work.is_dir() else ""
    print(f"batch: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; summary in "
          f"{args.output / SUMMARY_NAME}.csv and .json{kept}")
    return 1 if failed else 0


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
    from unflicker.evaluation import evaluate, evaluate_against_reference, format_report

    options = dict(long_term=args.long_term, max_side=args.max_side)
    if args.json:  # JSON has no Infinity: a score that is not finite (PSNR of identical frames) is null, as one
        report = evaluate(args.result, args.reference, args.ground_truth, **options)  # not given (None)
        print(json.dumps({key: value if value is not None and math.isfinite(value) else None
                          for key, value in report.items()}, indent=2))
    else:  # beside each score the reference's own: the before and after
        print(format_report(*evaluate_against_reference(args.result, args.reference, args.ground_truth, **options)))
    return 0


def _info(args) -> int:
    from unflicker.io import probe

    print(probe(args.input).describe())
    return 0


def _demo(args) -> int:
    from unflicker.demo import run_demo

    for line in run_demo(args.out_dir, n_frames=args.frames, method=args.method, overwrite=args.overwrite):
        print(line)
    return 0


def _serve(args) -> int:
    from unflicker.config import EngineConfig
    from unflicker.web.server import serve
    from unflicker.web.store import KEEP_TOTAL_SESSIONS, Limits

    limits = Limits(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, keep_items=args.keep,
                    keep_total=KEEP_TOTAL_SESSIONS * args.keep)
    serve(args.host, args.port, args.auth, args.work_dir, limits,
          engine=EngineConfig(workers=args.workers, threads=args.threads))
    return 0


class _StdoutFailed(OutputError):
    """Standard output refused a write (a full disk, /dev/full): the command's lines cannot be given."""


class _Stdout:
    """sys.stdout while a command runs: a write or flush that fails (other than a reader gone, handled apart)
    is one `_StdoutFailed` line, not a traceback from wherever the command printed."""

    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _StdoutFailed(f"cannot write to standard output: {exc.strerror or exc}") from None

    def write(self, text):
        return self._guarded(self._stream.write, text)

    def flush(self):
        return self._guarded(self._stream.flush)

    def __getattr__(self, name):  # fileno, isatty, encoding...: the stream's own
        return getattr(self._stream, name)


def _open_standard_streams() -> None:
    """A standard stream closed by the caller (`>&-`) reads as /dev/null: else the next file opened takes its
    number, and whatever writes to it (a library, a worker) writes into that file."""
    for fd in (0, 1, 2):  # in order: os.open takes the lowest free number
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def _drop_stdout() -> None:
    """Standard output from here to the exit goes to /dev/null, so the exit's flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _open_standard_streams()
    warnings.showwarning = _show_warning
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv and argv[0] in DELEGATES:
        # Not through argparse: it would claim options such as --help meant for the script.
        handler, args, keep_work, listed = (lambda rest: _delegate(argv[0], rest)), argv[1:], None, None
    else:
        args = build_parser().parse_args(argv)
        handler = {"run": _run, "batch": _batch, "eval": _eval, "info": _info, "demo": _demo,
                   "serve": _serve}[args.command]
        keep_work = args.keep_work
        listed = None
        if args.command == "batch":
            from unflicker.batch import SUMMARY_NAME

            listed = args.output / f"{SUMMARY_NAME}.csv"
        if args.command in ("run", "batch", "demo"):
            from unflicker.segments import own_process

            own_process()  # before the first frame is decoded: this process decodes, stitches and encodes
    import cv2

    # OpenCV's own log lines (a corrupt PNG's libpng complaint) would come before our one-line error,
    # which names the file.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        # Each command shows each of its warnings: the library's are the caller's (errors.warn), so a second
        # command in one process (a test, a script calling main) would find them shown already at that line.
        with sigterm_as_interrupt(), warnings.catch_warnings():
            code = handler(args)
        sys.stdout.flush()  # a reader gone (below) shows here rather than at the exit
        return code
    except _StdoutFailed as exc:
        _drop_stdout()
        print(f"unflicker: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except UnflickerError as exc:
        print(f"unflicker: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print(f"unflicker: terminated; {_stopped(keep_work, listed)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"unflicker: interrupted; {_stopped(keep_work, listed)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # another pipe: a real error
        # What reads our output has gone (`| head`): stop quietly, as Unix tools do.
        _drop_stdout()
        return 141
    finally:
        sys.stdout = stdout


def _stopped(keep_work: Path | None, listed: Path | None = None) -> str:
    """What a stopped command left: no partial output; a batch's finished outputs, listed in its summary
    `listed`; with --keep-work DIR the segments a rerun reuses."""
    # A batch stopped before it wrote its summary (while it looked for its inputs), or before any input
    # finished, has none to point to.
    finished = 0
    if listed is not None and listed.is_file():
        from unflicker.batch import finished_outputs

        finished = finished_outputs(listed.parent)
    kept = [f"{finished} finished output{'s' if finished > 1 else ''} stay{'s' if finished == 1 else ''}, "
            f"listed in {listed}"] if finished else []
    if keep_work:
        kept.append(f"finished segments stay in {keep_work}")
    return "; ".join(["no partial output was left", *kept]) + (": the same command runs only the rest" if kept else "")


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has closed it (POSIX poll reports POLLERR)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor
        return False
