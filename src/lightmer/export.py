"""Export a checkpoint for small robots as two TorchScript files, no lightmer needed to run them.

- `<stem>.segment.ts`: faces (B, 1, 98, 80), mels (B, 1, 128, 43) float32 -> (B, C) segment
  logits; run once per new temporal segment and cache the result.
- `<stem>.fusion.ts`: cached logits (..., N, C) -> (..., C) window probabilities.
- `<stem>.export.json`: labels, N, T and the feature config, so the consumer can compute the
  same inputs (see `lightmer.features`).

ONNX is not offered: torch's exporter needs the `onnx` package (and checking the result needs
onnxruntime); neither is a lightmer dependency, and an export we cannot check is not shipped.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from lightmer.checkpoint import load_checkpoint
from lightmer.io_utils import atomic_save_json, atomic_write
from lightmer.model import LightmerNet, fuse_core

FORMATS = ('torchscript',)


@contextlib.contextmanager
def _jit_deprecation_silenced():
    """torch 2.14 marks torch.jit deprecated; TorchScript is still what libtorch (C++) loads on
    a robot without Python, so we keep it and silence only that notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit\.', category=FutureWarning)
        yield


class ExportError(ValueError):
    """An export that cannot be produced; the message says what to do."""


class SegmentPart(nn.Module):
    """(B, 1, 98, 80), (B, 1, 128, 43) -> (B, C): `LightmerNet.segment_logits` on its own."""

    def __init__(self, model: LightmerNet):
        super().__init__()
        self.visual = model.visual
        self.audio = model.audio
        self.fc = model.fc     # dropout is the identity in eval mode and is left out

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.visual(faces), self.audio(mels)], dim=1))


class FusionPart(nn.Module):
    """(..., N, C) segment logits -> (..., C) probabilities: `model.fuse_core`, the same
    computation `model.fuse` runs (scripted, so it compiles into the .ts file)."""

    def forward(self, segment_logits: torch.Tensor) -> torch.Tensor:
        return fuse_core(segment_logits)


def export_parts(model: LightmerNet) -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
    """TorchScript modules of the per-segment part (traced) and the fusion part (scripted).

    Works on a copy in eval mode; the caller's model is left as it was.
    """
    model = copy.deepcopy(model).eval()
    h, w = model.cfg.face_shape
    m, t = model.cfg.mel_shape
    example = (torch.zeros(2, 1, h, w), torch.zeros(2, 1, m, t))
    with torch.no_grad(), _jit_deprecation_silenced():
        # Tracing is exact here: the per-segment graph has no data-dependent control flow;
        # the batch dimension stays free because flatten(1) and cat(dim=1) do not record it.
        segment = torch.jit.trace(SegmentPart(model).eval(), example)
        fusion = torch.jit.script(FusionPart().eval())
    return segment, fusion


def export_checkpoint(checkpoint, fmt: str = 'torchscript', out_dir=None) -> list[Path]:
    """Write the parts of `checkpoint` into `out_dir` (default: beside it); returns the paths."""
    if fmt not in FORMATS:
        raise ExportError(f'format {fmt!r} is not available: ONNX export needs the onnx and '
                          'onnxruntime packages, which lightmer does not install; use '
                          '--format torchscript')
    checkpoint = Path(checkpoint)
    model, meta = load_checkpoint(checkpoint)
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    segment, fusion = export_parts(model)
    paths = [out / f'{checkpoint.stem}.segment.ts', out / f'{checkpoint.stem}.fusion.ts',
             out / f'{checkpoint.stem}.export.json']
    with _jit_deprecation_silenced():
        atomic_write(paths[0], lambda tmp: torch.jit.save(segment, str(tmp)))
        atomic_write(paths[1], lambda tmp: torch.jit.save(fusion, str(tmp)))
    atomic_save_json(paths[2], {
        'checkpoint': checkpoint.name, 'labels': list(meta.labels),
        'n_segments': meta.n_segments, 'segment_s': meta.segment_s, 'preset': meta.preset,
        'features': meta.features.to_dict(),
        'segment_part': {'inputs': {'faces': [-1, 1, *model.cfg.face_shape],
                                    'mels': [-1, 1, *model.cfg.mel_shape]},
                         'output': [-1, model.cfg.n_classes]},
        'fusion_part': {'input': [-1, 'N', model.cfg.n_classes],
                        'output': [-1, model.cfg.n_classes]}})
    return paths
