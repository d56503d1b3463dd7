"""Training and evaluation samples from a `lightmer prepare` cache.

Per sample and segment (the clip cut into N equal segments), `segments.choose_frames` picks the
cached face crop and the audio-window centre: in training one of the segment's crops at random
with the audio centre jittered by up to 10 ms, in evaluation the crop nearest the segment centre.
Training draws depend only on (seed, epoch, index), set with `set_epoch`, so a rerun is identical
and two epochs differ. In training, `augment` (datasets.augment) may change each segment's crop
and audio window and drop one of its modalities, from generators of their own: with 'none' and
no dropout the items are exactly the paper's.
"""
from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lightmer.core.config import FeatureConfig, get_preset
from lightmer.core.features import (
    audio_window,
    face_to_input,
    log_mel,
    log_mel_at,
    mel_db_statistics,
)
from lightmer.core.missing import missing_audio_input, missing_face_input
from lightmer.core.segments import choose_frames, segment_bounds
from lightmer.datasets.augment import (
    AugmentConfig,
    augment_audio,
    augment_face,
    drop_modalities,
    dropout_rng,
    segment_rng,
)

# Clips held in memory per dataset object (~0.3 MB each for CREMA-D): the whole generated
# corpus, a useful working set of a real one.
_MEMORY_CLIPS = 1024


@dataclass(frozen=True)
class CacheIndex:
    """CACHE/index.json, validated. `clips` holds every entry; `usable()` those with status ok."""

    path: Path
    dataset: str
    preset: str
    n_segments: int
    frames_per_segment: int
    features: FeatureConfig
    clips: tuple[dict, ...]
    skipped: tuple[dict, ...]

    def usable(self) -> list[dict]:
        """Entries with status 'ok', in clip-id order (no_face / unreadable are left out)."""
        return [c for c in self.clips if c['status'] == 'ok']

    @property
    def clip_ids(self) -> list[str]:
        return [c['clip_id'] for c in self.usable()]

    @property
    def actors(self) -> list[str]:
        return [c['actor'] for c in self.usable()]

    @property
    def label_codes(self) -> list[str]:
        return [c['label'] for c in self.usable()]

    def label_indices(self, labels: tuple[str, ...] | None = None) -> list[int]:
        """Class index per usable clip in the order of `labels` (default: the preset's)."""
        return [label_index(self.preset, c['label'], labels) for c in self.usable()]


def load_index(cache_dir: str | Path) -> CacheIndex:
    """Read and check CACHE/index.json; errors say how to fix the cache."""
    path = Path(cache_dir) / 'index.json'
    if not path.exists():
        raise FileNotFoundError(f'{path} not found: run `lightmer prepare --dataset ... '
                                f'--root ... --cache {cache_dir}` first')
    d = json.loads(path.read_text(encoding='utf-8'))
    if not d.get('complete'):
        raise ValueError(f'{path} is from an unfinished prepare run: run it again to finish')
    try:
        return CacheIndex(path=path, dataset=d['dataset'], preset=d['preset'],
                          n_segments=int(d['n_segments']),
                          frames_per_segment=int(d['frames_per_segment']),
                          features=FeatureConfig.from_dict(d['features']),
                          clips=tuple(d['clips']), skipped=tuple(d.get('skipped', ())))
    except KeyError as e:
        raise ValueError(f'{path} lacks {e}: it was not written by this version of lightmer '
                         'prepare; prepare the cache again') from None


def label_index(preset: str, code: str, labels: tuple[str, ...] | None = None) -> int:
    """Class index of dataset code `code` ('ANG' / '05').

    `labels` gives the class order either as the preset's class names ('angry', ...) or as its
    dataset codes ('ANG', ...); the two vocabularies are disjoint. Default: the preset's order.
    """
    p = get_preset(preset)
    if code not in p.codes:
        raise ValueError(f'label code {code!r} is not a {preset} code {p.codes}')
    labels = p.labels if labels is None else tuple(labels)
    if set(labels) <= set(p.codes):
        key = code
    elif set(labels) <= set(p.labels):
        key = p.labels[p.codes.index(code)]
    else:
        raise ValueError(f'labels {labels} are neither {preset} class names {p.labels} nor '
                         f'its codes {p.codes}')
    if key not in labels:
        raise ValueError(f'class {key!r} (code {code}) is not among the labels {labels}')
    return labels.index(key)


class SegmentDataset(Dataset):
    """(faces float32 (N, 1, 98, 80), log-mels float32 (N, 1, 128, 43), class index) per clip."""

    def __init__(self, cache_dir: str | Path, clip_ids, n_segments: int,
                 labels: tuple[str, ...], train: bool, seed: int,
                 features: FeatureConfig | None = None,
                 augment: AugmentConfig = AugmentConfig()):
        """`labels`: the class order, as preset class names or dataset codes (`label_index`).
        `clip_ids` must have status 'ok' in the cache index. `features`: the cache's own
        (default), or the same with another log-mel normalisation (`dataset_mel_norm`).
        `augment`: applied to training items only (train=True)."""
        self.cache_dir = Path(cache_dir)
        self.index = load_index(self.cache_dir)
        self.cfg = self.index.features if features is None else features
        if _without_mel_norm(self.cfg) != _without_mel_norm(self.index.features):
            raise ValueError(f'features {self.cfg} differ from those {self.cache_dir} was '
                             f'prepared with ({self.index.features}) beyond the log-mel '
                             'normalisation; prepare a cache with these settings')
        by_id = {c['clip_id']: c for c in self.index.clips}
        self.clip_ids = list(clip_ids)
        for cid in self.clip_ids:
            entry = by_id.get(cid)
            if entry is None:
                raise KeyError(f'clip {cid!r} is not in {self.index.path}')
            if entry['status'] != 'ok':
                raise ValueError(f'clip {cid!r} has status {entry["status"]!r} and cannot be '
                                 'used; take ids from CacheIndex.usable()')
        if n_segments < 1:
            raise ValueError(f'n_segments must be >= 1, got {n_segments}')
        self.n_segments = n_segments
        self.label_names = tuple(labels)
        self.train = train
        self.seed = seed
        self.augment = augment
        self.epoch = 0
        self.actors = [by_id[c]['actor'] for c in self.clip_ids]
        self.targets = [label_index(self.index.preset, by_id[c]['label'], self.label_names)
                        for c in self.clip_ids]
        self._memory: OrderedDict[str, dict] = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        """Training draws depend on (seed, epoch, index) only."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def _clip(self, clip_id: str) -> dict:
        clip = self._memory.get(clip_id)
        if clip is None:
            with np.load(self.cache_dir / 'clips' / f'{clip_id}.npz') as z:
                clip = {k: z[k] for k in ('crops', 'crop_times', 'audio', 'duration')}
            self._memory[clip_id] = clip
            if len(self._memory) > _MEMORY_CLIPS:
                self._memory.popitem(last=False)
        return clip

    def choose(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The crop indices int (N,) and audio centres float64 (N,) s used for sample `i`."""
        clip = self._clip(self.clip_ids[i])
        times, duration = clip['crop_times'], float(clip['duration'])
        if not self.train:
            return choose_frames(times, duration, self.n_segments)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return choose_frames(times, duration, self.n_segments, rng, self.cfg.jitter_s)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        clip = self._clip(self.clip_ids[i])
        picks, centres = self.choose(i)
        if self.train and self.augment.active:
            faces, mels = self._augmented(i, clip, picks, centres)
            return torch.from_numpy(faces), torch.from_numpy(mels), self.targets[i]
        faces = face_to_input(clip['crops'][picks])                          # (N, 1, 98, 80)
        mels = np.stack([log_mel_at(clip['audio'], float(c), self.cfg)
                         for c in centres])[:, None]                         # (N, 1, 128, 43)
        return torch.from_numpy(faces), torch.from_numpy(mels), self.targets[i]


    def _augmented(self, i: int, clip: dict, picks: np.ndarray,
                   centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Faces float32 (N, 1, 98, 80) and log-mels float32 (N, 1, 128, 43) of training
        sample `i` with its augmentation and modality dropout. Each segment and modality draws
        from its own generator, so a dropped face does not shift the audio's draws, and 'face'
        draws the same faces as 'both'."""
        aug, cfg = self.augment, self.cfg
        drops = drop_modalities(len(picks), aug.modality_dropout,
                                dropout_rng(self.seed, self.epoch, i))
        faces, mels = [], []
        for k, (pick, centre) in enumerate(zip(picks, centres, strict=True)):
            if drops[k] == 1:
                faces.append(missing_face_input(cfg))
            else:
                crop = clip['crops'][pick]
                if aug.faces:
                    crop = augment_face(crop, segment_rng(self.seed, self.epoch, i, k, 'face'))
                faces.append(face_to_input(crop))                            # (1, 98, 80)
            if drops[k] == 2:
                mels.append(missing_audio_input(cfg))
                continue
            window = audio_window(clip['audio'], float(centre), cfg)         # (24000,)
            if aug.audio:
                window = augment_audio(window, cfg.sample_rate,
                                       segment_rng(self.seed, self.epoch, i, k, 'audio'))
            mels.append(log_mel(window, cfg))                                # (128, 43)
        return np.stack(faces), np.stack(mels)[:, None]


def _without_mel_norm(cfg: FeatureConfig) -> FeatureConfig:
    """`cfg` with the default log-mel normalisation: the settings a cache depends on."""
    return dataclasses.replace(cfg, mel_norm='window', mel_db_mean=0.0, mel_db_std=1.0)


def dataset_mel_norm(cache_dir: str | Path, clip_ids, n_segments: int) -> FeatureConfig:
    """The cache's FeatureConfig with mel_norm 'dataset' and the dB statistics of `clip_ids`
    (the training clips: never the test actors'), over the audio windows at their N segment
    centres, the windows evaluation and the nodes use."""
    cache_dir = Path(cache_dir)
    cfg = load_index(cache_dir).features

    def windows():
        for clip_id in clip_ids:
            with np.load(cache_dir / 'clips' / f'{clip_id}.npz') as z:
                audio, duration = z['audio'], float(z['duration'])
            for c in segment_bounds(duration, n_segments).mean(axis=1):
                yield audio_window(audio, float(c), cfg)

    mean, std = mel_db_statistics(windows(), cfg)
    return dataclasses.replace(cfg, mel_norm='dataset', mel_db_mean=mean, mel_db_std=std)
