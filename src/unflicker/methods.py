"""The method protocol (every hook the pass loop calls) and the name -> method registry.

A method sees one segment at a time (segments.run_segment): `analyze` once over the span's frames,
then `prepare(t, frame)` and `process(t, frame, prepared)` for t = 0, 1, ... in order (prepare may
run one frame ahead on a second thread), then `settle(t, frame, output)` once for every t in a
second sweep (possibly several frames at once, on threads of their own); the slow-look anchor it
asks for with `anchor_config` runs on the settled frames, in order, and the texture carry it asks for
with `carry_config` on the anchored ones (a third sweep, in order). Frames are (H, W, 3) float32 RGB
in [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from unflicker.anchor import AnchorConfig
from unflicker.carry import CarryConfig
from unflicker.config import CLASSICAL_WORKER_MEMORY
from unflicker.classical import ClassicalConfig, ClassicalDeflicker
from unflicker.neural import NeuralDeflicker


class Method(Protocol):
    """What the pass loop calls, and nothing else."""

    @property
    def stages(self) -> list[str]:
        """Names of the frames `process` returns, in order; the last is the method's output."""
        ...

    @property
    def analysis_share(self) -> float:
        """About what share of a segment's work `analyze` is (in [0, 1]): how far a progress bar
        moves while it runs (segments.SegmentProgress)."""
        ...

    scratch_bytes: int
    """Bytes a pixel of every frame of a running segment the method keeps in temporary files of its own (TMPDIR),
    beside the work folder's spilled frames and result: part of a run's temporary disk (pipeline's check)."""

    def analyze(self, frames: Iterable[np.ndarray], lanes: int = 1,
                progress: Callable[[float], None] | None = None) -> None:
        """See every frame of the segment once, in order (e.g. fit the atlas). `lanes`: threads it
        may keep busy at once; what it learns must be the same bits with any number. `progress`:
        called with the fraction of the analysis done as it goes (on the calling thread)."""
        ...

    def prepare(self, t: int, frame: np.ndarray) -> object:
        """The part of frame t's work that needs no other frame (neural: its atlas frame and filter).
        The pass loop may call it for t + 1 on a second thread while `process(t, ...)` runs."""
        ...

    def process(self, t: int, frame: np.ndarray, prepared: object) -> dict[str, np.ndarray]:
        """Stage name -> frame for frame t of the analysed segment (called for t = 0, 1, ...);
        `prepared` is what `prepare(t, frame)` returned."""
        ...

    def settle(self, t: int, frame: np.ndarray, output: np.ndarray) -> np.ndarray:
        """Frame t's output revised with what the method learned from the whole segment (a second
        sweep after `process` saw every frame: once per t, in any order, possibly for several frames
        at once on other threads); `output` is what process returned."""
        ...

    def report(self) -> dict:
        """JSON-able facts about the last segment (shown in the run summary), e.g. the gate's weight."""
        ...

    def anchor_config(self, n_frames: int) -> AnchorConfig:
        """How much of the input's slow look the anchor hands back to this segment (AnchorConfig.off():
        none); asked after the pass, so it may depend on what the method measured there."""
        ...

    def carry_config(self, n_frames: int) -> CarryConfig:
        """How much of the anchored outputs' finest texture is carried along the motion (unflicker.carry;
        CarryConfig.off(): none); asked after the pass, like `anchor_config`."""
        ...

    @staticmethod
    def fingerprint(config) -> dict:
        """JSON-able record of everything the output depends on beyond `config` (weights' digests),
        without building the method (the main process of a run records it; workers build)."""
        ...

    @staticmethod
    def worker_memory(config) -> tuple[float, float]:
        """(bytes, bytes a pixel of a frame): the peak memory of a local worker running a segment of the method
        with `config` at one thread, with margin (config.memory_needs; measured as config.py says)."""
        ...


class ClassicalMethod:
    """The classical deflicker (classical.py) as a pipeline method: one stage, no anchor."""

    stages = ["classical"]
    analysis_share = 0.3  # a sweep of frame statistics against the pass's per-frame correction
    scratch_bytes = 0  # in memory only

    def __init__(self, config: ClassicalConfig | None = None):
        self.config = config or ClassicalConfig()
        self._deflicker = ClassicalDeflicker(self.config)

    def analyze(self, frames: Iterable[np.ndarray], lanes: int = 1,
                progress: Callable[[float], None] | None = None) -> None:
        self._deflicker.analyze(frames)  # one cheap sweep: nothing to share
        if progress is not None:
            progress(1.0)

    def prepare(self, t: int, frame: np.ndarray) -> None:
        return None  # every frame's correction depends on its neighbours' (analyze)

    def process(self, t: int, frame: np.ndarray, prepared: None = None) -> dict[str, np.ndarray]:
        return {"classical": self._deflicker.process(t, frame)}

    def settle(self, t: int, frame: np.ndarray, output: np.ndarray) -> np.ndarray:
        return output

    def report(self) -> dict:
        return {}

    def anchor_config(self, n_frames: int) -> AnchorConfig:
        return AnchorConfig.off()

    def carry_config(self, n_frames: int) -> CarryConfig:
        return CarryConfig.off()

    @staticmethod
    def fingerprint(config: ClassicalConfig) -> dict:
        return {}

    @staticmethod
    def worker_memory(config: ClassicalConfig) -> tuple[float, float]:
        return CLASSICAL_WORKER_MEMORY


METHODS: dict[str, type[Method]] = {
    "classical": ClassicalMethod,
    "neural": NeuralDeflicker,  # loads torch when built (its networks), not when imported
}
"""Method name -> its class: build with cls(config) (config: ClassicalConfig or neural.NeuralConfig);
cls.fingerprint(config) without building."""


def config_record(config) -> dict:
    """A method config as JSON-able nested dicts (tuples as lists, inf as a string)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not np.isfinite(value):
            return str(value)
        return value

    return clean(dataclasses.asdict(config))
