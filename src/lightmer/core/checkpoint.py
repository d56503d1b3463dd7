"""Self-describing checkpoints: weights plus everything needed to use them.

One file holds the state dict, the class labels in output order, N, the preset, the streaming
segment length, the `FeatureConfig` and `ModelConfig`, and the training provenance, so a node
needs only the path and computes features exactly as in training.

File layout (a `torch.save` dict that `torch.load(weights_only=True)` accepts: only tensors,
str, int, float, bool, None, lists and dicts):
    {'format': 'lightmer-checkpoint', 'format_version': 1,
     'meta': {'preset', 'labels', 'n_segments', 'segment_s', 'features', 'model', 'provenance'},
     'state_dict': {...}}
"""
from __future__ import annotations

import datetime as dt
import json
import pickle
import subprocess
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightmer import __version__
from lightmer.core.atomic_io import atomic_torch_save
from lightmer.core.config import FeatureConfig, ModelConfig, get_preset

if TYPE_CHECKING:
    from lightmer.core.model import LightmerNet

FORMAT = 'lightmer-checkpoint'
FORMAT_VERSION = 1
_TOP_KEYS = ('format', 'format_version', 'meta', 'state_dict')
_META_KEYS = ('preset', 'labels', 'n_segments', 'segment_s', 'features', 'model', 'provenance')


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class CheckpointMeta:
    preset: str                       # 'crema-d' | 'ravdess' (or a custom name)
    labels: tuple[str, ...]           # class names in output order; len == model.n_classes
    n_segments: int                   # N the model was trained with
    segment_s: float                  # streaming segment length T for the nodes
    features: FeatureConfig
    model: ModelConfig
    provenance: dict[str, Any] = field(default_factory=dict)  # dataset, fold, epoch, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, 'labels', tuple(self.labels))
        if len(self.labels) != self.model.n_classes:
            raise ValueError(f'{len(self.labels)} labels for a model with '
                             f'{self.model.n_classes} classes')
        if self.n_segments < 1 or not self.segment_s > 0:
            raise ValueError('n_segments must be >= 1 and segment_s > 0')
        if (tuple(self.model.face_shape) != (self.features.face_height, self.features.face_width)
                or tuple(self.model.mel_shape) != (self.features.n_mels,
                                                   self.features.mel_frames)):
            raise ValueError(f'model input shapes {self.model.face_shape}, '
                             f'{self.model.mel_shape} do not match the features '
                             f'({self.features.face_height}, {self.features.face_width}), '
                             f'({self.features.n_mels}, {self.features.mel_frames})')

    def to_dict(self) -> dict[str, Any]:
        return {'preset': self.preset, 'labels': list(self.labels),
                'n_segments': self.n_segments, 'segment_s': self.segment_s,
                'features': self.features.to_dict(), 'model': self.model.to_dict(),
                'provenance': dict(self.provenance)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckpointMeta:
        return cls(preset=str(d['preset']), labels=tuple(d['labels']),
                   n_segments=int(d['n_segments']), segment_s=float(d['segment_s']),
                   features=FeatureConfig.from_dict(d['features']),
                   model=ModelConfig.from_dict(d['model']),
                   provenance=dict(d['provenance']))


def make_provenance(**fields: Any) -> dict[str, Any]:
    """Provenance for a checkpoint: the given fields (dataset, fold, epoch, strategy, ...) plus
    the UTC date, the lightmer version and the git commit of the source tree (None outside git).
    """
    try:
        git = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = None
    return {'date': dt.datetime.now(dt.UTC).isoformat(timespec='seconds'),
            'lightmer': __version__, 'git': git, **fields}


def save_checkpoint(path, model: LightmerNet, meta: CheckpointMeta) -> None:
    """Write model weights and `meta` to `path` atomically (a reader never sees half a file)."""
    if model.cfg != meta.model:
        raise ValueError(f'model config {model.cfg} differs from meta.model {meta.model}')
    meta_dict = meta.to_dict()
    try:  # keep provenance to plain data so that weights_only loading accepts it
        meta_dict['provenance'] = json.loads(json.dumps(meta_dict['provenance']))
    except TypeError as e:
        raise ValueError(f'provenance must hold plain JSON data: {e}') from None
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(path, {'format': FORMAT, 'format_version': FORMAT_VERSION,
                             'meta': meta_dict, 'state_dict': state})


def load_checkpoint(path, map_location='cpu') -> tuple[LightmerNet, CheckpointMeta]:
    """Read, validate and build the model of a checkpoint; the model is in eval mode.

    Raises CheckpointError (with what to do) for a missing, truncated or foreign file, missing
    keys, a newer format, or weights that do not fit the stored config.
    """
    # model.py imports torch.nn at its top; checkpoint.py is also read where the network is not
    # built (read_checkpoint_meta, and the ONNX path through backend, which never imports torch).
    from lightmer.core.model import LightmerNet

    path = Path(path)
    blob, meta = _read_checked(path, map_location)
    model = LightmerNet(meta.model)
    try:
        model.load_state_dict(blob['state_dict'], strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f'weights in {path} do not fit the stored model config: {e}; '
                              'the file was edited or written by another version') from e
    _check_finite(path, model)
    model.to(map_location)
    model.eval()
    return model, meta


def read_checkpoint_meta(path) -> CheckpointMeta:
    """The metadata of the checkpoint at `path`, from the file's dict alone: the network is not
    built. The same checks and CheckpointErrors as `load_checkpoint`, except for the weights'
    (their fit and finiteness are checked where the network is built)."""
    return _read_checked(Path(path), 'cpu')[1]


def _read_checked(path: Path, map_location) -> tuple[dict[str, Any], CheckpointMeta]:
    """The checkpoint file's dict, checked for format, keys and version, and its metadata."""
    if not path.is_file():
        raise CheckpointError(f'no checkpoint at {path}; train one with `lightmer train` or '
                              'give the path of an existing .pt file')
    blob = _read(path, map_location)
    if not isinstance(blob, dict) or blob.get('format') != FORMAT:
        raise CheckpointError(f'{path} is not a lightmer checkpoint (no format '
                              f'{FORMAT!r}); save models with lightmer.core.checkpoint')
    missing = [k for k in _TOP_KEYS if k not in blob]
    if missing:
        raise CheckpointError(f'checkpoint {path} lacks keys {missing}; it is incomplete, '
                              're-run training to write a new one')
    if blob['format_version'] != FORMAT_VERSION:
        raise CheckpointError(f'checkpoint {path} has format version {blob["format_version"]}; '
                              f'this lightmer reads version {FORMAT_VERSION}; use the lightmer '
                              'version that wrote it or retrain')
    return blob, meta_from_dict(blob['meta'], path)


def meta_from_dict(meta_d: Any, path) -> CheckpointMeta:
    """Validate the metadata dict of the model file at `path` (a checkpoint or an ONNX export:
    both carry the same dict) and build its `CheckpointMeta`.

    Raises CheckpointError (with what to do) for missing keys or invalid values.
    """
    missing = [k for k in _META_KEYS if not isinstance(meta_d, dict) or k not in meta_d]
    if missing:
        raise CheckpointError(f'{path} metadata lacks {missing}; re-run training '
                              'to write a complete checkpoint')
    try:
        meta = CheckpointMeta.from_dict(meta_d)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f'{path} has invalid metadata: {e}') from e
    return meta


def _read(path: Path, map_location) -> Any:
    """torch.load with weights_only (never anything looser), its failures told apart.

    A file whose pickle holds anything but tensors and plain data is not one lightmer wrote
    (a pickled nn.Module, another tool's file, or a file made to run code when unpickled): it
    is refused as such. torch's message is not passed on, since it suggests loosening the
    check, which would run whatever the file holds.
    """
    import torch  # only once a .pt is read: an ONNX export's metadata needs no torch

    if not zipfile.is_zipfile(path):     # torch.save writes a zip archive
        with open(path, 'rb') as f:
            if f.read(2) == b'PK':           # a zip's first bytes but no directory at its end
                raise CheckpointError(f'cannot read checkpoint {path}: the archive is '
                                      'truncated or corrupt; copy it again or re-run training')
        raise CheckpointError(f'{path} is not a lightmer checkpoint (not a torch archive at '
                              'all); use a checkpoint written by `lightmer train`')
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write before refusing the file
            warnings.simplefilter('ignore', UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f'{path} is not a lightmer checkpoint: it holds Python objects '
                              'other than tensors and plain data, which lightmer never writes, '
                              'and it is not loaded (loading it could run code it carries); '
                              'use a checkpoint written by `lightmer train`') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f'cannot read checkpoint {path} (truncated or corrupt: {e}); copy '
                              'it again or re-run training') from None


def _check_finite(path: Path, model: LightmerNet) -> None:
    """Refuse NaN or infinite weights: such a model outputs NaN probabilities for any input."""
    import torch  # as in _read: never on the ONNX path

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f'checkpoint {path} has non-finite values (NaN or inf) in {name!r}: training '
                'diverged or the file was damaged; use an earlier checkpoint of the run (its '
                'best.pt) or retrain (a lower --lr helps against divergence)')


def meta_for_preset(preset_name: str, features: FeatureConfig | None = None,
                    n_segments: int | None = None, **provenance: Any) -> CheckpointMeta:
    """Metadata for a fresh model of a preset (an untrained model for benches and tests)."""
    preset = get_preset(preset_name)
    features = features or FeatureConfig()
    model_cfg = ModelConfig(n_classes=len(preset.labels),
                            face_shape=(features.face_height, features.face_width),
                            mel_shape=(features.n_mels, features.mel_frames))
    return CheckpointMeta(preset=preset.name, labels=preset.labels,
                          n_segments=n_segments or preset.n_segments,
                          segment_s=preset.segment_s, features=features, model=model_cfg,
                          provenance=make_provenance(**provenance))
