"""Video and frame-folder I/O: streamed reading, atomic writing, audio and timestamps kept.

Layouts: frames come out of `read_frames` as `Frame.image`, an (H, W, 3) RGB array, uint8 for
8-bit sources and uint16 for 16-bit ones (16-bit PNG/TIFF, 10/12/16-bit video). Processing
code works on float32 in [0, 1]: `to_float` and `from_float` convert.

Grey and alpha: grey frames are read as RGB with equal channels; a grey source (single-channel
images, a gray* pixel format) is written back grey to PNG/TIFF folders and .mkv, as colour to
H.264. The alpha of RGBA image frames is not deflickered: it rides along as `Frame.alpha`
and is written back unchanged to PNG/TIFF folders; video outputs have no alpha.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from unflicker.errors import InputError, OutputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# H.264 output: x264's "veryfast" at CRF 16 encodes 854x480 frames 2.7 times as fast as "medium" at
# CRF 18 (12 against 34 ms a frame on goat) at the same fidelity (35.45 against 35.28 dB through
# 4:2:0), for files about 20 % larger.
X264_PRESET = "veryfast"
DEFAULT_CRF = 16

# extension -> (container format, codec); a path with no extension is a folder of PNG frames.
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "ffv1"),
}
DEFAULT_FOLDER_FPS = Fraction(25)
# (grey, alpha, bit depth) of a folder's first frame -> the FFmpeg name of that layout.
_FOLDER_FORMATS = {
    (False, False, 8): "rgb24", (False, False, 16): "rgb48", (False, True, 8): "rgba", (False, True, 16): "rgba64",
    (True, False, 8): "gray", (True, False, 16): "gray16", (True, True, 8): "ya8", (True, True, 16): "ya16",
}


@dataclass(frozen=True)
class VideoInfo:
    """What a user needs to know about an input, and what a writer needs to keep."""

    path: Path
    is_folder: bool
    width: int
    height: int
    frame_count: int
    fps: Fraction
    """Average frame rate (25 for a folder of frames)."""
    pixel_format: str
    """FFmpeg pixel format of the video stream, or e.g. 'rgb24'/'rgb48' for a folder."""
    bit_depth: int
    """8 or 16: the dtype `read_frames` yields (uint8 or uint16)."""
    has_audio: bool
    time_base: Fraction | None = None
    frame_names: tuple[str, ...] = field(default=(), repr=False)
    """File names of a folder's frames in natural order (empty for a video)."""
    grayscale: bool = False
    """The source has one colour channel (its frames are still read as RGB)."""
    has_alpha: bool = False
    """A folder's first frame has an alpha channel (kept in `Frame.alpha`)."""

    def describe(self) -> str:
        kind = "folder" if self.is_folder else "video"
        audio = ", audio" if self.has_audio else ""
        alpha = ", alpha" if self.has_alpha else ""
        return (f"{self.path.name}: {kind}, {self.frame_count} frames, {self.width}x{self.height}, "
                f"{float(self.fps):.3g} fps, {self.pixel_format}, {self.bit_depth}-bit{alpha}{audio}")


@dataclass
class Frame:
    """One decoded frame: `image` (H, W, 3) RGB uint8/uint16, its index, file name and timestamp.

    `alpha` is the (H, W) alpha channel (same dtype) of an RGBA image frame, else None.
    """

    index: int
    image: np.ndarray
    name: str
    pts: int | None = None
    alpha: np.ndarray | None = None


def natural_key(name: str) -> list:
    """Sort key that puts 2.png before 10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 (H, W, C) -> float32 in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) * (1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * (1.0 / 65535.0)
    return np.asarray(image, dtype=np.float32)


def from_float(image: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """float in [0, 1] -> uint8 (bit_depth 8) or uint16 (bit_depth 16), rounded and clipped."""
    if image.dtype in (np.uint8, np.uint16):
        return image
    top, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    return np.clip(image * top + 0.5, 0, top).astype(dtype)


def _list_frame_files(folder: Path) -> list[str]:
    names = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(names, key=natural_key)


def frame_name(info: VideoInfo, index: int) -> str:
    """File name of frame `index` as `read_frames` names it (the folder's own names are kept)."""
    return info.frame_names[index] if info.is_folder else f"frame_{index:06d}.png"


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(RGB image, alpha or None, whether the file is single-channel grey)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image {path}")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path.name}: unsupported sample type {image.dtype} (need 8 or 16 bit)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), None, True
    if image.shape[2] == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB), image[:, :, 1].copy(), True
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), image[:, :, 3].copy(), False
    if image.shape[2] != 3:
        raise InputError(f"{path.name}: unsupported {image.shape[2]}-channel image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None, False


def _open_container(path: Path):
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: not a video FFmpeg can decode ({exc.__class__.__name__})") from None


def _pixel_format(name: str) -> tuple[int, bool]:
    """(8 or 16: the depth frames are read at, whether the format is grey) of an FFmpeg pixel format."""
    try:
        fmt = av.VideoFormat(name)
    except (ValueError, av.error.FFmpegError):
        return 8, False
    deep = any(c.bits > 8 for c in fmt.components)
    colour = [c for c in fmt.components if not c.is_alpha]
    return (16 if deep else 8), len(colour) == 1 and not fmt.has_palette and not fmt.is_bayer


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file or a folder of frames; raise InputError if it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        names = _list_frame_files(path)
        if not names:
            raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        first, alpha, grey = _read_image(path / names[0])
        depth = 16 if first.dtype == np.uint16 else 8
        return VideoInfo(path, True, first.shape[1], first.shape[0], len(names), DEFAULT_FOLDER_FPS,
                         _FOLDER_FORMATS[grey, alpha is not None, depth], depth, False, None, tuple(names),
                         grey, alpha is not None)
    with _open_container(path) as container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        stream = container.streams.video[0]
        count = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if count == 0:
            raise InputError(f"no frames in {path}")
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise InputError(f"{path}: the video stream has no frame size (unsupported codec?)")
        fmt = ctx.format.name if ctx.format is not None else "unknown"
        depth, grey = _pixel_format(fmt)
        fps = stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS
        return VideoInfo(path, False, ctx.width, ctx.height, count, Fraction(fps), fmt, depth,
                         bool(container.streams.audio), Fraction(stream.time_base) if stream.time_base else None,
                         grayscale=grey)


def read_frames(path: str | os.PathLike, info: VideoInfo | None = None) -> Iterator[Frame]:
    """Stream the frames of a video or folder in order; only one decoded frame is held at a time."""
    info = info or probe(path)
    if info.is_folder:
        for index, name in enumerate(info.frame_names):
            image, alpha, grey = _read_image(info.path / name)
            if image.shape[:2] != (info.height, info.width):
                raise InputError(f"mixed frame sizes in {info.path}: {name} is {image.shape[1]}x{image.shape[0]}, "
                                 f"the first frame is {info.width}x{info.height}")
            if (image.dtype == np.uint16) != (info.bit_depth == 16):
                raise InputError(f"mixed bit depths in {info.path}: {name}")
            if info.grayscale and not grey:
                # The output is written grey like the first frame: a colour frame would lose its colour.
                raise InputError(f"mixed grey and colour frames in {info.path}: {name} is colour, "
                                 f"the first frame is grey")
            yield Frame(index, image, name, None, alpha)
        return
    layout = "rgb48le" if info.bit_depth == 16 else "rgb24"
    with _open_container(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, decoded in enumerate(container.decode(stream)):
                if (decoded.width, decoded.height) != (info.width, info.height):
                    raise InputError(f"{info.path}: the frame size changes from {info.width}x{info.height} to "
                                     f"{decoded.width}x{decoded.height} at frame {index}; split the video there")
                yield Frame(index, decoded.to_ndarray(format=layout), frame_name(info, index), decoded.pts)
        except av.error.FFmpegError as exc:
            raise InputError(f"{info.path}: decoding failed ({exc.__class__.__name__}: {exc})") from None


def is_folder_output(path: str | os.PathLike) -> bool:
    """A path without a video extension (or an existing folder) means a folder of PNG frames."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() not in VIDEO_FORMATS


def check_output(input_path: str | os.PathLike, output_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse outputs that would lose something, before any work starts."""
    output = Path(output_path)
    if Path(input_path).resolve() == output.resolve():
        raise OutputError(f"output {output} is the input: choose another path")
    if output.suffix and output.suffix.lower() not in VIDEO_FORMATS and output.suffix.lower() not in IMAGE_EXTENSIONS:
        if not output.is_dir():
            raise OutputError(f"unsupported output type {output.suffix!r}: use one of "
                              f"{', '.join(VIDEO_FORMATS)} or a folder name")
    if output.exists() and not overwrite:
        raise OutputError(f"output {output} exists: pass --overwrite to replace it")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable")
    return output


class VideoWriter:
    """Write frames to a video or folder under a temporary name; `close()` renames it into place.

    Keeps the source's resolution, timestamps (so variable frame rate survives) and copies its
    audio stream unchanged. Use as a context manager: an exception discards the partial output
    and leaves any existing file untouched.
    """

    def __init__(self, path: str | os.PathLike, source: VideoInfo, crf: int = DEFAULT_CRF, overwrite: bool = False,
                 comment: str | None = None):
        """comment: a short text stored as a video container's `comment` tag, e.g. the settings
        that made the output."""
        self.path = Path(path)
        self.comment = comment
        self.source = source
        self.crf = crf
        self.overwrite = overwrite
        self.to_folder = is_folder_output(self.path)
        self.count = 0
        self._temp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}{self.path.suffix}")
        self._container = None
        self._audio = None
        if self.to_folder:
            self._temp.mkdir()  # a folder holds frames only: the comment goes to video containers
        else:
            self._open_video()

    def _open_video(self) -> None:
        fmt, codec = VIDEO_FORMATS[self.path.suffix.lower()]
        self._container = av.open(str(self._temp), mode="w", format=fmt)
        if self.comment is not None:
            self._container.metadata["comment"] = self.comment
        src = self.source
        self._stream = self._container.add_stream(codec, rate=src.fps)
        self._stream.width, self._stream.height = src.width, src.height
        if src.time_base is not None:
            # Encoder and stream both tick in the source's time base, so its timestamps survive.
            self._stream.codec_context.time_base = src.time_base
            self._stream.time_base = src.time_base
        if codec == "ffv1":
            if src.grayscale:
                layout = "gray16le" if src.bit_depth == 16 else "gray"
            else:
                layout = "gbrp16le" if src.bit_depth == 16 else "bgr0"
            self._stream.pix_fmt = self._input_layout = layout
            self._frame_layout = "rgb48le" if src.bit_depth == 16 else "rgb24"
        else:
            # x264's 4:2:0 needs even sizes; 4:4:4 keeps odd sizes exact instead of cropping.
            even = src.width % 2 == 0 and src.height % 2 == 0
            self._stream.pix_fmt = "yuv420p" if even else "yuv444p"
            self._stream.options = {"crf": str(self.crf), "preset": X264_PRESET}
            self._frame_layout = "rgb24"
            self._input_layout = None
        if src.has_audio and not src.is_folder:
            self._audio = _AudioCopier(src.path, self._container)

    def write(self, image: np.ndarray, pts: int | None = None, name: str | None = None,
              alpha: np.ndarray | None = None) -> None:
        """Append one frame: (H, W, 3) RGB, uint8/uint16 or float in [0, 1].

        alpha: optional (H, W) alpha (uint8/uint16 or float in [0, 1]), kept by folder outputs only.
        """
        if image.shape != (self.source.height, self.source.width, 3):
            raise ValueError(f"frame shape {image.shape} != source {(self.source.height, self.source.width, 3)}")
        if self.to_folder:
            self._write_image(image, name, alpha)
        else:
            self._write_video_frame(image, pts)
        self.count += 1

    def _write_image(self, image: np.ndarray, name: str | None, alpha: np.ndarray | None) -> None:
        depth = self.source.bit_depth
        stem = Path(name).stem if name else f"frame_{self.count:06d}"
        suffix = Path(name).suffix.lower() if name else ".png"
        if suffix not in (".png", ".tif", ".tiff"):
            suffix = ".png"  # never re-encode a lossy format
        data = from_float(image, depth)
        if self.source.grayscale:
            data = cv2.cvtColor(data, cv2.COLOR_RGB2GRAY)
            if alpha is not None:  # cv2 writes no grey + alpha: such frames come back as RGBA
                data = cv2.cvtColor(data, cv2.COLOR_GRAY2BGR)
        else:
            data = cv2.cvtColor(data, cv2.COLOR_RGB2BGR)
        if alpha is not None:
            data = np.dstack([data, _to_depth(alpha, depth)])
        if not cv2.imwrite(str(self._temp / f"{stem}{suffix}"), data):
            raise OutputError(f"cannot write frame {stem}{suffix} into {self.path}")

    def _write_video_frame(self, image: np.ndarray, pts: int | None) -> None:
        depth = 16 if self._frame_layout == "rgb48le" else 8
        data = from_float(image, depth)
        if data.dtype == np.uint16 and depth == 8:
            data = (data >> 8).astype(np.uint8)  # 16-bit source into an 8-bit codec
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format=self._frame_layout)
        if self._input_layout is not None:
            frame = frame.reformat(format=self._input_layout)
        if pts is not None and self.source.time_base is not None:
            frame.pts = pts
            frame.time_base = self.source.time_base
        else:
            frame.pts = self.count
            frame.time_base = 1 / self.source.fps
        for packet in self._stream.encode(frame):
            self._mux(packet)

    def _mux(self, packet) -> None:
        if self._audio is not None and packet.pts is not None:
            self._audio.copy_until(float(packet.pts * packet.time_base))
        self._container.mux(packet)

    def close(self) -> Path:
        """Flush, then move the finished output into place (replacing it only if allowed)."""
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._mux(packet)
            if self._audio is not None:
                self._audio.copy_until(float("inf"))
                self._audio.close()
            self._container.close()
            self._container = None
        if self.count == 0:
            self.abort()
            raise OutputError("no frames were written")
        _replace(self._temp, self.path, self.overwrite)
        return self.path

    def abort(self) -> None:
        """Discard the partial output."""
        if self._container is not None:
            if self._audio is not None:
                self._audio.close()
            self._container.close()
            self._container = None
        if self._temp.is_dir():
            shutil.rmtree(self._temp, ignore_errors=True)
        elif self._temp.exists():
            self._temp.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _AudioCopier:
    """Copies the source's first audio stream packet by packet, interleaved by time."""

    def __init__(self, source_path: Path, output_container):
        self._input = av.open(str(source_path))
        in_stream = self._input.streams.audio[0]
        try:
            self._stream = output_container.add_stream_from_template(in_stream)
        except (ValueError, av.error.FFmpegError) as exc:
            self._input.close()
            raise OutputError(f"cannot copy the {in_stream.codec_context.name} audio into "
                              f"{output_container.format.name}: {exc}; choose .mkv to keep it") from None
        self._output = output_container
        self._packets = (p for p in self._input.demux(in_stream) if p.dts is not None)
        self._pending = None

    def copy_until(self, seconds: float) -> None:
        while True:
            packet = self._pending or next(self._packets, None)
            self._pending = None
            if packet is None:
                return
            if packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                self._pending = packet
                return
            packet.stream = self._stream
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()


def _to_depth(channel: np.ndarray, depth: int) -> np.ndarray:
    """A single channel (uint8, uint16 or float in [0, 1]) at `depth` bits, values rescaled."""
    if channel.dtype == np.uint8 and depth == 16:
        return channel.astype(np.uint16) * 257
    if channel.dtype == np.uint16 and depth == 8:
        return (channel >> 8).astype(np.uint8)
    return from_float(channel, depth)


def write_file_atomically(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to `path` under a temporary name, then rename it into place."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")
    try:
        temp.write_bytes(data)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    _replace(temp, path, overwrite)
    return path


def _replace(temp: Path, final: Path, overwrite: bool) -> None:
    if final.exists():
        if not overwrite:
            shutil.rmtree(temp, ignore_errors=True) if temp.is_dir() else temp.unlink(missing_ok=True)
            raise OutputError(f"output {final} appeared while writing; kept it and discarded the new one")
        if final.is_dir():
            # Swap folders so the old one is only removed once the new one is in place.
            backup = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(backup)
            temp.rename(final)
            shutil.rmtree(backup, ignore_errors=True)
            return
    os.replace(temp, final)



def atomic_npy(path: Path, array: np.ndarray) -> Path:
    """Save an array as .npy under a temporary name, then rename it into place (replacing)."""
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(temp, "wb") as f:
            np.save(f, array)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_png(path: Path, image: np.ndarray) -> None:
    """One (H, W, 3) float RGB frame in [0, 1] as a 16-bit PNG (folders made as needed)."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(from_float(np.clip(image, 0.0, 1.0), 16), cv2.COLOR_RGB2BGR)):
        raise OutputError(f"cannot write {path}")
