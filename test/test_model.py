"""The network of the paper: exact size, shared per-segment head, fusion, init, dropout."""
import json
import math

import pytest
import torch

from lightmer.cli import main
from lightmer.core.model import (
    LightmerNet,
    ModelConfig,
    count_parameters,
    fuse,
    inference_copy,
    layer_table,
)

torch.set_num_threads(1)


@pytest.mark.parametrize(('classes', 'expected'), [(6, 2_715_218), (8, 2_716_500)])
def test_parameter_count_matches_table_1(classes, expected):
    assert count_parameters(LightmerNet(ModelConfig(n_classes=classes))) == expected


@pytest.mark.parametrize(('classes', 'expected'), [(6, 2_715_218), (8, 2_716_500)])
def test_summary_cli_json(capsys, classes, expected):
    assert main(['summary', '--classes', str(classes), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['parameters'] == expected
    assert info['size_mb'] == pytest.approx(expected * 4 / 1e6)
    assert 10.3 < info['size_mib'] < 10.4     # the paper's "about 10.3 MB"


def test_summary_cli_table(capsys):
    assert main(['summary', '--classes', '6']) == 0
    out = capsys.readouterr().out
    for row in ('conv1_v', '16 x 96 x 78', '2621952', 'pool3_a', '12 x 14 x 3', '64640',
                '3846', 'total parameters: 2715218'):
        assert row in out


def test_layer_table_rows_sum_to_total():
    model = LightmerNet(ModelConfig(n_classes=8))
    rows = layer_table(model).splitlines()[2:]
    assert sum(int(r.split()[-1]) for r in rows) == count_parameters(model)


def _trained_looking(model: LightmerNet) -> LightmerNet:
    """Non-trivial BN running statistics, so eval mode differs from train mode."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_full_window_equals_fused_segments():
    torch.manual_seed(0)
    model = _trained_looking(LightmerNet(ModelConfig(n_classes=6)))
    b, n = 3, 5
    faces, mels = torch.randn(b, n, 1, 98, 80), torch.randn(b, n, 1, 128, 43)
    with torch.no_grad():
        window = model(faces, mels)                                         # (B, C)
        per_segment = torch.stack(
            [model.segment_logits(faces[:, i], mels[:, i]) for i in range(n)], dim=1)
        # the streaming path: each segment alone, batch 1, as a node would compute it
        single = torch.stack([model.segment_logits(faces[0, i:i + 1], mels[0, i:i + 1])[0]
                              for i in range(n)])
    assert window.shape == (b, 6)
    torch.testing.assert_close(window, per_segment.mean(dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.softmax(window, -1), fuse(per_segment), atol=1e-6,
                               rtol=1e-5)
    torch.testing.assert_close(fuse(single), fuse(per_segment)[0], atol=1e-6, rtol=1e-5)
    assert torch.allclose(fuse(per_segment).sum(-1), torch.ones(b))


def test_segment_logits_is_head_of_embeddings():
    model = _trained_looking(LightmerNet(ModelConfig(n_classes=8)))
    f, m = torch.randn(2, 1, 98, 80), torch.randn(2, 1, 128, 43)
    with torch.no_grad():
        v, a = model.embed_visual(f), model.embed_audio(m)
        assert v.shape == (2, 512) and a.shape == (2, 128)
        torch.testing.assert_close(model.head(v, a), model.segment_logits(f, m))
        # The fused embedding selection clusters on is [v, a], and the FC of it (eval mode:
        # no dropout) is the segment's logits; the parameter count is the paper's.
        model.eval()
        e = model.embed(f, m)
        assert e.shape == (2, 640)
        torch.testing.assert_close(e, torch.cat([v, a], 1))
        torch.testing.assert_close(model.fc(e), model.segment_logits(f, m))
        assert count_parameters(model) == 2_716_500


def test_fuse_one_segment_is_softmax():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    torch.testing.assert_close(fuse(logits), torch.softmax(logits[0], -1))
    with pytest.raises(ValueError):
        fuse(torch.tensor([1.0, 2.0]))


def test_forward_rejects_mismatched_windows():
    model = LightmerNet(ModelConfig(n_classes=6)).eval()
    with pytest.raises(ValueError, match='same B and N'):
        model(torch.zeros(1, 5, 1, 98, 80), torch.zeros(1, 4, 1, 128, 43))


def test_xavier_uniform_init():
    torch.manual_seed(3)
    model = LightmerNet(ModelConfig(n_classes=6))
    for layer in (model.visual.linear, model.audio.linear, model.fc, model.visual.features[0],
                  model.audio.features[8]):
        w = layer.weight
        fan_in = w[0].numel()
        fan_out = w.shape[0] * (w[0, 0].numel() if w.dim() > 2 else 1)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= bound + 1e-7
        assert w.abs().max() > 0.8 * bound                 # spread over the whole range
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25)
        assert torch.all(layer.bias == 0)


def test_dropout_before_fc_only_in_training():
    model = LightmerNet(ModelConfig(n_classes=6))
    assert model.dropout.p == pytest.approx(0.2)
    v, a = torch.randn(4, 512), torch.randn(4, 128)
    model.train()
    torch.manual_seed(0)
    first = model.head(v, a)
    second = model.head(v, a)
    assert not torch.allclose(first, second)          # dropout masks differ between calls
    model.eval()
    torch.testing.assert_close(model.head(v, a), model.fc(torch.cat([v, a], 1)))


def test_model_config_roundtrip_is_strict():
    cfg = ModelConfig(n_classes=8, dropout=0.1)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match='unknown keys'):
        ModelConfig.from_dict({**cfg.to_dict(), 'colour': 1})
    with pytest.raises(ValueError):
        ModelConfig(n_classes=1)


def test_inference_copy_computes_the_same_outputs():
    """The scoring copy (BN folded, channels-last) gives the model's logits and embeddings
    to float rounding; the model itself is untouched."""
    model = _trained_looking(LightmerNet(ModelConfig(n_classes=6))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    f, m = torch.randn(7, 1, 98, 80), torch.randn(7, 1, 128, 43)
    with torch.no_grad():
        torch.testing.assert_close(fast.segment_logits(f, m), model.segment_logits(f, m),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.embed(f, m), model.embed(f, m), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fast.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert count_parameters(model) == 2_715_218
