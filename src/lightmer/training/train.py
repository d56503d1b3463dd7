"""Offline training: uncertainty-based learning (paper Algorithm 1) or the full-set baseline,
with 5-fold subject-independent cross-validation, per-epoch metrics, plots and exact resume.

Run layout (`cfg.out` = RUN):

    RUN/<strategy>/config.json            the settings every fold of this strategy shares
    RUN/<strategy>/fold_K/split.json      actors and clip ids of D_train(0), U and the test fold
    RUN/<strategy>/fold_K/state.pt        resumable state after the last completed epoch
    RUN/<strategy>/fold_K/metrics.json    one entry per completed epoch
    RUN/<strategy>/fold_K/last.pt, best.pt  self-describing checkpoints (checkpoint.py)
    RUN/<strategy>/fold_K/result.json, confusion.png, loss.png, accuracy.png   when finished
    RUN/<strategy>/summary.json, summary.png   mean +- std test accuracy, summed confusion
    RUN/comparison.json, comparison.png   both strategies' fold-mean curves (paper Figs. 4-5)

Algorithm 1 as implemented, with E = cfg.epochs training epochs in total:
  epoch 0       line 1: "train initial model M on D_train = D_train(0)" is one epoch on D0;
  epoch 1..E-1  lines 3-11: M in eval mode over every clip of U with the inference segment
                choices, entropy in bits of its output, the N_u most uncertain (ties by clip id)
                go through the oracle (line 9) and from U into D_train, then one training
                epoch on D_train. Once U is empty, the epochs train on D_train alone.
The full baseline trains on every training actor's clips in all E epochs; everything else
(model init, learning-rate schedule, batches, evaluation) is identical.

Checkpoint selection: `best.pt` minimises the eval-mode cross-entropy on D_train(0) (inference
segment choices). D0 is labelled from the start, has the same clips in both strategies and in
every epoch, and never touches the test fold, so the criterion is comparable across epochs and
cannot leak test information. It is a training-set loss, so expect best to sit near last.

Under torchrun one fold trains across K processes (distributed.py says how K ranks compute what
one process computes): `--batch-size` stays the global batch, every rank scores its share of U,
D0 and the test fold, and rank 0 alone writes the files above. Every random draw of an epoch is
keyed by (seed, fold, epoch) and the clip, never by a process's generator, so the run does not
depend on K or on the DataLoader workers, and resuming only needs the model, the optimiser and
the bookkeeping.

Pieces other commands reuse: `epoch_batches`, `train_epoch` (one pass in train mode),
`predict` (eval-mode probabilities), `prepare_model` (keyed dropout, and DDP with K ranks),
`Precision` (float32 or CUDA autocast).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.checkpoint import CheckpointMeta, make_provenance, save_checkpoint
from lightmer.core.config import (
    DEFAULT_AUGMENT,
    DEFAULT_MODALITY_DROPOUT,
    MEL_NORMS,
    FeatureConfig,
    get_preset,
)
from lightmer.core.model import LightmerNet, ModelConfig
from lightmer.core.plots import confusion_matrix, plot_comparison, plot_confusion, plot_curves
from lightmer.core.uncertainty import entropy_bits, most_uncertain
from lightmer.datasets.augment import AugmentConfig
from lightmer.datasets.cache import CacheIndex, SegmentDataset, dataset_mel_norm, load_index
from lightmer.training.distributed import (
    SINGLE,
    Ranks,
    all_sum,
    gather_rows,
    join,
    launch_record,
    launched_ranks,
    leave,
    on_main,
    replace_modules,
    set_dropout_keys,
    shard_batches,
    shard_sizes,
    split_batch,
    to_cross_rank_batchnorm,
    to_keyed_dropout,
)
from lightmer.training.folds import Split, check_disjoint, split_fold
from lightmer.training.oracle import DatasetOracle, Oracle
from lightmer.training.resume import (
    StateFile,
    claim_settings,
    deterministic_algorithms,
    rng_state,
    run_settings,
    seed_global_generators,
    set_rng_state,
)

STRATEGIES = ('uncertainty', 'full')
FOLD_STATE = StateFile(version=1, restart='delete the fold directory to restart that fold, or '
                       'use another --out')
# Stream tags: each use of randomness in a fold gets its own seed, derived from (seed, fold, tag).
_INIT, _DROPOUT, _GLOBAL, _SHUFFLE, _WORKERS = 1, 2, 3, 4, 5
# Settings that change the numbers; a resumed or extended run must agree on all of them.
_RUN_KEYS = ('dataset', 'strategy', 'n_folds', 'epochs', 'n_uncertain', 'n_segments',
             'batch_size', 'lr', 'lr_decay', 'decay_epoch', 'dropout', 'seed', 'mel_norm',
             'amp', 'augment', 'modality_dropout')
# What a run directory written before a setting existed had (the paper's recipe).
_SETTINGS_THEN = {'augment': 'none', 'modality_dropout': 0.0}


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train` needs. `for_dataset` fills the paper's per-dataset defaults."""

    dataset: str                  # 'crema-d' | 'ravdess': preset labels, N and N_u
    cache: Path                   # directory written by `lightmer prepare`
    out: Path                     # RUN directory; each strategy writes RUN/<strategy>/
    n_uncertain: int              # N_u moved from U per epoch (paper: 20 CREMA-D, 5 RAVDESS)
    n_segments: int               # N temporal segments (paper: 5 CREMA-D, 12 RAVDESS)
    strategy: str = 'uncertainty'
    n_folds: int = 5              # subject-independent cross-validation (paper V-A)
    fold: int | None = None       # one 0-based fold, or None for all of them
    epochs: int = 100             # total training epochs, the initial D0 epoch included
    batch_size: int = 16          # the global batch: K ranks share it (16 / K each)
    lr: float = 1e-4              # Adam (Table 2)
    lr_decay: float = 0.1         # multiplies lr from decay_epoch on: 1e-4 -> 1e-5
    decay_epoch: int | None = None  # None = epochs // 2 (paper: after 50 of 100 epochs)
    dropout: float = 0.2          # before the FC (Table 2)
    seed: int = 0                 # folds, D0, init, batch order and segment draws
    resume: bool = False          # continue each fold from its last completed epoch
    device: str = 'cpu'           # 'cpu' | 'cuda' (under torchrun: this rank's local GPU)
    amp: bool = False             # CUDA autocast: bfloat16 where supported, else float16
    # with a gradient scaler; refused on CPU
    workers: int = 0              # DataLoader workers per rank; draws are seeded per (seed,
    # epoch, index) inside the dataset, so results do not depend on this number
    dist_timeout_s: float = 600.0  # bound on every collective under torchrun: a dead or stuck
    # rank ends the others' wait after this long (rank 0 writes plots while the others wait)
    eval_memory_mb: int = 4096    # eval-mode inputs kept in RAM across epochs (CREMA-D's
    # 7,442 clips at N=5 take ~2 GB); 0 recomputes them every epoch
    progress: bool = True         # tqdm bars (folds, epochs, batches) on stderr
    mel_norm: str = 'window'      # log-mel normalisation (FeatureConfig.mel_norm); 'dataset'
    # takes the dB statistics of each fold's training clips into its checkpoints
    augment: str = DEFAULT_AUGMENT  # per-segment augmentation of training items (AUGMENTS;
    # datasets.augment); 'none' with no modality dropout is the paper's recipe
    modality_dropout: float = DEFAULT_MODALITY_DROPOUT  # share of training segments that lose
    # their face or their audio (core.missing's input instead)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f'strategy must be one of {STRATEGIES}, got {self.strategy!r}')
        if self.mel_norm not in MEL_NORMS:
            raise ValueError(f'mel_norm must be one of {MEL_NORMS}, got {self.mel_norm!r}')
        AugmentConfig(self.augment, self.modality_dropout)   # checks both values
        for name in ('n_uncertain', 'n_segments', 'epochs', 'batch_size', 'n_folds'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.fold is not None and not 0 <= self.fold < self.n_folds:
            raise ValueError(f'fold must be in [0, {self.n_folds - 1}] or None (all), got '
                             f'{self.fold}')
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ValueError('lr must be > 0 and lr_decay in (0, 1]')
        if self.device not in ('cpu', 'cuda'):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.amp and self.device != 'cuda':
            raise ValueError('--amp (mixed precision) applies to --device cuda only: on a CPU '
                             'autocast to bfloat16 is rarely faster and changes the numbers; '
                             'drop --amp')
        if self.workers < 0 or not self.dist_timeout_s > 0:
            raise ValueError('workers must be >= 0 and dist_timeout_s > 0')
        object.__setattr__(self, 'cache', Path(self.cache))
        object.__setattr__(self, 'out', Path(self.out))

    @classmethod
    def for_dataset(cls, dataset: str, *, n_uncertain: int | None = None,
                    n_segments: int | None = None, **overrides) -> TrainConfig:
        """The paper's settings for `dataset`; None for N_u or N means the preset's value."""
        preset = get_preset(dataset)
        return cls(dataset=dataset,
                   n_uncertain=preset.n_uncertain if n_uncertain is None else n_uncertain,
                   n_segments=preset.n_segments if n_segments is None else n_segments,
                   **overrides)

    @property
    def augmentation(self) -> AugmentConfig:
        return AugmentConfig(self.augment, self.modality_dropout)

    @property
    def lr_step_epoch(self) -> int:
        """First epoch trained at lr * lr_decay."""
        return max(1, self.epochs // 2) if self.decay_epoch is None else self.decay_epoch

    def run_settings(self) -> dict:
        """The settings that determine the results (no paths, fold choice or device)."""
        return run_settings(self, _RUN_KEYS)


# --- cache index ------------------------------------------------------------------------------
def _usable_clips(cache: Path, dataset: str) -> tuple[CacheIndex, dict[str, tuple[str, int]]]:
    """The cache index and its usable clips: clip_id -> (actor, class index in preset order)."""
    index = load_index(cache)
    if index.dataset != dataset:
        raise ValueError(f'cache {cache} holds dataset {index.dataset!r}, not {dataset!r}: pass '
                         'the matching --dataset or --cache')
    usable = index.usable()
    if not usable:
        raise ValueError(f'cache {cache} has no usable clips (every clip was skipped); read '
                         'the `lightmer prepare` report')
    return index, dict(zip((c['clip_id'] for c in usable),
                           zip(index.actors, index.label_indices(), strict=True), strict=True))


# --- data -------------------------------------------------------------------------------------
class _Labelled(Dataset):
    """Items `indices` of a SegmentDataset with the oracle's labels instead of the dataset's.

    One SegmentDataset holds every training clip in a fixed order, so a clip keeps its index
    (and with it its per-(seed, epoch, index) draws) wherever it sits in D_train.
    """

    def __init__(self, base: SegmentDataset, indices: Sequence[int], labels: Sequence[int]):
        if len(indices) != len(labels):
            raise ValueError('indices and labels must have the same length')
        self.base = base
        self.indices = list(indices)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        faces, mels, _ = self.base[self.indices[i]]
        return faces, mels, self.labels[i]


class _Memo(Dataset):
    """Keeps the items of a deterministic (eval-mode) dataset in memory after the first pass.

    Eval inputs are the same every epoch (segment centres, no jitter), and computing the
    log-mels dominates an epoch on a CPU, so U, D0 and the test fold are computed once per
    fold. Items past `max_items` are recomputed each time (bounded memory on real datasets).
    """

    def __init__(self, base: Dataset, max_items: int):
        self.base = base
        self.max_items = max_items
        self._items: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        item = self._items.get(i)
        if item is None:
            item = self.base[i]
            if len(self._items) < self.max_items:
                self._items[i] = item
        return item


def stream_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers, so every (seed, fold, epoch) has its own stream."""
    seq = np.random.SeedSequence([p & 0xFFFFFFFF for p in parts])   # negative seeds too
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


# --- one epoch --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """Arithmetic of a run: float32, or CUDA autocast to bfloat16 / float16.

    float16 needs a gradient scaler (its range underflows small gradients); bfloat16 has
    float32's range and does not. `choose` picks bfloat16 where the GPU supports it.
    """

    dtype: torch.dtype | None = None     # None: float32 throughout

    @classmethod
    def choose(cls, amp: bool, device: torch.device) -> Precision:
        if not amp:
            return cls()
        if device.type != 'cuda':
            raise ValueError('mixed precision (--amp) applies to CUDA devices only; drop --amp')
        return cls(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    @property
    def name(self) -> str:
        return 'float32' if self.dtype is None else str(self.dtype).removeprefix('torch.')

    def autocast(self, device: torch.device):
        """A context that runs the forward pass in this precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for float16 only (disabled it passes everything through)."""
        return torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)


FLOAT32 = Precision()


def epoch_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """The global batches of one epoch: a permutation of range(n) seeded by `seed`, cut into
    runs of `batch_size` (the last may be shorter). Every rank computes the same list."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def prepare_model(model: LightmerNet, ranks: Ranks, device: torch.device
                  ) -> tuple[LightmerNet, nn.Module]:
    """Ready a model for `train_epoch`, in place: keyed dropout; with K ranks, BatchNorm over
    the global batch and a DDP wrapper. Load any saved weights before calling this.

    -> (the model, for `predict` and checkpoints; the module `train_epoch` calls).
    """
    replace_modules(model, to_keyed_dropout)
    if ranks.active:
        replace_modules(model, to_cross_rank_batchnorm)
    model.to(device)
    if not ranks.active:
        return model, model
    ids = [device.index] if device.type == 'cuda' else None
    return model, DistributedDataParallel(model, device_ids=ids)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, dataset: Dataset,
                batches: Sequence[Sequence[int]], device: torch.device, *,
                sample_keys: Sequence[int] | None = None, ranks: Ranks = SINGLE,
                precision: Precision = FLOAT32, scaler: torch.amp.GradScaler | None = None,
                workers: int = 0, loader_seed: int = 0, progress: bool = False
                ) -> tuple[float, float]:
    """One pass in train mode over `batches`; -> (mean cross-entropy in nats, accuracy) over
    every sample of the epoch (all ranks together).

    model: the second value of `prepare_model`. dataset: index -> (faces (N, 1, H, W),
    log-mels (N, 1, M, T), class index). batches: the global batches as dataset indices
    (`epoch_batches`), the same on every rank; each rank trains on its `split_batch` slice.
    sample_keys: per dataset index, the seed of that sample's dropout mask (needed once
    `prepare_model` has made the dropout keyed; a plain nn.Dropout draws from torch's global
    generator and gives up equality across ranks and resumes). loader_seed seeds
    the DataLoader workers (torch, numpy and random in each), one value per rank and epoch.
    """
    model.train()
    scaler = scaler or precision.scaler(device)
    local = [split_batch(b, ranks.rank, ranks.world_size) for b in batches]
    # A rank whose slice is empty (a last batch smaller than K) still runs forward and
    # backward, on zero rows, because DDP and the BatchNorm statistics need every rank at
    # every step; the loader cannot yield an empty batch, so it loads one sample to cut away.
    loader = DataLoader(dataset, batch_sampler=[s or [b[0]] for s, b in zip(local, batches,
                                                                           strict=True)],
                        num_workers=workers, pin_memory=device.type == 'cuda',
                        generator=torch.Generator().manual_seed(loader_seed))
    totals = torch.zeros(3, dtype=torch.float64, device=device)   # loss sum, correct, count
    steps = zip(loader, local, batches, strict=True)
    for (faces, mels, labels), mine, batch in tqdm(steps, total=len(batches), desc='batches',
                                                   leave=False, disable=not progress):
        rows = len(mine)
        faces = faces[:rows].to(device, non_blocking=True)             # (b, N, 1, H, W)
        mels = mels[:rows].to(device, non_blocking=True)               # (b, N, 1, M, T)
        labels = labels[:rows].to(device, non_blocking=True)           # (b,)
        if sample_keys is not None:
            set_dropout_keys(model, [sample_keys[i] for i in mine])
        with precision.autocast(device):
            logits = model(faces, mels)                                 # (b, C)
        loss_sum = F.cross_entropy(logits.float(), labels, reduction='sum')
        # DDP averages the K ranks' gradients; scaling by K / |global batch| makes that
        # average the gradient of the mean loss over the global batch, as one process has it.
        loss = loss_sum * (ranks.world_size / len(batch))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        totals += torch.stack([loss_sum.detach().double(),
                               (logits.argmax(1) == labels).sum().double(),
                               torch.tensor(float(rows), dtype=torch.float64, device=device)])
    loss_total, correct, count = all_sum(totals.tolist(), ranks)
    return loss_total / count, correct / count


@torch.no_grad()
def predict(model: LightmerNet, dataset: Dataset, batch_size: int, device: torch.device, *,
            ranks: Ranks = SINGLE, precision: Precision = FLOAT32, progress: bool = False,
            desc: str = 'predict') -> tuple[np.ndarray, np.ndarray]:
    """Eval mode over `dataset` in order -> (probabilities float64 (M, C), labels int64 (M,)),
    the same arrays on every rank.

    model: the bare LightmerNet (the first value of `prepare_model`, never the DDP wrapper:
    ranks score different numbers of batches). With K ranks each scores a contiguous run of
    the batches one process would form and the rows are gathered, so every clip meets the
    same batch mates and gets the same probabilities as in a single process.
    """
    model.eval()
    n = len(dataset)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = shard_batches(batches, ranks.rank, ranks.world_size)
    loader = DataLoader(dataset, batch_sampler=mine, num_workers=0,
                        pin_memory=device.type == 'cuda')
    probs = [torch.zeros((0, model.cfg.n_classes), dtype=torch.float64)]
    labels = [torch.zeros(0, dtype=torch.int64)]
    for faces, mels, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        with precision.autocast(device):
            logits = model(faces.to(device), mels.to(device))         # (B, C)
        probs.append(torch.softmax(logits.double(), dim=1).cpu())
        labels.append(torch.as_tensor(y, dtype=torch.int64))
    counts = shard_sizes(batches, ranks.world_size)
    return (gather_rows(torch.cat(probs), counts, ranks).numpy(),
            gather_rows(torch.cat(labels), counts, ranks).numpy())


def _loss_acc(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy (nats, as F.cross_entropy) and accuracy of probabilities (M, C)."""
    p_true = probs[np.arange(labels.shape[0]), labels]
    loss = float(-np.log(np.maximum(p_true, 1e-300)).mean())
    return loss, float((probs.argmax(1) == labels).mean())


# --- one fold: its plan, data, model and bookkeeping ------------------------------------------
def _split_ids(split: Split, clips: Mapping[str, tuple[str, int]]) -> dict[str, list[str]]:
    by_actor: dict[str, list[str]] = {}
    for clip_id, (actor, _) in clips.items():
        by_actor.setdefault(actor, []).append(clip_id)
    return {name: sorted(c for a in actors for c in by_actor.get(a, []))
            for name, actors in (('d0', split.d0), ('pool', split.pool), ('test', split.test))}


def _plan_fold(cfg: TrainConfig, fold: int, clips: Mapping[str, tuple[str, int]]
               ) -> tuple[Split, dict[str, list[str]]]:
    """The actor split and clip ids of one fold, checked before anything is written."""
    split = split_fold(sorted({a for a, _ in clips.values()}), cfg.n_folds, fold, cfg.seed)
    check_disjoint(split)
    ids = _split_ids(split, clips)
    for name in ('d0', 'test'):
        if not ids[name]:
            raise ValueError(f'fold {fold}: {name} has no usable clips; use fewer --folds or '
                             'a cache with more actors')
    # N_u > |U| at the start is an error, not a clamp: the first selection would move all of
    # U at once, which is the full baseline with one odd epoch, not Algorithm 1.
    if cfg.strategy == 'uncertainty' and cfg.n_uncertain > len(ids['pool']):
        raise ValueError(
            f"fold {fold}: N_u = {cfg.n_uncertain} but U holds only {len(ids['pool'])} clips, "
            f"so the first selection would empty it; pass --nu {max(1, len(ids['pool']) // 4)}"
            ' or less, or --strategy full')
    return split, ids


@dataclass(frozen=True)
class _FoldRun:
    """What every step of one fold needs besides the model and the bookkeeping."""

    cfg: TrainConfig
    fold: int
    fold_dir: Path          # written by rank 0 only
    ranks: Ranks
    device: torch.device
    precision: Precision


@dataclass(frozen=True)
class _FoldData:
    """The clips of one fold and their items, fixed for the whole fold."""

    ids: dict[str, list[str]]     # clip ids of 'd0', 'pool' (U at the start) and 'test'
    position: dict[str, int]      # clip id -> its index in the training items (D0, then U)
    true_label: dict[str, int]    # class index per clip: what the dataset oracle answers
    features: FeatureConfig       # the fold's features (its checkpoints carry them)
    train_items: SegmentDataset   # every training clip, train-mode draws
    eval_items: _Memo             # the same clips in eval mode (U is scored on them)
    d0_items: Subset              # D_train(0) in eval mode: the checkpoint criterion
    test_items: _Memo             # the test fold in eval mode


def _fold_data(cfg: TrainConfig, ids: dict[str, list[str]], index: CacheIndex,
               clips: Mapping[str, tuple[str, int]]) -> _FoldData:
    """The fold's items. Every training clip (D0 then U) sits in one fixed order, so its
    draws stay tied to the clip. With mel_norm 'dataset' the features carry the dB
    statistics of the fold's training clips."""
    all_ids = ids['d0'] + ids['pool']
    position = {c: i for i, c in enumerate(all_ids)}
    features = (dataset_mel_norm(cfg.cache, all_ids, cfg.n_segments)
                if cfg.mel_norm == 'dataset' else index.features)
    dataset = functools.partial(SegmentDataset, cfg.cache, n_segments=cfg.n_segments,
                                labels=get_preset(cfg.dataset).labels, seed=cfg.seed,
                                features=features)
    f = index.features   # float32 faces + log-mels of one clip: 0.27 MB at N=5
    clip_mb = cfg.n_segments * (f.face_height * f.face_width + f.n_mels * f.mel_frames) * 4 / 2**20
    memo = max(0, int(cfg.eval_memory_mb / clip_mb))
    eval_items = _Memo(dataset(all_ids, train=False), memo)   # segment centres, as at inference
    return _FoldData(
        ids=ids, position=position, true_label={c: y for c, (_, y) in clips.items()},
        features=features,
        # random frame + jittered audio per segment, and cfg's augmentation
        train_items=dataset(all_ids, train=True, augment=cfg.augmentation),
        eval_items=eval_items, d0_items=Subset(eval_items, [position[c] for c in ids['d0']]),
        test_items=_Memo(dataset(ids['test'], train=False), max(0, memo - len(all_ids))))


def _open_fold(run: _FoldRun, split: Split, ids: dict[str, list[str]]) -> dict | None:
    """Rank 0: the fold's saved state (None for a fresh fold, after writing split.json)."""
    state_path = run.fold_dir / 'state.pt'
    if state_path.exists():
        if not run.cfg.resume:
            raise FileExistsError(f'{run.fold_dir} already holds a run; pass --resume to '
                                  'continue it or choose another --out')
        return FOLD_STATE.load(state_path)
    atomic_save_json(run.fold_dir / 'split.json', {
        'fold': run.fold, 'seed': run.cfg.seed, 'actors': split.to_dict(), 'clips': ids})
    return None


def _model_config(cfg: TrainConfig, index: CacheIndex) -> ModelConfig:
    f = index.features
    return ModelConfig(n_classes=len(get_preset(cfg.dataset).labels), dropout=cfg.dropout,
                       face_shape=(f.face_height, f.face_width),
                       mel_shape=(f.n_mels, f.mel_frames))


@dataclass
class _Learner:
    """The model being trained and what trains it."""

    model: LightmerNet              # the bare model: `predict` and checkpoints
    trained: nn.Module              # what `train_epoch` calls (DDP with K ranks)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def _learner(run: _FoldRun, model: LightmerNet, state: dict | None) -> _Learner:
    """Ready `model` for training, with the saved weights and optimiser of a resumed fold."""
    if state is not None:
        model.load_state_dict(state['model'])
    model, trained = prepare_model(model, run.ranks, run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.cfg.lr)
    scaler = run.precision.scaler(run.device)
    if state is not None:
        optimizer.load_state_dict(state['optimizer'])
        if state.get('scaler'):   # empty when saved disabled (float32, bfloat16)
            scaler.load_state_dict(state['scaler'])
    return _Learner(model, trained, optimizer, scaler)


@dataclass
class _Bookkeeping:
    """What a fold has done so far; state.pt holds it beside the weights."""

    train_ids: list[str]            # D_train, in the order the clips joined it
    pool: list[str]                 # U
    labels_of: dict[str, int]       # the oracle's class index per clip of D_train
    metrics: list[dict]             # one entry per completed epoch
    best: dict                      # epoch, val_loss and test_acc of best.pt
    test_probs: np.ndarray | None = None   # float64 (M, C): the last epoch's test fold
    test_true: np.ndarray | None = None    # int64 (M,)

    @classmethod
    def start(cls, cfg: TrainConfig, data: _FoldData) -> _Bookkeeping:
        """Epoch 0 of Algorithm 1 (D_train = D0, U = the rest), or the baseline's full set."""
        if cfg.strategy == 'uncertainty':
            train_ids, pool = list(data.ids['d0']), list(data.ids['pool'])
        else:
            train_ids, pool = data.ids['d0'] + data.ids['pool'], []
        return cls(train_ids, pool, {c: data.true_label[c] for c in train_ids},  # D0 labelled
                   metrics=[], best={'epoch': -1, 'val_loss': float('inf')})

    @classmethod
    def saved(cls, state: Mapping) -> _Bookkeeping:
        return cls(list(state['train_ids']), list(state['pool']), dict(state['labels_of']),
                   list(state['metrics']), dict(state['best']), state['test_probs'].numpy(),
                   state['test_true'].numpy())

    def to_state(self) -> dict:
        return {'train_ids': self.train_ids, 'pool': self.pool, 'labels_of': self.labels_of,
                'metrics': self.metrics, 'best': self.best,
                'test_probs': torch.from_numpy(self.test_probs),
                'test_true': torch.from_numpy(self.test_true)}

    def move(self, selected: Sequence[dict]) -> None:
        """Algorithm 1 line 10: the checked clips leave U and join D_train with their label."""
        moved = [s['clip_id'] for s in selected]
        self.labels_of.update((s['clip_id'], s['label']) for s in selected)
        self.train_ids += moved
        moved_set = frozenset(moved)
        self.pool = [c for c in self.pool if c not in moved_set]


def _start_or_resume(run: _FoldRun, data: _FoldData, state: dict | None) -> _Bookkeeping:
    """The saved bookkeeping and generators of a resumed fold, or a fresh start."""
    if state is not None:
        set_rng_state(state['rng'])
        return _Bookkeeping.saved(state)
    # Our own draws are keyed streams; the global generators are seeded for any library that
    # draws from them.
    seed_global_generators(stream_seed(run.cfg.seed, run.fold, _GLOBAL))
    return _Bookkeeping.start(run.cfg, data)


# --- one fold: the epoch's steps --------------------------------------------------------------
def _select_uncertain(run: _FoldRun, data: _FoldData, model: LightmerNet, pool: Sequence[str],
                      oracle: Oracle) -> tuple[list[dict], float]:
    """Algorithm 1 lines 3-9: entropies over U, the N_u most uncertain, checked by the oracle.

    Every rank scores its share of U and receives all the entropies, so every rank picks the
    same clips; the oracle (possibly a person) is asked once, on rank 0.
    -> (one entry per selected clip, most uncertain first: clip_id, entropy (bits),
    predicted and checked class index; mean entropy of U in bits).
    """
    cfg = run.cfg
    pool_items = Subset(data.eval_items, [data.position[c] for c in pool])
    probs, _ = predict(model, pool_items, cfg.batch_size, run.device, ranks=run.ranks,
                       precision=run.precision, progress=cfg.progress, desc='U')
    h = entropy_bits(probs)                                                   # (|U|,) bits
    chosen = most_uncertain(h, pool, min(cfg.n_uncertain, len(pool)))
    chosen_ids = [pool[i] for i in chosen]
    predicted = [int(probs[i].argmax()) for i in chosen]
    checked = on_main(lambda: oracle.check(chosen_ids, predicted), run.ranks)
    selected = [{'clip_id': c, 'entropy': float(h[i]), 'predicted': p, 'label': int(y)}
                for c, i, p, y in zip(chosen_ids, chosen, predicted, checked, strict=True)]
    return selected, float(h.mean())


def _set_learning_rate(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> float:
    lr = cfg.lr * (cfg.lr_decay if epoch >= cfg.lr_step_epoch else 1.0)
    for group in optimizer.param_groups:
        group['lr'] = lr
    return lr


def _train_on(run: _FoldRun, data: _FoldData, learner: _Learner, book: _Bookkeeping,
              epoch: int) -> tuple[float, float]:
    """Algorithm 1 line 11 (or a baseline epoch): one pass over D_train with its checked
    labels. -> (mean training loss, accuracy)."""
    cfg, ranks, position = run.cfg, run.ranks, data.position
    data.train_items.set_epoch(epoch)
    return train_epoch(
        learner.trained, learner.optimizer,
        _Labelled(data.train_items, [position[c] for c in book.train_ids],
                  [book.labels_of[c] for c in book.train_ids]),
        epoch_batches(len(book.train_ids), cfg.batch_size,
                      stream_seed(cfg.seed, run.fold, _SHUFFLE, epoch)),
        run.device,
        sample_keys=[stream_seed(cfg.seed, run.fold, _DROPOUT, epoch, position[c])
                     for c in book.train_ids],
        ranks=ranks, precision=run.precision, scaler=learner.scaler, workers=cfg.workers,
        loader_seed=stream_seed(cfg.seed, run.fold, _WORKERS, epoch, ranks.rank),
        progress=cfg.progress)


def _evaluate(run: _FoldRun, data: _FoldData, model: LightmerNet
              ) -> tuple[float, np.ndarray, np.ndarray]:
    """Eval mode on D0 (the checkpoint criterion) and the test fold.
    -> (D0 loss, test probabilities float64 (M, C), test labels int64 (M,))."""
    scoring = dict(ranks=run.ranks, precision=run.precision, progress=run.cfg.progress)
    batch, device = run.cfg.batch_size, run.device
    val_loss, _ = _loss_acc(*predict(model, data.d0_items, batch, device, desc='D0 (val)',
                                     **scoring))
    test_probs, test_true = predict(model, data.test_items, batch, device, desc='test',
                                    **scoring)
    return val_loss, test_probs, test_true


def _checkpoint_fields(run: _FoldRun, data: _FoldData, model_cfg: ModelConfig) -> dict:
    """CheckpointMeta fields shared by every epoch's checkpoints (provenance without the
    epoch)."""
    cfg, preset = run.cfg, get_preset(run.cfg.dataset)
    provenance = make_provenance(
        dataset=cfg.dataset, fold=run.fold, strategy=cfg.strategy, seed=cfg.seed,
        best_criterion='min eval-mode cross-entropy on D_train(0)',
        ranks=run.ranks.world_size, precision=run.precision.name, augment=cfg.augment,
        modality_dropout=cfg.modality_dropout, **launch_record(run.ranks, run.device))
    return dict(preset=preset.name, labels=preset.labels, n_segments=cfg.n_segments,
                segment_s=preset.segment_s, features=data.features, model=model_cfg,
                provenance=provenance)


def _save_epoch(run: _FoldRun, learner: _Learner, book: _Bookkeeping, fields: dict,
                improved: bool) -> None:
    """Rank 0: the checkpoints, metrics and state of the epoch just completed."""
    # state.pt goes last: a kill before it repeats this epoch from the previous state,
    # and the repeat rewrites the files below with the same content.
    epoch = book.metrics[-1]['epoch']
    meta = CheckpointMeta(**{**fields, 'provenance': {**fields['provenance'], 'epoch': epoch}})
    save_checkpoint(run.fold_dir / 'last.pt', learner.model, meta)
    if improved:
        save_checkpoint(run.fold_dir / 'best.pt', learner.model, meta)
    atomic_save_json(run.fold_dir / 'metrics.json', book.metrics)
    FOLD_STATE.save(run.fold_dir / 'state.pt', {
        'model': learner.model.state_dict(), 'optimizer': learner.optimizer.state_dict(),
        'scaler': learner.scaler.state_dict(), 'rng': rng_state(), **book.to_state()})
    _log_epoch(run.fold, book.metrics[-1])


# --- one fold, top to bottom ------------------------------------------------------------------
def _train_fold(run: _FoldRun, split: Split, ids: dict[str, list[str]], index: CacheIndex,
                clips: Mapping[str, tuple[str, int]]) -> None:
    """Train one fold (see the module docstring); rank 0 writes its files."""
    cfg = run.cfg
    data = _fold_data(cfg, ids, index, clips)
    oracle = DatasetOracle(data.true_label)
    model_cfg = _model_config(cfg, index)
    torch.manual_seed(stream_seed(cfg.seed, run.fold, _INIT))   # Xavier init of this fold
    model = LightmerNet(model_cfg)
    state = on_main(lambda: _open_fold(run, split, ids), run.ranks)   # rank 0 reads, all resume
    learner = _learner(run, model, state)
    book = _start_or_resume(run, data, state)
    fields = _checkpoint_fields(run, data, model_cfg)

    for epoch in tqdm(range(len(book.metrics), cfg.epochs), desc=f'fold {run.fold} epochs',
                      leave=False, initial=len(book.metrics), total=cfg.epochs,
                      disable=not cfg.progress):
        t0 = time.perf_counter()
        # Algorithm 1 lines 3-10; epoch 0 is line 1 (the initial model trains on D0 alone).
        selected, pool_entropy = [], None
        if cfg.strategy == 'uncertainty' and epoch > 0 and book.pool:
            selected, pool_entropy = _select_uncertain(run, data, learner.model, book.pool,
                                                       oracle)
            book.move(selected)
        lr = _set_learning_rate(learner.optimizer, cfg, epoch)
        train_loss, train_acc = _train_on(run, data, learner, book, epoch)
        val_loss, book.test_probs, book.test_true = _evaluate(run, data, learner.model)
        test_loss, test_acc = _loss_acc(book.test_probs, book.test_true)
        book.metrics.append({
            'epoch': epoch, 'train_size': len(book.train_ids), 'pool_size': len(book.pool),
            'train_loss': train_loss, 'train_acc': train_acc, 'val_loss': val_loss,
            'test_loss': test_loss, 'test_acc': test_acc, 'lr': lr,
            'pool_entropy_mean': pool_entropy,
            'corrected': sum(s['predicted'] != s['label'] for s in selected),
            'selected': selected, 'seconds': time.perf_counter() - t0,
            'launch': launch_record(run.ranks, run.device)})
        improved = val_loss < book.best['val_loss']
        if improved:
            book.best = {'epoch': epoch, 'val_loss': val_loss, 'test_acc': test_acc}
        if run.ranks.is_main:
            _save_epoch(run, learner, book, fields, improved)

    if run.ranks.is_main:
        _finish_fold(run, book, len(ids['test']))


def _finish_fold(run: _FoldRun, book: _Bookkeeping, n_test: int) -> None:
    """Rank 0: the fold's confusion matrix, curves and result.json."""
    labels = get_preset(run.cfg.dataset).labels
    cm = confusion_matrix(book.test_true, book.test_probs.argmax(1), len(labels))
    title = f'{run.cfg.dataset} {run.cfg.strategy} fold {run.fold}'
    plot_confusion(cm, labels, run.fold_dir / 'confusion.png', title)
    plot_curves(book.metrics, run.fold_dir / 'loss.png', run.fold_dir / 'accuracy.png', title)
    atomic_save_json(run.fold_dir / 'result.json', {
        'fold': run.fold, 'test_acc': book.metrics[-1]['test_acc'],
        'test_loss': book.metrics[-1]['test_loss'], 'best': book.best, 'confusion': cm.tolist(),
        'labels': list(labels), 'test_clips': n_test,
        'launch': launch_record(run.ranks, run.device)})


def _log_epoch(fold: int, m: Mapping) -> None:
    """One line per epoch: |D_train|, |U|, mean entropy of U, selected ids with entropies."""
    mean_h = 'n/a' if m['pool_entropy_mean'] is None else f"{m['pool_entropy_mean']:.3f} bits"
    line = (f"fold {fold} epoch {m['epoch']}: |D_train|={m['train_size']} "
            f"|U|={m['pool_size']} mean H(U)={mean_h} train loss {m['train_loss']:.4f} "
            f"acc {m['train_acc']:.3f} test acc {m['test_acc']:.3f}")
    if m['selected']:
        picks = ' '.join(f"{s['clip_id']}({s['entropy']:.3f})" for s in m['selected'])
        line += f"; oracle corrected {m['corrected']}/{len(m['selected'])}; selected {picks}"
    tqdm.write(line, file=sys.stderr)   # stdout stays for the CLI's JSON summary


# --- across folds -----------------------------------------------------------------------------
def _summarise(run_dir: Path, dataset: str, strategy: str, n_folds: int) -> dict | None:
    """Mean +- std (population, over the finished folds) of the final test accuracy, written
    to RUN/<strategy>/summary.json and .png; None while no fold has finished."""
    preset = get_preset(dataset)
    results = []
    for k in range(n_folds):
        path = run_dir / f'fold_{k}' / 'result.json'
        if path.is_file():
            results.append(json.loads(path.read_text(encoding='utf-8')))
    if not results:
        return None
    accs = np.array([r['test_acc'] for r in results])
    cm = np.sum([np.array(r['confusion']) for r in results], axis=0)
    summary = {'dataset': dataset, 'strategy': strategy, 'folds_done':
               [r['fold'] for r in results], 'n_folds': n_folds,
               'test_acc_mean': float(accs.mean()), 'test_acc_std': float(accs.std()),
               'test_acc_per_fold': accs.tolist(), 'confusion': cm.tolist(),
               'labels': list(preset.labels), 'run_dir': str(run_dir)}
    atomic_save_json(run_dir / 'summary.json', summary)
    plot_confusion(cm, preset.labels, run_dir / 'summary.png',
                   f'{dataset} {strategy}, {len(results)} folds summed; mean '
                   f'{accs.mean():.3f} +- {accs.std():.3f}')
    return summary


def _fold_mean_curves(strategy_dir: Path, folds: Sequence[int]) -> dict[str, list[float]]:
    runs = [json.loads((strategy_dir / f'fold_{k}' / 'metrics.json').read_text('utf-8'))
            for k in folds]
    n = min(len(m) for m in runs)
    return {key: [float(np.mean([m[e][key] for m in runs])) for e in range(n)]
            for key in ('train_loss', 'test_loss', 'train_acc', 'test_acc')}


def _compare(out: Path, dataset: str) -> dict | None:
    """Both strategies' fold-mean curves over the folds both finished, or None."""
    done = {}
    for strategy in STRATEGIES:
        path = out / strategy / 'summary.json'
        if not path.is_file():
            return None
        done[strategy] = set(json.loads(path.read_text('utf-8'))['folds_done'])
    folds = sorted(set.intersection(*done.values()))
    if not folds:
        return None
    curves = {s: _fold_mean_curves(out / s, folds) for s in STRATEGIES}
    atomic_save_json(out / 'comparison.json', {'folds': folds, 'curves': curves})
    plot_comparison(curves, out / 'comparison.png',
                    f'{dataset}: with and without uncertainty learning, mean of folds {folds}')
    return {'folds': folds, 'path': str(out / 'comparison.png')}


# --- entry points -----------------------------------------------------------------------------
def plan_run(cfg: TrainConfig) -> tuple[CacheIndex, dict[str, tuple[str, int]],
                                        dict[int, tuple[Split, dict[str, list[str]]]]]:
    """Read the cache and plan every requested fold, raising before anything is written.

    -> (cache index, clip_id -> (actor, class index), fold -> (split, clip ids by part)).
    """
    index, clips = _usable_clips(cfg.cache, cfg.dataset)
    folds = range(cfg.n_folds) if cfg.fold is None else [cfg.fold]
    return index, clips, {k: _plan_fold(cfg, k, clips) for k in folds}


def claim_run_dir(cfg: TrainConfig, launch: dict | None = None) -> None:
    """Write RUN/<strategy>/config.json, or refuse when the directory holds other settings
    (one strategy directory mixing settings would give a wrong summary). `launch`
    (distributed.launch_record: world size, backend, device, lightmer version) is kept there
    too, under 'launch', for the latest launch; it is not a setting, so a resume on another
    number of ranks is allowed."""
    # A setting newer than the run directory had its default then (amp: float32).
    defaults = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)},
                **_SETTINGS_THEN}
    path = cfg.out / cfg.strategy / 'config.json'
    claim_settings(path, cfg.run_settings(), defaults)
    if launch is not None:
        atomic_save_json(path, {**cfg.run_settings(), 'launch': launch})


def summarize_run(out: Path) -> dict:
    """Merge whatever folds have finished under RUN (every strategy there): summary.json and
    summary.png per strategy, comparison.json/png when both strategies share a fold.

    For runs whose folds trained as separate jobs (`--fold K` each, or `--parallel`).
    """
    out = Path(out)
    summaries = {}
    for strategy in STRATEGIES:
        config = out / strategy / 'config.json'
        if config.is_file():
            settings = json.loads(config.read_text('utf-8'))
            summary = _summarise(out / strategy, settings['dataset'], strategy,
                                 settings['n_folds'])
            if summary is not None:
                summaries[strategy] = summary
    if not summaries:
        raise ValueError(f'no finished fold under {out} (no <strategy>/fold_K/result.json); '
                         'pass the --out of a `lightmer train` run')
    comparison = _compare(out, next(iter(summaries.values()))['dataset'])
    return {'strategies': summaries, 'comparison': comparison}


def train(cfg: TrainConfig) -> dict:
    """Train every requested fold of `cfg.strategy`, write the run directory, return the
    summary (see the module docstring for the files).

    Started by torchrun, this process is one of K ranks training each fold together; it
    joins their process group here and leaves it on return.
    """
    ranks = launched_ranks()
    device = join(ranks, cfg.device, cfg.dist_timeout_s)
    try:
        return _train_ranks(dataclasses.replace(cfg, progress=cfg.progress and ranks.is_main),
                            ranks, device)
    finally:
        leave()


def _train_ranks(cfg: TrainConfig, ranks: Ranks, device: torch.device) -> dict:
    precision = Precision.choose(cfg.amp, device)
    index, clips, plans = plan_run(cfg)   # every rank reads the cache: fail before writing
    launch = launch_record(ranks, device)
    on_main(lambda: claim_run_dir(cfg, launch), ranks)
    if ranks.is_main:
        tqdm.write(f"training on {launch['world_size']} process(es), backend "
                   f"{launch['backend'] or 'none'}, device {launch['device']}, lightmer "
                   f"{launch['lightmer']}", file=sys.stderr)
    run_dir = cfg.out / cfg.strategy

    # Bit-for-bit repeatable epochs are what make resume equal an uninterrupted run.
    if device.type == 'cuda':
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.backends.cudnn.benchmark = False
    with deterministic_algorithms():
        for fold in tqdm(plans, desc='folds', disable=not cfg.progress):
            run = _FoldRun(cfg, fold, run_dir / f'fold_{fold}', ranks, device, precision)
            _train_fold(run, *plans[fold], index, clips)

    def merge() -> dict:
        summary = _summarise(run_dir, cfg.dataset, cfg.strategy, cfg.n_folds)
        comparison = _compare(cfg.out, cfg.dataset)
        if comparison is not None:
            summary['comparison'] = comparison
        return summary

    return on_main(merge, ranks)
