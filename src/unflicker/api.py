"""`unflicker.deflicker(...)`: one call for files and for in-memory clips."""

from __future__ import annotations

import dataclasses
import os
import reprlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from unflicker import io
from unflicker.errors import InputError, OutputError, warn
from unflicker.pipeline import RunConfig, RunSummary, deflicker_file, deflicker_frames

# RunConfig fields that only mean something when files are written.
_FILE_OPTIONS = ("stop_after", "crf", "codec", "bit_depth", "overwrite", "keep_work", "compare", "plot", "plot_label")


def _config(method: str | None, options: dict, config: RunConfig | None = None) -> RunConfig:
    """The run's settings: `config` (a RunConfig; None: the defaults) with `method` (where given) and `options`."""
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"method"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    if config is None:
        return RunConfig(method=method, **options)
    if not isinstance(config, RunConfig):
        raise InputError(f"config must be a unflicker.RunConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **options, **({} if method is None else {"method": method}))


def _path(value, what: str, error: type[Exception], other: str = "") -> Path:
    """`value` as a Path where it is a str or an os.PathLike of a str (what pathlib takes), else `error`; bytes
    (a bytes path, an os.PathLike of bytes) are refused as the options' paths are (config.check_types)."""
    try:
        text = os.fspath(value)
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise error(f"{what} must be a path (str or os.PathLike){other}, got {reprlib.repr(value)} "
                    f"({type(value).__name__})")
    return Path(text)


class _FloatFrames(Sequence):
    """A clip's frames as (H, W, 3) float32 RGB in [0, 1], converted one at a time on access.

    Accepts grey (H, W) or (H, W, 1), RGB (H, W, 3) and RGBA (H, W, 4) frames, uint8, uint16
    or float (NaN or inf is an error, values outside [0, 1] are clipped); `restore` turns output
    frames back into the input's layout and dtype.
    """

    def __init__(self, frames):
        self.frames = frames
        first = self.array(0)
        shape = first.shape
        if first.ndim == 2:
            first = first[:, :, None]
        if first.ndim != 3 or first.shape[2] not in (1, 3, 4):
            raise InputError(f"expected frames of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {shape}")
        if 0 in first.shape[:2]:
            raise InputError(f"frames of {first.shape[1]}x{first.shape[0]} pixels hold no picture")
        # Computed in the machine's byte order (big-endian frames: FITS files); returned in the input's.
        self.native = first.dtype.newbyteorder("=")
        if not (np.issubdtype(self.native, np.floating) or self.native in (np.uint8, np.uint16)):
            raise InputError(f"frames must be uint8, uint16 or float in [0, 1], got {first.dtype}")
        self.shape, self.dtype = shape, first.dtype
        self.clipped = False
        """Whether values outside [0, 1] were clipped (and warned about)."""

    def __len__(self) -> int:
        return len(self.frames)

    def array(self, t: int) -> np.ndarray:
        """Input frame t as it is, as an array; what NumPy cannot take (a torch tensor that requires grad or
        lives on a GPU, a ragged list) an InputError."""
        try:
            return np.asarray(self.frames[t])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"frame {t} cannot be read as an array: {exc}") from None

    def __getitem__(self, t: int) -> np.ndarray:
        frame = self.array(t)
        if frame.shape != self.shape or frame.dtype != self.dtype:
            raise InputError(f"frame {t} is {frame.dtype} {frame.shape}, frame 0 is {self.dtype} {self.shape}")
        colour = frame[:, :, :3] if frame.ndim == 3 else frame[:, :, None]  # alpha passes through (restore)
        colour = colour.astype(self.native, copy=False)
        with np.errstate(over="ignore"):  # finite float64 values past float32's range: inf here, clipped below
            frame = io.to_float(colour)
        if self.dtype.kind == "f":
            low, high = float(frame.min(initial=0.0)), float(frame.max(initial=0.0))
            if not (np.isfinite(low) and np.isfinite(high)) and not np.isfinite(colour).all():
                raise InputError(f"frame {t} holds NaN or infinite values")
            if low < 0.0 or high > 1.0:  # as OpenEXR frames are (io.images)
                if not self.clipped:  # once a call (its frames are read more than once)
                    warn("float frames hold values outside [0, 1]: they are clipped")
                self.clipped = True
                frame = np.clip(frame, 0.0, 1.0)
        if frame.shape[2] == 1:
            return np.repeat(frame, 3, axis=2)
        return np.ascontiguousarray(frame)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[t] for t in range(len(self)))

    def restore(self, t: int, rgb: np.ndarray) -> np.ndarray:
        """Output frame t ((H, W, 3) float in [0, 1]) in the input's layout and dtype (alpha copied)."""
        channels = 1 if len(self.shape) == 2 else self.shape[2]
        out = rgb.mean(axis=2, keepdims=True) if channels == 1 else rgb  # grey in, equal channels out (to rounding)
        if self.native in (np.uint8, np.uint16):
            out = io.from_float(out, 16 if self.native == np.uint16 else 8)
        else:
            out = out.astype(self.dtype)
        if channels == 4:  # the alpha is copied bit for bit, not through a float round trip
            out = np.concatenate([out, self.array(t)[:, :, 3:]], axis=2)
        return out.reshape(self.shape)


def deflicker(frames_or_path, output: str | os.PathLike | None = None, method: str | None = None,
              config: RunConfig | None = None, **options) -> RunSummary | np.ndarray:
    """Remove flicker from a video file, a frame folder, or an in-memory clip.

    frames_or_path: a path (video file or folder of frames), or a clip: a (T, H, W, 3) array or
    a list of (H, W, 3) frames, uint8, uint16 or float in [0, 1]. Grey (T, H, W) / (T, H, W, 1)
    and RGBA (T, H, W, 4) clips work too; alpha is passed through unchanged. A 3-D array whose
    last axis is 1, 3 or 4 is taken for one frame and refused (pass frame[None]).
    output: for a path, where to write (video by extension, else a folder of PNG frames).
    method: 'neural' or 'classical' (None: neural, or classical for frames too small for it).
    options: RunConfig fields: preset, atlas, atlas_steps, projection, keep_slow, kind, carry_texture, strength,
    filter_weights, refine_weights, precision, progress, segments, engine; for files also crf, codec, bit_depth,
    overwrite, keep_work, stop_after, compare, plot, plot_label. An unknown option, or one of the wrong type, is an InputError.
    config: a `unflicker.RunConfig` to start from (settings kept for several calls); `method` and `options`
    replace its fields. The nested settings are `unflicker.EngineConfig` and `unflicker.SegmentConfig`.
    Returns the `unflicker.RunSummary` (its fields say what each holds) for a path, else
    the deflickered clip as an array with the input's shape ((T, ...) for a list) and dtype.
    Raises (all `unflicker.UnflickerError`): InputError for a bad input or option, OutputError where the
    output cannot be written, WeightsError for missing or mismatched network weights, UnflickerError for
    the rest (a worker that kept dying, Ray unreachable). What cannot be checked ahead is warned about
    (`warnings`: e.g. the classical method taken for frames too small for the neural one). An error or a
    KeyboardInterrupt leaves no output, temporary files or worker processes behind.
    Safe to call from any thread, and from several at once; engine ray: a run that starts Ray itself (ray.init)
    is one at a time, a second at once an InputError; runs share a Ray the program started first.
    """
    try:
        return _deflicker(frames_or_path, output, method, config, options)
    except (InputError, OutputError) as exc:
        raise type(exc)(_keyword_names(str(exc))) from None


def _keyword_names(message: str) -> str:
    """A settings error as the caller wrote the settings: the library's checks name the CLI's flags
    (`--strength must be in 0..1`), a call names the keyword (`strength must be in 0..1`)."""
    import re

    def name(match: re.Match) -> str:
        return _FLAG_KEYWORDS.get(match.group(0), match.group(0))

    for flag, keyword in (("--method neural", "method='neural'"), ("--engine ray", "engine.engine='ray'")):
        message = message.replace(flag, keyword)
    return re.sub(r"(?<![\w/.-])--[a-z][a-z-]*", name, message)


def _flag_keywords() -> dict[str, str]:
    from unflicker.config import EngineConfig

    flags = {f"--{f.name.replace('_', '-')}": f.name for f in dataclasses.fields(RunConfig)}
    flags.update({f"--{f.name.replace('_', '-')}": f"engine.{f.name}" for f in dataclasses.fields(EngineConfig)})
    flags.update({"--no-projection": "projection=False", "--segment-frames": "segments.frames",
                  "--quiet": "progress=False"})
    return flags


_FLAG_KEYWORDS = _flag_keywords()


def _deflicker(frames_or_path, output, method, config, options) -> RunSummary | np.ndarray:
    config = _config(method, options, config)
    if isinstance(frames_or_path, (str, bytes, os.PathLike)):
        path = _path(frames_or_path, "the input", InputError, ", an array or a list of frames")
        if output is None and config.stop_after is None:
            raise OutputError("give an output path (only stop_after runs without one)")
        return deflicker_file(path, None if output is None else _path(output, "output", OutputError), config)
    if output is not None:
        raise OutputError("output= applies to a path input; an in-memory clip is returned as an array")
    defaults = RunConfig()
    set_options = [name for name in _FILE_OPTIONS if getattr(config, name) != getattr(defaults, name)]
    if set_options:
        raise InputError(f"option(s) {', '.join(set_options)} apply only to a path input")
    if isinstance(frames_or_path, np.ndarray):
        if frames_or_path.ndim not in (3, 4):
            raise InputError(f"expected a (T, H, W, 3) clip, got an array of shape {frames_or_path.shape}")
        if frames_or_path.ndim == 3 and frames_or_path.shape[2] in (1, 3, 4):  # not a grey clip W = 1, 3, 4 px wide
            raise InputError(f"expected a (T, H, W, 3) clip, got an array of shape {frames_or_path.shape}: one "
                             f"(H, W, C) frame? Pass frame[None] for a clip of one frame (a grey clip as (T, H, W, 1))")
    elif not isinstance(frames_or_path, (list, tuple)):
        raise InputError(f"expected a path, an array or a list of frames, got {type(frames_or_path).__name__}")
    if len(frames_or_path) == 0:
        raise InputError("no frames to deflicker")
    clip = _FloatFrames(frames_or_path)
    result = np.empty((len(clip), *clip.shape), clip.dtype)
    for t, frame in enumerate(deflicker_frames(clip, config)):
        result[t] = clip.restore(t, frame)
    return result
