"""Score a result video against a reference (for flow) and an optional ground truth.

Used by `unflicker eval` and the benchmark. Frame folders alone are matched frame by frame by file
stem, so a processed sequence that lacks some frames is compared on the frames both have; with a
video among the inputs every sequence is paired by position (see aligned_infos).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from unflicker import errors, io, metrics
from unflicker.errors import InputError


def _stems(info: io.VideoInfo) -> list[str]:
    return [Path(name).stem for name in info.frame_names]


def aligned_infos(*infos: io.VideoInfo | None, warn: bool = True) -> list[io.VideoInfo | None]:
    """Pair the frames of the sequences given (None: not given), each cut to the frames compared.

    Frame folders alone are paired by frame name (file stem), on the names they all share. With a video
    among them every sequence is paired by position, so the folders must hold the same frames up to the
    shortest one's length: otherwise the pairing is ambiguous and InputError names the first frame that
    differs. Frames left out (by name, or past the shortest sequence) are said unless `warn` is False."""
    present = [i for i in infos if i is not None]
    folders = [i for i in present if i.is_folder]
    if len(folders) >= 2 and len(folders) == len(present):
        stems = [set(_stems(i)) for i in folders]
        common = stems[0].intersection(*stems[1:])
        if not common:
            raise InputError("the frame folders share no frame names")
        if warn and any(len(names) != len(common) for names in stems):
            errors.warn(f"the frame folders hold different frames; comparing the {len(common)} whose names they "
                        f"all share")
        return [None if i is None else _subset(i, common) for i in infos]
    shortest = min(i.frame_count for i in present)
    for other in folders[1:]:  # a video among them: paired by position, which must be by name too
        for index, (a, b) in enumerate(zip(folders[0].frame_names[:shortest], other.frame_names)):
            if Path(a).stem != Path(b).stem:
                raise InputError(f"cannot pair the frames: with a video among the inputs they are paired by position, "
                                 f"and frame {index + 1} is {a} in {folders[0].path} but {b} in {other.path}; give "
                                 f"frame folders holding the same frames under the same names (frame folders alone "
                                 f"are paired by name)")
    if warn and any(i.frame_count != shortest for i in present):
        errors.warn(f"sequences differ in length; comparing the first {shortest} frames")
    return [None if i is None else dataclasses.replace(i, frame_count=shortest,
                                                       frame_names=i.frame_names[:shortest]) for i in infos]


def _subset(info: io.VideoInfo, stems: set[str]) -> io.VideoInfo:
    names = tuple(n for n in info.frame_names if Path(n).stem in stems)
    return dataclasses.replace(info, frame_names=names, frame_count=len(names))


def float_frames(info: io.VideoInfo) -> Iterator[np.ndarray]:
    """Stream the frames of `info` (possibly a subset) as float32 (H, W, 3) in [0, 1]."""
    for index, frame in enumerate(io.read_frames(info.path, info)):
        if index >= info.frame_count:
            return
        yield io.to_float(frame.image)


# Sequences up to this many bytes as float32 are decoded once and held while they are scored;
# longer ones are streamed (decoded again for each metric).
HOLD_BYTES = 256 * 2**20


def _frames_source(info: io.VideoInfo):
    """A function returning a fresh iterator over the frames of `info`, decoding only once when small."""
    if info.frame_count * info.width * info.height * 3 * 4 <= HOLD_BYTES:
        held = list(float_frames(info))
        return lambda: iter(held)
    return lambda: float_frames(info)


class Evaluator:
    """Scores results against one reference; its flows are computed once for every result.

    `like` is a sequence with the results' frame names (the input they came from): folders
    are restricted to the frame names it shares with the reference and ground truth.
    """

    def __init__(self, reference: str | Path, ground_truth: str | Path | None = None,
                 like: str | Path | None = None, long_term: int = 5, max_side: int | None = 480):
        if long_term < 0:
            raise InputError(f"--long-term must be 0 (none) or more frames, got {long_term}")
        if max_side is not None and max_side < 16:
            raise InputError(f"--max-side must be at least 16 pixels, got {max_side}")
        self._like, self._reference, self._truth = aligned_infos(
            io.probe(like or reference), io.probe(reference), io.probe(ground_truth) if ground_truth else None)
        truth, ref = self._truth, self._reference
        if truth is not None and (truth.width, truth.height) != (ref.width, ref.height):
            raise InputError(f"the ground truth is {truth.width}x{truth.height}, the reference "
                             f"{ref.width}x{ref.height}: they must have the same size")
        self.long_term = long_term
        reference = _frames_source(self._reference)
        self._short = metrics.ReferenceFlows.compute(reference(), step=1, max_side=max_side)
        self._long = None
        if long_term > 1 and self._reference.frame_count > long_term:
            self._long = metrics.ReferenceFlows.compute(reference(), step=long_term, max_side=max_side)
        elif long_term > 1:
            errors.warn(f"the clip has {self._reference.frame_count} frames: no long-term error at "
                        f"{long_term} frames")
        self.max_side = max_side
        # Pairs (first frame, t) for the long-term half of the paper's E_warp.
        self._first = metrics.ReferenceFlows.compute(reference(), against_first=True, max_side=max_side)
        del reference
        self._truth_frames = _frames_source(self._truth) if self._truth is not None else None
        self._ssim_left_out = False  # said once that the frames are too small for SSIM

    def score(self, result: str | Path) -> dict[str, float | None]:
        """All metrics of `result`; warping errors and flicker index are x1e-3, PSNR in dB.

        Keys: frames, warp_error (Lai, t -> t+1), warp_error_k<K> (t -> t+K; None for K frames or fewer), flicker_index,
        psnr and ssim (with a ground truth; ssim None for frames under 11 px a side), paper_warp_error (Lei et al.
        CVPR 2023: masked L1, short-term plus long-term to the first frame) and detail (Laplacian energy of the
        result over the ground truth's, or the reference's without one, per-frame contrast matched).
        """
        # The result the evaluator was made `like`, and the reference, were aligned (and warned about) then.
        same = Path(result).resolve() in (self._like.path.resolve(), self._reference.path.resolve())
        result_info = aligned_infos(io.probe(result), self._like, self._reference, self._truth, warn=not same)[0]
        if (result_info.width, result_info.height) != (self._reference.width, self._reference.height):
            raise InputError(f"result is {result_info.width}x{result_info.height}, reference is "
                             f"{self._reference.width}x{self._reference.height}")
        scale = metrics.WARP_ERROR_SCALE
        frames = _frames_source(result_info)
        report: dict[str, float | None] = {"frames": result_info.frame_count}  # a count: an int (JSON 12, not 12.0)
        short_l2, short_l1 = self._short.scores(frames())
        report["warp_error"] = short_l2 * scale
        if self._long is not None:
            report[f"warp_error_k{self.long_term}"] = self._long.score(frames()) * scale
        elif self.long_term > 1:  # a clip too short (said at the start): None, the same keys as for a longer one
            report[f"warp_error_k{self.long_term}"] = None
        report["flicker_index"] = metrics.flicker_index(frames())["luma"] * scale
        if self._truth_frames is not None:
            report["psnr"] = metrics.sequence_psnr(frames(), self._truth_frames())
            if min(result_info.width, result_info.height) >= metrics.SSIM_MIN_SIDE:
                report["ssim"] = metrics.sequence_ssim(frames(), self._truth_frames())
            else:  # None: the same keys for every result (JSON null)
                report["ssim"] = None
                if not self._ssim_left_out:  # said once: the reference's own column has the same size
                    self._ssim_left_out = True
                    errors.warn(f"SSIM needs frames of at least {metrics.SSIM_MIN_SIDE} x {metrics.SSIM_MIN_SIDE} "
                                f"pixels: left out for {result_info.width}x{result_info.height}")
        # The paper's E_warp: masked L1, short-term (t, t+1) plus long-term (first frame, t).
        report["paper_warp_error"] = (short_l1 + self._first.scores(frames())[1]) * scale
        # Sharpness against the ground truth (the look to keep) or, without one, the reference.
        if self._truth_frames is not None:
            detail_ref = self._truth_frames()
        else:
            detail_ref = float_frames(self._reference)
        report["detail"] = metrics.detail_ratio(frames(), detail_ref, max_side=self.max_side)
        return report


def evaluate(result: str | Path, reference: str | Path, ground_truth: str | Path | None = None,
             long_term: int = 5, max_side: int | None = 480) -> dict[str, float]:
    """All metrics of one result; warping errors use flow on `reference`."""
    return Evaluator(reference, ground_truth, like=result, long_term=long_term, max_side=max_side).score(result)


def evaluate_against_reference(result: str | Path, reference: str | Path, ground_truth: str | Path | None = None,
                               long_term: int = 5, max_side: int | None = 480
                               ) -> tuple[dict[str, float], dict[str, float]]:
    """(the result's metrics, the reference's own): the same scores of the video it came from, for a before and
    after (flows computed once)."""
    evaluator = Evaluator(reference, ground_truth, like=result, long_term=long_term, max_side=max_side)
    return evaluator.score(result), evaluator.score(reference)


_MEANING = {"warp_error": ("x1e-3", "lower: more consistent along the motion"),
            "paper_warp_error": ("x1e-3", "lower (Lei et al.: short- plus long-term, masked L1)"),
            "flicker_index": ("x1e-3", "lower: less frame-to-frame brightness change"),
            "psnr": ("dB", "higher: closer to the ground truth"), "ssim": ("", "higher: closer to the ground truth"),
            "detail": ("", "1 = as sharp as the ground truth (the reference without one); below: softer")}


def format_report(report: dict[str, float | None], before: dict[str, float | None] | None = None) -> str:
    """The metrics as aligned lines: name, value (and the reference's own, `before`), unit and what is better.
    A score that could not be given (None: its warning said why) has no line."""
    lines = []
    for key, value in report.items():
        if value is None:
            continue
        unit, meaning = _MEANING.get(key.split("_k")[0], ("", ""))
        if key == "frames":
            lines.append(f"{key:>16}: {int(value)}")
            continue
        then = None if before is None else before.get(key)
        # Nothing to compare where the reference is what it is scored against (its PSNR to itself, its
        # detail without a ground truth).
        if then is not None and (not math.isfinite(then) or (key == "detail" and "psnr" not in report)):
            then = None
        shown = f"{value:.4f} {unit}".ljust(16) + (f"(reference {then:.4f})" if then is not None else "").ljust(22)
        lines.append(f"{key:>16}: {shown}{meaning}".rstrip())
    return "\n".join(lines)
