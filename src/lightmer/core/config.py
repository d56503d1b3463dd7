"""Frozen configuration shared by training, the offline evaluator and the ROS nodes.

`FeatureConfig` and `ModelConfig` travel inside every checkpoint and export, so a node computes
its features exactly as the model was trained. Nothing here imports torch: a node running the
ONNX export reads them without it. `Preset` holds the per-dataset choices of the paper
(section V-A).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


def _strict_kwargs(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """Keys of `d` checked against the dataclass fields of `cls` (unknown keys are an error)."""
    if not isinstance(d, dict):
        raise TypeError(f'{cls.__name__}.from_dict expects a dict, got {type(d).__name__}')
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f'{cls.__name__}: unknown keys {unknown}; known keys are '
                         f'{sorted(names)} (was the file written by another lightmer version?)')
    return dict(d)


MEL_NORMS = ('window', 'dataset')
# Training augmentation (datasets.augment): the kinds, and the defaults of `lightmer train`
# (chosen from the zero-label study, docs/ROBUSTNESS.md). 'none' with modality dropout 0 is
# the paper's recipe.
AUGMENTS = ('none', 'face', 'audio', 'both')
DEFAULT_AUGMENT = 'none'
DEFAULT_MODALITY_DROPOUT = 0.0


@dataclass(frozen=True)
class FeatureConfig:
    """How a face crop and an audio window are turned into network inputs."""

    sample_rate: int = 16000      # Hz; all audio is resampled to this before windowing
    window_s: float = 1.5         # d, audio window length (paper V-A)
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    face_height: int = 98         # the paper's "80x98" crop is 98 high x 80 wide (Table 1)
    face_width: int = 80
    face_margin: float = 0.1      # fraction of box size added on each side before cropping
    face_min_prob: float = 0.9    # MTCNN probability threshold
    jitter_s: float = 0.010       # max audio-centre offset from the frame in training (±10 ms)
    # Log-mel normalisation (features.log_mel). 'window': each window's dB standardised by its
    # own mean and std, so the input is blind to level (the default, as trained so far).
    # 'dataset': (dB - mel_db_mean) / mel_db_std with the training set's statistics (set by
    # `lightmer train --mel-norm dataset`), so louder speech gives larger inputs.
    mel_norm: str = 'window'
    mel_db_mean: float = 0.0      # dB, mean of every mel value of the training windows
    mel_db_std: float = 1.0       # dB, their standard deviation
    # MTCNN runs on an area-downscaled copy whose longer side is at most this many pixels (0:
    # on the frame itself); boxes are mapped back and the crop is cut from the full frame.
    # The crop is 98 x 80: detection needs no more resolution than a face that size has.
    detect_max_side: int = 640

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.window_s <= 0:
            raise ValueError('sample_rate and window_s must be positive')
        if self.window_samples < self.n_fft:
            raise ValueError(f'the audio window ({self.window_samples} samples) is shorter than '
                             f'n_fft ({self.n_fft}); lengthen window_s or shrink n_fft')
        if self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError('hop_length and n_mels must be positive')
        if self.face_height <= 0 or self.face_width <= 0:
            raise ValueError('face_height and face_width must be positive')
        if self.face_margin < 0 or not 0 <= self.face_min_prob <= 1 or self.jitter_s < 0:
            raise ValueError('face_margin >= 0, 0 <= face_min_prob <= 1 and jitter_s >= 0')
        if self.mel_norm not in MEL_NORMS:
            raise ValueError(f"mel_norm must be 'window' or 'dataset', got {self.mel_norm!r}")
        if not math.isfinite(self.mel_db_mean):
            raise ValueError(f'mel_db_mean must be a finite number of dB, got {self.mel_db_mean}')
        if not (math.isfinite(self.mel_db_std) and self.mel_db_std > 0):
            raise ValueError(f'mel_db_std must be a positive number of dB, got {self.mel_db_std}')
        if self.detect_max_side < 0:
            raise ValueError(f'detect_max_side must be >= 0 (0 = detect on the full frame), '
                             f'got {self.detect_max_side}')

    @property
    def window_samples(self) -> int:
        """Samples in one audio window: 24000 at 16 kHz and 1.5 s."""
        return int(round(self.window_s * self.sample_rate))

    @property
    def mel_frames(self) -> int:
        """STFT frames of one window without centre padding: 1 + (24000 - 2048) // 512 = 43."""
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        kw = _strict_kwargs(cls, d)
        # Checkpoints and caches written before detect_max_side existed detected on the full
        # frame: read them as they were made, not with today's default.
        kw.setdefault('detect_max_side', 0)
        return cls(**kw)


# Filters of the three conv blocks of the Visual Net and the Audio Net (paper Table 1).
VISUAL_CHANNELS = (16, 32, 64)
AUDIO_CHANNELS = (4, 8, 12)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network; `n_classes` is the only one that changes between presets."""

    n_classes: int
    dropout: float = 0.2               # before the FC (Table 1, Table 2)
    visual_dim: int = 512              # VN embedding length
    audio_dim: int = 128               # AN embedding length
    face_shape: tuple[int, int] = (98, 80)   # crop height, width (FeatureConfig.face_*)
    mel_shape: tuple[int, int] = (128, 43)   # n_mels, frames (FeatureConfig.n_mels/mel_frames)

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise ValueError(f'n_classes must be >= 2, got {self.n_classes}')
        if not 0 <= self.dropout < 1:
            raise ValueError(f'dropout must be in [0, 1), got {self.dropout}')
        # Tuples may arrive as lists from JSON; keep the frozen dataclass hashable.
        object.__setattr__(self, 'face_shape', tuple(int(x) for x in self.face_shape))
        object.__setattr__(self, 'mel_shape', tuple(int(x) for x in self.mel_shape))
        for name, shape, chans in (('face_shape', self.face_shape, VISUAL_CHANNELS),
                                   ('mel_shape', self.mel_shape, AUDIO_CHANNELS)):
            h, w = conv_stack_out(shape, len(chans))
            if h < 1 or w < 1:
                raise ValueError(f'{name} {shape} is too small for {len(chans)} conv+pool '
                                 'blocks (needs at least 22 x 22)')

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['face_shape'] = list(self.face_shape)
        d['mel_shape'] = list(self.mel_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**_strict_kwargs(cls, d))


def conv_stack_out(shape: tuple[int, int], n_blocks: int) -> tuple[int, int]:
    """Spatial size after n blocks of [3x3 conv, stride 1, no padding; 2x2 max pool, floor]."""
    h, w = shape
    for _ in range(n_blocks):
        h, w = (h - 2) // 2, (w - 2) // 2
    return h, w


@dataclass(frozen=True)
class Preset:
    """Per-dataset choices: class order, N, N_u and the nodes' streaming segment length."""

    name: str                     # 'crema-d' | 'ravdess'
    labels: tuple[str, ...]       # class names in output order (lower-case English words)
    codes: tuple[str, ...]        # dataset codes in the same order ('ANG', ... / '01', ...)
    n_segments: int               # N (5 / 12), paper V-A
    n_uncertain: int              # N_u, uncertain samples moved from U per epoch (20 / 5)
    segment_s: float              # streaming segment length T for the nodes (0.5 / 0.6);
    # a live window then spans N*T seconds (2.5 s / 7.2 s)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.codes):
            raise ValueError(f'preset {self.name}: {len(self.labels)} labels but '
                             f'{len(self.codes)} codes')

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['labels'] = list(self.labels)
        d['codes'] = list(self.codes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        kw = _strict_kwargs(cls, d)
        kw['labels'] = tuple(kw.get('labels', ()))
        kw['codes'] = tuple(kw.get('codes', ()))
        return cls(**kw)


PRESETS: dict[str, Preset] = {
    'crema-d': Preset(
        name='crema-d',
        labels=('angry', 'disgusted', 'fearful', 'happy', 'neutral', 'sad'),
        codes=('ANG', 'DIS', 'FEA', 'HAP', 'NEU', 'SAD'),
        n_segments=5, n_uncertain=20, segment_s=0.5),
    'ravdess': Preset(
        name='ravdess',
        labels=('neutral', 'calm', 'happy', 'sad', 'angry', 'fearful', 'disgusted',
                'surprised'),
        codes=('01', '02', '03', '04', '05', '06', '07', '08'),
        n_segments=12, n_uncertain=5, segment_s=0.6),
}


def get_preset(name: str) -> Preset:
    """The preset called `name`, with an error that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f'unknown preset {name!r}; choose one of {sorted(PRESETS)}') from None
