"""Bags from a dataset: `lightmer make-bag` lays a dataset's clips (CREMA-D, RAVDESS, or the
generated corpus in either layout) on one timeline as a robot would record them, with the labels
CSV beside the bag; optionally two people side by side (two_people) or occluded faces. The
format itself (topics, timing, CDR) is `bags`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from lightmer.core.config import PRESETS
from lightmer.core.features import resample
from lightmer.datasets.loaders import index_dataset
from lightmer.datasets.media import decode_audio, decode_video
from lightmer.evaluation.bags import GAP_GREY, SAMPLE_RATE, BagClip, write_bag
from lightmer.evaluation.two_people import pair_clips, two_person_clips


def make_bag(dataset: str, root, out, actors: Sequence[str] | None = None,
             storage: str = 'mcap', gap_s: float = 1.0, occlude: float = 0.0,
             seed: int = 0, compressed: str | None = None, two_people: bool = False,
             overlap_every: int = 0) -> str:
    """Lay a dataset's clips (optionally only `actors`) on one timeline in a rosbag2 at `out`,
    with a labels CSV beside it. Returns a one-paragraph report.

    `two_people`: two actors (the two `actors` given, else the first two) side by side taking
    turns, per-person rows in the CSV (lightmer.evaluation.two_people; no gaps between turns);
    with `overlap_every` > 0, every that many pairs a turn where both talk at once.

    `occlude` in [0, 1) blanks that fraction of the camera frames (seeded; each frame
    independently), as when a person looks away: the face node then finds no face for some
    segments, which is what the fusion node's missing-modality policies are for.
    """
    if not 0 <= occlude < 1:
        raise ValueError(f'occlude must be in [0, 1), got {occlude}')
    preset = PRESETS[dataset]
    records, skipped = _records(dataset, root, actors)
    code_to_label = dict(zip(preset.codes, preset.labels, strict=True))
    laid: Iterable[BagClip] = _clips(records, code_to_label)
    if two_people:
        laid = _turns(records, laid, actors, overlap_every)
        gap_s = 0.0
    laid = _occluded_at_random(laid, occlude, np.random.default_rng(seed))
    summary = write_bag(laid, out, storage=storage, gap_s=gap_s, compressed=compressed)
    counts = ', '.join(f'{t} {n}' for t, n in summary['messages'].items())
    kind = f'{storage}, {compressed} camera' if compressed else storage
    kind += ', two people taking turns' if two_people else ''
    return (f"wrote {summary['bag']} ({kind}): {summary['clips']} clips, "
            f"{summary['duration_s']:.1f} s, messages: {counts}; labels {summary['labels']}; "
            f'{len(skipped)} file(s) skipped while indexing')


def _records(dataset: str, root, actors: Sequence[str] | None) -> tuple[list, list]:
    """The dataset's clip records (only `actors`' when given) in clip-id order, and the files
    skipped while indexing."""
    records, skipped = index_dataset(dataset, root)
    if actors is not None:
        wanted = {str(a) for a in actors}
        unknown = wanted - {r.actor for r in records}
        if unknown:
            raise ValueError(f'actor(s) {sorted(unknown)} not in {root}; known: '
                             f'{sorted({r.actor for r in records})}')
        records = [r for r in records if r.actor in wanted]
    return sorted(records, key=lambda r: r.clip_id), skipped


def _clips(records, code_to_label: dict[str, str]) -> Iterator[BagClip]:
    """Each record's clip, decoded when it is laid (one clip in memory at a time)."""
    for rec in _progress(records, 'make-bag'):
        yield _load_clip(rec, code_to_label[rec.label])


def _turns(records, clips: Iterable[BagClip], actors: Sequence[str] | None,
           overlap_every: int = 0) -> Iterator[BagClip]:
    """Two actors' clips (the two `actors`, else the first two) as two_people turns."""
    pair = list(actors) if actors is not None else sorted({r.actor for r in records})[:2]
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f'two_people needs two different actors (--actors A B), got {pair}')
    loaded = list(clips)
    by_actor = {a: [c for c, r in zip(loaded, records, strict=True) if r.actor == a]
                for a in pair}
    return two_person_clips(pair_clips(by_actor[pair[0]], by_actor[pair[1]]), GAP_GREY,
                            overlap_every=overlap_every)


def _occluded_at_random(clips: Iterable[BagClip], occlude: float,
                        rng: np.random.Generator) -> Iterator[BagClip]:
    """The clips, each frame blanked with probability `occlude` (none when 0)."""
    for clip in clips:
        if occlude > 0:
            clip = occluded(clip, rng.random(len(clip.frames)) < occlude)
        yield clip


def occluded(clip: BagClip, mask: np.ndarray) -> BagClip:
    """A copy of `clip` whose frames where `mask` (bool (F,)) is set are plain grey."""
    frames = clip.frames.copy()
    frames[mask] = 128
    return dataclasses.replace(clip, frames=frames)


def _progress(items, desc: str):
    return tqdm(items, desc=desc, unit='clip', disable=None)


def _load_clip(rec, label: str) -> BagClip:
    frames, times, fps = decode_video(rec.video_path)
    audio, sr = decode_audio(rec.audio_path if rec.audio_path is not None else rec.video_path)
    audio = resample(audio, sr, SAMPLE_RATE)                  # decode_audio gives mono
    # Container times, as `prepare` uses them: the audio starts at 0 on the same clock, so a
    # first frame at 33 ms stays 33 ms after the clip's first sample (never before it).
    times = np.maximum(np.asarray(times, np.float64), 0.0)
    return BagClip(rec.clip_id, label, frames, times, float(fps), audio)
