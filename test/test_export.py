"""Exported TorchScript parts give the same numbers as the PyTorch model."""
import json

import pytest
import torch

from lightmer.cli import main
from lightmer.core.checkpoint import load_checkpoint, meta_for_preset, save_checkpoint
from lightmer.core.config import FeatureConfig
from lightmer.core.model import LightmerNet, fuse

torch.set_num_threads(1)


# torch.jit.load is deprecated in torch 2.14 but is how a robot reads the export
@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')
def test_torchscript_export_matches_pytorch(tmp_path, capsys):
    meta = meta_for_preset('ravdess')
    torch.manual_seed(0)
    model = LightmerNet(meta.model)
    for m in model.modules():                              # non-trivial eval statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = tmp_path / 'rav.pt'
    save_checkpoint(ckpt, model, meta)
    out = tmp_path / 'export'
    assert main(['export', '--checkpoint', str(ckpt), '--out', str(out)]) == 0
    paths = capsys.readouterr().out.split()
    assert [p.split('/')[-1] for p in paths] == ['rav.segment.ts', 'rav.fusion.ts',
                                                 'rav.export.json']
    segment, fusion = torch.jit.load(paths[0]), torch.jit.load(paths[1])
    info = json.loads((out / 'rav.export.json').read_text())
    assert info['labels'] == list(meta.labels) and info['n_segments'] == 12

    reference, _ = load_checkpoint(ckpt)
    faces, mels = torch.randn(3, 1, 98, 80), torch.randn(3, 1, 128, 43)
    cached = torch.randn(2, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(segment(faces, mels), reference.segment_logits(faces, mels),
                                   rtol=1e-6, atol=1e-6)
        one = segment(faces[:1], mels[:1])                 # batch size other than the trace's
        torch.testing.assert_close(one, reference.segment_logits(faces[:1], mels[:1]),
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fusion(cached), fuse(cached), rtol=0, atol=0)
        torch.testing.assert_close(fusion(cached[0, :5]), fuse(cached[0, :5]), rtol=0, atol=0)


def test_onnx_export_from_the_command_line(tmp_path, capsys):
    meta = meta_for_preset('ravdess')
    ckpt = tmp_path / 'rav.pt'
    save_checkpoint(ckpt, LightmerNet(meta.model), meta)
    out = tmp_path / 'robot'
    assert main(['export', '--checkpoint', str(ckpt), '--format', 'onnx', '--out',
                 str(out)]) == 0
    paths = capsys.readouterr().out.split()
    assert [p.split('/')[-1] for p in paths] == [
        'rav.onnx', 'rav.fusion.onnx', 'rav.mtcnn_pnet.onnx', 'rav.mtcnn_rnet.onnx',
        'rav.mtcnn_onet.onnx', 'rav.mtcnn_integral.onnx', 'rav.onnx.json']
    info = json.loads((out / 'rav.onnx.json').read_text())
    assert info['format'] == 'lightmer-onnx' and info['meta']['n_segments'] == 12
    assert info['meta']['labels'] == list(meta.labels) and info['meta']['preset'] == 'ravdess'
    assert info['meta']['features'] == meta.features.to_dict()


def test_bad_checkpoint_gives_a_clear_error(tmp_path, capsys):
    assert main(['export', '--checkpoint', str(tmp_path / 'missing.pt')]) == 2
    assert 'no checkpoint' in capsys.readouterr().err
    assert main(['export', '--checkpoint', str(tmp_path / 'missing.pt'), '--format',
                 'onnx']) == 2
    assert 'no checkpoint' in capsys.readouterr().err


def test_export_carries_the_mel_normalisation(tmp_path, capsys):
    """A robot running the exported parts computes the log-mel the checkpoint was trained on:
    the normalisation and its statistics travel in export.json's features."""
    features = FeatureConfig(mel_norm='dataset', mel_db_mean=-48.5, mel_db_std=14.25)
    meta = meta_for_preset('crema-d', features=features)
    ckpt = tmp_path / 'loud.pt'
    save_checkpoint(ckpt, LightmerNet(meta.model), meta)
    assert main(['export', '--checkpoint', str(ckpt)]) == 0
    info = json.loads((tmp_path / 'loud.export.json').read_text())
    assert FeatureConfig.from_dict(info['features']) == features
