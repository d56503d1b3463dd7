"""`lightmer finetune`: continue Algorithm 1 on a robot's pool with people as the oracle.

Run layout (`cfg.out` = OUT):

    OUT/plan.json            settings, base checkpoint, pool, the held-out evaluation windows
    OUT/state.pt             resumable state after the last completed round
    OUT/round_R/batch.json   the windows asked in round R (a batch manifest) and their answers
    OUT/finetuned.pt         the model after the last completed round (a normal checkpoint)
    OUT/report.json          accuracy before/after on the held-out windows, per-round metrics
    OUT/confusion_before.png, confusion_after.png, learning_curve.png

Before round 1 the held-out windows are chosen (a seeded random sample, never two sharing a
segment; or windows of whole recordings given as `eval_recordings`) and asked of the oracle.
They and every window sharing a segment with them never train. Then each round:
  1. the current model scores every candidate window in eval mode (query.select: the
     strategy's order and the diversity rules) and the `per_round` first are asked of the
     oracle (answers `skip`/`unsure` do not train; a window is never asked twice);
  2. the model trains `epochs` passes over every labelled window so far, each pass mixed
     with `mix` x as many clips of the original training cache (train mode draws, as in
     `train`) so that it does not forget what it learnt there;
  3. the model scores the pool again: the held-out windows give this round's accuracy, the
     rest are the next round's candidates.
Answers given before the run (in the answers file, outside the held-out zone) train from
round 1 on. With a human oracle a round whose batch is not answered yet stops with
`AnswersNeededError`: answer the batch, run the same command with --resume.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from lightmer.active.answers import NOT_A_CLASS, latest, read_answers
from lightmer.active.oracles import ORACLES, AnswersOracle, IntervalOracle, UnansweredError
from lightmer.active.pool import Pool, PoolError, checkpoint_key, recording_id
from lightmer.active.query import compute_segment_logits, manifest_items, pool_probs, select
from lightmer.active.selection import STRATEGIES, margins, overlapping, select_diverse
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import model_functions
from lightmer.core.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    make_provenance,
    save_checkpoint,
)
from lightmer.core.features import face_to_input
from lightmer.core.model import LightmerNet
from lightmer.core.plots import confusion_matrix, plot_confusion, plot_label_curves
from lightmer.core.uncertainty import entropy_bits
from lightmer.datasets.cache import SegmentDataset, load_index
from lightmer.evaluation.scoring import check_labels
from lightmer.training.oracle import NO_LABEL, Oracle
from lightmer.training.resume import (
    StateFile,
    claim_settings,
    deterministic_algorithms,
    run_settings,
)
from lightmer.training.train import stream_seed

STATE = StateFile(version=1, restart='delete it to restart the run, or use another --out')
# Settings that change the numbers; a resumed run must agree on all of them.
_RUN_KEYS = ('strategy', 'per_round', 'eval_windows', 'eval_recordings', 'mix', 'epochs',
             'batch_size', 'lr', 'seed', 'max_per_recording', 'freeze_batchnorm')
_TRAIN, _MIX, _EVAL = 1, 2, 3      # seed stream tags


@dataclass(frozen=True)
class FinetuneConfig:
    checkpoint: Path                  # the model to start from (and its features)
    pool: Path
    answers: Path                     # the answers file (active.answers): read, appended
    out: Path
    base_cache: Path | None = None    # the original training cache, mixed in against forgetting
    base_clips: tuple[str, ...] | None = None  # of it, these clips (default: every usable one)
    rounds: int = 1
    per_round: int = 12               # windows asked per round
    strategy: str = 'uncertainty'
    oracle: str = 'answers'           # 'answers' (people) | 'bag-labels' (each bag's CSV)
    eval_windows: int = 40            # held-out windows (at most; 0: no evaluation)
    eval_recordings: tuple[str, ...] = ()  # hold these recordings out whole (ids or bag paths)
    mix: float = 1.0                  # base clips per labelled window in every pass
    epochs: int = 4                   # passes over the labelled windows per round
    batch_size: int = 8
    lr: float = 1e-4                  # Adam, the paper's rate
    seed: int = 0
    max_per_recording: int | None = None
    # Keep the base model's BatchNorm statistics while fine-tuning: with a few labelled
    # windows a batch's statistics are noisy, and the running ones then jump from round to
    # round (measured: docs/ACTIVE_LEARNING.md).
    freeze_batchnorm: bool = True
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f'strategy must be one of {STRATEGIES}, got {self.strategy!r}')
        if self.oracle not in ORACLES:
            raise ValueError(f'oracle must be one of {ORACLES}, got {self.oracle!r}')
        for name in ('rounds', 'eval_windows'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('per_round', 'epochs', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.mix < 0 or not self.lr > 0:
            raise ValueError('mix must be >= 0 and lr > 0')
        if self.mix > 0 and self.base_cache is None:
            object.__setattr__(self, 'mix', 0.0)     # nothing to mix without a cache
        for name in ('checkpoint', 'pool', 'answers', 'out'):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, 'eval_recordings', tuple(self.eval_recordings))

    def run_settings(self) -> dict:
        return run_settings(self, _RUN_KEYS)


class AnswersNeededError(RuntimeError):
    """A batch waits for people: its manifest is written; answer it, then resume."""

    def __init__(self, manifest: Path, ids: Sequence[str], answers: Path):
        self.manifest, self.ids = manifest, list(ids)
        super().__init__(
            f'{len(self.ids)} window(s) wait for an answer; they are listed in {manifest}. '
            f'Answer them in {answers} (the labelling page, a spreadsheet or any tool '
            'writing window_id,label,who,when), then run the same command with --resume')


# --- data ------------------------------------------------------------------------------------
class PoolWindows(Dataset):
    """Labelled pool windows as training items, the same item as datasets.SegmentDataset:
    (faces float32 (n, 1, 98, 80), log-mels float32 (n, 1, 128, 43), class index), n = the
    window's segments (N, or fewer when the nodes published with min_segments)."""

    def __init__(self, pool: Pool, rows: np.ndarray, targets: Sequence[int]):
        self.pool = pool
        self.rows = [r[r >= 0] for r in np.asarray(rows, np.int64)]
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        crops, mels = self.pool.segment_inputs(self.rows[i])
        return (torch.from_numpy(face_to_input(crops)),
                torch.from_numpy(mels[:, None].copy()), self.targets[i])


class _Mixed(Dataset):
    """Items `indices` of `base` (a train-mode SegmentDataset) with its own labels."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items with any number of segments -> faces (S, 1, H, W), mels (S, 1, M, T) of all their
    segments, owner int64 (S,) (the item of each segment), targets int64 (B,)."""
    faces = torch.cat([f for f, _, _ in items])
    mels = torch.cat([m for _, m, _ in items])
    sizes = torch.tensor([f.shape[0] for f, _, _ in items])
    owner = torch.repeat_interleave(torch.arange(len(items)), sizes)
    return faces, mels, owner, torch.tensor([y for _, _, y in items], dtype=torch.int64)


def _window_logits(model, faces, mels, owner: torch.Tensor, n_windows: int) -> torch.Tensor:
    """LightmerNet.forward for windows of unequal length: every segment through the shared
    networks as one batch, then each window's mean of its segments' logits. -> (B, C)"""
    seg = model.segment_logits(faces, mels)                                  # (S, C)
    sums = torch.zeros(n_windows, seg.shape[1], dtype=seg.dtype).index_add_(0, owner, seg)
    return sums / torch.bincount(owner, minlength=n_windows)[:, None].to(seg.dtype)


def _train_pass(model, optimizer, dataset: Dataset, batch_size: int, seed: int,
                progress: bool, freeze_batchnorm: bool = False) -> float:
    """One shuffled pass in train mode (dropout, batch statistics). -> mean loss.

    Pool windows and base clips share batches whatever their segment count, so every batch's
    BatchNorm statistics mix both domains in the proportion of the whole set.
    """
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed), collate_fn=_collate)
    total, count = 0.0, 0
    for faces, mels, owner, y in tqdm(loader, desc='batches', leave=False, disable=not progress):
        loss = F.cross_entropy(_window_logits(model, faces, mels, owner, len(y)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / count


# --- the run's fixed parts -------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """What every round of one run reads and none changes."""

    cfg: FinetuneConfig
    meta: CheckpointMeta            # the base checkpoint's (labels, features, model)
    pool: Pool
    oracle: Oracle
    base: SegmentDataset | None     # the base clips mixed in against forgetting, or None
    eval_ids: list[str]             # the held-out windows: asked, never trained
    zone: np.ndarray                # bool (W,): windows that must never train

    @property
    def labels(self) -> tuple[str, ...]:
        return self.meta.labels


def _resolve_recordings(pool: Pool, names: Sequence[str]) -> list[str]:
    """Recording ids from ids or bag paths."""
    out = []
    for name in names:
        rec = name if name in pool.recording_ids else recording_id(name)
        if rec not in pool.recording_ids:
            raise PoolError(f'--eval-recordings {name!r} is neither a recording id nor a bag of '
                            f'{pool.path}; it has {list(pool.recording_ids)}')
        out.append(rec)
    return out


def _plan_eval(pool: Pool, cfg: FinetuneConfig) -> tuple[list[str], np.ndarray]:
    """(held-out window ids, bool (W,) windows that must never train)."""
    table = pool.table
    if cfg.eval_windows == 0:
        return [], np.zeros(len(table.ids), bool)
    recs = _resolve_recordings(pool, cfg.eval_recordings)
    draw = np.random.default_rng([cfg.seed, _EVAL]).random(len(table.ids))
    if recs:
        whole = np.isin(table.rec, [table.rec_ids.index(r) for r in recs])
        inside = np.flatnonzero(whole)
        pick = inside[np.argsort(draw[inside], kind='stable')][:cfg.eval_windows]
        return sorted((table.ids[i] for i in pick), key=table.position.get), whole
    chosen = select_diverse(draw, table.ids, table.rec, table.k_last, pool.n_segments,
                            cfg.eval_windows, max_per_recording=cfg.eval_windows)
    zone = overlapping(table.rec, table.k_last, np.array(chosen, np.int64), pool.n_segments)
    return sorted((table.ids[i] for i in chosen), key=table.position.get), zone


def _make_oracle(cfg: FinetuneConfig, pool: Pool, labels: tuple[str, ...]) -> Oracle:
    if cfg.oracle == 'bag-labels':
        return IntervalOracle(pool, cfg.answers, labels)
    return AnswersOracle(cfg.answers, labels)


def _base_data(cfg: FinetuneConfig, meta: CheckpointMeta) -> SegmentDataset | None:
    """(train-mode SegmentDataset over the base clips, or None)."""
    if cfg.base_cache is None or cfg.mix == 0:
        return None
    index = load_index(cfg.base_cache)
    if index.features != meta.features:
        raise ValueError(f'--base-cache {cfg.base_cache} was prepared with other feature '
                         'settings than the checkpoint; pass the cache the model was trained on')
    clips = list(cfg.base_clips) if cfg.base_clips is not None else index.clip_ids
    return SegmentDataset(cfg.base_cache, clips, n_segments=meta.n_segments,
                          labels=meta.labels, train=True, seed=cfg.seed)


def _open_run(cfg: FinetuneConfig, meta: CheckpointMeta, oracle: Oracle | None) -> _Run:
    """Check every input, plan the held-out windows and claim OUT (plan.json); what a user
    can fix raises before anything is written."""
    pool = Pool(cfg.pool)
    pool.check_checkpoint(meta, cfg.checkpoint)
    check_labels([a.label for a in read_answers(cfg.answers)], meta.labels, str(cfg.answers),
                 extras=NOT_A_CLASS)
    base = _base_data(cfg, meta)
    oracle = oracle if oracle is not None else _make_oracle(cfg, pool, meta.labels)
    if (cfg.out / 'state.pt').exists() and not cfg.resume:
        raise FileExistsError(f'{cfg.out} already holds a fine-tuning run; pass --resume to '
                              'continue it or choose another --out')
    eval_ids, zone = _plan_eval(pool, cfg)
    claim_settings(cfg.out / 'plan.json', {
        'checkpoint': str(cfg.checkpoint.resolve()), 'pool': str(pool.path.resolve()),
        'answers': str(cfg.answers.resolve()), 'settings': cfg.run_settings(),
        'eval_windows': eval_ids, 'no_train_windows': int(zone.sum())})
    return _Run(cfg, meta, pool, oracle, base, eval_ids, zone)


# --- asking ----------------------------------------------------------------------------------
def _ask(oracle: Oracle, ids: list[str], predicted: list[int], manifest: dict, path: Path,
         answers: Path) -> list[int]:
    """The oracle's answers, or the manifest written and AnswersNeededError raised."""
    try:
        return oracle.check(ids, predicted)
    except UnansweredError as e:
        atomic_save_json(path, manifest)
        raise AnswersNeededError(path, e.ids, answers) from None


@dataclass(frozen=True)
class _HeldOut:
    """The held-out windows and the oracle's answers for them."""

    idx: np.ndarray          # int64 (E,) their positions in the pool
    targets: np.ndarray      # int64 (E,) class index, NO_LABEL where nobody could tell

    def accuracy(self, probs: np.ndarray, n_classes: int) -> dict:
        """Accuracy, windows scored and confusion of the window probabilities float (W, C)."""
        keep = self.targets != NO_LABEL
        pred = probs[self.idx][keep].argmax(axis=1)
        true = self.targets[keep]
        return {'accuracy': float((pred == true).mean()) if keep.any() else None,
                'windows': int(keep.sum()),
                'confusion': confusion_matrix(true, pred, n_classes).tolist()}


def _ask_held_out(run: _Run, base_probs: np.ndarray) -> _HeldOut:
    """Before round 1: the held-out windows asked of the oracle (their batch manifest is
    OUT/eval_batch.json when people must answer it)."""
    idx = run.pool.table.index_of(run.eval_ids)
    manifest = {'format': 'lightmer-batch', 'purpose': 'held-out evaluation',
                'labels': list(run.labels), 'items': manifest_items(
                    run.pool, list(idx), base_probs, _scores(base_probs), run.labels)}
    targets = _ask(run.oracle, run.eval_ids, [int(p.argmax()) for p in base_probs[idx]],
                   manifest, run.cfg.out / 'eval_batch.json', run.cfg.answers)
    return _HeldOut(idx, np.array(targets, np.int64))


# --- the bookkeeping -------------------------------------------------------------------------
@dataclass
class _Progress:
    """What the rounds so far have done; state.pt holds it beside the weights."""

    labelled: dict[str, int]    # window id -> class index: every answer that trains
    asked: list[str]            # windows asked or answered before: never asked again
    metrics: list[dict]         # round 0 (the base model), then one entry per round
    probs: np.ndarray           # float64 (W, C): the current model's window probabilities


def _save_state(run: _Run, model: LightmerNet, optimizer: torch.optim.Optimizer,
                progress: _Progress) -> None:
    STATE.save(run.cfg.out / 'state.pt', {
        'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
        'labelled': progress.labelled, 'asked': progress.asked, 'metrics': progress.metrics,
        'probs': torch.from_numpy(progress.probs)})


def _resume(run: _Run, model: LightmerNet, optimizer: torch.optim.Optimizer) -> _Progress:
    state = STATE.load(run.cfg.out / 'state.pt')
    model.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    return _Progress(dict(state['labelled']), list(state['asked']), list(state['metrics']),
                     state['probs'].numpy())


def _start(run: _Run, base_probs: np.ndarray, held: _HeldOut) -> _Progress:
    """Round 0: the base model on the held-out windows; answers given before the run
    (outside the held-out zone) train from round 1 on."""
    table, labels, zone = run.pool.table, run.labels, run.zone
    prior = latest(read_answers(run.cfg.answers))
    usable = [w for w in prior if w in table.position and not zone[table.position[w]]]
    labelled = {w: labels.index(prior[w].label) for w in usable if prior[w].label in labels}
    asked = sorted(usable)
    return _Progress(labelled, asked, [{'round': 0, 'labels': len(labelled), 'asked': len(asked),
                                        **held.accuracy(base_probs, len(labels))}], base_probs)


# --- one round's steps -----------------------------------------------------------------------
def _ask_round(run: _Run, progress: _Progress, rnd: int, n_ask: int) -> list[str]:
    """Step 1: the current model's choice of up to `n_ask` windows never asked and outside
    the held-out zone, asked of the oracle; their answers join the labelled windows.
    -> the window ids asked."""
    cfg, pool, table, probs = run.cfg, run.pool, run.pool.table, progress.probs
    asked_set = set(progress.asked)
    candidates = ~run.zone & np.array([w not in asked_set for w in table.ids], bool)
    chosen, scores = select(pool, probs, candidates, n_ask, cfg.strategy,
                            stream_seed(cfg.seed, rnd) % 2**32, cfg.max_per_recording)
    ids = [table.ids[i] for i in chosen]
    manifest = {'format': 'lightmer-batch', 'purpose': f'round {rnd}',
                'strategy': cfg.strategy, 'labels': list(run.labels),
                'items': manifest_items(pool, chosen, probs, scores, run.labels)}
    path = cfg.out / f'round_{rnd}' / 'batch.json'
    answers = _ask(run.oracle, ids, [int(probs[i].argmax()) for i in chosen], manifest, path,
                   cfg.answers)
    for item, y in zip(manifest['items'], answers, strict=True):
        item['answer'] = run.labels[y] if y != NO_LABEL else 'no label'
    atomic_save_json(path, manifest)
    progress.asked += ids
    progress.labelled.update((w, y) for w, y in zip(ids, answers, strict=True) if y != NO_LABEL)
    return ids


def _train_round(run: _Run, model: LightmerNet, optimizer: torch.optim.Optimizer,
                 labelled: dict[str, int], rnd: int) -> float | None:
    """Step 2: `cfg.epochs` passes over the labelled windows, each mixed with fresh base
    clips. -> mean loss (None with nothing labelled)."""
    if not labelled:
        return None
    cfg, table, base = run.cfg, run.pool.table, run.base
    ids = sorted(labelled, key=table.position.get)
    windows = PoolWindows(run.pool, table.rows[table.index_of(ids)], [labelled[w] for w in ids])
    losses = []
    torch.manual_seed(stream_seed(cfg.seed, rnd, _TRAIN))          # dropout of this round
    for epoch in range(cfg.epochs):
        data: Dataset = windows
        if base is not None:
            n_mix = min(len(base), int(round(cfg.mix * len(windows))))
            rng = np.random.default_rng([cfg.seed, rnd, epoch, _MIX])
            base.set_epoch(rnd * cfg.epochs + epoch)
            data = ConcatDataset([windows, _Mixed(base, rng.choice(len(base), n_mix,
                                                                   replace=False))])
        losses.append(_train_pass(model, optimizer, data, cfg.batch_size,
                                  stream_seed(cfg.seed, rnd, epoch), cfg.progress,
                                  cfg.freeze_batchnorm))
    return float(np.mean(losses))


def _probs(pool: Pool, model: LightmerNet, key: str | None = None) -> np.ndarray:
    """Step 3: the torch model in memory scores the pool as the nodes would (eval mode)."""
    fuse = model_functions(model)[1]
    return pool_probs(pool, lambda c, m: compute_segment_logits(model, c, m), fuse, key)


def _scores(probs: np.ndarray) -> dict:
    h = entropy_bits(probs)
    return {'score': h, 'entropy_bits': h, 'margin': margins(probs)}


def _save_round(run: _Run, model: LightmerNet, optimizer: torch.optim.Optimizer,
                progress: _Progress) -> None:
    """Step 4: OUT/finetuned.pt, then state.pt (last: a kill before it repeats this round
    with the same batch)."""
    meta = run.meta
    save_checkpoint(run.cfg.out / 'finetuned.pt', model, CheckpointMeta(
        preset=meta.preset, labels=meta.labels, n_segments=meta.n_segments,
        segment_s=meta.segment_s, features=meta.features, model=meta.model,
        provenance=_provenance(run, len(progress.labelled), progress.metrics[-1]['round'])))
    _save_state(run, model, optimizer, progress)
    _log_round(progress.metrics[-1])


# --- the run ---------------------------------------------------------------------------------
def finetune(cfg: FinetuneConfig, oracle: Oracle | None = None) -> dict:
    """Run (or resume) the rounds; returns the report also written to OUT/report.json.

    `oracle`: any `training.oracle.Oracle` (NO_LABEL allowed); default: the one `cfg.oracle`
    names. Raises AnswersNeededError when people must answer first.
    """
    model, meta = load_checkpoint(cfg.checkpoint)
    run = _open_run(cfg, meta, oracle)
    with deterministic_algorithms():
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        base_probs = _probs(run.pool, model, checkpoint_key(cfg.checkpoint))
        held = _ask_held_out(run, base_probs)
        if (cfg.out / 'state.pt').exists():
            progress = _resume(run, model, optimizer)
        else:
            progress = _start(run, base_probs, held)
            # Saved before round 1 asks anything: a rerun that comes back with the answers
            # starts from here, asks the same batch and does not take its answers for prior.
            _save_state(run, model, optimizer, progress)

        # --rounds 0: one round that asks nothing and trains on the answers given before.
        n_ask = cfg.per_round if cfg.rounds > 0 else 0
        for rnd in range(len(progress.metrics), max(cfg.rounds, 1) + 1):
            t0 = time.perf_counter()
            ids = _ask_round(run, progress, rnd, n_ask)
            loss = _train_round(run, model, optimizer, progress.labelled, rnd)
            progress.probs = _probs(run.pool, model)
            progress.metrics.append({
                'round': rnd, 'labels': len(progress.labelled), 'asked': len(progress.asked),
                'new': len(ids), 'train_loss': loss, 'seconds': time.perf_counter() - t0,
                **held.accuracy(progress.probs, len(meta.labels))})
            _save_round(run, model, optimizer, progress)
    return _report(cfg, progress.metrics, meta.labels, len(run.eval_ids))


# --- provenance, log, report -----------------------------------------------------------------
def _provenance(run: _Run, labels_used: int, rounds: int) -> dict:
    cfg = run.cfg
    return make_provenance(
        finetuned_from={'checkpoint': str(cfg.checkpoint.resolve()),
                        'key': checkpoint_key(cfg.checkpoint),
                        'provenance': run.meta.provenance},
        pool=str(run.pool.path.resolve()), pool_recordings=list(run.pool.recording_ids),
        answers=str(cfg.answers.resolve()), labels_used=labels_used, rounds=rounds,
        strategy=cfg.strategy, per_round=cfg.per_round, mix=cfg.mix,
        base_cache=None if cfg.base_cache is None else str(cfg.base_cache.resolve()),
        epochs_per_round=cfg.epochs, lr=cfg.lr, seed=cfg.seed)


def _log_round(m: dict) -> None:
    acc = 'n/a' if m['accuracy'] is None else f"{m['accuracy']:.3f}"
    tqdm.write(f"round {m['round']}: {m['labels']} labelled windows ({m['new']} asked), "
               f"held-out accuracy {acc} on {m['windows']} windows", file=sys.stderr)


def _report(cfg: FinetuneConfig, metrics: list[dict], labels, n_eval: int) -> dict:
    out = cfg.out
    before, after = metrics[0], metrics[-1]
    report = {
        'checkpoint': str(out / 'finetuned.pt') if len(metrics) > 1 else None,
        'base_checkpoint': str(cfg.checkpoint), 'pool': str(cfg.pool),
        'answers': str(cfg.answers), 'labels': list(labels), 'eval_windows': n_eval,
        'before': {k: before[k] for k in ('accuracy', 'windows', 'confusion')},
        'after': {k: after[k] for k in ('accuracy', 'windows', 'confusion')},
        'rounds_done': len(metrics) - 1, 'labels_used': after['labels'],
        'curve': [{'labels': m['labels'], 'accuracy': m['accuracy']} for m in metrics],
        'rounds': metrics, 'settings': cfg.run_settings(),
    }
    if n_eval:
        for name, m in (('before', before), ('after', after)):
            plot_confusion(np.array(m['confusion']), labels, out / f'confusion_{name}.png',
                           f'held-out windows, {name} fine-tuning')
        plot_label_curves({cfg.strategy: {'labels': [m['labels'] for m in metrics],
                                          'mean': [m['accuracy'] for m in metrics]}},
                          out / 'learning_curve.png', 'fine-tuning on the pool')
    atomic_save_json(out / 'report.json', report)
    return report
