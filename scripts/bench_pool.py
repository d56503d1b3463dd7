"""Benchmark of the active-learning data path: pool throughput and query time.

    .venv/bin/python scripts/bench_pool.py [--out DIR] [--windows 10000] [--bag B --checkpoint M]

1. Pool throughput: `lightmer pool` over a bag (by default a make-bag bag of a generated
   corpus, 2 actors x 6 emotions, and an untrained model: pooling costs the same whatever the
   weights), in seconds of recording per wall second. MTCNN on one frame per segment dominates.
2. Query time over `--windows` windows: the pooled recording is replicated under other
   recording ids until the pool holds that many windows, then `lightmer query` (the default
   strategy, `--strategy` to change it) runs twice with a checkpoint the pool has not seen:
   cold (every segment's logits and embeddings computed and cached, the pauses found in the
   audio, the clusters drawn) and warm (the cache read: what re-ranking costs).
3. Adapt time over the same pool (`lightmer adapt`: every segment read and forwarded once to
   re-estimate the BatchNorm statistics). Prints JSON with the load average it ran under and
   writes it to DIR/bench_pool.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from lightmer.active.adapt import AdaptConfig, adapt
from lightmer.active.pool import PoolConfig, build_pool
from lightmer.active.query import QueryConfig, run_query
from lightmer.active.selection import DEFAULT_STRATEGY, STRATEGIES
from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.model import LightmerNet
from lightmer.datasets.synth import synthesize
from lightmer.evaluation.bag_corpus import make_bag
from lightmer.stream.settings import StreamSettings


def _untrained(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    meta = meta_for_preset('crema-d', dataset='bench')
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path


def _replicate(pool: Path, windows: int) -> int:
    """Copies of the pool's first recording under new ids until `windows` windows."""
    index = json.loads((pool / 'pool.json').read_text())
    rec = index['recordings'][0]
    info = json.loads((pool / 'recordings' / rec / 'recording.json').read_text())
    per = info['windows']
    copies = [rec]
    for i in range(1, -(-windows // per)):
        new = f'{rec}-copy{i:04d}'
        if not (pool / 'recordings' / new).exists():
            # Hard links: the copies cost no disk (they are only read).
            shutil.copytree(pool / 'recordings' / rec, pool / 'recordings' / new,
                            copy_function=os.link)
            info['id'] = new
            (pool / 'recordings' / new / 'recording.json').unlink()
            (pool / 'recordings' / new / 'recording.json').write_text(json.dumps(info))
        copies.append(new)
    index['recordings'] = copies
    (pool / 'pool.json').write_text(json.dumps(index))
    return per * len(copies)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', type=Path, default=Path('demo-out/bench_pool'))
    p.add_argument('--windows', type=int, default=10_000)
    p.add_argument('--bag', type=Path, default=None)
    p.add_argument('--checkpoint', type=Path, default=None)
    p.add_argument('--threads', type=int, default=2, help='torch threads')
    p.add_argument('--strategy', choices=STRATEGIES, default=DEFAULT_STRATEGY)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or _untrained(out / 'untrained.pt', 0)
    bag = args.bag
    if bag is None:
        corpus, bag = out / 'corpus', out / 'bag'
        if not bag.exists():
            synthesize('crema-d', corpus, actors=2, clips_per_emotion=1, seed=0)
            make_bag('crema-d', corpus, bag)
    pool = out / 'pool'
    shutil.rmtree(pool, ignore_errors=True)
    pooled = build_pool(PoolConfig(bags=(bag,), checkpoint=checkpoint, out=pool,
                                   settings=StreamSettings(min_segments=3),
                                   threads=args.threads))

    n = _replicate(pool, args.windows)
    other = _untrained(out / 'other.pt', 1)
    timings = {}
    for run in ('cold', 'warm'):
        t0, c0 = time.perf_counter(), time.process_time()
        manifest = run_query(QueryConfig(pool=pool, checkpoint=other, n=20,
                                         strategy=args.strategy, threads=args.threads,
                                         out=out / f'batch_{run}.json'))
        # CPU seconds of this process: the work done, which other load on the machine
        # stretches in wall time but barely changes (alone, wall ~ cpu / threads busy).
        timings[run] = {'wall_s': time.perf_counter() - t0,
                        'cpu_s': time.process_time() - c0, **manifest['seconds']}
    t0 = time.perf_counter()
    adapted = adapt(AdaptConfig(checkpoint=other, pool=pool, out=out / 'adapted.pt'))
    adapt_s = {'wall_s': time.perf_counter() - t0, **adapted['seconds']}
    result = {
        'machine': {'cpus': os.cpu_count(), 'torch_threads': args.threads,
                    'python': sys.version.split()[0], 'torch': torch.__version__,
                    'load_average_1_5_15': os.getloadavg()},
        'pool': {'recording_s': pooled['recording_s'], 'wall_s': pooled['elapsed_s'],
                 'recording_s_per_s': pooled['recording_s_per_s'],
                 'segments': pooled['segments'], 'windows': pooled['windows']},
        'query': {'windows': n, 'segments': pooled['segments'] * (n // pooled['windows']),
                  'strategy': args.strategy, 'rule': manifest['rule'],
                  'picked': manifest['n_selected'], **timings},
        'adapt': {'segments': adapted['segments'], **adapt_s},
    }
    (out / 'bench_pool.json').write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
