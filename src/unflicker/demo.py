"""`make demo`: build a flickering clip from a photo scikit-image ships, deflicker it, compare.

Needs no network and no project data: the clip is a simulated camera move over a bundled photo
with seeded synthetic flicker, so the flicker-free ground truth is known and the demo can
report how much was removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from unflicker import io, metrics, synth
from unflicker.config import available_memory
from unflicker.errors import InputError, OutputError, UnflickerError
from unflicker.io.common import make_held, size_text, sweep_partials, writable_folder
from unflicker.pipeline import RunConfig, deflicker_file
from unflicker.visualize import write_side_by_side

DEMO_SIZE = (352, 512)  # (h, w)
DEMO_FPS = Fraction(24)
DEMO_FILES = ("input.mp4", "output.mp4", "compare.mp4")
DEMO_HELD_BYTES_PER_FRAME = 4 * DEMO_SIZE[0] * DEMO_SIZE[1] * 3 * 4
"""Memory the demo holds per frame: its clean and flickering clips, the output and the decoded input, as float32."""
PARTIAL_NAME = "demo"
"""The demo's work folder is out_dir/.demo.partial-PID-..., made locked (io.common.make_held): a later demo
removes what one killed outright left (sweep_partials), never a running one's."""


def _bundled_photo() -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:  # the demo's only extra need
        raise UnflickerError("the demo needs scikit-image: pip install scikit-image") from exc
    return data.stereo_motorcycle()[0]


def make_demo_clip(n_frames: int = 48, seed: int = 0, flicker: str = "mixed") -> tuple[np.ndarray, np.ndarray]:
    """(clean, flickering) clips, each (T, h, w, 3) float32 in [0, 1]."""
    clean = synth.camera_move_clip(_bundled_photo(), n_frames, DEMO_SIZE, motion="pan", seed=seed)
    return clean, synth.add_flicker(clean, kind=flicker, strength=1.0, seed=seed)


def _write_clip(frames: np.ndarray, path: Path) -> None:
    h, w = frames.shape[1:3]
    info = io.VideoInfo(path, False, w, h, len(frames), DEMO_FPS, "rgb24", 8, False, None)
    with io.VideoWriter(path, info, crf=12, overwrite=True) as writer:
        for frame in frames:
            writer.write(frame)


def run_demo(out_dir: str | Path, n_frames: int = 48, method: str | None = None,
             overwrite: bool = False) -> Iterator[str]:
    """Write input.mp4, output.mp4 and compare.mp4 into `out_dir`, yielding one line per step.

    All three are made in a temporary folder inside `out_dir` and put in place together at the end:
    an interrupted demo leaves none, and never a new input beside an earlier run's output; the folder of
    one killed outright (SIGKILL) is removed by the next. Existing ones are replaced only with `overwrite`,
    checked before any work."""
    out_dir = Path(out_dir)
    if n_frames < 2:
        raise InputError(f"--frames must be at least 2 (flicker is a change from frame to frame), got {n_frames}")
    need, free = n_frames * DEMO_HELD_BYTES_PER_FRAME, available_memory()
    if free is not None and need > free:
        raise InputError(f"--frames {n_frames} needs about {size_text(need)} of memory (the demo holds its clips "
                         f"in memory), more than the {size_text(free)} free: give fewer frames")
    existing = [name for name in DEMO_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{out_dir / existing[0]} exists: pass --overwrite to replace the demo's files, or choose "
                          f"another --out-dir")
    writable_folder(out_dir, "--out-dir")
    sweep_partials(out_dir / PARTIAL_NAME)
    work = out_dir / f".{PARTIAL_NAME}.partial-{os.getpid()}-{os.urandom(4).hex()}"
    lock = make_held(work, folder=True)
    try:
        clean, flickering = make_demo_clip(n_frames)
        source, output, compare = (work / name for name in DEMO_FILES)
        _write_clip(flickering, source)
        yield (f"made {out_dir / source.name}: {n_frames} frames of a simulated pan over a bundled photo, with "
               f"synthetic flicker")
        summary = deflicker_file(source, output, RunConfig(method=method))
        yield summary.line().replace(str(output), str(out_dir / output.name), 1)
        write_side_by_side(source, output, compare)
        yield f"wrote {out_dir / compare.name} (input | output)"
        result = np.stack([io.to_float(f.image) for f in io.read_frames(output)])
        decoded_input = np.stack([io.to_float(f.image) for f in io.read_frames(source)])
        psnr = (f"PSNR to the flicker-free clip: input {metrics.sequence_psnr(decoded_input, clean):.2f} dB -> "
                f"output {metrics.sequence_psnr(result, clean):.2f} dB")
        for name in DEMO_FILES:
            io.replace(work / name, out_dir / name, overwrite)
        yield psnr
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            os.close(lock)
