"""Where does `lightmer adapt` gain, and why does it gain more for one base model than another?
A diagnosis over the replicates of a `simulate-robot` run (nothing here chooses a setting).

For every replicate (people draw x training seed) of SIM_DIR: the base model and its adapted
model, each scored on the draw's held-out recordings with both modalities, the face only and
the audio only (the other replaced by `core.missing`'s input, as `robust-study` scores), plus
two partial adaptations: the adapted BatchNorm statistics of the visual branch alone (the
audio branch keeps the studio's), and of the audio branch alone.

Usage (after `lightmer simulate-robot --out SIM_DIR ...` has made the adapted models):
  .venv/bin/python scripts/measure_adaptation_modalities.py SIM_DIR OUT.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.checkpoint import load_checkpoint, save_checkpoint
from lightmer.experiments.robot_sim import RECIPE, SHIFT_NAME, SimSize
from lightmer.experiments.robot_world import Draw, WorldSize, interval, pooled, score_on_pool
from lightmer.experiments.robust_study import MODALITIES, modality_probs
from lightmer.stream.settings import StreamSettings

SEEDS = SimSize().training_seeds    # the simulation's base models


def partial(base: Path, adapted: Path, branch: str, out: Path) -> Path:
    """The base model with the adapted BatchNorm statistics of one branch ('visual' or
    'audio') only; every other tensor the base's."""
    model, meta = load_checkpoint(base)
    donor, _ = load_checkpoint(adapted)
    theirs = dict(donor.named_buffers())
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.startswith(f'{branch}.'):
                buf.copy_(theirs[name])
    save_checkpoint(out, model, meta)
    return out


def scores(pool, checkpoint: Path, held: list[str]) -> dict:
    return {keep: score_on_pool(pool, checkpoint, held,
                                probs=modality_probs(pool, checkpoint, keep))['window_accuracy']
            for keep in MODALITIES}


def replicate(root: Path, draw_dir: Path, seed: int, tmp: Path) -> dict | None:
    number = int(draw_dir.name.split('draw')[-1])
    adapted = root / 'adapted' / f'draw{number}_seed{seed}.pt'
    base = root / 'base' / f'{RECIPE}_seed{seed}' / 'full' / 'fold_0' / 'last.pt'
    if not adapted.is_file():
        return None
    d = json.loads((draw_dir / 'draw.json').read_text(encoding='utf-8'))
    draw = Draw(SHIFT_NAME, number, tuple(d['people']), tuple(Path(p) for p in d['pool']),
                tuple(Path(p) for p in d['eval']))
    pool = pooled(root, draw, base, StreamSettings(min_segments=WorldSize().min_segments))
    held = list(draw.eval_recordings)
    models = {'base': base, 'adapted': adapted,
              'adapted_visual_only': partial(base, adapted, 'visual', tmp / 'v.pt'),
              'adapted_audio_only': partial(base, adapted, 'audio', tmp / 'a.pt')}
    out = {'draw': number, 'training_seed': seed}
    for name, path in models.items():
        out[name] = scores(pool, path, held)
        print(f'draw {number} seed {seed} {name:<20} ' + '  '.join(
            f'{k} {v:.3f}' for k, v in out[name].items()), flush=True)
    return out


def main(root: Path, out: Path) -> int:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for number in SimSize().draws:          # the reported draws, never 0-1
            draw_dir = root / 'people' / f'{SHIFT_NAME}_draw{number}'
            for seed in SEEDS:
                row = replicate(root, draw_dir, seed, Path(tmp))
                if row is not None:
                    rows.append(row)
    summary = {}
    for name in ('base', 'adapted', 'adapted_visual_only', 'adapted_audio_only'):
        for seed in SEEDS:
            mine = [r for r in rows if r['training_seed'] == seed]
            summary[f'{name}_seed{seed}'] = {
                keep: interval([r[name][keep] for r in mine]) for keep in MODALITIES}
    atomic_save_json(out, {'sim_dir': str(root), 'replicates': rows, 'by_seed': summary,
                           'note': 'diagnosis over the reported replicates; nothing chosen'})
    for key, cells in summary.items():
        print(f'{key:<28} ' + '  '.join(f"{k} {c['mean']:.3f}" if c['mean'] is not None
                                        else f'{k} n/a' for k, c in cells.items()))
    return 0 if rows else 1


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
