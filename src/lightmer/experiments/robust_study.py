"""`lightmer robust-study`: which training recipe holds up in the robot's world, at zero labels?

Base models are trained on the studio corpus with each recipe (the paper's; augmentation;
augmentation with modality dropout; optionally the same with the level-keeping log-mel) and
each training seed (`robot_world.base_model`). They are scored, without any label from the
robot, on independent draws of people (`robot_world.people_draw`) recorded

- in the studio (unseen actors recorded like the training data: what augmentation may cost),
- under `ROBOT_SHIFT` (the robot simulation's camera and room), and
- under `SECOND_SHIFT`, built differently (colour cast, motion blur, heavy JPEG, a discrete
  echo and a band-limited microphone), used only for reporting: nothing was chosen on it.

Every window of both sessions of a draw is scored (nothing is learnt from the people), as
window and clip accuracy, with both modalities and with one left out: the other replaced by
`core.missing`'s input, which is what the fusion node's `single` policy gives the model.
Intervals (90 %, Student's t) are over draws (each draw's mean over training seeds: the people
are the unit) and, beside them, over training seeds (each seed's mean over draws); the recipe
differences are paired by draw. Results go to OUT/robust_study.json and .png as they are made
(a rerun continues where it stopped: every stage's output is kept).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lightmer.active.pool import Pool
from lightmer.active.query import pool_probs, segment_scorer
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.missing import missing_audio_input, missing_face_input
from lightmer.datasets.synth import DomainShift
from lightmer.experiments.robot_sim import ROBOT_SHIFT
from lightmer.experiments.robot_world import (
    WorldSize,
    base_model,
    interval,
    paired_interval,
    people_draw,
    pooled,
    score_on_pool,
)
from lightmer.stream.settings import StreamSettings

# The second camera and room, for reporting only: a warm white balance, a camera panning
# (7 px horizontal motion blur), a heavily compressed stream (JPEG 12), a face a bit farther;
# a hard wall 90 ms away (a slap-back echo at half amplitude), a telephone-grade microphone
# (300-3400 Hz), steady noise 15 dB below the speech and a quiet gain.
SECOND_SHIFT = DomainShift(light=0.85, contrast=0.9, face_scale=0.8, colour_cast=(1.25, 1.0, 0.7),
                           motion_blur_px=7, jpeg_quality=12, echo_ms=90.0, echo_gain=0.5,
                           band_hz=(300.0, 3400.0), noise_snr_db=15.0, mic_gain=0.5)
SHIFTS: dict[str, DomainShift | None] = {'studio': None, 'robot': ROBOT_SHIFT,
                                         'second': SECOND_SHIFT}
# Recipe name -> TrainConfig overrides (explicit, so a later change of defaults keeps them).
RECIPES: dict[str, dict] = {
    'paper': {'augment': 'none', 'modality_dropout': 0.0},
    'augment': {'augment': 'both', 'modality_dropout': 0.0},
    'augment_dropout': {'augment': 'both', 'modality_dropout': 0.3},
    'augment_face': {'augment': 'face', 'modality_dropout': 0.0},     # which half helps
    'augment_audio': {'augment': 'audio', 'modality_dropout': 0.0},
    'paper_dbnorm': {'augment': 'none', 'modality_dropout': 0.0, 'mel_norm': 'dataset'},
    'augment_dbnorm': {'augment': 'both', 'modality_dropout': 0.0, 'mel_norm': 'dataset'},
}
MODALITIES = ('both', 'audio', 'face')   # what the model is given: both, audio only, face only


@dataclass(frozen=True)
class StudySize:
    world: WorldSize
    recipes: tuple[str, ...]
    seeds: tuple[int, ...]
    draws: int
    shifts: tuple[str, ...] = ('studio', 'robot', 'second')


SIZES = {
    'full': StudySize(WorldSize(people=3, pool_clips=1, eval_clips=2),
                      ('paper', 'augment', 'augment_dropout'), (0, 1, 2), 5),
    # What fits in an hour on the shared 2-core machine: 8 epochs, not the demo's 20.
    'quick': StudySize(WorldSize(people=2, pool_clips=1, eval_clips=1, base_epochs=8),
                       ('paper', 'augment', 'augment_dropout'), (0,), 1),
}


def run_study(out: Path, size: StudySize) -> dict:
    """Train, draw, pool and score what `size` names under `out`; write and return the
    report (robust_study.json, robust_study.png)."""
    out = Path(out)
    settings = StreamSettings(min_segments=size.world.min_segments)
    rows_path = out / 'robust_rows.json'
    rows = json.loads(rows_path.read_text('utf-8')) if rows_path.is_file() else []
    done = {(r['recipe'], r['seed'], r['shift'], r['draw']) for r in rows}
    timings: dict[str, float] = {}
    for seed in size.seeds:                       # a seed's recipes first: paired early
        for recipe in size.recipes:
            started = time.monotonic()
            base = base_model(out, size.world, recipe, seed, RECIPES[recipe])
            timings.setdefault(f'base {recipe} seed {seed}', time.monotonic() - started)
            for number in range(size.draws):
                for shift in size.shifts:
                    if (recipe, seed, shift, number) in done:
                        continue
                    draw = people_draw(out, size.world, shift, SHIFTS[shift], number)
                    pool = pooled(out, draw, base.checkpoint, settings)
                    rows.append({'recipe': recipe, 'seed': seed, 'shift': shift, 'draw': number,
                                 **modality_scores(pool, base.checkpoint)})
                    atomic_save_json(rows_path, rows)
            report = summarise(rows, size)
            _write_report(out, report)
    report = summarise(rows, size)
    report['timings_s'] = timings
    _write_report(out, report)
    return report


def modality_scores(pool: Pool, checkpoint: Path) -> dict:
    """{modality: score_on_pool of every window of the pool} for both modalities, audio only
    and face only (`modality_probs`)."""
    return {keep: score_on_pool(pool, checkpoint, probs=modality_probs(pool, checkpoint, keep))
            for keep in MODALITIES}


def modality_probs(pool: Pool, checkpoint: Path, keep: str) -> np.ndarray:
    """float64 (W, C) window probabilities of `checkpoint` on the pool given 'both'
    modalities, 'audio' only (every face replaced by the missing-face input) or 'face' only
    (every log-mel replaced by the missing-audio input), fused as the fusion node fuses."""
    meta, _, fuse = segment_scorer(checkpoint)
    pool.check_checkpoint(meta, checkpoint)
    model, _ = load_checkpoint(checkpoint)
    no_face = missing_face_input(meta.features)                       # (1, 98, 80)
    no_audio = missing_audio_input(meta.features)                     # (128, 43)

    def logits_of(inputs: np.ndarray, mels: np.ndarray) -> np.ndarray:
        # the pool gives the face inputs the fusion gave the model (Pool.segment_faces)
        faces = (inputs if keep != 'audio'
                 else np.broadcast_to(no_face, (len(inputs), *no_face.shape)))    # (B, 1, H, W)
        mel = (mels if keep != 'face'
               else np.broadcast_to(no_audio, (len(mels), *no_audio.shape)))      # (B, M, T)
        with torch.inference_mode():
            logits = model.segment_logits(torch.from_numpy(np.ascontiguousarray(faces)),
                                          torch.from_numpy(np.ascontiguousarray(mel))[:, None])
        return logits.double().numpy()                                            # (B, C)

    return pool_probs(pool, logits_of, fuse)


# --- the report ------------------------------------------------------------------------------
def summarise(rows: Sequence[dict], size: StudySize) -> dict:
    """Per recipe, shift and modality: window and clip accuracy intervals over draws (each the
    mean over seeds) and over seeds (each the mean over draws); per recipe and shift, the
    paired difference to the paper's recipe over draws."""
    table: dict = {}
    for recipe in size.recipes:
        for shift in size.shifts:
            for keep in MODALITIES:
                for metric in ('window_accuracy', 'clip_accuracy'):
                    cell = _cell(rows, recipe, shift, keep, metric)
                    if cell is not None:
                        table.setdefault(recipe, {}).setdefault(shift, {}).setdefault(
                            keep, {})[metric] = cell
    return {'size': _size_dict(size), 'level': 0.90, 'recipes': {r: RECIPES[r]
                                                                  for r in size.recipes},
            'shifts': {s: (None if SHIFTS[s] is None else asdict(SHIFTS[s]))
                       for s in size.shifts},
            'table': table, 'paired_to_paper': _paired(rows, size), 'rows': len(rows)}


def _values(rows, recipe, shift, keep, metric) -> dict[tuple[int, int], float]:
    return {(r['seed'], r['draw']): r[keep][metric] for r in rows
            if r['recipe'] == recipe and r['shift'] == shift and r[keep][metric] is not None}


def _cell(rows, recipe, shift, keep, metric) -> dict | None:
    v = _values(rows, recipe, shift, keep, metric)
    if not v:
        return None
    draws = sorted({d for _, d in v})
    seeds = sorted({s for s, _ in v})
    by_draw = [np.mean([x for (s, d), x in v.items() if d == k]) for k in draws]
    by_seed = [np.mean([x for (s, d), x in v.items() if s == k]) for k in seeds]
    return {'mean': float(np.mean(list(v.values()))), 'over_draws': interval(by_draw),
            'over_seeds': interval(by_seed), 'cells': len(v)}


def _paired(rows, size: StudySize) -> dict:
    """recipe -> shift -> metric -> paired interval (recipe - paper) over draws, each draw the
    mean over the seeds both recipes have for it."""
    out: dict = {}
    if 'paper' not in size.recipes:
        return out
    for recipe in size.recipes:
        if recipe == 'paper':
            continue
        for shift in size.shifts:
            for metric in ('window_accuracy', 'clip_accuracy'):
                a = _values(rows, recipe, shift, 'both', metric)
                b = _values(rows, 'paper', shift, 'both', metric)
                common = sorted(set(a) & set(b))
                draws = sorted({d for _, d in common})
                if not draws:
                    continue
                da = [np.mean([a[c] for c in common if c[1] == d]) for d in draws]
                db = [np.mean([b[c] for c in common if c[1] == d]) for d in draws]
                out.setdefault(recipe, {}).setdefault(shift, {})[metric] = paired_interval(da, db)
    return out


def _size_dict(size: StudySize) -> dict:
    d = asdict(size)
    d['world'] = asdict(size.world)
    return d


def _write_report(out: Path, report: dict) -> None:
    atomic_save_json(out / 'robust_study.json', report)
    (out / 'robust_study.md').write_text(report_markdown(report), encoding='utf-8')
    plot_study(report, out / 'robust_study.png')


def report_markdown(report: dict) -> str:
    """The report's table: per shift and recipe, window and clip accuracy with both
    modalities (90 % CI over draws), audio only and face only (window accuracy), and the
    paired window-accuracy difference to the paper's recipe."""
    lines = ['| people | recipe | window acc. (90 % CI, draws) | clip acc. | audio only | '
             'face only | window acc. - paper (paired) |', '|---|---|---|---|---|---|---|']
    for shift in report['size']['shifts']:
        for recipe in report['size']['recipes']:
            cells = report['table'].get(recipe, {}).get(shift)
            if cells is None:
                continue
            paired = report['paired_to_paper'].get(recipe, {}).get(shift, {})
            lines.append('| ' + ' | '.join([
                shift, recipe, _ci(cells['both']['window_accuracy']['over_draws']),
                _ci(cells['both']['clip_accuracy']['over_draws']),
                _ci(cells['audio']['window_accuracy']['over_draws']),
                _ci(cells['face']['window_accuracy']['over_draws']),
                _ci(paired['window_accuracy']) if 'window_accuracy' in paired else '-']) + ' |')
    return '\n'.join(lines) + '\n'


def _ci(iv: dict) -> str:
    if iv['mean'] is None:
        return '-'
    if iv['low'] is None:
        return f"{iv['mean']:.3f} (n={iv['n']})"
    return f"{iv['mean']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}] (n={iv['n']})"


def plot_study(report: dict, path: Path) -> None:
    """Window accuracy per shift (panels), recipe (groups) and modality (bars), mean with the
    90 % interval over draws."""
    import matplotlib  # only when a figure is written: seconds of import otherwise unpaid

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # after choosing the Agg backend (no display here)

    shifts = report['size']['shifts']
    recipes = report['size']['recipes']
    fig, axes = plt.subplots(1, len(shifts), figsize=(4.2 * len(shifts), 3.6), sharey=True)
    for ax, shift in zip(np.atleast_1d(axes), shifts, strict=True):
        for j, keep in enumerate(MODALITIES):
            xs, ys, lo, hi = [], [], [], []
            for i, recipe in enumerate(recipes):
                cell = report['table'].get(recipe, {}).get(shift, {}).get(keep, {}).get(
                    'window_accuracy')
                if cell is None:
                    continue
                iv = cell['over_draws']
                xs.append(i + (j - 1) * 0.27)
                ys.append(iv['mean'])
                lo.append(iv['mean'] - (iv['low'] if iv['low'] is not None else iv['mean']))
                hi.append((iv['high'] if iv['high'] is not None else iv['mean']) - iv['mean'])
            ax.bar(xs, ys, width=0.25, yerr=[lo, hi], capsize=3, label=keep)
        ax.set_xticks(range(len(recipes)), [r.replace('_', '\n') for r in recipes], fontsize=8)
        ax.set_title(f'{shift} people')
        ax.axhline(1 / 6, color='grey', lw=0.8, ls=':')
    np.atleast_1d(axes)[0].set_ylabel('window accuracy (90 % CI over draws)')
    np.atleast_1d(axes)[0].legend(title='model given', fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def size_with(name: str, seeds: Sequence[int] | None = None, draws: int | None = None,
              recipes: Sequence[str] | None = None) -> StudySize:
    """A named size, optionally with other seeds, draw count or recipes."""
    size = SIZES[name]
    if recipes is not None:
        unknown = set(recipes) - set(RECIPES)
        if unknown:
            raise ValueError(f'unknown recipes {sorted(unknown)}; known: {sorted(RECIPES)}')
        size = replace(size, recipes=tuple(recipes))
    if seeds is not None:
        size = replace(size, seeds=tuple(seeds))
    if draws is not None:
        size = replace(size, draws=draws)
    return size
