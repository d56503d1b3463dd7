"""Who is speaking, per face and segment, from mouth motion against the voice's envelope (pure,
numpy only; docs/PEOPLE.md, "Who is speaking").

The face node sees every camera frame but runs the detector on one per segment. It keeps the
recent frames (`MouthHistory`: the green channel at every second pixel, a cheap luminance) and,
once a segment's faces are found, measures each face's mouth motion over the frames of the
last `span_s` before the segment's frame (`mouth_motion`): the lower middle of the face box
(rows 60-95 %, columns 25-75 %; the mouth in MTCNN's boxes) sampled to a 12x16 patch per frame,
each patch's mean removed (a change of exposure moves every pixel alike), and the mean absolute
change between consecutive patches, in grey levels. It travels with the face
(lightmer_msgs/FaceCrop `mouth_motion`, `mouth_times`).

The fusion node holds the segment's log-mel (a 1.5 s window centred on the reference time).
Its envelope (`voice_envelope`: the mean over mel bands, per mel frame) over the same span is
compared with each face's motion (`estimate_speakers`):

- **silence**: the envelope barely moves (standard deviation under `voice_min`, in units of
  the normalised log-mel; digital silence is exactly 0): nobody speaks. The log-mel the node
  receives is normalised per window by default, so the level is gone and quiet noise can pass
  for a voice: the gate is set low, since a voice taken for silence would reach every face;
- each face's **sync** c: the Pearson correlation of its motion with the envelope sampled at
  the motion's times, both smoothed over three samples (syllable-rate co-variation);
- its **score** (the confidence of the face-voice match, [0, 1]): min(1, mean motion /
  `motion_full`) x (1 + c) / 2; 0 for a mouth moving less than `motion_min` grey levels;
- a face **speaks** when its mouth moves (>= `motion_min`), not against the voice (c >=
  `sync_veto`), and its score is at least half the best score of the segment;
- **one**: one face speaks; **overlap**: several do (people talking over each other);
- **unseen**: a voice but no face speaks (an off-camera speaker, a turned head, a mouth the
  camera cannot resolve): nobody is credited with it;
- **unknown**: no face carries mouth motion (face_source ros4hri, too few frames): no estimate.

`audio_recipients` turns an estimate into the faces that fuse the segment's audio under
`audio_to: speaker`: the speakers (one or overlap); everyone in silence (it holds no voice:
the same input a lone person gets) and when unknown (nothing is known: the 'all' policy);
nobody when unseen (an emotion credited to the wrong person is worse than none).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightmer.core.config import FeatureConfig

STATES = ('silence', 'one', 'overlap', 'unseen', 'unknown')
# Mouth region inside a face box: fractions of its height (rows) and width (columns).
MOUTH_ROWS = (0.60, 0.95)
MOUTH_COLS = (0.25, 0.75)
PATCH_SHAPE = (12, 16)      # rows, columns each mouth region is sampled to


@dataclass(frozen=True)
class SpeakerSettings:
    span_s: float = 0.75     # compared span: the last span_s before the segment's reference
                             # time (d/2: all of the log-mel window there is before it)
    voice_min: float = 0.15  # envelope standard deviation under which the span is silence
    motion_min: float = 0.5  # mean mouth motion (grey levels per frame) of a moving mouth
    motion_full: float = 3.0  # mean mouth motion that scores fully (a speaking mouth, here)
    sync_veto: float = -0.2  # a moving mouth this anti-correlated with the voice is not it
    min_samples: int = 5     # motion samples (frame pairs) needed for an estimate

    def __post_init__(self) -> None:
        if not (self.span_s > 0 and self.min_samples >= 3 and self.motion_full > 0
                and -1 <= self.sync_veto <= 1):
            raise ValueError(f'speaker settings out of range: {self}')


@dataclass(frozen=True)
class SpeakerEstimate:
    state: str                         # one of STATES
    speaking: tuple[str, ...]          # face ids credited with the voice, best first
    scores: dict[str, float]           # per face id, in [0, 1]
    voice: float                       # the envelope's standard deviation over the span


def mouth_grid(shape: tuple[int, int], box: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The pixels sampled for the mouth of the face at `box` (float (4,) x1 y1 x2 y2) in a
    frame of `shape` (H, W): an np.ix_ index of PATCH_SHAPE; None when the region lies
    outside the frame or the box is degenerate."""
    h, w = shape
    x1, y1, x2, y2 = (float(v) for v in box)
    r0, r1 = y1 + MOUTH_ROWS[0] * (y2 - y1), y1 + MOUTH_ROWS[1] * (y2 - y1)
    c0, c1 = x1 + MOUTH_COLS[0] * (x2 - x1), x1 + MOUTH_COLS[1] * (x2 - x1)
    if not (np.isfinite([r0, r1, c0, c1]).all() and r1 > r0 and c1 > c0):
        return None
    if r1 < 0 or c1 < 0 or r0 > h - 1 or c0 > w - 1:
        return None
    rows = np.clip(np.linspace(r0, r1, PATCH_SHAPE[0]), 0, h - 1).astype(np.int64)
    cols = np.clip(np.linspace(c0, c1, PATCH_SHAPE[1]), 0, w - 1).astype(np.int64)
    return np.ix_(rows, cols)


def mouth_motion(frames: Sequence[np.ndarray], times: np.ndarray,
                 box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mouth motion of one face over frames uint8 (H, W) grey, all of one size, at `times`
    (s, ascending): (times float64 (M,) of each consecutive pair's midpoint, motion float32
    (M,) mean absolute change of the mean-removed mouth patch, grey levels). Empty when the
    region is outside the frames or there are fewer than two."""
    grid = mouth_grid(frames[0].shape, box) if len(frames) >= 2 else None
    if grid is None:
        return np.zeros(0), np.zeros(0, np.float32)
    patches = np.stack([f[grid] for f in frames]).astype(np.float32)   # (F, 12, 16)
    patches -= patches.mean(axis=(1, 2), keepdims=True)   # exposure changes move all alike
    motion = np.abs(np.diff(patches, axis=0)).mean(axis=(1, 2))         # (F-1,)
    t = np.asarray(times, np.float64)
    return (t[1:] + t[:-1]) / 2, motion.astype(np.float32)


class MouthHistory:
    """The face node's recent frames, kept as the mouths need them: the green channel at every
    `step`-th pixel (uint8), for `keep_s` seconds of stamps. Stamps going back clear it."""

    def __init__(self, keep_s: float = 1.5, step: int = 2):
        self.keep_s, self.step = keep_s, step
        self._frames: deque[tuple[float, np.ndarray]] = deque()

    def push(self, t: float, frame_rgb: np.ndarray) -> None:
        """A camera frame uint8 (H, W, 3) RGB stamped t (s)."""
        self.push_plane(t, frame_rgb[::self.step, ::self.step, 1].copy())

    def push_plane(self, t: float, plane: np.ndarray) -> None:
        """A frame's green channel at every `step`-th pixel already, uint8 (H/step, W/step)
        (core.messages.image_green reads it from a camera message without decoding)."""
        if self._frames and t < self._frames[-1][0]:
            self._frames.clear()
        self._frames.append((t, plane))
        while self._frames and t - self._frames[0][0] > self.keep_s:
            self._frames.popleft()

    def __len__(self) -> int:
        return len(self._frames)

    def motion(self, box: np.ndarray, t_end: float,
               span_s: float) -> tuple[np.ndarray, np.ndarray]:
        """mouth_motion of the face at `box` (full-frame pixels) over the frames stamped in
        [t_end - span_s, t_end]; times relative to t_end (s, <= 0)."""
        chosen = [(t, f) for t, f in self._frames if t_end - span_s - 1e-6 <= t <= t_end + 1e-6
                  and f.shape == self._frames[-1][1].shape]
        if len(chosen) < 2:
            return np.zeros(0), np.zeros(0, np.float32)
        times = np.array([t for t, _ in chosen]) - t_end
        return mouth_motion([f for _, f in chosen], times,
                            np.asarray(box, np.float64) / self.step)


def voice_envelope(mel: np.ndarray, features: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """A segment's log-mel float32 (n_mels, frames), its window centred on the reference time
    -> (times float64 (frames,) of each mel frame's centre relative to that time (s),
    envelope float64 (frames,): the mean over mel bands)."""
    frames = mel.shape[1]
    centres = (np.arange(frames) * features.hop_length + features.n_fft / 2)
    times = centres / features.sample_rate - features.window_s / 2
    return times, np.asarray(mel, np.float64).mean(axis=0)


def _smooth(x: np.ndarray) -> np.ndarray:
    return np.convolve(x, np.ones(3) / 3, mode='same')


def _score(times: np.ndarray, motion: np.ndarray, env_t: np.ndarray, env: np.ndarray,
           settings: SpeakerSettings) -> tuple[float, bool] | None:
    """(the face's score in [0, 1], whether its mouth may be the voice's); None when its
    motion has too few samples."""
    if len(motion) < settings.min_samples or not np.isfinite(motion).all() \
            or not np.isfinite(times).all():
        return None
    level = float(np.mean(motion))
    if level < settings.motion_min:
        return 0.0, False
    a = _smooth(motion.astype(np.float64))
    b = _smooth(np.interp(times, env_t, env))
    corr = 0.0
    if float(np.std(a)) > 0 and float(np.std(b)) > 0:
        corr = float(np.corrcoef(a, b)[0, 1])
        corr = corr if np.isfinite(corr) else 0.0
    score = min(1.0, level / settings.motion_full) * (1.0 + corr) / 2
    return score, corr >= settings.sync_veto


def estimate_speakers(mouths: Mapping[str, tuple[np.ndarray, np.ndarray]], mel: np.ndarray,
                      features: FeatureConfig,
                      settings: SpeakerSettings = SpeakerSettings()) -> SpeakerEstimate:
    """The rule of the module docstring. mouths: per face id (times (M,) s relative to the
    reference time, motion (M,)) as MouthHistory.motion gives; mel float32 (n_mels, frames)."""
    env_t, env = voice_envelope(mel, features)
    in_span = (env_t >= -settings.span_s) & (env_t <= 0.0)
    voice = float(np.std(env[in_span])) if in_span.any() else 0.0
    if not np.isfinite(voice):
        voice = 0.0
    scores, may = {}, set()
    for face_id, (times, motion) in mouths.items():
        scored = _score(np.asarray(times, np.float64), np.asarray(motion, np.float64), env_t,
                        env, settings)
        if scored is not None:
            scores[face_id] = scored[0]
            if scored[1]:
                may.add(face_id)
    if voice < settings.voice_min:
        return SpeakerEstimate('silence', (), scores, voice)
    if not scores:
        return SpeakerEstimate('unknown', (), scores, voice)
    best = max(scores.values())
    speaking = tuple(sorted((i for i in may if scores[i] >= best / 2),
                            key=lambda i: (-scores[i], i)))
    state = {0: 'unseen', 1: 'one'}.get(len(speaking), 'overlap')
    return SpeakerEstimate(state, speaking, scores, voice)


def audio_recipients(estimate: SpeakerEstimate, face_ids) -> frozenset[str]:
    """The faces (of `face_ids`) that fuse the segment's audio under audio_to 'speaker'."""
    if estimate.state in ('silence', 'unknown'):
        return frozenset(face_ids)
    return frozenset(estimate.speaking) & frozenset(face_ids)
