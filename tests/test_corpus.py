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


sys.path.insert(0, str(ROOT / "benchmarks"))
heldout = importlib.import_module("heldout")


def _row(case, kind, method, **scores):
    return {"case": case, "kind": kind, "method": method, "warp_error": 1.0, "detail": 1.0, **scores}


def test_bars_compare_the_target_with_the_other_methods():
    rows = [
        _row("p/a", "processed/x", "input", psnr=float("inf"), gap_closed=0.0, paper_reduction=0.0),
        _row("p/a", "processed/x", "paper", psnr=30.0, gap_closed=95.0, paper_reduction=50.0),
        _row("p/a", "processed/x", "neural", psnr=33.0, gap_closed=92.0, paper_reduction=40.0, detail=0.9),
        _row("p/b", "processed/x", "paper", psnr=31.0, gap_closed=95.0, paper_reduction=50.0),
        _row("p/b", "processed/x", "neural", psnr=34.0, gap_closed=84.0, paper_reduction=30.0),
        _row("f/a", "physical/step", "ffmpeg", psnr=25.0, paper_reduction=20.0),
        _row("f/a", "physical/step", "classical", psnr=28.0, paper_reduction=50.0),
        _row("f/a", "physical/step", "neural", psnr=29.0, paper_reduction=70.0),
        _row("c/a", "clean", "neural", psnr=43.0),
        _row("r/a", "real", "ffmpeg", flicker_index=2.0, warp_error=0.5),
        _row("r/a", "real", "classical", flicker_index=1.0, warp_error=0.3),
        _row("r/a", "real", "neural", flicker_index=1.5, warp_error=0.4),
    ]
    status = {(b["kind"], b["bar"]): b["status"] for b in heldout.bars(rows, "neural")}
    assert status[("processed/x", "detail >= 0.95 on every case")] == "NOT met"  # 0.9 on p/a
    assert status[("processed/x", ">= 90 % of the warping-error gap closed")] == "NOT met"  # mean of 92, 84
    assert status[("processed/x", "PSNR >= paper stages + 2 dB")] == "met"  # 33.5 vs 30.5
    assert status[("processed/x", ">= 85 % of the gap at >= 30 dB on every case")] == "NOT met"  # 84 on p/b
    assert status[("processed/x", "paper E_warp reduction vs input >= 35 %")] == "met"  # mean 35
    assert status[("physical/step", "PSNR >= classical + 1.5 dB")] == "NOT met"
    assert status[("physical/step", "PSNR >= ffmpeg + 4 dB")] == "met"
    assert status[("physical/step", "paper E_warp reduction vs input >= 60 %")] == "met"
    assert status[("clean", ">= 42 dB to the input on every case")] == "met"
    assert status[("real", "flicker_index below ffmpeg's on every case")] == "met"
    assert status[("real", "warp_error below classical's on every case")] == "NOT met"
    # A bar against the target itself, or against a method not run, is not applicable.
    own = {(b["kind"], b["bar"]): b["status"] for b in heldout.bars(rows, "classical")}
    assert own[("physical/step", "PSNR >= classical + 1.5 dB")] == "n/a"
    assert own[("processed/x", "all")] == "n/a"


@pytest.mark.skipif(not corpus.DATA.is_dir(), reason="needs ../shared/data")
def test_score_case_runs_a_method_and_measures_the_gap(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CACHE", tmp_path / "cache")
    case = next(c for c in corpus.load_listing() if c["kind"] == "physical/global" and c["source_type"] == "photo")
    rows = heldout.score_case(case, ["classical"], 10, 128, corpus.DATA, tmp_path / "work", log=lambda _: None)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["input", "clean", "classical"] and not any(r["error"] for r in rows)
    assert by["input"]["gap_closed"] == 0.0 and by["clean"]["gap_closed"] == pytest.approx(100.0)
    assert by["classical"]["gap_closed"] > 30 and by["classical"]["psnr"] > by["input"]["psnr"]
    assert by["classical"]["paper_reduction"] > 0 and by["classical"]["seconds"] > 0
    assert 0.8 < by["classical"]["detail"] < 1.3


def test_heldout_main_writes_tables_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_score_case(case, methods, frames, side, data, work, log=print):
        calls.append(case["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed on its second case
        return [{"case": case["name"], "kind": case["kind"], "split": case["split"], "seen": case["seen"],
                 "method": m, "warp_error": 1.0, "detail": 1.0, "psnr": 40.0, "gap_closed": 50.0,
                 "paper_reduction": 10.0, "seconds": 1.0, "error": None} for m in ["input", *methods]]

    monkeypatch.setattr(heldout, "score_case", fake_score_case)
    args = ["--split", "heldout", "--methods", "classical", "--cases", "clean/*", "processed/detail/bsds-45000",
            "--out", str(tmp_path), "--name", "t"]
    with pytest.raises(KeyboardInterrupt):
        heldout.main(args)
    assert (tmp_path / "t.partial.jsonl").read_text().count("\n") == 1 and len(calls) == 2
    heldout.main(args + ["--resume"])
    assert len(calls) == 2 + 4 and calls.count(calls[0]) == 1  # the finished case was not run again
    result = json.loads((tmp_path / "t.json").read_text())
    assert {r["case"] for r in result["rows"]} == set(calls) and not (tmp_path / "t.partial.jsonl").exists()
    kinds = {s["kind"] for s in result["summary"]}
    assert {"clean", "processed/detail", "all processed", "all cases"} <= kinds
    assert "## Issue 17's bars" in (tmp_path / "t.md").read_text()
