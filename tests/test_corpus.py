"""The benchmark corpus (benchmarks/corpus.py): the committed split, the per-frame processes, building a case."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from unflicker import io

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("corpus", ROOT / "benchmarks" / "corpus.py")
corpus = sys.modules["corpus"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


def test_committed_listing_is_what_the_definition_generates():
    committed = json.loads(corpus.LISTING.read_text())
    assert committed["version"] == corpus.VERSION and committed["split_seed"] == corpus.SPLIT_SEED
    assert committed["cases"] == corpus.make_listing()
    assert corpus.make_listing(seed=3) != corpus.make_listing()  # the seed matters


def test_split_is_by_source_and_covers_every_kind():
    cases = corpus.load_listing()
    assert len(cases) >= 60 and len({c["name"] for c in cases}) == len(cases)
    split_of: dict[str, set] = {}
    for c in cases:
        split_of.setdefault(corpus.SAME_SCENE.get(c["source"], c["source"]), set()).add(c["split"])
    assert all(len(s) == 1 for s in split_of.values())  # no source (or scene) in both splits
    for part in ("tune", "heldout"):
        kinds = {c["kind"] for c in cases if c["split"] == part}
        assert set(corpus.KINDS) | {"real", "shared-processed"} <= kinds
    held = [c for c in cases if c["split"] == "heldout"]
    assert len(held) >= 30 and sum(not c["seen"] for c in held) >= 15  # held-out has unseen sources
    assert corpus.select(cases, "heldout", ["physical/*"]) == [c for c in held if c["kind"].startswith("physical/")]


@pytest.mark.parametrize("name", corpus.PROCESSES)
def test_process_is_seeded_per_frame_and_keeps_the_layout(name):
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.uniform(0.2, 0.8, (6, 8, 3)), np.ones((8, 8, 1)))  # edges between flat patches
    x = np.clip((blocks + 0.08 * rng.standard_normal((48, 64, 3))) * [1.0, 0.8, 0.6], 0, 1).astype(np.float32)
    a0, a0_again, a1 = (corpus.process_frame(name, x, t, seed=4) for t in (0, 0, 1))
    b0 = corpus.process_frame(name, x, 0, seed=5)
    for y in (a0, a1, b0):
        assert y.shape == x.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    assert np.array_equal(a0, a0_again)
    assert np.abs(a0 - a1).mean() > 1e-3 and np.abs(a0 - b0).mean() > 1e-3  # random per frame and per seed
    assert np.abs(a0 - x).mean() > 1e-3
    with pytest.raises(ValueError):
        corpus.process_frame("nope", x, 0, 0)


@pytest.mark.skipif(not corpus.DATA.is_dir(), reason="needs ../shared/data")
def test_build_a_photo_case_into_the_cache(tmp_path):
    case = next(c for c in corpus.load_listing() if c["kind"] == "processed/sharpen" and c["source_type"] == "photo")
    files = corpus.build(case, n_frames=3, side=64, cache=tmp_path)
    assert files.reference == files.floor != files.input and files.ground_truth == files.input
    info, clean = io.probe(files.input), io.probe(files.reference)
    assert info.frame_count == clean.frame_count == 3 and max(info.width, info.height) <= 64
    stamp = next(tmp_path.iterdir()) / "done"
    before = stamp.stat().st_mtime_ns
    assert corpus.build(case, n_frames=3, side=64, cache=tmp_path) == files and stamp.stat().st_mtime_ns == before
