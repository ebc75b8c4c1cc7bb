"""One job of the web page, in its own process: `python -m unflicker.web.worker JOB_FOLDER`.

Reads JOB_FOLDER/spec.json (written by jobs.JobQueue), calls the library's file entry point
`deflicker_file(input, output, RunConfig)` once, and writes JOB_FOLDER/result.json: the files it
wrote (names inside JOB_FOLDER), the run's summary and (of a run) the resolved settings the library
recorded with its output (RunSummary.config), or {"error": message, "type": the exception's
class}, which jobs.failure_message words for the page. Progress is the library's tqdm bars on stderr.
Everything is written inside JOB_FOLDER.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
import warnings
import zipfile
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from unflicker import bars, io
from unflicker.config import EngineConfig
from unflicker.errors import Terminated, UnflickerError, sigterm_as_interrupt
from unflicker.pipeline import RunConfig, deflicker_file
from unflicker.segments import own_process
from unflicker.visualize import write_side_by_side
from unflicker.worker import watch_parent


def _summary(summary, notes: list[str]) -> dict:
    """The page's copy of a RunSummary (frames, seconds, flicker before and after)."""
    return {"frames": summary.frames, "seconds": round(summary.seconds, 2),
            "flicker_before": summary.flicker_before, "flicker_after": summary.flicker_after, "kind": summary.kind,
            "notes": notes}


def cut(input_path: str, folder: Path, centre: int, seconds: float) -> tuple[Path, str, Fraction]:
    """Write the stretch of about `seconds` around frame `centre` as PNG frames into folder.

    The frames are turned upright (the video's display rotation is not kept by PNG files): the preview's
    before and after pictures and its video show them as a player shows the video.
    Returns (the folder, the file name of the centre frame, the video's frame rate, which a folder does not hold)."""
    info = io.probe(input_path)
    count = min(info.frame_count, max(2, round(seconds * float(info.fps))))
    centre = min(max(int(centre), 0), info.frame_count - 1)
    start = min(max(centre - count // 2, 0), info.frame_count - count)
    folder.mkdir()
    name = None
    with closing(io.read_frames(input_path, info)) as frames, bars.bar(total=count, desc="cut", unit="frame") as bar:
        for frame in frames:
            if frame.index >= start + count:
                break
            if frame.index >= start:
                file = f"{frame.index:06d}.png"
                upright = np.ascontiguousarray(np.rot90(frame.image, round(info.rotation / 90)))
                cv2.imwrite(str(folder / file), cv2.cvtColor(upright, cv2.COLOR_RGB2BGR))
                name = file if frame.index == centre else name
                bar.update()
    return folder, name or file, info.fps


def _engine(spec: dict) -> EngineConfig:
    """The engine's workers and threads the server was started with (`unflicker serve --workers/--threads`)."""
    return EngineConfig(**spec.get("engine", {}))


def preview(spec: dict, folder: Path, notes: list[str]) -> dict:
    clip, out = folder / "preview-in", folder / "preview-out"
    try:
        clip, centre, rate = cut(spec["input"], clip, spec["frame"], spec["preview_seconds"])
        summary = deflicker_file(clip, out, RunConfig(**spec["options"], engine=_engine(spec)))
        # Written here, not by the run: the cut's folder of frames holds no frame rate, and the stretch played at
        # a folder's 25 fps ran twice as fast for a 12 fps video (its flicker too).
        write_side_by_side(clip, out, folder / "preview.mp4", progress=spec["options"].get("progress", True),
                           fps=rate)
        shutil.copyfile(clip / centre, folder / "before.png")
        shutil.copyfile(out / centre, folder / "after.png")
    finally:  # failed or cancelled too: the cut and the deflickered frames go
        shutil.rmtree(clip, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return {"files": {"compare": "preview.mp4", "before": "before.png", "after": "after.png"},
            "summary": _summary(summary, notes)}


def run(spec: dict, folder: Path, notes: list[str]) -> dict:
    suffix = spec["format"]
    output = folder / ("frames" if suffix == ".zip" else f"output{suffix}")
    summary = deflicker_file(spec["input"], output,
                             RunConfig(**spec["options"], codec=spec.get("codec"), bit_depth=spec.get("bit_depth"),
                                       compare=folder / "compare.mp4", plot=folder / "plot.png",
                                       plot_label=f"{spec.get('name') or Path(spec['input']).name}, deflickered",
                                       engine=_engine(spec)))
    written = io.probe(output)  # what the output holds, "same as the input" resolved: the page says it
    page_summary = {**_summary(summary, notes),
                    "output": {**summary.config["output"], "written_codec": written.codec,
                               "written_bits": written.sample_bits}}
    if suffix == ".zip":
        partial = folder / "output.zip.part"
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
                for frame in sorted(output.iterdir(), key=lambda p: io.natural_key(p.name)):
                    archive.write(frame, frame.name)
            partial.rename(folder / "output.zip")
        finally:
            partial.unlink(missing_ok=True)
            shutil.rmtree(output, ignore_errors=True)
        output = folder / "output.zip"
    return {"files": {"output": output.name, "compare": "compare.mp4", "plot": "plot.png"},
            "summary": page_summary, "config": summary.config}


def main(argv: list[str]) -> int:
    folder = Path(argv[0]).resolve()
    spec = json.loads((folder / "spec.json").read_text())
    code = 0
    # A server killed outright (SIGKILL) cannot stop its job: the job stops itself as on Cancel.
    watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM))
    own_process()  # this process only runs the job
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sigterm_as_interrupt():  # Cancel: the run's temporary files go as with Ctrl-C
                result = (preview if spec["kind"] == "preview" else run)(spec, folder, [])
            result["summary"]["notes"] = sorted({str(w.message) for w in caught})
        except UnflickerError as exc:
            result, code = {"error": str(exc), "type": exc.__class__.__name__}, 1
        except Terminated:
            result, code = {"error": "cancelled"}, 143
        except Exception as exc:  # noqa: BLE001 - the page gets one line, the server's console the traceback
            traceback.print_exc()
            result, code = {"error": f"internal error ({exc.__class__.__name__}: {exc})",
                            "type": exc.__class__.__name__}, 2
    partial = folder / "result.json.part"
    partial.write_text(json.dumps(result))
    partial.rename(folder / "result.json")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
