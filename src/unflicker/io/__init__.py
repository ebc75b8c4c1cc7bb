"""Video and frame-folder I/O: streamed reading at full precision, atomic writing that keeps the source's media facts.

Layouts: frames come out of `read_frames` as `Frame.image`, an (H, W, 3) RGB array, uint8 for
8-bit sources and uint16 for deeper ones (10/12/16-bit video, 16-bit PNG/TIFF, DPX; exact, no
8-bit step), float32 in [0, 1] for OpenEXR (sRGB-encoded linear values, see io.images).
Processing code works on float32 in [0, 1]: `to_float` and `from_float` convert. YUV is turned
into RGB with the source's own matrix and range, and back with the same on writing.

Grey and alpha: grey frames are read as RGB with equal channels; a grey source is written back
grey to folders and .mkv, as colour to H.264/ProRes. Alpha (RGBA images, yuva/rgba video) is not
deflickered: it rides along as `Frame.alpha` and is written back unchanged where the output
holds it (folders, .mkv FFV1, .mov ProRes 4444).

Modules: `media` (VideoInfo and the facts read from a source), `images` (PNG/TIFF/DPX/OpenEXR
frames), `encoders` (which codec and layout an output gets, what it cannot carry), `writer`
(VideoWriter), `common` (sample conversions, atomic replacement).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from unflicker.errors import InputError
from unflicker.io.common import (DEFAULT_CRF, write_png, DEFAULT_FOLDER_FPS, IMAGE_EXTENSIONS, VIDEO_FORMATS, X264_PRESET,
                                 from_float, natural_key, replace, to_float, write_file_atomically)
from unflicker.io.encoders import CODECS, OutputPlan, check_output, held_depths, is_folder_output, plan_output
from unflicker.io.images import folder_timing, image_size, read_image
from unflicker.io.media import SWS_MATRIX, SWS_READ, Frame, scale_u16, sws_white, VideoInfo, stream_facts
from unflicker.io.writer import VideoWriter

__all__ = ["write_png", "CODECS", "DEFAULT_CRF", "DEFAULT_FOLDER_FPS", "IMAGE_EXTENSIONS", "VIDEO_FORMATS", "X264_PRESET",
           "Frame", "OutputPlan", "VideoInfo", "VideoWriter", "check_output", "frame_files", "frame_name", "from_float",
           "frame_estimate", "held_depths", "image_size", "is_folder_output", "natural_key", "os", "plan_output", "probe", "read_frames", "replace",
           "to_float", "write_file_atomically"]


def _list_frame_files(folder: Path) -> list[str]:
    names = [p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(names, key=natural_key)


def frame_files(folder: str | os.PathLike) -> list[str]:
    """Names of a folder's frame files in natural order, as `probe` lists them."""
    return _list_frame_files(Path(folder))


def frame_name(info: VideoInfo, index: int) -> str:
    """File name of frame `index` as `read_frames` names it (the folder's own names are kept)."""
    return info.frame_names[index] if info.is_folder else f"frame_{index:06d}.png"


def _open_container(path: Path):
    try:
        return av.open(str(path))
    except PermissionError as exc:  # FFmpeg's too: the file is there, it cannot be opened (not a decoding problem)
        raise InputError(f"cannot read {path}: {exc.strerror or 'permission denied'}") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: not a video FFmpeg can decode ({exc.__class__.__name__})") from None


def _check_frame_sizes(folder: Path, names: list[str], width: int, height: int) -> None:
    """InputError naming the first frame whose header gives another size than the first frame's: found now,
    from a few bytes of each file, not after decoding every frame before it (`info` told the first frame's
    size alone). Frames whose header says nothing here (OpenEXR) or cannot be opened are named by read_frames."""
    for name in names[1:]:
        try:
            size = image_size(folder / name, decode=False)
        except OSError:
            continue
        if size is not None and size != (width, height):
            raise InputError(f"mixed frame sizes in {folder}: {name} is {size[0]}x{size[1]}, the first frame is "
                             f"{width}x{height}")


def frame_estimate(path: str | os.PathLike) -> int:
    """About how many frames `probe` would count, from a folder's listing or a container's header alone (its
    stated count, else its duration times the frame rate: no demux, which for some containers reads the
    whole file); 0 where it cannot be read. For progress totals, not for anything the output depends on."""
    path = Path(path)
    try:
        if path.is_dir():
            return len(_list_frame_files(path))
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return stream.frames
            rate = stream.average_rate or stream.guessed_rate
            seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else \
                (container.duration or 0) / 1e6
            return max(0, round(seconds * float(rate))) if rate else 0
    except (OSError, IndexError, av.error.FFmpegError, UnicodeDecodeError, InputError):
        return 0


def _stated_end(container, stream) -> float | None:
    """Where the header says the video stream ends, in seconds: its own duration (Matroska's DURATION tag), or
    the container's where it holds nothing else (an audio stream may run longer); None if unstated."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0
    if stream.duration and stream.time_base:
        stated = float(stream.duration * stream.time_base)
    elif tag := next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None):
        try:
            hours, minutes, seconds = tag.split(":")
        except ValueError:
            return None
        stated = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    elif len(container.streams) == 1 and container.duration:
        stated = container.duration / 1e6
    else:
        return None
    # Muxers differ on whether that is a duration or where it ends (Matroska's DURATION tag is the end):
    # the earlier reading, so a stream that starts late is not taken for a truncated one.
    return min(stated, start + stated)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video file or a folder of frames; raise InputError if it cannot be used."""
    path = Path(path)
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"input not found: {path}") from None
    except OSError as exc:  # a name too long for the file system, a folder on the way that cannot be entered
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        try:
            names = _list_frame_files(path)
        except OSError as exc:  # a folder that cannot be listed
            raise InputError(f"cannot read folder {path}: {exc.strerror or exc}") from None
        if not names:
            raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        first, alpha, facts = read_image(path / names[0])
        _check_frame_sizes(path, names, first.shape[1], first.shape[0])
        depth = 16 if first.dtype != np.uint8 else 8
        timecode, rate = folder_timing(path / names[0])
        return VideoInfo(path, True, first.shape[1], first.shape[0], len(names), rate or DEFAULT_FOLDER_FPS,
                         facts.pixel_format, depth, False, None, tuple(names), facts.grey, alpha is not None,
                         sample_bits=facts.bits, chroma="gray" if facts.grey else "rgb",
                         codec=Path(names[0]).suffix.lower().lstrip("."), linear=facts.linear,
                         color_trc=8 if facts.linear else 2, timecode=timecode)
    with _open_container(path) as container:
        if not container.streams.video:
            raise InputError(f"no video stream in {path}")
        stream = container.streams.video[0]
        # AVI's count includes the empty chunks that stand for dropped frames (its variable frame rate).
        count, end = (0 if container.format.name == "avi" else stream.frames), None
        if count and "mp4" in container.format.name.split(","):
            # MP4/MOV's count includes the frames an edit list hides (a cut made without re-encoding keeps those
            # the first shown frame needs): decoding gives only the others.
            count = sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)
        if not count:  # no count in the header (Matroska, WebM): the packets are counted, and where they end
            for packet in container.demux(stream):
                if packet.size:
                    count += 1
                    if packet.pts is not None and packet.time_base:
                        stop = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                        end = stop if end is None else max(end, stop)
        if count == 0:
            raise InputError(f"no frames in {path}")
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            raise InputError(f"{path}: the video stream has no frame size (unsupported codec?)")
        fmt = ctx.format.name if ctx.format is not None else "unknown"
        facts = stream_facts(path, container, stream)
        fps = stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS
        stated = _stated_end(container, stream)
        missing = stated - end if end is not None and stated is not None else 0.0
        # No stated end (a raw .h264 stream, one image file): nothing is known to be missing.
        short = stated is not None and missing > max(2 / float(fps), 0.01 * stated)
        facts["missing_seconds"] = round(missing, 3) if short else 0.0
        return VideoInfo(path, False, ctx.width, ctx.height, count, Fraction(fps),
                         fmt, 16 if facts["sample_bits"] > 8 else 8, bool(container.streams.audio),
                         Fraction(stream.time_base) if stream.time_base else None,
                         grayscale=facts["chroma"] == "gray", **facts)


def read_frames(path: str | os.PathLike, info: VideoInfo | None = None) -> Iterator[Frame]:
    """Stream the frames of a video or folder in order; only one decoded frame is held at a time."""
    info = info or probe(path)
    if info.is_folder:
        for index, name in enumerate(info.frame_names):
            image, alpha, facts = read_image(info.path / name)
            if image.shape[:2] != (info.height, info.width):
                raise InputError(f"mixed frame sizes in {info.path}: {name} is {image.shape[1]}x{image.shape[0]}, "
                                 f"the first frame is {info.width}x{info.height}")
            if (image.dtype == np.uint8) != (info.bit_depth == 8) or facts.linear != info.linear:
                raise InputError(f"mixed bit depths in {info.path}: {name}")
            if info.grayscale and not facts.grey:
                # The output is written grey like the first frame: a colour frame would lose its colour.
                raise InputError(f"mixed grey and colour frames in {info.path}: {name} is colour, "
                                 f"the first frame is grey")
            yield Frame(index, image, name, None, alpha)
        return
    deep = info.bit_depth == 16
    layout = ("rgba64le" if deep else "rgba") if info.has_alpha else ("rgb48le" if deep else "rgb24")
    # The source's matrix and range (the stream's tags when the frames carry none), as the writer uses them.
    convert = {}
    yuv = info.chroma not in ("rgb", "gray")
    if yuv:
        convert["interpolation"] = SWS_READ
        if info.colorspace in SWS_MATRIX:
            convert["src_colorspace"] = SWS_MATRIX[info.colorspace]
        if info.color_range:
            convert["src_color_range"] = info.color_range
    planar = ("gbrap16le" if info.has_alpha else "gbrp16le") if deep and yuv else None  # see SWS_READ
    # Deep YUV is scaled so that the format's white reads as 65535 (see sws_white).
    white, opaque = sws_white(info.pixel_format, convert.get("src_colorspace"), info.color_range) \
        if planar else (65535, 65535)
    with _open_container(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, decoded in enumerate(container.decode(stream)):
                if (decoded.width, decoded.height) != (info.width, info.height):
                    raise InputError(f"{info.path}: the frame size changes from {info.width}x{info.height} to "
                                     f"{decoded.width}x{decoded.height} at frame {index}; split the video there")
                data = (decoded.reformat(format=planar, **convert).to_ndarray() if planar else
                        decoded.to_ndarray(format=layout, **convert))
                alpha = None
                if info.has_alpha:
                    data, alpha = np.ascontiguousarray(data[:, :, :3]), data[:, :, 3].copy()
                    if opaque != 65535:
                        alpha = scale_u16(alpha, 65535 / opaque)
                if white != 65535:
                    data = scale_u16(data, 65535 / white)
                yield Frame(index, data, frame_name(info, index), decoded.pts, alpha)
        except av.error.FFmpegError as exc:
            raise InputError(f"{info.path}: decoding failed ({exc.__class__.__name__}: {exc})") from None
