"""`lightmer adapt`: the model adapted to a robot's recordings without a single label.

A robot's camera and room move exactly what BatchNorm normalises away: the brightness and
contrast of the face crops and the level and colour of the room's noise in the log-mels. The
base model keeps the running mean and variance of its studio data, so every convolution on
the robot sees inputs shifted and scaled away from what its next layer was trained on.
Re-estimating those statistics on the robot's own segments (AdaBN, Li et al. 2016, "Revisiting
batch normalization for practical domain adaptation") moves them back; nothing else changes:
every weight, BatchNorm scale and shift included, stays the base model's.

How: every BatchNorm layer's running statistics are reset and re-estimated as a cumulative
average (momentum None) over batches of the pool's segments in a seeded random order, the
network in train mode (dropout sits in the head, after the last BatchNorm, so it changes no
statistic) and without gradients. Segments of held-out recordings are never read: their
`segments.npz` is not opened (tested), so an evaluation on them stays honest.

The same function is round 0 of `lightmer finetune` (active.finetune).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightmer.active.pool import (
    Pool,
    PoolConfig,
    PoolError,
    build_pool,
    checkpoint_key,
    recording_id,
)
from lightmer.core.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    make_provenance,
    save_checkpoint,
)
from lightmer.core.features import face_to_input
from lightmer.core.model import LightmerNet
from lightmer.evaluation.bags import BagTopics
from lightmer.stream.settings import StreamSettings

METHOD = 'batchnorm-statistics'
_BATCH = 256          # segments per forward: large batches keep the within-batch variance of
                      # a random sample close to the pool's (shuffled, so batches are alike)


@dataclass(frozen=True)
class AdaptConfig:
    checkpoint: Path
    pool: Path
    out: Path
    bags: tuple[Path, ...] = ()            # pooled into `pool` first (recordings done are kept)
    exclude: tuple[str, ...] = ()          # held-out recordings (ids or bag paths): never read
    settings: StreamSettings | None = None  # for pooling `bags` (default: the nodes' defaults)
    topics: BagTopics = BagTopics()          # for pooling `bags`
    seed: int = 0
    batch_size: int = _BATCH

    def __post_init__(self) -> None:
        for name in ('checkpoint', 'pool', 'out'):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, 'bags', tuple(Path(b) for b in self.bags))
        object.__setattr__(self, 'exclude', tuple(str(e) for e in self.exclude))
        if self.batch_size < 2:
            raise ValueError('batch_size must be >= 2 (a variance needs two segments)')


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm buffer (running mean, variance, count) by state-dict name."""
    names = {id(m): n for n, m in model.named_modules()}
    return {f'{names[id(m)]}.{b}': getattr(m, b).detach().clone()
            for m in batchnorm_layers(model)
            for b in ('running_mean', 'running_var', 'num_batches_tracked')}


@contextmanager
def using_statistics(model: nn.Module, stats: dict[str, torch.Tensor]):
    """Run the block with `stats` (batchnorm_statistics of some model) as the BatchNorm
    buffers, then put the model's own back, whatever the block did to them."""
    own = batchnorm_statistics(model)
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in stats.items():
            buffers[name].copy_(value)
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, value in own.items():
                buffers[name].copy_(value)


def resolve_recordings(pool: Pool, names: Sequence[str], option: str = '--exclude'
                       ) -> list[str]:
    """Recording ids of `names` (ids or bag paths); PoolError naming one the pool lacks (and
    the command-line `option` that gave it)."""
    out = []
    for name in names:
        rec = name if name in pool.recording_ids else recording_id(name)
        if rec not in pool.recording_ids:
            raise PoolError(f'{option} {name!r} is neither a recording id nor a bag of '
                            f'{pool.path}; it has {list(pool.recording_ids)}')
        out.append(rec)
    return out


def adaptation_segments(pool: Pool, exclude: Sequence[str] = ()) -> tuple[np.ndarray,
                                                                          np.ndarray, list[str]]:
    """The segments adaptation may read: (crops uint8 (S, 98, 80), mels float32 (S, 128, 43),
    the recording ids they come from). The recordings in `exclude` (ids) are never opened."""
    skip = set(exclude)
    used = [rec for rec in pool.recording_ids if rec not in skip]
    if not used:
        raise PoolError(f'every recording of {pool.path} is held out; adaptation needs the '
                        'robot\'s other recordings: pool more bags')
    crops, mels = [], []
    for rec in used:
        with np.load(pool.path / 'recordings' / rec / 'segments.npz') as z:
            crops.append(z['crops'])
            mels.append(z['mels'])
    return np.concatenate(crops), np.concatenate(mels), used


def adapt_batchnorm(model: LightmerNet, crops: np.ndarray, mels: np.ndarray, seed: int = 0,
                    batch_size: int = _BATCH) -> LightmerNet:
    """Re-estimate the BatchNorm running statistics of `model` on segments, in place; returns
    it in eval mode. crops uint8 (S, 98, 80), mels float32 (S, 128, 43); only the BatchNorm
    buffers change. The order is a seeded permutation, so the result is reproducible."""
    if len(crops) != len(mels) or len(crops) < 2:
        raise ValueError(f'adaptation needs at least 2 segments with a crop and a log-mel each, '
                         f'got {len(crops)} crops and {len(mels)} log-mels')
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None                      # cumulative average over all batches
    order = np.random.default_rng(seed).permutation(len(crops))
    # A last batch of one segment would have no variance: it joins the one before.
    starts = list(range(0, len(order), batch_size))
    if len(order) - starts[-1] < 2 and len(starts) > 1:
        starts.pop()
    model.train()
    try:
        with torch.no_grad():
            for i, s in enumerate(starts):
                end = starts[i + 1] if i + 1 < len(starts) else len(order)
                pick = np.sort(order[s:end])
                faces = torch.from_numpy(face_to_input(crops[pick]))            # (B,1,98,80)
                mel = torch.from_numpy(np.ascontiguousarray(mels[pick]))[:, None]  # (B,1,128,43)
                model.segment_logits(faces, mel)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return model


def adapt(cfg: AdaptConfig) -> dict:
    """Pool `cfg.bags` (when given), adapt the checkpoint on the pool's recordings except the
    held-out ones, write `cfg.out` (a normal checkpoint with its provenance). -> summary."""
    t0 = time.perf_counter()
    if cfg.bags:
        build_pool(PoolConfig(bags=cfg.bags, checkpoint=cfg.checkpoint, out=cfg.pool,
                              topics=cfg.topics, settings=cfg.settings or StreamSettings()))
    model, meta = load_checkpoint(cfg.checkpoint)
    pool = Pool(cfg.pool)
    pool.check_checkpoint(meta, cfg.checkpoint)
    excluded = resolve_recordings(pool, cfg.exclude)
    t_read = time.perf_counter()
    crops, mels, used = adaptation_segments(pool, excluded)
    t_adapt = time.perf_counter()
    adapt_batchnorm(model, crops, mels, cfg.seed, cfg.batch_size)
    t_done = time.perf_counter()
    save_checkpoint(cfg.out, model, adapted_meta(
        meta, cfg.checkpoint, pool, used, excluded, len(crops), cfg.seed))
    return {'checkpoint': str(cfg.out), 'method': METHOD, 'segments': int(len(crops)),
            'recordings': used, 'excluded': excluded,
            'seconds': {'pool_and_load': t_read - t0, 'read_segments': t_adapt - t_read,
                        'adapt': t_done - t_adapt, 'total': time.perf_counter() - t0}}


def adapted_meta(meta: CheckpointMeta, checkpoint: str | os.PathLike, pool: Pool,
                 used: Sequence[str], excluded: Sequence[str], segments: int,
                 seed: int) -> CheckpointMeta:
    """The base checkpoint's metadata with the adaptation's provenance."""
    checkpoint = Path(checkpoint)
    return CheckpointMeta(
        preset=meta.preset, labels=meta.labels, n_segments=meta.n_segments,
        segment_s=meta.segment_s, features=meta.features, model=meta.model,
        provenance=make_provenance(
            adapted_from={'checkpoint': str(checkpoint.resolve()),
                          'key': checkpoint_key(checkpoint), 'provenance': meta.provenance},
            adaptation={'method': METHOD, 'pool': str(pool.path.resolve()),
                        'recordings': list(used), 'excluded_recordings': list(excluded),
                        'segments': int(segments), 'seed': int(seed)}))
