"""benchmarks/compare.py: two methods' rows compared case by case, with the cases beyond a bound."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


def _rows(path, method, values):
    with path.open("a") as f:
        for case, kind, psnr, warp, detail in values:
            f.write(json.dumps({"case": case, "kind": kind, "method": method, "psnr": psnr, "warp_error": warp,
                                "detail": detail, "gap_closed": 50.0}) + "\n")


def test_cases_beyond_the_bound_are_flagged_and_families_averaged(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _rows(a, "default", [("physical/global/x", "physical/global", 30.0, 1.0, 0.9),
                         ("processed/awb/y", "processed/awb", 35.0, 2.0, 0.95),
                         ("clean/z", "clean", float("inf"), 0.5, 1.0)])
    _rows(a, "other", [("physical/global/x", "physical/global", 10.0, 9.0, 0.1)])  # another method: ignored
    _rows(b, "new", [("physical/global/x", "physical/global", 29.7, 1.0, 0.9),   # -0.3 dB: flagged
                     ("processed/awb/y", "processed/awb", 35.1, 2.08, 0.96),     # +4 % warping error: flagged
                     ("clean/z", "clean", float("inf"), 0.51, 1.0),               # +2 %, same PSNR: not flagged
                     ("only/in/b", "clean", 40.0, 1.0, 1.0)])                    # not in A: left out
    result = compare.compare(compare.load(a, "default"), compare.load(b, "new"), family_of=lambda kind: kind.split("/")[0])
    assert [r["case"] for r in result["cases"]] == ["clean/z", "physical/global/x", "processed/awb/y"]
    assert result["flagged"] == ["physical/global/x", "processed/awb/y"]
    assert abs(result["families"]["physical"]["psnr"][1] - 29.7) < 1e-9
    assert result["families"]["clean"]["psnr"][:2] == (99.0, 99.0)  # identical outputs count as 99 dB
    assert compare.compare(compare.load(a, "default"), compare.load(b, "new"), db=0.5, percent=5.0,
                           family_of=lambda kind: kind)["flagged"] == []
    assert compare.main([str(a), "default", str(b), "new"]) == 0
    assert "2 cases beyond 0.2 dB / 3 %" in capsys.readouterr().out
