"""Video I/O: write a clip, read it back, check rate, count, timestamps, audio, bit depth, atomicity."""

import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from unflicker import io
from unflicker.errors import InputError, OutputError


def gradient_frames(n, h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 4 + t * 8) % 256, (yy * 5) % 256, np.full_like(xx, 40 + t * 10)], -1).astype(np.uint8)
            for t in range(n)]


def make_video(path: Path, frames, fps=12, audio=False, pts=None):
    """A small H.264 (+AAC) clip; `pts` in 1/1000 s gives a variable frame rate."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if audio:
            a_stream = out.add_stream("aac", rate=48000)
            a_stream.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if audio:
            samples = (np.sin(np.arange(48000 * len(frames) // fps) / 10) * 8000).astype(np.int16)[None]
            for start in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(samples[:, start:start + 1024].copy(), format="s16", layout="mono")
                chunk.sample_rate = 48000
                for packet in a_stream.encode(chunk):
                    out.mux(packet)
            for packet in a_stream.encode(None):
                out.mux(packet)


def copy_through(src: Path, dst: Path, **kw):
    info = io.probe(src)
    with io.VideoWriter(dst, info, **kw) as writer:
        for frame in io.read_frames(src, info):
            writer.write(frame.image, frame.pts, frame.name)
    return info


def test_mp4_round_trip_keeps_count_fps_size_and_audio(tmp_path):
    src = tmp_path / "in.mp4"
    make_video(src, gradient_frames(10), fps=12, audio=True)
    info = io.probe(src)
    assert (info.width, info.height, info.frame_count, info.fps, info.has_audio) == (64, 48, 10, 12, True)
    out = tmp_path / "out.mp4"
    copy_through(src, out)
    back = io.probe(out)
    assert (back.width, back.height, back.frame_count, back.fps, back.has_audio) == (64, 48, 10, 12, True)
    with av.open(str(src)) as a, av.open(str(out)) as b:
        pa = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        pb = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert pa == pb  # audio copied packet for packet, not re-encoded
    first = next(io.read_frames(out)).image
    assert np.abs(first.astype(int) - gradient_frames(1)[0]).mean() < 4


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    src = tmp_path / "vfr.mp4"
    pts = [0, 40, 80, 200, 240, 400, 440, 480]
    make_video(src, gradient_frames(len(pts)), pts=pts)
    out = tmp_path / "vfr_out.mkv"
    copy_through(src, out)
    times_in = [round(float(f.pts * f.time_base), 3) for f in av.open(str(src)).decode(video=0)]
    times_out = [round(float(f.pts * f.time_base), 3) for f in av.open(str(out)).decode(video=0)]
    assert times_out == times_in == [p / 1000 for p in pts]


def test_mkv_is_lossless(tmp_path):
    frames = gradient_frames(4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.mkv"
    copy_through(folder, out)
    back = [f.image for f in io.read_frames(out)]
    assert len(back) == 4 and all(np.array_equal(a, b) for a, b in zip(back, frames))


def test_folder_natural_order_names_and_16_bit(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for n in (10, 2, 1):
        images[n] = rng.integers(0, 65535, (9, 11, 3), dtype=np.uint16)
        cv2.imwrite(str(folder / f"{n}.png"), images[n])
    info = io.probe(folder)
    assert info.frame_names == ("1.png", "2.png", "10.png") and info.bit_depth == 16
    out = tmp_path / "result"
    copy_through(folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["1.png", "10.png", "2.png"]
    for n, image in images.items():
        assert np.array_equal(cv2.imread(str(out / f"{n}.png"), cv2.IMREAD_UNCHANGED), image)


def test_odd_size_video_keeps_its_size(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((17, 33, 3), 60 * i, np.uint8))
    out = tmp_path / "odd.mp4"
    copy_through(folder, out)
    info = io.probe(out)
    assert (info.width, info.height, info.frame_count) == (33, 17, 3)


def test_failed_write_leaves_no_partial_file_and_keeps_existing(tmp_path):
    src = tmp_path / "in.mp4"
    make_video(src, gradient_frames(3))
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    info = io.probe(src)
    with pytest.raises(RuntimeError):
        with io.VideoWriter(out, info, overwrite=True) as writer:
            writer.write(gradient_frames(1)[0])
            raise RuntimeError("interrupted")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_bad_inputs_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        io.probe(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        io.probe(tmp_path / "empty")
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(InputError):
        io.probe(bad)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cv2.imwrite(str(mixed / "0.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(mixed / "1.png"), np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(InputError, match="mixed frame sizes"):
        list(io.read_frames(mixed))


def test_output_checks(tmp_path):
    src = tmp_path / "in.mp4"
    make_video(src, gradient_frames(2))
    with pytest.raises(OutputError, match="is the input"):
        io.check_output(src, src)
    with pytest.raises(OutputError, match="exists"):
        io.check_output(tmp_path / "x.mp4", src)
    with pytest.raises(OutputError, match="does not exist"):
        io.check_output(src, tmp_path / "nowhere" / "out.mp4")
    with pytest.raises(OutputError, match="unsupported"):
        io.check_output(src, tmp_path / "out.xyz")
    assert io.check_output(tmp_path / "x.mp4", src, overwrite=True) == src
    assert io.check_output(src, tmp_path / "new.mp4") == tmp_path / "new.mp4"


def test_to_float_is_every_code_value_over_its_maximum_in_float32():
    """Every 8- and 16-bit code value converts to float32(v) * float32(1 / max), the values the
    two-step cast-then-scale gave, and back again unchanged."""
    for dtype, top in ((np.uint8, 255.0), (np.uint16, 65535.0)):
        values = np.arange(int(top) + 1, dtype=dtype).reshape(-1, 1, 1)
        floats = io.to_float(values)
        assert floats.dtype == np.float32
        assert np.array_equal(floats, values.astype(np.float32) * np.float32(1.0 / top))
        assert np.array_equal(io.from_float(floats, 8 if top == 255.0 else 16), values)


@pytest.mark.parametrize("shape", [(300, 301, 3), (7, 5), (1000,), (0, 4, 3), (1, 70000, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_float_in_row_bands_gives_the_whole_image_formula(shape, dtype):
    """Band by band (and straight into `out`) the values are np.clip(x * top + 0.5, 0, top).astype:
    out-of-range values clipped, halves rounded up, a (300, 301, 3) image spans several bands."""
    rng = np.random.default_rng(3)
    image = (rng.random(shape) * 1.2 - 0.1).astype(dtype)
    if image.size:
        image.reshape(-1)[:4] = [0.5 / 255, 1.5 / 65535, -0.0, 1.0]
    for depth, top, out_type in ((8, 255.0, np.uint8), (16, 65535.0, np.uint16)):
        expected = np.clip(image * top + 0.5, 0, top).astype(out_type)
        assert np.array_equal(io.from_float(image, depth), expected)
        out = np.full(shape, 7, out_type)
        assert io.from_float(image, depth, out=out) is out
        assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="out is"):
        io.from_float(image, 16, out=np.empty(shape, np.uint8))


@pytest.mark.parametrize("name", ["out.mp4", "out.mkv"])
def test_a_disk_that_fills_at_the_trailer_is_one_error_and_no_partial_file(tmp_path, name):
    """Small outputs are buffered until close(): a full disk shows at the trailer, which raised a
    raw av.error (a traceback). A file-size limit stands in for the full disk, in a child process."""
    src = tmp_path / "in.mp4"
    make_video(src, gradient_frames(6))
    script = f"""
import resource, signal, sys
from pathlib import Path
from unflicker import io
from unflicker.errors import OutputError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
src, out = Path({str(src)!r}), Path({str(tmp_path / name)!r})
info = io.probe(src)
writer = io.VideoWriter(out, info)
for frame in io.read_frames(src, info):
    writer.write(frame.image, frame.pts, frame.name)
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
try:
    writer.close()
except OutputError as exc:
    print("OutputError:", exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith(f"OutputError: writing {name} failed"), result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_image_size_reads_each_format_s_header_as_read_image_reads_the_file(tmp_path, monkeypatch):
    from unflicker.io import images

    image = gradient_frames(1, h=37, w=53)[0]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    for name, params in (("a.png", []), ("a.jpg", []), ("p.jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), ("a.bmp", []),
                         ("a.tif", []), ("lzw.tiff", [cv2.IMWRITE_TIFF_COMPRESSION, 5])):
        assert cv2.imwrite(str(tmp_path / name), bgr, params)
    cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "grey.png"), bgr[:, :, 0])
    for name, layout in (("a.dpx", "gbrp10le"), ("b.dpx", "rgb48le"), ("a.exr", "")):
        images.write_image(tmp_path / name, io.to_float(image), None, 16, False, layout)
    decoded = {path.name: io.read_image(path)[0].shape[1::-1] for path in tmp_path.iterdir()}
    assert set(decoded.values()) == {(53, 37)}

    def decode(path):
        assert path.suffix == ".exr", f"{path.name} was decoded: its header holds its size"
        return read_image(path)

    read_image = images.read_image
    monkeypatch.setattr(images, "read_image", decode)
    assert {path.name: io.image_size(path) for path in tmp_path.iterdir()} == decoded
    headers = {path.name: io.image_size(path, decode=False) for path in tmp_path.iterdir()}
    assert headers == {**decoded, "a.exr": None}  # nothing decoded when asked not to


def test_frame_estimate_reads_headers_only_and_matches_probe(tmp_path):
    """The batch bar's total: a container's stated count, else its duration times the frame rate (no demux:
    for Matroska that would read the whole file); a folder's listing; 0 for what cannot be read."""
    import av

    for name, codec in (("a.mp4", "libx264"), ("a.mkv", "ffv1")):
        with av.open(str(tmp_path / name), "w") as container:
            stream = container.add_stream(codec, rate=20)
            stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
            for t in range(15):
                frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 10 * t, np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(4):
        cv2.imwrite(str(folder / f"{t}.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 10)
    expected = {path.name: io.probe(path).frame_count for path in (tmp_path / "a.mp4", tmp_path / "a.mkv", folder)}
    assert expected == {"a.mp4": 15, "a.mkv": 15, "frames": 4}
    with av.open(str(tmp_path / "a.mkv")) as container:  # Matroska states no count: the estimate's own path
        assert container.streams.video[0].frames == 0
    assert {name: io.frame_estimate(tmp_path / name) for name in expected} == expected
    assert io.frame_estimate(tmp_path / "broken.mp4") == 0 and io.frame_estimate(tmp_path / "none.mp4") == 0


def test_replacing_a_folder_keeps_what_was_put_in_it_while_the_run_wrote(tmp_path):
    """The output folder is checked when a run begins (only frames may be replaced); anything put in it
    since (a subfolder, a note) is not deleted with the old frames but kept beside the new ones, named."""
    from unflicker.io.common import replace

    for extra in (None, "notes/todo.txt", "todo.txt", ".DS_Store"):
        base = tmp_path / (extra or "plain").replace("/", "-")
        final, temp = base / "frames", base / ".frames.partial"
        for folder in (final, temp):
            folder.mkdir(parents=True)
            (folder / "frame_000000.png").write_bytes(folder.name.encode())
        if extra is not None:
            (final / extra).parent.mkdir(exist_ok=True)
            (final / extra).write_text("important")
        kept_extra = extra is not None and extra != ".DS_Store"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            replace(temp, final, overwrite=True)
        assert (final / "frame_000000.png").read_bytes() == b".frames.partial" and not temp.exists()
        kept = [p for p in base.iterdir() if p.name.startswith("frames.old-")]
        assert len(kept) == kept_extra and len(caught) == kept_extra
        if kept_extra:
            assert (kept[0] / extra).read_text() == "important" and str(kept[0]) in str(caught[0].message)
        assert [p.name for p in base.iterdir() if p.name.startswith(".")] == []


def test_h264_output_is_the_same_bytes_on_every_encode(tmp_path):
    """x264's AVX-512 functions encoded the same frames differently now and then (io.encoders.X264_ASM):
    twenty encodes of one noisy flickering clip in one process give one file."""
    rng = np.random.default_rng(0)
    frames = [(rng.random((64, 96, 3)) * 255 * (0.8 + 0.2 * (t % 2))).astype(np.uint8) for t in range(12)]
    source = tmp_path / "in.mkv"
    with io.VideoWriter(source, io.VideoInfo(source, False, 96, 64, 12, Fraction(25), "rgb24", 8, False, None)) as w:
        for frame in frames:
            w.write(frame)
    info = io.probe(source)
    files = set()
    for k in range(20):
        out = tmp_path / f"out{k}.mp4"
        with io.VideoWriter(out, info) as writer:
            for frame in frames:
                writer.write(frame.astype(np.float32) / 255)
        files.add(out.read_bytes())
    assert len(files) == 1


def test_an_mp4_whose_edit_list_trims_its_start_is_read_as_it_plays(tmp_path):
    """A cut made without re-encoding (ffmpeg -ss ... -c copy, a phone's trim) keeps the frames before the cut
    that the first shown frame needs, and an edit list that hides them: the header counts them, decoding
    does not give them (the run failed with '6 frames decoded, 8 expected')."""
    from unflicker.pipeline import RunConfig, deflicker_file

    src = tmp_path / "trimmed.mp4"
    make_video(src, gradient_frames(8), audio=True, pts=[-167, -83, 0, 83, 167, 250, 333, 417])
    info = io.probe(src)
    assert info.frame_count == len(list(io.read_frames(src, info))) == 6
    out = tmp_path / "out.mp4"
    deflicker_file(src, out, RunConfig(method="classical", progress=False))
    with av.open(str(out)) as container:
        assert [round(float(f.pts * f.time_base), 3) for f in container.decode(video=0)] == \
            [0.0, 0.083, 0.167, 0.25, 0.333, 0.417]


def test_repeated_timestamps_go_into_mp4_and_mov_a_tick_apart(tmp_path):
    """Matroska holds two frames at one time (a recorder's repeated frame); the MP4/MOV muxer refused the
    encoder's equal timestamps at the end of the run ('writing out.mp4 failed: Invalid argument')."""
    pts = [0, 83, 83, 167, 250, 250, 333, 417]
    src = tmp_path / "repeats.mkv"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("ffv1", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, t in zip(gradient_frames(len(pts)), pts):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    for suffix in (".mp4", ".mov"):
        with pytest.warns(UserWarning, match="2 frames of repeats.mkv repeat the timestamp"):
            copy_through(src, tmp_path / f"out{suffix}")
        with av.open(str(tmp_path / f"out{suffix}")) as container:
            times = [round(float(f.pts * f.time_base), 3) for f in container.decode(video=0)]
        assert times == [0.0, 0.083, 0.084, 0.167, 0.25, 0.251, 0.333, 0.417]
    copy_through(src, tmp_path / "out.mkv")  # Matroska keeps them as they are
    with av.open(str(tmp_path / "out.mkv")) as container:
        assert [f.pts for f in container.decode(video=0)] == pts


def test_a_folder_output_of_jpeg_or_mixed_frames_keeps_every_frame_and_can_be_replaced(tmp_path):
    """JPEG and BMP frames are written as PNG: a frame named like another's PNG (f0.jpg beside f0.png) was
    written over it (6 frames in, 3 files out), and a rerun with --overwrite refused the folder it had written
    itself ('holds more than frames written for it (f0.png)')."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    frames = gradient_frames(6)
    for t, image in enumerate(frames):
        cv2.imwrite(str(folder / f"f{t // 2}.{['jpg', 'png'][t % 2]}"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    for t, image in enumerate(frames[:3]):
        cv2.imwrite(str(jpegs / f"{t}.JPG"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    for source, count in ((folder, 6), (jpegs, 3)):
        out = tmp_path / f"{source.name}_out"
        copy_through(source, out)
        assert len(list(out.iterdir())) == count
        back = io.probe(out)
        assert back.frame_count == count
        assert all(np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 4
                   for a, b in zip(io.read_frames(source), io.read_frames(out, back)))  # in the input's order
        io.check_output(source, out, overwrite=True, info=io.probe(source))
        copy_through(source, out, overwrite=True)
