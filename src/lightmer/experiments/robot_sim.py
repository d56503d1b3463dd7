"""`lightmer simulate-robot`: does learning from a robot's own people work, and which windows
should people label? Independent replicates of a simulated robot, through the real commands.

A *replicate* is one draw of the robot's people (`robot_world.people_draw`: other generated
actors under `ROBOT_SHIFT`, another camera and room, with a pool session and a held-out
session per person, each a bag) crossed with one training seed of the studio base model
(`robot_world.base_model`, the paper's recipe on the generated studio corpus). Per replicate:
1. the draw's bags pooled with the base model (`lightmer pool`);
2. the 0-label points on the held-out sessions: the base model, and the base adapted without
   labels (`lightmer adapt` on the pool session's segments; the held-out recordings excluded);
3. `lightmer finetune --oracle bag-labels` per strategy, rounds of 12 windows up to the
   largest budget, the held-out sessions' windows as the evaluation, the studio training
   clips mixed in; its round 0 is the same adaptation.
Over replicates: mean and 90 % Student-t interval of window and clip accuracy; per budget
each strategy's paired difference from random (same replicate, same held-out windows); the
issue's goals checked. PNG + JSON.

Draws 0 and 1 are development draws: the fine-tuning settings (FinetuneConfig's defaults)
are chosen on them, by comparing named `VARIANTS` of those settings (`--variant`); the
reported draws start at 2, so no reported figure chose a setting.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lightmer.active.adapt import AdaptConfig, adapt
from lightmer.active.finetune import FinetuneConfig, finetune
from lightmer.active.selection import DEFAULT_STRATEGY
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.plots import plot_label_curves
from lightmer.datasets.synth import DomainShift
from lightmer.experiments.robot_world import (
    BaseModel,
    Draw,
    WorldSize,
    base_model,
    interval,
    paired_interval,
    people_draw,
    pooled,
    score_on_pool,
)
from lightmer.experiments.stages import stage as _stage
from lightmer.stream.settings import StreamSettings

# The robot's camera and room (see DomainShift): dimmer, flatter light, faces 2/3 the size,
# sensor noise, heads rolled up to 12 degrees and turned; a reverberant room with fan-like
# noise 10 dB below the speech and a microphone gain that clips loud peaks.
ROBOT_SHIFT = DomainShift(light=0.6, contrast=0.7, face_scale=0.65, pixel_noise=6.0,
                          head_roll_deg=12.0, head_turn=0.25, reverb_s=0.5, noise_snr_db=10.0,
                          mic_gain=2.0)
SHIFT_NAME = 'robot'
RECIPE = 'paper'          # robot_world.base_model recipe name: the paper's training, no extras
DEV_DRAWS = (0, 1)        # settings were chosen on these; never reported
LEVEL = 0.90
# Fine-tuning settings compared on the development draws (FinetuneConfig overrides); 'default'
# is FinetuneConfig's own. A variant's runs and results are kept apart from the default's.
VARIANTS: dict[str, dict] = {
    'default': {},
    'head-bn': {'tune': 'head-bn'},          # the head and BatchNorm scale/shift only
    'keep1': {'keep_margin': 1},             # keep a round only when CV wins by an answer
}


@dataclass(frozen=True)
class SimSize:
    world: WorldSize = field(default_factory=WorldSize)
    draws: tuple[int, ...] = (2, 3, 4, 5, 6)
    training_seeds: tuple[int, ...] = (0, 1)
    budgets: tuple[int, ...] = (12, 24, 48)
    strategies: tuple[str, ...] = (DEFAULT_STRATEGY, 'uncertainty', 'margin', 'random')
    per_round: int = 12
    mix: float = 1.0          # studio clips per labelled window (FinetuneConfig.mix)


SIZES = {
    'full': SimSize(),
    'quick': SimSize(world=WorldSize(base_clips=1, base_epochs=16, people=3, pool_clips=2),
                     draws=(2,), training_seeds=(0,), budgets=(12, 24),
                     strategies=(DEFAULT_STRATEGY, 'random')),
}


# --- one replicate ---------------------------------------------------------------------------
def _demo_base(base_from: Path) -> BaseModel:
    """The model of an earlier `lightmer demo` run as the base (one training seed)."""
    fold = Path(base_from) / 'run' / 'uncertainty' / 'fold_0'
    if not (fold / 'last.pt').is_file():
        raise FileNotFoundError(f'no base model at {fold / "last.pt"}; run `lightmer demo` into '
                                f'{base_from} first, or leave out --base-from')
    split = json.loads((fold / 'split.json').read_text(encoding='utf-8'))
    return BaseModel(fold / 'last.pt', Path(base_from) / 'cache',
                     tuple(split['clips']['d0'] + split['clips']['pool']),
                     tuple(split['clips']['test']))


def _finetune_run(root: Path, size: SimSize, base: BaseModel, draw: Draw, pool: Path,
                  strategy: str, seed: int, variant: str = 'default') -> dict:
    name = strategy if variant == 'default' else f'{strategy}@{variant}'
    run = root / 'runs' / f'draw{draw.number}_seed{seed}' / name
    rounds = max(size.budgets) // size.per_round
    if (run / 'report.json').is_file():
        report = json.loads((run / 'report.json').read_text(encoding='utf-8'))
        if report['rounds_done'] >= rounds:       # a shorter earlier run goes on below
            return report
    return finetune(FinetuneConfig(
        checkpoint=base.checkpoint, pool=pool, answers=run / 'answers.csv', out=run,
        base_cache=base.cache, base_clips=base.train_clips, rounds=rounds,
        per_round=size.per_round, strategy=strategy, oracle='bag-labels', eval_windows=10**9,
        eval_recordings=draw.eval_recordings, mix=size.mix, seed=seed, resume=True,
        progress=False, **VARIANTS[variant]))


def replicate(root: Path, size: SimSize, number: int, seed: int, timings: dict,
              base_from: Path | None = None, variant: str = 'default') -> dict:
    """One replicate (people draw `number`, training seed `seed`): its 0-label points, its
    curves per strategy and the clip accuracy after the largest budget."""
    name = f'draw {number} seed {seed}'
    with _stage(f'{name}: base model, people, pool', timings):
        base = _demo_base(base_from) if base_from else base_model(root, size.world, RECIPE,
                                                                  seed)
        draw = people_draw(root, size.world, SHIFT_NAME, ROBOT_SHIFT, number)
        pool = pooled(root, draw, base.checkpoint,
                      StreamSettings(min_segments=size.world.min_segments))
    adapted = root / 'adapted' / f'draw{number}_seed{seed}.pt'
    with _stage(f'{name}: adapt', timings):
        if not adapted.is_file():
            adapt(AdaptConfig(checkpoint=base.checkpoint, pool=pool.path, out=adapted,
                              exclude=draw.eval_recordings))
    held = list(draw.eval_recordings)
    out = {'draw': number, 'training_seed': seed, 'people': list(draw.people),
           'base': score_on_pool(pool, base.checkpoint, held),
           'adapted': score_on_pool(pool, adapted, held), 'strategies': {}}
    for strategy in size.strategies:
        with _stage(f'{name}: finetune {strategy}', timings):
            report = _finetune_run(root, size, base, draw, pool.path, strategy, seed,
                                   variant)
        rounds = report['rounds']
        out['strategies'][strategy] = {
            'window_accuracy': {str(m['asked'] if m['round'] else 0): m['accuracy']
                                for m in rounds},
            'round0_base_window_accuracy': rounds[0].get('base_accuracy'),
            'kept': [m.get('kept') for m in rounds[1:]],
            'final': score_on_pool(pool, Path(report['checkpoint']), held)
            if report['checkpoint'] else None}
    return out


# --- over replicates -------------------------------------------------------------------------
def _values(reps: list[dict], strategy: str, x: int) -> list[float]:
    return [r['strategies'][strategy]['window_accuracy'].get(str(x)) for r in reps]


def summarise(reps: list[dict], size: SimSize) -> dict:
    """Intervals over replicates: the 0-label points, each strategy's curve, its paired
    difference from random per budget, and the goals."""
    xs = [0, *size.budgets]
    zero = {f'{model}_{kind}': interval([r[model][f'{kind}_accuracy'] for r in reps], LEVEL)
            for model in ('base', 'adapted') for kind in ('window', 'clip')}
    zero['adaptation_gain_window'] = paired_interval(
        [r['adapted']['window_accuracy'] for r in reps],
        [r['base']['window_accuracy'] for r in reps], LEVEL)
    zero['adaptation_gain_clip'] = paired_interval(
        [r['adapted']['clip_accuracy'] for r in reps],
        [r['base']['clip_accuracy'] for r in reps], LEVEL)
    curves, versus_random = {}, {}
    for s in size.strategies:
        per_x = [interval(_values(reps, s, x), LEVEL) for x in xs]
        curves[s] = {'labels': xs, 'mean': [c['mean'] for c in per_x],
                     'low': [c['low'] for c in per_x], 'high': [c['high'] for c in per_x],
                     'per_replicate': [_values(reps, s, x) for x in xs]}
        if s != 'random' and 'random' in size.strategies:
            versus_random[s] = {str(x): paired_interval(_values(reps, s, x),
                                                        _values(reps, 'random', x), LEVEL)
                                for x in size.budgets}
    return {'zero_labels': zero, 'curves': curves, 'versus_random': versus_random,
            'goals': _goals(reps, size, zero, curves, versus_random)}


def _goals(reps: list[dict], size: SimSize, zero: dict, curves: dict, versus: dict) -> dict:
    """The issue's goals, each with the figures that decide it (None: not measured here)."""
    default = size.strategies[0] if size.strategies else None
    top = max(size.budgets)
    below = [(r['draw'], r['training_seed'], s, x)
             for r in reps for s in size.strategies
             for x in size.budgets
             if (r['strategies'][s]['window_accuracy'].get(str(x)) or 0.0)
             < r['strategies'][s]['window_accuracy']['0']]
    gain48 = (paired_interval(_values(reps, default, 48), _values(reps, default, 0), LEVEL)
              if 48 in size.budgets and default else None)
    v = versus.get(default, {})
    return {
        'adaptation_gain_at_least_0.20': zero['adaptation_gain_window']['mean'] is not None
        and zero['adaptation_gain_window']['mean'] >= 0.20,
        'at_48_accuracy_at_least_0.70': None if gain48 is None
        else curves[default]['mean'][[0, *size.budgets].index(48)] >= 0.70,
        'at_48_gain_over_adapted': gain48,
        'at_48_gain_at_least_0.15': None if gain48 is None else gain48['mean'] >= 0.15,
        'default_vs_random': {x: None if d['low'] is None else bool(
            d['low'] > -0.03 and (d['mean'] >= 0.05 or int(x) >= 48)) for x, d in v.items()},
        'rounds_below_round0': below,
        'largest_budget': top,
    }


def _plot(path: Path, summary: dict, n: int) -> None:
    curves = summary['curves']
    zero = summary['zero_labels']
    plot_label_curves(
        {s: {k: [np.nan if v is None else v for v in c[k]] for k in ('labels', 'mean', 'low',
                                                                     'high')}
         for s, c in curves.items()},
        path, f"robot's people: mean and {LEVEL:.0%} interval over {n} replicate(s)",
        reference={'base model (0 labels)': zero['base_window']['mean'],
                   'adapted (0 labels)': zero['adapted_window']['mean'],
                   'goal 0.70': 0.70},
        xlabel='windows asked (12 per round; 0 = adapted)')


def simulate_robot(out: str | os.PathLike, quick: bool = False,
                   base_from: str | os.PathLike | None = None,
                   draws: tuple[int, ...] | None = None,
                   training_seeds: tuple[int, ...] | None = None,
                   strategies: tuple[str, ...] | None = None,
                   budgets: tuple[int, ...] | None = None, variant: str = 'default') -> dict:
    """Run (or continue: finished stages are kept) the replicates into `out`; returns the
    result also written to `out/robot_sim.json` (with learning_curves.png; for another
    variant of the fine-tuning settings `robot_sim_<variant>.json`, `learning_curves_<variant>
    .png`). `draws`, `training_seeds`, `strategies` override the size's (a smaller run; say
    so); strategies () measures the 0-label points alone."""
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {tuple(VARIANTS)}, got {variant!r}')
    size = SIZES['quick' if quick else 'full']
    size = replace(size, **{k: tuple(v) for k, v in (('draws', draws),
                                                     ('training_seeds', training_seeds),
                                                     ('strategies', strategies),
                                                     ('budgets', budgets))
                            if v is not None})
    if any(b % size.per_round for b in size.budgets):
        raise ValueError(f'budgets must be multiples of {size.per_round} (one round each)')
    if base_from:
        size = replace(size, training_seeds=size.training_seeds[:1])
    if set(size.draws) & set(DEV_DRAWS):
        print(f'note: draws {sorted(set(size.draws) & set(DEV_DRAWS))} are development draws '
              '(settings were chosen on them)')
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reps = [replicate(root, size, n, seed, timings, Path(base_from) if base_from else None,
                      variant)
            for n in size.draws for seed in size.training_seeds]
    result = {'shift': asdict(ROBOT_SHIFT), 'size': asdict(size), 'variant': variant,
              'finetune_overrides': VARIANTS[variant], 'replicates': reps,
              'level': LEVEL, **summarise(reps, size), 'stage_s': timings,
              'wall_s': round(time.perf_counter() - t0, 1)}
    suffix = '' if variant == 'default' else f'_{variant}'
    _plot(root / f'learning_curves{suffix}.png', result, len(reps))
    result['png'] = str(root / f'learning_curves{suffix}.png')
    atomic_save_json(root / f'robot_sim{suffix}.json', result)
    _print_report(result)
    return result


def _fmt(c: dict) -> str:
    if c['mean'] is None:
        return 'n/a'
    if c['low'] is None:
        return f"{c['mean']:.3f}"
    return f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"


def _print_report(r: dict) -> None:
    print(f"\n=== simulate-robot: {len(r['replicates'])} replicate(s), "
          f"{r['level']:.0%} intervals ===")
    for k, c in r['zero_labels'].items():
        print(f'0 labels {k:<24} {_fmt(c)}')
    for s, c in r['curves'].items():
        print(f'{s:<16}' + '  '.join(f'{x}: {m:.3f}' if m is not None else f'{x}: n/a'
                                     for x, m in zip(c['labels'], c['mean'], strict=True)))
    for s, per in r['versus_random'].items():
        print(f'{s} - random  ' + '  '.join(f'{x}: {_fmt(d)}' for x, d in per.items()))
    print(f"goals: {json.dumps(r['goals'], default=str)}")
    print(f"curves: {r['png']}")
