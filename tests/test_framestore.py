import numpy as np
import pytest

from unflicker.errors import InputError
from unflicker.framestore import FrameStore


def test_round_trip_frames_and_windows():
    rng = np.random.default_rng(0)
    frames = rng.random((7, 5, 6, 3), dtype=np.float32)
    store = FrameStore((5, 6, 3), np.float16)
    for frame in frames:
        store.append(frame)
    assert len(store) == 7 and store.shape == (7, 5, 6, 3)
    assert np.array_equal(store[3], frames[3].astype(np.float16))
    assert np.array_equal(store[-1], frames[-1].astype(np.float16))
    assert np.array_equal(store[2:5], frames[2:5].astype(np.float16))
    assert store[5:99].shape == (2, 5, 6, 3) and store[4:2].shape == (0, 5, 6, 3)


def test_overwrite_keeps_other_frames():
    store = FrameStore((2, 2, 3), np.float32)
    for value in (0.1, 0.2, 0.3):
        store.append(np.full((2, 2, 3), value, np.float32))
    store[1] = np.full((2, 2, 3), 0.9, np.float32)
    assert [float(store[t][0, 0, 0]) for t in range(3)] == pytest.approx([0.1, 0.9, 0.3])


def test_bad_frames_and_indices_are_refused():
    store = FrameStore((2, 2, 3))
    with pytest.raises(InputError):
        store.append(np.zeros((2, 3, 3)))
    with pytest.raises(IndexError):
        store[2] = np.zeros((2, 2, 3))  # a gap: only the next frame may be appended
    with pytest.raises(IndexError):
        store[0]
    with pytest.raises(InputError):
        FrameStore((0, 2, 3))


def test_fit_video_reads_a_store_like_an_array():
    from unflicker.atlas import AtlasConfig, fit_video

    rng = np.random.default_rng(1)
    base = rng.random((24, 32, 3), dtype=np.float32)
    frames = np.stack([np.clip(base * g, 0, 1) for g in (1.0, 0.8, 1.1, 0.9, 1.0, 0.85)]).astype(np.float16)
    store = FrameStore(frames.shape[1:], np.float16)
    for frame in frames:
        store.append(frame)
    config = AtlasConfig(steps=5, threads=1)
    from_array = fit_video(frames, None, config)
    from_store = fit_video(store, None, config)
    assert len(from_store) == 6
    for t in range(6):
        assert np.array_equal(from_array.render(t), from_store.render(t))


def test_frame_file_round_trips_through_npy(tmp_path):
    from unflicker.framestore import FrameFile

    frames = np.random.default_rng(0).integers(0, 65535, (4, 5, 6, 3), dtype=np.uint16)
    with FrameFile.create(tmp_path / "a.npy", frames.shape, np.uint16) as out:
        for t in (2, 0, 3, 1):  # any order
            out[t] = frames[t]
        with pytest.raises(InputError):
            out[0] = frames[0, :2]
        with pytest.raises(IndexError):
            out[4] = frames[0]
    assert np.array_equal(np.load(tmp_path / "a.npy"), frames)
    np.save(tmp_path / "b.npy", frames.astype(np.float32))  # a file np.save wrote (format 1.0)
    with FrameFile.open(tmp_path / "b.npy") as read:
        assert read.shape == frames.shape and read.ndim == 4 and len(read) == 4
        assert np.array_equal(read[3], frames[3].astype(np.float32))
    np.save(tmp_path / "f.npy", np.asfortranarray(frames[0]))
    with pytest.raises(InputError):
        FrameFile.open(tmp_path / "f.npy")


def test_frames_read_back_are_the_written_ones_and_their_own_arrays(tmp_path):
    """Reads fill fresh arrays straight from the file; writes take any array (strided, another
    dtype); a file cut short fails with a clear OSError rather than returning zeros."""
    from unflicker.framestore import FrameFile

    rng = np.random.default_rng(2)
    frames = rng.random((3, 4, 5, 3))  # float64, converted on the way in
    store = FrameStore((4, 5, 3), np.float32)
    for frame in frames:
        store.append(frame[:, :, ::-1])  # not contiguous
    first = store[0]
    first[:] = 7  # a copy: the store keeps its frame
    assert np.array_equal(store[0], frames[0, :, :, ::-1].astype(np.float32))
    assert np.array_equal(store[1:3], frames[1:3, :, :, ::-1].astype(np.float32))
    path = tmp_path / "cut.npy"
    with FrameFile.create(path, frames.shape, np.float32) as out:
        for t, frame in enumerate(frames):
            out[t] = frame
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 8)
    with FrameFile.open(path) as cut:
        assert np.array_equal(cut[1], frames[1].astype(np.float32))
        with pytest.raises(OSError, match="short read"):
            cut[2]



def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def test_whole_block_frames_go_straight_to_the_device(tmp_path, monkeypatch):
    """Where the file system takes direct I/O (else the test has nothing to check), frames of whole
    blocks are written and read back direct, every FrameStore frame too (its slots are whole pages:
    5x6x3 float16 is 180 bytes), a FrameFile's data starts at 4096 and np.load reads it; a FrameFile
    frame of odd size goes through the page cache; closing leaves no descriptor open."""
    import os

    from unflicker.framestore import FrameFile

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 65535, (4, 16, 32, 3), dtype=np.uint16)  # 3072 bytes: whole blocks
    small = rng.random((4, 5, 6, 3), dtype=np.float32)
    before = _open_fds()
    store = FrameStore(small.shape[1:], np.float16, directory=str(tmp_path))
    out = FrameFile.create(tmp_path / "r.npy", frames.shape, np.uint16)
    odd = FrameFile.create(tmp_path / "odd.npy", (2, 5, 7, 3), np.uint8)  # 105 bytes a frame
    if not (store._io._direct and out._io._direct):
        store.close(), out.close(), odd.close()
        pytest.skip("no direct I/O on this file system")
    direct = {store._io._fd, out._io._fd, odd._io._fd}
    used = []
    real_write, real_read = os.pwrite, os.preadv
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: used.append(("w", fd in direct)) or real_write(fd, data, at))
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, at: used.append(("r", fd in direct)) or real_read(fd, bufs, at))
    for t in range(4):
        store.append(small[t])
        out[t] = frames[t]
    assert np.array_equal(store[1], small[1].astype(np.float16)) and np.array_equal(out[2], frames[2])
    assert np.array_equal(store[0:4], small.astype(np.float16))
    assert used and all(went_direct for _, went_direct in used) and {kind for kind, _ in used} == {"w", "r"}
    used.clear()
    odd[1] = frames[0, :5, :7].astype(np.uint8)
    assert np.array_equal(odd[1], frames[0, :5, :7].astype(np.uint8))
    assert used and not any(went_direct for _, went_direct in used)
    monkeypatch.undo()
    assert out._offset == 4096
    out.close(), odd.close(), store.close()
    assert np.array_equal(np.load(tmp_path / "r.npy"), frames)
    with FrameFile.open(tmp_path / "r.npy") as read:
        assert read._io._direct and np.array_equal(read[3], frames[3])
    assert _open_fds() == before


def test_a_refusal_mid_file_turns_it_to_the_page_cache_with_every_frame_intact(tmp_path, monkeypatch):
    """An EINVAL from a direct write after the first try passed: that write and the later ones go
    through the page cache, nothing is lost, and the direct descriptor still closes with the file
    (a stand-in descriptor here, so this runs on any file system)."""
    import errno
    import os
    import weakref

    from unflicker.framestore import FrameFile

    frames = np.random.default_rng(4).integers(0, 255, (3, 16, 32, 3), dtype=np.uint8)  # 1536 bytes
    before = _open_fds()
    out = FrameFile.create(tmp_path / "f.npy", frames.shape, np.uint8)
    if out._io._closer is not None:
        out._io._closer()  # the real direct descriptor, if any, closed: a stand-in takes its place
    out._io._fd, out._io._direct = os.dup(out._io.file.fileno()), True
    out._io._closer = weakref.finalize(out._io, os.close, out._io._fd)
    out[0] = frames[0]
    refused, real = out._io._fd, os.pwrite

    def refuse(fd, data, at):
        if fd == refused:
            raise OSError(errno.EINVAL, "refused")
        return real(fd, data, at)

    monkeypatch.setattr(os, "pwrite", refuse)
    out[1] = frames[1]
    assert not out._io._direct
    out[2] = frames[2]
    monkeypatch.undo()
    assert [np.array_equal(out[t], frames[t]) for t in range(3)] == [True] * 3
    out.close()
    assert np.array_equal(np.load(tmp_path / "f.npy"), frames) and _open_fds() == before


def test_threads_writing_at_once_each_get_their_own_scratch_and_few_are_kept(tmp_path):
    """Eight threads write frames of one store at once (each frame checked back); the aligned
    scratch buffers they borrowed are kept for later writes, never more than the module keeps."""
    from concurrent.futures import ThreadPoolExecutor

    import unflicker.framestore as fs

    frames = np.random.default_rng(5).random((32, 24, 40, 3), dtype=np.float32)
    store = FrameStore(frames.shape[1:], np.float32, directory=str(tmp_path))
    for t in range(len(frames)):
        store.append(np.zeros(frames.shape[1:], np.float32))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: store.__setitem__(t, frames[t]), range(len(frames))))
    assert np.array_equal(store[0:32], frames)
    assert len(fs._spare) <= fs._SPARES
    store.close()
