"""Which pooled windows to ask a person about next: scores and a diverse batch (pure numpy).

Strategies (the window's probabilities come from the model in eval mode):
- uncertainty: entropy in bits (`uncertainty.entropy_bits`, paper eq. 4), highest first;
- margin: probability of the top class minus that of the second, smallest first;
- random: a seeded random order (the baseline every strategy must beat);
- typical (cold start, TypiClust style): k-means of the candidates' window embeddings into
  (labelled + n) clusters; from each cluster that holds no labelled window, largest first, its
  most typical window (1 / mean distance to its nearest neighbours in the cluster);
- cluster-margin (uncertainty with diversity): the 10 n smallest-margin candidates, k-means of
  their embeddings into n clusters, then round robin over the clusters (the one holding the
  smallest margin first), each cluster's windows by margin;
- staged (DEFAULT_STRATEGY): typical while no window is labelled, cluster-margin after.
The seed enters every strategy that draws (random, and the k-means starts of the others), so
two seeds ask different first batches. The embedding strategies prefer clean windows
(`lightmer.active.clean`): a clean candidate always comes before one that is not.

Diversity: windows of one recording that share a segment (|k_a - k_b| < N, so their camera
time overlaps) hold nearly the same frames and sounds; a batch never holds two of them. And no
recording gives more than `max_per_recording` windows (default `default_cap`: twice its fair
share, ceil(2 n / R) for R recordings with candidates), so one long or odd session cannot
fill the batch. The batch is filled greedily in score order under both rules; ties go to the
window id in ascending order, so a selection is reproducible.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightmer.core.uncertainty import entropy_bits

STRATEGIES = ('uncertainty', 'margin', 'random', 'typical', 'cluster-margin', 'staged')
DEFAULT_STRATEGY = 'staged'
# Strategies that read the model's window embeddings (and prefer clean windows).
EMBEDDING_STRATEGIES = ('typical', 'cluster-margin', 'staged')
CLUSTER_DIMS = 32          # embeddings are projected on this many principal axes to cluster
TYPICALITY_NEIGHBOURS = 20  # TypiClust's k
MARGIN_SHORTLIST = 10       # cluster-margin clusters the MARGIN_SHORTLIST * n smallest margins


def margins(probs: np.ndarray) -> np.ndarray:
    """float (M, C) probabilities -> float64 (M,) top-1 minus top-2 probability (0 = a tie)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f'probs must have shape (M, C >= 2), got {p.shape}')
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def priority(probs: np.ndarray, strategy: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(score float64 (M,), priority float64 (M,)): ask in decreasing priority.

    score is what the manifest reports (entropy in bits, margin, or the random draw);
    priority is the same value oriented so that larger means ask first.
    """
    if strategy == 'uncertainty':
        h = entropy_bits(probs)
        return h, h
    if strategy == 'margin':
        m = margins(probs)
        return m, -m
    if strategy == 'random':
        draw = np.random.default_rng(seed).random(len(probs))
        return draw, draw
    raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')


def resolve_strategy(strategy: str, labelled: int) -> str:
    """The rule `strategy` applies with `labelled` windows labelled so far: `staged` is
    `typical` while none is, `cluster-margin` after; any other strategy is itself."""
    if strategy not in STRATEGIES:
        raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
    if strategy == 'staged':
        return 'typical' if labelled == 0 else 'cluster-margin'
    return strategy


def window_embeddings(segment_embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Segment embeddings float (S, D), a window's segment rows int (W, N) (-1 where absent,
    at least one present) -> float64 (W, D): the mean of its segments' embeddings (as the
    fusion averages their logits), scaled to unit length."""
    e = np.asarray(segment_embeddings, np.float64)
    rows = np.asarray(rows, np.int64)
    present = rows >= 0
    if not present.any(axis=1).all():
        raise ValueError('a window without segments has no embedding')
    total = np.zeros((len(rows), e.shape[1]))
    for j in range(rows.shape[1]):
        total += e[np.where(present[:, j], rows[:, j], 0)] * present[:, j, None]
    mean = total / present.sum(axis=1, keepdims=True)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def _project(features: np.ndarray, seed: int) -> np.ndarray:
    """float (M, D) -> float64 (M, <= CLUSTER_DIMS) on the principal axes: k-means and
    neighbour distances in 640 dimensions cost 20x more and are dominated by noise axes."""
    x = np.asarray(features, np.float64)
    if CLUSTER_DIMS < x.shape[1] and len(x) > CLUSTER_DIMS:   # a few points: cheap as they are
        from sklearn.decomposition import PCA  # scikit-learn only where it runs, see _kmeans

        x = PCA(CLUSTER_DIMS, svd_solver='randomized', random_state=seed).fit_transform(x)
    return x


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster of each row, int (M,): one k-means++ start drawn from `seed` (so seeds differ)."""
    # scikit-learn imports scipy: only where clustering runs, since the CLI (and so the
    # `lightmer bringup` node process) reads this module's strategy names
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)


def typicality(x: np.ndarray, clusters: np.ndarray,
               neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """float64 (M,): 1 / mean distance to the `neighbours` nearest points of the same cluster
    (TypiClust's typicality: high in the dense middle of a cluster); 0 alone in a cluster."""
    out = np.zeros(len(x))
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        k = min(neighbours, len(idx) - 1)
        if k < 1:
            continue
        from sklearn.neighbors import NearestNeighbors  # as in _kmeans

        dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x[idx]).kneighbors(x[idx])
        out[idx] = 1.0 / (dist[:, 1:].mean(axis=1) + 1e-12)   # column 0: the point itself
    return out


def _round_robin(clusters: np.ndarray, cluster_order: list[int], key: np.ndarray) -> np.ndarray:
    """Priority float64 (M,) that takes the best (smallest `key`) window of each cluster in
    `cluster_order`, then the second of each, and so on."""
    pos = np.empty(max(cluster_order) + 1, np.int64)
    pos[cluster_order] = np.arange(len(cluster_order))
    rank = np.empty(len(clusters), np.int64)
    for c in cluster_order:
        idx = np.flatnonzero(clusters == c)
        rank[idx[np.argsort(key[idx], kind='stable')]] = np.arange(len(idx))
    return -(rank * len(cluster_order) + pos[clusters]).astype(np.float64)


def typical_priority(features: np.ndarray, n: int, seed: int,
                     labelled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust for `n` questions: (typicality float64 (M,), priority float64 (M,)).

    features: float (M, D) the candidates' window embeddings; labelled: float (L, D) those
    of the windows labelled so far (their clusters are covered). k-means into L + n clusters;
    uncovered clusters first, largest first, each giving its most typical window in turn.
    """
    cand = np.asarray(features, np.float64)
    done = np.zeros((0, cand.shape[1])) if labelled is None else np.asarray(labelled, np.float64)
    x = _project(np.vstack([cand, done]), seed)
    k = max(1, min(n + len(done), len(x)))
    clusters = _kmeans(x, k, seed)
    typ = typicality(x, clusters)[:len(cand)]
    mine, covered = clusters[:len(cand)], set(clusters[len(cand):].tolist())
    sizes = np.bincount(mine, minlength=k)
    order = sorted(range(k), key=lambda c: (c in covered, -sizes[c], c))
    return typ, _round_robin(mine, order, -typ)


def cluster_margin_priority(margin: np.ndarray, features: np.ndarray, n: int,
                            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster-margin for `n` questions: (margin float64 (M,), priority float64 (M,)).

    The MARGIN_SHORTLIST * n smallest margins are clustered (k-means, n clusters) on their
    embeddings (float (M, D)); round robin over the clusters, the one holding the smallest
    margin first, each cluster's windows by margin; the other candidates follow by margin.
    """
    m = np.asarray(margin, np.float64)
    short = np.argsort(m, kind='stable')[:min(len(m), MARGIN_SHORTLIST * max(n, 1))]
    prio = np.empty(len(m))
    if not len(short):
        return m, prio
    k = max(1, min(n, len(short)))
    clusters = _kmeans(_project(np.asarray(features)[short], seed), k, seed)
    best = [m[short][clusters == c].min() if (clusters == c).any() else np.inf for c in range(k)]
    order = sorted(range(k), key=lambda c: (best[c], c))
    prio[short] = _round_robin(clusters, order, m[short])
    rest = np.setdiff1d(np.arange(len(m)), short)
    prio[rest] = -(len(short) * k + 1.0) - np.argsort(np.argsort(m[rest], kind='stable'))
    return m, prio


def embedding_priority(probs: np.ndarray, strategy: str, features: np.ndarray, n: int,
                       seed: int = 0, labelled: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(score, priority) float64 (M,) of an embedding strategy's rule ('typical' or
    'cluster-margin'; resolve 'staged' first): probs float (M, C), features float (M, D)
    the candidates' window embeddings, labelled float (L, D) the labelled windows'."""
    if not len(features):
        return np.zeros(0), np.zeros(0)
    if strategy == 'typical':
        return typical_priority(features, n, seed, labelled)
    if strategy == 'cluster-margin':
        return cluster_margin_priority(margins(probs), features, n, seed)
    raise ValueError(f'{strategy!r} is not an embedding rule (typical, cluster-margin)')


def default_cap(n: int, n_recordings: int) -> int:
    """Most windows one recording may give to a batch of `n`: twice its fair share."""
    return max(1, math.ceil(2 * n / max(1, n_recordings)))


def select_diverse(priority_: np.ndarray, ids: Sequence[str], recordings: np.ndarray,
                   k_last: np.ndarray, n_segments: int, n: int,
                   max_per_recording: int | None = None,
                   preferred: np.ndarray | None = None) -> list[int]:
    """Indices of at most `n` windows, highest priority first, under the diversity rules.

    priority_: float (M,); ids: M distinct window ids (tie order); recordings: int (M,)
    recording of each window; k_last: int (M,) last segment id; n_segments: N; preferred:
    bool (M,) windows taken before any other whatever their priority (clean windows), or None.
    Fewer than n come back only when the rules leave no other candidate.
    """
    pr = np.asarray(priority_, dtype=np.float64)
    rec = np.asarray(recordings)
    k = np.asarray(k_last, dtype=np.int64)
    if not (pr.shape == rec.shape == k.shape == (len(ids),)):
        raise ValueError('priority, ids, recordings and k_last must align (M,)')
    if np.isnan(pr).any():
        raise ValueError('priorities contain NaN: the model produced invalid probabilities')
    if n < 0:
        raise ValueError(f'n must be >= 0, got {n}')
    cap = default_cap(n, len(np.unique(rec))) if max_per_recording is None else max_per_recording
    if cap < 1:
        raise ValueError(f'max_per_recording must be >= 1, got {cap}')
    first = np.ones(len(ids), bool) if preferred is None else np.asarray(preferred, bool)
    if first.shape != pr.shape:
        raise ValueError('preferred must align with the priorities (M,)')
    order = sorted(range(len(ids)), key=lambda i: (not first[i], -pr[i], ids[i]))
    picked: list[int] = []
    taken: dict[object, list[int]] = {}
    for i in order:
        if len(picked) == n:
            break
        mine = taken.setdefault(rec[i].item(), [])
        if len(mine) >= cap or any(abs(k[i] - kk) < n_segments for kk in mine):
            continue
        mine.append(int(k[i]))
        picked.append(i)
    return picked


def overlapping(rec: np.ndarray, k_last: np.ndarray, chosen: np.ndarray,
                n_segments: int) -> np.ndarray:
    """bool (M,): windows that share a segment with any window of `chosen` (indices), the
    chosen ones included. Used to keep evaluation windows out of training."""
    rec = np.asarray(rec)
    k = np.asarray(k_last, dtype=np.int64)
    out = np.zeros(len(k), bool)
    for j in np.asarray(chosen, dtype=np.int64):
        out |= (rec == rec[j]) & (np.abs(k - k[j]) < n_segments)
    return out
