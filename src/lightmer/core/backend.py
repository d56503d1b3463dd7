"""Which runtime runs a model file: torch for a `.pt` checkpoint, onnxruntime for an ONNX export.

The nodes, eval-bag and the benchmark call these and never ask which backend they got:

- `read_meta(path)`: the metadata alone (labels, preset, N, T, feature settings), without
  building the network; for an export it reads `<stem>.onnx.json` and imports neither torch
  nor onnxruntime (the audio node);
- `load_model(path, threads)`: metadata plus numpy `segment_logits` and `fuse`, from one read
  of the file (fusion node);
- `face_cropper(path, min_face_size, threads, meta)`: a `FaceCropper` running facenet-pytorch
  (checkpoint) or `lightmer.core.mtcnn` on the export's MTCNN nets (export); given the `meta`
  the caller already read, it does not read a checkpoint again.

A path ending in `.onnx` is an export (`lightmer export --format onnx`); anything else is a
checkpoint. Unusable files raise `CheckpointError` with what to do, as checkpoints always have.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightmer.core.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    meta_from_dict,
    read_checkpoint_meta,
)
from lightmer.core.features import MIN_FACE_SIZE, FaceCropper, face_to_input
from lightmer.core.mtcnn import MTCNNNets

BACKENDS = ('torch', 'onnxruntime')
ONNX_FORMAT = 'lightmer-onnx'           # what `lightmer export --format onnx` writes
ONNX_FORMAT_VERSION = 1
MTCNN_PARTS = ('pnet', 'rnet', 'onet', 'integral')     # in the order of MTCNNNets' fields
# onnxruntime execution providers, most preferred first: the CPU unless this environment
# variable names others, e.g. 'CUDAExecutionProvider,CPUExecutionProvider' with onnxruntime-gpu
# on a Jetson (untested: no GPU where lightmer is tested). onnxruntime falls back to the CPU,
# with a warning, when a provider named is not in its build.
PROVIDERS_ENV = 'LIGHTMER_ONNX_PROVIDERS'


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the nodes, whatever runs it.

    segment_logits: uint8 (98, 80) crop, float32 (128, 43) log-mel -> float64 (C,) logits; the
        face may also be a float32 (1, 98, 80) network input (`face_batch`: the missing face).
    fuse: float64 (n, C) cached segment logits -> float64 (C,) window probabilities.
    """

    meta: CheckpointMeta
    backend: str                     # one of BACKENDS
    segment_logits: Callable[[np.ndarray, np.ndarray], np.ndarray]
    fuse: Callable[[np.ndarray], np.ndarray]


def backend_of(path) -> str:
    """'onnxruntime' for an ONNX export (`*.onnx`), 'torch' for anything else."""
    return 'onnxruntime' if Path(path).suffix == '.onnx' else 'torch'


def read_meta(path) -> CheckpointMeta:
    """The metadata of a checkpoint or an ONNX export; no torch or onnxruntime for an export."""
    if backend_of(path) == 'torch':
        return read_checkpoint_meta(path)
    return meta_from_dict(_export_info(path)['meta'], path)


def load_model(path, threads: int = 1) -> LoadedModel:
    """The model at `path` with numpy callables and its metadata, from one read of the file;
    `threads`: intra-op threads of its runtime."""
    if backend_of(path) == 'torch':
        import torch  # a checkpoint only: the ONNX path never imports torch

        torch.set_num_threads(threads)
        model, meta = load_checkpoint(path)
        return LoadedModel(meta, 'torch', *model_functions(model))
    info = _export_info(path)
    meta = meta_from_dict(info['meta'], path)
    segment = _session(path, 'segment', info, threads)
    fusion = _session(path, 'fusion', info, threads)

    def segment_logits(face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        faces = face_batch(face)                                                # (1, 1, 98, 80)
        mels = np.ascontiguousarray(mel, dtype=np.float32)[None, None]          # (1, 1, 128, 43)
        return segment.run(None, {'faces': faces, 'mels': mels})[0][0].astype(np.float64)

    def fuse(logits: np.ndarray) -> np.ndarray:
        x = np.asarray(logits, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f'expected (N, C) logits with N >= 1, got {x.shape}')
        return fusion.run(None, {'segment_logits': x})[0]

    return LoadedModel(meta, 'onnxruntime', segment_logits, fuse)


def face_batch(face: np.ndarray) -> np.ndarray:
    """One segment's face as the network's batch of one, float32 (1, 1, H, W): a uint8 (H, W)
    crop through `face_to_input`, or a float32 (1, H, W) network input as it is (the input
    `core.missing.missing_face_input` defines for a segment without a face, which no uint8
    crop can give: zero is (127.5 - 127.5) / 128)."""
    face = np.asarray(face)
    if face.dtype == np.uint8:
        return face_to_input(face[None])
    if face.dtype != np.float32 or face.ndim != 3 or face.shape[0] != 1:
        raise ValueError(f'expected a uint8 (H, W) crop or a float32 (1, H, W) face input, got '
                         f'{face.dtype} {face.shape}')
    return np.ascontiguousarray(face)[None]


def model_functions(model) -> tuple[Callable, Callable]:
    """(segment_logits, fuse) callables over numpy for a LightmerNet in eval mode.

    segment_logits: uint8 (98, 80) crop (or float32 (1, 98, 80) face input, `face_batch`),
        float32 (128, 43) mel -> float64 (C,) logits.
    fuse: float64 (n, C) cached logits -> float64 (C,) probabilities.
    """
    # torch (and model.py, which imports it) only here and in load_model's torch branch: an
    # ONNX export runs without it.
    import torch

    from lightmer.core.model import fuse as torch_fuse

    model.eval()

    def segment_logits(face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        faces = torch.from_numpy(face_batch(face))                              # (1, 1, 98, 80)
        mels = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None, None]
        with torch.inference_mode():
            return model.segment_logits(faces, mels)[0].double().numpy()        # (C,)

    def fuse(logits: np.ndarray) -> np.ndarray:
        return torch_fuse(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()

    return segment_logits, fuse


def face_cropper(path, min_face_size: int = MIN_FACE_SIZE, threads: int = 1,
                 meta: CheckpointMeta | None = None) -> FaceCropper:
    """A `FaceCropper` with the feature settings of the model at `path`: facenet-pytorch's
    MTCNN for a checkpoint, the export's MTCNN nets on onnxruntime for an ONNX export.
    meta: the model's metadata when the caller has read it (`load_model`, `read_meta`);
    otherwise it is read here."""
    features = (meta or read_meta(path)).features
    if backend_of(path) == 'torch':
        import torch  # a checkpoint only: the ONNX path never imports torch

        torch.set_num_threads(threads)
        return FaceCropper(features, min_face_size=min_face_size)
    return FaceCropper(features, min_face_size=min_face_size, nets=mtcnn_nets(path, threads))


def mtcnn_nets(path, threads: int = 1) -> MTCNNNets:
    """The MTCNN networks of the ONNX export at `path` as numpy callables on onnxruntime."""
    info = _export_info(path)
    return MTCNNNets(*(_runner(_session(path, part, info, threads)) for part in MTCNN_PARTS))


def _runner(session) -> Callable[[np.ndarray], tuple[np.ndarray, ...] | np.ndarray]:
    """A session as a numpy callable of its single input: its outputs, or the only one."""
    name = session.get_inputs()[0].name
    if len(session.get_outputs()) == 1:
        return lambda x: session.run(None, {name: x})[0]
    return lambda x: tuple(session.run(None, {name: x}))


def export_meta_path(path) -> Path:
    """`<stem>.onnx.json` beside the export `<stem>.onnx`: its metadata as plain JSON."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def _export_info(path) -> dict:
    """The export's metadata JSON (`<stem>.onnx.json`), checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'no model at {path}; export one with `lightmer export '
                              '--format onnx` or give the path of an existing .onnx or .pt file')
    meta_path = export_meta_path(path)
    try:
        info = json.loads(meta_path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise CheckpointError(f'{path} has no metadata file {meta_path.name} beside it: it is '
                              'not a lightmer export, or was copied without it; copy the whole '
                              'export directory (`lightmer export --format onnx` writes it)'
                              ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'cannot read {meta_path} ({e}); copy the export again or '
                              're-run `lightmer export --format onnx`') from e
    return _check_info(info, meta_path)


def _check_info(info, source) -> dict:
    if not isinstance(info, dict) or info.get('format') != ONNX_FORMAT:
        raise CheckpointError(f'{source} is not lightmer export metadata (no format '
                              f'{ONNX_FORMAT!r}); export models with `lightmer export '
                              '--format onnx`')
    if info.get('format_version') != ONNX_FORMAT_VERSION:
        raise CheckpointError(f'{source} has export format version {info.get("format_version")}'
                              f'; this lightmer reads version {ONNX_FORMAT_VERSION}; use the '
                              'lightmer version that wrote it or export again')
    missing = [k for k in ('export_id', 'meta', 'parts') if k not in info]
    if missing:
        raise CheckpointError(f'{source} lacks {missing}; export again')
    return info


def _providers() -> list[str]:
    names = [n.strip() for n in os.environ.get(PROVIDERS_ENV, '').split(',') if n.strip()]
    return names or ['CPUExecutionProvider']


def _session(path, part: str, info: dict, threads: int):
    """An onnxruntime session of one part of the export at `path`, after checking that the
    part carries this export's metadata (same export id, right part)."""
    # onnxruntime only for an export: a checkpoint's process (and read_meta) never loads it.
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    path = Path(path)
    part_path = path.with_name(str(info['parts'].get(part, '')))
    if not info['parts'].get(part) or not part_path.is_file():
        raise CheckpointError(f'the {part} part of the export {path.name} ({part_path.name}) is '
                              'missing; copy the whole export directory (`lightmer export '
                              '--format onnx` writes it)')
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Worker threads that spin while idle would take cores the other nodes need.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.log_severity_level = 3          # warnings about unused initializers are noise
    try:
        session = ort.InferenceSession(str(part_path), options, providers=_providers())
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail,
            ort_errors.NoSuchFile, ort_errors.InvalidArgument) as e:
        raise CheckpointError(f'cannot read {part_path} (truncated, corrupt or not an ONNX '
                              f'file: {e}); copy it again or re-run `lightmer export --format '
                              'onnx`') from e
    props = session.get_modelmeta().custom_metadata_map
    if 'lightmer' not in props:
        raise CheckpointError(f'{part_path} carries no lightmer metadata: it is not part of a '
                              'lightmer export; export models with `lightmer export --format '
                              'onnx`')
    try:
        inner = _check_info(json.loads(props['lightmer']), part_path)
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{part_path} has unreadable lightmer metadata ({e}); export '
                              'again') from e
    if inner['export_id'] != info['export_id'] or props.get('lightmer_part') != part:
        raise CheckpointError(f'{part_path} is not the {part} part of the export described by '
                              f'{path.name}.json (another export, or files renamed); copy the '
                              'whole export directory again')
    return session
