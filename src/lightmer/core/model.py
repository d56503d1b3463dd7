"""The lightweight audio-visual network of the paper (section III, Table 1). No I/O.

One Visual Net (VN), one Audio Net (AN) and one FC layer are shared by every temporal segment:

    segment i:  face_i (1, 98, 80) --VN--> v_i (512) \
                                                     cat (640) -> dropout 0.2 -> FC -> o_i (C)
                mel_i (1, 128, 43) --AN--> a_i (128) /
    window:     p = softmax(mean_i o_i)

Because the weights do not depend on i, a stream can compute o_i once per segment and fuse the
cached outputs of the last N segments (paper Fig. 2): `segment_logits` then `fuse`.

Table 1 gives no activation after linear_v / linear_a; we follow it (the embeddings are the
linear outputs). With BN layers holding an affine (weight, bias) pair and convolutions a bias,
the parameter count is 2,715,218 for C = 6 and 2,716,500 for C = 8, as in the paper.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# ModelConfig lives in config.py so that metadata is readable without torch; it is imported
# from here as well, beside the network it sizes.
from lightmer.core.config import AUDIO_CHANNELS, VISUAL_CHANNELS, ModelConfig, conv_stack_out


class ConvEmbedding(nn.Module):
    """3 x [Conv3x3 (stride 1, no padding) + BN + ReLU + MaxPool 2x2] -> flatten -> linear.

    The shared body of VN and AN: (B, 1, H, W) float32 -> (B, out_dim).
    """

    def __init__(self, in_shape: tuple[int, int], channels: tuple[int, ...], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=0),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        h, w = conv_stack_out(in_shape, len(channels))
        self.in_shape = tuple(in_shape)
        self.linear = nn.Linear(c_in * h * w, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)                  # (B, C_last, h, w)
        return self.linear(x.flatten(1))      # (B, out_dim)


class LightmerNet(nn.Module):
    """VN + AN + shared FC; see the module docstring for the data flow."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = ConvEmbedding(cfg.face_shape, VISUAL_CHANNELS, cfg.visual_dim)
        self.audio = ConvEmbedding(cfg.mel_shape, AUDIO_CHANNELS, cfg.audio_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.visual_dim + cfg.audio_dim, cfg.n_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights for every conv and linear layer (paper V-A), zero biases;
        BatchNorm keeps its identity start (weight 1, bias 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def embed_visual(self, faces: torch.Tensor) -> torch.Tensor:
        """(B, 1, 98, 80) float32 normalised faces -> (B, 512) VN embeddings."""
        return self.visual(faces)

    def embed_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 43) float32 normalised log-mels -> (B, 128) AN embeddings."""
        return self.audio(mels)

    def embed(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """One segment each: (B, 1, 98, 80), (B, 1, 128, 43) -> (B, 640) fused embedding [v, a]:
        what the head's dropout and FC read (selection clusters windows on it). No parameters
        of its own; `segment_logits` does not call it, so the forward pass is unchanged."""
        return torch.cat([self.embed_visual(faces), self.embed_audio(mels)], dim=1)

    def head(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, 512), (B, 128) embeddings -> (B, C) segment logits o_i."""
        return self.fc(self.dropout(torch.cat([v, a], dim=1)))   # (B, 640) -> (B, C)

    def segment_logits(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """One segment each: (B, 1, 98, 80), (B, 1, 128, 43) -> (B, C) logits."""
        return self.head(self.embed_visual(faces), self.embed_audio(mels))

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """Full window: (B, N, 1, 98, 80), (B, N, 1, 128, 43) -> (B, C) window logits.

        The mean of the N segment logits; softmax of it gives the window probabilities
        (`fuse`). Cross-entropy takes these logits directly.
        """
        if faces.dim() != 5 or mels.dim() != 5 or faces.shape[:2] != mels.shape[:2]:
            raise ValueError(f'expected faces (B, N, 1, H, W) and mels (B, N, 1, M, T) with the '
                             f'same B and N, got {tuple(faces.shape)} and {tuple(mels.shape)}')
        b, n = faces.shape[:2]
        # All B*N segments go through the shared networks as one batch.
        logits = self.segment_logits(faces.flatten(0, 1), mels.flatten(0, 1))   # (B*N, C)
        return logits.view(b, n, -1).mean(dim=1)                                # (B, C)


class _ChannelsLast(nn.Module):
    """(B, C, H, W) -> the same values in channels-last memory order (oneDNN's fast path)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def inference_copy(model: LightmerNet) -> LightmerNet:
    """An eval-mode copy of `model` for scoring many segments on a CPU: the same outputs to
    float rounding (~1e-6), about 2.5x faster over batches of hundreds (measured, 2 threads:
    docs/ACTIVE_LEARNING.md "Speed"). Each Conv + BatchNorm pair is folded into one conv
    (torch's `fuse_conv_bn_eval`, the running statistics of eval mode), ReLU follows MaxPool
    (they commute: max of rectified = rectified max, on a quarter of the values) and the
    activations are channels-last. `model` is not changed; the copy cannot train (no BN)."""
    fast = copy.deepcopy(model).eval()
    for emb in (fast.visual, fast.audio):
        mods = list(emb.features)     # [Conv2d, BatchNorm2d, ReLU, MaxPool2d] per block
        stages: list[nn.Module] = [_ChannelsLast()]
        for i in range(0, len(mods), 4):
            conv, bn, pool = mods[i], mods[i + 1], mods[i + 3]
            stages += [fuse_conv_bn_eval(conv, bn), pool, nn.ReLU(inplace=True)]
        emb.features = nn.Sequential(*stages).to(memory_format=torch.channels_last)
    return fast


def fuse(segment_logits: torch.Tensor) -> torch.Tensor:
    """Cached segment logits (..., N, C) -> window probabilities (..., C) = softmax(mean over N).

    Pure; works for any N >= 1, so a stream can fuse whatever segments it holds.
    """
    if segment_logits.dim() < 2 or segment_logits.shape[-2] < 1:
        raise ValueError(f'expected (..., N, C) with N >= 1, got {tuple(segment_logits.shape)}')
    return fuse_core(segment_logits)


def fuse_core(segment_logits: torch.Tensor) -> torch.Tensor:
    """`fuse` without its shape check, so TorchScript compiles it (the check's message builds a
    tuple of a dynamic shape, which TorchScript cannot); the exported fusion part calls this.

    (..., N, C) float -> (..., C) float = softmax over C of the mean over N.
    """
    return F.softmax(segment_logits.mean(dim=-2), dim=-1)


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (BatchNorm running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_table(model: LightmerNet) -> str:
    """A printable per-layer table in the shape of the paper's Table 1."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    for net, suffix, in_shape in (('visual', 'v', model.cfg.face_shape),
                                  ('audio', 'a', model.cfg.mel_shape)):
        emb: ConvEmbedding = getattr(model, net)
        h, w = in_shape
        block = 0
        mods = list(emb.features)
        for i in range(0, len(mods), 4):
            conv, bn = mods[i], mods[i + 1]
            block += 1
            h, w = h - 2, w - 2
            n = sum(p.numel() for p in (*conv.parameters(), *bn.parameters()))
            rows.append((f'conv{block}_{suffix}', 'Conv2D + BN + ReLU',
                         f'{conv.out_channels} x {h} x {w}', '3 x 3', '(1, 0)', str(n)))
            h, w = h // 2, w // 2
            rows.append((f'pool{block}_{suffix}', 'MaxPool', f'{conv.out_channels} x {h} x {w}',
                         '2 x 2', '(2, 0)', '0'))
        n = sum(p.numel() for p in emb.linear.parameters())
        rows.append((f'linear_{suffix}', 'linear', str(emb.linear.out_features), '-', '-',
                     str(n)))
    rows.append(('drop', 'dropout', str(model.fc.in_features), '-', '-', '0'))
    rows.append(('fc', 'linear', str(model.fc.out_features), '-', '-',
                 str(sum(p.numel() for p in model.fc.parameters()))))
    header = ('layer', 'type', 'output', 'kernel', '(stride, pad)', 'parameters')
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    def fmt(row: tuple[str, ...]) -> str:
        return '  '.join(c.ljust(wd) for c, wd in zip(row, widths, strict=True)).rstrip()

    return '\n'.join([fmt(header), fmt(tuple('-' * wd for wd in widths)), *map(fmt, rows)])
