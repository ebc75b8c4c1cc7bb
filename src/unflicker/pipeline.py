"""The data path from a flickering input to a consistent output: probe, analyse, process, write.

Every method streams: a first pass lets it analyse the (decoded, downscaled by the method) video,
a second pass processes full-resolution frames one at a time and hands them to the writer.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from unflicker import io
from unflicker.classical import ClassicalConfig, ClassicalDeflicker
from unflicker.errors import OutputError
from unflicker.metrics import flicker_index


class Method(Protocol):
    """A deflicker method: `analyze` sees every frame once, then `process` maps frame t.

    Frames are (H, W, 3) float32 RGB in [0, 1]. `process` returns the output frame, or a dict
    of stage name -> frame whose last entry is the output (earlier ones are kept by --keep-work).
    """

    def analyze(self, frames: Iterable[np.ndarray]) -> None: ...

    def process(self, index: int, frame: np.ndarray) -> np.ndarray | dict[str, np.ndarray]: ...


def _neural(config: RunConfig) -> Method:
    from unflicker.atlas import AtlasConfig  # torch is imported only when a neural method runs
    from unflicker.neural import NeuralConfig, NeuralDeflicker

    atlas = AtlasConfig(backend=config.atlas, steps=config.atlas_steps)
    return NeuralDeflicker(NeuralConfig(atlas=atlas, stop_after=config.stop_after))


METHODS: dict[str, Callable[[RunConfig], Method]] = {
    "classical": lambda config: ClassicalDeflicker(ClassicalConfig()),
    "neural": _neural,
}


@dataclass
class RunConfig:
    """Options of one `unflicker run`."""

    method: str = "classical"
    """Name in METHODS."""
    atlas: str = "grid"
    """neural: atlas backend, 'grid' (fast) or 'mlp' (the paper's, for GPUs)."""
    atlas_steps: int | None = None
    """neural: atlas optimisation steps (None: the backend's default)."""
    stop_after: str | None = None
    """neural: last stage to run ('atlas' or 'filter'); the output is then not written, only
    the stages kept in keep_work."""
    crf: int = 18
    """H.264 quality for .mp4/.mov outputs (lower is better; 18 is visually lossless)."""
    overwrite: bool = False
    """Replace an existing output."""
    keep_work: Path | None = None
    """Folder that keeps each stage's frames as PNG (DIR/<stage>/), same names as the input's."""
    progress: bool = True
    """Show progress bars on stderr."""


@dataclass
class RunSummary:
    output: Path
    frames: int
    seconds: float
    flicker_before: float
    flicker_after: float

    def line(self) -> str:
        return (f"wrote {self.output}: {self.frames} frames in {self.seconds:.1f} s "
                f"({self.frames / max(self.seconds, 1e-9):.1f} fps), flicker index "
                f"{self.flicker_before * 1e3:.2f} -> {self.flicker_after * 1e3:.2f} (x1e-3)")


def _float_frames(frames: Iterator[io.Frame]) -> Iterator[np.ndarray]:
    for frame in frames:
        yield io.to_float(frame.image)


def _channel_means(frame: np.ndarray) -> np.ndarray:
    """(1, 1, 3) per-channel mean: the global flicker index needs nothing more per frame."""
    return frame.reshape(-1, 3).mean(axis=0).reshape(1, 1, 3)


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False, dynamic_ncols=True)


def deflicker_file(input_path: str | Path, output_path: str | Path | None,
                   config: RunConfig | None = None) -> RunSummary:
    """Deflicker a video file or frame folder into `output_path` (video by extension, else a folder)."""
    config = config or RunConfig()
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; choose from {', '.join(METHODS)}")
    if config.stop_after and config.keep_work is None:
        raise OutputError("--stop-after needs --keep-work DIR: the stage frames are the only output")
    start = time.perf_counter()
    info = io.probe(input_path)
    write_output = config.stop_after is None
    output = io.check_output(input_path, output_path, config.overwrite) if write_output else None
    method = METHODS[config.method](config)
    single = info.frame_count == 1
    if single:
        warnings.warn("the input has a single frame: there is no flicker to remove, copying it through",
                      stacklevel=2)
    before: list[np.ndarray] = []
    after: list[np.ndarray] = []

    def analysed() -> Iterator[np.ndarray]:
        with _bar(info.frame_count, "analyse", config.progress) as bar:
            for image in _float_frames(io.read_frames(input_path, info)):
                before.append(_channel_means(image))
                bar.update()
                yield image

    if not single:
        method.analyze(analysed())
    with ExitStack() as stack:
        writer = stack.enter_context(io.VideoWriter(output, info, crf=config.crf, overwrite=config.overwrite)) \
            if write_output else None
        stages = _StageWriters(config.keep_work, info, stack)
        bar = stack.enter_context(_bar(info.frame_count, "process", config.progress))
        for frame in io.read_frames(input_path, info):
            image = io.to_float(frame.image)
            if single:
                before.append(_channel_means(image))
                results = {config.method: image}
            else:
                results = method.process(frame.index, image)
                results = results if isinstance(results, dict) else {config.method: results}
            final = np.clip(list(results.values())[-1], 0.0, 1.0)
            after.append(_channel_means(final))
            if writer is not None:
                writer.write(final, frame.pts, frame.name)
            stages.write(results, frame.name)
            bar.update()
    return RunSummary(output if write_output else config.keep_work, info.frame_count,
                      time.perf_counter() - start, flicker_index(before)["luma"], flicker_index(after)["luma"])


class _StageWriters:
    """One PNG-folder writer per stage under keep_work, opened at the first frame of each stage."""

    def __init__(self, keep_work: Path | None, source: io.VideoInfo, stack: ExitStack):
        self.keep_work, self.source, self.stack = keep_work, source, stack
        self.writers: dict[str, io.VideoWriter] = {}
        if keep_work is not None:
            keep_work.mkdir(parents=True, exist_ok=True)

    def write(self, frames: dict[str, np.ndarray], name: str) -> None:
        if self.keep_work is None:
            return
        for stage, image in frames.items():
            if stage not in self.writers:
                # Stage frames may be smaller than the source (the atlas resolution).
                info = dataclasses.replace(self.source, height=image.shape[0], width=image.shape[1])
                self.writers[stage] = self.stack.enter_context(
                    io.VideoWriter(self.keep_work / stage, info, overwrite=True))
            self.writers[stage].write(np.clip(image, 0.0, 1.0), None, name)
