"""One fold across two gloo ranks on loopback (real torchrun, real DDP): the same selections as
one process, a killed rank ends the run and --resume continues it, sharded scoring equal to one
process bit for bit, AMP refused on CPU, folds in parallel merged, and a two-shard prepare.

Traffic stays on 127.0.0.1 (scripts/test.sh also runs the suite in a namespace with only lo).
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lightmer import __version__, cli
from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.model import LightmerNet, ModelConfig
from lightmer.datasets.cache import SegmentDataset, load_index
from lightmer.datasets.prepare import merge_shards, prepare, shard_index_name, shard_of
from lightmer.training.distributed import join, launched_ranks, leave, shard_batches, split_batch
from lightmer.training.train import (
    FLOAT32,
    Precision,
    TrainConfig,
    predict,
    prepare_model,
    train,
    train_epoch,
)
from polling import wait_until

# Slow tier (training runs under torchrun): not in `make test-fast`.
pytestmark = pytest.mark.slow

# One fold of the tiny corpus (4 actors): D0 1 actor, U 2 actors (12 clips), 6 test clips.
FOLD = 1
OPTIONS = ['--dataset', 'crema-d', '--folds', '4', '--fold', str(FOLD), '--epochs', '4',
           '--n-uncertain', '4', '--lr', '3e-4', '--seed', '5']
# Two ranks add their gradients in another order than one process, so the runs agree up to
# float rounding. Measured here: entropies and losses differ by < 2e-4 between the runs, while
# the selected clips' entropies lie >= 8e-4 apart, far from a tie that rounding could flip.
TOLERANCE = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', str(nproc),
            '--master-addr', '127.0.0.1', '--master-port', str(_free_port()),
            '-m', 'lightmer', *args]


def _env() -> dict:
    # gloo would otherwise pick the interface the host name resolves to
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1',
            'GLOO_SOCKET_IFNAME': 'lo'}


def _metrics(run: Path) -> list[dict]:
    return json.loads((run / 'uncertainty' / f'fold_{FOLD}' / 'metrics.json').read_text())


def _without_seconds(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != 'seconds'} for e in metrics]


@pytest.fixture(scope='module')
def two_rank_run(tiny_cache, tmp_path_factory) -> tuple[Path, str]:
    """The fold trained uninterrupted by two gloo ranks; -> (RUN, torchrun's stdout)."""
    run = tmp_path_factory.mktemp('two_ranks') / 'run'
    done = subprocess.run(_torchrun(2, ['train', *OPTIONS, '--cache', str(tiny_cache),
                                        '--out', str(run)]),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done.stdout


@pytest.mark.usefixtures('_one_thread')
def test_two_gloo_ranks_select_the_same_clips_as_one_process(tiny_cache, two_rank_run,
                                                             tmp_path):
    run2, stdout = two_rank_run
    assert stdout.count('"folds_done"') == 1, 'only rank 0 prints the summary'
    one = tmp_path / 'one'
    train(TrainConfig.for_dataset('crema-d', cache=tiny_cache, out=one, n_folds=4, fold=FOLD,
                                  epochs=4, n_uncertain=4, lr=3e-4, seed=5, progress=False))
    m1, m2 = _metrics(one), _metrics(run2)
    assert len(m1) == len(m2) == 4
    assert sum(len(e['selected']) for e in m1) == 12   # U emptied over epochs 1-3
    for e1, e2 in zip(m1, m2, strict=True):
        assert [s['clip_id'] for s in e1['selected']] == [s['clip_id'] for s in e2['selected']]
        assert (e1['train_size'], e1['pool_size']) == (e2['train_size'], e2['pool_size'])
        for s1, s2 in zip(e1['selected'], e2['selected'], strict=True):
            assert abs(s1['entropy'] - s2['entropy']) < TOLERANCE
        for key in ('train_loss', 'val_loss', 'test_loss'):
            assert abs(e1[key] - e2[key]) < TOLERANCE, (key, e1[key], e2[key])
        # 6 test clips: a float-level difference may move one argmax at most
        assert abs(e1['test_acc'] - e2['test_acc']) <= 1 / 6 + 1e-9
    fold_dir = run2 / 'uncertainty' / f'fold_{FOLD}'
    for name in ('split.json', 'state.pt', 'last.pt', 'best.pt', 'result.json',
                 'confusion.png', 'loss.png', 'accuracy.png'):
        assert (fold_dir / name).is_file(), name
    assert (run2 / 'uncertainty' / 'summary.json').is_file()
    # how each run was run, in every file: two gloo ranks read unlike one process
    for run, launch in ((run2, {'world_size': 2, 'backend': 'gloo', 'device': 'cpu'}),
                        (one, {'world_size': 1, 'backend': None, 'device': 'cpu'})):
        launch = {**launch, 'lightmer': __version__}
        folder = run / 'uncertainty' / f'fold_{FOLD}'
        assert json.loads((run / 'uncertainty' / 'config.json').read_text())['launch'] == launch
        assert json.loads((folder / 'result.json').read_text())['launch'] == launch
        assert all(e['launch'] == launch for e in _metrics(run))
        provenance = load_checkpoint(folder / 'best.pt')[1].provenance
        assert {k: provenance[k] for k in launch} == launch


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=rank (its children's environments)."""
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
            if int(fields[1]) != launcher_pid:
                continue
            environ = (stat.parent / 'environ').read_bytes().split(b'\0')
        except (OSError, IndexError, ValueError):
            continue   # the process ended while we looked
        if f'RANK={rank}'.encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f'no worker with RANK={rank} under pid {launcher_pid}')


def _same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=True)['state_dict']
    wb = torch.load(b, weights_only=True)['state_dict']
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_killed_rank_ends_the_run_and_resume_finishes_it(tiny_cache, two_rank_run, tmp_path):
    run2, _ = two_rank_run
    killed = tmp_path / 'killed'
    args = ['train', *OPTIONS, '--cache', str(tiny_cache), '--out', str(killed),
            '--dist-timeout', '60']
    proc = subprocess.Popen(_torchrun(2, args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    state = killed / 'uncertainty' / f'fold_{FOLD}' / 'state.pt'
    wait_until(lambda: state.exists() or proc.poll() is not None, 300,
               'the first epoch (state.pt) or the end of the run', interval_s=0.01)
    assert state.exists(), 'the run ended before its first epoch was saved'
    os.kill(_worker_of_rank(proc.pid, 1), signal.SIGKILL)
    try:   # a bound, not a speed claim: a hung rank would wait here for ever
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError('rank 0 kept waiting for the killed rank') from None
    assert proc.returncode != 0
    assert '(local_rank: 1)' in err and 'SIGKILL' in err, err[-3000:]   # torchrun names it
    done = len(_metrics(killed))
    assert 1 <= done < 4, 'killed too late to test anything'

    resumed = subprocess.run(_torchrun(2, [*args, '--resume']), env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _without_seconds(_metrics(killed)) == _without_seconds(_metrics(run2))
    for name in ('last.pt', 'best.pt'):
        assert _same_weights(run2 / 'uncertainty' / f'fold_{FOLD}' / name,
                             killed / 'uncertainty' / f'fold_{FOLD}' / name), name


def test_amp_is_refused_on_cpu(tiny_cache, tmp_path, capsys):
    assert cli.main(['train', *OPTIONS, '--cache', str(tiny_cache), '--out',
                     str(tmp_path / 'r'), '--amp']) == 2
    assert '--amp (mixed precision) applies to --device cuda only' in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()
    with pytest.raises(ValueError, match='CUDA devices only'):
        Precision.choose(True, torch.device('cpu'))
    assert Precision.choose(False, torch.device('cpu')) == FLOAT32


def test_batches_and_shards_partition_the_work():
    batch = list(range(10, 15))
    for world in (1, 2, 3, 7):
        parts = [split_batch(batch, r, world) for r in range(world)]
        assert sum(parts, []) == batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        batches = [[i] for i in range(5)]
        runs = [shard_batches(batches, r, world) for r in range(world)]
        assert sum(runs, []) == batches
    # a rank may hold nothing of a last batch shorter than the number of ranks
    assert (split_batch([7], 0, 2), split_batch([7], 1, 2)) == ([], [7])


def _scoring_model() -> LightmerNet:
    torch.manual_seed(3)
    return LightmerNet(ModelConfig(n_classes=6)).eval()


def _eval_items(cache: Path) -> SegmentDataset:
    ids = load_index(cache).clip_ids[:22]    # 6 batches of 4, the last one short
    return SegmentDataset(cache, ids, n_segments=5,
                          labels=('ANG', 'DIS', 'FEA', 'HAP', 'NEU', 'SAD'), train=False, seed=0)


def _score_on_rank(rank: int, port: int, cache: str, out: str) -> None:
    """One of two spawned ranks: score the items sharded, save what this rank received."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE='2', LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME='lo')
    torch.set_num_threads(1)
    ranks = launched_ranks()
    device = join(ranks, 'cpu', 60)
    try:
        probs, labels = predict(_scoring_model(), _eval_items(Path(cache)), 4, device,
                                ranks=ranks)
        np.savez(Path(out) / f'rank{rank}.npz', probs=probs, labels=labels)
    finally:
        leave()


def _gloo_threads() -> list[str]:
    """Names of this process's native threads that belong to gloo (pt_gloo_runloop,
    gloo_tcp_loop)."""
    names = []
    for task in Path('/proc/self/task').iterdir():
        try:
            names.append((task / 'comm').read_text().strip())
        except OSError:
            continue   # the thread ended while we looked
    return sorted(n for n in names if 'gloo' in n)


def _one_ddp_step(ranks, device: torch.device, cache: Path) -> None:
    """One training step through DDP; the model and its DDP wrapper end with this call, as
    they end with `train._train_fold` before `train` leaves the group."""
    model, trained = prepare_model(_scoring_model(), ranks, device)
    items = _eval_items(cache)
    train_epoch(trained, torch.optim.Adam(model.parameters()), items, [[0, 1, 2, 3]], device,
                ranks=ranks, sample_keys=[7] * len(items))


def _train_step_and_leave(rank: int, port: int, cache: str, out: str) -> None:
    """One of two spawned ranks: a DDP training step, leave; save the gloo threads seen
    before and after leaving."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE='2', LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME='lo')
    torch.set_num_threads(1)
    ranks = launched_ranks()
    device = join(ranks, 'cpu', 60)
    try:
        _one_ddp_step(ranks, device, Path(cache))
        during = _gloo_threads()
    finally:
        leave()
    (Path(out) / f'rank{rank}.json').write_text(json.dumps(
        {'during': during, 'after': _gloo_threads()}))


def test_leave_ends_the_process_group_after_ddp(tiny_cache, tmp_path):
    """After DDP has trained, `leave` ends the gloo group and its threads, so none is left to
    race the interpreter's exit (rank 0 aborted there in CI while torch.distributed.nn, which
    DDP imports on first use, held the group in its functions' default arguments)."""
    mp.spawn(_train_step_and_leave, args=(_free_port(), str(tiny_cache), str(tmp_path)),
             nprocs=2)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f'rank{rank}.json').read_text())
        assert 'pt_gloo_runloop' in seen['during'], seen   # else this test checks nothing
        assert seen['after'] == [], f'rank {rank} kept gloo threads after leave(): {seen}'


@pytest.mark.usefixtures('_one_thread')
def test_sharded_scoring_equals_one_process_bit_for_bit(tiny_cache, tmp_path):
    mp.spawn(_score_on_rank, args=(_free_port(), str(tiny_cache), str(tmp_path)), nprocs=2)
    probs, labels = predict(_scoring_model(), _eval_items(tiny_cache), 4, torch.device('cpu'))
    assert probs.shape == (22, 6)
    for rank in (0, 1):
        with np.load(tmp_path / f'rank{rank}.npz') as got:
            assert np.array_equal(got['probs'], probs) and np.array_equal(got['labels'], labels)


def test_folds_in_parallel_then_merge_folds(tiny_cache, tmp_path, capsys):
    run = tmp_path / 'run'
    assert cli.main(['train', '--dataset', 'crema-d', '--cache', str(tiny_cache), '--out',
                     str(run), '--folds', '2', '--fold', 'all', '--strategy', 'full',
                     '--epochs', '1', '--parallel', '2']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['failed_folds'] == {}
    summary = json.loads((run / 'full' / 'summary.json').read_text())
    assert summary['folds_done'] == [0, 1] and printed['strategies']['full'] == summary
    for k in (0, 1):
        assert (run / 'full' / f'fold_{k}' / 'result.json').is_file()

    # one job per fold on a cluster: whatever has finished merges with one command
    (run / 'full' / 'summary.json').unlink()
    (run / 'full' / 'fold_1' / 'result.json').unlink()    # as if fold 1 were still running
    assert cli.main(['merge-folds', '--out', str(run)]) == 0
    merged = json.loads((run / 'full' / 'summary.json').read_text())
    assert merged['folds_done'] == [0] and (run / 'full' / 'summary.png').is_file()
    assert cli.main(['merge-folds', '--out', str(tmp_path / 'nothing')]) == 2


@pytest.mark.usefixtures('_one_thread')
def test_two_prepare_shards_merge_into_the_unsharded_cache(tiny_corpus, tiny_cache, tmp_path):
    cache = tmp_path / 'cache'
    for i in (0, 1):
        prepare('crema-d', tiny_corpus, cache, workers=1, progress=False, shard=(i, 2))
    shards = [json.loads((cache / shard_index_name(i, 2)).read_text()) for i in (0, 1)]
    ids = [{c['clip_id'] for c in s['clips']} for s in shards]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert all(shard_of(c, 2) == i for i in (0, 1) for c in ids[i])
    with pytest.raises(FileNotFoundError, match='prepare'):
        load_index(cache)                    # no index.json until the shards are merged

    (cache / shard_index_name(1, 2)).rename(tmp_path / 'aside.json')
    with pytest.raises(ValueError, match=r'shards \[1\] of 2 are missing'):
        merge_shards(cache)
    (tmp_path / 'aside.json').rename(cache / shard_index_name(1, 2))
    assert 'merged 2 shards' in merge_shards(cache)
    merged = json.loads((cache / 'index.json').read_text())
    whole = json.loads((tiny_cache / 'index.json').read_text())
    assert merged == whole
    assert load_index(cache).clip_ids == load_index(tiny_cache).clip_ids
