"""Benchmark on the issue-17 corpus (benchmarks/corpus.py): methods over one split, per-kind summaries and bars.

    python benchmarks/heldout.py --split heldout                      # every method, all held-out cases
    python benchmarks/heldout.py --split tune --methods classical --cases 'physical/*' --frames 24
    python benchmarks/heldout.py --split heldout --resume              # go on after an interrupted run

Methods: input (the case's input as it is), ffmpeg (libavfilter `deflicker` defaults), classical, neural
(the default), paper (the neural method's paper stages alone: RunConfig(keep_slow=inf, projection=False)).
Where a case has a flicker-free floor (every case but real/*) its row `clean` is scored as well.
Scores (unflicker.evaluation.Evaluator, at longer side 480): warp_error (Lai et al., flow on the clean clip
where one exists, else on the input), warp_error_k5, paper_warp_error (Lei et al. CVPR 2023: masked L1,
short-term plus long-term to the first frame), flicker_index, psnr/ssim (to the clean clip for physical/*
and clean, to the processed frames for processed/* and shared-processed/*), detail (Laplacian energy of
the result over the ground truth's, or the input's for real/*, per-frame contrast matched).
Derived per case: gap_closed = 100 (E_in - E_m) / (E_in - E_clean) with E = warp_error, and
paper_reduction = 100 (P_in - P_m) / P_in with P = paper_warp_error.
Writes results/<name>.md (summary per kind, issue 17's bars for --target, every row) and <name>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import corpus
from run import run_ffmpeg
from unflicker.evaluation import Evaluator
from unflicker.pipeline import RunConfig, deflicker_file

ROOT = Path(__file__).resolve().parent
METHODS = ("input", "ffmpeg", "classical", "neural", "paper")
OPTIONS = {"classical": {"method": "classical"}, "neural": {"method": "neural"},
           "paper": {"method": "neural", "keep_slow": math.inf, "projection": False}}


def case_evaluator(files: corpus.CaseFiles) -> Evaluator:
    """The benchmark's scorer of a corpus case (flow on its reference, long-term pairs 5 apart, 480 px)."""
    return Evaluator(files.reference, files.ground_truth, like=files.input, long_term=5, max_side=480)


def relative_scores(row: dict, base: dict | None, floor: dict | None) -> dict:
    """Adds to a scored row what it means against the input's scores (base) and the clean floor's:
    gap_closed, the share of the input's warping-error gap to the floor closed, % (where there is a
    floor below the input), and paper_reduction, the paper's E_warp reduction against the input, %."""
    e_in, p_in = (base or {}).get("warp_error"), (base or {}).get("paper_warp_error")
    if e_in is not None and floor and "warp_error" in floor and e_in - floor["warp_error"] > 1e-9:
        row["gap_closed"] = 100 * (e_in - row["warp_error"]) / (e_in - floor["warp_error"])
    if p_in:
        row["paper_reduction"] = 100 * (p_in - row["paper_warp_error"]) / p_in
    return row


def run_method(method: str, files: corpus.CaseFiles, work: Path) -> tuple[Path, float | None]:
    """The result of `method` on the case and its wall seconds (decode + method + encode)."""
    if method == "input":
        return files.input, None
    if method == "clean":
        return files.floor, None
    output = work / f"{method}.mkv"
    start = time.perf_counter()
    if method == "ffmpeg":
        run_ffmpeg(files.input, output)
    else:
        deflicker_file(files.input, output, RunConfig(overwrite=True, progress=False, **OPTIONS[method]))
    return output, time.perf_counter() - start


def group(kind: str) -> str:
    """Which of issue 17's bar families a kind belongs to."""
    if kind.startswith("processed/") or kind == "shared-processed":
        return "processed"
    if kind.startswith("physical/"):
        return "physical"
    return kind  # clean, real


def score_case(case: dict, methods: list[str], frames: int, side: int, data: Path, work: Path,
               log=print) -> list[dict]:
    files = corpus.build(case, data, frames, side)
    evaluator = case_evaluator(files)
    rows = []
    for method in (["input"] + (["clean"] if files.floor else []) + [m for m in methods if m != "input"]):
        case_work = work / method
        case_work.mkdir(parents=True, exist_ok=True)
        try:
            result, seconds = run_method(method, files, case_work)
            report = evaluator.score(result)
            error = None
        except Exception as exc:  # a failing method is a row that says so, not a lost run
            report, seconds, error = {}, None, f"{type(exc).__name__}: {exc}"
        row = {"case": case["name"], "kind": case["kind"], "split": case["split"], "seen": case["seen"],
               "method": method, **report, "seconds": seconds,
               "fps": report.get("frames", 0) / seconds if seconds else None, "error": error}
        rows.append(row)
        shutil.rmtree(case_work, ignore_errors=True)
    base = rows[0]
    floor = next((r for r in rows if r["method"] == "clean"), None)
    for row in rows:
        if "warp_error" not in row:
            continue
        relative_scores(row, base, floor)
        log(format_row(row))
    for row in rows:
        if row["error"]:
            log(f"{row['case']} {row['method']}: {row['error']}")
    return rows


# ---------------------------------------------------------------- summaries and bars

SUMMARY_KEYS = ("gap_closed", "psnr", "detail", "flicker_index", "warp_error", "paper_warp_error", "paper_reduction",
                "seconds")


def summarize(rows: list[dict]) -> list[dict]:
    """Per (kind, method), then per family ("all processed", "all physical", ...) and over every case:
    number of cases and mean (and min for gap, PSNR and detail) of each score."""
    families = [{**r, "kind": f"all {group(r['kind'])}"} for r in rows if group(r["kind"]) != r["kind"]]
    everything = [{**r, "kind": "all cases"} for r in rows]
    return _summarize(rows) + _summarize(families) + _summarize(everything)


def _summarize(rows: list[dict]) -> list[dict]:
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["kind"] == kind):
            sel = [r for r in rows if r["kind"] == kind and r["method"] == method]
            entry = {"kind": kind, "method": method, "cases": len(sel)}
            for key in SUMMARY_KEYS:
                values = [r[key] for r in sel if r.get(key) is not None and np.isfinite(r[key])]
                entry[key] = float(np.mean(values)) if values else None
                if key in ("gap_closed", "detail", "psnr"):
                    entry[key + "_min"] = float(np.min(values)) if values else None
            out.append(entry)
    return out


def _mean(rows, kind_rows, method, key):
    values = [r[key] for r in kind_rows if r["method"] == method and r.get(key) is not None]
    return float(np.mean(values)) if values else None


def bars(rows: list[dict], target: str) -> list[dict]:
    """Issue 17's bars, per kind, for the `target` method: {kind, bar, status (met / NOT met / n/a), detail}."""
    out = []

    def add(kind, bar, ok, text):
        out.append({"kind": kind, "bar": bar, "status": "n/a" if ok is None else ("met" if ok else "NOT met"),
                    "detail": text})

    for kind in dict.fromkeys(r["kind"] for r in rows):
        kr = [r for r in rows if r["kind"] == kind]
        tr = [r for r in kr if r["method"] == target and "warp_error" in r]
        if not tr:
            add(kind, "all", None, f"no {target} rows")
            continue
        m = lambda method, key: _mean(rows, kr, method, key)  # noqa: E731
        fam = group(kind)
        details = [r["detail"] for r in tr]
        add(kind, "detail >= 0.95 on every case", min(details) >= 0.95, f"min {min(details):.3f}")
        if fam == "processed":
            gap = m(target, "gap_closed")
            add(kind, ">= 90 % of the warping-error gap closed", None if gap is None else gap >= 90,
                f"mean {gap:.1f} %" if gap is not None else "no floor")
            p_t, p_paper = m(target, "psnr"), None if target == "paper" else m("paper", "psnr")
            add(kind, "PSNR >= paper stages + 2 dB", None if p_paper is None else p_t >= p_paper + 2,
                f"{p_t:.2f} vs paper {p_paper:.2f} dB" if p_paper is not None else "paper not run or the target")
            margin = [(r.get("gap_closed"), r["psnr"]) for r in tr]
            ok = all(g is not None and g >= 85 and p >= 30 for g, p in margin)
            add(kind, ">= 85 % of the gap at >= 30 dB on every case", ok,
                "; ".join(f"{g:.1f} % / {p:.1f} dB" if g is not None else f"- / {p:.1f} dB" for g, p in margin))
            red = m(target, "paper_reduction")
            add(kind, "paper E_warp reduction vs input >= 35 %", red >= 35, f"mean {red:.1f} %")
        elif fam == "physical":
            p_t, p_c, p_f = m(target, "psnr"), m("classical", "psnr"), m("ffmpeg", "psnr")
            p_c, p_f = (None if other == target else p for other, p in (("classical", p_c), ("ffmpeg", p_f)))
            add(kind, "PSNR >= classical + 1.5 dB", None if p_c is None else p_t >= p_c + 1.5,
                f"{p_t:.2f} vs classical {p_c:.2f} dB" if p_c is not None else "classical not run or the target")
            add(kind, "PSNR >= ffmpeg + 4 dB", None if p_f is None else p_t >= p_f + 4,
                f"{p_t:.2f} vs ffmpeg {p_f:.2f} dB" if p_f is not None else "ffmpeg not run or the target")
            red = m(target, "paper_reduction")
            add(kind, "paper E_warp reduction vs input >= 60 %", red >= 60, f"mean {red:.1f} %")
        elif fam == "clean":
            psnrs = [r["psnr"] for r in tr]
            add(kind, ">= 42 dB to the input on every case", min(psnrs) >= 42, f"min {min(psnrs):.2f} dB")
        elif fam == "real":
            for key, other in (("flicker_index", "ffmpeg"), ("warp_error", "ffmpeg"), ("warp_error", "classical")):
                pairs = [(r[key], next((o[key] for o in kr if o["case"] == r["case"] and o["method"] == other
                                        and key in o), None)) for r in tr]
                if other == target:
                    pairs = [(t, None) for t, _ in pairs]
                ok = None if any(o is None for _, o in pairs) else all(t < o for t, o in pairs)
                add(kind, f"{key} below {other}'s on every case", ok,
                    "; ".join(f"{t:.3f} vs {o:.3f}" if o is not None else f"{t:.3f} vs -" for t, o in pairs))
    return out


# ---------------------------------------------------------------- tables

def _num(value, fmt):
    return "" if value is None else format(value, fmt)


def format_row(row: dict) -> str:
    seen = " (seen)" if row.get("seen") else ""
    return (f"| {row['case']}{seen} | {row['method']} | {_num(row.get('warp_error'), '.3f')} | "
            f"{_num(row.get('gap_closed'), '.1f')} | {_num(row.get('paper_warp_error'), '.2f')} | "
            f"{_num(row.get('paper_reduction'), '.1f')} | {_num(row.get('flicker_index'), '.3f')} | "
            f"{_num(row.get('psnr'), '.2f')} | {_num(row.get('detail'), '.3f')} | {_num(row.get('seconds'), '.1f')} |")


def markdown(rows: list[dict], summary: list[dict], bar_rows: list[dict], note: str) -> str:
    lines = [note, "", "## Per kind (means; min where shown)", "",
             "| kind | method | cases | gap closed % (min) | PSNR dB (min) | detail (min) | flicker index x1e-3 | "
             "E_warp Lai x1e-3 | paper E_warp x1e-3 | paper E_warp reduction % | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['kind']} | {s['method']} | {s['cases']} | {_num(s['gap_closed'], '.1f')} "
            f"({_num(s['gap_closed_min'], '.1f')}) | {_num(s['psnr'], '.2f')} ({_num(s['psnr_min'], '.2f')}) | "
            f"{_num(s['detail'], '.3f')} ({_num(s['detail_min'], '.3f')}) | {_num(s['flicker_index'], '.3f')} | "
            f"{_num(s['warp_error'], '.3f')} | {_num(s['paper_warp_error'], '.2f')} | "
            f"{_num(s['paper_reduction'], '.1f')} | {_num(s['seconds'], '.1f')} |")
    lines += ["", "## Issue 17's bars", "", "| kind | bar | status | measured |", "|---|---|---|---|"]
    lines += [f"| {b['kind']} | {b['bar']} | {b['status']} | {b['detail']} |" for b in bar_rows]
    lines += ["", "## Every case", "",
              "| case | method | E_warp Lai x1e-3 | gap closed % | paper E_warp x1e-3 | paper reduction % | "
              "flicker index x1e-3 | PSNR dB | detail | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [format_row(r) for r in rows]
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['case']} {r['method']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("tune", "heldout", "all"), default="heldout")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN", help="only cases matching these globs")
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "input"],
                        choices=METHODS, help="methods besides the input (default: all)")
    parser.add_argument("--target", help="the method the bars are checked for (default: neural if run, "
                                         "else the last of --methods)")
    parser.add_argument("--frames", type=int, default=corpus.FRAMES, help="frames per case (default %(default)s)")
    parser.add_argument("--side", type=int, default=corpus.SIDE, help="longer side of the cases (default %(default)s)")
    parser.add_argument("--data", type=Path, default=corpus.DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--name", help="file stem of the written tables (default: heldout-<split>)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the cases an interrupted run of the same --name, methods, frames and side finished")
    args = parser.parse_args(argv)
    cases = corpus.select(corpus.load_listing(), args.split, args.cases)
    if not cases:
        parser.error("no case matches")
    target = args.target or ("neural" if "neural" in args.methods else args.methods[-1])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    name = args.name or f"heldout-{args.split}"
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / f"{name}.partial.jsonl"  # one line per finished case, for --resume
    done: dict[str, list[dict]] = {}
    if args.resume and partial.exists():
        for line in partial.read_text().splitlines():
            entry = json.loads(line)
            if entry["methods"] == args.methods and entry["frames"] == args.frames and entry["side"] == args.side:
                done[entry["case"]] = entry["rows"]
    elif partial.exists():
        partial.unlink()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="unflicker-heldout-"))
    try:
        for i, case in enumerate(cases):
            if case["name"] in done:
                rows += done[case["name"]]
                continue
            print(f"[{i + 1}/{len(cases)}] {case['name']}", file=sys.stderr, flush=True)
            case_rows = score_case(case, args.methods, args.frames, args.side, args.data, work,
                                   log=lambda line: print(line, file=sys.stderr, flush=True))
            rows += case_rows
            with partial.open("a") as f:
                f.write(json.dumps({"case": case["name"], "methods": args.methods, "frames": args.frames,
                                    "side": args.side, "rows": case_rows}) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary, bar_rows = summarize(rows), bars(rows, target)
    note = (f"# Corpus benchmark, split `{args.split}`{' (' + ' '.join(args.cases) + ')' if args.cases else ''}\n\n"
            f"Run {started} on {os.cpu_count()} CPUs: {len(cases)} cases, first {args.frames} frames at longer side "
            f"{args.side}; methods {', '.join(args.methods)}; bars checked for `{target}`. Seconds: decode + method + "
            "encode. Cases marked seen in the JSON come from clips the project trained or tuned on before.")
    (args.out / f"{name}.md").write_text(markdown(rows, summary, bar_rows, note))
    meta = {"started": started, "split": args.split, "cases": args.cases, "frames": args.frames, "side": args.side,
            "methods": args.methods, "target": target, "cpus": os.cpu_count()}
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary,
                                                       "bars": bar_rows}, indent=1))
    partial.unlink(missing_ok=True)
    print(markdown(rows, summary, bar_rows, note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
