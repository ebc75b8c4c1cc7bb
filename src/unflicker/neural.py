"""The paper's method as a pipeline method: neural atlas (stage 1), neural filter (stage 2), local
refinement (stage 3), then our projection of the correction onto a flicker model (projection.py).

Analysis keeps only low-resolution frames (the atlas resolution) for the whole video, fits
one atlas per shot (cuts detected on flicker-invariant thumbnails) and renders A_t; processing
filters each full-resolution frame against its A_t, refines it against the previous output
(recurrent within a shot, restarted at every cut) and projects the correction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from unflicker import cuts
from unflicker.atlas import AtlasConfig, VideoAtlas, atlas_size, downsample, fit_video
from unflicker.atlas.common import torch_threads
from unflicker.errors import InputError
from unflicker.framestore import FrameStore
from unflicker.projection import FlickerModel, ProjectionConfig

STAGES = ("atlas", "filter", "refine", "project")


@dataclass
class NeuralConfig:
    """Stages of the neural method."""

    atlas: AtlasConfig = field(default_factory=AtlasConfig)
    """Stage 1 settings (backend 'grid' or 'mlp', resolution, steps...)."""
    filter_weights: str | None = None
    """Filter weights file (None: the shipped ones)."""
    refine_weights: str | None = None
    """Local refinement weights file (None: the shipped ones)."""
    projection: ProjectionConfig | None = field(default_factory=ProjectionConfig)
    """The flicker model the correction is projected onto; None skips that stage (the paper's way)."""
    stop_after: str | None = None
    """Last stage to run: 'atlas', 'filter', 'refine' or 'project' (None: all)."""
    device: str | None = None
    """Torch device (None: CUDA when present, else CPU)."""


class NeuralDeflicker:
    """Pipeline method: `analyze` fits the atlas, `process` returns each stage's frame for t."""

    def __init__(self, config: NeuralConfig | None = None, progress: Callable[[int, int], None] | None = None):
        self.config = config or NeuralConfig()
        if self.config.stop_after not in (None, *STAGES):
            raise ValueError(f"unknown stage {self.config.stop_after!r}; choose from {', '.join(STAGES)}")
        self.progress = progress
        self.atlas: VideoAtlas | None = None
        self._filter = None
        if self.config.stop_after != "atlas":
            from unflicker.filter import NeuralFilter

            # Loaded up front so missing or mismatched weights fail before any long work.
            self._filter = NeuralFilter.load(self.config.filter_weights, device=self.config.device)
        self._refine = None
        self._next_t: int | None = None
        if self.config.stop_after not in ("atlas", "filter"):
            from unflicker.refine import LocalRefiner

            self._refine = LocalRefiner.load(self.config.refine_weights, device=self.config.device)
        self._projection = FlickerModel(self.config.projection) if "project" in self.stages else None

    @property
    def stages(self) -> list[str]:
        """The stages process() returns, in order."""
        available = STAGES if self.config.projection is not None else STAGES[:-1]
        if self.config.stop_after not in available[:-1]:
            return list(available)
        return list(available[: available.index(self.config.stop_after) + 1])

    def pass_fingerprint(self) -> dict:
        """What process()'s frames depend on besides A_t and the input: its stages, and a digest of
        each network's weights and inference settings (so --keep-work reuse notices new weights)."""
        record: dict = {"stages": self.stages}
        for name, stage in (("filter", self._filter), ("refine", self._refine)):
            if stage is not None:
                digest = hashlib.sha256(json.dumps(dataclasses.asdict(stage.config), sort_keys=True).encode())
                for key, tensor in sorted(stage.net.state_dict().items()):
                    digest.update(key.encode())
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
                record[name] = digest.hexdigest()
        if self._projection is not None:
            record["project"] = dataclasses.asdict(self._projection.config)
        return record

    def analyze(self, frames: Iterable[np.ndarray]) -> None:
        low_res: FrameStore | None = None  # on disk: memory must not grow with the video's length
        thumbs = []
        for frame in frames:
            if low_res is None:
                size = atlas_size(frame.shape[0], frame.shape[1], self.config.atlas.resolution)
                low_res = FrameStore((*size, 3), np.float16)
            small = downsample(frame, size)
            low_res.append(small)
            thumbs.append(cuts.thumbnail(small))
        if low_res is None:
            raise InputError("the video has no frames")
        shots = cuts.shots(len(low_res), cuts.detect_cuts(thumbs))
        self.atlas = fit_video(low_res, shots, self.config.atlas, progress=self.progress)

    @contextmanager
    def threaded_pass(self) -> Iterator[None]:
        """While prepare() runs in a worker thread beside process(), each of the two gets half of
        torch's threads: two pools as large as the machine would fight over its cores (goat, 90
        frames at 854x480 on 2 cores: 36.3 s end to end with two threads each, 33.3 s with one,
        40.3 s with no worker thread; the frames agree to 7e-5)."""
        with torch_threads(max(1, torch.get_num_threads() // 2)):
            yield

    def prepare(self, t: int, frame: np.ndarray) -> dict[str, np.ndarray]:
        """The stages of frame t that depend on no other frame: 'atlas' and 'filter'. Safe to run
        ahead of process(), in another thread, as the pipeline does."""
        if self.atlas is None:
            raise RuntimeError("prepare() before analyze()")
        stages = {"atlas": self.atlas.render(t)}
        if self._filter is not None:
            stages["filter"] = self._filter.apply(frame, stages["atlas"])
        return stages

    def process(self, t: int, frame: np.ndarray, prepared: dict[str, np.ndarray] | None = None
                ) -> dict[str, np.ndarray]:
        """Stage name -> frame for t: 'atlas' (atlas resolution), 'filter', 'refine', 'project' (full
        resolution). `prepared`: prepare(t, frame)'s result, when it was computed ahead.

        The refinement is recurrent: call for t = 0, 1, ... in order; its history restarts at
        each shot's first frame (and whenever t does not follow the previous call's).
        """
        stages = dict(prepared) if prepared is not None else self.prepare(t, frame)
        if self._refine is not None:
            if t != self._next_t or any(t == shot.start for shot in self.atlas.shots):
                self._refine.reset()
            self._next_t = t + 1
            stages["refine"] = self._refine.apply(stages["filter"])
        if self._projection is not None:
            stages["project"] = self._projection.project(frame, stages["refine"])
        return stages
