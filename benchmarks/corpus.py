"""The benchmark corpus of issue 17: cases built from shared clean clips and photos, split by source into
`tune` and `heldout`.

    python benchmarks/corpus.py --list [--split heldout]     # the cases (from the committed listing)
    python benchmarks/corpus.py --build [--split tune] [--cases 'physical/*'] [--frames 48]
    python benchmarks/corpus.py --write-listing               # regenerate benchmarks/corpus.json

Sources (SOURCES below, data-free: paths under ../shared/data and scikit-image's bundled photos):
  video   clean handheld clips (shared/data/clean), first frames, longer side SIDE px
  photo   still photos (BSDS500, Urban100, scikit-image) under a simulated camera move (synth.camera_move)
  shared  shared/data/processed/* (real per-frame processing beside its clean original) and
          shared/data/real-flicker/* (real flicker, no ground truth)
Kinds (KINDS):
  physical   a clean clip with seeded synthetic flicker (synth.Flicker kinds: global, colour, local, mains,
             step-held gain/colour, old-film pumping with grain); flow on and PSNR to the clean clip (film:
             PSNR to the clean clip with the same grain and no pumping, as grain is texture, not flicker)
  processed  a clean clip after a per-frame image operation with random parameters per frame (PROCESSES);
             flow on the clean clip, PSNR to the processed frames (the look to keep); the clean clip is the floor
  clean      the clean clip unchanged (do no harm): PSNR to the input
  shared-processed / real   the shared clips as they are
The split: sources are grouped (clips of one scene form one group); within each stratum (source type x
seen before, see SEEN) the groups are shuffled with SPLIT_SEED and the first half (rounded up) is held out;
then CASES_PER_SOURCE kinds are dealt to each split's sources from a seeded shuffle of DECK, cycled, so
every kind occurs in both splits. The result is committed as
benchmarks/corpus.json; tests/test_corpus.py checks that it is what this file generates.
Case videos are generated on demand into CACHE (lossless .mkv, never committed).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unflicker import io, synth

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent.parent / "shared" / "data"
CACHE = ROOT / ".cache" / "corpus"
LISTING = ROOT / "corpus.json"
VERSION = 2  # bump when a generator changes: the cache is keyed by it
SPLIT_SEED = 17
FRAMES = 48
SIDE = 480

# Source name -> (type, group, location). Clips of one scene share a group and so a split.
VIDEO_SOURCES = {
    "cockatoo": "clean/cockatoo.mp4",
    "davis-bear": "clean/davis-bear.mp4",
    "davis-paragliding": "clean/davis-paragliding.mp4",
    "davis-paragliding-launch": "clean/davis-paragliding-launch.mp4",
    "sam2-dog": "clean/sam2-01_dog.mp4",
    "sam2-cups": "clean/sam2-02_cups.mp4",
    "sam2-blocks": "clean/sam2-03_blocks.mp4",
    "sam2-coffee": "clean/sam2-04_coffee.mp4",
    "sam2-juggle": "clean/sam2-05_default_juggle.mp4",
}
PHOTO_SOURCES = {  # BSDS500 test images past the first 40 (the filter's validation set): never used by training
    "bsds-157032": "images/bsds500/test/157032.jpg",
    "bsds-196088": "images/bsds500/test/196088.jpg",
    "bsds-246009": "images/bsds500/test/246009.jpg",
    "bsds-317043": "images/bsds500/test/317043.jpg",
    "bsds-45000": "images/bsds500/test/45000.jpg",
    "bsds-97010": "images/bsds500/test/97010.jpg",
    "skimage-astronaut": "skimage:astronaut",
    "skimage-chelsea": "skimage:chelsea",
    "skimage-coffee": "skimage:coffee",
    "skimage-rocket": "skimage:rocket",
    "skimage-hubble": "skimage:hubble_deep_field",
    "skimage-ihc": "skimage:immunohistochemistry",
    "skimage-camera": "skimage:camera",
    "skimage-gravel": "skimage:gravel",
    "urban-005": "images/urban100/img_005_SRF_2_HR.png",
    "urban-042": "images/urban100/img_042_SRF_2_HR.png",
}
PROCESSED_SOURCES = {name: f"processed/{name}" for name in ("goat", "bike-packing", "haze2")}
REAL_SOURCES = {
    "winter-scenes-in-holland": "real-flicker/winter-scenes-in-holland.mp4",
    "old-film-001": "real-flicker/old-film-001",
    "old-film-003": "real-flicker/old-film-003",
}
# Sources the project has already seen: its networks' training data, or clips its settings were chosen on
# before issue 17. The split is stratified by this too, and the benchmark rows carry it.
SEEN = {
    **{name: "refine L training clip" for name in VIDEO_SOURCES if name != "davis-bear"},
    "davis-bear": "refine L validation clip",
    "urban-005": "filter F training photo",
    "urban-042": "filter F training photo",
    **{name: "benchmark case before issue 17" for name in (*PROCESSED_SOURCES, *REAL_SOURCES)},
}
# Groups of sources that show the same scene (never split apart).
SAME_SCENE = {"davis-paragliding-launch": "davis-paragliding"}

PHYSICAL = ("global", "colour", "local", "mains", "step", "film")
PROCESSES = ("tonemap", "autolevels", "awb", "dehaze", "colorize", "stylize", "edgepreserve", "detail",
             "denoise", "sharpen", "img2img")
KINDS = tuple(f"physical/{k}" for k in PHYSICAL) + tuple(f"processed/{k}" for k in PROCESSES) + ("clean",)
CASES_PER_SOURCE = 3
DECK = KINDS + ("clean",)  # the kinds dealt to sources; clean twice, as do-no-harm has a bar on every case


# ---------------------------------------------------------------- per-frame processing (random per frame)

def _rng(seed: int, t: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, t, PROCESSES.index(name)])


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], grid=(3, 4), channels=1) -> np.ndarray:
    coarse = rng.standard_normal((grid[0], grid[1], channels)).astype(np.float32)
    out = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return out.reshape(shape[0], shape[1], channels)


def process_frame(name: str, x: np.ndarray, t: int, seed: int) -> np.ndarray:
    """Frame t of a per-frame image operation `name` (one of PROCESSES) with parameters drawn for (seed, t).

    x: (H, W, 3) float32 RGB in [0, 1]; returns the same layout. Every frame gets its own random
    parameters (and content-adaptive operations adapt to each frame), which is what makes them flicker.
    """
    r = _rng(seed, t, name)
    if name == "tonemap":  # Reinhard's global/local operator on a randomly exposed frame
        hdr = (np.power(np.maximum(x, 1e-4), 2.2) * r.uniform(1.0, 4.0)).astype(np.float32)
        op = cv2.createTonemapReinhard(gamma=float(r.uniform(1.6, 2.6)), intensity=float(r.uniform(-1.5, 1.5)),
                                       light_adapt=float(r.uniform(0.0, 1.0)), color_adapt=float(r.uniform(0.0, 0.6)))
        y = op.process(np.ascontiguousarray(hdr[..., ::-1]))[..., ::-1]
        return np.clip(np.nan_to_num(y), 0, 1).astype(np.float32)
    if name == "autolevels":  # percentile stretch per channel + CLAHE on lightness
        lo_p, hi_p = r.uniform(0.0, 3.0), r.uniform(97.0, 100.0)
        lo, hi = np.percentile(x.reshape(-1, 3), [lo_p, hi_p], axis=0)
        y = np.clip((x - lo) / np.maximum(hi - lo, 1e-3), 0, 1)
        lab = cv2.cvtColor(_u8(y), cv2.COLOR_RGB2LAB)
        tiles = int(r.integers(4, 9))
        clahe = cv2.createCLAHE(clipLimit=float(r.uniform(1.0, 4.0)), tileGridSize=(tiles, tiles))
        lab[..., 0] = clahe.apply(lab[..., 0])
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).astype(np.float32) / 255
    if name == "awb":  # grey-world / white-patch mix with a random weight and percentile
        grey = x.reshape(-1, 3).mean(0)
        white = np.percentile(x.reshape(-1, 3), r.uniform(95, 99.9), axis=0)
        w = r.uniform(0, 1)
        est = w * grey / grey.mean() + (1 - w) * white / white.mean()
        gains = (1 / np.maximum(est, 1e-3)) ** r.uniform(0.5, 1.0)
        return np.clip(x * gains.astype(np.float32), 0, 1)
    if name == "dehaze":  # dark channel prior with random patch, strength and floor
        patch = int(r.integers(7, 16))
        airlight = np.percentile(x.reshape(-1, 3), 99.5, axis=0) * r.uniform(0.9, 1.0)
        dark = cv2.erode((x / np.maximum(airlight, 1e-3)).min(2), np.ones((patch, patch), np.uint8))
        trans = 1 - r.uniform(0.5, 0.95) * cv2.GaussianBlur(dark, (0, 0), patch)
        trans = np.maximum(trans, r.uniform(0.1, 0.3))[..., None]
        return np.clip((x - airlight) / trans + airlight, 0, 1).astype(np.float32)
    if name == "colorize":  # a colorization network's guess: chroma rescaled, shifted and a smooth colour cast
        lab = cv2.cvtColor(x, cv2.COLOR_RGB2LAB)  # float: L 0..100, a/b about -128..127
        ab = lab[..., 1:] * r.uniform(0.5, 1.6) + r.normal(0, 8, 2)
        ab += 10 * _smooth_field(r, x.shape[:2], (2, 3), 2)
        lab[..., 1:] = ab
        return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0, 1).astype(np.float32)
    if name == "stylize":
        y = cv2.stylization(_u8(x), sigma_s=float(r.uniform(10, 80)), sigma_r=float(r.uniform(0.15, 0.6)))
        return y.astype(np.float32) / 255
    if name == "edgepreserve":
        y = cv2.edgePreservingFilter(_u8(x), flags=int(r.choice([1, 2])), sigma_s=float(r.uniform(10, 100)),
                                     sigma_r=float(r.uniform(0.1, 0.6)))
        return y.astype(np.float32) / 255
    if name == "detail":
        y = cv2.detailEnhance(_u8(x), sigma_s=float(r.uniform(5, 40)), sigma_r=float(r.uniform(0.05, 0.3)))
        return y.astype(np.float32) / 255
    if name == "denoise":  # sensor noise, then a bilateral denoiser with random strength
        noisy = np.clip(x + r.normal(0, r.uniform(0.01, 0.04), x.shape).astype(np.float32), 0, 1)
        return cv2.bilateralFilter(noisy, int(r.integers(5, 10)), float(r.uniform(0.05, 0.2)),
                                   float(r.uniform(2, 8)))
    if name == "sharpen":  # unsharp mask with random radius and amount
        blur = cv2.GaussianBlur(x, (0, 0), float(r.uniform(0.8, 3.0)))
        return np.clip(x + r.uniform(0.3, 2.0) * (x - blur), 0, 1).astype(np.float32)
    if name == "img2img":  # fresh band-pass texture each frame, a slight re-rendering blur and colour drift
        noise = r.standard_normal(x.shape[:2]).astype(np.float32)
        band = cv2.GaussianBlur(noise, (0, 0), 0.8) - cv2.GaussianBlur(noise, (0, 0), float(r.uniform(1.5, 3.0)))
        band *= float(r.uniform(0.02, 0.06)) / max(float(band.std()), 1e-6)
        soft = cv2.GaussianBlur(x, (0, 0), float(r.uniform(0.3, 1.0)))
        tint = 1 + r.normal(0, 0.02, 3).astype(np.float32)
        return np.clip(soft * tint + band[..., None] * (0.5 + soft), 0, 1).astype(np.float32)
    raise ValueError(f"unknown process {name!r}; choose from {', '.join(PROCESSES)}")


# ---------------------------------------------------------------- the listing (data-free, deterministic)

def source_table() -> dict[str, tuple[str, str]]:
    """Source name -> (type, location relative to the data folder or 'skimage:NAME')."""
    table = {}
    for kind, sources in (("video", VIDEO_SOURCES), ("photo", PHOTO_SOURCES), ("processed", PROCESSED_SOURCES),
                          ("real", REAL_SOURCES)):
        table.update({name: (kind, where) for name, where in sources.items()})
    return table


def make_listing(seed: int = SPLIT_SEED) -> list[dict]:
    """Every case of the corpus: name, kind, source, source type, split and generator parameters."""
    rng = np.random.default_rng(seed)
    table = source_table()
    split: dict[str, str] = {}
    strata = sorted({(t, name in SEEN) for name, (t, _) in table.items()})
    for stratum in strata:  # each (source type, seen before) stratum is halved, rounding towards held-out
        members = [n for n, (t, _) in table.items() if (t, n in SEEN) == stratum]
        groups = sorted({SAME_SCENE.get(n, n) for n in members})
        order = [groups[i] for i in rng.permutation(len(groups))]
        held = set(order[: (len(order) + 1) // 2])
        for name in members:
            split[name] = "heldout" if SAME_SCENE.get(name, name) in held else "tune"
    cases = []
    for part in ("tune", "heldout"):
        synthetic = [n for n in table if split[n] == part and table[n][0] in ("video", "photo")]
        deck = [DECK[i] for i in rng.permutation(len(DECK))]
        slot = 0
        for name in synthetic:
            for _ in range(CASES_PER_SOURCE):
                kind = deck[slot % len(deck)]
                slot += 1
                case_seed = int(rng.integers(0, 2**31 - 1))
                params = {"seed": case_seed}
                if table[name][0] == "photo":
                    params["motion"] = str(rng.choice(["pan", "shake"]))
                cases.append({"name": f"{kind}/{name}", "kind": kind, "source": name, "source_type": table[name][0],
                              "split": part, "seen": SEEN.get(name, ""), "params": params})
        for name in (n for n in table if split[n] == part and table[n][0] in ("processed", "real")):
            kind = "shared-processed" if table[name][0] == "processed" else "real"
            cases.append({"name": f"{kind}/{name}", "kind": kind, "source": name, "source_type": table[name][0],
                          "split": part, "seen": SEEN.get(name, ""), "params": {}})
    return sorted(cases, key=lambda c: (c["split"], c["name"]))


def load_listing(path: Path = LISTING) -> list[dict]:
    return json.loads(path.read_text())["cases"]


def select(cases: list[dict], split: str | None = None, patterns: list[str] | None = None) -> list[dict]:
    return [c for c in cases if (split in (None, "all") or c["split"] == split)
            and (not patterns or any(fnmatch.fnmatch(c["name"], p) for p in patterns))]


# ---------------------------------------------------------------- building case videos into the cache

@dataclass
class CaseFiles:
    """Paths of one built case, in the roles of benchmarks/run.py's Case."""

    name: str
    kind: str
    input: Path
    reference: Path  # flow is computed on this (the clean clip where one exists, else the input)
    ground_truth: Path | None  # PSNR / SSIM / detail against this
    floor: Path | None  # a flicker-free version: the best reachable warping error


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(image.shape[:2])
    h, w = (round(image.shape[0] * min(scale, 1) / 2) * 2, round(image.shape[1] * min(scale, 1) / 2) * 2)
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def _read(path: Path, n_frames: int, side: int, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """First n_frames of a video or folder (folders: only the given frame names), fitted to `side`."""
    info = io.probe(path)
    frames, kept = [], []
    for index, frame in enumerate(io.read_frames(path, info)):
        name = Path(info.frame_names[index]).stem if info.is_folder else str(index)
        if names is not None and name not in names:
            continue
        frames.append(_fit(io.to_float(frame.image), side))
        kept.append(name)
        if len(frames) == n_frames:
            break
    return np.stack(frames), kept


def _photo(where: str, data: Path) -> np.ndarray:
    if where.startswith("skimage:"):
        import skimage.data

        image = getattr(skimage.data, where.split(":", 1)[1])()
    else:
        image = cv2.imread(str(data / where), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(data / where)
        image = image[..., ::-1]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, 2)
    return np.ascontiguousarray(image[..., :3])


def _photo_size(image: np.ndarray, side: int) -> tuple[int, int]:
    """Output (h, w): at most `side`, and at most 75 % of the photo so the move stays inside it."""
    h0, w0 = image.shape[:2]
    scale = min(side / max(h0, w0), 0.75)
    return round(h0 * scale / 2) * 2, round(w0 * scale / 2) * 2


def _write(frames, path: Path) -> None:
    frames = list(frames)
    h, w = frames[0].shape[:2]
    info = io.VideoInfo(path, False, w, h, len(frames), io.DEFAULT_FOLDER_FPS, "rgb24", 8, False, None)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with io.VideoWriter(tmp, info, overwrite=True) as writer:
        for frame in frames:
            writer.write(frame)
    tmp.replace(path)


def _clean_clip(case: dict, data: Path, n_frames: int, side: int) -> np.ndarray:
    stype, where = source_table()[case["source"]]
    if stype == "video":
        return _read(data / where, n_frames, side)[0]
    photo = _photo(where, data)
    return synth.camera_move_clip(photo, n_frames, _photo_size(photo, side), case["params"]["motion"],
                                  case["params"]["seed"])


def build(case: dict, data: Path = DATA, n_frames: int = FRAMES, side: int = SIDE,
          cache: Path | None = None) -> CaseFiles:
    """Write (once) the case's videos into the cache (default CACHE) and return their paths."""
    cache = CACHE if cache is None else cache
    key = hashlib.sha1(json.dumps([VERSION, case, n_frames, side], sort_keys=True).encode()).hexdigest()[:10]
    folder = cache / f"{case['name'].replace('/', '_')}-{n_frames}f-{side}-{key}"
    files = {role: folder / f"{role}.mkv" for role in ("input", "clean")}
    kind = case["kind"]
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        stype, where = source_table()[case["source"]]
        if kind == "shared-processed":
            src = data / where
            names = set(_stems(src / "input")) & set(_stems(src / "processed"))
            clean, kept = _read(src / "input", n_frames, side, names)
            processed, _ = _read(src / "processed", n_frames, side, set(kept))
            _write(clean, files["clean"])
            _write(processed, files["input"])
        elif kind == "real":
            _write(_read(data / where, n_frames, side)[0], files["input"])
        else:
            clean = _clean_clip(case, data, n_frames, side)
            _write(clean, files["clean"])
            seed = case["params"]["seed"]
            if kind.startswith("physical/"):
                flicker = synth.Flicker(synth.FLICKER_KINDS[kind.split("/")[1]](), seed % (2**31))
                _write((flicker.apply(t, f) for t, f in enumerate(clean)), files["input"])
                if kind == "physical/film":  # grain is the film's texture, not flicker: the truth keeps it
                    grain_only = synth.Flicker(synth.FLICKER_KINDS["film"](film_pump_sigma=0.0, film_jitter_sigma=0.0),
                                               seed % (2**31))
                    _write((grain_only.apply(t, f) for t, f in enumerate(clean)), folder / "truth.mkv")
            elif kind.startswith("processed/"):
                op = kind.split("/")[1]
                _write((process_frame(op, f, t, seed) for t, f in enumerate(clean)), files["input"])
            elif kind == "clean":
                _write(clean, files["input"])
            else:
                raise ValueError(f"unknown kind {kind!r}")
        (folder / "done").write_text(json.dumps(case))
    if kind == "real":
        return CaseFiles(case["name"], kind, files["input"], files["input"], None, None)
    if kind == "shared-processed" or kind.startswith("processed/"):
        return CaseFiles(case["name"], kind, files["input"], files["clean"], files["input"], files["clean"])
    if kind == "clean":
        return CaseFiles(case["name"], kind, files["input"], files["input"], files["input"], files["input"])
    if kind == "physical/film":  # flow on the clean clip; PSNR, detail and the floor: clean + the same grain
        return CaseFiles(case["name"], kind, files["input"], files["clean"], folder / "truth.mkv", folder / "truth.mkv")
    return CaseFiles(case["name"], kind, files["input"], files["clean"], files["clean"], files["clean"])


def _stems(folder: Path) -> list[str]:
    return [Path(n).stem for n in io.probe(folder).frame_names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="print the cases")
    action.add_argument("--build", action="store_true", help="generate the cases' videos into the cache")
    action.add_argument("--write-listing", action="store_true", help=f"regenerate {LISTING.name}")
    parser.add_argument("--split", choices=("tune", "heldout", "all"), default="all")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN", help="only cases matching these globs")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--frames", type=int, default=FRAMES)
    parser.add_argument("--side", type=int, default=SIDE)
    args = parser.parse_args(argv)
    if args.write_listing:
        cases = make_listing()
        LISTING.write_text(json.dumps({"version": VERSION, "split_seed": SPLIT_SEED, "cases": cases}, indent=1) + "\n")
        print(f"wrote {len(cases)} cases to {LISTING}")
        return 0
    cases = select(load_listing(), args.split, args.cases)
    for case in cases:
        if args.build:
            files = build(case, args.data, args.frames, args.side)
            print(f"{case['split']:8} {case['name']:45} {files.input}", flush=True)
        else:
            print(f"{case['split']:8} {case['name']:45} {case['params']}")
    print(f"{len(cases)} cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
