"""Which codec, pixel format and options an output gets, and what it cannot carry: decided before any work.

Defaults (the source's depth is kept):
- 8-bit sources without alpha: .mp4/.m4v/.mov H.264 4:2:0 (4:4:4 for odd sizes), .mkv FFV1 RGB, as before.
- Deeper sources: .mp4/.m4v H.264 High 10 (libx264, 10-bit, the source's 4:2:0/4:2:2/4:4:4). H.264
  rather than H.265 Main 10: the same encoder, CRF scale and speed as the 8-bit output (x265
  `veryfast` took 127 against 24 ms for a 10-bit 854x480 frame on two shared cores), this PyAV
  build's libx264 has 10-bit, and x264 writes the HDR mastering-display and content-light SEI
  too. 12/16-bit sources are written at 10 bits (with a warning); `codec="hevc"` gives 12-bit
  H.265, .mkv keeps every bit. Most web browsers and many players do not play 10-bit H.264: that
  is warned about, naming `bit_depth=8` (4:2:0 at an even frame size: plays nearly everywhere).
- .mov: ProRes 422 HQ (prores_ks, 10-bit) for deeper sources; ProRes 4444 when the source has
  alpha or full chroma (4:4:4 / RGB), also for 8-bit sources with alpha.
- .mkv: FFV1 at the source's depth and layout (YUV, RGB, grey, with alpha).
- folders: PNG (16-bit for deeper sources); DPX/OpenEXR frames when the source frames were.
"""

from __future__ import annotations

import functools
import importlib
import io as pyio
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from unflicker.errors import OutputError, warn
from unflicker.io.common import DEFAULT_FOLDER_FPS, IMAGE_EXTENSIONS, VIDEO_FORMATS, check_writable, other_entries
from unflicker.io.images import frame_file_names
from unflicker.io.media import SWS_MATRIX, VideoInfo

CODECS = {"h264": "libx264", "hevc": "libx265", "prores": "prores_ks", "ffv1": "ffv1"}
"""`codec=` names a user may give -> the FFmpeg encoder."""
MAX_BITS = {"libx264": 10, "libx265": 12, "prores_ks": 10, "ffv1": 16}
CODEC_IDS = {"libx264": "h264", "libx265": "hevc", "prores_ks": "prores", "ffv1": "ffv1"}
CODEC_NAMES = {"libx264": "H.264", "libx265": "H.265", "prores_ks": "ProRes", "ffv1": "FFV1"}
_FFV1_FORMATS: set[str] = set()


@dataclass
class OutputPlan:
    """How an output is written. `container` is None for a folder of frames."""

    container: str | None
    codec: str | None = None
    pix_fmt: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    bits: int = 8
    """Bits per sample written (8 or 16 for PNG/TIFF folders)."""
    keeps_alpha: bool = False
    color_primaries: int = 2
    color_trc: int = 2
    colorspace: int = 2
    """The output's tags (FFmpeg enums, see io.media); the YUV matrix is also the one converted with."""
    color_range: int = 0

    @property
    def matrix(self) -> int | None:
        """swscale matrix for RGB -> YUV (None: swscale's default, BT.601, as the reader assumes untagged)."""
        return SWS_MATRIX.get(self.colorspace)
    dropped: list[str] = field(default_factory=list)
    """One line per thing the output cannot carry, or where it will not play (warned about by check_output)."""

    @property
    def frame_layout(self) -> str:
        """The packed RGB(A) layout frames are handed to PyAV in."""
        deep = self.bits > 8
        if self.keeps_alpha:
            return "rgba64le" if deep else "rgba"
        return "rgb48le" if deep else "rgb24"

    @property
    def is_yuv(self) -> bool:
        return bool(self.pix_fmt) and self.pix_fmt.startswith("yuv")


def is_folder_output(path: str | os.PathLike) -> bool:
    """A path without a video extension (or an existing folder) means a folder of frames."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() not in VIDEO_FORMATS


def _ffv1_formats() -> set[str]:
    if not _FFV1_FORMATS:
        _FFV1_FORMATS.update(f.name for f in av.codec.Codec("ffv1", "w").video_formats)
    return _FFV1_FORMATS


def held_depths(codec: str | None) -> tuple[int, ...]:
    """The bits per sample an output can be written at (`bit_depth=`): by `codec` ('h264', 'hevc', 'prores',
    'ffv1'), or None for a folder of frames (PNG/TIFF). ProRes is written from 10-bit samples only."""
    if codec is None:
        return (8, 16)
    encoder = CODECS[codec]
    return (10,) if encoder == "prores_ks" else tuple(bits for bits in (8, 10, 12, 16) if bits <= MAX_BITS[encoder])


def _container_codecs(fmt: str) -> set[str]:
    with av.open(pyio.BytesIO(), "w", format=fmt) as probe:
        return set(probe.supported_codecs)


def plan_output(path: str | os.PathLike, info: VideoInfo, codec: str | None = None,
                bit_depth: int | None = None) -> OutputPlan:
    """The output plan for writing `info`'s frames to `path`; OutputError when it cannot hold the request."""
    path = Path(path)
    if codec is not None and codec not in CODECS:
        raise OutputError(f"unknown codec {codec!r}: choose from {', '.join(CODECS)}")
    if bit_depth is not None and bit_depth not in (8, 10, 12, 16):
        raise OutputError(f"--bit-depth must be 8, 10, 12 or 16, got {bit_depth}")
    plan = _plan_folder(info, codec, bit_depth) if is_folder_output(path) else _plan_video(path, info, codec, bit_depth)
    _common_drops(plan, info)
    return plan


def _plan_folder(info: VideoInfo, codec: str | None, bit_depth: int | None) -> OutputPlan:
    if codec is not None:
        raise OutputError(f"--codec {codec} is for video outputs; a folder gets image files")
    if bit_depth is not None and bit_depth not in held_depths(None):
        raise OutputError(f"PNG/TIFF frames hold 8 or 16 bits, not {bit_depth}")
    bits = bit_depth or (16 if info.bit_depth == 16 else 8)
    plan = OutputPlan(None, bits=bits, keeps_alpha=info.has_alpha)
    if info.rotation:
        plan.dropped.append(f"the rotation ({info.rotation} degrees) cannot be stored in image files: the frames "
                            f"are written as stored, unrotated")
    if info.sample_aspect_ratio not in (None, 1):
        plan.dropped.append(f"the sample aspect ratio {info.sample_aspect_ratio} cannot be stored in image files")
    if not info.is_folder and (info.color_primaries != 2 or info.color_trc != 2 or info.hdr):
        plan.dropped.append(f"colour tags ({info.colour_tags()}) and HDR metadata are not written into image "
                            f"files; frames are RGB in the source's primaries and transfer")
    rate = f"frame rate ({float(info.fps):g} fps; it reads back at {float(DEFAULT_FOLDER_FPS):g})"
    carried = [what for what, present in ((rate, not info.is_folder and info.fps != DEFAULT_FOLDER_FPS),
                                          ("audio", info.audio_streams), ("subtitles", info.subtitle_streams),
                                          ("chapters", info.chapters),
                                          ("timecode", info.timecode and info.codec != "dpx"),  # DPX: in the headers
                                          ("title", dict(info.metadata).get("title"))) if present]
    if carried:
        plan.dropped.append(f"a folder of frames holds no {', '.join(carried)}: not written")
    return plan


def _plan_video(path: Path, info: VideoInfo, codec: str | None, bit_depth: int | None) -> OutputPlan:
    fmt, default = VIDEO_FORMATS[path.suffix.lower()]
    deep = info.sample_bits > 8 or info.linear
    if codec is not None:
        encoder = CODECS[codec]
    elif fmt == "mov" and (info.has_alpha or (bit_depth or (16 if deep else 8)) > 8):
        encoder = "prores_ks"
    elif fmt == "mp4" and (bit_depth or 8) > 10:
        encoder = "libx265"
    else:
        encoder = default
    supported = _container_codecs(fmt)
    if CODEC_IDS[encoder] not in supported:
        raise OutputError(f"{path.suffix} cannot hold {CODEC_NAMES[encoder]}: use "
                          f"{'.mov or .mkv' if encoder == 'prores_ks' else '.mkv'}")
    source_bits = 16 if info.linear else max(info.sample_bits, 8)
    top = MAX_BITS[encoder]
    if bit_depth is not None and bit_depth not in held_depths(CODEC_IDS[encoder]):
        if bit_depth > top:
            raise OutputError(f"{CODEC_NAMES[encoder]} holds at most {top} bits here, not {bit_depth}: "
                              f"use --codec ffv1 (.mkv) for {bit_depth} bits")
        raise OutputError(f"{CODEC_NAMES[encoder]} is written with {top}-bit samples here, not {bit_depth}")
    bits = 10 if encoder == "prores_ks" else bit_depth or min(source_bits, top)
    plan = OutputPlan(fmt, encoder, bits=bits)
    if bit_depth is None and source_bits > bits and encoder != "prores_ks":
        plan.dropped.append(f"{CODEC_NAMES[encoder]} holds {bits} bits here: the {source_bits}-bit source is "
                            f"written at {bits} bits; write .mkv (FFV1) to keep every bit")
    elif encoder == "prores_ks" and source_bits > 10:
        plan.dropped.append(f"ProRes is written from 10-bit samples (prores_ks): the {source_bits}-bit source "
                            f"loses its lowest bits; write .mkv (FFV1) to keep every bit")
    even = info.width % 2 == 0 and info.height % 2 == 0
    chroma = {"rgb": "444", "gray": "420"}.get(info.chroma, info.chroma)
    if chroma not in ("420", "422", "444"):
        chroma = "444"
    if encoder in ("libx264", "libx265"):
        if bits == 8 and encoder == "libx264":
            chroma = "420"  # 8-bit H.264 output as before: 4:2:0, 4:4:4 for odd sizes
        odd = (chroma == "420" and not even) or (chroma == "422" and info.width % 2 == 1)
        if odd:
            chroma = "444"
        plan.pix_fmt = f"yuv{chroma}p" + ("" if bits == 8 else f"{bits}le")
        plan.options = _x26x_options(encoder, fmt, info)
        if encoder == "libx264" and bits > 8 and bit_depth is None:  # the source's depth kept, not asked for
            profile = {"420": "High 10", "422": "High 4:2:2", "444": "High 4:4:4"}[chroma]
            plan.dropped.append(f"{bits}-bit H.264 ({profile}) does not play in most web browsers and many players: "
                                f"--bit-depth 8 for playback nearly everywhere"
                                f"{'' if even else ' (at an even frame size: an odd one is written 4:4:4)'}; "
                                f".mkv (FFV1) or .mov (ProRes) to archive at full depth")
        elif encoder == "libx264" and odd:  # 4:4:4 only to keep an odd size
            plan.dropped.append(f"an odd frame size ({info.width}x{info.height}) is written as 4:4:4 H.264 to keep every "
                                f"pixel, which most web browsers and many players do not play: crop or pad the input "
                                f"to an even size for playback nearly everywhere; .mkv (FFV1) keeps it losslessly")
    elif encoder == "prores_ks":
        full = info.has_alpha or chroma == "444"
        plan.pix_fmt = "yuva444p10le" if info.has_alpha else "yuv444p10le" if full else "yuv422p10le"
        plan.options["profile"] = "4" if full else "3"  # 4444, 422 HQ
        plan.keeps_alpha = info.has_alpha
    else:
        plan.pix_fmt, plan.keeps_alpha = _ffv1_format(info, bits), info.has_alpha
    if info.has_alpha and not plan.keeps_alpha:
        plan.dropped.append(f"the alpha channel is dropped: {CODEC_NAMES[encoder]} has none; write .mov (ProRes "
                            f"4444), .mkv or a folder of frames to keep it")
    _plan_colour(plan, info)
    if (info.mastering_display or info.content_light) and encoder not in ("libx264", "libx265"):
        plan.dropped.append(f"HDR mastering-display / content-light metadata cannot be written into "
                            f"{CODEC_NAMES[encoder]} through PyAV (no API for stream side data): dropped; "
                            f"the PQ/HLG transfer tag is kept; .mp4 or --codec h264/hevc keep it")
    if fmt == "matroska" and info.sample_aspect_ratio not in (None, 1) and encoder not in ("libx264", "libx265"):
        plan.dropped.append(f"the sample aspect ratio {info.sample_aspect_ratio} cannot be written to .mkv "
                            f"through PyAV: it plays with square pixels; write .mp4 or .mov to keep it")
    _plan_streams(plan, info, supported, path)
    return plan


_SKX_FLAGS = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def _has_avx512() -> bool:
    """Whether x264 would take its AVX-512 functions here (the Skylake-X set: F, CD, BW, DQ, VL): the
    kernel's CPU flags on Linux (whatever NPY_DISABLE_CPU_FEATURES tells numpy), else numpy's table."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(_SKX_FLAGS) <= set(line.split(":", 1)[-1].split())
    except OSError:
        pass
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2 / 1.26.0
        try:
            return bool(importlib.import_module(module).__cpu_features__.get("AVX512_SKX"))
        except (ImportError, AttributeError):
            continue
    return False  # unknown: x264 left to its own choice


X264_ASM = "avx2" if _has_avx512() else None
"""x264's instruction sets where the CPU has AVX-512: its AVX-512 functions made the same frames encode
differently from run to run (3-6 of 16-24 encodes of a 12-frame clip in one process differed, also with one
encoder thread; none of 80 without them), at no measurable cost in speed. Every AVX-512 CPU has AVX2."""


def _x26x_options(encoder: str, fmt: str, info: VideoInfo) -> dict[str, str]:
    """x264/x265 parameters that write the source's HDR mastering display and content light level as SEI
    (and keep x264 off AVX-512: X264_ASM)."""
    x265 = encoder == "libx265"
    params = ["log-level=error"] if x265 else [] if X264_ASM is None else [f"asm={X264_ASM}"]
    if info.mastering_display:
        params.append(f"{'master-display' if x265 else 'mastering-display'}={info.mastering_display}")
    if info.content_light:
        params.append(f"{'max-cll' if x265 else 'cll'}={info.content_light[0]},{info.content_light[1]}")
    options = {f"{encoder.removeprefix('lib')}-params": ":".join(params)} if params else {}
    if x265 and fmt in ("mp4", "mov"):
        options["tag"] = "hvc1"  # the tag Apple's players want
    return options


def _plan_colour(plan: OutputPlan, info: VideoInfo) -> None:
    """The source's tags (RGB layouts take no YUV matrix); OpenEXR frames arrive as BT.709-primaried
    sRGB (OpenEXR's default chromaticities are BT.709's) and are written with the BT.709 matrix."""
    plan.color_primaries, plan.color_trc = info.color_primaries, info.color_trc
    plan.colorspace, plan.color_range = info.colorspace, info.color_range
    if info.linear:
        plan.color_primaries, plan.color_trc, plan.colorspace = 1, 13, 1
    if not plan.is_yuv:
        plan.colorspace = info.colorspace if info.chroma == "rgb" else 2  # no YUV matrix on RGB samples
        plan.color_range = 0
    elif plan.colorspace not in SWS_MATRIX:
        plan.colorspace = 2  # an RGB ('gbr') or unusual source matrix: converted with, and tagged as, the default
    if plan.is_yuv and plan.codec == "prores_ks" and info.color_range == 2:
        # ProRes is limited range by definition: the samples are converted, the picture is unchanged.
        plan.color_range = 1


def _ffv1_format(info: VideoInfo, bits: int) -> str:
    if bits == 8 and not info.has_alpha:
        return "gray" if info.grayscale else "bgr0"  # as before
    formats = _ffv1_formats()
    if bits == info.sample_bits and info.pixel_format in formats and not info.linear:
        return info.pixel_format
    suffix = "" if bits == 8 else f"{bits}le"
    if info.chroma == "gray" or info.grayscale:
        candidates = [f"ya{bits}" if info.has_alpha else f"gray{suffix}", "ya16le" if info.has_alpha else "gray16le"]
    elif info.chroma in ("420", "422", "444"):
        a = "a" if info.has_alpha else ""
        candidates = [f"yuv{a}{info.chroma}p{suffix}", f"yuv{a}444p{suffix}", f"yuv{a}444p16le"]
    else:
        candidates = ([f"gbrap{suffix}", "bgra" if bits == 8 else "gbrap16le"] if info.has_alpha else
                      [f"gbrp{suffix}", "gbrp16le"])
    return next((c for c in candidates if c in formats), "gbrap16le" if info.has_alpha else "gbrp16le")


def _plan_streams(plan: OutputPlan, info: VideoInfo, supported: set[str], path: Path) -> None:
    """Audio that the container cannot hold is an error (choose another container); subtitles are warned about."""
    if info.is_folder or not (info.audio_streams or info.subtitle_streams or info.data_streams):
        return
    with av.open(str(info.path)) as container:
        for stream in container.streams.audio:
            name = stream.codec.canonical_name
            if name not in supported or not _muxer_takes(plan.container, stream):
                raise OutputError(f"cannot copy the {name} audio into {path.suffix}: choose .mkv to keep it")
        for stream in container.streams.subtitles:
            name = stream.codec.canonical_name
            if name not in supported:
                plan.dropped.append(f"subtitle stream {stream.index} ({name}) cannot go into {path.suffix}: "
                                    f"dropped; write .mkv to keep it")
        for stream in [*container.streams.audio, *container.streams.subtitles] if plan.container == "mov" else []:
            language = stream.metadata.get("language")
            if language and language != "und" and stream.codec.canonical_name in supported and \
                    mov_language(language) is None:
                plan.dropped.append(f"the language {language} of {stream.type} stream {stream.index} has no code in "
                                    f".mov (QuickTime's own): not written; .mp4 or .mkv keep it")
        for stream in container.streams:
            if stream.type not in ("data", "attachment") or "timecode" in stream.metadata:
                continue  # a timecode track is carried as the video stream's timecode
            name = getattr(stream, "name", None) or stream.metadata.get("filename") or stream.type
            if name == "bin_data" and info.chapters:
                continue  # a QuickTime chapter text track: the chapters are carried
            if stream.type == "attachment" and plan.container == "matroska":
                continue  # copied (fonts for subtitles, cover art)
            plan.dropped.append(f"{stream.type} stream {stream.index} ({name}) is not copied")


_ISO639_FORMS = ("alb sqi arm hye baq eus bur mya chi zho cze ces dut nld fre fra geo kat ger deu gre ell ice isl "
                 "mac mkd mao mri may msa per fas rum ron slo slk tib bod wel cym").split()
_OTHER_FORM = {**dict(zip(_ISO639_FORMS[::2], _ISO639_FORMS[1::2])),
               **dict(zip(_ISO639_FORMS[1::2], _ISO639_FORMS[::2]))}
"""The two forms (bibliographic, terminology) of the ISO 639-2 codes that have two."""


@functools.lru_cache(maxsize=None)
def _mov_holds(language: str) -> bool:
    """Whether FFmpeg's .mov muxer writes this language tag (as one of QuickTime's own codes) and reads it back."""
    data = pyio.BytesIO()
    with av.open(data, "w", format="mov") as trial:
        stream = trial.add_stream("pcm_s16le", rate=8000)
        stream.metadata["language"] = language
        packet = av.Packet(bytes(16))
        packet.stream, packet.pts, packet.dts, packet.time_base = stream, 0, 0, Fraction(1, 8000)
        trial.mux(packet)
    data.seek(0)
    with av.open(data) as back:
        return back.streams[0].metadata.get("language") == language


def mov_language(language: str) -> str | None:
    """The form of an ISO 639-2 language code that .mov holds (QuickTime's codes take some in one form only:
    'fra' and 'ger', not 'fre' and 'deu'), None where it holds neither."""
    for code in (language, _OTHER_FORM.get(language.lower())):
        if code and _mov_holds(code):
            return code
    return None


def _muxer_takes(container: str, stream) -> bool:
    """Whether the muxer writes a header with a copy of `stream`: some list a codec as supported and refuse
    it there (opus and flac in .mov), which would otherwise fail at the output's first packet, after the work."""
    with av.open(pyio.BytesIO(), mode="w", format=container) as trial:
        try:
            trial.add_stream_from_template(stream)
            trial.start_encoding()
        except (ValueError, av.error.FFmpegError):
            return False
    return True


def _common_drops(plan: OutputPlan, info: VideoInfo) -> None:
    if info.other_video_streams:
        plan.dropped.append(f"{info.other_video_streams} more video stream{'s' if info.other_video_streams > 1 else ''}"
                            f" (another angle, cover art) not copied: only the first is deflickered and written")
    if info.missing_seconds:
        plan.dropped.append(f"the input's video ends {info.missing_seconds:.2f} s before the duration its header "
                            f"states (a truncated file?): the {info.frame_count} frames it holds are written")
    if info.uncarried_side_data:
        plan.dropped.append(f"{', '.join(info.uncarried_side_data)} of the source cannot be written through PyAV: "
                            f"dropped")
    if plan.container is not None and info.is_folder and info.linear:
        plan.dropped.append("the OpenEXR frames' scene-linear values are written display-referred (sRGB transfer), "
                            "values above 1.0 clipped")


def _check_name_length(folder: Path, name: str) -> None:
    """The output is written under a longer temporary name first (io.writer: '.NAME.partial-PID.EXT', made as
    '....making'): a name that fits the file system but leaves no room for that one fails here, before any
    work, not as the writer starts (after the pass over the input)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not told (Windows): the usual file systems' 255
        limit = 255
    temporary = f".{name}.partial-{'0' * 7}{Path(name).suffix}.making"  # pids have up to 7 digits
    room = limit - (len(os.fsencode(temporary)) - len(os.fsencode(name)))
    if len(os.fsencode(name)) > room:
        raise OutputError(f"output name {name[:40]}... is {len(os.fsencode(name))} bytes long: at most {room} "
                          f"here (its temporary name is longer), choose a shorter one")


def check_output(input_path: str | os.PathLike, output_path: str | os.PathLike, overwrite: bool = False, *,
                 info: VideoInfo | None = None, codec: str | None = None, bit_depth: int | None = None,
                 crf: int | None = None) -> Path:
    """Refuse outputs that would lose something, before any work starts.

    With `info` (the input's probe), also decide the codec and layout (see `plan_output`): a
    request the format cannot hold raises OutputError, and what it cannot carry is warned about, as is a
    `crf` asked of an output whose codec takes none (only H.264 and H.265 do).
    """
    output = Path(output_path)
    if os.fspath(output_path) == "-":
        raise OutputError("- (standard output) cannot take a video: name an output file or folder (./- for one "
                          "called -)")
    if output.name in ("", ".", ".."):
        raise OutputError(f"name the output file or folder ({output_path} names none)")
    try:
        output.lstat()
    except (FileNotFoundError, NotADirectoryError):  # not there yet, or a file on the way (said below)
        pass
    except OSError as exc:  # a name too long for the file system
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    if Path(input_path).resolve() == output.resolve():
        raise OutputError(f"output {output} is the input: choose another path")
    if output.suffix and output.suffix.lower() not in VIDEO_FORMATS and output.suffix.lower() not in IMAGE_EXTENSIONS:
        if not output.is_dir():
            raise OutputError(f"unsupported output type {output.suffix!r}: use one of "
                              f"{', '.join(VIDEO_FORMATS)} or a folder name")
    # A device or a pipe (/dev/null.mkv, a FIFO): --overwrite replaced the node itself with the new file.
    if output.exists() and not (output.is_file() or output.is_dir()):
        raise OutputError(f"output {output} is a device or a pipe, not a file: the output is a new file put in "
                          f"place of the name; choose a file or folder name")
    if output.exists() and not overwrite:
        raise OutputError(f"output {output} exists: pass --overwrite to replace it")
    if output.is_symlink():
        target = output.resolve()  # the writer writes there (io.writer): it must be what the link's name says
        if target.suffix.lower() != output.suffix.lower():
            raise OutputError(f"output {output} is a link to {target}, another kind of output: write to {target} or "
                              f"remove the link")
    if output.is_dir():
        _check_replaceable_folder(Path(input_path), output, info)
    parent = output.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} {'is a file' if parent.exists() else 'does not exist'}")
    check_writable(parent)
    _check_name_length(parent, output.name)
    if info is not None:
        plan = plan_output(output, info, codec, bit_depth)
        if plan.codec is not None and not is_folder_output(output):
            _check_encoder(plan, info, output)
        for line in plan.dropped:
            warn(line)
        if crf is not None and plan.codec not in ("libx264", "libx265"):
            what = "a folder of frames" if plan.codec is None else f"{plan.codec} ({output.suffix or 'no extension'})"
            warn(f"--crf {crf} is for H.264 and H.265 outputs; {what} takes none: ignored")
    return output


_WRITTEN_FRAME = re.compile(r"frame_\d{6,}\.png")
"""The frame names a folder output of a video gets (io.frame_name)."""


def _check_replaceable_folder(input_path: Path, folder: Path, info: VideoInfo | None = None) -> None:
    """An existing folder output is replaced whole (--overwrite): only a folder of frames this tool writes
    (frame_NNNNNN.png, or with `info` of a frame folder, that folder's frame names) may be, never one that
    holds the input or anything else (a project or photo folder given as the output by mistake)."""
    if input_path.resolve().is_relative_to(folder.resolve()):
        raise OutputError(f"output folder {folder} holds the input: choose another output")
    names = {*info.frame_names, *frame_file_names(info.frame_names).values()} if info is not None and \
        info.is_folder else set()
    others = other_entries(folder, lambda name: bool(_WRITTEN_FRAME.fullmatch(name)) or name in names)
    if others:
        raise OutputError(f"output folder {folder} holds more than frames written for it ({others[0]}); "
                          "--overwrite replaces such a folder only: choose another output or empty it")


def _check_encoder(plan: OutputPlan, info: VideoInfo, output: Path) -> None:
    """Open the planned encoder at the input's size (and close it): a size or format it refuses (FFV1
    at 1 pixel wide) fails here, before the input is decoded; the writer opens it again to write."""
    ctx = av.CodecContext.create(plan.codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = info.width, info.height, plan.pix_fmt
    ctx.time_base = Fraction(1, 25)
    ctx.options = dict(plan.options)  # the writer's: x265's log level among them (else its banner on stderr)
    try:
        ctx.open()
    except av.error.FFmpegError as exc:
        raise encoder_refused(plan, info, output, exc) from None


def encoder_refused(plan: OutputPlan, info: VideoInfo, output: Path, exc: Exception) -> OutputError:
    """The one-line error of an encoder that would not open for this output."""
    return OutputError(f"{plan.codec} cannot encode {info.width}x{info.height} {plan.pix_fmt} video for "
                       f"{output.name} ({getattr(exc, 'strerror', None) or exc}): choose another output type")
