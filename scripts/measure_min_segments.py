"""How many of a window's N segments must exist before the fusion node publishes: accuracy
against coverage on short utterances, in both dataset layouts.

For each layout (CREMA-D: N = 5, T = 0.5 s; RAVDESS: N = 12, T = 0.6 s) this generates a corpus
of short clips, prepares it, trains one actor-disjoint fold with the demo's recipe, writes bags
of the held-out actors (clips on one timeline, gaps without a face between them), and evaluates
each bag offline (the nodes' own processors) for each min_segments value. Two gaps: 1 s (as
`make-bag` and the demo lay clips: a window early in a clip may still hold the previous clip's
last segments) and N*T + T ('isolated': every window sees one clip only, as an utterance after
a long silence). Reported per value: window and clip accuracy, windows, clips without any
window (coverage), and the time from a clip's start to its first window.

Usage (two cores: about an hour; each stage is skipped when its output exists):
  bash scripts/loopback.sh .venv/bin/python scripts/measure_min_segments.py --out runs/min_seg
Writes OUT/min_segments.json and OUT/min_segments.png and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.config import PRESETS
from lightmer.core.plots import save_figure
from lightmer.datasets.prepare import prepare
from lightmer.datasets.synth import synthesize
from lightmer.evaluation.bag_corpus import make_bag
from lightmer.evaluation.bags import default_labels_path, read_labels
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.stream.settings import StreamSettings
from lightmer.training.train import TrainConfig, train

VALUES = {'crema-d': (1, 2, 3, 4, 5), 'ravdess': (1, 2, 3, 4, 6, 8, 12)}
ACTORS, CLIPS_PER_EMOTION, EPOCHS, N_UNCERTAIN = 10, 2, 20, 8


def build_model(layout: str, out: Path) -> tuple[Path, list[str], Path]:
    """Corpus, cache and one trained fold (skipped when done). Returns (checkpoint, held-out
    actors, corpus)."""
    corpus, cache, run = out / 'corpus', out / 'cache', out / 'run'
    if not (corpus / '.done').is_file():
        print(synthesize(layout, corpus, actors=ACTORS, clips_per_emotion=CLIPS_PER_EMOTION,
                         seed=0))
        (corpus / '.done').write_text('')
    if not (cache / 'index.json').is_file():
        print(prepare(layout, corpus, cache, workers=None))
    fold = run / 'uncertainty' / 'fold_0'
    if not (fold / 'last.pt').is_file():
        train(TrainConfig.for_dataset(layout, cache=cache, out=run, strategy='uncertainty',
                                      n_folds=5, fold=0, epochs=EPOCHS,
                                      n_uncertain=N_UNCERTAIN, lr=3e-4, batch_size=4, seed=0))
    split = json.loads((fold / 'split.json').read_text())
    return fold / 'last.pt', sorted(split['actors']['test']), corpus


def first_window_delays(windows: list[dict], rows) -> list[float]:
    """Seconds from each clip's start to the stamp of its first window (clips with one)."""
    stamps = np.array(sorted(w['stamp_s'] for w in windows))
    out = []
    for r in rows:
        inside = stamps[(stamps >= r.start) & (stamps <= r.end)]
        if inside.size:
            out.append(float(inside[0] - r.start))
    return out


def measure(layout: str, out: Path) -> list[dict]:
    checkpoint, test_actors, corpus = build_model(layout, out)
    preset = PRESETS[layout]
    results = []
    for gap_name, gap_s in (('1s', 1.0),
                            ('isolated', (preset.n_segments + 1) * preset.segment_s)):
        results += measure_bag(layout, out, checkpoint, test_actors, corpus, gap_name, gap_s)
    return results


def measure_bag(layout, out, checkpoint, test_actors, corpus, gap_name, gap_s) -> list[dict]:
    bag = out / f'bag_gap_{gap_name}'
    if not bag.exists():
        print(make_bag(layout, corpus, bag, actors=test_actors, gap_s=gap_s))
    labels = default_labels_path(bag)
    rows = read_labels(labels)
    durations = [r.end - r.start for r in rows]
    results = []
    for m in VALUES[layout]:
        eval_dir = out / f'eval_gap_{gap_name}_min{m}'
        r = evaluate_bag(EvalConfig(bag=bag, labels=labels, checkpoint=checkpoint,
                                    settings=StreamSettings(min_segments=m), out=eval_dir))
        windows = json.loads((eval_dir / 'windows.json').read_text())
        delays = first_window_delays(windows, rows)
        results.append({
            'layout': layout, 'gap': gap_name, 'gap_s': round(gap_s, 2),
            'min_segments': m, 'n_segments': r['n_segments'],
            'segment_s': r['segment_s'], 'window_accuracy': r['window_accuracy'],
            'clip_accuracy': r['clip_accuracy'], 'windows': r['windows'],
            'clips': r['clips'], 'clips_without_windows': r['clips_without_windows'],
            'coverage': 1 - r['clips_without_windows'] / r['clips'],
            'first_window_s_median': float(np.median(delays)) if delays else None,
            'clip_duration_s': [round(min(durations), 2), round(max(durations), 2)],
        })
        print(results[-1], flush=True)
    return results


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # only for the figure: the measurement runs without it

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for layout in VALUES:
        for gap in ('1s', 'isolated'):
            mine = [r for r in rows if r['layout'] == layout and r['gap'] == gap]
            if not mine:
                continue
            m = [r['min_segments'] for r in mine]
            axes[0].plot(m, [r['clip_accuracy'] for r in mine], 'o-',
                         label=f'{layout}, gap {gap}: clip')
            axes[0].plot(m, [r['window_accuracy'] or 0 for r in mine], 's--',
                         label=f'{layout}, gap {gap}: window')
            axes[1].plot(m, [r['coverage'] for r in mine], 'o-', label=f'{layout}, gap {gap}')
    axes[0].set(xlabel='min_segments', ylabel='accuracy', title='accuracy (clips without a '
                'window count wrong)')
    axes[1].set(xlabel='min_segments', ylabel='clips with >= 1 window', title='coverage',
                ylim=(0, 1.05))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--layouts', nargs='+', default=list(VALUES), choices=list(VALUES))
    args = parser.parse_args(argv)
    rows = []
    for layout in args.layouts:
        rows += measure(layout, args.out / layout)
    atomic_save_json(args.out / 'min_segments.json', {'rows': rows})
    plot(rows, args.out / 'min_segments.png')
    print('| layout | gap | min_segments | window acc | clip acc | windows | clips without a '
          'window | first window after clip start (median) |')
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        first = r['first_window_s_median']
        print(f"| {r['layout']} | {r['gap']} | {r['min_segments']}/{r['n_segments']} | "
              f"{r['window_accuracy'] or 0:.3f} | {r['clip_accuracy']:.3f} | {r['windows']} | "
              f"{r['clips_without_windows']}/{r['clips']} | "
              f"{'-' if first is None else f'{first:.2f} s'} |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
