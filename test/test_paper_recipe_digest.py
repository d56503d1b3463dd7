"""`--augment none --modality-dropout 0` is the paper's recipe, bit for bit: a tiny seeded run
gives the very weights it gave before augmentation existed.

The digest below was recorded on this code base at commit 683cc8a (before augmentation and
modality dropout were added) with the same run, on this machine's torch build, one intra-op
thread. Any change to the paper path's draws, order or arithmetic changes it.
"""
import hashlib
import json

import pytest
import torch

from lightmer.training.train import TrainConfig, train

# Slow tier: a training run.
pytestmark = [pytest.mark.usefixtures('_one_thread'), pytest.mark.slow]

PAPER_RECIPE_DIGEST = '470524c4ee643a9c2500562727b4b09d07b7080a85c288c0cdda25a61582fc1b'


def weights_digest(state_dict: dict) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f'{name}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def paper_recipe_run(cache, out, **options) -> str:
    cfg = TrainConfig.for_dataset('crema-d', cache=cache, out=out, strategy='uncertainty',
                                  n_uncertain=2, n_folds=4, fold=0, epochs=2, batch_size=4,
                                  lr=3e-4, seed=3, progress=False, **options)
    train(cfg)
    ckpt = torch.load(out / 'uncertainty' / 'fold_0' / 'last.pt', map_location='cpu',
                      weights_only=True)
    return weights_digest(ckpt['state_dict'])


def test_the_paper_recipe_trains_the_weights_it_trained_before_augmentation(tiny_cache,
                                                                              tmp_path):
    run = tmp_path / 'run'
    got = paper_recipe_run(tiny_cache, run, augment='none', modality_dropout=0.0)
    assert got == PAPER_RECIPE_DIGEST
    # the recipe is recorded: in the checkpoint's provenance and in the run's settings
    meta = torch.load(run / 'uncertainty' / 'fold_0' / 'last.pt', map_location='cpu',
                      weights_only=True)['meta']
    assert (meta['provenance']['augment'], meta['provenance']['modality_dropout']) == ('none', 0)
    config = json.loads((run / 'uncertainty' / 'config.json').read_text(encoding='utf-8'))
    assert (config['augment'], config['modality_dropout']) == ('none', 0.0)
