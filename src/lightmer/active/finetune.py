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
They and every window sharing a segment with them never train.

Round 0 is `lightmer adapt` (active.adapt): the base model's BatchNorm statistics
re-estimated on the pool's segments outside the held-out windows (the held-out recordings'
segments are never read). That adapted model is the *anchor* every later round starts from.
Then each round:
  1. the current model scores every candidate window in eval mode (query.select: the
     strategy's order and the diversity rules) and the `per_round` first are asked of the
     oracle (answers `skip`/`unsure` do not train; a window is never asked twice);
  2. a candidate starts again from the anchor and trains a fixed `steps` optimiser steps on
     every labelled window so far, regularised toward the anchor (L2-SP: `l2sp` times the
     squared distance of the trained weights from the anchor's); BatchNorm stays in eval mode,
     robot windows normalised with the adapted statistics and the studio clips mixed in
     against forgetting (`mix` per labelled window) with the base model's own studio
     statistics, so neither domain's statistics leak into the other's;
  3. the candidate is kept only if fine-tuning does not lower accuracy on labelled windows
     it did not train on: `folds`-fold cross-validation over the answers (a candidate per
     fold, from the anchor, on the other folds) must get at least `keep_margin` more of the
     answers right than the anchor gets; otherwise the model stays the last kept one
     (recorded as rolled back);
  4. the model scores the pool again: the held-out windows give this round's accuracy, the
     rest are the next round's candidates.
Every round restarts from the anchor with its own seeds, so a killed run resumes to the same
result. Answers given before the run (in the answers file, outside the held-out zone) train
from round 1 on. With a human oracle a round whose batch is not answered yet stops with
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
from torch.utils.data import Dataset
from tqdm import tqdm

from lightmer.active.adapt import (
    adapt_batchnorm,
    batchnorm_statistics,
    resolve_recordings,
    using_statistics,
)
from lightmer.active.answers import NOT_A_CLASS, latest, read_answers
from lightmer.active.clean import pool_continuity
from lightmer.active.oracles import ORACLES, AnswersOracle, IntervalOracle, UnansweredError
from lightmer.active.pool import Pool, checkpoint_key
from lightmer.active.query import (
    compute_segment_logits,
    manifest_items,
    model_window_embeddings,
    pool_probs,
    select,
)
from lightmer.active.selection import (
    DEFAULT_STRATEGY,
    EMBEDDING_STRATEGIES,
    STRATEGIES,
    margins,
    overlapping,
    select_diverse,
)
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import model_functions
from lightmer.core.checkpoint import (
    CheckpointMeta,
    load_checkpoint,
    make_provenance,
    save_checkpoint,
)
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

STATE = StateFile(version=2, restart='delete it to restart the run, or use another --out')
# Settings that change the numbers; a resumed run must agree on all of them.
_RUN_KEYS = ('strategy', 'per_round', 'eval_windows', 'eval_recordings', 'mix', 'steps',
             'batch_size', 'lr', 'l2sp', 'tune', 'folds', 'keep_margin', 'adapt', 'seed',
             'max_per_recording')
_TRAIN, _MIX, _EVAL, _FOLDS = 1, 2, 3, 4      # seed stream tags
TUNE = ('all', 'head-bn')          # what a round trains: every weight, or the FC head and the
                                   # BatchNorm scales and shifts only


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
    strategy: str = DEFAULT_STRATEGY
    oracle: str = 'answers'           # 'answers' (people) | 'bag-labels' (each bag's CSV)
    eval_windows: int = 40            # held-out windows (at most; 0: no evaluation)
    eval_recordings: tuple[str, ...] = ()  # hold these recordings out whole (ids or bag paths)
    mix: float = 1.0                  # base clips per labelled window in every step
    # A fixed budget per round, whatever the number of labels: 12 labels cannot overfit by
    # training longer than 48 do (choice measured: docs/ACTIVE_LEARNING.md).
    steps: int = 40                   # optimiser steps per round, from the anchor
    batch_size: int = 8               # labelled windows per step
    lr: float = 1e-4                  # Adam, the paper's rate
    l2sp: float = 0.01                # weight of the squared distance from the anchor's weights
    tune: str = 'all'                 # TUNE
    folds: int = 3                    # cross-validation folds that keep a round (0: keep all)
    # Answers by which the cross-validated candidates must beat the anchor for a round to be
    # kept: 0 keeps a tie; 1 asks for one more answer right (docs/ACTIVE_LEARNING.md).
    keep_margin: int = 0
    adapt: bool = True                # round 0: BatchNorm statistics on the pool (active.adapt)
    seed: int = 0
    max_per_recording: int | None = None
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
        for name in ('per_round', 'steps', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.mix < 0 or not self.lr > 0 or self.l2sp < 0:
            raise ValueError('mix and l2sp must be >= 0 and lr > 0')
        if self.tune not in TUNE:
            raise ValueError(f'tune must be one of {TUNE}, got {self.tune!r}')
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f'folds must be 0 (keep every round) or >= 2, got {self.folds}')
        if self.keep_margin < 0:
            raise ValueError(f'keep_margin must be >= 0, got {self.keep_margin}')
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

    def __init__(self, pool: Pool, rows: Sequence[np.ndarray], targets: Sequence[int]):
        self.pool = pool
        self.rows = [np.asarray(r, np.int64)[np.asarray(r) >= 0] for r in rows]
        self.targets = [int(y) for y in targets]

    def subset(self, indices: Sequence[int]) -> PoolWindows:
        return PoolWindows(self.pool, [self.rows[i] for i in indices],
                           [self.targets[i] for i in indices])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        _, mels = self.pool.segment_inputs(self.rows[i])
        return (torch.from_numpy(self.pool.segment_faces(self.rows[i])),
                torch.from_numpy(mels[:, None].copy()), self.targets[i])


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


@dataclass(frozen=True)
class _Anchor:
    """Where every round starts: the adapted model (round 0), and the base model's own
    BatchNorm statistics, with which the studio clips are forwarded."""

    state: dict[str, torch.Tensor]       # state dict of the adapted model
    studio: dict[str, torch.Tensor]      # active.adapt.batchnorm_statistics of the base


def _trainable(model: LightmerNet, tune: str) -> list[torch.nn.Parameter]:
    """The parameters a round trains (TUNE); the others are frozen."""
    if tune == 'all':
        return list(model.parameters())
    norm = {id(p) for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    return [p for n, p in model.named_parameters() if n.startswith('fc.') or id(p) in norm]


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`steps` batches of item indices 0..n-1: shuffled passes laid end to end."""
    stream: list[int] = []
    while len(stream) < steps * min(batch_size, n):
        stream.extend(rng.permutation(n).tolist())
    size = min(batch_size, n)
    return [np.array(stream[i * size:(i + 1) * size]) for i in range(steps)]


def _loss(model: LightmerNet, items: list) -> torch.Tensor:
    faces, mels, owner, y = _collate(items)
    return F.cross_entropy(_window_logits(model, faces, mels, owner, len(y)), y)


def _fit(run: _Run, anchor: _Anchor, windows: PoolWindows, seed: int, epoch0: int
         ) -> tuple[LightmerNet, float]:
    """A candidate: the anchor trained `steps` Adam steps on `windows`, each step's loss the
    windows' cross-entropy + l2sp x the squared distance from the anchor's weights, plus the
    cross-entropy of `mix` x batch studio clips forwarded with the studio statistics.
    BatchNorm in eval mode throughout, dropout on. -> (model in eval mode, mean loss)"""
    cfg = run.cfg
    model = LightmerNet(run.meta.model)
    model.load_state_dict(anchor.state)
    params = _trainable(model, cfg.tune)
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    rng = np.random.default_rng([seed, _MIX])
    torch.manual_seed(seed)                                      # dropout
    n_mix = int(round(cfg.mix * cfg.batch_size)) if run.base is not None else 0
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    losses = []
    for step, idx in enumerate(_batches(len(windows), cfg.batch_size, cfg.steps, rng)):
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(model, [windows[i] for i in idx])
        if cfg.l2sp:
            loss = loss + cfg.l2sp * sum(((p - p0) ** 2).sum()
                                         for p, p0 in zip(params, start, strict=True))
        loss.backward()
        if n_mix:
            run.base.set_epoch(epoch0 + step)
            pick = rng.choice(len(run.base), min(n_mix, len(run.base)), replace=False)
            # backward inside: the statistics are swapped back when the block ends
            with using_statistics(model, anchor.studio):
                _loss(model, [run.base[int(i)] for i in pick]).backward()
        optimizer.step()
        losses.append(loss.item())
    model.requires_grad_(True)
    return model.eval(), float(np.mean(losses))


def _predict(model: LightmerNet, windows: PoolWindows) -> np.ndarray:
    """Eval-mode class of every window (argmax of the mean segment logit). -> int64 (B,)"""
    faces, mels, owner, _ = _collate([windows[i] for i in range(len(windows))])
    with torch.no_grad():
        return _window_logits(model.eval(), faces, mels, owner, len(windows)).argmax(1).numpy()


def _validate(run: _Run, anchor: _Anchor, windows: PoolWindows, rnd: int) -> dict | None:
    """Does fine-tuning on these answers help on answers it did not see? k-fold
    cross-validation over the labelled windows (k = folds, at most one per window), every
    fold's candidate trained from the anchor as the round's is, against the anchor's accuracy
    on the same windows. None when there is nothing to validate."""
    n, k = len(windows), min(run.cfg.folds, len(windows))
    if run.cfg.folds == 0 or n < 2:
        return None
    fold = np.random.default_rng([run.cfg.seed, rnd, _FOLDS]).permutation(n) % k
    y = np.array(windows.targets)
    correct = 0
    for f in range(k):
        inside = np.flatnonzero(fold != f)
        held = np.flatnonzero(fold == f)
        cand, _ = _fit(run, anchor, windows.subset(inside),
                       stream_seed(run.cfg.seed, rnd, _FOLDS, f), rnd * run.cfg.steps)
        correct += int((_predict(cand, windows.subset(held)) == y[held]).sum())
    base = LightmerNet(run.meta.model)
    base.load_state_dict(anchor.state)
    anchor_correct = int((_predict(base, windows) == y).sum())
    return {'folds': k, 'windows': n, 'cv_accuracy': correct / n,
            'anchor_accuracy': anchor_correct / n, 'gain_answers': correct - anchor_correct}


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
    return resolve_recordings(pool, names, option='--eval-recordings')


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
    OUT/eval_batch.json when people must answer it), shown with `base_probs` (W, C), the
    round-0 model's."""
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


def _save_state(run: _Run, model: LightmerNet, anchor: _Anchor, progress: _Progress) -> None:
    STATE.save(run.cfg.out / 'state.pt', {
        'model': model.state_dict(), 'anchor': anchor.state, 'studio': anchor.studio,
        'labelled': progress.labelled, 'asked': progress.asked, 'metrics': progress.metrics,
        'probs': torch.from_numpy(progress.probs)})


def _resume(run: _Run, model: LightmerNet) -> tuple[_Anchor, _Progress]:
    state = STATE.load(run.cfg.out / 'state.pt')
    model.load_state_dict(state['model'])
    return (_Anchor(dict(state['anchor']), dict(state['studio'])),
            _Progress(dict(state['labelled']), list(state['asked']), list(state['metrics']),
                      state['probs'].numpy()))


def _adaptation_rows(run: _Run) -> np.ndarray:
    """Segment rows round 0 may read: none of a held-out recording, none of a held-out
    window (or of a window sharing a segment with one)."""
    table = run.pool.table
    keep = np.ones(len(table.seg_rec), bool)
    held_recs = [table.rec_ids.index(r) for r in _resolve_recordings(run.pool,
                                                                     run.cfg.eval_recordings)]
    keep[np.isin(table.seg_rec, held_recs)] = False
    zone_rows = table.rows[run.zone]
    keep[zone_rows[zone_rows >= 0]] = False
    return np.flatnonzero(keep)


def _adapt(run: _Run, model: LightmerNet) -> _Anchor:
    """Round 0, in place: `model` (the base) adapted to the pool's segments outside the
    held-out zone, unless cfg.adapt is off. -> the anchor of every round."""
    studio = batchnorm_statistics(model)
    rows = _adaptation_rows(run)
    if run.cfg.adapt and len(rows) >= 2:
        crops, mels = run.pool.segment_inputs(rows)
        adapt_batchnorm(model, crops, mels, seed=run.cfg.seed)
    return _Anchor({k: v.detach().clone() for k, v in model.state_dict().items()}, studio)


def _start(run: _Run, base_probs: np.ndarray, probs: np.ndarray, held: _HeldOut
           ) -> _Progress:
    """Round 0: the adapted model (`probs`) and the base (`base_probs`) on the held-out
    windows; answers given before the run (outside the held-out zone) train from round 1 on."""
    table, labels, zone = run.pool.table, run.labels, run.zone
    prior = latest(read_answers(run.cfg.answers))
    usable = [w for w in prior if w in table.position and not zone[table.position[w]]]
    labelled = {w: labels.index(prior[w].label) for w in usable if prior[w].label in labels}
    asked = sorted(usable)
    return _Progress(labelled, asked, [{
        'round': 0, 'labels': len(labelled), 'asked': len(asked), 'adapted': run.cfg.adapt,
        'base_accuracy': held.accuracy(base_probs, len(labels))['accuracy'],
        **held.accuracy(probs, len(labels))}], probs)


# --- one round's steps -----------------------------------------------------------------------
def _ask_round(run: _Run, progress: _Progress, rnd: int, n_ask: int,
               model: LightmerNet) -> list[str]:
    """Step 1: the current model's choice of up to `n_ask` windows never asked and outside
    the held-out zone, asked of the oracle; their answers join the labelled windows.
    -> the window ids asked."""
    cfg, pool, table, probs = run.cfg, run.pool, run.pool.table, progress.probs
    asked_set = set(progress.asked)
    candidates = ~run.zone & np.array([w not in asked_set for w in table.ids], bool)
    embed = cfg.strategy in EMBEDDING_STRATEGIES       # the current model's embeddings
    chosen, scores = select(pool, probs, candidates, n_ask, cfg.strategy,
                            stream_seed(cfg.seed, rnd) % 2**32, cfg.max_per_recording,
                            features=model_window_embeddings(pool, model) if embed else None,
                            asked=table.index_of(progress.asked),
                            labelled=table.index_of(sorted(progress.labelled)),
                            clean=pool_continuity(pool).clean if embed else None)
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


def _train_round(run: _Run, anchor: _Anchor, model: LightmerNet, labelled: dict[str, int],
                 rnd: int) -> dict:
    """Steps 2 and 3: a candidate from the anchor on every labelled window, kept (loaded into
    `model`) unless cross-validation over the answers says fine-tuning lowers accuracy.
    -> {'train_loss', 'kept', 'validation'} (loss None with nothing labelled)."""
    if not labelled:
        return {'train_loss': None, 'kept': False, 'validation': None}
    cfg, table = run.cfg, run.pool.table
    ids = sorted(labelled, key=table.position.get)
    windows = PoolWindows(run.pool, table.rows[table.index_of(ids)], [labelled[w] for w in ids])
    candidate, loss = _fit(run, anchor, windows, stream_seed(cfg.seed, rnd, _TRAIN),
                           rnd * cfg.steps)
    check = _validate(run, anchor, windows, rnd)
    kept = check is None or check['gain_answers'] >= cfg.keep_margin
    if kept:
        model.load_state_dict(candidate.state_dict())
    return {'train_loss': loss, 'kept': kept, 'validation': check}


def _probs(pool: Pool, model: LightmerNet, key: str | None = None) -> np.ndarray:
    """Step 3: the torch model in memory scores the pool as the nodes would (eval mode)."""
    fuse = model_functions(model)[1]
    return pool_probs(pool, lambda c, m: compute_segment_logits(model, c, m), fuse, key)


def _scores(probs: np.ndarray) -> dict:
    h = entropy_bits(probs)
    return {'score': h, 'entropy_bits': h, 'margin': margins(probs)}


def _save_round(run: _Run, model: LightmerNet, anchor: _Anchor, progress: _Progress) -> None:
    """Step 4: OUT/finetuned.pt, then state.pt (last: a kill before it repeats this round
    with the same batch)."""
    meta = run.meta
    save_checkpoint(run.cfg.out / 'finetuned.pt', model, CheckpointMeta(
        preset=meta.preset, labels=meta.labels, n_segments=meta.n_segments,
        segment_s=meta.segment_s, features=meta.features, model=meta.model,
        provenance=_provenance(run, progress.metrics)))
    _save_state(run, model, anchor, progress)
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
        base_probs = _probs(run.pool, model, checkpoint_key(cfg.checkpoint))
        if (cfg.out / 'state.pt').exists():
            anchor, progress = _resume(run, model)
            held = _ask_held_out(run, progress.probs)          # answered before state.pt
        else:
            anchor = _adapt(run, model)
            adapted_probs = _probs(run.pool, model)
            held = _ask_held_out(run, adapted_probs)
            progress = _start(run, base_probs, adapted_probs, held)
            # Saved before round 1 asks anything: a rerun that comes back with the answers
            # starts from here, asks the same batch and does not take its answers for prior.
            _save_state(run, model, anchor, progress)

        # --rounds 0: one round that asks nothing and trains on the answers given before.
        n_ask = cfg.per_round if cfg.rounds > 0 else 0
        for rnd in range(len(progress.metrics), max(cfg.rounds, 1) + 1):
            t0 = time.perf_counter()
            ids = _ask_round(run, progress, rnd, n_ask, model)
            trained = _train_round(run, anchor, model, progress.labelled, rnd)
            progress.probs = _probs(run.pool, model)
            progress.metrics.append({
                'round': rnd, 'labels': len(progress.labelled), 'asked': len(progress.asked),
                'new': len(ids), **trained, 'seconds': time.perf_counter() - t0,
                **held.accuracy(progress.probs, len(meta.labels))})
            _save_round(run, model, anchor, progress)
    return _report(cfg, progress.metrics, meta.labels, len(run.eval_ids))


# --- provenance, log, report -----------------------------------------------------------------
def _provenance(run: _Run, run_metrics: list[dict]) -> dict:
    cfg = run.cfg
    labels_used, rounds = run_metrics[-1]['labels'], run_metrics[-1]['round']
    return make_provenance(
        finetuned_from={'checkpoint': str(cfg.checkpoint.resolve()),
                        'key': checkpoint_key(cfg.checkpoint),
                        'provenance': run.meta.provenance},
        pool=str(run.pool.path.resolve()), pool_recordings=list(run.pool.recording_ids),
        answers=str(cfg.answers.resolve()), labels_used=labels_used, rounds=rounds,
        strategy=cfg.strategy, per_round=cfg.per_round, mix=cfg.mix,
        base_cache=None if cfg.base_cache is None else str(cfg.base_cache.resolve()),
        adapted=cfg.adapt, steps_per_round=cfg.steps, l2sp=cfg.l2sp, tune=cfg.tune,
        folds=cfg.folds, rounds_kept=sum(bool(m.get('kept')) for m in run_metrics),
        lr=cfg.lr, seed=cfg.seed)


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
