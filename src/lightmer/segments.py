"""The temporal segment grid: which frame and which audio centre each segment uses.

Two grids, one idea (paper Fig. 1 and Fig. 2):
- a *clip* of duration D is cut into N equal segments (training, offline evaluation);
- a *stream* is cut into segments of fixed length T numbered from time 0 (the nodes), and a
  window is the last N of them, so each segment's features are computed once and reused by the
  N windows that contain it.
All functions are pure and use numpy only; times are seconds (float64).
"""
from __future__ import annotations

import math

import numpy as np

ANCHORS = ('centre', 'start')

# Guards floor(t / T) against t / T landing a hair below an integer (0.3 / 0.1 = 2.999...):
# a time exactly on a boundary belongs to the segment that starts there.
_EPS = 1e-9


def segment_bounds(duration_s: float, n_segments: int) -> np.ndarray:
    """Equal segments of a clip.

    Args:
        duration_s: clip length in seconds, > 0.
        n_segments: N >= 1.
    Returns:
        float64 (N, 2): start and end of each segment in seconds; row i is
        [i*D/N, (i+1)*D/N].
    """
    if not duration_s > 0:
        raise ValueError(f'duration_s must be positive, got {duration_s}')
    if n_segments < 1:
        raise ValueError(f'n_segments must be >= 1, got {n_segments}')
    edges = np.linspace(0.0, float(duration_s), n_segments + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def choose_times(duration_s: float, n_segments: int, rng: np.random.Generator | None,
                 jitter_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame time and the audio-window centre of each segment.

    Training (`rng` given): the frame time is uniform inside its segment and the audio centre is
    that time plus U(-jitter_s, +jitter_s) (paper V-A: up to 10 ms). The draw depends only on the
    generator's state, so a seeded generator gives the same times every run.
    Inference (`rng` None): the segment centres, no jitter.

    The audio centre may fall up to `jitter_s` outside [0, D]; `features.audio_window` zero-pads
    past the clip edges, so that needs no special case.

    Returns:
        (frame_times, audio_centres): float64 (N,) each, seconds from the clip start.
    """
    if jitter_s < 0:
        raise ValueError(f'jitter_s must be >= 0, got {jitter_s}')
    bounds = segment_bounds(duration_s, n_segments)
    if rng is None:
        frame_times = bounds.mean(axis=1)
        return frame_times, frame_times.copy()
    frame_times = rng.uniform(bounds[:, 0], bounds[:, 1])
    offsets = rng.uniform(-jitter_s, jitter_s, size=n_segments) if jitter_s > 0 else 0.0
    return frame_times, frame_times + offsets


def nearest_index(times: np.ndarray, t: float) -> int:
    """Index of the element of `times` (float (K,), seconds, any order) closest to `t`.

    Ties go to the lower index. Raises ValueError on an empty array.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f'times must be a non-empty 1-D array, got shape {times.shape}')
    return int(np.argmin(np.abs(times - t)))


# --- the streaming grid used by the three nodes ----------------------------------------------
def segment_index(t: float, segment_s: float) -> int:
    """Id k of the stream segment [k*T, (k+1)*T) that contains time `t` (seconds)."""
    if not segment_s > 0:
        raise ValueError(f'segment_s must be positive, got {segment_s}')
    return math.floor(t / segment_s + _EPS)


def reference_time(k: int, segment_s: float, anchor: str) -> float:
    """The time a segment's frame and audio centre are chosen at.

    anchor 'centre': (k + 0.5) * T, as the clip grid at inference; 'start': k * T.
    """
    if anchor == 'centre':
        return (k + 0.5) * segment_s
    if anchor == 'start':
        return k * segment_s
    raise ValueError(f'anchor must be one of {ANCHORS}, got {anchor!r}')


def window_indices(k_last: int, n_segments: int) -> range:
    """The N segment ids of the window that ends with segment `k_last`: k_last-N+1 .. k_last.

    Early in a stream the first ids are negative; such segments never exist, so a caller that
    requires all N cached segments simply waits until k_last >= N - 1.
    """
    if n_segments < 1:
        raise ValueError(f'n_segments must be >= 1, got {n_segments}')
    return range(k_last - n_segments + 1, k_last + 1)
