"""Professional media in, professional media out: every input is made here with PyAV (6 frames,
64x48), deflickered with the classical method, and the output probed with PyAV for its depth, pixel
format family, rotation, aspect, colour and HDR tags, streams, metadata, frame count, and for
keeping more than 8 bits of a smooth gradient."""

from fractions import Fraction
import dataclasses
import struct
import warnings
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from unflicker import io
from unflicker.cli import main
from unflicker.errors import InputError, OutputError
from unflicker.io.images import srgb_decode, srgb_encode
from unflicker.pipeline import RunConfig, deflicker_file

H, W, N = 48, 64, 6
HLG_TAGS = dict(color_primaries=9, color_trc=18, colorspace=9, color_range=1)  # bt2020 / HLG / bt2020nc / tv
BT709_TAGS = dict(color_primaries=1, color_trc=1, colorspace=1, color_range=1)
MASTERING = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
ALPHA = (np.mgrid[0:H, 0:W][1] * 1000).astype(np.uint16)  # a horizontal alpha ramp


def gradient(t: int) -> np.ndarray:
    """(H, W, 3) uint16: a smooth ramp with 3072 distinct levels, under a flickering gain."""
    ramp = 0.05 + 0.85 * np.arange(H * W, dtype=np.float64).reshape(H, W) / (H * W)
    gain = 1.0 + (0.06 if t % 2 else -0.06)
    rgb = np.stack([ramp * gain, ramp * gain, np.full_like(ramp, 0.4 * gain)], -1)
    return np.round(rgb * 65535).astype(np.uint16)


def add_audio(out, n_streams: int, seconds: float) -> list:
    streams = []
    for k in range(n_streams):
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        stream.metadata["language"] = ["eng", "fra"][k % 2]
        streams.append(stream)
    return streams


def encode_audio(out, streams, seconds: float) -> None:
    for k, stream in enumerate(streams):
        samples = (np.sin(np.arange(int(48000 * seconds)) / (10 + k)) * 8000).astype(np.int16)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(samples[:, start:start + 1024].copy(), format="s16", layout="mono")
            chunk.sample_rate = 48000
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def make_clip(path: Path, codec: str, pix_fmt: str, *, options=None, tags=None, rotation=0, sar=None, audio=0,
              subtitle=False, pts=None, alpha=False, chapters=False, timecode=None, fps=12, field_order=0) -> Path:
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "flicker test"
        out.metadata["creation_time"] = "2021-03-04T05:06:07.000000Z"
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.options = options or {}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for key, value in (tags or {}).items():
            setattr(stream.codec_context, key, value)
        if sar:
            stream.codec_context.sample_aspect_ratio = sar
        if field_order:
            stream.codec_context.field_order = field_order
        if rotation:
            stream.set_display_rotation(rotation)
        if timecode:
            stream.metadata["timecode"] = timecode
        audio_streams = add_audio(out, audio, N / fps)
        sub = None
        if subtitle:
            sub = out.add_mux_stream("subrip")
            sub.time_base = Fraction(1, 1000)
            sub.metadata["language"] = "deu"
        if chapters:
            out.set_chapters([{"id": k + 1, "start": 3 * k, "end": 3 * k + 3, "time_base": Fraction(1, fps),
                               "metadata": {"title": f"part {k + 1}"}} for k in range(2)])
        matrix = {1: 1, 9: 9}.get((tags or {}).get("colorspace"))
        for t in range(N):
            rgb = gradient(t)
            frame = av.VideoFrame.from_ndarray(np.dstack([rgb, ALPHA]) if alpha else rgb,
                                               format="rgba64le" if alpha else "rgb48le")
            if pix_fmt.startswith("yuv"):
                frame = frame.reformat(format=pix_fmt, dst_colorspace=matrix, dst_color_range=1)
            else:
                frame = frame.reformat(format=pix_fmt)
            frame.pts, frame.time_base = (pts[t], Fraction(1, 1000)) if pts else (t, Fraction(1, fps))
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        encode_audio(out, audio_streams, N / fps if pts is None else pts[-1] / 1000)
        if sub is not None:
            packet = av.Packet(b"flicker")
            packet.stream, packet.pts, packet.dts, packet.duration = sub, 0, 0, 200
            packet.time_base = Fraction(1, 1000)
            out.mux(packet)
    return path


def run(source: Path, output: Path) -> Path:
    deflicker_file(source, output, RunConfig(method="classical", progress=False))
    return output


def first_plane(path: Path) -> tuple[np.ndarray, int]:
    """The first plane (Y, or G for RGB) of the output's middle frame at its own depth, and that depth."""
    with av.open(str(path)) as container:
        frame = list(container.decode(video=0))[N // 2]
    bits = io.media.format_facts(frame.format.name)[0]
    dtype = np.uint16 if bits > 8 else np.uint8
    plane = frame.planes[0]
    values = np.frombuffer(plane, dtype).reshape(frame.height, plane.line_size // dtype().itemsize)[:, :frame.width]
    return values, bits


def luma_levels(path: Path) -> int:
    """Distinct values of the first plane of the output's middle frame."""
    return len(np.unique(first_plane(path)[0]))


def roughness(values: np.ndarray, bits: int) -> float:
    """Deviation of a frame of the gradient from a smooth curve, in 8-bit steps.

    Rounding to 8 bits anywhere on the way leaves 1/sqrt(12) = 0.29 of a step; full precision
    through a lossless or ProRes output leaves under 0.11 (measured: 0.02-0.11, against 0.18-0.45
    with the reader forced to 8 bits).
    """
    y = values.astype(np.float64).ravel()
    index = np.arange(y.size)
    return float(np.std(y - np.polyval(np.polyfit(index, y, 3), index)) / 2 ** (bits - 8))


def smooth_output(path: Path) -> bool:
    return roughness(*first_plane(path)) < 0.15


def stream_counts(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as container:
        return len(container.streams.audio), len(container.streams.subtitles)


def assert_same_media(source: io.VideoInfo, out: io.VideoInfo, *, chroma: str | None = None) -> None:
    assert out.frame_count == source.frame_count
    assert (out.width, out.height) == (source.width, source.height)
    assert out.rotation == source.rotation
    assert out.sample_aspect_ratio == source.sample_aspect_ratio
    assert out.colour_tags() == source.colour_tags()
    assert out.chroma == (chroma or source.chroma)
    assert dict(out.metadata).get("title") == dict(source.metadata).get("title")


# ---------------------------------------------------------------- videos


def test_h264_rotation_90_and_aac(tmp_path):
    src = make_clip(tmp_path / "phone.mp4", "libx264", "yuv420p", rotation=90, audio=1, tags=BT709_TAGS)
    info = io.probe(src)
    assert info.rotation == 90 and info.audio_streams == 1 and info.sample_bits == 8
    out = io.probe(run(src, tmp_path / "out.mp4"))
    assert_same_media(info, out)
    assert out.pixel_format == "yuv420p" and out.codec == "h264"  # 8-bit stays as it was
    assert stream_counts(out.path) == (1, 0)
    assert dict(out.metadata)["creation_time"] == "2021-03-04T05:06:07.000000Z"


@pytest.mark.parametrize("suffix, codec", [(".mkv", None), (".mp4", None), (".mkv", "hevc")])
def test_hevc_hlg_two_audio_one_subtitle(tmp_path, suffix, codec):
    if "libx265" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx265")
    params = f"log-level=error:crf=4:master-display={MASTERING}:max-cll=1000,400"
    src = make_clip(tmp_path / "hlg.mkv", "libx265", "yuv420p10le", options={"x265-params": params}, tags=HLG_TAGS,
                    audio=2, subtitle=True, chapters=True)
    info = io.probe(src)
    assert (info.sample_bits, info.audio_streams, info.subtitle_streams, info.chapters) == (10, 2, 1, 2)
    assert info.colour_tags() == "bt2020/arib-std-b67/bt2020nc/tv" and info.hdr
    assert info.mastering_display == MASTERING and info.content_light == (1000, 400)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = tmp_path / f"out{suffix}"
        deflicker_file(src, output, RunConfig(method="classical", progress=False, codec=codec))
    warned = " ".join(str(w.message) for w in caught)
    out = io.probe(output)
    assert_same_media(info, out)
    assert out.sample_bits == 10 and out.pixel_format == "yuv420p10le"
    assert luma_levels(output) > 256
    with av.open(str(output)) as container:
        languages = [s.metadata.get("language") for s in container.streams.audio]
    assert languages == ["eng", "fra"]
    if codec == "hevc":  # H.265 in .mkv: everything, the HDR metadata as SEI
        assert out.codec == "hevc" and stream_counts(output) == (2, 1) and out.chapters == 2
        assert out.mastering_display == MASTERING and out.content_light == (1000, 400) and not warned
    elif suffix == ".mkv":  # FFV1 keeps everything but the HDR side data, which PyAV cannot write there
        assert out.codec == "ffv1" and stream_counts(output) == (2, 1) and out.chapters == 2
        assert out.mastering_display is None and "mastering-display" in warned
    else:  # H.264 High 10 carries the HDR SEI; mp4 holds no SubRip
        assert out.codec == "h264" and stream_counts(output)[0] == 2
        assert out.mastering_display == MASTERING and out.content_light == (1000, 400)
        assert "subtitle stream" in warned


@pytest.mark.parametrize("tags", [BT709_TAGS, HLG_TAGS, {}])
def test_yuv_is_written_with_the_matrix_it_is_tagged_with(tmp_path, tags):
    """A saturated clip copied through the writer keeps its colours: YUV -> RGB -> YUV with one matrix."""
    colour = np.array([0.8, 0.2, 0.5]) * 65535
    frames = [np.broadcast_to(colour * (0.8 + 0.04 * t), (H, W, 3)).astype(np.uint16) for t in range(N)]
    src = tmp_path / "colour.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv444p10le"
        for key, value in tags.items():
            setattr(stream.codec_context, key, value)
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb.copy(), format="rgb48le").reformat(
                format="yuv444p10le", dst_colorspace={1: 1, 9: 9}.get(tags.get("colorspace")), dst_color_range=1)
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    info = io.probe(src)
    for suffix in (".mkv", ".mov", ".mp4"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with io.VideoWriter(tmp_path / f"copy{suffix}", info) as writer:
                for frame in io.read_frames(src, info):
                    writer.write(frame.image, frame.pts)
        copy = io.probe(tmp_path / f"copy{suffix}")
        assert copy.colour_tags().split("/")[:3] == info.colour_tags().split("/")[:3]
        assert copy.color_range in (info.color_range, 1)  # ProRes says 'tv' for untagged limited range
        for a, b in zip(io.read_frames(src, info), io.read_frames(copy.path, copy)):
            # the wrong matrix (BT.601 for BT.709) shifts a channel by 0.06
            assert np.abs(io.to_float(a.image) - io.to_float(b.image)).mean(axis=(0, 1)).max() < 0.004


def test_prores_422_hq_10_bit_keeps_codec_tags_timecode(tmp_path):
    src = make_clip(tmp_path / "grade.mov", "prores_ks", "yuv422p10le", options={"profile": "3"}, tags=BT709_TAGS,
                    timecode="01:00:00:00", audio=1)
    info = io.probe(src)
    out = io.probe(run(src, tmp_path / "out.mov"))
    assert_same_media(info, out)
    assert out.codec == "prores" and out.pixel_format == "yuv422p10le" and out.timecode == "01:00:00:00"
    with av.open(str(out.path)) as container:
        assert container.streams.video[0].codec_context.profile == "HQ"
    assert luma_levels(out.path) > 256 and smooth_output(out.path) and stream_counts(out.path) == (1, 0)


def test_prores_4444_keeps_alpha(tmp_path):
    src = make_clip(tmp_path / "key.mov", "prores_ks", "yuva444p10le", options={"profile": "4"}, alpha=True)
    info = io.probe(src)
    assert info.has_alpha and info.chroma == "444"
    with pytest.warns(UserWarning, match="12-bit source loses its lowest bits"):  # FFmpeg decodes 4444 as 12-bit
        out = io.probe(run(src, tmp_path / "out.mov"))
    assert_same_media(info, out)
    assert out.has_alpha and out.codec == "prores"
    with av.open(str(out.path)) as container:
        assert container.streams.video[0].codec_context.profile == "4444"
    assert smooth_output(out.path)
    alpha = next(io.read_frames(out.path)).alpha
    assert np.abs(alpha.astype(int) - ALPHA).max() < 300  # alpha carried, not deflickered


@pytest.mark.parametrize("pix_fmt", ["yuv444p12le", "gbrp12le"])
def test_12_bit_444_yuv_and_rgb_into_mkv_keep_every_bit(tmp_path, pix_fmt):
    rgb = pix_fmt.startswith("gbr")
    src = make_clip(tmp_path / "deep.mkv", "ffv1", pix_fmt, tags=dict(color_primaries=1, color_trc=1, colorspace=0) if rgb else None)
    info = io.probe(src)
    assert info.sample_bits == 12 and info.chroma == ("rgb" if pix_fmt.startswith("gbr") else "444")
    out = io.probe(run(src, tmp_path / "out.mkv"))
    assert_same_media(info, out)
    assert out.pixel_format == pix_fmt and luma_levels(out.path) > 1024 and smooth_output(out.path)
    if rgb:  # into YUV: the 'gbr' matrix tag would make players read Y, U, V as G, B, R
        with pytest.warns(UserWarning, match="12-bit"):
            video = io.probe(run(src, tmp_path / "out.mp4"))
        assert video.colour_tags().split("/")[:3] == ["bt709", "bt709", "-"] and video.pixel_format == "yuv444p10le"
        mean_in = np.mean([io.to_float(f.image) for f in io.read_frames(src)], axis=0)
        mean_out = np.mean([io.to_float(f.image) for f in io.read_frames(video.path)], axis=0)
        assert np.abs(mean_out - mean_in).mean() < 0.01


def test_12_bit_into_mp4_is_10_bit_with_a_warning(tmp_path):
    src = make_clip(tmp_path / "deep.mkv", "ffv1", "yuv444p12le")
    with pytest.warns(UserWarning, match="12-bit source is written at 10 bits"):
        output = run(src, tmp_path / "out.mp4")
    out = io.probe(output)
    assert out.pixel_format == "yuv444p10le" and out.codec == "h264" and luma_levels(output) > 256


def test_10_bit_h264_is_said_not_to_play_everywhere(tmp_path):
    """A deeper source keeps its depth in .mp4: H.264 High 10, which most web browsers and many players do not play.
    The warning says so and names --bit-depth 8; nothing is said where 8 or 10 bits were asked for, or for .mkv/.mov."""
    src = make_clip(tmp_path / "deep.mkv", "ffv1", "yuv420p10le")
    info = io.probe(src)
    with pytest.warns(UserWarning, match=r"10-bit H\.264 \(High 10\) does not play in most web browsers and many "
                                         r"players: --bit-depth 8 for playback nearly everywhere; \.mkv"):
        io.check_output(src, tmp_path / "o.mp4", info=info)
    assert io.plan_output(tmp_path / "o.mp4", info).pix_fmt == "yuv420p10le"
    for name, depth in (("o.mp4", 8), ("o.mp4", 10), ("o.mkv", None), ("o.mov", None)):
        dropped = " | ".join(io.plan_output(tmp_path / name, info, bit_depth=depth).dropped)
        assert "does not play" not in dropped
    odd = dataclasses.replace(io.probe(make_clip(tmp_path / "deep422.mkv", "ffv1", "yuv422p10le")), height=H + 1)
    dropped = " | ".join(io.plan_output(tmp_path / "o.mp4", odd).dropped)
    assert "(High 4:2:2)" in dropped and "at an even frame size: an odd one is written 4:4:4" in dropped


def test_an_odd_frame_size_in_8_bit_h264_is_said_not_to_play_everywhere(tmp_path):
    """8-bit H.264 keeps an odd size only as 4:4:4 (High 4:4:4 Predictive), which browsers do not play: said in one
    line; nothing for an even size, a 4:4:4 source, or .mkv."""
    info = io.probe(make_clip(tmp_path / "src.mkv", "ffv1", "yuv420p"))
    odd = dataclasses.replace(info, width=W + 1)
    plan = io.plan_output(tmp_path / "o.mp4", odd)
    assert plan.pix_fmt == "yuv444p"
    assert any(line.startswith(f"an odd frame size ({W + 1}x{H}) is written as 4:4:4 H.264") for line in plan.dropped)
    for case, name, depth in ((info, "o.mp4", None), (odd, "o.mkv", None), (dataclasses.replace(odd, chroma="444"),
                              "o.mp4", 10), (dataclasses.replace(info, chroma="rgb"), "o.mp4", 10)):
        assert not any("odd frame size" in line for line in io.plan_output(tmp_path / name, case, bit_depth=depth).dropped)


def test_gray16_stays_grey_16_bit(tmp_path):
    src = make_clip(tmp_path / "scan.mkv", "ffv1", "gray16le")
    info = io.probe(src)
    assert info.grayscale and info.sample_bits == 16
    out = io.probe(run(src, tmp_path / "out.mkv"))
    assert_same_media(info, out)
    assert out.pixel_format == "gray16le" and luma_levels(out.path) > 1024 and smooth_output(out.path)


def test_interlaced_input_is_warned_about(tmp_path):
    src = make_clip(tmp_path / "tv.mkv", "ffv1", "yuv420p10le", field_order=2)
    with pytest.warns(UserWarning, match="interlaced"):
        info = io.probe(src)
    assert info.field_order == "tt" and info.interlaced


@pytest.mark.parametrize("kind", ["hlg-mkv", "rotated-mp4", "alpha-mov", "dpx"])
def test_default_method_keeps_the_media(tmp_path, kind):
    """The default (neural) method on short clips: same depth, layout, rotation, alpha as classical."""
    if kind == "hlg-mkv":
        src, output = make_clip(tmp_path / "in.mkv", "ffv1", "yuv420p10le", tags=HLG_TAGS), tmp_path / "out.mkv"
    elif kind == "rotated-mp4":
        src, output = make_clip(tmp_path / "in.mp4", "libx264", "yuv420p10le", rotation=90, audio=1), tmp_path / "o.mp4"
    elif kind == "alpha-mov":
        src = make_clip(tmp_path / "in.mov", "prores_ks", "yuva444p10le", options={"profile": "4"}, alpha=True)
        output = tmp_path / "out.mov"
    else:
        src, output = folder_of(tmp_path, "scan", write_dpx), tmp_path / "out"
    info = io.probe(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ProRes 4444 decodes as 12-bit: the 10-bit warning is tested above
        deflicker_file(src, output, RunConfig(atlas_steps=5, progress=False))
    out = io.probe(output)
    assert_same_media(info, out)
    assert (out.pixel_format, out.has_alpha, out.frame_count, out.audio_streams) == \
        (info.pixel_format, info.has_alpha, N, info.audio_streams)
    if kind == "dpx":
        values = io.common.narrow(list(io.read_frames(output))[3].image, 10)
        assert len(np.unique(values[:, :, 1])) > 256
    else:
        assert luma_levels(output) > 256


def test_vfr_with_audio(tmp_path):
    pts = [0, 40, 80, 200, 240, 400]
    src = make_clip(tmp_path / "vfr.mp4", "libx264", "yuv420p10le", pts=pts, audio=1)
    out = run(src, tmp_path / "out.mp4")
    with av.open(str(out)) as container:
        times = [round(float(f.pts * f.time_base), 3) for f in container.decode(video=0)]
    assert times == [p / 1000 for p in pts] and stream_counts(out) == (1, 0)
    assert io.probe(out).pixel_format == "yuv420p10le"


def test_anamorphic_sar(tmp_path):
    src = make_clip(tmp_path / "dv.mp4", "libx264", "yuv420p10le", sar=Fraction(4, 3), tags=BT709_TAGS)
    info = io.probe(src)
    assert info.sample_aspect_ratio == Fraction(4, 3)
    for suffix in (".mp4", ".mov"):
        out = io.probe(run(src, tmp_path / f"out{suffix}"))
        assert out.sample_aspect_ratio == Fraction(4, 3) and out.colour_tags() == info.colour_tags()


# ---------------------------------------------------------------- frame folders


def folder_of(tmp_path: Path, name: str, write) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for t in range(N):
        write(folder, t, gradient(t))
    return folder


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_png_and_tiff_folders(tmp_path, suffix):
    src = folder_of(tmp_path, "seq", lambda d, t, rgb: cv2.imwrite(str(d / f"f{t}{suffix}"), rgb[:, :, ::-1]))
    out = run(src, tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"f{t}{suffix}" for t in range(N)]
    image = cv2.imread(str(out / f"f3{suffix}"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and len(np.unique(image[:, :, 2])) > 256 and roughness(image[:, :, 1], 16) < 0.15


def write_dpx(folder: Path, t: int, rgb: np.ndarray) -> None:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(io.common.narrow(rgb, 10)), format="gbrp10le")
    codec = av.CodecContext.create("dpx", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = W, H, "gbrp10le", Fraction(1, 25)
    (folder / f"scan.{t:04d}.dpx").write_bytes(b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None)))


def test_10_bit_dpx_folder_in_dpx_out(tmp_path):
    src = folder_of(tmp_path, "scan", write_dpx)
    info = io.probe(src)
    assert (info.codec, info.sample_bits, info.pixel_format) == ("dpx", 10, "gbrp10le")
    first = next(io.read_frames(src)).image
    assert np.array_equal(io.common.narrow(first, 10), io.common.narrow(gradient(0), 10))  # exact code values
    out = run(src, tmp_path / "out")
    back = io.probe(out)
    assert back.codec == "dpx" and back.pixel_format == "gbrp10le" and back.frame_count == N
    values = io.common.narrow(list(io.read_frames(out))[3].image, 10)
    assert len(np.unique(values[:, :, 0])) > 256 and roughness(values[:, :, 1], 10) < 0.15


def with_industry_headers(dpx: bytes, order: str, frame: int) -> bytes:
    """A DPX as a film scanner writes it: FFmpeg's file with printing-density transfer, a project name and
    film/television headers (key code prefix, 24 fps, time code 01:00:00:<frame>) in byte order `order`."""
    head = bytearray(dpx[:1664])
    if order == ">":  # a big-endian scanner file (only its header is used)
        head[:4] = b"SDPX"
        head[24:28] = struct.pack(">I", 1664)
    head[801] = 1  # printing density
    head[260:267] = b"archive"
    film = bytearray(256)
    film[0:16] = b"KODAK5219 012345"
    film[1724 - 1664:1728 - 1664] = struct.pack(order + "f", 24.0)
    tv = bytearray(128)
    tv[0:4] = struct.pack(order + "I", int(f"010000{frame:02d}", 16))
    tv[1940 - 1920:1944 - 1920] = struct.pack(order + "f", 24.0)
    data = dpx[1664:]
    out = head + film + tv + data
    for at, value in ((4, 2048), (16, len(out)), (28, 384), (808, 2048)):
        out[at:at + 4] = struct.pack(order + "I", value)
    return bytes(out)


def test_dpx_header_fields_are_carried(tmp_path):
    src = folder_of(tmp_path, "scan", write_dpx)
    for t, path in enumerate(sorted(src.iterdir())):
        path.write_bytes(with_industry_headers(path.read_bytes(), "<", t))
    info = io.probe(src)
    assert (info.timecode, info.fps) == ("01:00:00:00", 24) and next(io.read_frames(src)).image.shape == (H, W, 3)
    out = run(src, tmp_path / "out")
    assert (io.probe(out).timecode, io.probe(out).fps) == ("01:00:00:00", 24)
    movie = io.probe(run(src, tmp_path / "out.mov"))  # the scan's time code and rate go into the .mov
    assert (movie.timecode, movie.fps, movie.codec) == ("01:00:00:00", 24, "prores")
    for t in range(N):
        written = (out / f"scan.{t:04d}.dpx").read_bytes()
        assert written[801] == 1 and written[260:267] == b"archive" and written[1664:1680] == b"KODAK5219 012345"
        assert io.images.dpx_timecode(written) == f"01:00:00:{t:02d}"
        assert struct.unpack("<f", written[1724:1728])[0] == 24.0
    # a big-endian scan's headers are byte-swapped into FFmpeg's little-endian file
    source = with_industry_headers((out / "scan.0003.dpx").read_bytes()[:1664] + bytes(64), ">", 3)
    write_dpx(tmp_path, 0, gradient(0))
    carried = io.images.carry_dpx_header((tmp_path / "scan.0000.dpx").read_bytes(), source[:2048])
    assert io.images.dpx_timecode(carried) == "01:00:00:03" and carried[1664:1680] == b"KODAK5219 012345"
    assert struct.unpack("<f", carried[1724:1728])[0] == 24.0 and struct.unpack("<f", carried[1940:1944])[0] == 24.0


def write_exr(folder: Path, t: int, rgb: np.ndarray) -> None:
    linear = rgb.astype(np.float32) / 65535 * 0.9
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(linear), format="gbrpf32le")
    codec = av.CodecContext.create("exr", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = W, H, "gbrpf32le", Fraction(1, 25)
    codec.options = {"format": "half"}
    (folder / f"plate_{t}.exr").write_bytes(b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None)))


def test_half_float_exr_folder_in_exr_out(tmp_path):
    src = folder_of(tmp_path, "plate", write_exr)
    info = io.probe(src)
    assert info.linear and info.codec == "exr" and info.pixel_format == "gbrpf16le"
    out = run(src, tmp_path / "out")
    back = io.probe(out)
    assert back.codec == "exr" and back.pixel_format == "gbrpf16le" and back.frame_count == N
    with av.open(str(out / "plate_3.exr")) as container:
        frame = next(container.decode(video=0))
    red = np.frombuffer(frame.planes[2], np.float16).reshape(H, -1)[:, :W].astype(np.float32)
    assert len(np.unique(red)) > 256  # half floats, not 8-bit steps
    source_red = gradient(3)[:, :, 0] / 65535 * 0.9
    # linear in, linear out: written sRGB-encoded the mean would be 1.5x, decoded twice 0.4x
    assert 0.85 < red.mean() / source_red.mean() < 1.15


def test_exr_values_above_one_are_clipped_with_a_warning(tmp_path):
    hot = tmp_path / "hot2"
    hot.mkdir()
    for t in range(N):
        linear = gradient(t).astype(np.float32) / 65535 * (3.0 if t == 2 else 0.9)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(linear), format="gbrpf32le")
        codec = av.CodecContext.create("exr", "w")
        codec.width, codec.height, codec.pix_fmt, codec.time_base = W, H, "gbrpf32le", Fraction(1, 25)
        (hot / f"p{t}.exr").write_bytes(b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None)))
    with pytest.warns(UserWarning, match="values outside 0..1"):
        run(hot, tmp_path / "out")


def test_an_exr_frame_holding_nan_is_one_error_naming_it(tmp_path):
    src = folder_of(tmp_path, "plate", write_exr)
    linear = gradient(2).astype(np.float32) / 65535
    linear[3, 4, 1] = np.nan
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(linear), format="gbrpf32le")
    codec = av.CodecContext.create("exr", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = W, H, "gbrpf32le", Fraction(1, 25)
    (src / "plate_2.exr").write_bytes(b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None)))
    with pytest.raises(InputError, match="OpenEXR frame .*plate_2.exr holds NaN values"):
        run(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_srgb_transfer_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    assert np.abs(srgb_decode(srgb_encode(x)) - x).max() < 1e-5
    assert srgb_encode(np.float32(0.18)) == pytest.approx(0.4614, abs=1e-3)


# ---------------------------------------------------------------- requests a format cannot hold


def test_impossible_requests_fail_before_any_work(tmp_path):
    src = make_clip(tmp_path / "in.mkv", "ffv1", "yuv444p12le")
    info = io.probe(src)
    with pytest.raises(OutputError, match="cannot hold ProRes"):
        io.plan_output(tmp_path / "o.mp4", info, codec="prores")
    with pytest.raises(OutputError, match="at most 10 bits"):
        io.plan_output(tmp_path / "o.mp4", info, codec="h264", bit_depth=12)
    with pytest.raises(OutputError, match="8 or 16 bits"):
        io.plan_output(tmp_path / "o", info, bit_depth=10)
    assert io.plan_output(tmp_path / "o.mp4", info, codec="hevc").pix_fmt == "yuv444p12le"
    assert io.plan_output(tmp_path / "o.mkv", info, bit_depth=8).pix_fmt == "bgr0"


def test_what_cannot_be_carried_is_named(tmp_path):
    src = make_clip(tmp_path / "in.mov", "prores_ks", "yuva444p10le", options={"profile": "4"}, alpha=True,
                    sar=Fraction(4, 3), tags=HLG_TAGS)
    info = dataclasses.replace(io.probe(src), mastering_display=MASTERING, content_light=(1000, 400),
                               uncarried_side_data=("HDR10+ dynamic metadata",))
    dropped = " | ".join(io.plan_output(tmp_path / "o.mkv", info).dropped)
    assert "mastering-display" in dropped and "sample aspect ratio" in dropped and "HDR10+" in dropped
    dropped = " | ".join(io.plan_output(tmp_path / "o.mp4", info).dropped)
    assert "alpha channel is dropped" in dropped and "mastering-display" not in dropped
    dropped = " | ".join(io.plan_output(tmp_path / "frames", info).dropped)
    assert "sample aspect ratio" in dropped and "colour tags" in dropped and "title" in dropped
    # A folder of frames has no frame rate: a video's other than the 25 a folder reads back at is named.
    for fps, named in ((Fraction(20), True), (Fraction(25), False)):
        dropped = " | ".join(io.plan_output(tmp_path / "frames", dataclasses.replace(info, fps=fps)).dropped)
        assert ("a folder of frames holds no frame rate (20 fps; it reads back at 25)" in dropped) == named


def test_attachments_go_into_mkv_and_are_named_elsewhere(tmp_path):
    src = tmp_path / "fonts.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p10le"
        out.add_attachment("subs.ttf", "application/x-truetype-font", b"\x00font")
        for t in range(N):
            frame = av.VideoFrame.from_ndarray(gradient(t), format="rgb48le").reformat(format="yuv420p10le")
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with av.open(str(run(src, tmp_path / "out.mkv"))) as container:
        attached = [(s.name, s.data) for s in container.streams.attachments]
    assert attached == [("subs.ttf", b"\x00font")]
    with pytest.warns(UserWarning, match=r"attachment stream 1 \(subs.ttf\) is not copied"):
        run(src, tmp_path / "out.mp4")


def clip_with_audio(path: Path, pix_fmt: str, codec: str, sample_format: str, samples: int) -> Path:
    """An FFV1 clip of the gradient with one mono audio stream of `codec` (silence)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        audio = out.add_stream(codec, rate=48000)
        audio.layout = "mono"
        for t in range(N):
            frame = av.VideoFrame.from_ndarray(gradient(t), format="rgb48le").reformat(format=pix_fmt)
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.int16), format=sample_format, layout="mono")
        chunk.sample_rate = 48000
        for packet in audio.encode(chunk) + audio.encode(None):
            out.mux(packet)
    return path


def test_audio_the_container_cannot_hold_is_refused_before_work(tmp_path):
    src = clip_with_audio(tmp_path / "wavpack.mkv", "yuv420p10le", "wavpack", "s16p", 24000)
    with pytest.raises(OutputError, match="wavpack audio"):
        run(src, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
    assert stream_counts(run(src, tmp_path / "out.mkv")) == (1, 0)


def test_info_shows_the_new_facts(tmp_path, capsys):
    src = make_clip(tmp_path / "phone.mp4", "libx264", "yuv420p10le", rotation=90, sar=Fraction(4, 3),
                    tags=HLG_TAGS, audio=1, timecode="10:00:00:00")
    assert main(["info", str(src)]) == 0
    shown = capsys.readouterr().out
    for fact in ("yuv420p10le, 10-bit", "chroma 420", "rotation 90", "SAR 4:3", "bt2020/arib-std-b67/bt2020nc/tv",
                 "1 audio stream", "timecode 10:00:00:00", "title 'flicker test'"):
        assert fact in shown, fact


def test_codec_and_bit_depth_options(tmp_path, capsys):
    src = make_clip(tmp_path / "deep.mkv", "ffv1", "yuv420p12le", tags=BT709_TAGS)
    out = tmp_path / "out.mp4"
    assert main(["run", "--method", "classical", "--quiet", str(src), "-o", str(out), "--codec", "hevc"]) == 0
    info = io.probe(out)
    assert (info.codec, info.pixel_format, info.colour_tags()) == ("hevc", "yuv420p12le", "bt709/bt709/bt709/tv")
    assert luma_levels(out) > 1024
    low = tmp_path / "low.mov"
    assert main(["run", "--method", "classical", "--quiet", str(src), "-o", str(low), "--bit-depth", "8"]) == 0
    assert (io.probe(low).codec, io.probe(low).pixel_format) == ("h264", "yuv420p")
    capsys.readouterr()
    bad = tmp_path / "bad.mp4"
    assert main(["run", "--method", "classical", "--quiet", str(src), "-o", str(bad), "--codec", "prores"]) == 3
    err = capsys.readouterr().err.strip()
    assert err == "unflicker: error: .mp4 cannot hold ProRes: use .mov or .mkv" and not bad.exists()


def test_held_depths_are_the_depths_an_output_plan_takes(tmp_path):
    """io.held_depths (what the web page offers per format) says yes exactly where plan_output takes the depth."""
    info = io.probe(make_clip(tmp_path / "clip.mkv", "ffv1", "yuv420p"))
    outputs = {"h264": "out.mp4", "hevc": "out.mp4", "prores": "out.mov", "ffv1": "out.mkv", None: "frames"}
    for codec, name in outputs.items():
        taken = []
        for bits in (8, 10, 12, 16):
            try:
                io.plan_output(tmp_path / name, info, codec, bits)
                taken.append(bits)
            except OutputError:
                pass
        assert io.held_depths(codec) == tuple(taken), codec
    assert io.held_depths("prores") == (10,) and io.held_depths(None) == (8, 16)


@pytest.mark.parametrize("suffix", [".mov", ".mp4"])
def test_full_range_source_keeps_its_picture(tmp_path, suffix):
    """ProRes is limited range by definition: a full-range source is converted, not mislabelled."""
    src = make_clip(tmp_path / "pc.mkv", "ffv1", "yuv444p10le", tags=dict(BT709_TAGS, color_range=2))
    output = run(src, tmp_path / f"out{suffix}")
    assert io.probe(output).color_range == (1 if suffix == ".mov" else 2)
    mean_in = np.mean([io.to_float(f.image) for f in io.read_frames(src)], axis=0)
    mean_out = np.mean([io.to_float(f.image) for f in io.read_frames(output)], axis=0)
    assert np.abs(mean_out - mean_in).mean() < 0.01


def colour_picture(height: int, width: int) -> np.ndarray:
    """(H, W, 3) float: a colour whose brightness varies over the frame and whose colour differences do not (so
    where a format sites its subsampled chroma does not matter), within 0.15-0.85."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width], float)[:, None, None]
    ramp = 0.25 * x + 0.15 * y + 0.1 * np.sin(5 * x) * np.cos(4 * y)
    return np.array([0.4, 0.5, 0.3])[None, None] + ramp[..., None] - 0.15


def bt709_planes(rgb: np.ndarray, bits: int, sub_x: int, sub_y: int) -> list[np.ndarray]:
    """Limited-range BT.709 Y, Cb, Cr code planes of float RGB in [0, 1], chroma averaged over sub_x x sub_y
    blocks (edges replicated): an encoder independent of swscale."""
    kr, kb = 0.2126, 0.0722
    y = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    cb, cr = (rgb[..., 2] - y) / (2 * (1 - kb)), (rgb[..., 0] - y) / (2 * (1 - kr))
    scale = 1 << (bits - 8)
    h, w = y.shape

    def sub(c):
        c = np.pad(c, ((0, -h % sub_y), (0, -w % sub_x)), mode="edge")
        return c.reshape(c.shape[0] // sub_y, sub_y, c.shape[1] // sub_x, sub_x).mean((1, 3))
    return [np.rint((16 + 219 * y) * scale), np.rint((128 + 224 * sub(cb)) * scale), np.rint((128 + 224 * sub(cr)) * scale)]


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p", "yuv420p10le", "yuva420p10le"])
@pytest.mark.parametrize("width", [64, 63])
def test_yuv_sources_are_read_at_their_levels(tmp_path, pix_fmt, width):
    """swscale's default YUV -> RGB read 4:2:x one to two levels dark, 10-bit 4:2:0 of odd width as garbage and
    deep white as 65280 (FFmpeg 8.1); the reader must give the picture back at its levels."""
    height = 47
    truth = colour_picture(height, width)
    bits = 10 if "10le" in pix_fmt else 8
    planes = bt709_planes(truth, bits, 2, 2 if "420" in pix_fmt else 1)
    scale, kr, kb = 1 << (bits - 8), 0.2126, 0.0722
    assert np.ptp(planes[1]) == 0 and np.ptp(planes[2]) == 0  # one colour difference: nothing to site
    y, cb, cr = (planes[0] / scale - 16) / 219, (planes[1][0, 0] / scale - 128) / 224, (planes[2][0, 0] / scale - 128) / 224
    red, blue = y + 2 * (1 - kr) * cr, y + 2 * (1 - kb) * cb
    truth = np.stack([red, (y - kr * red - kb * blue) / (1 - kr - kb), blue], -1)  # what the codes hold
    if "yuva" in pix_fmt:
        planes.append(np.full((height, width), (1 << bits) - 1))
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for key, value in BT709_TAGS.items():
            setattr(stream.codec_context, key, value)
        frame = av.VideoFrame(width, height, pix_fmt)
        dtype = np.uint16 if bits > 8 else np.uint8
        for plane, values in zip(frame.planes, planes):
            np.frombuffer(plane, dtype).reshape(plane.height, -1)[:, : plane.width] = values
        frame.pts = 0
        for packet in stream.encode(frame) + stream.encode(None):
            out.mux(packet)
    info = io.probe(path)
    decoded = next(io.read_frames(path, info))
    image = decoded.image.astype(np.float64) / np.iinfo(decoded.image.dtype).max
    bias = (image - truth).reshape(-1, 3).mean(0) * 255
    assert np.abs(bias).max() < 0.3, bias  # in 8-bit levels; the old read: -1 to -2 (8-bit), -0.5, garbage -40
    assert np.abs(image - truth).mean() * 255 < 1.5
    if decoded.alpha is not None:
        assert (decoded.alpha == 65535).all()  # opaque stays opaque (a 10-bit 1023 read as 65472 before)


def test_grey_16_bit_into_mkv_keeps_every_value(tmp_path):
    src = make_clip(tmp_path / "scan.mkv", "ffv1", "gray16le")
    deflicker_file(src, tmp_path / "out.mkv", RunConfig(method="classical", strength=0.0, progress=False))
    assert io.probe(tmp_path / "out.mkv").pixel_format == "gray16le"
    for a, b in zip(io.read_frames(src), io.read_frames(tmp_path / "out.mkv"), strict=True):
        np.testing.assert_array_equal(a.image, b.image)  # swscale's 48-bit RGB -> gray16 stretched them by 0.4 %


def test_audio_a_muxer_lists_but_refuses_is_refused_before_work(tmp_path):
    src = clip_with_audio(tmp_path / "opus.mkv", "yuv420p", "libopus", "s16", 960 * 25)
    assert "opus" in set(av.open(str(tmp_path / "probe.mov"), "w").supported_codecs)  # listed by the muxer
    with pytest.raises(OutputError, match="opus audio"):
        run(src, tmp_path / "out.mov")
    assert not (tmp_path / "out.mov").exists()
    assert stream_counts(run(src, tmp_path / "out.mkv")) == (1, 0)


def test_losses_the_header_does_not_show_are_named(tmp_path):
    # Variable timing whose mean rate is a folder's own 25 fps, written as a folder of frames.
    pts = [0, 40, 80, 200, 240, 300]
    src = make_clip(tmp_path / "vfr.mkv", "ffv1", "yuv420p", pts=pts)
    with pytest.warns(UserWarning, match="variable frame timing"):
        run(src, tmp_path / "frames")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*variable frame timing")  # evenly spaced: nothing to say
        run(make_clip(tmp_path / "even.mkv", "ffv1", "yuv420p", fps=25), tmp_path / "even_frames")
    # A second video stream.
    two = tmp_path / "two.mkv"
    with av.open(str(two), "w") as out:
        streams = [out.add_stream("ffv1", rate=12) for _ in range(2)]
        for stream in streams:
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(N):
            for stream in streams:
                frame = av.VideoFrame.from_ndarray(gradient(t), format="rgb48le").reformat(format="yuv420p")
                frame.pts = t
                for packet in stream.encode(frame):
                    out.mux(packet)
        for stream in streams:
            for packet in stream.encode(None):
                out.mux(packet)
    assert io.probe(two).other_video_streams == 1
    with pytest.warns(UserWarning, match="1 more video stream"):
        run(two, tmp_path / "two_out.mkv")
    # A Matroska file cut short: its header still states the whole duration.
    whole = make_clip(tmp_path / "whole.mkv", "ffv1", "yuv420p", fps=12)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    info = io.probe(cut)
    assert info.frame_count < N and info.missing_seconds > 0 and io.probe(whole).missing_seconds == 0
    with pytest.warns(UserWarning, match="truncated"):
        run(cut, tmp_path / "cut_out.mkv")


@pytest.mark.parametrize("pix_fmt, codes, color_range", [("yuv420p10le", (940, 512, 512), 1), ("yuv420p10le", (1023, 512, 512), 2),
                                                         ("gbrp12le", (4095, 4095, 4095), 0),
                                                         ("yuva420p10le", (940, 512, 512, 1023), 1)])
def test_deep_white_is_full_scale_in_and_out(tmp_path, pix_fmt, codes, color_range):
    """swscale reads a deep format's white as 65280-65520 and writes 65535 past it (10-bit 943 for 940)."""
    src = tmp_path / "white.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.codec_context.colorspace, stream.codec_context.color_range = 1, color_range
        for t in range(2):
            frame = av.VideoFrame(W, H, pix_fmt)
            for plane, value in zip(frame.planes, codes):
                np.frombuffer(plane, np.uint16).reshape(plane.height, -1)[:, : plane.width] = value
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    frame = next(io.read_frames(src))
    assert (frame.image == 65535).all() and (frame.alpha is None or (frame.alpha == 65535).all())
    for output in ([tmp_path / "out.mkv", tmp_path / "out.mp4"] if "gbr" not in pix_fmt else [tmp_path / "out.mkv"]):
        deflicker_file(src, output, RunConfig(method="classical", strength=0.0, progress=False))
        with av.open(str(output)) as container:
            written = next(container.decode(video=0))
        values = [int(np.frombuffer(plane, np.uint16)[0]) for plane in written.planes]
        expected = list(codes) if output.suffix == ".mkv" else list(codes[:3])
        if color_range == 2:
            expected[1:3] = [values[1], values[2]]  # full-range chroma: 511 or 512 (swscale's rounding)
        assert values == expected, (output.name, values)


@pytest.mark.parametrize("pix_fmt", ["gbrp10le", "gbrp12le", "gbrap10le"])
def test_every_code_of_deep_rgb_round_trips(tmp_path, pix_fmt):
    """Deep RGB is read packed (bits replicated: exact), not through swscale's planar YUV path (one code in three off)."""
    bits = 12 if "12" in pix_fmt else 10
    codes = np.arange(1 << bits, dtype=np.uint16)
    side = 64
    src, out = tmp_path / "rgb.mkv", tmp_path / "out.mkv"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("ffv1", rate=12)
        stream.width = stream.height = side
        stream.pix_fmt = pix_fmt
        frame = av.VideoFrame(side, side, pix_fmt)
        for k, plane in enumerate(frame.planes):
            np.frombuffer(plane, np.uint16).reshape(side, -1)[:, :side] = np.resize(np.roll(codes, 97 * k), (side, side))
        frame.pts = 0
        for packet in stream.encode(frame) + stream.encode(None):
            container.mux(packet)
    deflicker_file(src, out, RunConfig(method="classical", strength=0.0, progress=False))
    planes = []
    for path in (src, out):
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            assert frame.format.name == pix_fmt
            planes.append([np.frombuffer(p, np.uint16).reshape(side, -1)[:, :side].copy() for p in frame.planes])
    for a, b in zip(*planes):
        np.testing.assert_array_equal(a, b)


def test_float_sources_are_read(tmp_path):
    src = tmp_path / "half.mkv"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "gbrpf16le"
        stream.codec_context.options = {"strict": "-2", "level": "4"}  # float FFV1 is experimental
        for t in range(2):
            frame = av.VideoFrame(W, H, "gbrpf16le")
            for plane in frame.planes:
                np.frombuffer(plane, np.float16)[:] = 0.5
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    image = next(io.read_frames(src)).image  # sws_white took float white for 0 (a division by zero)
    assert abs(float(image.mean()) - 32767.5) < 2


def test_a_late_start_is_not_a_truncation_and_coarse_timing_gaps_are_named(tmp_path):
    late = tmp_path / "late.mkv"
    with av.open(str(late), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t in range(N):
            frame = av.VideoFrame.from_ndarray(gradient(t), format="rgb48le").reformat(format="yuv420p")
            frame.pts, frame.time_base = 10000 + 40 * t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert io.probe(late).missing_seconds == 0  # Matroska's DURATION tag is where it ends, not how long
    # A dropped frame in a 1/fps time base: steps of one and two ticks.
    src = tmp_path / "dropped.avi"
    with av.open(str(src), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 25)
        for t, pts in enumerate([0, 1, 3, 4, 5, 6]):
            frame = av.VideoFrame.from_ndarray(gradient(t), format="rgb48le").reformat(format="yuv420p")
            frame.pts, frame.time_base = pts, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert [f.pts for f in io.read_frames(src)] == [0, 1, 3, 4, 5, 6]  # ticks of 1/25 s
    with pytest.warns(UserWarning, match="variable frame timing"):
        run(src, tmp_path / "frames")


def test_a_grey_and_alpha_png_folder_stays_grey(tmp_path):
    folder = tmp_path / "scan"
    folder.mkdir()
    grey = (np.arange(H * W).reshape(H, W) % 251).astype(np.uint8)
    for t in range(3):
        frame = np.zeros((H, W, 2), np.uint8)
        frame[..., 0], frame[..., 1] = grey, 200
        with av.open(str(folder / f"f{t}.png"), "w", format="image2") as out:  # colour type 4 (OpenCV writes none)
            stream = out.add_stream("png", rate=1)
            stream.width, stream.height, stream.pix_fmt = W, H, "ya8"
            image = av.VideoFrame(W, H, "ya8")
            np.frombuffer(image.planes[0], np.uint8).reshape(H, -1)[:, : 2 * W] = frame.reshape(H, 2 * W)
            for packet in stream.encode(image) + stream.encode(None):
                out.mux(packet)
    info = io.probe(folder)
    assert info.grayscale and info.has_alpha  # was read as colour: the output came out RGBA
    out = run(folder, tmp_path / "out")
    image, alpha, facts = io.images.read_image(next(iter(sorted(out.iterdir()))))
    assert facts.grey and (alpha == 200).all()


def test_audio_languages_are_kept_in_mov(tmp_path):
    """QuickTime (.mov) stores a language as one of its own codes, which take some ISO 639-2 codes in one of
    their two forms only ('fra' and 'ger', not 'fre' and 'deu'): 'deu' audio came out of .mov untagged. The
    other form is written where it holds; a language .mov has no code for is named in a warning."""
    src = tmp_path / "dub.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        audio = add_audio(out, 4, N / 12)
        for a, language in zip(audio, ["deu", "fre", "eng", "zul"]):
            a.metadata["language"] = language
        for t in range(N):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(gradient(t), format="rgb48le").reformat(format="yuv420p")))
        out.mux(stream.encode(None))
        encode_audio(out, audio, N / 12)
    with pytest.warns(UserWarning, match=r"language zul of audio stream 4 .*\.mov"):
        output = run(src, tmp_path / "out.mov")
    with av.open(str(output)) as container:
        assert [s.metadata.get("language") for s in container.streams.audio] == ["ger", "fra", "eng", None]


def test_full_range_8_bit_420_keeps_grey_neutral(tmp_path):
    """swscale's default RGB -> full-range 4:2:0 conversion puts neutral grey at chroma 127, not 128: a full-range
    source (MJPEG, a phone's yuvj420p) came out with a green cast (grey 200 read back as 199, 201, 198)."""
    src = tmp_path / "webcam.avi"
    luma = np.repeat(np.linspace(20, 235, W).round().astype(np.uint8)[None], H, 0)
    with av.open(str(src), "w") as out:
        stream = out.add_stream("mjpeg", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuvj420p"
        stream.codec_context.color_range = 2
        for t in range(N):
            frame = av.VideoFrame(W, H, "yuvj420p")  # grey: chroma 128
            for plane, values in zip(frame.planes, (luma, 128, 128)):
                np.frombuffer(plane, np.uint8).reshape(plane.height, -1)[:, :plane.width] = values
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    info = io.probe(src)
    assert info.color_range == 2
    for suffix in (".mp4", ".mov"):
        output = tmp_path / f"out{suffix}"
        with io.VideoWriter(output, info) as writer:
            for frame in io.read_frames(src, info):
                writer.write(frame.image, frame.pts)
        with av.open(str(output)) as container:
            frame = next(container.decode(video=0))
        assert frame.color_range == 2
        for plane in frame.planes[1:]:
            chroma = np.frombuffer(plane, np.uint8).reshape(plane.height, -1)[:, :plane.width]
            assert abs(float(chroma.mean()) - 128) < 0.25
