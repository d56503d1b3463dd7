"""Offline training on the generated corpus: learning, Algorithm 1's bookkeeping, outputs,
errors, and resume after a real SIGKILL."""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightmer import __version__, cli
from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.config import PRESETS
from lightmer.datasets.cache import dataset_mel_norm, load_index
from lightmer.training.folds import split_fold
from lightmer.training.oracle import DatasetOracle
from lightmer.training.train import TrainConfig, train
from polling import wait_until

# Slow tier (training runs): not in `make test-fast`.
pytestmark = [pytest.mark.usefixtures('_one_thread'), pytest.mark.slow]

CODES = PRESETS['crema-d'].codes
METRIC_KEYS = {'train_size', 'pool_size', 'train_loss', 'train_acc', 'test_loss', 'test_acc',
               'selected', 'seconds'}


def _metrics(run: Path, strategy: str, fold: int) -> list[dict]:
    return json.loads((run / strategy / f'fold_{fold}' / 'metrics.json').read_text())


def _cfg(cache, out, **kw) -> TrainConfig:
    kw.setdefault('progress', False)
    kw.setdefault('n_folds', 4)   # the tiny corpus has 4 actors: one test actor per fold
    return TrainConfig.for_dataset('crema-d', cache=cache, out=out, **kw)


def test_for_dataset_fills_the_paper_defaults(tmp_path):
    c = TrainConfig.for_dataset('crema-d', cache=tmp_path, out=tmp_path)
    r = TrainConfig.for_dataset('ravdess', cache=tmp_path, out=tmp_path)
    assert (c.n_segments, c.n_uncertain, r.n_segments, r.n_uncertain) == (5, 20, 12, 5)
    assert (c.epochs, c.batch_size, c.lr, c.lr_step_epoch, c.dropout) == (100, 16, 1e-4, 50, 0.2)
    assert TrainConfig.for_dataset('ravdess', cache=tmp_path, out=tmp_path,
                                   n_uncertain=None, n_segments=3).n_segments == 3
    with pytest.raises(ValueError, match='strategy'):
        TrainConfig.for_dataset('crema-d', cache=tmp_path, out=tmp_path, strategy='random')


def test_dataset_oracle_returns_the_dataset_labels():
    oracle = DatasetOracle({'a': 0, 'b': 3})
    assert oracle.check(['b', 'a'], [3, 2]) == [3, 0]


def test_a_short_run_on_the_tiny_corpus_learns(tiny_cache, tmp_path):
    """The full baseline, 12 epochs on 3 actors (18 clips), tested on the unseen fourth actor.

    Threshold: the test fold holds exactly one clip per emotion, so any constant predictor (and
    the untrained model, which starts at 1/6 here) scores exactly 1/6. We require a mean test
    accuracy >= 0.4 over the last 4 epochs (>= 10 of 24 predictions, 2.4x chance), >= 3/6 at
    the end, and a halved training loss. Training is deterministic (fixed seed, deterministic
    CPU kernels), so this is one fixed outcome, not a draw; measured here: 0.58 and 4/6. With
    the same settings over seeds 0-2 x folds 0-3 (per-sample keyed dropout, generated corpus
    with MP3 tracks), the last-4 mean was >= 0.5 in 11 of 12 runs and 0.375 in one (median
    0.56; the previous global-generator dropout gave >= 0.458 in 11 and 0.333 in one, median
    0.54), and the final 6-clip accuracy was < 3/6 in 1 of 12: 6 test clips are too few for a
    tighter bound (see the report: more actors are needed for that). This seed and fold sit
    near the median. lr 3e-4 and batch 2 buy enough optimiser steps (108) inside a test budget.
    """
    run = tmp_path / 'run'
    summary = train(_cfg(tiny_cache, run, strategy='full', fold=0, epochs=12, lr=3e-4,
                         batch_size=2, seed=0))
    m = _metrics(run, 'full', 0)
    acc = [e['test_acc'] for e in m]
    assert all(e['train_size'] == 18 and e['pool_size'] == 0 and e['selected'] == []
               for e in m)
    assert sum(acc[-4:]) / 4 >= 0.4, acc
    assert acc[-1] >= 0.5, acc
    assert m[-1]['train_loss'] < m[0]['train_loss'] / 2
    assert summary['test_acc_mean'] == acc[-1]


def _pool_size(cache: Path, fold: int, n_folds: int = 4, seed: int = 0) -> int:
    clips = json.loads((cache / 'index.json').read_text())['clips']
    ok = [c for c in clips if c['status'] == 'ok']
    s = split_fold([c['actor'] for c in ok], n_folds, fold, seed)
    return sum(c['actor'] in s.pool for c in ok)


def test_uncertainty_run_moves_exactly_nu_per_epoch_until_the_pool_is_empty(tiny_cache,
                                                                            tmp_path):
    run = tmp_path / 'run'
    nu = math.ceil(_pool_size(tiny_cache, 0) / 3)   # U empties after 3 selection epochs
    summary = train(_cfg(tiny_cache, run, fold=0, epochs=5, n_uncertain=nu))
    split = json.loads((run / 'uncertainty' / 'fold_0' / 'split.json').read_text())
    d0, pool, test = (set(split['clips'][k]) for k in ('d0', 'pool', 'test'))
    actors = split['actors']
    assert not set(actors['d0']) & set(actors['pool'])
    assert not (set(actors['d0']) | set(actors['pool'])) & set(actors['test'])
    index = json.loads((tiny_cache / 'index.json').read_text())
    label = {c['clip_id']: CODES.index(c['label']) for c in index['clips']}

    m = _metrics(run, 'uncertainty', 0)
    assert [e['epoch'] for e in m] == list(range(5))
    assert all(METRIC_KEYS <= set(e) for e in m)
    # epoch 0 is Algorithm 1 line 1: the initial model on D0 alone
    assert (m[0]['train_size'], m[0]['pool_size'], m[0]['selected']) == (len(d0), len(pool), [])
    moved: list[str] = []
    for prev, cur in zip(m, m[1:], strict=False):
        k = min(nu, prev['pool_size'])
        assert len(cur['selected']) == k
        assert cur['train_size'] == prev['train_size'] + k
        assert cur['pool_size'] == prev['pool_size'] - k
        ids = [s['clip_id'] for s in cur['selected']]
        assert set(ids) <= pool and not set(ids) & set(moved)
        entropies = [s['entropy'] for s in cur['selected']]
        assert entropies == sorted(entropies, reverse=True)       # most uncertain first
        assert all(0 <= h <= math.log2(6) + 1e-9 for h in entropies)
        assert all(s['label'] == label[s['clip_id']] for s in cur['selected'])   # the oracle
        moved += ids
    assert m[3]['pool_size'] == 0 and sorted(moved) == sorted(pool)
    assert m[-1]['train_size'] == len(d0) + len(pool)
    assert m[4]['selected'] == [] and m[4]['train_size'] == m[3]['train_size']

    fold_dir = run / 'uncertainty' / 'fold_0'
    for name in ('last.pt', 'best.pt', 'confusion.png', 'loss.png', 'accuracy.png',
                 'result.json', 'state.pt'):
        assert (fold_dir / name).is_file(), name
    _, meta = load_checkpoint(fold_dir / 'best.pt')
    assert meta.model.n_classes == 6
    assert meta.n_segments == 5 and meta.provenance['fold'] == 0
    # how it was run, in every file: one process, no backend, the CPU, this version
    one = {'world_size': 1, 'backend': None, 'device': 'cpu', 'lightmer': __version__}
    assert {k: meta.provenance[k] for k in one} == one
    assert json.loads((run / 'uncertainty' / 'config.json').read_text())['launch'] == one
    assert json.loads((fold_dir / 'result.json').read_text())['launch'] == one
    assert all(e['launch'] == one for e in m)
    assert summary['folds_done'] == [0] and (run / 'uncertainty' / 'summary.png').is_file()
    assert sum(map(sum, summary['confusion'])) == len(test)

    # a finished fold: rerunning without --resume refuses, with --resume it only re-reports
    with pytest.raises(FileExistsError, match='--resume'):
        train(_cfg(tiny_cache, run, fold=0, epochs=5, n_uncertain=nu))
    again = train(_cfg(tiny_cache, run, fold=0, epochs=5, n_uncertain=nu, resume=True))
    assert again['test_acc_per_fold'] == summary['test_acc_per_fold']
    assert _metrics(run, 'uncertainty', 0) == m
    with pytest.raises(ValueError, match='other settings'):
        train(_cfg(tiny_cache, run, fold=1, epochs=5, n_uncertain=nu + 1))

    # the baseline into the same RUN: the with/without-uncertainty comparison appears
    full = train(_cfg(tiny_cache, run, strategy='full', fold=0, epochs=2))
    assert full['comparison']['folds'] == [0] and (run / 'comparison.png').is_file()
    curves = json.loads((run / 'comparison.json').read_text())['curves']
    assert set(curves) == {'uncertainty', 'full'}
    assert len(curves['full']['test_acc']) == 2
    assert [e['train_size'] for e in _metrics(run, 'full', 0)] == [len(d0) + len(pool)] * 2


def test_clear_errors_for_bad_caches_and_settings(tiny_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match='lightmer prepare'):
        train(_cfg(tmp_path / 'empty', tmp_path / 'r0'))
    with pytest.raises(ValueError, match="holds dataset 'crema-d'"):
        train(TrainConfig.for_dataset('ravdess', cache=tiny_cache, out=tmp_path / 'r1'))
    with pytest.raises(ValueError, match='no test actors'):
        train(_cfg(tiny_cache, tmp_path / 'r2', n_folds=5, fold=0))
    with pytest.raises(ValueError, match='U holds only'):
        train(_cfg(tiny_cache, tmp_path / 'r3', n_folds=4, fold=None, n_uncertain=1000))
    assert not (tmp_path / 'r2').exists() and not (tmp_path / 'r3').exists()  # checked first
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='--device cpu'):
            train(_cfg(tiny_cache, tmp_path / 'r4', device='cuda'))


def _lightmer() -> list[str]:
    script = Path(sys.executable).with_name('lightmer')
    return [str(script)] if script.exists() else [sys.executable, '-m', 'lightmer.cli']


def _same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=True)['state_dict']
    wb = torch.load(b, weights_only=True)['state_dict']
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_sigkill_equals_the_uninterrupted_run(tiny_cache, tmp_path):
    """With augmentation and modality dropout, whose per-segment draws must come back equal
    after the resume too (the paper's path is the same run without them: test_paper_recipe_
    digest pins its weights)."""
    args = ['train', '--dataset', 'crema-d', '--cache', str(tiny_cache), '--folds', '4',
            '--fold', '1', '--epochs', '4', '--nu', '4', '--lr', '3e-4', '--seed', '5',
            '--augment', 'both', '--modality-dropout', '0.3']
    whole, killed = tmp_path / 'whole', tmp_path / 'killed'
    assert cli.main([*args, '--out', str(whole)]) == 0

    env = {**os.environ, 'OMP_NUM_THREADS': '1'}   # the thread count of this test process
    state = killed / 'uncertainty' / 'fold_1' / 'state.pt'
    proc = subprocess.Popen([*_lightmer(), *args, '--out', str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: state.exists() or proc.poll() is not None, 120,
               'the first epoch (state.pt) or the end of the run', interval_s=0.01)
    assert state.exists(), 'the run ended before its first epoch was saved'
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done = len(_metrics(killed, 'uncertainty', 1))
    assert 1 <= done < 4, 'killed too late to test anything'

    resumed = subprocess.run([*_lightmer(), *args, '--out', str(killed), '--resume'], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def strip(metrics):
        return [{k: v for k, v in e.items() if k != 'seconds'} for e in metrics]

    expected = strip(_metrics(whole, 'uncertainty', 1))
    assert len(expected) == 4 and expected[1]['selected']
    assert strip(_metrics(killed, 'uncertainty', 1)) == expected
    for name in ('last.pt', 'best.pt'):
        assert _same_weights(whole / 'uncertainty' / 'fold_1' / name,
                             killed / 'uncertainty' / 'fold_1' / name), name


def test_dataset_mel_norm_takes_training_set_statistics_into_the_checkpoint(tiny_cache,
                                                                            tmp_path):
    """--mel-norm dataset: dB statistics of the fold's training clips (D0 and U, never the
    test actor), stored in the checkpoint's FeatureConfig, which the nodes apply."""
    run = tmp_path / 'run'
    train(_cfg(tiny_cache, run, strategy='full', fold=2, epochs=1, mel_norm='dataset'))
    fold_dir = run / 'full' / 'fold_2'
    split = json.loads((fold_dir / 'split.json').read_text())
    _, meta = load_checkpoint(fold_dir / 'best.pt')
    index = load_index(tiny_cache)
    expected = dataset_mel_norm(tiny_cache, split['clips']['d0'] + split['clips']['pool'],
                                PRESETS['crema-d'].n_segments)
    assert meta.features == expected
    assert meta.features.mel_norm == 'dataset' and meta.features != index.features
    assert -90 < meta.features.mel_db_mean < -10 and 3 < meta.features.mel_db_std < 40
    # with the test actor's clips the numbers would differ: they are not in there
    with_test = dataset_mel_norm(tiny_cache, split['clips']['d0'] + split['clips']['pool']
                                 + split['clips']['test'], PRESETS['crema-d'].n_segments)
    assert with_test.mel_db_mean != expected.mel_db_mean
    # the default stays per-window standardisation
    train(_cfg(tiny_cache, tmp_path / 'default', strategy='full', fold=2, epochs=1))
    _, meta = load_checkpoint(tmp_path / 'default' / 'full' / 'fold_2' / 'best.pt')
    assert meta.features == index.features and meta.features.mel_norm == 'window'
