"""Single image files of a frame folder: PNG/JPEG/TIFF/BMP through OpenCV, DPX and OpenEXR through PyAV.

Layouts returned by `read_image`: (H, W, 3) RGB uint8/uint16; DPX code values (10/12/16-bit) are
widened exactly to uint16 (`common.widen`, undone on write); OpenEXR half/float samples are
scene-linear and are returned as float32 in [0, 1] encoded with the sRGB transfer
(IEC 61966-2-1), the display-referred encoding the deflicker works in; writing applies the
inverse transfer, so an untouched pixel comes back as it was, up to half-float rounding. Linear
values outside [0, 1] (highlights above 1.0, negatives) are clipped, with a warning.

DPX and OpenEXR go through PyAV's dpx/exr codecs, not OpenCV: OpenCV reads no DPX, and its
OpenEXR support needs OPENCV_IO_ENABLE_OPENEXR set before cv2 is imported (a process-wide side effect).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from unflicker.errors import InputError, OutputError, warn
from unflicker.io.common import from_float, narrow, to_depth, widen
from unflicker.io.media import format_facts

PYAV_IMAGES = {".dpx": "dpx", ".exr": "exr"}


def frame_file_names(names, from_folder: bool = True) -> dict[str, str]:
    """The file name each frame name is written under in a folder output: PNG and TIFF keep theirs (suffix in
    lower case), DPX and OpenEXR too from a frame folder, other formats (JPEG, BMP: never re-encoded lossy)
    become .png; a name another frame's file already takes (f0.jpg beside f0.png) keeps its own suffix before
    .png (f0.jpg.png), so no frame is written over another."""
    def target(name: str) -> str:
        suffix = Path(name).suffix.lower()
        if suffix not in (".png", ".tif", ".tiff") and not (suffix in PYAV_IMAGES and from_folder):
            suffix = ".png"
        return f"{Path(name).stem}{suffix}"

    written = {name: target(name) for name in names if target(name) == name}  # unchanged names first
    taken = set(written.values())
    for name in names:
        if name not in written:
            file, k = target(name), 1
            while file in taken:
                file, k = (f"{name}{Path(file).suffix}" if k == 1 else f"{name}-{k}{Path(file).suffix}"), k + 1
            written[name] = file
            taken.add(file)
    return written


# (grey, alpha, bit depth) of an OpenCV-read frame -> the FFmpeg name of that layout.
CV_FORMATS = {
    (False, False, 8): "rgb24", (False, False, 16): "rgb48", (False, True, 8): "rgba", (False, True, 16): "rgba64",
    (True, False, 8): "gray", (True, False, 16): "gray16", (True, True, 8): "ya8", (True, True, 16): "ya16",
}
DPX_FORMATS = ("gray", "rgb24", "rgba", "gray16le", "rgb48le", "rgba64le", "gbrp10le", "gbrp12le")


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Scene-linear [0, 1] -> sRGB-encoded [0, 1] (IEC 61966-2-1), float32."""
    x = np.clip(linear, 0.0, 1.0).astype(np.float32)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """The inverse of `srgb_encode`."""
    v = np.clip(encoded, 0.0, 1.0).astype(np.float32)
    return np.where(v <= 0.04045, v / 12.92, np.power((v + 0.055) / 1.055, 2.4)).astype(np.float32)


class ImageFacts:
    """What one image file says about the folder: layout name, sample bits, grey, alpha, linear."""

    def __init__(self, pixel_format: str, bits: int, grey: bool, alpha: bool, linear: bool = False):
        self.pixel_format, self.bits, self.grey, self.alpha, self.linear = pixel_format, bits, grey, alpha, linear


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, ImageFacts]:
    """(RGB image, alpha or None, facts) of one frame file."""
    if path.suffix.lower() in PYAV_IMAGES:
        return _read_pyav_image(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot read image {path}")
    if image.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path.name}: unsupported sample type {image.dtype} (need 8 or 16 bit)")
    depth = 16 if image.dtype == np.uint16 else 8
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        rgb, alpha, grey = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), None, True
    elif image.shape[2] == 2:  # grey + alpha
        rgb, alpha, grey = cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB), \
            image[:, :, 1].copy(), True
    elif image.shape[2] == 4:
        # OpenCV expands a PNG's grey + alpha to four channels: the header says which it was.
        rgb, alpha, grey = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), image[:, :, 3].copy(), _png_colour_type(path) == 4
    elif image.shape[2] == 3:
        rgb, alpha, grey = cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None, False
    else:
        raise InputError(f"{path.name}: unsupported {image.shape[2]}-channel image")
    return rgb, alpha, ImageFacts(CV_FORMATS[grey, alpha is not None, depth], depth, grey, alpha is not None)


def _png_colour_type(path: Path) -> int | None:
    """The colour type in a PNG's header (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA); None if not a PNG."""
    with open(path, "rb") as file:
        head = file.read(26)
    if len(head) == 26 and head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return head[25]
    return None


def image_size(path: Path, decode: bool = True) -> tuple[int, int] | None:
    """(width, height) of one frame file, as `read_image` reads it: from the header, a few bytes, for PNG,
    JPEG, BMP, TIFF and DPX; else (OpenEXR, whose decoder picks one of its windows, or a header not
    understood) by decoding the file, or None with `decode=False`."""
    with open(path, "rb") as file:
        size = _header_size(file)
    if size is None and decode:
        image = read_image(path)[0]
        return image.shape[1], image.shape[0]
    return size


def _header_size(file) -> tuple[int, int] | None:
    head = file.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM") and len(head) >= 26:
        if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return width, abs(height)  # a negative height: rows stored top-down
    if head[:4] in (b"SDPX", b"XPDS"):
        file.seek(772)  # the image information header: pixels per line, lines per element
        data = file.read(8)
        return struct.unpack((">" if head[:4] == b"SDPX" else "<") + "II", data) if len(data) == 8 else None
    if head[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_size(file, "<" if head[:2] == b"II" else ">")
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(file)
    return None


def _tiff_size(file, order: str) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first image file directory."""
    file.seek(4)
    data = file.read(4)
    file.seek(struct.unpack(order + "I", data)[0] if len(data) == 4 else 0)
    data = file.read(2)
    entries = file.read(12 * struct.unpack(order + "H", data)[0]) if len(data) == 2 else b""
    size = {}
    for at in range(0, len(entries) - 11, 12):
        tag, kind = struct.unpack_from(order + "HH", entries, at)
        if tag in (256, 257) and kind in (3, 4):  # SHORT or LONG
            size[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), entries, at + 8)[0]
    return (size[256], size[257]) if len(size) == 2 else None


_JPEG_FRAMES = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)}
"""Start-of-frame markers (baseline, progressive, lossless...), which hold the image's size."""


def _jpeg_size(file) -> tuple[int, int] | None:
    """The size in the first start-of-frame segment, skipping the segments before it."""
    file.seek(2)
    while file.read(1) == b"\xff":
        marker = file.read(1)
        while marker == b"\xff":  # fill bytes
            marker = file.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):  # the end, or scan data before any frame header
            return None
        if marker[0] == 0x01 or 0xD0 <= marker[0] <= 0xD8:  # markers without a segment
            continue
        data = file.read(7)
        if len(data) < 7:
            return None
        length, height, width = struct.unpack(">HxHH", data)
        if marker[0] in _JPEG_FRAMES:
            return (width, height) if width and height else None
        if length < 2:
            return None
        file.seek(length - 7, 1)  # to the next marker: the length counts its own two bytes
    return None


def folder_timing(first: Path) -> tuple[str | None, Fraction | None]:
    """(time code, frame rate) of a frame folder from its first DPX frame's industry headers, if it has them."""
    if first.suffix.lower() != ".dpx":
        return None, None
    with open(first, "rb") as file:
        header = file.read(2048)
    return dpx_timecode(header), dpx_frame_rate(header)


def _decode_file(path: Path) -> av.VideoFrame:
    codec = av.CodecContext.create(PYAV_IMAGES[path.suffix.lower()], "r")
    try:
        frames = codec.decode(av.Packet(path.read_bytes())) + codec.decode(None)
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    if not frames:
        raise InputError(f"cannot read image {path}: no picture decoded")
    return frames[0]


def _planes(frame: av.VideoFrame, dtype) -> list[np.ndarray]:
    """The planes of a planar frame as (H, W) arrays of `dtype`, padding dropped."""
    item = np.dtype(dtype).itemsize
    return [np.frombuffer(plane, dtype).reshape(frame.height, plane.line_size // item)[:, :frame.width]
            for plane in frame.planes]


def _read_pyav_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, ImageFacts]:
    frame = _decode_file(path)
    name = frame.format.name
    bits, chroma, has_alpha = format_facts(name)
    grey = chroma == "gray"
    if "f16" in name or "f32" in name:  # OpenEXR: planar g, b, r (, a) or y (, a)
        planes = [p.astype(np.float32) for p in _planes(frame, np.float16 if "f16" in name else np.float32)]
        colour = [planes[0]] * 3 if grey else [planes[2], planes[0], planes[1]]
        linear = np.dstack(colour)
        if np.isnan(linear).any():  # clipping keeps NaN, which crashes the methods
            raise InputError(f"OpenEXR frame {path} holds NaN values")
        if linear.max(initial=0.0) > 1.0 or linear.min(initial=0.0) < 0.0:
            warn(f"{path.parent.name}: OpenEXR values outside 0..1 (highlights above 1.0 or negatives) "
                 f"are clipped: the deflicker works on display-referred values")
        alpha = np.clip(planes[-1], 0.0, 1.0) if has_alpha else None
        return srgb_encode(linear), alpha, ImageFacts(name, bits, grey, has_alpha, linear=True)
    if bits in (10, 12) and name.endswith("le") and (name.startswith("gbr") or name.startswith("gray")):
        planes = _planes(frame, np.uint16)  # planar code values, widened exactly (undone on write)
        colour = [planes[0]] * 3 if grey else [planes[2], planes[0], planes[1]]
        alpha = widen(planes[-1], bits) if has_alpha else None
        return widen(np.dstack(colour), bits), alpha, ImageFacts(name, bits, grey, has_alpha)
    deep = bits > 8
    if grey:
        data = frame.to_ndarray(format="gray16le" if deep else "gray")
        return np.dstack([data] * 3), None, ImageFacts(name, bits, True, False)
    layout = ("rgba64le" if has_alpha else "rgb48le") if deep else ("rgba" if has_alpha else "rgb24")
    data = frame.to_ndarray(format=layout)
    alpha = data[:, :, 3].copy() if has_alpha else None
    return np.ascontiguousarray(data[:, :, :3]), alpha, ImageFacts(name, bits, False, has_alpha)


def write_image(path: Path, image: np.ndarray, alpha: np.ndarray | None, depth: int, grey: bool,
                source_format: str = "", source_file: Path | None = None) -> None:
    """Write one frame: PNG/TIFF through OpenCV at `depth` (8/16), DPX at the source's layout (with
    `source_file`'s header fields, see `carry_dpx_header`), OpenEXR linear. A failed write raises its OSError."""
    suffix = path.suffix.lower()
    if suffix == ".exr":
        return _write_exr(path, image, alpha, grey, half="f16" in source_format or not source_format)
    if suffix == ".dpx":
        return _write_dpx(path, image, alpha, grey, source_format, source_file)
    data = from_float(image, depth) if image.dtype.kind == "f" else to_depth(image, depth)
    if grey:
        data = cv2.cvtColor(data, cv2.COLOR_RGB2GRAY)
        if alpha is not None and suffix == ".png":  # cv2 writes no grey + alpha: PyAV's PNG encoder does
            return _write_grey_alpha_png(path, data, to_depth(alpha, depth))
        if alpha is not None:  # TIFF: written RGBA
            data = cv2.cvtColor(data, cv2.COLOR_GRAY2BGR)
    else:
        data = cv2.cvtColor(data, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        data = np.dstack([data, to_depth(alpha, depth)])
    # Encoded here, written by Python: a failed write is an OSError that says why (a full disk), where
    # imwrite only returns False (and libpng prints its own line).
    done, encoded = cv2.imencode(suffix, data)
    if not done:
        raise OutputError(f"cannot encode frame {path.name} as {suffix}")
    path.write_bytes(encoded)


def _write_grey_alpha_png(path: Path, grey: np.ndarray, alpha: np.ndarray) -> None:
    """A grey + alpha PNG (colour type 4) at the samples' depth."""
    deep = grey.dtype == np.uint16
    frame = av.VideoFrame(grey.shape[1], grey.shape[0], "ya16be" if deep else "ya8")
    pairs = np.stack([grey, alpha], -1).reshape(grey.shape[0], -1)
    plane = frame.planes[0]
    np.frombuffer(plane, ">u2" if deep else np.uint8).reshape(grey.shape[0], -1)[:, : pairs.shape[1]] = pairs
    _encode_file(path, "png", frame, {})


def _encode_file(path: Path, codec_name: str, frame: av.VideoFrame, options: dict[str, str]) -> None:
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, frame.format.name
    codec.time_base = Fraction(1, 25)
    codec.options = options
    frame.pts = 0
    try:
        data = b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))
    except av.error.FFmpegError as exc:
        raise OutputError(f"cannot encode frame {path.name}: {exc}") from None
    path.write_bytes(data)  # an OSError: the writer's to say (VideoWriter._failed)


def _write_exr(path: Path, image: np.ndarray, alpha, grey: bool, half: bool) -> None:
    encoded = image if image.dtype.kind == "f" else image.astype(np.float32) / np.iinfo(image.dtype).max
    linear = srgb_decode(encoded)
    if grey:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(linear[:, :, 1]), format="grayf32le")
    elif alpha is not None:
        a = alpha.astype(np.float32) / (np.iinfo(alpha.dtype).max if alpha.dtype.kind == "u" else 1.0)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.dstack([linear, a])), format="gbrapf32le")
    else:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(linear), format="gbrpf32le")
    _encode_file(path, "exr", frame, {"format": "half" if half else "float", "compression": "zip16"})


# DPX (SMPTE 268M) header: FFmpeg writes the 1664-byte generic header and no industry headers.
_DPX_GENERIC = 1664
_DPX_INDUSTRY = 384  # motion-picture film header (1664-1919) and television header (1920-2047)
# 4-byte fields of the industry headers (frame position, sequence length, held count, frame rate, shutter
# angle; time code, user bits; ten television rates and levels): swapped when the byte orders differ.
_DPX_WORDS = (*range(1712, 1732, 4), 1920, 1924, *range(1932, 1972, 4))


def dpx_timecode(header: bytes) -> str | None:
    """The television header's SMPTE time code (BCD) of a DPX file, as 'HH:MM:SS:FF', or None if undefined."""
    if len(header) < 1924 or header[:4] not in (b"SDPX", b"XPDS"):
        return None
    order = ">" if header[:4] == b"SDPX" else "<"
    if struct.unpack(order + "I", header[24:28])[0] + struct.unpack(order + "I", header[28:32])[0] < 2048:
        return None
    code = struct.unpack(order + "I", header[1920:1924])[0]
    if code == 0xFFFFFFFF:
        return None
    digits = f"{code:08x}"
    return ":".join(digits[i:i + 2] for i in range(0, 8, 2)) if digits.isdigit() else None


def dpx_frame_rate(header: bytes) -> Fraction | None:
    """The film header's frame rate, else the television header's, of a DPX file (None if undefined)."""
    if len(header) < 2048 or header[:4] not in (b"SDPX", b"XPDS"):
        return None
    order = ">" if header[:4] == b"SDPX" else "<"
    if struct.unpack(order + "I", header[28:32])[0] < _DPX_INDUSTRY:
        return None
    for at in (1724, 1940):
        rate = struct.unpack(order + "f", header[at:at + 4])[0]
        if np.isfinite(rate) and 1.0 <= rate <= 1000.0:
            return Fraction(rate).limit_denominator(1001)
    return None


def carry_dpx_header(written: bytes, source: bytes) -> bytes:
    """`written` (FFmpeg's DPX) with the source frame's transfer and colorimetric codes, project and
    copyright strings, and its film and television headers (key code, time code, frame rate) put back."""
    if source[:4] not in (b"SDPX", b"XPDS") or written[:4] not in (b"SDPX", b"XPDS") or len(source) < 804:
        return written
    src_order, out_order = (">" if magic == b"SDPX" else "<" for magic in (source[:4], written[:4]))
    out = bytearray(written)
    out[801:803] = source[801:803]  # transfer characteristic, colorimetric specification (element 0)
    out[260:660] = source[260:660]  # project name, copyright (ASCII)
    industry = struct.unpack(src_order + "I", source[28:32])[0]
    generic = struct.unpack(out_order + "I", written[24:28])[0]
    if industry < _DPX_INDUSTRY or len(source) < 2048 or generic != _DPX_GENERIC or \
            struct.unpack(out_order + "I", written[4:8])[0] != _DPX_GENERIC:
        return bytes(out)
    headers = bytearray(source[_DPX_GENERIC:_DPX_GENERIC + _DPX_INDUSTRY])
    if src_order != out_order:
        for at in _DPX_WORDS:
            i = at - _DPX_GENERIC
            headers[i:i + 4] = headers[i:i + 4][::-1]
    out[_DPX_GENERIC:_DPX_GENERIC] = headers
    start = _DPX_GENERIC + _DPX_INDUSTRY
    for at, value in ((4, start), (16, len(out)), (28, _DPX_INDUSTRY), (808, start)):
        out[at:at + 4] = struct.pack(out_order + "I", value)
    return bytes(out)


def _write_dpx(path: Path, image: np.ndarray, alpha, grey: bool, source_format: str,
               source_file: Path | None) -> None:
    data = from_float(image, 16) if image.dtype.kind == "f" else to_depth(image, 16)
    bits = format_facts(source_format)[0] if source_format else 16
    if bits in (10, 12) and not grey and alpha is None:  # exact code values, no dithering
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(narrow(data, bits)), format=f"gbrp{bits}le")
    elif bits <= 8:
        small = to_depth(data, 8)
        if grey:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(small[:, :, 1]), format="gray")
        elif alpha is not None:
            frame = av.VideoFrame.from_ndarray(np.dstack([small, to_depth(alpha, 8)]), format="rgba")
        else:
            frame = av.VideoFrame.from_ndarray(small, format="rgb24")
    elif grey:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data[:, :, 1]), format="gray16le")
    elif alpha is not None:
        frame = av.VideoFrame.from_ndarray(np.dstack([data, to_depth(alpha, 16)]), format="rgba64le")
    else:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format="rgb48le")
    _encode_file(path, "dpx", frame, {})
    if source_file is not None and source_file.suffix.lower() == ".dpx" and source_file.is_file():
        path.write_bytes(carry_dpx_header(path.read_bytes(), source_file.read_bytes()[:2048]))
