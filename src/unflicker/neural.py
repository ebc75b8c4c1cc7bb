"""The paper's method as a pipeline method: neural atlas (stage 1), neural filter (stage 2), local
refinement (stage 3), then our projection of the correction onto a flicker model (projection.py).

It sees one segment of one shot at a time (segments.py): analysis keeps only low-resolution frames
(the atlas resolution), fits the atlas and renders A_t; processing filters each full-resolution
frame against its A_t, refines it against the previous output (recurrent within the segment) and
projects the correction. The slow-look anchor (anchor.py) it asks for runs after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from unflicker import netfiles
from unflicker.anchor import AnchorConfig
from unflicker.atlas import AtlasConfig, atlas_size
from unflicker.carry import CarryConfig
from unflicker.config import MLP_ATLAS_MEMORY, NEURAL_STAGES, WORKER_MEMORY
from unflicker.errors import InputError
from unflicker.framestore import FrameStore
from unflicker.gate import FineGate, GateConfig
from unflicker.io import from_float, to_float
from unflicker.kinds import KindProbe
from unflicker.lanes import Behind
from unflicker.projection import FlickerCorrection, FlickerModel, ProjectionConfig

if TYPE_CHECKING:
    from unflicker.atlas import VideoAtlas


# No torch at import: the config and the fingerprint serve a run's main process, which plans and
# stitches while its workers build this method (networks and atlas load torch then).

STAGES = NEURAL_STAGES


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
    gate: GateConfig | None = field(default_factory=GateConfig)
    """How much of the refined frames' correction beyond the flicker model each segment takes
    (unflicker.gate); None: the projection alone. Needs the projection."""
    anchor: AnchorConfig | None = field(default_factory=AnchorConfig)
    """How much of the input's slow look is kept (unflicker.anchor); None: none, as in the paper."""
    carry: CarryConfig | None = None
    """How the finest texture is carried along the motion after the anchor (unflicker.carry;
    `--carry-texture`); None: not at all (the default: it also evens out sensor noise and film grain)."""
    stop_after: str | None = None
    """Last stage to run: 'atlas', 'filter', 'refine' or 'project' (None: all)."""
    precision: str = "fp32"
    """The networks' convolutions (filter and refinement): 'fp32' or 'bf16' (FilterInferenceConfig.precision;
    a run's --precision auto chooses by the CPU, config.network_precision)."""
    device: str = "cpu"
    """Torch device of the filter and the refinement. The CPU, also where a GPU is present: on an H200 a
    default run was no faster with them there and each worker took 0.7 GB more memory
    (docs/research-notes.md, Session 26); 'cuda' puts them on the GPU. The atlas has its own."""


def _networks(config: NeuralConfig) -> dict[str, str | None]:
    """The networks a config runs (a run stopped after the atlas or the filter needs fewer) -> their
    weights file (None: the shipped one)."""
    runs = {"filter": config.stop_after != "atlas", "refine": config.stop_after not in ("atlas", "filter")}
    return {name: path for name, path in (("filter", config.filter_weights), ("refine", config.refine_weights))
            if runs[name]}


class NeuralDeflicker:
    """Pipeline method: `analyze` fits the atlas, `process` returns each stage's frame for t."""

    analysis_share = 0.35
    """The atlas fit's share of a segment's work (one thread, 854x480, 55 frames: about 6 of 17 s)."""
    scratch_bytes = 6
    """The refined frames at 16 bits (a FrameStore, for `settle`); the low-resolution ones add little."""

    def __init__(self, config: NeuralConfig | None = None):
        self.config = config or NeuralConfig()
        if self.config.stop_after not in (None, *STAGES):
            raise ValueError(f"unknown stage {self.config.stop_after!r}; choose from {', '.join(STAGES)}")
        self.atlas: VideoAtlas | None = None
        networks = _networks(self.config)
        self._filter = None
        if "filter" in networks:
            from unflicker.filter import NeuralFilter

            # Loaded up front so missing or mismatched weights fail before any long work.
            self._filter = NeuralFilter.load(networks["filter"], device=self.config.device,
                                             precision=self.config.precision)
        self._refine = None
        self._next_t: int | None = None
        if "refine" in networks:
            from unflicker.refine import LocalRefiner

            self._refine = LocalRefiner.load(networks["refine"], device=self.config.device,
                                             precision=self.config.precision)
        self._projection = FlickerModel(self.config.projection) if "project" in self.stages else None
        self._gate = FineGate(self.config.gate) if self._projection is not None and self.config.gate else None
        self._kinds = KindProbe() if self._gate is not None else None  # names physical flicker for the summary
        self._refined: FrameStore | None = None  # the segment's refined frames, for settle()
        self._behind: Behind | None = None  # stores them and measures the gate while the pass goes on
        self._lanes = 1  # threads the segment may keep busy (analyze's lanes)
        self._corrections: dict[int, FlickerCorrection] = {}  # the flicker model's fit per frame, for settle()
        self._settling = threading.Lock()  # settle() may run for several frames at once
        self._settled = 0  # frames settled since the pass

    @property
    def stages(self) -> list[str]:
        """The stages process() returns, in order."""
        available = STAGES if self.config.projection is not None else STAGES[:-1]
        if self.config.stop_after not in available[:-1]:
            return list(available)
        return list(available[: available.index(self.config.stop_after) + 1])

    def anchor_config(self, n_frames: int) -> AnchorConfig:
        """The anchor after the last stage: off for runs stopped early and for --keep-slow off; for a
        segment of smooth physical flicker (the gate's smoothness) and for the detail part (the gate's
        strength: none for a segment left as it is) as AnchorConfig.for_segment says."""
        if self.config.anchor is None or self.config.stop_after is not None or n_frames < 2:
            return AnchorConfig.off()
        self._measured()
        if self._gate is None:
            return self.config.anchor.for_segment(0.0)
        features = self._kinds.features() or {}
        return self.config.anchor.for_segment(self._gate.smoothness(), self._gate.strength(), features.get("pumping"))

    def carry_config(self, n_frames: int) -> CarryConfig:
        """The texture carry after the anchor: off for runs stopped early and without a carry config; else
        scaled for the segment as the anchor's detail part (the gate's strength and smoothness,
        CarryConfig.for_segment)."""
        if self.config.carry is None or self.config.stop_after is not None or n_frames < 2:
            return CarryConfig.off()
        self._measured()
        if self._gate is None:
            return self.config.carry.for_segment(0.0)
        return self.config.carry.for_segment(self._gate.smoothness(), self._gate.strength())

    @staticmethod
    def fingerprint(config: NeuralConfig) -> dict:
        """What the frames depend on beyond the config: a digest of each network's weight file and its
        JSON (network, inference settings), so a --keep-work resume notices new weights; read without
        torch. A missing or wrong-format file, or tensors not saved with their JSON, fail here, before any
        work (their shapes are checked when a worker loads them)."""
        return {name: netfiles.weights_digest(netfiles.weights_path(name, path), name, *netfiles.FORMATS[name])
                for name, path in _networks(config).items()}

    @staticmethod
    def worker_memory(config: NeuralConfig) -> tuple[float, float]:
        """The grid atlas's worker; the MLP atlas adds its fit's steps, about the same at any frame size."""
        base, per_pixel = WORKER_MEMORY
        return base + (MLP_ATLAS_MEMORY if config.atlas.backend == "mlp" else 0.0), per_pixel

    def analyze(self, frames: Iterable[np.ndarray], lanes: int = 1,
                progress: Callable[[float], None] | None = None) -> None:
        """Fit the atlas of one shot (the pipeline cuts shots into segments; none crosses a cut);
        with lanes >= 2 the fit keeps two threads busy (same atlas, `fit_grid`). `progress(fraction)`
        after each step of the fit."""
        from unflicker.atlas import downsample, fit_video

        low_res: FrameStore | None = None  # on disk: memory must not grow with the video's length
        for frame in frames:
            if low_res is None:
                size = atlas_size(frame.shape[0], frame.shape[1], self.config.atlas.resolution)
                low_res = FrameStore((*size, 3), np.float16)
            low_res.append(downsample(frame, size))
        if low_res is None:
            raise InputError("the video has no frames")
        self.atlas = fit_video(low_res, [range(len(low_res))], self.config.atlas, progress=progress, lanes=lanes)
        self._next_t = None
        self._lanes = lanes
        if self._gate is not None:
            if self._behind is not None:  # a segment that failed before it was settled: stopped
                self._behind.abort()      # before the gate is reset (its last call may be running)
            self._gate.reset()
            self._kinds.reset()
            self._refined, self._behind, self._corrections, self._settled = None, None, {}, 0

    def prepare(self, t: int, frame: np.ndarray) -> dict[str, np.ndarray]:
        """The stages of frame t that depend on no other frame: 'atlas' and 'filter' (safe to run
        for t + 1 on another thread while process(t) runs: they share no state with it)."""
        if self.atlas is None:
            raise RuntimeError("prepare() or process() before analyze()")
        stages = {"atlas": self.atlas.render(t)}
        if self._filter is not None:
            stages["filter"] = self._filter.apply(frame, stages["atlas"])
        return stages

    def process(self, t: int, frame: np.ndarray,
                prepared: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Stage name -> frame for t: 'atlas' (atlas resolution), 'filter', 'refine', 'project' (full
        resolution); `prepared`: what prepare(t, frame) returned (None: prepared here).

        The refinement is recurrent: call for t = 0, 1, ... in order; its history restarts at
        each shot's first frame (and whenever t does not follow the previous call's).
        """
        stages = self.prepare(t, frame) if prepared is None else prepared  # this frame's own dict
        if self._refine is not None:
            if t != self._next_t or any(t == shot.start for shot in self.atlas.shots):
                self._refine.reset()
            self._next_t = t + 1
            stages["refine"] = self._refine.apply(stages["filter"])
        if self._projection is not None:
            stages["project"], correction = self._projection.project_with_correction(frame, stages["refine"])
        if self._gate is not None:
            if self._refined is None:
                self._refined = FrameStore(frame.shape, np.uint16)  # on disk, like the low-res frames
                self._behind = Behind(self._lanes, name="measure")
                self._corrections = {}
            if self._gate.smooths:  # a few numbers per frame: settle re-applies them where it needs the model
                self._corrections[t] = correction
            # In order on a thread of its own while the pass goes on: nothing in the pass waits for it.
            self._behind.submit(self._measure, t, frame, stages["project"], stages["refine"], correction)
        return stages

    def _measure(self, t: int, frame: np.ndarray, projected: np.ndarray, refined: np.ndarray, correction) -> None:
        """Frame t's part of what settle() needs: its refined frame stored, the gate's and the kinds'
        measurements (in frame order)."""
        self._refined[t] = from_float(refined, 16)
        self._gate.observe(frame, projected, refined, correction)
        self._kinds.observe(*self._gate.latest[:2])  # the gate's small copies of I_t and P_t

    def _measured(self) -> None:
        """Wait until every frame the pass handed to `_measure` is measured and stored."""
        if self._behind is not None:
            self._behind.flush()

    def settle(self, t: int, frame: np.ndarray, output: np.ndarray) -> np.ndarray:
        """The projected frame t plus the gate's share of the rest of the refined frame's correction
        (both remainders low-passed as far as the gate's smoothness says), the whole correction
        faded out where the segment shows no flicker (unflicker.gate); called once for every frame
        after the pass, in any order, possibly for several frames at once (threads)."""
        if self._gate is None:
            return output
        with self._settling:
            if self._refined is None:
                return output
            refined_store, corrections, behind = self._refined, self._corrections, self._behind  # this call's
        behind.flush()
        model = corrections[t].apply(frame) if self._gate.remainder_smoothness() > 0.0 else None
        refined = to_float(refined_store[t]) if self._gate.weight() > 0.0 else None
        output = self._gate.apply(frame, output, model, refined)
        with self._settling:
            self._settled += 1
            if self._settled == len(refined_store):  # every frame settled: the stored frames' disk space goes now
                behind.close()
                self._refined, self._behind, self._corrections, self._settled = None, None, {}, 0
        return output

    def report(self) -> dict:
        """The gate's measurement and weight for the last segment, and what physical flicker the
        projection's corrections look like (unflicker.kinds); empty without a gate."""
        if self._gate is None:
            return {}
        self._measured()
        share = self._gate.share
        clean, efficiency = self._gate.input_share, self._gate.efficiency
        features = self._kinds.features()
        return {"fine_share": None if share is None else round(share, 4), "fine_weight": round(self._gate.weight(), 4),
                "smooth": round(self._gate.smoothness(), 4),
                "remainder_smooth": round(self._gate.remainder_smoothness(), 4),
                "fine_remainder": None if self._gate.fine_share is None else round(self._gate.fine_share, 4),
                "input_share": None if clean is None else round(clean, 4),
                "efficiency": None if efficiency is None else round(efficiency, 4),
                "strength": round(self._gate.strength(), 4),
                "flicker_kind": self._kinds.name(features),
                **{f"kind_{k}": round(v, 4) for k, v in (features or {}).items()}}
