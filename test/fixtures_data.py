"""Session fixtures shared by every test that needs media: one generated corpus per layout and
one prepared cache, made once per test session (registered in conftest.py).

Treat them as read-only: copy before changing anything.
"""
from pathlib import Path

import pytest

# Small on purpose: 4 actors so that folds, D0 and U stay actor-disjoint; one clip per emotion.
TINY_ACTORS = 4
TINY_RAVDESS_ACTORS = 1


@pytest.fixture(scope='session')
def tiny_corpus(tmp_path_factory) -> Path:
    """CREMA-D layout, 4 actors x 6 emotions x 1 clip (24 clips; VideoFlash/ + AudioWAV/)."""
    from lightmer.datasets.synth import synthesize

    root = tmp_path_factory.mktemp('tiny_crema_d')
    synthesize('crema-d', root, actors=TINY_ACTORS, clips_per_emotion=1, seed=0)
    return root


@pytest.fixture(scope='session')
def tiny_ravdess(tmp_path_factory) -> Path:
    """RAVDESS layout, 1 actor x 8 emotions x 1 take (8 clips; Actor_01/01-01-....mp4)."""
    from lightmer.datasets.synth import synthesize

    root = tmp_path_factory.mktemp('tiny_ravdess')
    synthesize('ravdess', root, actors=TINY_RAVDESS_ACTORS, clips_per_emotion=1, seed=0)
    return root


@pytest.fixture(scope='session')
def tiny_cache(tiny_corpus, tmp_path_factory) -> Path:
    """`lightmer prepare` of `tiny_corpus` (crema-d preset, default settings)."""
    from lightmer.datasets.prepare import prepare

    cache = tmp_path_factory.mktemp('tiny_cache')
    prepare('crema-d', tiny_corpus, cache, workers=2, progress=False)
    return cache


@pytest.fixture(scope='session')
def onnx_export(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint .pt, its ONNX export .onnx): an untrained crema-d model whose BatchNorm
    statistics are not the identity (so that eval-mode BN is really exercised)."""
    import torch

    from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
    from lightmer.core.export import export_checkpoint
    from lightmer.core.model import LightmerNet

    directory = tmp_path_factory.mktemp('onnx_export')
    meta = meta_for_preset('crema-d', dataset='test (untrained)')
    torch.manual_seed(0)
    model = LightmerNet(meta.model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    checkpoint = directory / 'model.pt'
    save_checkpoint(checkpoint, model, meta)
    export_checkpoint(checkpoint, 'onnx')
    return checkpoint, directory / 'model.onnx'


# --- a robot's recordings and their pool (active learning: pool / query / finetune) ----------
POOL_MIN_SEGMENTS = 3    # generated clips are shorter than N = 5 segments, as in the demo


@pytest.fixture(scope='session')
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An untrained, seeded crema-d model: pooling and selection need no trained one."""
    import torch

    from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
    from lightmer.core.model import LightmerNet

    torch.manual_seed(0)
    meta = meta_for_preset('crema-d', dataset='test-fixture')
    path = tmp_path_factory.mktemp('untrained') / 'untrained.pt'
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path


@pytest.fixture(scope='session')
def robot_bags(tiny_corpus, tmp_path_factory) -> list[Path]:
    """Two bags made by `lightmer make-bag` (actor 1001, mcap; actor 1002, sqlite3), each with
    its labels CSV beside it."""
    from lightmer.cli import main

    out = tmp_path_factory.mktemp('robot_bags')
    for actor, name, storage in (('1001', 'robot_a', 'mcap'), ('1002', 'robot_b', 'sqlite3')):
        assert main(['make-bag', '--dataset', 'crema-d', '--root', str(tiny_corpus), '--out',
                     str(out / name), '--actors', actor, '--storage', storage]) == 0
    return [out / 'robot_a', out / 'robot_b']


@pytest.fixture(scope='session')
def robot_pool(robot_bags, untrained_checkpoint, tmp_path_factory) -> Path:
    """`lightmer pool` of both robot bags with the untrained model (read-only)."""
    from lightmer.cli import main

    out = tmp_path_factory.mktemp('robot_pool') / 'pool'
    assert main(['pool', '--bag', *map(str, robot_bags), '--checkpoint',
                 str(untrained_checkpoint), '--out', str(out), '--min-segments',
                 str(POOL_MIN_SEGMENTS)]) == 0
    return out


@pytest.fixture(scope='session')
def label_batch(robot_pool, untrained_checkpoint, tmp_path_factory) -> Path:
    """A batch of 6 windows of the robot pool, as `lightmer query` writes it (read-only)."""
    from lightmer.cli import main

    out = tmp_path_factory.mktemp('label_batch') / 'batch.json'
    assert main(['query', '--pool', str(robot_pool), '--checkpoint', str(untrained_checkpoint),
                 '--n', '6', '--out', str(out)]) == 0
    return out
