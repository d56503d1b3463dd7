"""Two generated people side by side in one camera frame, for per-person evaluation.

`make-bag --two-people` pairs the clips of two actors: the first actor stands on the left half
of the frame, the second on the right. The pair takes turns, as people in a conversation do:

- the left person's clip plays (their frames, their voice) while the right person holds still
  (the first frame of their coming clip, before its expression starts), then
- the right person's clip plays while the left person holds still (their clip's last frame).

Each turn is one labels row about the speaker (`person` 'left' / 'right'); the listener's
windows in that turn are not scored (the listener's emotion is not labelled: their face is a
still frame of a clip of another emotion). Paired clips always carry different
emotions. In every second pair the right person is away while the left one speaks (that half
of the frame shows the empty grey of the gap frames) and walks back in for their own turn:
one person leaving and re-entering, longer than the tracker's memory, so they come back under
a new face id.

The speaking face's mouth moves with its own voice (datasets.synth drives the mouth opening
from the clip's speech envelope, frame by frame); a listener's face is still. With
`overlap_every`, every such pair ends with a third turn in which both talk over each other:
both clips play at once (the shorter one holding its last frame) and the voices are mixed
(their sum, scaled down only where it would clip). That turn's labels row has the person
`both` (OVERLAP) and the left clip's label; per-person scoring leaves it out (nobody's voice is
their own there), the speaker measurement uses it.

Frames: uint8 (F, H, 2W, 3) RGB, both halves from clips of the same layout (same H, W, fps).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from lightmer.evaluation.bags import BagClip

PEOPLE = ('left', 'right')
OVERLAP = 'both'           # the person of a turn in which both people speak


def pair_clips(left: Sequence[BagClip], right: Sequence[BagClip]) -> list[tuple[BagClip,
                                                                                BagClip]]:
    """Pairs (left clip, right clip) with different labels, in the left clips' order: each left
    clip takes the first unused right clip of another emotion; clips without a partner are
    left out."""
    unused = list(right)
    pairs = []
    for a in left:
        b = next((c for c in unused if c.label != a.label), None)
        if b is not None:
            unused.remove(b)
            pairs.append((a, b))
    return pairs


def side_by_side(left: np.ndarray | None, right: np.ndarray | None,
                 shape: tuple[int, int, int], grey: int) -> np.ndarray:
    """One frame of two halves: uint8 (H, W, 3) each, None for nobody (`grey`) ->
    (H, 2W, 3)."""
    empty = np.full(shape, grey, np.uint8)
    return np.concatenate([empty if left is None else left,
                           empty if right is None else right], axis=1)


def _turn(speaker: BagClip, still: np.ndarray | None, speaker_side: str,
          grey: int) -> BagClip:
    """The speaker's clip on their half, the other half held at `still` (None: nobody)."""
    shape = speaker.frames.shape[1:]
    if still is not None and still.shape != shape:
        raise ValueError(f'clips {speaker.clip_id}: frames {shape} and {still.shape} differ; '
                         'both people must come from clips of one layout')
    frames = np.stack([side_by_side(f, still, shape, grey) if speaker_side == 'left'
                       else side_by_side(still, f, shape, grey) for f in speaker.frames])
    return dataclasses.replace(speaker, frames=frames, person=speaker_side)


def _overlap(a: BagClip, b: BagClip, grey: int) -> BagClip:
    """Both clips at once, side by side (the shorter holding its last frame), voices mixed."""
    n = max(len(a.frames), len(b.frames))
    shape = a.frames.shape[1:]
    if b.frames.shape[1:] != shape:
        raise ValueError(f'clips {a.clip_id} and {b.clip_id}: frames {shape} and '
                         f'{b.frames.shape[1:]} differ; both must come from one layout')
    frames = np.stack([side_by_side(a.frames[min(i, len(a.frames) - 1)],
                                    b.frames[min(i, len(b.frames) - 1)], shape, grey)
                       for i in range(n)])
    times = a.frame_times if len(a.frames) == n else b.frame_times
    audio = np.zeros(max(len(a.audio), len(b.audio)), np.float32)
    audio[:len(a.audio)] += a.audio
    audio[:len(b.audio)] += b.audio
    audio /= max(1.0, float(np.abs(audio).max(initial=0.0)))
    return dataclasses.replace(a, clip_id=f'{a.clip_id}+{b.clip_id}', frames=frames,
                               frame_times=times, audio=audio, person=OVERLAP)


def two_person_clips(pairs: Sequence[tuple[BagClip, BagClip]], grey: int,
                     away_every: int = 2, overlap_every: int = 0) -> Iterator[BagClip]:
    """The turns of `pairs` as BagClips to lay back to back (write_bag with gap_s=0): per pair
    the left turn, then the right turn. In pairs i with i % away_every == away_every - 1 the
    right person is away during the left turn (0: never), their half `grey` (bags.GAP_GREY,
    what the camera shows between clips). In pairs i with i % overlap_every == overlap_every -
    1 (0: never) a third turn follows where both speak at once (person OVERLAP)."""
    for i, (a, b) in enumerate(pairs):
        if a.fps != b.fps:
            raise ValueError(f'clips {a.clip_id} and {b.clip_id} differ in frame rate')
        away = away_every > 0 and i % away_every == away_every - 1
        yield _turn(a, None if away else b.frames[0], 'left', grey)
        yield _turn(b, a.frames[-1], 'right', grey)
        if overlap_every > 0 and i % overlap_every == overlap_every - 1:
            yield _overlap(a, b, grey)
