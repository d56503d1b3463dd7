"""`lightmer simulate-robot`: does learning from a robot's own people work, and which windows
should people label? A simulation on the generated corpus, through the real commands.

1. Base model: generated actors recorded in the studio, trained as `lightmer train` does
   (or the model of an earlier `lightmer demo`, `base_from`).
2. The robot's people: other generated actors (other faces placements and voices) recorded
   under a domain shift (`ROBOT_SHIFT`: another camera and another room), in two sessions per
   person laid into bags with `make-bag`: the pool session(s) and a held-out session.
3. `lightmer pool` over every bag with the base model.
4. `lightmer finetune` per strategy (uncertainty, margin, random) and seed: rounds of
   `per_round` windows from the pool sessions, answered from each bag's labels CSV (the
   `bag-labels` oracle writes them to an answers file as a person would), evaluated on every
   window of the held-out sessions.
5. Learning curves: held-out window accuracy against the number of windows asked, mean and
   spread (min-max) over the seeds, PNG + JSON; the goals checked; forgetting measured on the
   base model's own held-out actors with and without mixing in its training cache.

The seeds vary the fine-tuning (the random strategy's draws, batch order, dropout, the mixed
clips), not the people or the base model: one base model and one pool, so the strategies are
compared on the same data.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lightmer.active.finetune import FinetuneConfig, finetune
from lightmer.active.pool import PoolConfig, build_pool, recording_id
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.plots import plot_label_curves
from lightmer.core.uncertainty import entropy_bits
from lightmer.datasets.cache import SegmentDataset
from lightmer.datasets.prepare import prepare
from lightmer.datasets.synth import DomainShift, synthesize
from lightmer.evaluation.bag_corpus import make_bag
from lightmer.experiments.robot_world import DATASET, PEOPLE_FIRST_ACTOR, split_sessions
from lightmer.experiments.stages import stage as _stage
from lightmer.stream.settings import StreamSettings
from lightmer.training.train import TrainConfig, predict, train

# The robot's camera and room (see DomainShift): dimmer, flatter light, faces 2/3 the size,
# sensor noise, heads rolled up to 12 degrees and turned; a reverberant room with fan-like
# noise 10 dB below the speech and a microphone gain that clips loud peaks.
ROBOT_SHIFT = DomainShift(light=0.6, contrast=0.7, face_scale=0.65, pixel_noise=6.0,
                          head_roll_deg=12.0, head_turn=0.25, reverb_s=0.5, noise_snr_db=10.0,
                          mic_gain=2.0)


@dataclass(frozen=True)
class SimSize:
    base_actors: int          # studio actors of the base model (10: the demo's corpus)
    base_clips: int           # per actor and emotion
    base_epochs: int
    people: int               # the robot's people
    pool_clips: int           # per person and emotion, in the pool session
    eval_clips: int           # per person and emotion, in the held-out session
    budgets: tuple[int, ...]  # windows asked at which accuracy is reported
    seeds: tuple[int, ...]
    strategies: tuple[str, ...] = ('uncertainty', 'margin', 'random')
    per_round: int = 12
    epochs: int = 4           # fine-tuning passes per round (FinetuneConfig.epochs)
    mix: float = 1.0          # base clips per labelled window (FinetuneConfig.mix)
    # The demo's training recipe for the base model (demo.DemoSize).
    base_lr: float = 3e-4
    base_batch: int = 4
    min_segments: int = 3     # as the demo's bag evaluation: generated clips last 1.4-3.2 s
    gap_s: float = 1.0


SIZES = {
    'full': SimSize(base_actors=10, base_clips=2, base_epochs=20, people=4, pool_clips=3,
                    eval_clips=2, budgets=(12, 24, 48, 96), seeds=(0, 1, 2)),
    'quick': SimSize(base_actors=10, base_clips=1, base_epochs=16, people=3, pool_clips=2,
                     eval_clips=1, budgets=(12, 24, 48), seeds=(0,)),
}


# --- data ------------------------------------------------------------------------------------
def _base_model(out: Path, size: SimSize, base_from: Path | None, timings: dict) -> dict:
    """{'checkpoint', 'cache', 'train_clips', 'test_clips'} of the base model."""
    if base_from is not None:
        fold = Path(base_from) / 'run' / 'uncertainty' / 'fold_0'
        cache = Path(base_from) / 'cache'
    else:
        fold = out / 'base_run' / 'full' / 'fold_0'
        cache = out / 'base_cache'
        if not (fold / 'result.json').is_file():
            with _stage('base model: studio corpus, cache, training', timings):
                corpus = out / 'base_corpus'
                print(synthesize(DATASET, corpus, actors=size.base_actors,
                                 clips_per_emotion=size.base_clips, seed=0))
                print(prepare(DATASET, corpus, cache, workers=None))
                train(TrainConfig.for_dataset(
                    DATASET, cache=cache, out=out / 'base_run', strategy='full', fold=0,
                    epochs=size.base_epochs, lr=size.base_lr, batch_size=size.base_batch,
                    seed=0, resume=True))
    split = json.loads((fold / 'split.json').read_text(encoding='utf-8'))
    checkpoint = fold / 'last.pt'
    if not checkpoint.is_file():
        raise FileNotFoundError(f'no base model at {checkpoint}; run `lightmer demo` into '
                                f'{base_from} first, or leave out --base-from')
    return {'checkpoint': checkpoint, 'cache': cache,
            'train_clips': split['clips']['d0'] + split['clips']['pool'],
            'test_clips': split['clips']['test']}


def _people_bags(out: Path, size: SimSize, timings: dict) -> dict[str, list[Path]]:
    """{'pool': bags, 'eval': bags}: one bag per person and session."""
    corpus = out / 'people_corpus'
    bags_dir = out / 'bags'
    done = bags_dir / 'done.json'
    if done.is_file():
        d = json.loads(done.read_text(encoding='utf-8'))
        return {k: [Path(p) for p in v] for k, v in d.items()}
    with _stage("the robot's people: shifted corpus and session bags", timings):
        print(synthesize(DATASET, corpus, actors=size.people,
                         clips_per_emotion=size.pool_clips + size.eval_clips, seed=0,
                         first_actor=PEOPLE_FIRST_ACTOR, shift=ROBOT_SHIFT))
        roots = split_sessions(corpus, out / 'sessions', size.eval_clips)
        shutil.rmtree(bags_dir, ignore_errors=True)
        people = [str(1001 + PEOPLE_FIRST_ACTOR + i) for i in range(size.people)]
        made: dict[str, list[Path]] = {'pool': [], 'eval': []}
        for session, root in roots.items():
            for person in people:
                bag = bags_dir / f'{session}_{person}'
                print(make_bag(DATASET, root, bag, actors=[person], gap_s=size.gap_s))
                made[session].append(bag)
    atomic_save_json(done, {k: [str(p) for p in v] for k, v in made.items()})
    return made


# --- runs ------------------------------------------------------------------------------------
def _finetune_run(out: Path, size: SimSize, base: dict, pool: Path, eval_bags: list[Path],
                  strategy: str, seed: int, mix: float) -> dict:
    run = _run_dir(out, strategy, seed, '' if mix == size.mix else f'_mix{mix:g}')
    if (run / 'report.json').is_file():
        return json.loads((run / 'report.json').read_text(encoding='utf-8'))
    return finetune(FinetuneConfig(
        checkpoint=base['checkpoint'], pool=pool, answers=run / 'answers.csv', out=run,
        base_cache=base['cache'], base_clips=tuple(base['train_clips']),
        rounds=max(size.budgets) // size.per_round, per_round=size.per_round,
        strategy=strategy, oracle='bag-labels', eval_windows=10**9,
        eval_recordings=tuple(str(b) for b in eval_bags), mix=mix, epochs=size.epochs,
        seed=seed, resume=True, progress=False))


def _run_dir(out: Path, strategy: str, seed: int, suffix: str = '') -> Path:
    return out / 'runs' / f'{strategy}_seed{seed}{suffix}'


def _studio_accuracy(checkpoint: Path, cache: Path, clips: list[str]) -> float:
    """Clip accuracy on the base model's own held-out actors (the `train` test protocol)."""
    model, meta = load_checkpoint(checkpoint)
    data = SegmentDataset(cache, clips, n_segments=meta.n_segments, labels=meta.labels,
                          train=False, seed=0)
    probs, true = predict(model, data, 16, torch.device('cpu'), desc='studio test')
    return float((probs.argmax(1) == true).mean())


def _curves(reports: dict[tuple[str, int], dict], size: SimSize) -> dict:
    """strategy -> {'labels', 'mean', 'low', 'high', 'std', 'per_seed'} at 0 + budgets."""
    xs = [0, *size.budgets]
    curves = {}
    for strategy in size.strategies:
        per_seed = []
        for seed in size.seeds:
            by_asked = {m['asked'] if m['round'] else 0: m['accuracy']
                        for m in reports[strategy, seed]['rounds']}
            per_seed.append([by_asked[x] for x in xs])
        a = np.array(per_seed, dtype=np.float64)                 # (seeds, budgets)
        curves[strategy] = {'labels': xs, 'mean': a.mean(0).tolist(), 'low': a.min(0).tolist(),
                            'high': a.max(0).tolist(), 'std': a.std(0).tolist(),
                            'per_seed': a.tolist()}
    return curves


def _picks(out: Path, size: SimSize) -> dict:
    """What each strategy asked for, over seeds, up to the largest budget: the answers'
    class counts, the share of `skip` answers, mean segments per window, mean entropy."""
    result = {}
    for strategy in size.strategies:
        items = []
        for seed in size.seeds:
            for r in range(1, max(size.budgets) // size.per_round + 1):
                batch = _run_dir(out, strategy, seed) / f'round_{r}' / 'batch.json'
                items += json.loads(batch.read_text(encoding='utf-8'))['items']
        answers = [it['answer'] for it in items]
        result[strategy] = {
            'answers': {a: answers.count(a) for a in sorted(set(answers))},
            'segments_present_mean': float(np.mean([it['segments_present'] for it in items])),
            'entropy_bits_mean': float(np.mean(entropy_bits(
                np.array([it['probs'] for it in items])))),
            'predicted_share_of_top_class': max(
                [it['predicted'] for it in items].count(c) for c in
                {it['predicted'] for it in items}) / len(items)}
    return result


def _pool_sessions(out: Path, size: SimSize, base: dict, made: dict[str, list[Path]],
                   timings: dict) -> dict:
    """`lightmer pool` of every session bag through the base model into out/pool."""
    with _stage('pool every session bag through the base model', timings):
        return build_pool(PoolConfig(bags=tuple(made['pool'] + made['eval']),
                                     checkpoint=base['checkpoint'], out=out / 'pool',
                                     settings=StreamSettings(min_segments=size.min_segments)))


def _finetune_all(out: Path, size: SimSize, base: dict, eval_bags: list[Path], timings: dict
                  ) -> dict[tuple[str, int], dict]:
    """(strategy, seed) -> the report of its `lightmer finetune` run."""
    reports = {}
    for strategy in size.strategies:
        for seed in size.seeds:
            with _stage(f'finetune {strategy} seed {seed}', timings):
                reports[strategy, seed] = _finetune_run(out, size, base, out / 'pool',
                                                        eval_bags, strategy, seed, size.mix)
    return reports


def _forgetting(out: Path, size: SimSize, base: dict, eval_bags: list[Path], mixed: dict,
                timings: dict) -> tuple[dict, dict]:
    """The first strategy and seed run again without mixing in the studio cache; and the
    studio accuracy of the base model, the mixed run's and that one's.
    -> (the unmixed run's report, {name: studio accuracy})."""
    with _stage('forgetting: the same run without mixing in the studio cache', timings):
        no_mix = _finetune_run(out, size, base, out / 'pool', eval_bags, size.strategies[0],
                               size.seeds[0], 0.0)
        models = {'base': base['checkpoint'], f'mix {size.mix:g}': Path(mixed['checkpoint']),
                  'mix 0': Path(no_mix['checkpoint'])}
        studio = {name: _studio_accuracy(path, base['cache'], base['test_clips'])
                  for name, path in models.items()}
    return no_mix, studio


def _result(size: SimSize, made: dict[str, list[Path]], pooled: dict,
            reports: dict[tuple[str, int], dict], no_mix: dict, studio: dict,
            picks: dict) -> dict:
    """The simulation's findings: curves, gains over random, forgetting, picks."""
    curves = _curves(reports, size)
    first = reports[size.strategies[0], size.seeds[0]]
    base_acc = curves[size.strategies[0]]['mean'][0]
    i48 = curves['random']['labels'].index(48) if 48 in size.budgets else None
    return {
        'shift': asdict(ROBOT_SHIFT), 'size': asdict(size),
        'people': len(made['pool']),
        'eval_windows': first['after']['windows'],
        'pool': {k: pooled[k] for k in ('segments', 'windows', 'recording_s',
                                        'recording_s_per_s') if k in pooled},
        'eval_recordings': [recording_id(b) for b in made['eval']],
        'base_accuracy_people': base_acc,
        'curves': curves,
        'gain_at_48': ({s: curves[s]['mean'][i48] - base_acc for s in size.strategies}
                       if i48 is not None else None),
        'uncertainty_minus_random': [u - r for u, r in zip(
            curves['uncertainty']['mean'], curves['random']['mean'], strict=True)],
        'margin_minus_random': [u - r for u, r in zip(
            curves['margin']['mean'], curves['random']['mean'], strict=True)],
        'studio_accuracy': studio,
        'picks': picks,
        'people_accuracy_at_max_budget': {f'mix {size.mix:g}': first['after']['accuracy'],
                                          'mix 0': no_mix['after']['accuracy']},
    }


def _plot_curves(path: Path, curves: dict, size: SimSize, base_acc: float) -> None:
    plot_label_curves(
        {s: {k: c[k] for k in ('labels', 'mean', 'low', 'high')} for s, c in curves.items()},
        path, f"robot's people (domain shift): mean and min-max over {len(size.seeds)} seed(s)",
        reference={'base model': base_acc, 'goal: base + 0.15': base_acc + 0.15},
        xlabel='windows asked (12 per round)')


def simulate_robot(out: str | os.PathLike, quick: bool = False,
                   base_from: str | os.PathLike | None = None) -> dict:
    """Run (or continue: finished stages are kept) the simulation into `out`; returns the
    result also written to `out/robot_sim.json` (with learning_curves.png)."""
    size = SIZES['quick' if quick else 'full']
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    base = _base_model(out, size, Path(base_from) if base_from else None, timings)
    made = _people_bags(out, size, timings)
    pooled = _pool_sessions(out, size, base, made, timings)
    reports = _finetune_all(out, size, base, made['eval'], timings)
    no_mix, studio = _forgetting(out, size, base, made['eval'],
                                 reports[size.strategies[0], size.seeds[0]], timings)

    result = _result(size, made, pooled, reports, no_mix, studio, _picks(out, size))
    result.update(stage_s=timings, wall_s=round(time.perf_counter() - t_start, 1))
    _plot_curves(out / 'learning_curves.png', result['curves'], size,
                 result['base_accuracy_people'])
    result['png'] = str(out / 'learning_curves.png')
    atomic_save_json(out / 'robot_sim.json', result)
    _print_report(result)
    return result


def _print_report(r: dict) -> None:
    print('\n=== simulate-robot: learning from the robot\'s own people ===')
    xs = r['curves']['random']['labels']
    print('windows asked       ' + ''.join(f'{x:>8d}' for x in xs))
    for s, c in r['curves'].items():
        print(f'{s:<20}' + ''.join(f'{m:8.3f}' for m in c['mean']))
    print('uncertainty-random  ' + ''.join(f'{d:+8.3f}' for d in r['uncertainty_minus_random']))
    if r['gain_at_48']:
        print('gain at 48 windows  ' + ', '.join(f'{s} {g:+.3f}' for s, g in
                                                 r['gain_at_48'].items()))
    print('studio accuracy     ' + ', '.join(f'{k} {v:.3f}' for k, v in
                                             r['studio_accuracy'].items()))
    print(f"curves: {r['png']}")
