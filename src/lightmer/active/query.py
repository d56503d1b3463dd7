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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightmer.active.answers import NOT_A_CLASS, latest, read_answers
from lightmer.active.pool import Pool, checkpoint_key
from lightmer.active.selection import STRATEGIES, default_cap, margins, priority, select_diverse
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import backend_of, load_model
from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.features import face_to_input
from lightmer.core.uncertainty import entropy_bits
from lightmer.evaluation.scoring import check_labels

MANIFEST_FORMAT = 'lightmer-batch'
MANIFEST_VERSION = 1
SCORE_NAMES = {'uncertainty': 'entropy_bits', 'margin': 'margin', 'random': 'random_draw'}


@dataclass(frozen=True)
class QueryConfig:
    pool: Path
    checkpoint: Path                     # a checkpoint (.pt) or its ONNX export (.onnx)
    n: int
    strategy: str = 'uncertainty'
    answers: Path | None = None          # answers file: its windows are not asked again
    out: Path | None = None              # manifest path (default POOL/batches/<time>.json)
    seed: int = 0                        # the random strategy's draw
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


def segment_scorer(path: str | os.PathLike, threads: int = 1):
    """(meta, logits_of, fuse) of the model file at `path`, run as the nodes run it
    (`lightmer.core.backend`: a checkpoint on torch, an ONNX export on onnxruntime).

    logits_of: crops uint8 (B, 98, 80), mels float32 (B, 128, 43) -> float64 (B, C); a
    checkpoint's segments go through the networks in batches (a pool has thousands), an
    export's one per call as the fusion node calls it. fuse: float64 (n, C) -> (C,).
    """
    loaded = load_model(path, threads)
    if backend_of(path) == 'torch':
        # torch here only: scoring with an ONNX export runs without it
        import torch

        torch.set_num_threads(threads)
        model, _ = load_checkpoint(path)
        return loaded.meta, lambda c, m: compute_segment_logits(model, c, m), loaded.fuse
    n_classes = len(loaded.meta.labels)

    def logits_of(crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        out = [loaded.segment_logits(c, m) for c, m in zip(crops, mels, strict=True)]
        return np.stack(out) if out else np.zeros((0, n_classes))

    return loaded.meta, logits_of, loaded.fuse


def compute_segment_logits(model, crops: np.ndarray, mels: np.ndarray,
                           batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits of segments: uint8 (S, 98, 80), float32 (S, 128, 43) -> float64 (S, C).

    model.segment_logits in batches: for a torch model in memory (fine-tuning), where no model
    file exists to hand to `segment_scorer`.
    """
    # torch here only: scoring with an ONNX export runs without it
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(crops), batch_size):
            faces = torch.from_numpy(face_to_input(crops[s:s + batch_size]))        # (B,1,H,W)
            mel = torch.from_numpy(np.ascontiguousarray(mels[s:s + batch_size]))[:, None]
            out.append(model.segment_logits(faces, mel).double().numpy())          # (B, C)
    n_classes = model.cfg.n_classes
    return np.concatenate(out) if out else np.zeros((0, n_classes))


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
           seed: int = 0, max_per_recording: int | None = None) -> tuple[list[int], dict]:
    """Pick up to n of the candidate windows (bool (W,)) -> (window indices, scores of all
    W windows under every name the manifest reports)."""
    table = pool.table
    cand = np.flatnonzero(candidates)
    score, prio = priority(probs[cand], strategy, seed)
    chosen = select_diverse(prio, [table.ids[i] for i in cand], table.rec[cand],
                            table.k_last[cand], pool.n_segments, n, max_per_recording)
    scores = {'score': np.full(len(probs), np.nan), 'entropy_bits': entropy_bits(probs),
              'margin': margins(probs)}
    scores['score'][cand] = score
    return [int(cand[i]) for i in chosen], scores


def manifest_items(pool: Pool, chosen: list[int], probs: np.ndarray, scores: dict,
                   labels: tuple[str, ...]) -> list[dict]:
    """One manifest entry per chosen window, in the order chosen."""
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
    return items


def run_query(cfg: QueryConfig) -> dict:
    """Score, select and write the batch manifest; returns it (with `path`)."""
    t0 = time.perf_counter()
    pool = Pool(cfg.pool)
    meta, logits_of, fuse = segment_scorer(cfg.checkpoint, cfg.threads)
    pool.check_checkpoint(meta, cfg.checkpoint)
    answered: set[str] = set()
    if cfg.answers is not None:
        history = read_answers(cfg.answers)
        check_labels([a.label for a in history], meta.labels, str(cfg.answers),
                     extras=NOT_A_CLASS)
        answered = set(latest(history))
    table = pool.table
    key = checkpoint_key(cfg.checkpoint)
    t1 = time.perf_counter()
    probs = pool_probs(pool, logits_of, fuse, key)
    t2 = time.perf_counter()
    candidates = np.array([w not in answered for w in table.ids], bool)
    chosen, scores = select(pool, probs, candidates, cfg.n, cfg.strategy, cfg.seed,
                            cfg.max_per_recording)
    t3 = time.perf_counter()
    n_recs = len(np.unique(table.rec[candidates])) if candidates.any() else 0
    cap = (default_cap(cfg.n, n_recs) if cfg.max_per_recording is None
           else cfg.max_per_recording)
    created = dt.datetime.now(dt.UTC)
    manifest = {
        'format': MANIFEST_FORMAT, 'version': MANIFEST_VERSION,
        'created': created.isoformat(timespec='seconds'),
        'pool': str(Path(cfg.pool).resolve()),
        'checkpoint': {'path': str(Path(cfg.checkpoint).resolve()), 'key': key},
        'labels': list(meta.labels), 'strategy': cfg.strategy,
        'score': SCORE_NAMES[cfg.strategy], 'seed': cfg.seed,
        'answers_file': None if cfg.answers is None else str(Path(cfg.answers).resolve()),
        'n_requested': cfg.n, 'n_selected': len(chosen), 'max_per_recording': cap,
        'windows': len(table.ids), 'candidates': int(candidates.sum()),
        'already_answered': len(table.ids) - int(candidates.sum()),
        'seconds': {'load': t1 - t0, 'score': t2 - t1, 'select': t3 - t2},
        'items': manifest_items(pool, chosen, probs, scores, meta.labels),
    }
    out = cfg.out or (pool.path / 'batches' /
                      f"{created.strftime('%Y%m%dT%H%M%SZ')}-{cfg.strategy}.json")
    manifest['path'] = str(atomic_save_json(out, manifest))
    return manifest
