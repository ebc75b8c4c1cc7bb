"""Short clips (the first N frames of corpus cases): the atlas's default steps (capped at GridOptions.max_visits
renderings per frame) against 250 steps given explicitly.

    python benchmarks/short_spans.py N CASE [CASE ...]   # JSON lines on stdout
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import unflicker  # noqa: E402
from refined import read_video  # noqa: E402
from unflicker.evaluation import Evaluator  # noqa: E402

out_dir = Path(__file__).resolve().parent / '.cache' / 'short'
out_dir.mkdir(parents=True, exist_ok=True)
names = sys.argv[2:]
N = int(sys.argv[1])
cases = [c for c in corpus.load_listing() if c['name'] in names]
for case in cases:
    files = corpus.build(case)
    tag = case['name'].replace('/', '_') + f'_{N}'
    paths = {}
    for role in ('input', 'reference', 'ground_truth'):
        p = getattr(files, role)
        if p is None: continue
        dst = out_dir / f'{tag}_{role}.mkv'
        if not dst.exists(): corpus._write(read_video(p)[:N], dst)
        paths[role] = dst
    ev = Evaluator(paths['reference'], paths.get('ground_truth'), like=paths['input'], long_term=min(5, N - 1), max_side=480)
    I = read_video(paths['input'])
    row = {'case': case['name'], 'N': N}
    for variant, opts in (('capped', {}), ('250', {'atlas_steps': 250})):
        t = time.perf_counter()
        out = unflicker.deflicker(I, method='neural', progress=False, **opts)
        row[variant + '_s'] = round(time.perf_counter() - t, 1)
        dst = out_dir / f'{tag}_{variant}.mkv'
        corpus._write(out, dst)
        sc = ev.score(dst)
        row[variant] = {k: round(sc[k], 4) for k in ('warp_error', 'psnr', 'detail') if k in sc}
    row['input'] = {k: round(v, 4) for k, v in ev.score(paths['input']).items() if k in ('warp_error', 'psnr', 'detail')}
    print(json.dumps(row), flush=True)
