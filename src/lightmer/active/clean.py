"""Which pooled windows one answer labels cleanly, found without labels.

A window is clean when all of its segments sit in one continuous run of one face and one
utterance. The pool tells it from what it stores, no label read:
- **gap**: the window lacks a segment (`rows` -1): the fusion published it from fewer than N
  because a segment had no face (the person left, turned away, or the camera saw the empty
  room between two people) or no audio (a hole in the stream). The run of face and sound
  is broken inside it.
- **pause**: the recording's audio (`audio.wav`, as the audio node received it) is silent for
  at least `PAUSE_S` strictly inside the window's camera span, with sound before and after it:
  one utterance ended and another began within the window. Silent means below a threshold
  set per recording between its noise floor and its speech level (frame energies in dB, 20 ms
  frames: `THRESHOLD_AT` of the way from the 10th to the 95th percentile), so a noisy room's
  background is silence and a quiet room's speech is not.

What this cannot see: a second face that replaced the first without a frame between them
(the pool keeps one crop per segment, not the track), and a segment the `nearest` missing
policy filled with a neighbour's input (stored like any other). Both are rarer than
utterance boundaries in a robot's recordings: most windows that span two utterances span
the silence between them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightmer.active.pool import Pool

FRAME_S = 0.02         # energy frame length, seconds
PAUSE_S = 0.4          # a silence this long inside a window ends one utterance (longer than
                       # the gaps between words and syllables, shorter than turn-taking)
THRESHOLD_AT = 0.3     # silence threshold: this fraction of the way from floor to speech (dB)
MIN_RANGE_DB = 6.0     # a recording whose speech is less than this above its floor: no pauses


def frame_energy_db(samples: np.ndarray, sample_rate: int, frame_s: float = FRAME_S
                    ) -> np.ndarray:
    """float (n,) mono samples -> float64 (n // frame,) RMS energy of consecutive frames in
    dB re full scale, floored at -120 dB (digital silence)."""
    frame = max(1, round(frame_s * sample_rate))
    x = np.asarray(samples, np.float64)[:len(samples) // frame * frame].reshape(-1, frame)
    return 10 * np.log10(np.maximum((x * x).mean(axis=1), 1e-12))


def silence_threshold_db(energy_db: np.ndarray) -> float | None:
    """The dB level below which a frame is silence, or None when the recording has no
    dynamic range to tell speech from its floor (then nothing counts as a pause)."""
    if not len(energy_db):
        return None
    floor, speech = np.percentile(energy_db, [10, 95])
    if speech - floor < MIN_RANGE_DB:
        return None
    return float(floor + THRESHOLD_AT * (speech - floor))


def silent_runs(energy_db: np.ndarray, threshold_db: float | None, t0: float,
                frame_s: float = FRAME_S, min_s: float = PAUSE_S) -> np.ndarray:
    """float64 (P, 2) [start, end) seconds (t0 = the first frame's start) of every run of
    frames below `threshold_db` lasting at least `min_s`; none without a threshold."""
    if threshold_db is None or not len(energy_db):
        return np.zeros((0, 2))
    quiet = np.concatenate([[False], np.asarray(energy_db) < threshold_db, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]                   # frame indices, end exclusive
    keep = (ends - starts) * frame_s >= min_s - 1e-9
    return np.stack([t0 + starts[keep] * frame_s, t0 + ends[keep] * frame_s], axis=1)


def spans_pause(spans: np.ndarray, pauses: np.ndarray) -> np.ndarray:
    """bool (W,): windows whose span float (W, 2) [start, end) seconds strictly contains a
    pause of `pauses` float (P, 2) (sound on both sides of it inside the window)."""
    spans = np.asarray(spans, np.float64).reshape(-1, 2)
    out = np.zeros(len(spans), bool)
    for start, end in np.asarray(pauses, np.float64).reshape(-1, 2):
        out |= (spans[:, 0] < start) & (end < spans[:, 1])
    return out


def recording_pauses(pool: Pool, rec: str) -> np.ndarray:
    """float64 (P, 2) stamp seconds of the pauses in recording `rec`'s audio."""
    info = pool.recording(rec)['audio']
    sr, t0 = int(info['sample_rate']), float(info['t0_s'])
    samples, _ = pool.audio(rec, t0, t0 + int(info['samples']) / sr)
    energy = frame_energy_db(samples, sr)
    return silent_runs(energy, silence_threshold_db(energy), t0)


@dataclass(frozen=True)
class Continuity:
    """Per pool window (table order): gap bool (W,), pause bool (W,); clean = neither."""

    gap: np.ndarray
    pause: np.ndarray

    @property
    def clean(self) -> np.ndarray:
        return ~(self.gap | self.pause)


def window_spans(pool: Pool, index: np.ndarray | None = None) -> np.ndarray:
    """float64 (W, 2): the camera time [first segment start, last segment end) of the pool's
    windows (all, or those at `index`), as `Pool.window` gives it (`frames_s`)."""
    k = pool.table.k_last if index is None else pool.table.k_last[index]
    t = pool.segment_s
    return np.stack([(k - pool.n_segments + 1) * t, (k + 1) * t], axis=1).astype(np.float64)


def pool_continuity(pool: Pool) -> Continuity:
    """Gap and pause of every window of the pool (reads each recording's audio once)."""
    table = pool.table
    spans = window_spans(pool)
    pause = np.zeros(len(table.ids), bool)
    for r, rec in enumerate(table.rec_ids):
        mine = np.flatnonzero(table.rec == r)
        pause[mine] = spans_pause(spans[mine], recording_pauses(pool, rec))
    return Continuity(gap=(table.rows < 0).any(axis=1), pause=pause)


def window_pauses(pool: Pool, wids: list[str]) -> list[list[tuple[float, float]]]:
    """Per window id, the pauses strictly inside its camera span, [(start, end)] stamp
    seconds (what the labelling page marks), found as `pool_continuity` finds them; each
    recording's audio is read once."""
    index = pool.table.index_of(wids)
    spans = window_spans(pool, index)
    found: dict[int, np.ndarray] = {}
    out = []
    for i, span in zip(index, spans, strict=True):
        r = int(pool.table.rec[i])
        if r not in found:
            found[r] = recording_pauses(pool, pool.table.rec_ids[r])
        out.append([(float(a), float(b)) for a, b in found[r]
                    if spans_pause(span[None], np.array([[a, b]]))[0]])
    return out
