"""Atomic writing of a video or frame folder that keeps what the source carried (see io.encoders)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import numpy as np

from unflicker.errors import OutputError, warn
from unflicker.io.common import (DEFAULT_CRF, FULL, X264_PRESET, free_text, from_float, make_held, replace, size_text,
                                 sweep_partials, to_depth)
from unflicker.io.encoders import encoder_refused, is_folder_output, mov_language, plan_output
from unflicker.io.images import frame_file_names, write_image
from unflicker.io.media import VideoInfo, scale_u16, sws_white


WRITE_FULL_RANGE = av.video.reformatter.Interpolation.BILINEAR | av.video.reformatter.Interpolation.ACCURATE_RND
"""swscale's scaler for RGB -> full-range YUV on writing (see VideoWriter._video_frame)."""


class VideoWriter:
    """Write frames to a video or folder under a temporary name; `close()` renames it into place.

    Keeps the source's resolution, timestamps (so variable frame rate survives), bit depth,
    rotation, sample aspect ratio, colour and HDR tags, container metadata and chapters, and copies
    every audio and subtitle stream packet by packet. `codec` ('h264', 'hevc', 'prores', 'ffv1')
    and `bit_depth` override the defaults of io.encoders. Use as a context manager: an exception
    discards the partial output and leaves any existing file untouched.
    """

    def __init__(self, path: str | os.PathLike, source: VideoInfo, crf: int = DEFAULT_CRF, overwrite: bool = False,
                 codec: str | None = None, bit_depth: int | None = None, comment: str | None = None):
        """comment: a short text stored as a video container's `comment` tag (e.g. the settings
        that made the output); folders hold frames only."""
        self.path = Path(path)
        if self.path.is_symlink():
            # A link to the output (a folder or file kept elsewhere) stays a link: its target is written and
            # replaced, beside which the partial output is made (the same file system, so the swap is a rename).
            self.path = self.path.resolve()
        self.to_folder = is_folder_output(self.path)
        self.comment = comment
        self.source = source
        self.crf = crf
        self.overwrite = overwrite
        self.plan = plan_output(self.path, source, codec, bit_depth)
        self.count = 0
        self._last_pts: int | None = None
        self._moved = 0  # frames whose timestamp repeated (or went back before) the one before: moved on a tick
        self._temp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}{self.path.suffix}")
        self._container = None
        self._copier = None
        self._files: dict[str, str] | None = None  # a frame folder's names -> the files written (see frame_file_names)
        sweep_partials(self.path)  # a killed run's partial output of the same name
        self._lock = make_held(self._temp, folder=self.to_folder)  # a video's file: the muxer writes it later
        if not self.to_folder:
            try:
                self._open_video()
            except BaseException:
                self._temp.unlink(missing_ok=True)
                self._release()
                raise

    def _open_video(self) -> None:
        plan, src = self.plan, self.source
        # bitexact: no random stream ids (Matroska) nor library version in the file: the same frames and settings
        # give the same bytes on every run and machine.
        self._container = av.open(str(self._temp), mode="w", format=plan.container, options={"fflags": "+bitexact"})
        for key, value in src.metadata:
            self._container.metadata[key] = value
        if self.comment is not None:
            self._container.metadata["comment"] = self.comment
        self._stream = self._container.add_stream(plan.codec, rate=src.fps)
        self._stream.width, self._stream.height = src.width, src.height
        if src.time_base is not None:
            # Encoder and stream both tick in the source's time base, so its timestamps survive.
            self._stream.codec_context.time_base = src.time_base
            self._stream.time_base = src.time_base
        self._stream.pix_fmt = plan.pix_fmt
        options = dict(plan.options)
        if plan.codec in ("libx264", "libx265"):
            options.update(crf=str(self.crf), preset=X264_PRESET)
        self._stream.options = options
        ctx = self._stream.codec_context
        ctx.color_primaries, ctx.color_trc = plan.color_primaries, plan.color_trc
        ctx.colorspace, ctx.color_range = plan.colorspace, plan.color_range
        if src.sample_aspect_ratio not in (None, 1):
            ctx.sample_aspect_ratio = src.sample_aspect_ratio
        try:  # opened now, not at the first frame: a size or format the encoder refuses fails before any work
            ctx.open()
        except av.error.FFmpegError as exc:
            self._container.close()
            self._container = None
            self._temp.unlink(missing_ok=True)
            raise encoder_refused(plan, src, self.path, exc) from None
        if src.display_matrix is not None:
            self._stream.set_display_matrix(src.display_matrix)
        elif src.rotation:
            self._stream.set_display_rotation(src.rotation)
        if src.timecode:
            self._stream.metadata["timecode"] = src.timecode
        if not src.is_folder:
            if src.chapters or (src.data_streams and plan.container == "matroska"):
                with av.open(str(src.path)) as original:
                    self._container.set_chapters(original.chapters())
                    if plan.container == "matroska":
                        for stream in original.streams.attachments:
                            self._container.add_attachment(stream.name or "attachment", stream.mimetype or
                                                           "application/octet-stream", stream.data)
            if src.audio_streams or src.subtitle_streams:
                self._copier = _StreamCopier(src.path, self._container)

    def write(self, image: np.ndarray, pts: int | None = None, name: str | None = None,
              alpha: np.ndarray | None = None) -> None:
        """Append one frame: (H, W, 3) RGB, uint8/uint16 or float in [0, 1].

        alpha: optional (H, W) alpha (uint8/uint16 or float in [0, 1]), kept where the output holds it.
        """
        self.put(self.prepare(image, pts, name, alpha))

    def prepare(self, image: np.ndarray, pts: int | None = None, name: str | None = None,
                alpha: np.ndarray | None = None) -> tuple:
        """`write`'s first half: the frame converted for the encoder (samples, colour, alpha). It
        changes nothing in the writer, so the next frame's can run while `put` encodes this one."""
        if image.shape != (self.source.height, self.source.width, 3):
            raise ValueError(f"frame shape {image.shape} != source {(self.source.height, self.source.width, 3)}")
        if self.to_folder:
            return image, pts, name, alpha
        return self._video_frame(image, alpha), pts, name, None

    def put(self, prepared: tuple) -> None:
        """`write`'s second half: append a frame `prepare` made (frames in the order they are shown)."""
        image, pts, name, alpha = prepared
        if self.to_folder:
            self._write_image(image, name, alpha)
        else:
            self._encode(image, pts)
        self.count += 1

    def _write_image(self, image: np.ndarray, name: str | None, alpha: np.ndarray | None) -> None:
        if self._files is None:
            self._files = frame_file_names(self.source.frame_names, self.source.is_folder)
        file = (self._files.get(name) or frame_file_names([name], self.source.is_folder)[name]) if name else \
            f"frame_{self.count:06d}.png"
        folder = self.source.is_folder
        try:
            write_image(self._temp / file, image, alpha if self.plan.keeps_alpha else None,
                        self.plan.bits, self.source.grayscale, self.source.pixel_format if folder else "",
                        self.source.path / name if folder and name else None)
        except OSError as exc:
            raise self._failed(exc) from None

    def _video_frame(self, image: np.ndarray, alpha: np.ndarray | None) -> av.VideoFrame:
        plan = self.plan
        depth = 16 if plan.bits > 8 else 8
        data = from_float(image, depth) if image.dtype.kind == "f" else to_depth(image, depth)
        # swscale takes 65535 for a little more than white in deep formats: handed over at its white (sws_white).
        white, opaque = sws_white(plan.pix_fmt, plan.matrix, plan.color_range if plan.is_yuv else 0) \
            if depth == 16 else (65535, 65535)
        if white != 65535:
            data = scale_u16(data, white / 65535)
        if plan.keeps_alpha:
            if alpha is None:
                alpha = np.full(data.shape[:2], np.iinfo(data.dtype).max, data.dtype)
            alpha = from_float(alpha, depth) if alpha.dtype.kind == "f" else to_depth(alpha, depth)
            data = np.dstack([data, scale_u16(alpha, opaque / 65535) if opaque != 65535 else alpha])
        if depth == 16 and not plan.keeps_alpha and plan.pix_fmt.startswith("gray"):
            # swscale's 48-bit RGB -> 16-bit grey stretches the values by about 0.4 % (FFmpeg 8.1): the luma
            # (BT.601 weights, as its 8-bit path; equal channels stay as they are) is handed over as grey.
            luma = data.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(np.rint(luma), 0, 65535).astype(np.uint16), format="gray16le")
            return frame if plan.pix_fmt == "gray16le" else frame.reformat(format=plan.pix_fmt)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(data), format=plan.frame_layout)
        if plan.is_yuv:
            # Full range: swscale's default path puts 8-bit 4:2:0 grey at chroma 127 (a green cast); accurate
            # rounding puts it at 128.
            exact = {"interpolation": WRITE_FULL_RANGE} if plan.color_range == 2 else {}
            frame = frame.reformat(format=plan.pix_fmt, dst_colorspace=plan.matrix,
                                   dst_color_range=plan.color_range or 1, **exact)  # untagged: limited, as read
        elif plan.pix_fmt != plan.frame_layout:
            frame = frame.reformat(format=plan.pix_fmt)
        return frame

    def _encode(self, frame: av.VideoFrame, pts: int | None) -> None:
        if pts is not None and self.source.time_base is not None:
            if self._last_pts is not None and pts <= self._last_pts and self.plan.container != "matroska":
                # MP4/MOV take increasing timestamps only (a repeat failed the muxer at the end, after the work).
                pts, self._moved = self._last_pts + 1, self._moved + 1
            frame.pts = self._last_pts = pts
            frame.time_base = self.source.time_base
        else:
            frame.pts = self.count
            frame.time_base = 1 / self.source.fps
        try:
            packets = self._stream.encode(frame)
        except av.error.FFmpegError as exc:
            raise self._failed(exc, "encoding") from None
        for packet in packets:
            self._mux(packet)

    def _failed(self, exc: av.error.FFmpegError | OSError, doing: str = "writing") -> OutputError:
        """The one-line error of a failed encode or write (the disk full: where, and how far the output got)."""
        if exc.errno in FULL:
            try:
                files = self._temp.iterdir() if self._temp.is_dir() else [self._temp]
                size = f"{size_text(sum(path.stat().st_size for path in files))} of it written, "
            except OSError:
                size = ""
            return OutputError(f"{doing} {self.path.name} failed: no space left on device in {self.path.parent} "
                               f"({size}{free_text(self.path.parent)})")
        return OutputError(f"{doing} {self.path.name} failed: {exc.strerror or exc}")

    def _mux(self, packet) -> None:
        try:
            if self._copier is not None and packet.pts is not None:
                self._copier.copy_until(float(packet.pts * packet.time_base))
            self._container.mux(packet)
        except av.error.FFmpegError as exc:
            raise self._failed(exc) from None

    def close(self) -> Path:
        """Flush, then move the finished output into place (replacing it only if allowed)."""
        if self._container is not None:
            try:  # the encoder's last packets, the copied streams' rest and the trailer: a full disk shows here
                for packet in self._stream.encode(None):
                    self._mux(packet)
                if self._copier is not None:
                    self._copier.copy_until(float("inf"))
                    self._copier.close()
                    self._copier = None
                self._container.close()
                self._container = None
                if self._moved:
                    tick = self.source.time_base
                    warn(f"{self._moved} frame{'s' if self._moved > 1 else ''} of {self.source.path.name} repeat the "
                         f"timestamp of the one before (or go back): written {float(tick) * 1e3:.3g} ms (a tick) "
                         f"after it, as {self.path.suffix} holds increasing timestamps only; .mkv keeps them")
            except OutputError:  # from _mux
                self.abort()
                raise
            except av.error.FFmpegError as exc:
                self.abort()
                raise self._failed(exc) from None
        if self.count == 0:
            self.abort()
            raise OutputError("no frames were written")
        try:
            replace(self._temp, self.path, self.overwrite)
        finally:
            self._release()
        return self.path

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def abort(self) -> None:
        """Discard the partial output."""
        if self._container is not None:
            try:
                if self._copier is not None:
                    self._copier.close()
                self._container.close()
            except av.error.FFmpegError:  # what failed a write fails its close too: the file goes anyway
                pass
            self._copier = self._container = None
        if self._temp.is_dir():
            shutil.rmtree(self._temp, ignore_errors=True)
        elif self._temp.exists():
            self._temp.unlink()
        self._release()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _StreamCopier:
    """Copies every audio stream and every subtitle stream the output container holds, packet by
    packet, interleaved by time with the video; stream metadata (language, title) and dispositions kept."""

    def __init__(self, source_path: Path, output_container):
        self._input = av.open(str(source_path))
        supported = set(output_container.supported_codecs)
        self._map = {}
        for in_stream in [*self._input.streams.audio, *self._input.streams.subtitles]:
            if in_stream.type == "subtitle" and in_stream.codec.canonical_name not in supported:
                continue  # named in check_output's warning
            try:
                out = output_container.add_stream_from_template(in_stream)
            except (ValueError, av.error.FFmpegError) as exc:
                self._input.close()
                raise OutputError(f"cannot copy the {in_stream.codec_context.name} {in_stream.type} into "
                                  f"{output_container.format.name}: {exc}; choose .mkv to keep it") from None
            for key, value in in_stream.metadata.items():
                if key.lower() == "language" and output_container.format.name == "mov":
                    value = mov_language(value) or value  # the form QuickTime's codes hold ('deu' was dropped)
                if key.lower() not in ("duration", "encoder", "creation_time"):
                    out.metadata[key] = value
            out.disposition = in_stream.disposition
            self._map[in_stream.index] = out
        self._output = output_container
        streams = [s for s in self._input.streams if s.index in self._map]
        self._packets = (p for p in self._input.demux(streams) if p.dts is not None or p.pts is not None) \
            if streams else iter(())
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
            packet.stream = self._map[packet.stream.index]
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()
