"""Windows from one modality: missing_policy skip / nearest / single on the held-out actors of a
`lightmer demo` run, clean and with the face missing from a share of the segments
(lightmer.experiments.missing_modality). Prints a markdown table and the goal check; writes
missing_modality.json and missing_modality.png under --out.

Usage (after `make demo`):
  nice -n 10 bash scripts/loopback.sh .venv/bin/python scripts/measure_missing_modality.py \
      --demo demo-out [--model dropout=path/to/model.pt] --out docs/missing_modality
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lightmer.experiments.missing_modality import Measurement, markdown, measure


def _model(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f'expected NAME=CHECKPOINT, got {text!r}')
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--demo', type=Path, required=True, help='a `lightmer demo` output dir')
    parser.add_argument('--model', type=_model, action='append', default=[],
                        help="NAME=CHECKPOINT, repeatable (default: the demo's model, "
                        'demo=DEMO/run/uncertainty/fold_0/last.pt)')
    parser.add_argument('--occlude', type=float, default=0.3,
                        help='share of camera frames blanked in the occluded bags')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                        help='one occluded bag per seed')
    parser.add_argument('--out', type=Path, default=None, help='default: DEMO/missing_modality')
    args = parser.parse_args(argv)

    demo = json.loads((args.demo / 'demo.json').read_text())
    models = dict(args.model) or {
        'demo': args.demo / 'run' / 'uncertainty' / 'fold_0' / 'last.pt'}
    summary = measure(Measurement(
        models=models, dataset=demo['dataset_layout'], corpus=args.demo / 'corpus',
        actors=demo['test_actors'], out=args.out or args.demo / 'missing_modality',
        occlude=args.occlude, seeds=tuple(args.seeds)))
    print(markdown(summary))
    print(json.dumps(summary['goal'], indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
