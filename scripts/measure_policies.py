"""Accuracy and latency of the fusion node's choices, on a trained model and held-out actors.

Measures, through the nodes' own processors (eval-bag offline):
  - reference time 'centre' vs 'start' (issue: latency and accuracy of both choices);
  - missing-modality policy 'skip' vs 'nearest', on a clean bag and on one where a fraction of
    the camera frames is blanked (a person looking away), so that segments lose their face.
The latency of a window has two parts: the audio look-ahead the reference time implies (the
window's audio closes d/2 after the reference: 0.5 s after the segment ends for 'centre', 0.25 s
for 'start' at T = 0.5 s) and the processing time measured by eval-bag.

Usage (after `make demo`, which leaves a corpus, a checkpoint and the held-out actors):
  bash scripts/loopback.sh .venv/bin/python scripts/measure_policies.py --demo demo-out
Writes policies.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.config import FeatureConfig
from lightmer.evaluation.bag_corpus import make_bag
from lightmer.evaluation.bags import default_labels_path
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.stream.settings import StreamSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--demo', type=Path, required=True, help='a `lightmer demo` output dir')
    parser.add_argument('--occlude', type=float, default=0.3,
                        help='fraction of frames blanked in the occluded bag')
    parser.add_argument('--min-segments', type=int, default=StreamSettings().min_segments)
    parser.add_argument('--out', type=Path, default=None, help='default: DEMO/policies')
    args = parser.parse_args(argv)

    demo = json.loads((args.demo / 'demo.json').read_text())
    checkpoint = args.demo / 'run' / 'uncertainty' / 'fold_0' / 'last.pt'
    out = args.out or args.demo / 'policies'
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bags = {}
    for name, occlude in (('clean', 0.0), (f'occluded_{args.occlude:g}', args.occlude)):
        bags[name] = out / f'bag_{name}'
        make_bag(demo['dataset_layout'], args.demo / 'corpus', bags[name],
                 actors=demo['test_actors'], gap_s=1.0, occlude=occlude, seed=0)

    half_window_s = FeatureConfig().window_s / 2
    rows = []
    for bag_name, bag in bags.items():
        for reference in ('centre', 'start'):
            for policy in ('skip', 'nearest'):
                settings = replace(StreamSettings(), reference=reference,
                                   missing_policy=policy, min_segments=args.min_segments)
                r = evaluate_bag(EvalConfig(
                    bag=bag, labels=default_labels_path(bag), checkpoint=checkpoint,
                    settings=settings, out=out / f'eval_{bag_name}_{reference}_{policy}'))
                segment_s = r['segment_s']
                look_ahead_s = half_window_s - (segment_s / 2 if reference == 'centre'
                                                else segment_s)
                rows.append({
                    'bag': bag_name, 'reference': reference, 'policy': policy,
                    'window_accuracy': r['window_accuracy'],
                    'clip_accuracy': r['clip_accuracy'], 'windows': r['windows'],
                    'counts': r['counts'],
                    'look_ahead_after_segment_end_ms': round(look_ahead_s * 1000),
                    'processing_latency_ms_p50': r['latency_ms']['p50'],
                })
    atomic_save_json(out / 'policies.json', {'checkpoint': str(checkpoint),
                                             'test_actors': demo['test_actors'], 'rows': rows})
    print('| bag | reference | policy | window acc | clip acc | windows | '
          'look-ahead after segment end | processing p50 |')
    print('|---|---|---|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f"| {r['bag']} | {r['reference']} | {r['policy']} | {r['window_accuracy']:.3f} | "
              f"{r['clip_accuracy']:.3f} | {r['windows']} | "
              f"{r['look_ahead_after_segment_end_ms']} ms | "
              f"{r['processing_latency_ms_p50']:.0f} ms |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
