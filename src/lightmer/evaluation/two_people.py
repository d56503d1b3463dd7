"""Two generated people side by side in one camera frame, for per-person evaluation.

`make-bag --two-people` pairs the clips of two actors: the first actor stands on the left half
of the frame, the second on the right. The pair takes turns, as people in a conversation do:

- the left person's clip plays (their frames, their voice) while the right person holds still
  (the first frame of their coming clip, before its expression starts), then
- the right person's clip plays while the left person holds still (their clip's last frame).

Each turn is one labels row about the speaker (`person` 'left' / 'right'); the listener's
windows in that turn are not scored, since the shared audio is the other person's voice
(speaker attribution is out of scope, docs/PEOPLE.md). Paired clips always carry different
emotions. In every second pair the right person is away while the left one speaks (that half
of the frame shows the empty grey of the gap frames) and walks back in for their own turn:
one person leaving and re-entering, longer than the tracker's memory, so they come back under
a new face id.

Frames: uint8 (F, H, 2W, 3) RGB, both halves from clips of the same layout (same H, W, fps).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from lightmer.evaluation.bags import BagClip

PEOPLE = ('left', 'right')


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


def two_person_clips(pairs: Sequence[tuple[BagClip, BagClip]], grey: int,
                     away_every: int = 2) -> Iterator[BagClip]:
    """The turns of `pairs` as BagClips to lay back to back (write_bag with gap_s=0): per pair
    the left turn, then the right turn. In pairs i with i % away_every == away_every - 1 the
    right person is away during the left turn (0: never), their half `grey` (bags.GAP_GREY,
    what the camera shows between clips)."""
    for i, (a, b) in enumerate(pairs):
        if a.fps != b.fps:
            raise ValueError(f'clips {a.clip_id} and {b.clip_id} differ in frame rate')
        away = away_every > 0 and i % away_every == away_every - 1
        yield _turn(a, None if away else b.frames[0], 'left', grey)
        yield _turn(b, a.frames[-1], 'right', grey)
