"""Where the first query's time goes: the networks per segment with the plain model and with
`core.model.inference_copy`, interleaved, and cold queries with fresh checkpoints.

    .venv/bin/python scripts/measure_query_speed.py --pool demo-out/bench_pool/pool

POOL: a pool to query (`scripts/bench_pool.py` leaves one of 10,047 windows in
OUT/pool). Prints JSON with wall and CPU seconds and the load average before and after, and
writes it beside the pool (query_speed.json). Fresh untrained checkpoints are written into
the pool's parent folder, so every query here is a first query.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lightmer.active.pool import Pool, checkpoint_key
from lightmer.active.query import QueryConfig, compute_segment_outputs, run_query
from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.model import LightmerNet, inference_copy


def _fresh(path: Path, seed: int) -> tuple[Path, LightmerNet]:
    torch.manual_seed(seed)
    meta = meta_for_preset('crema-d', dataset='measure')
    model = LightmerNet(meta.model)
    save_checkpoint(path, model, meta)
    return path, model.eval()


def _per_segment(model, crops, mels) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    compute_segment_outputs(model, crops, mels)
    return {'wall_ms': (time.perf_counter() - t0) / len(crops) * 1e3,
            'cpu_ms': (time.process_time() - c0) / len(crops) * 1e3}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--pool', type=Path, required=True)
    p.add_argument('--segments', type=int, default=2000, help='segments per network timing')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.pool.parent
    result: dict = {'load_before': os.getloadavg(), 'threads': args.threads}
    base = time.time_ns() % 2**31           # new weights each run: no logits cached for them
    for seed, strategy in ((base, 'staged'), (base + 1, 'uncertainty')):
        ckpt, _ = _fresh(out / f'fresh{strategy}.pt', seed)
        if (args.pool / 'logits' / checkpoint_key(ckpt)).exists():
            raise SystemExit(f'{ckpt} is cached in the pool already: not a first query')
        t0, c0 = time.perf_counter(), time.process_time()
        m = run_query(QueryConfig(pool=args.pool, checkpoint=ckpt, n=20, strategy=strategy,
                                  threads=args.threads, out=out / f'fresh{strategy}.json'))
        result[f'first_query_{strategy}'] = {
            'windows': m['windows'], 'wall_s': time.perf_counter() - t0,
            'cpu_s': time.process_time() - c0, **m['seconds']}
    pool = Pool(args.pool)
    rows = np.arange(min(args.segments, len(pool.table.seg_k)))
    crops, mels = pool.segment_inputs(rows)
    _, model = _fresh(out / 'fresh_networks.pt', base + 2)
    fast = inference_copy(model)
    for _ in range(args.repeats):              # interleaved: both see the same load
        for name, net in (('plain', model), ('inference_copy', fast)):
            result.setdefault(f'networks_{name}', []).append(_per_segment(net, crops, mels))
    result['segments_timed'] = len(rows)
    result['load_after'] = os.getloadavg()
    (out / 'query_speed.json').write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
