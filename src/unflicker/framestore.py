"""Per-frame arrays of a whole video kept in files instead of in memory.

The neural method needs two such arrays for every frame (the low-resolution frame the atlas is
fitted on, and the rendered A_t). Held in memory they would make peak memory grow with the
video's length; here they go to disk (plain reads and writes, not a memory map, so the pages do
not count towards the process's memory) and are read back one frame or one window at a time.
A FrameStore's file has no name and is gone when the store is closed or the process ends.

Frames travel straight between the arrays and the device (Linux's O_DIRECT) where the file
system takes it (tried once per file, on one block at an offset of 512 bytes) and a frame's offset
and size are whole blocks of 512 bytes: a FrameStore's slots always are (whole pages), a
FrameFile's frames are at 1280x720, 1920x1080 and 3840x2160. Through the page cache, each written
frame would first take pages of fresh memory, which costs more than the write itself on a machine
whose memory is handed out lazily (a virtual machine: 60-170 ms for a 12 MB frame against 11 ms
direct); the frames are read back once or twice, at the device's speed. Anything else (another
system, an odd frame size) goes through the page cache as before, with the same bytes in the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from unflicker.errors import InputError

_BLOCK = 512
"""What direct I/O asks of offsets and sizes on most devices (a file on a device that asks more
fails the first try and goes through the page cache)."""
_PAGE = 4096
"""Alignment of the memory direct I/O reads into and writes from (more than any device asks)."""
_SPARES = 8
"""Scratch buffers kept (one per thread writing at once, lanes and their helpers)."""
_spare: list[mmap.mmap] = []
_spare_lock = threading.Lock()


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty(shape, dtype) whose data starts at a page boundary (a view into a larger array)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _PAGE, np.uint8)
    start = -raw.ctypes.data % _PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)


@contextmanager
def _scratch(nbytes: int) -> Iterator[memoryview]:
    """A page-aligned scratch of `nbytes` for one write, from a few kept for the process: threads
    come and go with every segment, and a new buffer would be fresh memory (see the module)."""
    with _spare_lock:
        buffer = min((b for b in _spare if len(b) >= nbytes), key=len, default=None)
        if buffer is not None:
            _spare.remove(buffer)
    if buffer is None:
        buffer = mmap.mmap(-1, max(nbytes, _PAGE), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        with memoryview(buffer) as view:
            yield view[:nbytes]
    finally:
        with _spare_lock:
            _spare.append(buffer)
            if len(_spare) > _SPARES:  # more writers at once than usual ended: the smallest goes
                _spare.remove(min(_spare, key=len))


def _aligned(offset: int, view: memoryview) -> bool:
    address = np.frombuffer(view, np.uint8).ctypes.data if len(view) else 0
    return offset % _BLOCK == 0 and len(view) % _BLOCK == 0 and address % _BLOCK == 0


class _Blocks:
    """Positional reads and writes of an open file (thread-safe): straight to the device where the
    file took a direct write (writable) or read (read-only) of one block at `probe` and a call's
    offset, size and memory are whole blocks, else through the page cache. A file's frames of whole
    blocks thus all go one way (no page of theirs is ever both cached and written direct); only an
    unexpected later refusal (EINVAL) turns the file to the page cache mid-way."""

    def __init__(self, file, writable: bool, probe: int | None, name: str):
        """name: what an OSError of a read or write names as its file (they name none of their own)."""
        self.file, self.name = file, name
        self._fd: int | None = None  # the direct descriptor, closed with the file (or when collected)
        self._closer = None
        self._direct = False
        if probe is None or not hasattr(os, "O_DIRECT") or not os.path.isdir("/proc/self/fd"):
            return
        try:
            self._fd = os.open(f"/proc/self/fd/{file.fileno()}", (os.O_RDWR if writable else os.O_RDONLY) | os.O_DIRECT)
        except OSError:  # a file system without direct I/O (tmpfs, some network file systems)
            return
        self._closer = weakref.finalize(self, os.close, self._fd)
        block = aligned_empty((_BLOCK,), np.uint8)
        block[:] = 0
        try:  # a writable file's probe writes zeros where no frame has been written yet
            done = os.pwrite(self._fd, block, probe) if writable else os.preadv(self._fd, [block], probe)
        except OSError:  # refused: the device wants larger blocks, or the file system will not
            return
        self._direct = done == _BLOCK

    def _call(self, direct: bool, op, *args) -> int:
        """op(fd, *args) on the direct descriptor if `direct` (and still allowed), else buffered. An OSError
        names the file (a full disk's error then says where: resume.no_space)."""
        try:
            if direct and self._direct:
                try:
                    return op(self._fd, *args)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._direct = False  # refused after all: the page cache from now on
            return op(self.file.fileno(), *args)
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror, self.name) from None

    def read_into(self, out: np.ndarray, offset: int, what: str) -> np.ndarray:
        """`out` (C-contiguous) filled from the file at `offset` (one copy, straight into the array);
        OSError naming `what` if the file holds fewer bytes."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        size, done = len(view), 0
        while done < size:
            part = view[done:]
            got = self._call(_aligned(offset + done, part), os.preadv, [part], offset + done)
            if got == 0:
                raise OSError(f"short read from {what}: {done} of {size} bytes")
            done += got
        return out

    def write(self, frame: np.ndarray, dtype: np.dtype, offset: int, slot: int = 0) -> None:
        """`frame` as `dtype` written at `offset`. Direct: converted into an aligned
        scratch and written as `slot` bytes if that is more (the rest is padding); else from the
        array's own memory, its own bytes."""
        nbytes = int(np.prod(frame.shape)) * dtype.itemsize
        size = max(nbytes, slot)
        if self._direct and offset % _BLOCK == 0 and size % _BLOCK == 0:
            with _scratch(size) as data:
                np.copyto(np.frombuffer(data[:nbytes], dtype).reshape(frame.shape), frame, casting="unsafe")
                self._write_all(data, offset)
        else:
            self._write_all(memoryview(np.ascontiguousarray(frame, dtype=dtype).reshape(-1).view(np.uint8)), offset)

    def _write_all(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            part = data[done:]
            done += self._call(_aligned(offset + done, part), os.pwrite, part, offset + done)

    def close(self) -> None:
        self._fd, self._direct = None, False
        if self._closer is not None:
            self._closer()  # closes the descriptor once, however often close() is called
        self.file.close()


class FrameStore:
    """A growable (T, *frame_shape) array of one dtype on disk; index like an array (ints, slices).
    Each frame has a slot of whole pages in the file (direct I/O, see the module)."""

    def __init__(self, frame_shape: tuple[int, ...], dtype=np.float16, directory: str | None = None):
        self.frame_shape, self.dtype = tuple(int(s) for s in frame_shape), np.dtype(dtype)
        if not self.frame_shape or min(self.frame_shape) < 1:
            raise InputError(f"frame shape must be non-empty and positive, got {self.frame_shape}")
        self._frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self._slot = -(-self._frame_bytes // _PAGE) * _PAGE
        # An unnamed file: its errors name the folder it is in.
        self._io = _Blocks(tempfile.TemporaryFile(dir=directory), writable=True, probe=_BLOCK,
                           name=directory or tempfile.gettempdir())
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
        if t == self._length:  # the file grows by whole slots (a hole until written): full slots read back
            os.ftruncate(self._io.file.fileno(), (t + 1) * self._slot)
        self._io.write(frame, self.dtype, t * self._slot, self._slot)
        self._length = max(self._length, t + 1)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        """Frame t as an array, or frames[a:b] stacked (a copy either way)."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                raise IndexError("FrameStore slices take no step")
            count = max(0, stop - start)
            slots = aligned_empty((count, self._slot), np.uint8)
            self._io.read_into(slots, start * self._slot, "the frame store")
            return np.ascontiguousarray(slots[:, : self._frame_bytes]).view(self.dtype).reshape(count, *self.frame_shape)
        t = int(index) + (self._length if int(index) < 0 else 0)
        if not 0 <= t < self._length:
            raise IndexError(f"frame {index} outside [0, {self._length})")
        slot = self._io.read_into(aligned_empty((self._slot,), np.uint8), t * self._slot, "the frame store")
        return slot[: self._frame_bytes].view(self.dtype).reshape(self.frame_shape)

    def close(self) -> None:
        self._io.close()

    def __del__(self) -> None:
        io = getattr(self, "_io", None)
        if io is not None:
            io.close()


def _npy_header(file) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from the header of the .npy file `file` (open at its start; left at its data)."""
    version = np.lib.format.read_magic(file)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(file)


def npy_whole(path: str | os.PathLike) -> bool:
    """Whether `path` is a readable .npy file holding all the bytes its header promises (not cut short)."""
    try:
        with open(path, "rb") as file:
            shape, _, dtype = _npy_header(file)
            return os.fstat(file.fileno()).st_size == file.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError, TypeError, SyntaxError):
        return False


class FrameFile:
    """A (T, *frame_shape) array in a named .npy file, read and written one frame at a time.

    The segments' spilled frames and their results live in such files (the work folder). Like
    FrameStore it uses plain reads and writes: a memory map's touched pages would count towards the
    process's memory, up to a whole segment of full-resolution frames (gigabytes at 4K). Any .npy
    file (C order) opens; np.load reads one whole. A file made here has its frames from byte 4096
    on (the header padded), so frames of whole blocks go direct (see the module).
    """

    def __init__(self, file, shape: tuple[int, ...], dtype: np.dtype, offset: int, writable: bool = False):
        self.shape, self.dtype, self._offset = tuple(shape), np.dtype(dtype), offset
        self._frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        # The direct try: a new file writes a block of zeros into frame 0's place (not written yet; the
        # data must hold it), an existing one reads a block of its header's page (the header must hold it).
        if writable:
            probe = offset + _BLOCK if int(np.prod(self.shape)) * self.dtype.itemsize >= 2 * _BLOCK else None
        else:
            probe = _BLOCK if offset > _BLOCK else None
        self._io, self._name = _Blocks(file, writable, probe, file.name), file.name

    @classmethod
    def create(cls, path: str | os.PathLike, shape: tuple[int, ...], dtype) -> FrameFile:
        """A new file of `shape` (frames not yet written read as zeros)."""
        dtype = np.dtype(dtype)
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                       "shape": tuple(int(s) for s in shape)}).encode("latin1")
        magic = np.lib.format.magic(2, 0)
        pad = _PAGE - len(magic) - 4 - len(header) - 1  # format 2.0: magic, 4-byte length, header, newline
        if pad < 0:
            raise InputError(f"array header too long: shape {shape}")
        header += b" " * pad + b"\n"
        file = open(path, "w+b")
        try:
            file.write(magic + len(header).to_bytes(4, "little") + header)
            file.flush()
            offset = file.tell()
            file.truncate(offset + int(np.prod(shape)) * dtype.itemsize)
        except OSError as exc:  # a full disk: the error names the file, as a frame's write does
            try:
                file.close()
            except OSError:
                pass  # the same error again, flushing what could not be written
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        return cls(file, shape, dtype, offset, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike) -> FrameFile:
        """An existing .npy file, for reading."""
        file = open(path, "rb")
        shape, fortran, dtype = _npy_header(file)
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
        return self._io.read_into(aligned_empty(self.shape[1:], self.dtype), self._position(t), self._name)

    def __setitem__(self, t: int, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.shape != self.shape[1:]:
            raise InputError(f"expected a frame of shape {self.shape[1:]}, got {frame.shape}")
        self._io.write(frame, self.dtype, self._position(t))

    def close(self) -> None:
        """Close (every write has reached the file system: a written file is complete once closed)."""
        self._io.close()

    def __enter__(self) -> FrameFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
