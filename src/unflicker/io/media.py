"""What a source holds beyond its pixels: depth, chroma, rotation, aspect, colour and HDR tags, streams.

`VideoInfo` is what `io.probe` returns; the helpers here read those facts from a PyAV container
and its first decoded frame. Colour tags are FFmpeg's enum values (AVColorPrimaries,
AVColorTransferCharacteristic, AVColorSpace, AVColorRange), named as FFmpeg's command line names them.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from unflicker.errors import warn

UNSPECIFIED = 2  # AVCOL_PRI/TRC/SPC_UNSPECIFIED
PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film", 9: "bt2020",
             10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213"}
TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear", 9: "log100",
             10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12",
             16: "smpte2084", 17: "smpte428", 18: "arib-std-b67"}
MATRICES = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco", 9: "bt2020nc",
            10: "bt2020c", 14: "ictcp"}
RANGES = {1: "tv", 2: "pc"}
FIELD_ORDERS = {0: "unknown", 1: "progressive", 2: "tt", 3: "bb", 4: "tb", 5: "bt"}
HDR_TRANSFERS = (16, 18)  # PQ, HLG
# AVColorSpace -> swscale's SWS_CS_* for the YUV <-> RGB matrix (None: swscale's default, BT.601).
SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
# swscale's scaler for YUV -> RGB on reading: its default fast path (chroma upsampled by its own tables) reads
# 4:2:0 and 4:2:2 one to two levels darker, and 4:2:0 of odd width into packed 48-bit RGB as garbage (FFmpeg
# 8.1); accurate rounding with full chroma interpolation, into planar RGB for deep samples, reads them right.
SWS_READ = av.video.reformatter.Interpolation.BILINEAR | av.video.reformatter.Interpolation.ACCURATE_RND | \
    av.video.reformatter.Interpolation.FULL_CHR_H_INT
UNCARRIED_SIDE_DATA = {"DYNAMIC_HDR_PLUS": "HDR10+ dynamic metadata", "DYNAMIC_HDR_VIVID": "HDR Vivid metadata",
                       "DOVI_METADATA": "Dolby Vision metadata", "DOVI_RPU_BUFFER": "Dolby Vision RPU",
                       "ICC_PROFILE": "ICC profile", "FILM_GRAIN_PARAMS": "film grain parameters"}
# Container metadata that describes the file written, not the content: not carried over.
TECHNICAL_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration"}


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
    """FFmpeg pixel format of the video stream, or e.g. 'rgb24'/'rgb48'/'gbrp10le' for a folder."""
    bit_depth: int
    """8 or 16: the dtype `read_frames` yields (uint8 or uint16; float32 for OpenEXR)."""
    has_audio: bool
    time_base: Fraction | None = None
    frame_names: tuple[str, ...] = field(default=(), repr=False)
    """File names of a folder's frames in natural order (empty for a video)."""
    grayscale: bool = False
    """The source has one colour channel (its frames are still read as RGB)."""
    has_alpha: bool = False
    """The source has an alpha channel (kept in `Frame.alpha`)."""
    sample_bits: int = 8
    """Bits per sample of the source (8, 10, 12, 16; 16 or 32 for half/float OpenEXR)."""
    chroma: str = "rgb"
    """Sample layout family: '420', '422', '444' (and other YUV subsamplings), 'rgb' or 'gray'."""
    codec: str = ""
    """Video codec of the source (FFmpeg's name), or the image format of a folder ('png', 'dpx', ...)."""
    rotation: int = 0
    """Display rotation in degrees, counter-clockwise (the display matrix's), 0 if none."""
    display_matrix: tuple[int, ...] | None = field(default=None, repr=False)
    """The source's 3x3 display matrix (FFmpeg's layout), carried as it is (flips included)."""
    sample_aspect_ratio: Fraction | None = None
    """Pixel aspect ratio (None: square or unknown)."""
    field_order: str = "progressive"
    """'progressive', 'unknown', or the interlaced orders 'tt', 'bb', 'tb', 'bt'."""
    color_primaries: int = UNSPECIFIED
    color_trc: int = UNSPECIFIED
    colorspace: int = UNSPECIFIED
    """The YUV matrix (AVColorSpace)."""
    color_range: int = 0
    """1: limited ('tv'), 2: full ('pc'), 0: unspecified."""
    mastering_display: str | None = None
    """HDR mastering display, in x264/x265's syntax 'G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)'."""
    content_light: tuple[int, int] | None = None
    """HDR content light level (MaxCLL, MaxFALL) in cd/m2."""
    audio_streams: int = 0
    subtitle_streams: int = 0
    data_streams: int = 0
    """Data and attachment streams (a timecode track, telemetry, fonts); only timecode and chapters are carried."""
    other_video_streams: int = 0
    """Video streams besides the one deflickered (a second angle, cover art): not copied."""
    missing_seconds: float = 0.0
    """How much earlier than its header's duration the video stream's packets end (a truncated file), 0 if not."""
    chapters: int = 0
    metadata: tuple[tuple[str, str], ...] = ()
    """Container metadata worth carrying (title, creation_time, ...), as (key, value) pairs."""
    timecode: str | None = None
    uncarried_side_data: tuple[str, ...] = ()
    """Per-frame side data the writer cannot carry (HDR10+, Dolby Vision, ICC profile, film grain)."""
    linear: bool = False
    """OpenEXR: scene-linear samples, read into [0, 1] through the sRGB transfer (see io.images)."""

    @property
    def interlaced(self) -> bool:
        return self.field_order in ("tt", "bb", "tb", "bt")

    @property
    def hdr(self) -> bool:
        return self.color_trc in HDR_TRANSFERS or self.mastering_display is not None or self.content_light is not None

    def colour_tags(self) -> str:
        """'bt2020/arib-std-b67/bt2020nc/tv', with '-' for what is unspecified."""
        return "/".join([PRIMARIES.get(self.color_primaries, "-"), TRANSFERS.get(self.color_trc, "-"),
                         MATRICES.get(self.colorspace, "-"), RANGES.get(self.color_range, "-")])

    def describe(self) -> str:
        kind = "folder" if self.is_folder else "video"
        parts = [f"{self.path.name}: {kind}, {self.frame_count} frames, {self.width}x{self.height}, "
                 f"{float(self.fps):.3g} fps, {self.pixel_format}, {self.sample_bits}-bit"]
        facts = [f"{self.codec}" if self.codec else "", f"chroma {self.chroma}"]
        if self.has_alpha:
            facts.append("alpha")
        if self.rotation:
            facts.append(f"rotation {self.rotation}")
        if self.sample_aspect_ratio not in (None, 1):
            sar = self.sample_aspect_ratio
            facts.append(f"SAR {sar.numerator}:{sar.denominator}")
        if self.interlaced:
            facts.append(f"interlaced, field order {self.field_order}")
        facts.append(f"colour {self.colour_tags()}")
        if self.mastering_display:
            facts.append(f"mastering display {self.mastering_display}")
        if self.content_light:
            facts.append(f"MaxCLL {self.content_light[0]} MaxFALL {self.content_light[1]}")
        if self.linear:
            facts.append("scene-linear (processed through the sRGB transfer)")
        if self.audio_streams:
            facts.append(f"{self.audio_streams} audio stream{'s' if self.audio_streams > 1 else ''}")
        if self.subtitle_streams:
            facts.append(f"{self.subtitle_streams} subtitle stream{'s' if self.subtitle_streams > 1 else ''}")
        if self.other_video_streams:
            facts.append(f"{self.other_video_streams} more video stream{'s' if self.other_video_streams > 1 else ''}")
        if self.missing_seconds:
            facts.append(f"ends {self.missing_seconds:.2f} s before its stated duration (truncated?)")
        if self.chapters:
            facts.append(f"{self.chapters} chapter{'s' if self.chapters > 1 else ''}")
        if self.timecode:
            facts.append(f"timecode {self.timecode}")
        facts += [f"{key} {value!r}" for key, value in self.metadata if key in ("title", "creation_time")]
        return parts[0] + "\n  " + ", ".join(f for f in facts if f)


@dataclass
class Frame:
    """One decoded frame: `image` (H, W, 3) RGB uint8/uint16 (float32 for OpenEXR), index, name, timestamp.

    `alpha` is the (H, W) alpha channel (same dtype) of a source with alpha, else None.
    """

    index: int
    image: np.ndarray
    name: str
    pts: int | None = None
    alpha: np.ndarray | None = None


def scale_u16(values: np.ndarray, factor: float) -> np.ndarray:
    """uint16 values (up to 4 channels) times `factor`, rounded and saturated."""
    values = np.ascontiguousarray(values)
    return cv2.addWeighted(values, factor, values, 0.0, 0.0, dtype=cv2.CV_16U)


@functools.lru_cache(maxsize=None)
def sws_white(pix_fmt: str, colorspace: int | None = None, color_range: int = 0) -> tuple[int, int]:
    """(colour, alpha): the 16-bit RGB values swscale reads a deep planar YUV format's white and opaque alpha
    as, converting to planar 16-bit RGB with `SWS_READ`, this matrix and range (0: limited, as unspecified is
    read). Its deep paths scale by bit shifts (10-bit 1023 -> 65472) and take 255 x 256 for
    limited-range white (FFmpeg 8.1), the other way round when writing; the reader and writer scale by these to
    keep 65535 white and every value exact. (65535, 65535) where the format is not deep planar little-endian
    integer YUV (deep RGB and grey are read packed, which replicates the bits exactly)."""
    try:
        fmt = av.VideoFormat(pix_fmt, 2, 2)
    except (ValueError, av.error.FFmpegError):
        return 65535, 65535
    comps = fmt.components
    colour = [c for c in comps if not c.is_alpha]
    yuv = not fmt.is_rgb and len(colour) == 3
    if not yuv or not 8 < max(c.bits for c in comps) <= 16 or len({c.plane for c in comps}) != len(comps) or \
            not pix_fmt.endswith("le") or "f16" in pix_fmt or "f32" in pix_fmt:
        return 65535, 65535  # RGB and grey are read (packed, bits replicated) and written exactly as they are
    frame = av.VideoFrame(2, 2, pix_fmt)
    for c in comps:
        top = (1 << c.bits) - 1
        value = top if c.is_alpha else (1 << (c.bits - 1)) if not c.is_luma else \
            top if color_range == 2 else 235 << (c.bits - 8)
        plane = frame.planes[c.plane]
        np.frombuffer(plane, np.uint16).reshape(plane.height, -1)[:, : plane.width] = value
    convert = {"interpolation": SWS_READ, "src_color_range": color_range or 1,
               **({} if colorspace is None else {"src_colorspace": colorspace})}
    alpha = any(c.is_alpha for c in comps)
    out = frame.reformat(format="gbrap16le" if alpha else "gbrp16le", **convert).to_ndarray()[0, 0]
    white, opaque = int(out[:3].max()), int(out[3]) if alpha else 65535
    return (white if white > 0 else 65535), (opaque if opaque > 0 else 65535)


def format_facts(name: str) -> tuple[int, str, bool]:
    """(bits per sample, chroma family, has alpha) of an FFmpeg pixel format."""
    try:
        fmt = av.VideoFormat(name, 64, 64)
    except (ValueError, av.error.FFmpegError):
        return 8, "rgb", False
    bits = max(c.bits for c in fmt.components)
    alpha = any(c.is_alpha for c in fmt.components)
    colour = [c for c in fmt.components if not c.is_alpha]
    if fmt.is_bayer:  # one mosaic plane, whose component sizes FFmpeg does not describe as depths
        return (16 if "16" in name else 8), "rgb", False
    if fmt.has_palette:
        return bits, "rgb", alpha
    if len(colour) == 1:
        return bits, "gray", alpha
    if fmt.is_rgb:
        return bits, "rgb", alpha
    chroma = colour[1]
    return bits, {(32, 32): "420", (32, 64): "422", (64, 64): "444"}.get((chroma.width, chroma.height),
                                                                        f"yuv{chroma.width}x{chroma.height}"), alpha


def mastering_display(data: bytes) -> str | None:
    """AVMasteringDisplayMetadata (frame side data) -> x264/x265's 'G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)'."""
    if len(data) < 88:
        return None
    v = struct.unpack("<22i", data[:88])
    ratio = [Fraction(v[i], v[i + 1]) if v[i + 1] else Fraction(0) for i in range(0, 20, 2)]
    has_primaries, has_luminance = v[20], v[21]
    if not (has_primaries and has_luminance):
        return None
    (rx, ry), (gx, gy), (bx, by), (wx, wy) = (ratio[0:2], ratio[2:4], ratio[4:6], ratio[6:8])
    chroma = [round(c * 50000) for c in (gx, gy, bx, by, rx, ry, wx, wy)]
    low, high = round(ratio[8] * 10000), round(ratio[9] * 10000)
    return "G({},{})B({},{})R({},{})WP({},{})".format(*chroma) + f"L({high},{low})"


def content_light(data: bytes) -> tuple[int, int] | None:
    """AVContentLightMetadata (frame side data) -> (MaxCLL, MaxFALL)."""
    return struct.unpack("<2I", data[:8]) if len(data) >= 8 else None


def _first_frame_facts(path: Path) -> dict:
    """Facts that FFmpeg attaches to decoded frames: rotation, display matrix, HDR side data, interlacing."""
    facts: dict = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
            if frame is None:
                return facts
            facts["rotation"] = int(round(frame.rotation)) % 360
            facts["interlaced"] = frame.interlaced_frame
            for tag in ("color_primaries", "color_trc", "colorspace", "color_range"):
                facts[tag] = int(getattr(frame, tag))
            for side in frame.side_data:
                kind = side.type.name
                if kind == "DISPLAYMATRIX" and len(bytes(side)) >= 36:
                    facts["display_matrix"] = struct.unpack("<9i", bytes(side)[:36])
                elif kind == "MASTERING_DISPLAY_METADATA":
                    facts["mastering_display"] = mastering_display(bytes(side))
                elif kind == "CONTENT_LIGHT_LEVEL":
                    facts["content_light"] = content_light(bytes(side))
                elif kind in UNCARRIED_SIDE_DATA:
                    facts.setdefault("uncarried_side_data", []).append(UNCARRIED_SIDE_DATA[kind])
    except (av.error.FFmpegError, StopIteration):
        pass
    return facts


def stream_facts(path: Path, container, stream) -> dict:
    """VideoInfo fields beyond the basics, from an open container, its video stream and its first frame."""
    ctx = stream.codec_context
    fmt = ctx.format.name if ctx.format is not None else "unknown"
    bits, chroma, alpha = format_facts(fmt)
    first = _first_frame_facts(path)
    tags = {}
    for tag, unset in (("color_primaries", UNSPECIFIED), ("color_trc", UNSPECIFIED), ("colorspace", UNSPECIFIED),
                       ("color_range", 0)):
        value = int(getattr(ctx, tag))  # the stream's (container's) tag first, the frame's if it has none
        tags[tag] = value if value != unset else first.get(tag, unset)
    order = FIELD_ORDERS.get(int(ctx.field_order), "unknown")
    if order in ("unknown", "progressive") and first.get("interlaced"):
        order = "tt"
    sar = stream.sample_aspect_ratio
    metadata = [(k.lower(), v) for k, v in container.metadata.items() if k.lower() not in TECHNICAL_KEYS]
    timecode = next((v for s in container.streams for k, v in s.metadata.items() if k.lower() == "timecode"),
                    None) or next((v for k, v in container.metadata.items() if k.lower() == "timecode"), None)
    info = dict(sample_bits=bits, chroma=chroma, has_alpha=alpha, codec=ctx.name,
                rotation=first.get("rotation", 0), display_matrix=first.get("display_matrix"),
                sample_aspect_ratio=Fraction(sar) if sar and sar != 1 else None, field_order=order,
                mastering_display=first.get("mastering_display"), content_light=first.get("content_light"),
                audio_streams=len(container.streams.audio), subtitle_streams=len(container.streams.subtitles),
                data_streams=sum(1 for s in container.streams if s.type in ("data", "attachment")),
                other_video_streams=len(container.streams.video) - 1,
                chapters=len(container.chapters()), metadata=tuple((k, v) for k, v in metadata if k != "timecode"),
                timecode=timecode, uncarried_side_data=tuple(dict.fromkeys(first.get("uncarried_side_data", []))),
                **tags)
    if order in ("tt", "bb", "tb", "bt"):
        warn(f"{path.name} is interlaced ({order} field first): each frame is deflickered as one "
             f"picture, fields together, and written progressive; deinterlace it first for the best "
             f"result")
    return info
