"""Per-frame arrays of a whole video kept in an anonymous temporary file instead of in memory.

The neural method needs two such arrays for every frame (the low-resolution frame the atlas is
fitted on, and the rendered A_t). Held in memory they would make peak memory grow with the
video's length; here they go to disk (plain reads and writes, not a memory map, so the pages do
not count towards the process's memory) and are read back one frame or one window at a time.
The file has no name and is gone when the store is closed or the process ends.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from unflicker.errors import InputError


def _read_into(file, out: np.ndarray, offset: int, what: str) -> np.ndarray:
    """`out` (C-contiguous) filled from `file` at `offset` with a plain read (no memory map, one copy:
    straight into the array); OSError naming `what` if the file holds fewer bytes."""
    size, done = out.nbytes, 0
    view = memoryview(out.reshape(-1).view(np.uint8))
    while done < size:
        got = os.preadv(file.fileno(), [view[done:]], offset + done)
        if got == 0:
            raise OSError(f"short read from {what}: {done} of {size} bytes")
        done += got
    return out


def _write_from(file, frame: np.ndarray, dtype: np.dtype, offset: int) -> None:
    """`frame` as `dtype` written to `file` at `offset`, straight from the array's memory."""
    data = memoryview(np.ascontiguousarray(frame, dtype=dtype).reshape(-1).view(np.uint8))
    done = 0
    while done < len(data):
        done += os.pwrite(file.fileno(), data[done:], offset + done)


class FrameStore:
    """A growable (T, *frame_shape) array of one dtype on disk; index like an array (ints, slices)."""

    def __init__(self, frame_shape: tuple[int, ...], dtype=np.float16, directory: str | None = None):
        self.frame_shape, self.dtype = tuple(int(s) for s in frame_shape), np.dtype(dtype)
        if not self.frame_shape or min(self.frame_shape) < 1:
            raise InputError(f"frame shape must be non-empty and positive, got {self.frame_shape}")
        self._frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self._file = tempfile.TemporaryFile(dir=directory)
        self._length = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self.frame_shape)

    def __len__(self) -> int:
        return self._length

    def append(self, frame: np.ndarray) -> None:
        self[self._length] = frame

    def __setitem__(self, t: int, frame: np.ndarray) -> None:
        """Write frame t (t may be the current length, which appends)."""
        if not 0 <= t <= self._length:
            raise IndexError(f"frame {t} outside [0, {self._length}]")
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise InputError(f"expected a frame of shape {self.frame_shape}, got {frame.shape}")
        _write_from(self._file, frame, self.dtype, t * self._frame_bytes)
        self._length = max(self._length, t + 1)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        """Frame t as an array, or frames[a:b] stacked (a copy either way)."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                raise IndexError("FrameStore slices take no step")
            count = max(0, stop - start)
            return self._read(start, (count, *self.frame_shape))
        t = int(index) + (self._length if int(index) < 0 else 0)
        if not 0 <= t < self._length:
            raise IndexError(f"frame {index} outside [0, {self._length})")
        return self._read(t, self.frame_shape)

    def _read(self, start: int, shape: tuple[int, ...]) -> np.ndarray:
        return _read_into(self._file, np.empty(shape, self.dtype), start * self._frame_bytes, "the frame store")

    def close(self) -> None:
        self._file.close()

    def __del__(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


class FrameFile:
    """A (T, *frame_shape) array in a named .npy file, read and written one frame at a time.

    The segments' spilled frames and their results live in such files (the work folder). Like
    FrameStore it uses plain reads and writes: a memory map's touched pages would count towards the
    process's memory, up to a whole segment of full-resolution frames (gigabytes at 4K). Any .npy
    file (C order) opens; np.load reads one whole.
    """

    def __init__(self, file, shape: tuple[int, ...], dtype: np.dtype, offset: int):
        self._file, self.shape, self.dtype, self._offset = file, tuple(shape), np.dtype(dtype), offset
        self._frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    @classmethod
    def create(cls, path: str | os.PathLike, shape: tuple[int, ...], dtype) -> FrameFile:
        """A new file of `shape` (frames not yet written read as zeros)."""
        dtype = np.dtype(dtype)
        file = open(path, "w+b")
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": tuple(int(s) for s in shape)}
        np.lib.format.write_array_header_2_0(file, header)
        offset = file.tell()
        file.truncate(offset + int(np.prod(shape)) * dtype.itemsize)
        return cls(file, shape, dtype, offset)

    @classmethod
    def open(cls, path: str | os.PathLike) -> FrameFile:
        """An existing .npy file, for reading."""
        file = open(path, "rb")
        version = np.lib.format.read_magic(file)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(file)
        if fortran or len(shape) < 1:
            file.close()
            raise InputError(f"{path}: not a C-order array of frames")
        return cls(file, shape, dtype, file.tell())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _position(self, t: int) -> int:
        t = int(t)
        if not 0 <= t < self.shape[0]:
            raise IndexError(f"frame {t} outside [0, {self.shape[0]})")
        return self._offset + t * self._frame_bytes

    def __getitem__(self, t: int) -> np.ndarray:
        return _read_into(self._file, np.empty(self.shape[1:], self.dtype), self._position(t), self._file.name)

    def __setitem__(self, t: int, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.shape != self.shape[1:]:
            raise InputError(f"expected a frame of shape {self.shape[1:]}, got {frame.shape}")
        _write_from(self._file, frame, self.dtype, self._position(t))

    def close(self) -> None:
        """Close (every write has reached the file system: a written file is complete once closed)."""
        self._file.close()

    def __enter__(self) -> FrameFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
