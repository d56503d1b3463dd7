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

REFERENCES = ('centre', 'start')   # where in its segment a reference time lies

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


def segment_members(times: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """Which of `times` fall in each segment: the one membership rule of the clip grid.

    Segments are half-open [start, end) so a time on a shared boundary belongs to the segment
    that starts there; the last segment is closed [start, end] so a frame exactly at the clip
    end is not lost.

    Args:
        times: float (F,) seconds, any order; bounds: float (N, 2) [start, end] seconds, as
        `segment_bounds` returns.
    Returns:
        N int64 arrays of indices into `times`, ascending; a segment may get none.
    """
    times = np.asarray(times, dtype=np.float64)
    bounds = np.asarray(bounds, dtype=np.float64)
    if times.ndim != 1 or bounds.ndim != 2 or bounds.shape[1] != 2:
        raise ValueError(f'times must be 1-D and bounds (N, 2), got shapes {times.shape} and '
                         f'{bounds.shape}')
    last = len(bounds) - 1
    return [np.flatnonzero((times >= a) & ((times < b) | ((s == last) & (times <= b))))
            for s, (a, b) in enumerate(bounds)]


def jitter_centres(frame_times: np.ndarray, rng: np.random.Generator,
                   jitter_s: float) -> np.ndarray:
    """Training audio-window centres: each frame time plus U(-jitter_s, +jitter_s) (paper V-A:
    up to 10 ms), one draw per frame from `rng`.

    Args:
        frame_times: float (N,) seconds. jitter_s: >= 0 seconds; 0 draws nothing.
    Returns:
        float64 (N,) seconds, a new array. A centre may fall up to `jitter_s` outside the clip;
        `features.audio_window` zero-pads past the clip edges, so that needs no special case.
    """
    if jitter_s < 0:
        raise ValueError(f'jitter_s must be >= 0, got {jitter_s}')
    frame_times = np.asarray(frame_times, dtype=np.float64)
    if jitter_s == 0:
        return frame_times.copy()
    return frame_times + rng.uniform(-jitter_s, jitter_s, size=frame_times.shape)


def choose_frames(times: np.ndarray, duration_s: float, n_segments: int,
                  rng: np.random.Generator | None = None,
                  jitter_s: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The frame and the audio-window centre of each of a clip's N segments.

    Inference (`rng` None): the frame nearest each segment centre, audio centred on the segment
    centre, as the streaming nodes do. Training (`rng` given, paper III and V-A): one of the
    segment's frames (`segment_members`) drawn at random, so every epoch sees other frames, and
    the audio centred on that frame's time plus U(-jitter_s, +jitter_s) (`jitter_centres`); a
    segment holding no frame (N larger than the frames cached) takes the frame nearest a random
    time inside it. The draw depends only on the generator's state.

    Args:
        times: float (F,) frame times, seconds from the clip start, F >= 1.
        duration_s: clip length, seconds. n_segments: N >= 1. jitter_s: >= 0 seconds.
    Returns:
        (indices into `times` int64 (N,), audio centres float64 (N,) seconds).
    """
    times = np.asarray(times, dtype=np.float64)
    bounds = segment_bounds(duration_s, n_segments)
    if rng is None:
        centres = bounds.mean(axis=1)
        return np.array([nearest_index(times, t) for t in centres], dtype=np.int64), centres
    picks = []
    for (a, b), inside in zip(bounds, segment_members(times, bounds), strict=True):
        if inside.size:
            picks.append(int(inside[rng.integers(inside.size)]))
        else:
            picks.append(nearest_index(times, rng.uniform(a, b)))
    chosen = np.asarray(picks, dtype=np.int64)
    return chosen, jitter_centres(times[chosen], rng, jitter_s)


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


def reference_time(k: int, segment_s: float, reference: str) -> float:
    """The time a segment's frame and audio centre are chosen at.

    reference 'centre': (k + 0.5) * T, as the clip grid at inference; 'start': k * T.
    """
    if reference == 'centre':
        return (k + 0.5) * segment_s
    if reference == 'start':
        return k * segment_s
    raise ValueError(f'reference must be one of {REFERENCES}, got {reference!r}')


def segment_of_reference(t_ref: float, segment_s: float, reference: str) -> int:
    """Inverse of `reference_time`: the id k whose reference time is `t_ref`.

    Rounds instead of flooring, because a reference time that went through a message stamp
    (integer nanoseconds) can land a hair below k*T with reference 'start'.
    """
    reference_time(0, segment_s, reference)   # validates `reference` with a helpful message
    offset = 0.5 if reference == 'centre' else 0.0
    return int(round(t_ref / segment_s - offset))


def window_indices(k_last: int, n_segments: int) -> range:
    """The N segment ids of the window that ends with segment `k_last`: k_last-N+1 .. k_last.

    Early in a stream the first ids are negative; such segments never exist, so a caller that
    requires all N cached segments simply waits until k_last >= N - 1.
    """
    if n_segments < 1:
        raise ValueError(f'n_segments must be >= 1, got {n_segments}')
    return range(k_last - n_segments + 1, k_last + 1)
