"""Result figures: confusion matrix, learning curves, strategy comparison, latency histogram.

Every figure is rendered off-screen (Agg) into memory and written atomically, so a killed run
never leaves a truncated PNG. Functions take plain arrays / lists and never mutate them.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lightmer.core.atomic_io import atomic_write_bytes


def _figure(figsize: tuple[float, float]):
    # Import lazily and pick Agg explicitly: training runs headless and `lightmer --help`
    # should not pay for matplotlib.
    import matplotlib

    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt  # after use(): pyplot picks its backend on import

    return plt, plt.figure(figsize=figsize)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out `fig`, write it as a PNG atomically (no half-written plot if killed), close it.
    The benchmark and measurement scripts save their figures through this too."""
    import matplotlib.pyplot as plt  # lazily, as in _figure

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format='png', dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _save(plt, fig, path: str | os.PathLike) -> Path:
    return save_figure(fig, path)


def confusion_matrix(true: Sequence[int], pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts int64 (C, C): row = true class, column = predicted class."""
    t = np.asarray(true, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f'true {t.shape} and pred {p.shape} must have the same shape')
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f'class indices must lie in [0, {n_classes - 1}]')
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | os.PathLike,
                   title: str = '') -> Path:
    """Row-normalised confusion matrix (as in the paper's Fig. 6) with the raw counts.

    cm: int (C, C), rows = true class. Rows with no samples are drawn as zeros.
    """
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    n = len(labels)
    plt, fig = _figure((1.2 + 0.9 * n, 1.0 + 0.8 * n))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, vmin=0.0, vmax=1.0, cmap='Blues')
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), labels=labels, rotation=45, ha='right')
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    for i in range(n):
        for j in range(n):
            colour = 'white' if frac[i, j] > 0.5 else 'black'
            ax.text(j, i, f'{frac[i, j]:.2f}\n({int(cm[i, j])})', ha='center', va='center',
                    fontsize=7, color=colour)
    total = cm.sum()
    acc = np.trace(cm) / total if total else float('nan')
    ax.set_title(f'{title}  accuracy {acc:.3f}' if title else f'accuracy {acc:.3f}')
    return _save(plt, fig, path)


def plot_curves(metrics: Sequence[Mapping], path_loss: str | os.PathLike,
                path_acc: str | os.PathLike, title: str = '') -> tuple[Path, Path]:
    """Loss and accuracy per epoch for the training and test sets of one fold.

    metrics: one mapping per epoch with `train_loss`, `test_loss`, `train_acc`, `test_acc`.
    """
    epochs = np.arange(len(metrics))
    paths = []
    for key, path, ylabel in (('loss', path_loss, 'cross-entropy'),
                              ('acc', path_acc, 'accuracy')):
        plt, fig = _figure((6.0, 4.0))
        ax = fig.add_subplot(1, 1, 1)
        for split in ('train', 'test'):
            ax.plot(epochs, [m[f'{split}_{key}'] for m in metrics], label=split)
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(title)
        paths.append(_save(plt, fig, path))
    return paths[0], paths[1]


def plot_comparison(curves: Mapping[str, Mapping[str, Sequence[float]]],
                    path: str | os.PathLike, title: str = '') -> Path:
    """With/without uncertainty learning side by side (the paper's Figs. 4-5).

    curves: strategy name -> {'train_loss', 'test_loss', 'train_acc', 'test_acc'} -> per-epoch
    values (already averaged over folds). Left panel loss, right panel accuracy.
    """
    plt, fig = _figure((11.0, 4.0))
    for col, key, ylabel in ((1, 'loss', 'cross-entropy'), (2, 'acc', 'accuracy')):
        ax = fig.add_subplot(1, 2, col)
        for strategy, c in sorted(curves.items()):
            for split, style in (('train', '--'), ('test', '-')):
                values = c[f'{split}_{key}']
                ax.plot(np.arange(len(values)), values, style, label=f'{strategy} {split}')
        ax.set_xlabel('epoch')
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def plot_latency(latencies_ms: Sequence[float], path: str | os.PathLike,
                 title: str = '') -> Path:
    """Histogram of latencies in milliseconds, with p50 and p95 marked."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    plt, fig = _figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    if values.size:
        ax.hist(values, bins=min(50, max(5, values.size // 5)))
        for q, style in ((50, '-'), (95, '--')):
            v = float(np.percentile(values, q))
            ax.axvline(v, color='black', linestyle=style, label=f'p{q} {v:.1f} ms')
        ax.legend()
    ax.set_xlabel('latency (ms)')
    ax.set_ylabel('count')
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_label_curves(curves: Mapping[str, Mapping[str, Sequence[float]]],
                      path: str | os.PathLike, title: str = '',
                      reference: Mapping[str, float] | None = None,
                      xlabel: str = 'labelled windows') -> Path:
    """Accuracy against the number of labels, one line per strategy, with a spread band.

    curves: name -> {'labels': x, 'mean': y, and optionally 'low', 'high' (the band, e.g. the
    minimum and maximum over seeds)}; reference: name -> a horizontal line (e.g. a goal).
    """
    plt, fig = _figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        x = np.asarray(c['labels'], dtype=np.float64)
        line, = ax.plot(x, c['mean'], marker='o', label=name)
        if 'low' in c and 'high' in c:
            ax.fill_between(x, c['low'], c['high'], color=line.get_color(), alpha=0.15)
    for name, y in (reference or {}).items():
        ax.axhline(y, color='grey', linestyle=':', label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('accuracy on held-out windows')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_latency_groups(groups: Mapping[str, Sequence[float]], path: str | os.PathLike,
                        title: str = '') -> Path:
    """Every latency (ms) of each named group as a strip of points, log scale, so that a few
    seconds-late outliers and the usual tens of milliseconds show on one axis."""
    plt, fig = _figure((9.0, 0.45 * len(groups) + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    rng = np.random.default_rng(0)
    for i, values in enumerate(groups.values()):
        v = np.asarray(values, dtype=np.float64)
        ax.scatter(np.clip(v, 1.0, None), i + rng.uniform(-0.2, 0.2, v.size), s=8)
    ax.set_yticks(range(len(groups)), list(groups))
    ax.set_xscale('log')
    ax.set_xlabel('latency (ms, log scale)')
    ax.set_title(title)
    return _save(plt, fig, path)


def plot_grouped_bars(values: Mapping[str, Sequence[float]], groups: Sequence[str],
                      path: str | os.PathLike, title: str = '', ylabel: str = '') -> Path:
    """One bar per (series, group): values maps a series name to one value per group."""
    plt, fig = _figure((6.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(values))
    x = np.arange(len(groups))
    for i, (name, series) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, series, width, label=name)
    ax.set_xticks(x, list(groups))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis='y')
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)
