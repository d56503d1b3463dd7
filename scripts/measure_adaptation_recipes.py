"""Does `lightmer adapt` help a base model from robust training as it helps the paper's?
Over the robot-shift draws of a `lightmer robust-study` run: every recipe's base model per
training seed, adapted on the pool sessions of a draw (the held-out sessions excluded, never
read), both scored on the held-out sessions' windows. Reported per recipe over draws (each
draw the mean over seeds, as robust-study reports) with 90 % intervals, and the paired gain.

Usage (after `lightmer robust-study --out STUDY_DIR ...`):
  .venv/bin/python scripts/measure_adaptation_recipes.py STUDY_DIR OUT.json
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from lightmer.active.adapt import AdaptConfig, adapt
from lightmer.core.atomic_io import atomic_save_json
from lightmer.experiments.robot_world import (
    Draw,
    WorldSize,
    interval,
    paired_interval,
    pooled,
    score_on_pool,
)
from lightmer.stream.settings import StreamSettings

SHIFT = 'robot'


def draws(root: Path) -> list[Draw]:
    out = []
    for d in sorted((root / 'people').glob(f'{SHIFT}_draw*')):
        info = json.loads((d / 'draw.json').read_text(encoding='utf-8'))
        out.append(Draw(SHIFT, int(d.name.split('draw')[-1]), tuple(info['people']),
                        tuple(Path(p) for p in info['pool']),
                        tuple(Path(p) for p in info['eval'])))
    return out


def main(root: Path, out: Path) -> int:
    settings = StreamSettings(min_segments=WorldSize().min_segments)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for base_dir in sorted((root / 'base').iterdir()):
            recipe, seed = re.fullmatch(r'(.+)_seed(\d+)', base_dir.name).groups()
            base = base_dir / 'full' / 'fold_0' / 'last.pt'
            if not base.is_file():
                continue
            for draw in draws(root):
                pool = pooled(root, draw, base, settings)
                adapted = Path(tmp) / f'{base_dir.name}_draw{draw.number}.pt'
                summary = adapt(AdaptConfig(checkpoint=base, pool=pool.path, out=adapted,
                                            exclude=draw.eval_recordings))
                held = list(draw.eval_recordings)
                row = {'recipe': recipe, 'seed': int(seed), 'draw': draw.number,
                       'segments': summary['segments'],
                       'base': score_on_pool(pool, base, held)['window_accuracy'],
                       'adapted': score_on_pool(pool, adapted, held)['window_accuracy']}
                rows.append(row)
                print(f"{recipe} seed {seed} draw {draw.number}: base {row['base']:.3f} "
                      f"adapted {row['adapted']:.3f} ({row['segments']} segments)", flush=True)
    report = {'study_dir': str(root), 'shift': SHIFT, 'rows': rows, 'recipes': {}}
    for recipe in sorted({r['recipe'] for r in rows}):
        mine = [r for r in rows if r['recipe'] == recipe]
        numbers = sorted({r['draw'] for r in mine})
        per_draw = {k: [float(np.mean([r[k] for r in mine if r['draw'] == n]))
                        for n in numbers] for k in ('base', 'adapted')}
        report['recipes'][recipe] = {
            'base': interval(per_draw['base']), 'adapted': interval(per_draw['adapted']),
            'gain': paired_interval(per_draw['adapted'], per_draw['base']),
            'replicates_lowered': sum(r['adapted'] < r['base'] for r in mine),
            'replicates': len(mine)}
        r = report['recipes'][recipe]
        g = r['gain']
        ci = '' if g['low'] is None else f" [{g['low']:+.3f}, {g['high']:+.3f}]"
        print(f"{recipe}: base {r['base']['mean']:.3f} adapted {r['adapted']['mean']:.3f} "
              f"gain {g['mean']:+.3f}{ci} (draws n={g['n']}); lowered in "
              f"{r['replicates_lowered']} of {r['replicates']} models x draws")
    atomic_save_json(out, report)
    return 0 if rows else 1


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
