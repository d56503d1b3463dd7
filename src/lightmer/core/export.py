"""Export a checkpoint for small robots: TorchScript (libtorch) or ONNX (onnxruntime, no torch).

`--format torchscript`, no lightmer needed to run it:
- `<stem>.segment.ts`: faces (B, 1, 98, 80), mels (B, 1, 128, 43) float32 -> (B, C) segment
  logits; run once per new temporal segment and cache the result.
- `<stem>.fusion.ts`: cached logits (..., N, C) -> (..., C) window probabilities.
- `<stem>.export.json`: labels, N, T and the feature config, so the consumer can compute the
  same inputs (see `lightmer.core.features`).

`--format onnx`, what the nodes run without torch (`lightmer.core.backend`); the model parameter
points at `<stem>.onnx`, and the other files must lie beside it:
- `<stem>.onnx`: the per-segment part, faces (B, 1, 98, 80), mels (B, 1, 128, 43) float32 ->
  (B, C) logits;
- `<stem>.fusion.onnx`: cached logits float64 (N, C) -> (C,) window probabilities;
- `<stem>.mtcnn_{pnet,rnet,onet}.onnx`: facenet-pytorch's own MTCNN networks (the weights in
  its wheel), for `lightmer.core.mtcnn` (a robot without torch cannot read the wheel's .pt files,
  so they travel with the model), and `<stem>.mtcnn_integral.onnx`, the integral image its
  resampling sums (a cumulative sum, ~8x faster on onnxruntime than in numpy);
- `<stem>.onnx.json`: the metadata (`ONNX_FORMAT`, the checkpoint's labels, preset, N, T,
  feature and model configs, provenance, the part files) for readers without onnxruntime
  (the audio node). Every .onnx file carries the same JSON in its metadata (key `lightmer`,
  with `lightmer_part` naming the part), so parts of different exports are never mixed.

Each ONNX part is checked against torch on random inputs before it is written.
"""
from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightmer import __version__
from lightmer.core.atomic_io import atomic_save_json, atomic_write
from lightmer.core.backend import MTCNN_PARTS, ONNX_FORMAT, ONNX_FORMAT_VERSION, export_meta_path
from lightmer.core.checkpoint import CheckpointMeta, load_checkpoint
from lightmer.core.model import LightmerNet, fuse_core
from lightmer.core.mtcnn import integral_image

FORMATS = ('torchscript', 'onnx')
ONNX_OPSET = 17
# Largest difference from torch accepted when an exported part is checked (float32 kernels
# of two libraries sum in different orders; the differences seen are ~1e-6).
_CHECK_ATOL = 1e-4


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
        raise ExportError(f'unknown export format {fmt!r}; choose one of {FORMATS}')
    checkpoint = Path(checkpoint)
    model, meta = load_checkpoint(checkpoint)
    out = Path(out_dir) if out_dir is not None else checkpoint.parent
    if fmt == 'onnx':
        return export_onnx(model, meta, out, checkpoint.stem, source=checkpoint.name)
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


# --- ONNX --------------------------------------------------------------------------------------
def onnx_part_paths(model_path) -> dict[str, Path]:
    """The files of the ONNX export whose per-segment part is `model_path` (`<stem>.onnx`)."""
    model_path = Path(model_path)
    stem = model_path.name.removesuffix('.onnx')
    paths = {'segment': model_path, 'fusion': model_path.with_name(f'{stem}.fusion.onnx')}
    paths.update({net: model_path.with_name(f'{stem}.mtcnn_{net}.onnx') for net in MTCNN_PARTS})
    return paths


def export_onnx(model: LightmerNet, meta: CheckpointMeta, out_dir, stem: str,
                source: str = '') -> list[Path]:
    """Write the ONNX export of `model` (parts listed in the module docstring) into `out_dir`;
    returns the paths, `<stem>.onnx` first. Raises ExportError when facenet-pytorch (whose
    MTCNN weights the export carries) is missing or a part differs from torch."""
    import onnx  # the ONNX format only: a TorchScript export runs without onnx installed

    nets = _mtcnn_modules()
    paths = onnx_part_paths(Path(out_dir) / f'{stem}.onnx')
    info = {'format': ONNX_FORMAT, 'format_version': ONNX_FORMAT_VERSION,
            'export_id': uuid.uuid4().hex, 'meta': meta.to_dict(),
            'parts': {part: p.name for part, p in paths.items()},
            'exported': {'from': source, 'lightmer': __version__, 'torch': torch.__version__,
                         'onnx_opset': ONNX_OPSET}}
    segment_part = SegmentPart(copy.deepcopy(model).eval()).eval()
    h, w = model.cfg.face_shape
    m, t = model.cfg.mel_shape
    n_classes = model.cfg.n_classes
    rng = np.random.default_rng(0)
    specs = {   # part: (module, input names, example inputs, output names, dynamic axes)
        'segment': (segment_part, ['faces', 'mels'],
                    (rng.normal(size=(3, 1, h, w)), rng.normal(size=(3, 1, m, t))),
                    ['logits'], {'faces': {0: 'batch'}, 'mels': {0: 'batch'},
                                 'logits': {0: 'batch'}}),
        'fusion': (FusionPart().eval(), ['segment_logits'], (rng.normal(size=(4, n_classes)),),
                   ['probabilities'], {'segment_logits': {0: 'segments'}}),
        'pnet': (nets['pnet'], ['image'], (rng.normal(size=(1, 3, 61, 83)),),
                 ['regression', 'probabilities'],
                 {'image': {0: 'batch', 2: 'height', 3: 'width'},
                  'regression': {0: 'batch', 2: 'rows', 3: 'columns'},
                  'probabilities': {0: 'batch', 2: 'rows', 3: 'columns'}}),
        'rnet': (nets['rnet'], ['crops'], (rng.normal(size=(3, 3, 24, 24)),),
                 ['regression', 'probabilities'],
                 {'crops': {0: 'batch'}, 'regression': {0: 'batch'},
                  'probabilities': {0: 'batch'}}),
        'onet': (nets['onet'], ['crops'], (rng.normal(size=(3, 3, 48, 48)),),
                 ['regression', 'landmarks', 'probabilities'],
                 {'crops': {0: 'batch'}, 'regression': {0: 'batch'}, 'landmarks': {0: 'batch'},
                  'probabilities': {0: 'batch'}}),
    }
    info_json = json.dumps(info, sort_keys=True)
    protos = {}
    for part, (module, inputs, example, outputs, dynamic) in specs.items():
        dtype = torch.float64 if part == 'fusion' else torch.float32
        example = tuple(torch.from_numpy(x).to(dtype) for x in example)
        protos[part] = _to_onnx(module, example, inputs, outputs, dynamic)
        _check_against_torch(protos[part], module, example, inputs, part)
    protos['integral'] = _integral_graph()
    for part, proto in protos.items():
        for key, value in (('lightmer', info_json), ('lightmer_part', part)):
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        atomic_write(paths[part], lambda tmp, proto=proto: onnx.save(proto, str(tmp)))
    meta_path = export_meta_path(paths['segment'])
    atomic_save_json(meta_path, info)
    return [*paths.values(), meta_path]


def _mtcnn_modules() -> dict[str, nn.Module]:
    """facenet-pytorch's P-, R- and O-Net with the weights of its wheel, in eval mode."""
    try:   # heavy (torchvision), and its absence is reported with what to install
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except ImportError as e:
        raise ExportError('the ONNX export carries MTCNN\'s networks from facenet-pytorch, '
                          f'which is not importable here ({e}); install it with '
                          '`pip install --no-deps facenet-pytorch==2.6.0`') from None
    return {'pnet': PNet().eval(), 'rnet': RNet().eval(), 'onet': ONet().eval()}


def _integral_graph():
    """ONNX graph of `lightmer.core.mtcnn.integral_image` (int32): uint8 (H, W, 3) `image` ->
    int32 (H + 1, W + 1, 3) `integral`, checked against it on a random image."""
    # The ONNX format only, as in export_onnx.
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes = [helper.make_node('Cast', ['image'], ['pixels'], to=TensorProto.INT32),
             helper.make_node('Pad', ['pixels', 'pads'], ['padded']),      # a zero row, column
             helper.make_node('CumSum', ['padded', 'axis_rows'], ['rows']),
             helper.make_node('CumSum', ['rows', 'axis_columns'], ['integral'])]
    constants = [helper.make_tensor('pads', TensorProto.INT64, [6], [1, 1, 0, 0, 0, 0]),
                 helper.make_tensor('axis_rows', TensorProto.INT32, [], [0]),
                 helper.make_tensor('axis_columns', TensorProto.INT32, [], [1])]
    graph = helper.make_graph(
        nodes, 'integral_image',
        [helper.make_tensor_value_info('image', TensorProto.UINT8, ['height', 'width', 3])],
        [helper.make_tensor_value_info('integral', TensorProto.INT32, ['rows', 'columns', 3])],
        constants)
    # IR version 8 / opset 17, as the exported networks (onnxruntime 1.31 reads IR <= 13).
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', ONNX_OPSET)],
                              ir_version=8, producer_name='lightmer')
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    if not np.array_equal(session.run(None, {'image': image})[0], integral_image(image)):
        raise ExportError('the integral-image graph differs from core.mtcnn.integral_image '
                          f'on this onnx / onnxruntime (onnx {onnx.__version__})')
    return proto


def _to_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], inputs: list[str],
             outputs: list[str], dynamic: dict):
    """The ONNX ModelProto of `module` traced on `example`."""
    import onnx  # the ONNX format only, as in export_onnx

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter (and its logging helper) is deprecated in favour of
        # the torch.export-based one, which needs onnxscript besides onnx; tracing is exact for
        # these graphs (no data-dependent control flow), so we keep it and one dependency
        # fewer, and silence its notices for this call only.
        warnings.simplefilter('ignore', DeprecationWarning)
        path = Path(tmp) / 'part.onnx'
        torch.onnx.export(module, example, str(path), input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, opset_version=ONNX_OPSET,
                          dynamo=False)
        return onnx.load(str(path))


def _check_against_torch(proto, module: nn.Module, example: tuple[torch.Tensor, ...],
                         inputs: list[str], part: str) -> None:
    """Run the exported part on onnxruntime and torch; ExportError if they differ."""
    import onnxruntime as ort  # the ONNX format only, as in export_onnx

    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    got = session.run(None, {name: x.numpy() for name, x in zip(inputs, example, strict=True)})
    with torch.no_grad():
        want = module(*example)
    want = want if isinstance(want, tuple) else (want,)
    for g, w_ in zip(got, want, strict=True):
        diff = float(np.max(np.abs(g - w_.numpy()))) if g.size else 0.0
        if g.shape != tuple(w_.shape) or not diff <= _CHECK_ATOL:
            raise ExportError(f'the exported {part} part differs from torch (shape {g.shape} '
                              f'vs {tuple(w_.shape)}, max difference {diff:g}); this torch / '
                              'onnx combination does not export it faithfully')
