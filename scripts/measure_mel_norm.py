"""Test accuracy with the two log-mel normalisations (per window vs training-set dB statistics).

On a generated corpus in the CREMA-D layout: prepare once, then train the full baseline with
`--mel-norm window` and `--mel-norm dataset` on the same actor-disjoint folds and seeds, and
compare the final test accuracies fold by fold. The generated voices vary their level per clip
at random (not per emotion), so this measures what the option costs or gains where level
carries no emotion; real corpora (RAVDESS: angry speech ~13 dB louder than neutral) differ.

Usage:
  .venv/bin/python scripts/measure_mel_norm.py --out mel-norm-out [--actors 8] [--epochs 20]
Writes OUT/mel_norm.json and OUT/mel_norm.png, and prints a markdown table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.plots import plot_grouped_bars
from lightmer.datasets.prepare import prepare
from lightmer.datasets.synth import synthesize
from lightmer.training.train import TrainConfig, train

NORMS = ('window', 'dataset')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--actors', type=int, default=8)
    parser.add_argument('--clips-per-emotion', type=int, default=2)
    parser.add_argument('--folds', type=int, default=4)
    parser.add_argument('--train-folds', type=int, default=None,
                        help='train only the first K of the folds (default: all)')
    parser.add_argument('--epochs', type=int, default=20)
    parser.add_argument('--lr', type=float, default=3e-4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    corpus, cache = args.out / 'corpus', args.out / 'cache'
    if not (corpus / 'VideoFlash').is_dir():
        print(synthesize('crema-d', corpus, actors=args.actors,
                         clips_per_emotion=args.clips_per_emotion, seed=args.seed))
    print(prepare('crema-d', corpus, cache))
    result = {'corpus': {'layout': 'crema-d', 'actors': args.actors,
                         'clips_per_emotion': args.clips_per_emotion},
              'settings': {'strategy': 'full', 'folds': args.folds, 'epochs': args.epochs,
                           'lr': args.lr, 'seed': args.seed,
                           'trained_folds': args.train_folds or args.folds}, 'runs': {}}
    for norm in NORMS:
        t0 = time.perf_counter()
        for fold in range(args.train_folds or args.folds):
            cfg = TrainConfig.for_dataset(
                'crema-d', cache=cache, out=args.out / f'run_{norm}', strategy='full',
                n_folds=args.folds, fold=fold, epochs=args.epochs, lr=args.lr, seed=args.seed,
                mel_norm=norm, resume=True)
            summary = train(cfg)        # over the folds finished so far
        result['runs'][norm] = {'test_acc_per_fold': summary['test_acc_per_fold'],
                                'test_acc_mean': summary['test_acc_mean'],
                                'test_acc_std': summary['test_acc_std'],
                                'seconds': time.perf_counter() - t0}
    a, b = (np.array(result['runs'][n]['test_acc_per_fold']) for n in NORMS)
    result['dataset_minus_window_per_fold'] = (b - a).tolist()
    result['dataset_minus_window_mean'] = float((b - a).mean())
    atomic_save_json(args.out / 'mel_norm.json', result)
    plot_grouped_bars(
        {f"{n} (mean {result['runs'][n]['test_acc_mean']:.3f})":
         result['runs'][n]['test_acc_per_fold'] for n in NORMS},
        [f'fold {k}' for k in range(len(a))], args.out / 'mel_norm.png',
        'log-mel normalisation, generated CREMA-D layout', 'final test accuracy')

    n = len(result['runs'][NORMS[0]]['test_acc_per_fold'])
    print('| mel_norm | ' + ' | '.join(f'fold {k}' for k in range(n)) + ' | mean |')
    print('|---|' + '---:|' * (n + 1))
    for norm in NORMS:
        r = result['runs'][norm]
        print(f'| {norm} | ' + ' | '.join(f'{x:.3f}' for x in r['test_acc_per_fold'])
              + f" | {r['test_acc_mean']:.3f} |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
