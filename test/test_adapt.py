"""`lightmer adapt`: BatchNorm statistics re-estimated on a robot's segments, nothing else.

The pure function on arrays (fast tier): only the BatchNorm buffers change, the first layer's
statistics are those of the segments, the result is reproducible. The command on a pool made
from real make-bag bags (slow tier, shares the robot pool with test_finetune): a held-out
recording's segments are never read, the result loads as the nodes load a model, exports, and
records where it came from.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lightmer.active.adapt import adapt_batchnorm, batchnorm_statistics, using_statistics
from lightmer.active.pool import Pool
from lightmer.cli import main
from lightmer.core.backend import load_model
from lightmer.core.checkpoint import load_checkpoint, meta_for_preset
from lightmer.core.export import export_checkpoint
from lightmer.core.features import face_to_input
from lightmer.core.model import LightmerNet


def _segments(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Segments unlike the studio's: dim, low-contrast faces and log-mels off centre."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(40, 110, size=(n, 98, 80), dtype=np.uint8)
    mels = (rng.standard_normal((n, 128, 43)) * 0.5 + 1.5).astype(np.float32)
    return crops, mels


def _model() -> LightmerNet:
    torch.manual_seed(3)
    return LightmerNet(meta_for_preset('crema-d').model).eval()


def test_only_the_batchnorm_statistics_change_and_they_are_the_segments():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crops, mels = _segments(128, 0)
    adapt_batchnorm(model, crops, mels, seed=0, batch_size=64)
    assert not model.training
    after = model.state_dict()
    stats = batchnorm_statistics(model)
    for name, value in after.items():
        if name in stats:
            continue
        assert torch.equal(value, before[name]), f'{name} changed'
    changed = [n for n in stats if n.endswith('running_mean')
               and not torch.equal(after[n], before[n])]
    assert len(changed) == 6                     # three per branch
    # The first visual BatchNorm sees the first convolution's output: its running mean is
    # that output's per-channel mean over every segment (two equal batches: the mean of the
    # batch means is the overall mean).
    with torch.no_grad():
        conv = model.visual.features[0](torch.from_numpy(face_to_input(crops)))
    np.testing.assert_allclose(after['visual.features.1.running_mean'].numpy(),
                               conv.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before['visual.features.1.running_mean'],
                              after['visual.features.1.running_mean'])
    # momentum was restored, so later training behaves as before
    assert all(m.momentum == 0.1 for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_adaptation_is_reproducible_and_its_statistics_can_be_swapped():
    crops, mels = _segments(60, 1)
    a = adapt_batchnorm(_model(), crops, mels, seed=5, batch_size=16)
    b = adapt_batchnorm(_model(), crops, mels, seed=5, batch_size=16)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    studio = batchnorm_statistics(_model())
    own = batchnorm_statistics(a)
    faces = torch.from_numpy(face_to_input(crops[:4]))
    mel = torch.from_numpy(mels[:4])[:, None]
    with torch.no_grad(), using_statistics(a, studio):
        swapped = a.segment_logits(faces, mel)
        expected = _model().segment_logits(faces, mel)
    torch.testing.assert_close(swapped, expected)
    for k, v in batchnorm_statistics(a).items():
        assert torch.equal(v, own[k]), f'{k} not restored'


def test_too_few_segments_are_refused():
    crops, mels = _segments(1, 0)
    with pytest.raises(ValueError, match='at least 2 segments'):
        adapt_batchnorm(_model(), crops, mels)


@pytest.mark.slow
def test_adapt_never_reads_a_held_out_recording(robot_pool, robot_bags, untrained_checkpoint,
                                                tmp_path, capsys):
    """The held-out recording's segments are replaced by garbage: excluding it, adapt gives
    the very model it gives on the intact pool; including it, the garbage is read and fails."""
    held_out = robot_bags[1]
    intact = tmp_path / 'intact.pt'
    assert main(['adapt', '--checkpoint', str(untrained_checkpoint), '--pool', str(robot_pool),
                 '--exclude', str(held_out), '--out', str(intact), '--json']) == 0
    summary = json.loads(capsys.readouterr().out)
    pool = Pool(robot_pool)
    rec_a, rec_b = pool.recording_ids
    assert summary['recordings'] == [rec_a] and summary['excluded'] == [rec_b]
    assert summary['segments'] == int((pool.table.seg_rec == 0).sum())

    broken = tmp_path / 'pool'
    shutil.copytree(robot_pool, broken)
    (broken / 'recordings' / rec_b / 'segments.npz').write_bytes(b'not an npz file')
    again = tmp_path / 'again.pt'
    assert main(['adapt', '--checkpoint', str(untrained_checkpoint), '--pool', str(broken),
                 '--exclude', rec_b, '--out', str(again)]) == 0
    a, meta = load_checkpoint(intact)
    b, _ = load_checkpoint(again)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    capsys.readouterr()
    assert main(['adapt', '--checkpoint', str(untrained_checkpoint), '--pool', str(broken),
                 '--out', str(tmp_path / 'reads_it.pt')]) != 0
    assert 'lightmer adapt:' in capsys.readouterr().err
    assert not (tmp_path / 'reads_it.pt').exists()

    # The adapted model: the base's weights, its own statistics, provenance, node loading.
    base, _ = load_checkpoint(untrained_checkpoint)
    stats = batchnorm_statistics(a)
    for k, v in a.state_dict().items():
        assert k in stats or torch.equal(v, base.state_dict()[k]), f'{k} changed'
    assert sum(not torch.equal(v, base.state_dict()[k]) for k, v in stats.items()
               if k.endswith('running_var')) == 6
    prov = meta.provenance
    assert prov['adapted_from']['provenance']['dataset'] == 'test-fixture'
    assert prov['adaptation']['method'] == 'batchnorm-statistics'
    assert prov['adaptation']['excluded_recordings'] == [rec_b]
    assert prov['adaptation']['segments'] == summary['segments']
    loaded = load_model(intact)
    assert loaded.meta.labels == meta.labels
    onnx = export_checkpoint(intact, 'onnx')[0]
    assert load_model(onnx).meta.provenance['adaptation']['method'] == 'batchnorm-statistics'
