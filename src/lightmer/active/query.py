"""`lightmer query`: rank a pool's unanswered windows and write a batch for people to answer.

The model scores segments, not windows: each segment's logits are computed once per
checkpoint and cached in the pool (`Pool.segment_logits`), and a window's probabilities are
the softmax of the mean of its cached segment logits (`window_probs`), as in the fusion
node. So re-ranking a pool with the same checkpoint costs a mean and a sort.

Batch manifest (JSON, docs/ACTIVE_LEARNING.md): format 'lightmer-batch', the pool, the
checkpoint and its class labels, the strategy, the diversity cap, and per selected window its
id, recording, stamp, camera and audio time spans, score, entropy, margin, probabilities and
predicted class. Answer it in the answers file (`lightmer.active.answers`).
"""
from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightmer.active.answers import NOT_A_CLASS, latest, read_answers
from lightmer.active.clean import pool_continuity
from lightmer.active.pool import Pool, checkpoint_key
from lightmer.active.selection import (
    DEFAULT_STRATEGY,
    EMBEDDING_STRATEGIES,
    STRATEGIES,
    default_cap,
    embedding_priority,
    margins,
    overlapping,
    priority,
    resolve_strategy,
    select_diverse,
    window_embeddings,
)
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import backend_of, load_model, model_functions
from lightmer.core.checkpoint import CheckpointMeta, load_checkpoint
from lightmer.core.features import face_to_input
from lightmer.core.uncertainty import entropy_bits
from lightmer.evaluation.scoring import check_labels

MANIFEST_FORMAT = 'lightmer-batch'
MANIFEST_VERSION = 1
SCORE_NAMES = {'uncertainty': 'entropy_bits', 'margin': 'margin', 'random': 'random_draw',
               'typical': 'typicality', 'cluster-margin': 'margin'}


@dataclass(frozen=True)
class QueryConfig:
    pool: Path
    checkpoint: Path                     # a checkpoint (.pt) or its ONNX export (.onnx)
    n: int
    strategy: str = DEFAULT_STRATEGY
    answers: Path | None = None          # answers file: no window sharing a segment with one
                                         # of its windows is asked
    out: Path | None = None              # manifest path (default POOL/batches/<time>.json)
    seed: int = 0                        # random's draw, the k-means starts of the others
    max_per_recording: int | None = None  # None: selection.default_cap
    threads: int = 2                     # torch / onnxruntime threads for scoring

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f'--n must be >= 1, got {self.n}')
        if self.strategy not in STRATEGIES:
            raise ValueError(f'strategy must be one of {STRATEGIES}, got {self.strategy!r}')


def pool_probs(pool: Pool, logits_of, fuse, key: str | None = None) -> np.ndarray:
    """float64 (W, C): a model's window probabilities for every window of the pool, from its
    segment logits (`logits_of`, cached under `key`) and the fusion node's `fuse`."""
    return window_probs(pool.segment_logits(logits_of, key=key), pool.table.rows, fuse)


@dataclass(frozen=True)
class Scorer:
    """A model file run as the nodes run it, for scoring a pool's segments.

    outputs_of: face inputs float32 (B, 1, 98, 80) (Pool.segment_faces) or crops uint8
    (B, 98, 80), mels float32 (B, 128, 43) -> {'logits': float64 (B, C), and for a
    checkpoint 'embeddings': float32 (B, 640) (`LightmerNet.embed`)}; names: the keys it
    gives; fuse: float64 (n, C) -> (C,), the fusion node's.
    """

    meta: CheckpointMeta
    outputs_of: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    names: tuple[str, ...]
    fuse: Callable[[np.ndarray], np.ndarray]


def model_scorer(path: str | os.PathLike, threads: int = 1) -> Scorer:
    """The Scorer of the model file at `path` (`lightmer.core.backend`: a checkpoint on
    torch, read once; an ONNX export on onnxruntime, one segment per call as the fusion node
    calls it, logits only: the export holds no embedding output)."""
    if backend_of(path) == 'torch':
        # torch (and model.py, which imports it) here only: an ONNX export scores without it
        import torch

        from lightmer.core.model import inference_copy

        torch.set_num_threads(threads)
        model, meta = load_checkpoint(path)
        model = inference_copy(model)        # same outputs to float rounding, 2.5x faster
        return Scorer(meta, lambda c, m: compute_segment_outputs(model, c, m),
                      ('logits', 'embeddings'), model_functions(model)[1])
    loaded = load_model(path, threads)
    n_classes = len(loaded.meta.labels)

    def outputs_of(crops: np.ndarray, mels: np.ndarray) -> dict[str, np.ndarray]:
        out = [loaded.segment_logits(c, m) for c, m in zip(crops, mels, strict=True)]
        return {'logits': np.stack(out) if out else np.zeros((0, n_classes))}

    return Scorer(loaded.meta, outputs_of, ('logits',), loaded.fuse)


def segment_scorer(path: str | os.PathLike, threads: int = 1):
    """(meta, logits_of, fuse) of the model file at `path` (`model_scorer`, logits only).

    logits_of: face inputs float32 (B, 1, 98, 80) or crops uint8 (B, 98, 80), mels float32
    (B, 128, 43) -> float64 (B, C); fuse: float64 (n, C) -> (C,).
    """
    scorer = model_scorer(path, threads)
    return scorer.meta, lambda c, m: scorer.outputs_of(c, m)['logits'], scorer.fuse


def compute_segment_outputs(model, crops: np.ndarray, mels: np.ndarray,
                            batch_size: int = 256) -> dict[str, np.ndarray]:
    """Eval-mode outputs of segments, crops uint8 (S, 98, 80) or face inputs float32
    (S, 1, 98, 80), mels float32 (S, 128, 43) ->
    {'logits': float64 (S, C), 'embeddings': float32 (S, 640)} in one pass (the head reads
    the embedding: `LightmerNet.embed`, then `fc`, as `segment_logits` computes it)."""
    # torch here only: scoring with an ONNX export runs without it
    import torch

    model.eval()
    logits, embeddings = [], []
    with torch.inference_mode():
        for s in range(0, len(crops), batch_size):
            part = crops[s:s + batch_size]
            faces = torch.from_numpy(part if part.dtype == np.float32
                                     else face_to_input(part))                     # (B,1,H,W)
            mel = torch.from_numpy(np.ascontiguousarray(mels[s:s + batch_size]))[:, None]
            v, a = model.embed_visual(faces), model.embed_audio(mel)     # (B, 512), (B, 128)
            logits.append(model.head(v, a).double().numpy())                       # (B, C)
            embeddings.append(torch.cat([v, a], dim=1).numpy())                    # (B, 640)
    n_classes, dim = model.cfg.n_classes, model.cfg.visual_dim + model.cfg.audio_dim
    return {'logits': np.concatenate(logits) if logits else np.zeros((0, n_classes)),
            'embeddings': (np.concatenate(embeddings) if embeddings
                           else np.zeros((0, dim), np.float32))}


def compute_segment_logits(model, crops: np.ndarray, mels: np.ndarray,
                           batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits of segments: crops uint8 (S, 98, 80) or face inputs float32
    (S, 1, 98, 80), mels float32 (S, 128, 43) -> float64 (S, C).

    For a torch model in memory (fine-tuning), where no model file exists to hand to
    `model_scorer`.
    """
    return compute_segment_outputs(model, crops, mels, batch_size)['logits']


def model_window_embeddings(pool: Pool, model) -> np.ndarray:
    """float64 (W, 640): a torch model's window embeddings of every pool window (not cached:
    for a model in memory, as `compute_segment_logits`)."""
    seg = pool.segment_outputs(lambda c, m: compute_segment_outputs(model, c, m),
                               ('embeddings',))
    return window_embeddings(seg['embeddings'], pool.table.rows)


def window_probs(segment_logits: np.ndarray, rows: np.ndarray, fuse) -> np.ndarray:
    """Window probabilities from cached segment logits, as the fusion node computes them.

    segment_logits float (S, C); rows int (W, N) segment rows, -1 where absent (each window
    has at least one); fuse: the fusion node's float64 (n, C) -> (C,) (softmax of the mean;
    `backend.LoadedModel.fuse` or `streaming.model_functions`). Returns float64 (W, C).
    """
    logits = np.asarray(segment_logits, np.float64)
    rows = np.asarray(rows, np.int64)
    out = np.zeros((len(rows), logits.shape[1]), np.float64)
    for w, r in enumerate(rows):
        present = r[r >= 0]
        if not present.size:
            raise ValueError('a window without segments cannot be scored')
        out[w] = fuse(logits[present])
    return out


def select(pool: Pool, probs: np.ndarray, candidates: np.ndarray, n: int, strategy: str,
           seed: int = 0, max_per_recording: int | None = None, *,
           features: np.ndarray | None = None, asked: np.ndarray | None = None,
           labelled: np.ndarray | None = None, clean: np.ndarray | None = None
           ) -> tuple[list[int], dict]:
    """Pick up to n of the candidate windows (bool (W,)) -> (window indices, scores of all
    W windows under every name the manifest reports, and 'rule': the rule applied).

    asked: int indices of the windows asked before (any answer): a window sharing a segment
    with one of them is not a candidate, so no two questions of a run share a segment.
    labelled: int indices of the windows labelled with a class (`staged` reads their count,
    `typical` covers their clusters). features: float (W, D) window embeddings of every
    window (`window_embeddings`), needed by EMBEDDING_STRATEGIES; clean: bool (W,) windows
    those strategies take first (`clean.pool_continuity`), None: no preference.
    """
    table = pool.table
    before = np.zeros(0, np.int64) if asked is None else np.asarray(asked, np.int64)
    done = np.zeros(0, np.int64) if labelled is None else np.asarray(labelled, np.int64)
    eligible = np.asarray(candidates, bool) & ~overlapping(table.rec, table.k_last, before,
                                                           pool.n_segments)
    cand = np.flatnonzero(eligible)
    rule = resolve_strategy(strategy, len(done))
    preferred = None
    if rule in EMBEDDING_STRATEGIES:
        if features is None:
            raise ValueError(f'strategy {strategy!r} needs the window embeddings (features=)')
        score, prio = embedding_priority(probs[cand], rule, features[cand], n, seed,
                                         features[done])
        preferred = None if clean is None else np.asarray(clean, bool)[cand]
    else:
        score, prio = priority(probs[cand], rule, seed)
    chosen = select_diverse(prio, [table.ids[i] for i in cand], table.rec[cand],
                            table.k_last[cand], pool.n_segments, n, max_per_recording,
                            preferred)
    scores = {'score': np.full(len(probs), np.nan), 'entropy_bits': entropy_bits(probs),
              'margin': margins(probs), 'rule': rule}
    scores['score'][cand] = score
    return [int(cand[i]) for i in chosen], scores


def manifest_items(pool: Pool, chosen: list[int], probs: np.ndarray, scores: dict,
                   labels: tuple[str, ...], clean: np.ndarray | None = None) -> list[dict]:
    """One manifest entry per chosen window, in the order chosen (with `clean` when known)."""
    table = pool.table
    items = []
    for rank, i in enumerate(chosen):
        view = pool.window(table.ids[i], labels)
        items.append({
            'rank': rank, 'window_id': table.ids[i], 'recording': view.recording,
            'k_last': int(table.k_last[i]), 'stamp_s': float(table.t_ref[i]),
            'frames_s': list(view.frames_s), 'audio_s': list(view.audio_s),
            'segments_present': int(view.present.sum()),
            'score': float(scores['score'][i]), 'entropy_bits': float(scores['entropy_bits'][i]),
            'margin': float(scores['margin'][i]), 'probs': [float(p) for p in probs[i]],
            'predicted': labels[int(np.argmax(probs[i]))]})
        if clean is not None:
            items[-1]['clean'] = bool(clean[i])
    return items


def _previous_answers(cfg: QueryConfig, pool: Pool, labels: tuple[str, ...]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(asked, labelled): int pool indices of the windows the answers file answered (any
    answer) and of those answered with a class; empty without a file."""
    if cfg.answers is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    history = read_answers(cfg.answers)
    check_labels([a.label for a in history], labels, str(cfg.answers), extras=NOT_A_CLASS)
    last = latest(history)
    position = pool.table.position
    asked = sorted(position[w] for w in last if w in position)
    labelled = sorted(position[w] for w in last if w in position and last[w].label in labels)
    return np.array(asked, np.int64), np.array(labelled, np.int64)


def _window_inputs(cfg: QueryConfig, pool: Pool, scorer: Scorer, seconds: dict
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(probs float64 (W, C), window embeddings (W, D) or None, clean bool (W,) or None):
    what the strategy reads, computed in one model pass (cached per checkpoint). Adds the
    seconds of each step to `seconds` (networks, windows, pauses)."""
    needs = cfg.strategy in EMBEDDING_STRATEGIES
    if needs and 'embeddings' not in scorer.names:
        raise ValueError(f'--strategy {cfg.strategy} clusters the model\'s embeddings, which '
                         f'an ONNX export does not give; pass the checkpoint (.pt) it was '
                         f'exported from, or --strategy uncertainty|margin|random')
    names = ('logits', 'embeddings') if needs else ('logits',)
    t0 = time.perf_counter()
    out = pool.segment_outputs(scorer.outputs_of, names, checkpoint_key(cfg.checkpoint))
    t1 = time.perf_counter()
    probs = window_probs(out['logits'], pool.table.rows, scorer.fuse)
    features = window_embeddings(out['embeddings'], pool.table.rows) if needs else None
    t2 = time.perf_counter()
    clean = pool_continuity(pool).clean if needs else None
    seconds.update(networks=t1 - t0, windows=t2 - t1, pauses=time.perf_counter() - t2)
    return probs, features, clean


def run_query(cfg: QueryConfig) -> dict:
    """Score, select and write the batch manifest; returns it (with `path`)."""
    t0 = time.perf_counter()
    pool = Pool(cfg.pool)
    scorer = model_scorer(cfg.checkpoint, cfg.threads)
    meta = scorer.meta
    pool.check_checkpoint(meta, cfg.checkpoint)
    asked, labelled = _previous_answers(cfg, pool, meta.labels)
    table = pool.table
    t1 = time.perf_counter()
    steps: dict[str, float] = {}
    probs, features, clean = _window_inputs(cfg, pool, scorer, steps)
    t2 = time.perf_counter()
    candidates = np.ones(len(table.ids), bool)
    candidates[asked] = False
    chosen, scores = select(pool, probs, candidates, cfg.n, cfg.strategy, cfg.seed,
                            cfg.max_per_recording, features=features, asked=asked,
                            labelled=labelled, clean=clean)
    t3 = time.perf_counter()
    n_recs = len(np.unique(table.rec[candidates])) if candidates.any() else 0
    cap = (default_cap(cfg.n, n_recs) if cfg.max_per_recording is None
           else cfg.max_per_recording)
    created = dt.datetime.now(dt.UTC)
    manifest = {
        'format': MANIFEST_FORMAT, 'version': MANIFEST_VERSION,
        'created': created.isoformat(timespec='seconds'),
        'pool': str(Path(cfg.pool).resolve()),
        'checkpoint': {'path': str(Path(cfg.checkpoint).resolve()),
                       'key': checkpoint_key(cfg.checkpoint)},
        'labels': list(meta.labels), 'strategy': cfg.strategy, 'rule': scores['rule'],
        'score': SCORE_NAMES[scores['rule']], 'seed': cfg.seed,
        'answers_file': None if cfg.answers is None else str(Path(cfg.answers).resolve()),
        'n_requested': cfg.n, 'n_selected': len(chosen), 'max_per_recording': cap,
        'windows': len(table.ids), 'candidates': int(candidates.sum()),
        'already_answered': len(asked),
        'clean_windows': None if clean is None else int(clean.sum()),
        'seconds': {'load': t1 - t0, 'score': t2 - t1, 'select': t3 - t2, 'score_steps': steps},
        'items': manifest_items(pool, chosen, probs, scores, meta.labels, clean),
    }
    out = cfg.out or (pool.path / 'batches' /
                      f"{created.strftime('%Y%m%dT%H%M%SZ')}-{cfg.strategy}.json")
    manifest['path'] = str(atomic_save_json(out, manifest))
    return manifest
