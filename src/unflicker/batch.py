"""`unflicker batch`: every video and frame folder under a folder (or named in a text file), with
the segments of all of them on one engine queue, and a summary (CSV and JSON) of how each went.

Outputs mirror the inputs' relative paths under the output folder (videos keep their extension;
frame folders stay folders). A finished output is skipped on a rerun; one bad input gets its
one-line error in the summary and does not stop the others.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io as _io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from unflicker import bars, io
from unflicker.config import RunConfig
from unflicker.errors import InputError, OutputError, UnflickerError, warn
from unflicker.io.common import holding, writable_folder
from unflicker.pipeline import Job

SUMMARY_NAME = "unflicker-batch"
"""The summary files: OUT_DIR/unflicker-batch.csv and .json."""


@dataclass
class BatchItem:
    input: str
    output: str
    status: str
    """'done', 'skipped' (output already there), 'failed' or 'interrupted' (the batch was stopped first); 'pending'
    in the summary written after each input while the batch runs (and left so by a batch killed outright)."""
    frames: int = 0
    seconds: float = 0.0
    flicker_before: float | None = None
    flicker_after: float | None = None
    kind: str = ""
    """What flickered, as the neural method treated it (RunSummary.kind)."""
    segments: int = 0
    reused: int = 0
    """Of the segments, those a resumed batch (--keep-work) took from the work folder."""
    error: str = ""


def _is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in io.IMAGE_EXTENSIONS for p in path.iterdir() if p.is_file())


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the disk, a NUL
        return False


def find_inputs(source: Path, skip: Iterable[Path] = ()) -> list[tuple[Path, Path]]:
    """(input, its path relative to the batch root) for every video and frame folder in `source`
    (a folder, searched recursively, leaving out the folders `skip` (resolved: the outputs, the work folder)
    that lie inside and any
    folder holding another batch's summary;
    or a text file with one path per line)."""
    source = Path(source)
    if source.is_file():
        with open(source, "rb") as file:
            data = file.read(8192)
            if b"\0" in data:  # a video, an image: sniffed before the whole file is read
                raise InputError(f"{source} is not a folder or a text file listing one input per line "
                                 "(to deflicker one video, use `unflicker run`)")
            data += file.read()
        # Names that are not UTF-8 (Latin-1 lists) kept as the bytes they are, as Python's os does.
        text = data.decode("utf-8-sig", "surrogateescape")
        lines = [line.strip() for line in text.splitlines()]
        paths = [Path(line) if Path(line).is_absolute() else source.parent / line
                 for line in lines if line and not line.startswith("#")]
        if paths and not any(map(_exists, paths)):  # prose, a log, a list written on another machine
            first = next(line for line in lines if line and not line.startswith("#"))
            # (lines relative to the working folder, as `find clips > lists/todo.txt` writes, are not read so)
            where = f", read from the list's folder {source.parent}" if not Path(first).is_absolute() and \
                source.parent.resolve() != Path.cwd().resolve() else ""
            raise InputError(f"{source} lists no file or folder that is here (its first input line: "
                             f"{first[:80]!r}{where}): give a folder, or a text file with one input path per line")
        return [(p, _listed_name(p, source.parent)) for p in paths]
    if not source.is_dir():
        raise InputError(f"{source} is neither a folder nor a list file")
    found = []

    def walk(folder: Path) -> Iterator[Path]:
        for path in sorted(folder.iterdir(), key=lambda p: io.natural_key(p.name)):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                if path.resolve() in skip:
                    continue  # the batch's own outputs and work files: never inputs of a rerun
                if (path / f"{SUMMARY_NAME}.json").is_file():  # nor another batch's (other settings, same inputs)
                    warn(f"left out {path}: another batch's outputs (its {SUMMARY_NAME}.json is there); "
                         "give it as the input to take them")
                    continue
                if _is_frame_folder(path):
                    yield path
                else:
                    yield from walk(path)
            elif path.suffix.lower() not in io.IMAGE_EXTENSIONS and path.suffix.lower() not in (".txt", ".csv", ".json"):
                yield path  # anything else is tried as a video; what FFmpeg cannot read fails alone

    for path in walk(source):
        found.append((path, path.relative_to(source)))
    return found


def _listed_name(path: Path, root: Path) -> Path:
    """A listed input's output name: its path relative to the list's folder `root` as listed (a link keeps its own
    name, as in a folder; not its target's), else as resolved (the folder reached through another path), else
    its name alone."""
    listed, folder = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if listed.is_relative_to(folder):
        return listed.relative_to(folder)
    resolved, folder = Path(os.path.realpath(listed.parent)) / listed.name, root.resolve()
    return resolved.relative_to(folder) if resolved.is_relative_to(folder) else Path(path.name)


def _earlier_rows(out_dir: Path) -> dict[tuple[str, str], dict]:
    """The last summary's rows in out_dir by (input, output), each with the summary's time: what a rerun
    skips keeps its figures if its output has not changed since."""
    path = out_dir / f"{SUMMARY_NAME}.json"
    try:
        written = path.stat().st_mtime
        rows = json.loads(path.read_text())
        return {(row["input"], row["output"]): {**row, "summary_time": written}
                for row in rows if isinstance(row, dict)}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def finished_outputs(out_dir: Path) -> int:
    """How many outputs the last summary in out_dir lists as finished (done, or skipped as done before)."""
    return sum(row.get("status") in ("done", "skipped") for row in _earlier_rows(out_dir).values())


def _keep_earlier(item: BatchItem, row: dict | None) -> None:
    """A skipped item takes the figures of the run that made its output (the last summary's row, done there
    or skipped with them already), not zeros; not if the output is newer than that summary (replaced since,
    by a batch that did not finish or by `unflicker run --overwrite`: the figures would be another run's)."""
    if row is None or row.get("status") not in ("done", "skipped"):
        return
    try:
        if Path(item.output).stat().st_mtime > row["summary_time"]:
            return
    except OSError:
        return
    for name in ("frames", "seconds", "flicker_before", "flicker_after", "kind", "segments", "reused"):
        # (a summary written before the JSON took the CSV's names has the field's own)
        for key in (SUMMARY_KEYS.get(name, name), name):
            if key in row:
                setattr(item, name, row[key])
                break


def run_batch(source: Path, out_dir: Path, config: RunConfig | None = None) -> list[BatchItem]:
    """Deflicker every input of `source` into `out_dir`; write the summary; return its rows."""
    config = config or RunConfig()
    if config.compare or config.plot or config.stop_after:
        raise InputError("--compare, --plot and --stop-after apply to `unflicker run` only")
    config.check()
    out_dir = Path(out_dir)
    # The batch's own folders: the input folder itself is refused (a work folder's jobs/ would be scanned as
    # inputs by a rerun); inside it they are left out of the scan.
    own = {"output": out_dir} if config.keep_work is None else {"output": out_dir, "work": Path(config.keep_work)}
    for what, folder in own.items():
        if Path(source).is_dir() and Path(source).resolve() == folder.resolve():
            raise OutputError(f"the {what} folder {folder} is the input folder: choose another")
    inputs = find_inputs(source, skip={folder.resolve() for folder in own.values()})
    if not inputs:
        raise InputError(f"no videos or frame folders in {source}")
    writable_folder(out_dir, "the output folder")  # its summary is written there too
    # One batch per output folder: two would each redo the other's inputs and report its outputs as failed.
    with holding(out_dir, f"another batch is writing into {out_dir}: wait for it to end, or choose another "
                          f"output folder"):
        return _run_batch(inputs, out_dir, config)


def _changed_since(source: Path, output: Path) -> bool:
    """Whether the input was modified after its output was written (a file's, or a folder's newest entry's)."""
    try:
        if source.is_dir():  # its frames: not a file browser's or a note beside them
            newest = max((e.stat().st_mtime_ns for e in os.scandir(source) if e.is_file() and not e.name.startswith(".")
                          and Path(e.name).suffix.lower() in io.IMAGE_EXTENSIONS), default=0)
        else:
            newest = source.stat().st_mtime_ns
        return newest > output.stat().st_mtime_ns
    except OSError:
        return False


def _run_batch(inputs: list, out_dir: Path, config: RunConfig) -> list[BatchItem]:
    from unflicker.engine import run_jobs

    items = {i: BatchItem(str(path), str(out_dir / relative), "pending") for i, (path, relative) in enumerate(inputs)}
    earlier = _earlier_rows(out_dir)
    jobs = []
    taken: dict[Path, Path] = {}
    made: list[Path] = []  # the outputs' folders this batch creates: those left empty go again
    bar = None
    try:  # stopped anywhere from here (Ctrl-C, kill, a lost Ray cluster): the summary, no empty folder left
        for i, (path, relative) in enumerate(inputs):
            output, item = out_dir / relative, items[i]
            if output in taken:
                item.status, item.error = "failed", f"same output name as {taken[output]}"
                continue
            taken[output] = path
            try:
                same, exists = output.resolve() == Path(path).resolve(), output.exists()
            except OSError as exc:  # a name too long for the disk (a list's line that is no path)
                item.status, item.error = "failed", f"cannot use the output {output}: {exc.strerror or exc}"
                continue
            if same:
                item.status, item.error = "failed", "the output would be the input: choose another output folder"
                continue
            if exists and not config.overwrite:
                if _changed_since(Path(path), output):
                    item.status, item.error = "failed", "the input changed after its output was written: pass " \
                                                        "--overwrite to redo it"
                    continue
                item.status = "skipped"
                _keep_earlier(item, earlier.get((item.input, item.output)))
                continue
            made += [folder for folder in (output.parent, *output.parent.parents) if not folder.exists()]
            try:
                output.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file of that name there (out/sub for sub/a.mp4), no permission
                item.status, item.error = "failed", f"cannot make the folder {output.parent}: {exc.strerror or exc}"
                continue
            job = Job(path, output, dataclasses.replace(config, progress=False),
                      watch=lambda frames: bar.update(frames))
            job.batch_index = i
            jobs.append(job)
        # One bar for the whole batch, in frames (each job's own bars are off): its total from every input's
        # header now (io.frame_estimate: no demux; a job's own count corrects it when it ends; an input that
        # cannot be read counts none: it fails when its turn comes).
        expected = {job.batch_index: io.frame_estimate(job.input_path) for job in jobs} if config.progress else {}
        bar = bars.bar(total=sum(expected.values()), desc="batch", unit="frame", disable=not config.progress,
                       leave=False, dynamic_ncols=True)

        def finished(job: Job) -> None:
            item = items[job.batch_index]
            missing = expected.get(job.batch_index, 0) - job.frames_done
            if missing:  # the total takes the job's own count (an estimate off; a failed job's rest never comes)
                bar.total -= missing
                bar.refresh()
            if job.error is not None:
                item.status, item.error = "failed", str(job.error)
            else:
                done(job, item)
            # The summary so far, after each input: a batch killed outright (kill -9, power loss) writes none at
            # its end, and a rerun skips the outputs it finished with the figures listed here. The rest are
            # 'pending' in it until the end; a full disk here is the final summary's to report.
            with contextlib.suppress(OutputError):
                write_summary(out_dir, [items[i] for i in sorted(items)])

        def done(job: Job, item: BatchItem) -> None:
            summary = job.summary
            item.status, item.frames, item.seconds = "done", summary.frames, round(summary.seconds, 3)
            item.flicker_before, item.flicker_after = summary.flicker_before, summary.flicker_after
            item.kind = summary.kind or ""
            item.segments, item.reused = summary.segments, summary.reused
            if config.progress:
                bar.write(f"{job.name}: {summary.line()}", file=sys.stdout)  # above the bar, not through it

        run_jobs(jobs, config.engine, finished)
    except (KeyboardInterrupt, UnflickerError) as exc:  # Ctrl-C, kill, a lost Ray cluster: the summary lists
        for item in items.values():                      # what finished, so a rerun keeps its figures
            if item.status == "pending":
                item.status, item.error = ("interrupted", "") if isinstance(exc, KeyboardInterrupt) else \
                    ("failed", str(exc))
        with contextlib.suppress(OSError):  # the interrupt, not a full disk, is what the user sees
            write_summary(out_dir, [items[i] for i in sorted(items)])
        raise
    finally:
        if bar is not None:
            bar.close()
        for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):  # not empty: an output (or another's file) is in it
                folder.rmdir()
    rows = [items[i] for i in sorted(items)]
    write_summary(out_dir, rows, config.overwrite)
    return rows


SUMMARY_KEYS = {"flicker_before": "flicker_index_before", "flicker_after": "flicker_index_after"}
"""The summary's names (CSV columns and JSON keys alike) of BatchItem fields that differ: the flicker index as
`unflicker eval --json` gives it (raw, not the x1e-3 figures the terminal shows)."""


def write_summary(out_dir: Path, rows: list[BatchItem], overwrite: bool = True) -> tuple[Path, Path]:
    records = [{SUMMARY_KEYS.get(name, name): value for name, value in dataclasses.asdict(row).items()}
               for row in rows]
    text = _io.StringIO()
    writer = csv.writer(text)
    writer.writerow(records[0])
    writer.writerows(record.values() for record in records)
    # Names that are not UTF-8 go back as the bytes they were (surrogateescape, as os.fsencode).
    csv_path = io.write_file_atomically(out_dir / f"{SUMMARY_NAME}.csv", text.getvalue().encode("utf-8", "surrogateescape"),
                                        overwrite=True)
    json_path = io.write_file_atomically(out_dir / f"{SUMMARY_NAME}.json", json.dumps(records, indent=1).encode(),
                                         overwrite=True)
    return csv_path, json_path


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} is a file: give a folder for the outputs")
