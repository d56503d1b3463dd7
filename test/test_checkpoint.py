"""Self-describing checkpoints: round trip, and clear failures for broken files."""
import os
import pickle

import pytest
import torch

from lightmer.core import model as model_module
from lightmer.core.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    meta_for_preset,
    read_checkpoint_meta,
    save_checkpoint,
)
from lightmer.core.config import FeatureConfig
from lightmer.core.model import LightmerNet

torch.set_num_threads(1)


@pytest.fixture()
def saved(tmp_path):
    meta = meta_for_preset('crema-d', dataset='synth', fold=0, epoch=3, strategy='full')
    torch.manual_seed(0)
    model = LightmerNet(meta.model)
    model.visual.features[1].running_mean.fill_(0.3)      # a buffer must survive too
    path = tmp_path / 'model.pt'
    save_checkpoint(path, model, meta)
    return path, model, meta


def test_round_trip_gives_same_outputs_and_meta(saved):
    path, model, meta = saved
    loaded, loaded_meta = load_checkpoint(path)
    assert not loaded.training
    assert loaded_meta == meta
    assert loaded_meta.labels == ('angry', 'disgusted', 'fearful', 'happy', 'neutral', 'sad')
    assert loaded_meta.n_segments == 5 and loaded_meta.features == FeatureConfig()
    assert loaded_meta.provenance['epoch'] == 3 and 'date' in loaded_meta.provenance
    model.eval()
    f, m = torch.randn(2, 1, 98, 80), torch.randn(2, 1, 128, 43)
    with torch.no_grad():
        torch.testing.assert_close(loaded.segment_logits(f, m), model.segment_logits(f, m),
                                   rtol=0, atol=0)
    assert not list(path.parent.glob('.*.tmp'))             # atomic write left nothing behind


def test_metadata_is_read_without_building_the_network(saved, monkeypatch):
    path, _, meta = saved

    def no_network(*args, **kwargs):
        raise AssertionError('read_checkpoint_meta built the network')

    monkeypatch.setattr(model_module, 'LightmerNet', no_network)
    assert read_checkpoint_meta(path) == meta


@pytest.mark.parametrize('damage, match', [
    (lambda blob: blob.pop('state_dict'), "lacks keys \\['state_dict'\\]"),
    (lambda blob: blob['meta'].pop('labels'), 'labels'),
    (lambda blob: blob.update(format_version=FORMAT_VERSION + 1), 'format version'),
    (lambda blob: blob.update(format='other'), 'not a lightmer checkpoint'),
])
def test_metadata_reading_refuses_what_loading_refuses_with_the_same_message(
        saved, tmp_path, damage, match):
    path, _, _ = saved
    blob = torch.load(path, weights_only=True)
    damage(blob)
    torch.save(blob, tmp_path / 'damaged.pt')
    with pytest.raises(CheckpointError, match=match) as read:
        read_checkpoint_meta(tmp_path / 'damaged.pt')
    with pytest.raises(CheckpointError) as loaded:
        load_checkpoint(tmp_path / 'damaged.pt')
    assert str(read.value) == str(loaded.value)
    with pytest.raises(CheckpointError, match='lightmer train'):
        read_checkpoint_meta(tmp_path / 'absent.pt')


def test_truncated_file_fails_clearly(saved):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated'):
        load_checkpoint(path)


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match='lightmer train'):
        load_checkpoint(tmp_path / 'nope.pt')
    foreign = tmp_path / 'tensor.pt'
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(CheckpointError, match='not a lightmer checkpoint'):
        load_checkpoint(foreign)


def test_missing_keys_fail_clearly(saved, tmp_path):
    path, _, _ = saved
    blob = torch.load(path, weights_only=True)
    del blob['state_dict']
    torch.save(blob, tmp_path / 'a.pt')
    with pytest.raises(CheckpointError, match="lacks keys \\['state_dict'\\]"):
        load_checkpoint(tmp_path / 'a.pt')
    blob = torch.load(path, weights_only=True)
    del blob['meta']['labels']
    torch.save(blob, tmp_path / 'b.pt')
    with pytest.raises(CheckpointError, match='labels'):
        load_checkpoint(tmp_path / 'b.pt')
    blob = torch.load(path, weights_only=True)
    del blob['state_dict']['fc.weight']
    torch.save(blob, tmp_path / 'c.pt')
    with pytest.raises(CheckpointError, match='fc.weight'):
        load_checkpoint(tmp_path / 'c.pt')


def test_class_count_mismatch_fails_clearly(saved, tmp_path):
    path, _, _ = saved
    # labels that disagree with the stored model size
    blob = torch.load(path, weights_only=True)
    blob['meta']['labels'] = blob['meta']['labels'][:5]
    torch.save(blob, tmp_path / 'd.pt')
    with pytest.raises(CheckpointError, match='5 labels'):
        load_checkpoint(tmp_path / 'd.pt')


def test_newer_format_is_refused(saved, tmp_path):
    path, _, _ = saved
    blob = torch.load(path, weights_only=True)
    blob['format_version'] = FORMAT_VERSION + 1
    torch.save(blob, tmp_path / 'e.pt')
    with pytest.raises(CheckpointError, match='format version'):
        load_checkpoint(tmp_path / 'e.pt')


def test_meta_checks_consistency():
    meta = meta_for_preset('ravdess')
    assert meta.model.n_classes == 8 and meta.n_segments == 12
    with pytest.raises(ValueError, match='labels'):
        CheckpointMeta(preset='x', labels=('a', 'b'), n_segments=5, segment_s=0.5,
                       features=meta.features, model=meta.model)
    with pytest.raises(ValueError, match='unknown preset'):
        meta_for_preset('iemocap')


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused(saved, tmp_path, value):
    path, _, _ = saved
    blob = torch.load(path, weights_only=True)
    blob['state_dict']['audio.features.0.weight'][0, 0, 1, 1] = value
    torch.save(blob, tmp_path / 'diverged.pt')
    with pytest.raises(CheckpointError, match="non-finite .*'audio.features.0.weight'") as err:
        load_checkpoint(tmp_path / 'diverged.pt')
    assert 'best.pt' in str(err.value)          # says what to use instead


class _RunsCode:
    """A pickle payload that would run a command if unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_hostile_or_foreign_pickles_are_not_lightmer_checkpoints(saved, tmp_path):
    path, model, meta = saved
    marker = tmp_path / 'code-ran'
    hostile = tmp_path / 'hostile.pt'
    blob = torch.load(path, weights_only=True)
    blob['meta']['provenance'] = {'note': _RunsCode(marker)}   # looks like ours otherwise
    torch.save(blob, hostile)
    whole_module = tmp_path / 'module.pt'
    torch.save(model, whole_module)                # another tool's habit: the pickled nn.Module
    plain = tmp_path / 'plain.pkl'
    plain.write_bytes(pickle.dumps({'format': 'lightmer-checkpoint'}))
    for foreign in (hostile, whole_module, plain):
        with pytest.raises(CheckpointError, match='not a lightmer checkpoint') as err:
            load_checkpoint(foreign)
        message = str(err.value)
        # torch's own advice (allow-list globals, or weights_only=False) is never passed on
        for advice in ('weights_only', 'safe_globals', 'add_safe_globals', 'trust'):
            assert advice not in message, (foreign.name, message)
        assert 'truncated' not in message
    assert not marker.exists()                     # nothing in the file was executed
