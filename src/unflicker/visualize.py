"""Pictures of a result: a side-by-side (input | output) video and a brightness-over-time plot."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from unflicker import bars, io
from unflicker.errors import OutputError

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# RGB colours of the R, G, B panels: the output in full colour, the input in a pale tint of it.
_CHANNELS = (("red", (200, 30, 30)), ("green", (20, 140, 40)), ("blue", (30, 70, 210)))


def _label(image: np.ndarray, text: str) -> np.ndarray:
    scale = max(image.shape[0] / 720, 0.35)
    thickness = max(int(round(2 * scale)), 1)
    origin = (int(10 * scale) + 2, int(30 * scale) + 4)
    image = image.copy()
    cv2.putText(image, text, origin, _FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, origin, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def write_side_by_side(left: str | Path, right: str | Path, output: str | Path, labels=("input", "output"),
                       overwrite: bool = False, progress: bool = False, fps=None) -> Path:
    """Write a video of `left | right` frames (same size and count), keeping the left one's timing.

    left, right: videos or frame folders of the same frame size. The output is written atomically
    (a video by extension, else a folder of PNG frames), 8-bit and of even height (an odd one gets its
    last row twice: 4:2:0 H.264 plays in browsers, 4:4:4 does not); progress shows a bar on stderr.
    fps: the frame rate of a `left` folder of frames cut from a video (a folder holds none; default: the
    left one's own rate).
    """
    info_left, info_right = io.probe(left), io.probe(right)
    if (info_left.width, info_left.height) != (info_right.width, info_right.height):
        raise OutputError(f"cannot put {info_left.width}x{info_left.height} beside "
                          f"{info_right.width}x{info_right.height}")
    io.check_output(left, output, overwrite)
    # Both are turned upright by the left one's display rotation (counter-clockwise; a right-hand folder of frames
    # holds them as stored): the canvas carries none, as two frames turned side by side would end up stacked.
    turns = round(info_left.rotation / 90) % 4
    width, height = (info_left.height, info_left.width) if turns % 2 else (info_left.width, info_left.height)
    # The canvas is a synthetic "source": twice as wide, the left input's rate and timestamps, no audio. An odd
    # height gets one more row (the last repeated): a picture to look at, so 8-bit 4:2:0, which browsers and
    # players play (H.264 keeps an odd size only as 4:4:4, which most of them do not).
    count = min(info_left.frame_count, info_right.frame_count)
    pad = height % 2
    canvas = io.VideoInfo(Path(output), False, 2 * width, height + pad, count, fps or info_left.fps,
                          "rgb24", 8, False, info_left.time_base)
    with io.VideoWriter(output, canvas, overwrite=overwrite) as writer, \
            bars.bar(total=count, desc="compare", unit="frame", disable=not progress, leave=False) as bar:
        for a, b in zip(io.read_frames(left, info_left), io.read_frames(right, info_right)):
            pair = [_label(io.from_float(io.to_float(np.rot90(f.image, turns))), text)
                    for f, text in ((a, labels[0]), (b, labels[1]))]
            side = np.concatenate(pair, axis=1)
            writer.write(np.concatenate([side, side[-1:]]) if pad else side, a.pts)
            bar.update()
    return Path(output)


def _nice_step(span: float, ticks: int) -> float:
    """A 1, 2 or 5 times a power of ten step giving about `ticks` intervals over span."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _pale(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + 0.6 * (255 - c)) for c in colour)


def brightness_plot(before: np.ndarray, after: np.ndarray, title: str = "", size: tuple[int, int] = (600, 960)
                    ) -> np.ndarray:
    """Mean brightness per channel over time, input vs output, as an (H, W, 3) uint8 RGB image.

    before, after: (T, 3) per-frame channel means in [0, 1] of the input and the output. One
    panel per channel, all on the same scale (8-bit grey levels); the input is drawn thin and
    pale, the output thick. size: (height, width) of the picture.
    """
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.ndim != 2 or before.shape[1] != 3 or before.shape != after.shape or len(before) == 0:
        raise ValueError(f"need two (T, 3) arrays of channel means, got {before.shape} and {after.shape}")
    height, width = size
    image = np.full((height, width, 3), 255, np.uint8)
    top, bottom, left, right, gap = 50, 30, 60, 20, 12
    panel_h = (height - top - bottom - 2 * gap) // 3
    values = np.concatenate([before, after]) * 255
    low, high = float(values.min()), float(values.max())
    pad = max(0.05 * (high - low), 1.0)
    low, high = max(low - pad, 0.0), min(high + pad, 255.0)
    if high - low < 2:
        low, high = max(low - 1, 0.0), min(high + 1, 255.0)
    n = len(before)
    x_span = max(n - 1, 1)

    def to_x(t: np.ndarray) -> np.ndarray:
        return left + t * (width - left - right) / x_span

    cv2.putText(image, title or "mean brightness per channel", (left, 22), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    legend_x = left
    for text, colour, thickness in (("input", _pale((90, 90, 90)), 1), ("output", (40, 40, 40), 3)):
        cv2.line(image, (legend_x, 38), (legend_x + 28, 38), colour, thickness, cv2.LINE_AA)
        cv2.putText(image, text, (legend_x + 34, 43), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        legend_x += 110
    y_step = _nice_step(high - low, 4)
    x_step = max(1, int(_nice_step(x_span, 8)))
    for k, (name, colour) in enumerate(_CHANNELS):
        y0 = top + k * (panel_h + gap)

        def to_y(v: np.ndarray, y0: int = y0) -> np.ndarray:
            return y0 + panel_h - (v - low) * panel_h / (high - low)

        cv2.rectangle(image, (left, y0), (width - right, y0 + panel_h), (120, 120, 120), 1)
        for level in np.arange(math.ceil(low / y_step) * y_step, high + 1e-9, y_step):
            y = int(round(float(to_y(level))))
            cv2.line(image, (left + 1, y), (width - right - 1, y), (225, 225, 225), 1)
            cv2.putText(image, f"{level:g}", (4, y + 4), _FONT, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
        cv2.putText(image, name, (left + 6, y0 + 16), _FONT, 0.45, colour, 1, cv2.LINE_AA)
        for series, tint, thickness in ((before, _pale(colour), 1), (after, colour, 2)):
            points = np.stack([to_x(np.arange(n)), to_y(series[:, k] * 255)], axis=1)
            points = np.round(points).astype(np.int32)
            if n == 1:
                cv2.circle(image, tuple(int(v) for v in points[0]), 3, tint, -1, cv2.LINE_AA)
            else:
                cv2.polylines(image, [points.reshape(-1, 1, 2)], False, tint, thickness, cv2.LINE_AA)
    axis_y = top + 3 * panel_h + 2 * gap
    for t in range(0, n, x_step):
        x = int(round(float(to_x(np.float64(t)))))
        cv2.line(image, (x, axis_y), (x, axis_y + 4), (60, 60, 60), 1)
        cv2.putText(image, str(t), (x - 6, axis_y + 17), _FONT, 0.35, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(image, "frame", (width - right - 40, height - 4), _FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    return image


def write_brightness_plot(before: np.ndarray, after: np.ndarray, path: str | Path, title: str = "",
                          overwrite: bool = False) -> Path:
    """Write `brightness_plot(before, after, title)` to a PNG file, atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(brightness_plot(before, after, title), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"cannot encode the plot for {path}")
    return io.write_file_atomically(path, data.tobytes(), overwrite)
