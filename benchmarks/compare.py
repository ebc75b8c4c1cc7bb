"""Compare two methods' benchmark rows case by case (poststage.py / heldout.py JSON lines).

For every case both have: the change of PSNR (dB), warping error (%), detail and gap closed; family means
of the scores; and the cases beyond a bound in the worse direction (issue 18's: 0.2 dB, 3 % warping error).

    python benchmarks/compare.py results/atlasfit-tune-s17.jsonl default results/x-tune.jsonl candidate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from unflicker.metrics import PSNR_CAP

KEYS = ("psnr", "gap_closed", "detail", "paper_reduction")


def load(path: Path, method: str) -> dict[str, dict]:
    """The last row of `method` per case in a JSON-lines file."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("method") == method:
                rows[row["case"]] = row
    return rows


def _psnr(row: dict) -> float | None:
    value = row.get("psnr")
    return None if value is None else min(float(value), PSNR_CAP)


def family(kind: str) -> str:
    """As poststage.family (clean, physical, processed (tone/colour) or processed (texture), real)."""
    from poststage import family as of  # noqa: PLC0415 (poststage loads the library)

    return of(kind)


def compare(a: dict[str, dict], b: dict[str, dict], db: float = 0.2, percent: float = 3.0,
            family_of=family) -> dict:
    """Per case (sorted) B - A, family means (A, B) and the cases beyond `db` lower PSNR or `percent` higher
    warping error."""
    cases, flagged, families = [], [], {}
    for name in sorted(set(a) & set(b)):
        ra, rb = a[name], b[name]
        pa, pb = _psnr(ra), _psnr(rb)
        d_psnr = None if pa is None or pb is None else pb - pa
        d_warp = 100.0 * (rb["warp_error"] / ra["warp_error"] - 1.0) if ra.get("warp_error") else None
        row = {"case": name, "psnr": (pa, pb), "d_psnr": d_psnr, "warp_error": (ra.get("warp_error"), rb.get("warp_error")),
               "d_warp_percent": d_warp, "detail": (ra.get("detail"), rb.get("detail")),
               "gap_closed": (ra.get("gap_closed"), rb.get("gap_closed"))}
        cases.append(row)
        if (d_psnr is not None and d_psnr < -db) or (d_warp is not None and d_warp > percent):
            flagged.append(name)
        scores = families.setdefault(family_of(ra["kind"]), {k: [] for k in KEYS})
        for key in KEYS:
            va, vb = (_psnr(ra), _psnr(rb)) if key == "psnr" else (ra.get(key), rb.get(key))
            if va is not None and vb is not None:
                scores[key].append((va, vb))
    means = {fam: {key: (float(np.mean([x for x, _ in v])), float(np.mean([y for _, y in v])),
                         float(min(x for x, _ in v)), float(min(y for _, y in v))) for key, v in scores.items() if v}
             for fam, scores in families.items()}
    return {"cases": cases, "families": means, "flagged": flagged}


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(result: dict, db: float, percent: float) -> str:
    lines = ["| case | PSNR dB | change | warping error x1e-3 | change % | detail | gap closed % |", "|---|---|---|---|---|---|---|"]
    for r in result["cases"]:
        lines.append(f"| {r['case']} | {_num(r['psnr'][0], '.2f')} -> {_num(r['psnr'][1], '.2f')} | {_num(r['d_psnr'], '+.2f')} | "
                     f"{_num(r['warp_error'][0], '.3f')} -> {_num(r['warp_error'][1], '.3f')} | {_num(r['d_warp_percent'], '+.1f')} | "
                     f"{_num(r['detail'][0], '.3f')} -> {_num(r['detail'][1], '.3f')} | "
                     f"{_num(r['gap_closed'][0], '.1f')} -> {_num(r['gap_closed'][1], '.1f')} |")
    lines += ["", "| family | score | mean A -> B | min A -> B |", "|---|---|---|---|"]
    for fam, scores in sorted(result["families"].items()):
        for key, (ma, mb, na, nb) in scores.items():
            lines.append(f"| {fam} | {key} | {ma:.2f} -> {mb:.2f} | {na:.3f} -> {nb:.3f} |")
    lines += ["", f"{len(result['flagged'])} cases beyond {db:g} dB / {percent:g} %: " + (", ".join(result["flagged"]) or "none")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file_a", type=Path)
    parser.add_argument("method_a")
    parser.add_argument("file_b", type=Path)
    parser.add_argument("method_b")
    parser.add_argument("--db", type=float, default=0.2, help="PSNR drop that flags a case")
    parser.add_argument("--percent", type=float, default=3.0, help="warping-error rise (%%) that flags a case")
    args = parser.parse_args(argv)
    a, b = load(args.file_a, args.method_a), load(args.file_b, args.method_b)
    if not set(a) & set(b):
        parser.error("the two selections have no case in common")
    print(report(compare(a, b, args.db, args.percent), args.db, args.percent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
