"""Training one fold across K processes (torchrun, DistributedDataParallel): the plumbing.

`lightmer train` started by torchrun (`torchrun --nproc-per-node K -m lightmer train ...`)
finds RANK, WORLD_SIZE and LOCAL_RANK in its environment (`launched_ranks`) and joins one
process group (`join`): gloo on CPUs, NCCL on GPUs, one GPU per local rank. For a single
process the collectives below do nothing, so the trainer has one code path.

K ranks train the same model one process would, up to float rounding:
- a global batch (`--batch-size`, the paper's 16) is cut into K contiguous slices
  (`split_batch`); each rank's loss is scaled so that DDP's average of the K gradients is the
  gradient of the mean loss over the global batch (see `train.train_epoch`);
- BatchNorm statistics are taken over the global batch (`CrossRankBatchNorm2d`), as one
  process takes them over its whole batch;
- each sample's dropout mask comes from a stream keyed by that sample (`KeyedDropout`), not
  from a per-process generator, so it does not depend on which rank holds the sample;
- eval-mode scoring (the pool U, D_train(0), the test fold) is cut into K runs of whole batches
  (`shard_batches`) and gathered (`gather_rows`): every clip is scored in the same batch as by
  one process, so the uncertainty step ranks the same entropies and selects the same clips.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

# Imported before any process group exists, and only for that: its functions take
# `group=group.WORLD` as a default argument, evaluated when the module is imported. DDP imports
# it on first use (through FSDP's sharding modules), so imported later it would hold this
# process's default group in those defaults for ever: `leave()` could not end the group, and
# its gloo worker threads would outlive it. One that freed a finished collective's tensors
# while the interpreter was exiting took the GIL there, which ends the thread by unwinding
# through a noexcept destructor: std::terminate, "terminate called without an active
# exception", SIGABRT (seen on rank 0 in CI; the core dump shows that stack).
import torch.distributed.nn  # noqa: F401
from torch import nn

from lightmer import __version__

T = TypeVar('T')

# Errors a rank-0-only step (reading the run directory) may raise; every rank re-raises the
# same type so the CLI prints the same one-line message on each of them.
_SHARED_ERRORS: dict[str, type[Exception]] = {
    e.__name__: e for e in (ValueError, FileExistsError, FileNotFoundError)}


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in the job; the default is a single process."""

    rank: int = 0                 # global rank, 0 .. world_size - 1
    world_size: int = 1           # processes training the fold together (K)
    local_rank: int = 0           # rank on this machine; picks the GPU

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f'inconsistent ranks: rank {self.rank}, world size '
                             f'{self.world_size}, local rank {self.local_rank}')

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files (metrics, checkpoints, plots, resumable state)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


def launched_ranks(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK) gave us."""
    if 'WORLD_SIZE' not in environ:
        return SINGLE
    try:
        return Ranks(rank=int(environ.get('RANK', '0')),
                     world_size=int(environ['WORLD_SIZE']),
                     local_rank=int(environ.get('LOCAL_RANK', '0')))
    except ValueError as e:
        raise ValueError(f'RANK / WORLD_SIZE / LOCAL_RANK are not usable ({e}); start '
                         'distributed training with torchrun') from None


def join(ranks: Ranks, device_type: str, timeout_s: float) -> torch.device:
    """Join the process group (nothing for one process); returns this rank's device.

    `timeout_s` bounds every collective: a rank that stalls or dies makes the others fail
    after at most that long instead of waiting for ever (torchrun's agent usually stops them
    sooner, as soon as it sees a worker exit).
    """
    device = torch.device(device_type)
    if device_type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device cuda was asked for but torch sees no CUDA device; '
                             'use --device cpu')
        if ranks.local_rank >= torch.cuda.device_count():
            raise ValueError(f'local rank {ranks.local_rank} has no GPU: this machine has '
                             f'{torch.cuda.device_count()}; pass --nproc-per-node '
                             f'{torch.cuda.device_count()} or fewer to torchrun')
        device = torch.device('cuda', ranks.local_rank)
        torch.cuda.set_device(device)
    if ranks.active and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo',
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


def launch_record(ranks: Ranks, device: torch.device) -> dict:
    """How this run trains, for its files and checkpoints: processes, their backend (None for
    one process), this rank's device and the lightmer version. Two one-rank runs and a
    two-rank gloo run read differently."""
    backend = dist.get_backend() if ranks.active and dist.is_initialized() else None
    return {'world_size': ranks.world_size, 'backend': backend, 'device': device.type,
            'lightmer': __version__}


def leave() -> None:
    """Leave the process group if this process joined one: its threads end here, before the
    interpreter exits (see the import of torch.distributed.nn above)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# --- who does what (pure) ---------------------------------------------------------------------
def split_batch(batch: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's contiguous slice of one global batch; slice sizes differ by at most one and
    a rank gets an empty slice when the batch has fewer samples than there are ranks."""
    n = len(batch)
    return list(batch[rank * n // world_size:(rank + 1) * n // world_size])


def shard_batches(batches: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's contiguous run of whole batches (run lengths differ by at most one)."""
    n = len(batches)
    return list(batches[rank * n // world_size:(rank + 1) * n // world_size])


def shard_sizes(batches: Sequence[Sequence[int]], world_size: int) -> list[int]:
    """Samples each rank scores under `shard_batches`, rank order."""
    return [sum(len(b) for b in shard_batches(batches, r, world_size))
            for r in range(world_size)]


# --- collectives (no-ops for one process) -----------------------------------------------------
def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_sum(values: Sequence[float], ranks: Ranks) -> list[float]:
    """Element-wise sum over the ranks (float64), e.g. per-rank loss sums and counts."""
    if not ranks.active:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_rows(local: torch.Tensor, counts: Sequence[int], ranks: Ranks) -> torch.Tensor:
    """Concatenate every rank's rows in rank order, on the CPU.

    local: (counts[rank], ...) this rank's rows; every rank passes the same `counts` and the
    same trailing shape and dtype. all_gather needs equal sizes, so rows are padded to the
    largest count and the padding dropped after.
    """
    if not ranks.active:
        return local.cpu()
    if local.shape[0] != counts[ranks.rank]:
        raise ValueError(f'rank {ranks.rank} holds {local.shape[0]} rows, counts say '
                         f'{counts[ranks.rank]}')
    width = max(counts)
    device = _comm_device()
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu()


def broadcast(obj: T, ranks: Ranks) -> T:
    """Rank 0's `obj` on every rank (pickled; for run state and small results)."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T], ranks: Ranks) -> T:
    """Run `fn` on rank 0 only and hand its result to every rank.

    For steps that touch the run directory, which may exist only on rank 0's machine. When
    `fn` raises one of the usual user errors (bad settings, a run already there), every rank
    raises it with the same message, so no rank waits for a partner that has given up.
    """
    if not ranks.active:
        return fn()
    outcome: tuple[str, object] = ('ok', None)
    if ranks.is_main:
        try:
            outcome = ('ok', fn())
        except tuple(_SHARED_ERRORS.values()) as e:
            outcome = (type(e).__name__, str(e))
    kind, value = broadcast(outcome, ranks)
    if kind != 'ok':
        raise _SHARED_ERRORS.get(kind, RuntimeError)(value)
    return value


# --- modules that make K ranks compute what one process computes ------------------------------
class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every rank's output depends on every rank's input,
    so the gradient of each input is the sum over ranks of the output gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch across all ranks.

    torch's SyncBatchNorm does the same on GPUs only; this one runs on any backend (gloo on
    CPUs included). Mean and biased variance normalise; the running variance takes the
    unbiased one, as nn.BatchNorm2d does. A rank with an empty slice contributes nothing.
    Same parameters and buffers as nn.BatchNorm2d, so state dicts load either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, C, H, W)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        x = x.float()   # statistics in float32 under autocast too, as F.batch_norm keeps them
        dims = (0, 2, 3)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        first = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))          # (C + 1,)
        n = first[-1]
        mean = first[:-1] / n                                                   # (C,)
        centred = x - mean[None, :, None, None]
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n              # (C,) biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1 / float(self.num_batches_tracked) if self.momentum is None  # cumulative
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1),
                                                  alpha=m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if not self.affine:
            return y
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class KeyedDropout(nn.Module):
    """Dropout whose mask for each sample is drawn from that sample's own random stream.

    Before each training forward the trainer sets `keys`: one 63-bit seed per sample of the
    local batch (derived from seed, fold, epoch and the clip's position). A sample then gets
    the same mask whichever rank, batch or DataLoader worker it lands in, which is what lets
    K ranks reproduce one process. Input (B * S, F): the rows of a sample are consecutive
    (S = the temporal segments sharing the network); eval mode passes the input through.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f'dropout p must be in [0, 1), got {p}')
        self.p = p
        self.keys: Sequence[int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.shape[0] == 0:
            return x
        if self.keys is None or not len(self.keys) or x.shape[0] % len(self.keys):
            raise RuntimeError('KeyedDropout needs one key per sample of the batch before a '
                               'training forward (train.train_epoch sets them)')
        rows = (x.shape[0] // len(self.keys), x.shape[1])
        keep = torch.cat([torch.rand(rows, generator=torch.Generator().manual_seed(int(k)))
                          for k in self.keys]) >= self.p                       # (B * S, F)
        return x * keep.to(x.device, x.dtype) / (1 - self.p)


def replace_modules(module: nn.Module, convert: Callable[[nn.Module], nn.Module | None]
                    ) -> nn.Module:
    """Swap, in place, every submodule for which `convert` returns a new module; returns
    `module` (or its replacement when the root itself converts)."""
    new = convert(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        setattr(module, name, replace_modules(child, convert))
    return module


def to_cross_rank_batchnorm(m: nn.Module) -> nn.Module | None:
    """A CrossRankBatchNorm2d carrying `m`'s parameters and statistics, for BatchNorm2d."""
    if type(m) is not nn.BatchNorm2d:
        return None
    new = CrossRankBatchNorm2d(m.num_features, m.eps, m.momentum, m.affine,
                               m.track_running_stats)
    new.load_state_dict(m.state_dict())
    return new.to(m.weight.device)


def to_keyed_dropout(m: nn.Module) -> nn.Module | None:
    """A KeyedDropout of the same rate, for nn.Dropout."""
    return KeyedDropout(m.p) if type(m) is nn.Dropout else None


def set_dropout_keys(model: nn.Module, keys: Sequence[int]) -> None:
    """Give every KeyedDropout in `model` the per-sample keys of the next training batch."""
    for m in model.modules():
        if isinstance(m, KeyedDropout):
            m.keys = keys
