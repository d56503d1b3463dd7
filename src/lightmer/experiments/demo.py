"""`lightmer demo`: the whole system end to end on generated data, with no downloads.

generate a CREMA-D-layout corpus -> prepare the cache (MTCNN crops, 16 kHz audio)
-> train with uncertainty sampling on one actor-disjoint fold (and, in the full demo, the
full-training baseline for the paper's Figs. 4-5 comparison) -> write a rosbag of the
held-out actors -> score it offline (the nodes' processors in-process) and live (the three
real nodes over DDS on loopback, sim time) -> report. With `robot`, one more stage: the
demo's model learns from a simulated robot's own people (`experiments.robot_sim`, quick size).

Every stage is a call into the same modules the CLI exposes; nothing here re-implements them.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lightmer.core.atomic_io import atomic_save_json
from lightmer.datasets.prepare import prepare
from lightmer.datasets.synth import synthesize
from lightmer.evaluation.bag_corpus import make_bag
from lightmer.evaluation.bags import default_labels_path
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.experiments.robot_sim import simulate_robot
from lightmer.experiments.stages import stage
from lightmer.harness.live_eval import evaluate_bag_live
from lightmer.training.train import TrainConfig, train

DATASET = 'crema-d'


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does. The corpus is small on purpose: it proves the pipeline."""

    actors: int                  # generated actors; one fold's worth are held out
    clips_per_emotion: int       # per actor and emotion
    epochs: int                  # training epochs (the initial D0 epoch included)
    n_uncertain: int             # N_u per epoch, scaled down with the corpus
    baseline: bool               # also train the full-training baseline (Figs. 4-5)
    # The paper's lr 1e-4 / batch 16 / 100 epochs is the CLI default; on a corpus of 60-120
    # clips and a few minutes of CPU, a larger step and smaller batches learn in 16-20 epochs.
    lr: float = 3e-4
    batch_size: int = 4
    n_folds: int = 5             # the split is the paper's 5-fold one; the demo trains fold 0
    playback_rate: float = 1.0   # live bag playback speed: real time, as a robot sees it
    # The bag's 1 s gaps between clips have no face, so a window never mixes two clips; the
    # nodes' own min_segments default lets the 1.4-3.2 s clips publish (see
    # docs/ROBOT_OPERATIONS.md, "Short utterances").
    gap_s: float = 1.0


SIZES = {
    'full': DemoSize(actors=10, clips_per_emotion=2, epochs=20, n_uncertain=8, baseline=True),
    'quick': DemoSize(actors=10, clips_per_emotion=1, epochs=16, n_uncertain=4,
                      baseline=False),
}


# What a demo folder holds: `run_demo` replaces a folder only when it looks like one.
_DEMO_ENTRIES = {'demo.json', 'corpus', 'cache', 'run', 'bag', 'eval_offline', 'eval_live',
                 'robot'}


def _check_replaceable(out: Path) -> None:
    """Refuse an --out that is a file, or a non-empty folder that is not an earlier demo's: the
    demo deletes what is there."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'{out} is a file; give --out a new or demo folder')
    if out.is_dir() and any(out.iterdir()) and not {p.name for p in out.iterdir()} & _DEMO_ENTRIES:
        raise FileExistsError(f'{out} is not a demo output (it holds other files) and would be '
                              'deleted; give --out a new or empty folder')


def run_demo(out: Path, quick: bool = False, robot: bool = False) -> dict:
    """Run every stage into `out` (created; an earlier demo there is replaced) and return the
    result that is also written to `out/demo.json`. `robot`: also the optional stage that
    fine-tunes the demo's model on a simulated robot's people (out/robot/)."""
    size = SIZES['quick' if quick else 'full']
    out = Path(out)
    _check_replaceable(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    corpus, cache, run, bag = out / 'corpus', out / 'cache', out / 'run', out / 'bag'
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    with stage('generate corpus (CREMA-D layout)', timings):
        print(synthesize(DATASET, corpus, actors=size.actors,
                         clips_per_emotion=size.clips_per_emotion, seed=0))
    with stage('prepare cache (MTCNN face crops, 16 kHz audio)', timings):
        print(prepare(DATASET, corpus, cache, workers=None))
    summaries = _train(size, cache, run, timings)
    fold_dir = run / 'uncertainty' / 'fold_0'
    split = json.loads((fold_dir / 'split.json').read_text())
    test_actors = sorted(split['actors']['test'])
    metrics = json.loads((fold_dir / 'metrics.json').read_text())
    with stage('rosbag of the held-out actors', timings):
        print(f'held-out actors: {test_actors}')
        print(make_bag(DATASET, corpus, bag, actors=test_actors, storage='mcap',
                       gap_s=size.gap_s))
    evals = _evaluate(bag, fold_dir / 'last.pt', out, size, timings)
    robot_result = None
    if robot:
        with stage("learn from a simulated robot's own people (pool, query, finetune)",
                   timings):
            robot_result = simulate_robot(out / 'robot', quick=True, base_from=out)
    pngs = _collect_pngs(out, fold_dir, run)
    result = {**_outcome(size, test_actors, metrics, evals, summaries, robot_result),
              'stage_s': timings, 'wall_s': round(time.perf_counter() - t_start, 1),
              'cpu_count': os.cpu_count(), 'pngs': pngs}
    atomic_save_json(out / 'demo.json', result)
    _print_report(result, out)
    return result


def _train(size: DemoSize, cache: Path, run: Path, timings: dict[str, float]) -> dict:
    """Fold 0 with uncertainty sampling (and, in the full demo, fully): strategy -> the train
    summary."""
    strategies = ('uncertainty', 'full') if size.baseline else ('uncertainty',)
    summaries = {}
    for strategy in strategies:
        with stage(f'train {strategy} (fold 0)', timings):
            cfg = TrainConfig.for_dataset(
                DATASET, cache=cache, out=run, strategy=strategy, n_folds=size.n_folds,
                fold=0, epochs=size.epochs, n_uncertain=size.n_uncertain, lr=size.lr,
                batch_size=size.batch_size, seed=0)
            summaries[strategy] = train(cfg)
    return summaries


def _evaluate(bag: Path, checkpoint: Path, out: Path, size: DemoSize,
              timings: dict[str, float]) -> dict:
    """The bag scored offline and through the live nodes: mode -> the eval-bag summary."""
    evals = {}
    for mode in ('offline', 'live'):
        with stage(f'evaluate the bag {mode}', timings):
            evaluate = evaluate_bag_live if mode == 'live' else evaluate_bag
            evals[mode] = evaluate(EvalConfig(
                bag=bag, labels=default_labels_path(bag), checkpoint=checkpoint,
                live=mode == 'live', out=out / f'eval_{mode}', rate=size.playback_rate))
            print(f"{mode}: window accuracy {evals[mode]['window_accuracy']:.3f}, "
                  f"clip accuracy {evals[mode]['clip_accuracy']:.3f}, "
                  f"{evals[mode]['windows']} windows")
    return evals


def _outcome(size: DemoSize, test_actors: list[str], metrics: list[dict], evals: dict,
             summaries: dict, robot_result: dict | None) -> dict:
    """What the demo found: accuracies (training's test split, the bag offline and live),
    live latency and counts, the train summaries and the robot stage's figures."""
    return {
        'dataset_layout': DATASET,
        'size': size.__dict__,
        'test_actors': test_actors,
        'chance': 1 / len(evals['offline']['labels']),
        'accuracy_offline': metrics[-1]['test_acc'],
        'accuracy_bag_offline': evals['offline']['clip_accuracy'],
        'accuracy_live': evals['live']['clip_accuracy'],
        'window_accuracy_offline': evals['offline']['window_accuracy'],
        'window_accuracy_live': evals['live']['window_accuracy'],
        'latency_ms': evals['live']['latency_ms'],
        'counts_live': evals['live']['counts'],
        'train_summary': summaries,
        'robot': None if robot_result is None else {
            k: robot_result[k] for k in ('zero_labels', 'curves', 'versus_random', 'goals',
                                         'png')},
    }


def _collect_pngs(out: Path, fold_dir: Path, run: Path) -> list[str]:
    """Copy the plots a person wants to look at to the top of `out`."""
    wanted = {
        'confusion_matrix.png': fold_dir / 'confusion.png',
        'loss_curve.png': fold_dir / 'loss.png',
        'accuracy_curve.png': fold_dir / 'accuracy.png',
        'latency_histogram.png': out / 'eval_live' / 'latency.png',
        'confusion_matrix_live.png': out / 'eval_live' / 'confusion.png',
    }
    if (run / 'comparison.png').is_file():
        wanted['uncertainty_vs_full.png'] = run / 'comparison.png'
    if (out / 'robot' / 'learning_curves.png').is_file():
        wanted['robot_learning_curves.png'] = out / 'robot' / 'learning_curves.png'
    copied = []
    for name, src in wanted.items():
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    return copied


def _print_report(result: dict, out: Path) -> None:
    lat = result['latency_ms']
    print('\n=== lightmer demo: results ===')
    print('(generated corpus: this proves the pipeline end to end, not real-world accuracy)')
    print(f"held-out actors             {', '.join(result['test_actors'])}")
    print(f"chance                      {result['chance']:.3f}")
    print(f"test accuracy, offline      {result['accuracy_offline']:.3f}")
    print(f"clip accuracy, bag offline  {result['accuracy_bag_offline']:.3f}")
    print(f"clip accuracy, live nodes   {result['accuracy_live']:.3f}")
    print(f"latency (live) p50 / p95    {lat['p50']:.0f} / {lat['p95']:.0f} ms")
    print('stage times (s)             ' +
          ', '.join(f'{k.split(" (")[0]} {v:.0f}' for k, v in result['stage_s'].items()))
    print(f"total                       {result['wall_s']:.0f} s")
    print(f"plots and JSON in {out}/: demo.json, {', '.join(result['pngs'])}")
