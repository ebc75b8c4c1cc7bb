"""Sample conversions, natural sort and atomic replacement shared by the reader and the writers."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

from unflicker.errors import OutputError, warn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dpx", ".exr")
SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
"""What file browsers leave in a folder they showed (never content of a frame folder)."""
# H.264 output: x264's "veryfast" at CRF 16 encodes 854x480 frames 2.7 times as fast as "medium" at
# CRF 18 (12 against 34 ms a frame on goat) at the same fidelity (35.45 against 35.28 dB through
# 4:2:0), for files about 20 % larger.
X264_PRESET = "veryfast"
DEFAULT_CRF = 16

# extension -> (container format, codec for 8-bit sources without alpha); see io.encoders for
# deeper sources. A path with no extension is a folder of frames.
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "ffv1"),
}
DEFAULT_FOLDER_FPS = Fraction(25)
_BAND_VALUES = 1 << 16  # float32 values of from_float's row bands (256 KB)


FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errors of a full disk (or a user's quota used up)."""


def check_writable(folder: Path, role: str = "output folder") -> None:
    """Create and remove a file in `folder`: permissions, read-only mounts and pseudo file systems
    (os.access says yes to root everywhere) fail here, before any work, not at the output's first write."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".unflicker-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write in {role} {folder}: {exc.strerror or exc}") from None
    os.close(handle)
    os.unlink(probe)


def writable_folder(folder: Path, role: str) -> None:
    """Make `folder` (and its parents) where it is missing, and check that files can be written in it: a file in
    its place, a folder that cannot be made and a read-only disk are each one line naming `role`."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{role} {folder} is a file: give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only disk, no permission, a file on the way
        raise OutputError(f"cannot make {role} {folder}: {exc.strerror or exc}") from None
    check_writable(folder, role)  # an existing one on a read-only disk


def size_text(n: int) -> str:
    """A byte count for people: 1.2 GB, 340.0 MB, 12.5 kB, 80 bytes."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def free_text(folder: Path) -> str:
    """'N free': what the disk of `folder` has free now (for a full disk's error)."""
    try:
        return f"{size_text(shutil.disk_usage(folder).free)} free"
    except OSError:
        return "free space unknown"


def natural_key(name: str) -> list:
    """Sort key that puts 2.png before 10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 (H, W, C) -> float32 in [0, 1]."""
    # One pass (cast and scale fused, one array made): the same values as astype, then multiply.
    if image.dtype == np.uint8:
        return np.multiply(image, np.float32(1.0 / 255.0), dtype=np.float32)
    if image.dtype == np.uint16:
        return np.multiply(image, np.float32(1.0 / 65535.0), dtype=np.float32)
    return np.asarray(image, dtype=np.float32)


def file_sha256(*paths: Path) -> str:
    """SHA-256 of the files' bytes, one after the other, read in 1 MB blocks (OSError as open/read raise it)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def from_float(image: np.ndarray, bit_depth: int = 8, out: np.ndarray | None = None) -> np.ndarray:
    """float in [0, 1] -> uint8 (bit_depth 8) or uint16 (bit_depth 16), rounded and clipped; written
    into `out` (same shape, that dtype) when given, else into a new array. float16 is scaled in float32
    (the formula in float16 overflows at 16 bits)."""
    if image.dtype in (np.uint8, np.uint16):
        if out is None:
            return image
        out[...] = image
        return out
    top, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    if out is None:
        out = np.empty(image.shape, dtype)
    elif out.shape != image.shape or out.dtype != dtype:
        raise ValueError(f"from_float: out is {out.dtype} {out.shape}, expected {np.dtype(dtype)} {image.shape}")
    # Row bands of about 256 KB of float32: the band's scaled copy stays in a core's cache between
    # its steps and the result goes straight to `out` (2x faster at 1080p than whole-image steps).
    # The same values as np.clip(image * top + 0.5, 0, top).astype(dtype).
    height = image.shape[0] if image.ndim > 1 else 1
    per_row = image.size // max(1, height)
    rows = max(1, _BAND_VALUES // max(1, per_row))
    source, target = (image, out) if image.ndim > 1 else (image[None], out[None])
    scratch = np.empty((min(rows, height), *source.shape[1:]), np.result_type(image.dtype, np.float32))
    for y in range(0, height, rows):
        band = scratch[:min(rows, height - y)]
        np.multiply(source[y:y + rows], top, out=band)
        band += 0.5
        np.clip(band, 0, top, out=band)
        target[y:y + rows] = band  # truncated towards zero, as astype does
    return out


def to_depth(channel: np.ndarray, depth: int) -> np.ndarray:
    """A channel or image (uint8, uint16 or float in [0, 1]) at `depth` (8 or 16) bits, values rescaled."""
    if channel.dtype == np.uint8 and depth == 16:
        return channel.astype(np.uint16) * 257
    if channel.dtype == np.uint16 and depth == 8:
        return ((channel.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return from_float(channel, depth)


def widen(values: np.ndarray, bits: int) -> np.ndarray:
    """`bits`-bit integer samples (e.g. 10-bit DPX code values) -> uint16 spanning 0..65535, rounded."""
    if bits == 16:
        return values.astype(np.uint16)
    top = (1 << bits) - 1
    return ((values.astype(np.uint32) * 65535 + top // 2) // top).astype(np.uint16)


def narrow(values: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of `widen`: uint16 0..65535 -> `bits`-bit integers in uint16, rounded (exact round trip)."""
    if bits == 16:
        return values.astype(np.uint16)
    top = (1 << bits) - 1
    return ((values.astype(np.uint32) * top + 32767) // 65535).astype(np.uint16)


def write_file_atomically(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write `data` to `path` under a temporary name, then rename it into place."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}{path.suffix}")
    try:
        temp.write_bytes(data)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    replace(temp, path, overwrite)
    return path


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def other_entries(folder: Path, is_frame: Callable[[str], bool] = _is_image) -> list[str]:
    """Names of what `folder` holds besides frames (`is_frame(name)`; default: any image file) and a file
    browser's files (SYSTEM_FILES): its subfolders and other files, in listing order."""
    return [e.name for e in folder.iterdir() if e.is_dir() or not (is_frame(e.name) or e.name in SYSTEM_FILES)]


try:
    import fcntl
except ImportError:  # no flock (Windows): partial outputs of killed runs stay
    fcntl = None


def try_lock(fd: int) -> bool | None:
    """Take the exclusive lock (flock) on an open file or folder without waiting: True taken, False held by
    another process, None where this system or file system has no such locks (then nothing is known)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: a network file system without flock
        return None


def remove(path: Path) -> None:
    """Remove a file or a folder with what it holds, if there."""
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def hold_lock(path: Path, busy: str) -> int | None:
    """Lock the file or folder `path` (a file is made if missing) for as long as the fd returned stays open;
    OutputError(busy) where another process holds it; None (nothing held) where this file system has no locks."""
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    taken = try_lock(fd)
    if taken is not True:
        os.close(fd)
        if taken is False:
            raise OutputError(busy)
        return None
    return fd


@contextmanager
def holding(path: Path, busy: str) -> Iterator[None]:
    """`hold_lock` for the time inside: the lock is let go on leaving."""
    fd = hold_lock(path, busy)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def locked_by_another(path: Path) -> bool | None:
    """Whether another process holds the lock (flock) on the file or folder `path`; None where it cannot be
    told (no such path, no flock here). An unlocked one gets locked here, and the lock is let go."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        taken = try_lock(fd)
        return None if taken is None else not taken
    finally:
        os.close(fd)


def make_held(path: Path, folder: bool) -> int | None:
    """Make the partial output `path` (an empty file or a folder) already locked for as long as this process
    writes it: made and locked under a name `sweep_partials` does not match, then renamed (the lock goes with
    it), so no other run's sweep ever sees it unlocked. The fd to close when done (None where there are no
    locks: its partial is then never taken for a killed run's). Not inherited by child processes."""
    # No ".partial-" in the making name: sweep_partials' pattern (.OUT.partial-*) would match NAME.making.
    making = path.with_name(path.name.replace(".partial-", ".making-", 1) if ".partial-" in path.name
                            else f"{path.name}.making")
    try:
        if folder:
            making.mkdir()
        else:
            os.close(os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        fd = os.open(making, os.O_RDONLY)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a probe of another run's sweep holds it for a moment at most
            except OSError:  # no locks on this file system
                os.close(fd)
                fd = None
        os.rename(making, path)
    except OSError as exc:
        remove(making)
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    return fd


def sweep_partials(final: Path) -> None:
    """Remove the partial outputs of `final` (.NAME.partial-PID...) that no process holds locked: what runs
    killed outright (SIGKILL, power loss) left beside it; a live run's is locked (`hold`) and kept."""
    import glob

    for partial in final.parent.glob(f".{glob.escape(final.name)}.partial-*"):
        if locked_by_another(partial) is False:
            remove(partial)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _rename_new(temp: Path, final: Path) -> None:
    """Rename `temp` to `final` only if nothing is there, in one step where the system can (Linux's renameat2
    with RENAME_NOREPLACE: two runs finishing at once cannot both take the name); FileExistsError otherwise."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if renameat2(_AT_FDCWD, os.fsencode(temp), _AT_FDCWD, os.fsencode(final), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: a file system without the flag
            raise OSError(code, os.strerror(code), str(final))
    if os.path.lexists(final):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final))
    os.rename(temp, final)


def replace(temp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished temporary file or folder into place (an existing one only if allowed); a file system
    error (the folder removed or made read-only meanwhile) is one OutputError, and the temporary one goes."""
    try:
        _replace(temp, final, overwrite)
    except OSError as exc:
        remove(temp)
        raise OutputError(f"cannot put the output in place at {final}: {exc.strerror or exc}") from None


def _discard_appeared(temp: Path, final: Path) -> None:
    remove(temp)
    raise OutputError(f"output {final} appeared while writing; kept it and discarded the new one")


def _replace(temp: Path, final: Path, overwrite: bool) -> None:
    if not final.exists():
        try:
            _rename_new(temp, final)
            return
        except FileExistsError:  # appeared since the check (or a dangling link is in the way)
            if not overwrite:
                _discard_appeared(temp, final)
    elif not overwrite:
        _discard_appeared(temp, final)
    if final.exists():
        if final.is_dir():
            # Swap folders so the old one is only removed once the new one is in place; and only if it
            # still holds nothing but image files (checked when the run began: anything put there since
            # is kept, beside, and named).
            backup = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(backup)
            try:
                temp.rename(final)
            except OSError:
                backup.rename(final)  # the old output back in view: it stays as it was
                raise
            others = other_entries(backup)
            if others:
                kept = final.with_name(f"{final.name}.old-{os.getpid()}")
                backup.rename(kept)
                warn(f"the old {final} came to hold more than frames while this run wrote ({others[0]}): "
                     f"kept as {kept}")
            else:
                shutil.rmtree(backup, ignore_errors=True)
            return
    os.replace(temp, final)


def write_png(path: Path, image: np.ndarray) -> None:
    """One (H, W, 3) float RGB frame in [0, 1] as a 16-bit PNG (folders made as needed)."""
    import cv2

    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(from_float(np.clip(image, 0.0, 1.0), 16), cv2.COLOR_RGB2BGR)):
        raise OutputError(f"cannot write {path}")
