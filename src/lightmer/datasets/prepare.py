"""`lightmer prepare`: decode every clip once, crop the faces training needs, cache them.

Which frames are cached (the documented subsample): the clip is cut into the preset's N equal
segments (`segments.segment_bounds`, duration = last frame time + 1/fps); in each segment the
frames are split into K equal runs and the middle frame of each run is kept (all frames when the
segment has K or fewer). MTCNN runs only on those frames. Training then draws one of a segment's
cached faces at random each epoch (paper III: a random frame per segment), evaluation takes the
one nearest the segment centre. K = `FRAMES_PER_SEGMENT` (3): with CREMA-D's ~15 frames per
segment a third of the frames' variety at a fifth of the detector cost.

No face: when none of a segment's K frames has a face, the segment's other frames are tried too.
When a segment still has none, the clip gets status 'no_face' and training leaves it out (a
segment without a face has no visual input; inventing one would teach the model a blank face).

Before any face is looked for, the clip's audio and video are checked against each other:
- 'silent': the audio is digital silence (`features.is_digital_silence`), as in the audio track
  of a video-only take: there is no speech to learn from.
- 'truncated': the video and audio durations differ by more than `duration_tolerance` (a cut
  download: the video ends early while its separate WAV is intact, or the other way round).
Unreadable media gets status 'unreadable'. Only 'ok' clips are used; the others are listed,
with their reason, in the closing summary and in the index.

Audio: from the clip's `audio_source` ('wav', 'mp3' or the video's own track, `ClipRecord`),
recorded per clip in the cache and counted in the summary.

Cache layout (docs/ARCHITECTURE.md):
  CACHE/index.json            dataset, preset, features, settings, skipped files, clips[]
  CACHE/clips/<clip_id>.npz   crops uint8 (K, 98, 80), crop_times float64 (K,) s,
                              audio float32 (n,) 16 kHz mono, duration float s, + bookkeeping
Every file is written atomically; a clip whose .npz exists with the same settings is not
redone, so an interrupted run resumes where it stopped.

Several machines can share the work (`shard`, `lightmer prepare --shard I/K`): shard I takes
the clips with crc32(clip_id) mod K == I, a rule that needs no coordination and is the same on
every machine, and writes CACHE/index.shard-I-of-K.json instead of index.json. Once every
shard's clips/ and shard index sit in one folder, `merge_shards` (`lightmer merge-shards`)
checks them and writes the index.json an unsharded run would have written.
"""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lightmer.core.atomic_io import atomic_save_json, atomic_savez
from lightmer.core.config import FeatureConfig, get_preset
from lightmer.core.features import FaceCropper, is_digital_silence, resample
from lightmer.core.segments import nearest_index, segment_bounds, segment_members
from lightmer.datasets import media
from lightmer.datasets.loaders import ClipRecord, Skipped, format_skipped, index_dataset

FRAMES_PER_SEGMENT = 3
CACHE_VERSION = 2       # 2: audio_source, audio_duration; statuses silent and truncated
STATUSES = ('ok', 'no_face', 'silent', 'truncated', 'unreadable')
# Video and audio of one recording may differ by codec padding and priming (AAC: 1024 samples,
# MP3: 1105 plus up to a frame) and by the last video frame's length: tens of milliseconds. A
# larger difference means a cut file. Tolerance: the larger of these two.
DURATION_TOLERANCE_S = 0.1
DURATION_TOLERANCE_FRACTION = 0.05    # of the longer of the two durations


@dataclass
class PrepareSummary:
    dataset: str
    cache: Path
    clips: int = 0
    new: int = 0
    reused: int = 0
    status: dict[str, int] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    frames_tried: int = 0
    frames_without_face: int = 0
    audio_sources: dict[str, int] = field(default_factory=dict)   # 'wav' / 'mp3' / 'video'
    problems: list[str] = field(default_factory=list)     # 'clip_id: status (why)'
    seconds: float = 0.0
    workers: int = 1

    def __str__(self) -> str:
        counts = ', '.join(f'{k} {self.status.get(k, 0)}' for k in STATUSES)
        lines = [
            f'prepare {self.dataset}: {self.clips} clips in {self.cache} ({self.new} new, '
            f'{self.reused} already done) in {self.seconds:.1f} s with {self.workers} worker(s)',
            f'status: {counts} (only "ok" clips are used for training)',
            'audio from: ' + ', '.join(f'{k} {n}' for k, n in sorted(self.audio_sources.items())),
            f'frames without a face: {self.frames_without_face} of {self.frames_tried} tried',
            format_skipped(self.skipped),
        ]
        lines += [f'  {p}' for p in self.problems[:20]]
        return '\n'.join(lines)

    def count(self, entry: dict) -> None:
        """Add one clip's index entry to the tallies."""
        self.status[entry['status']] = self.status.get(entry['status'], 0) + 1
        source = entry['audio_source']
        self.audio_sources[source] = self.audio_sources.get(source, 0) + 1
        self.frames_tried += entry['tried']
        self.frames_without_face += entry['tried'] - entry['faces']
        if entry['status'] != 'ok':
            self.problems.append(f"{entry['clip_id']}: {entry['status']} ({entry['error']})")


def settings_for(dataset: str, cfg: FeatureConfig, frames_per_segment: int) -> dict:
    """What a cached clip depends on; a clip made with other settings is redone."""
    preset = get_preset(dataset)
    return {'version': CACHE_VERSION, 'dataset': dataset, 'preset': preset.name,
            'n_segments': preset.n_segments, 'frames_per_segment': frames_per_segment,
            'features': cfg.to_dict()}


def clip_path(cache: Path, clip_id: str) -> Path:
    return Path(cache) / 'clips' / f'{clip_id}.npz'


def prepare(dataset: str, root: str | Path, cache: str | Path, workers: int | None = None,
            frames_per_segment: int = FRAMES_PER_SEGMENT, features: FeatureConfig | None = None,
            progress: bool = True, shard: tuple[int, int] | None = None) -> PrepareSummary:
    """Index `root`, cache every clip not cached yet, write CACHE/index.json; see module doc.

    shard: (I, K) to cache only shard I of K and write its shard index (module doc)."""
    start = time.monotonic()
    cfg = features or FeatureConfig()
    if frames_per_segment < 1:
        raise ValueError(f'frames_per_segment must be >= 1, got {frames_per_segment}')
    cache = Path(cache)
    settings = settings_for(dataset, cfg, frames_per_segment)
    _check_existing_index(cache, settings)
    records, skipped = _records(dataset, root, shard)
    settings_json = json.dumps(settings, sort_keys=True)
    # Temporary files left by a killed run (one prepare per cache at a time).
    for stale in (cache / 'clips').glob('.*.tmp'):
        stale.unlink()
    todo = [r for r in records if _cached_entry(cache, r, settings_json) is None]
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(todo) or 1))
    summary = PrepareSummary(dataset, cache, clips=len(records), new=len(todo),
                             reused=len(records) - len(todo), skipped=skipped, workers=workers)
    bar = tqdm(total=len(todo), desc=f'prepare {dataset}', unit='clip', disable=not progress)
    try:
        _process_clips(todo, cache, settings_json, workers, bar.update)
    finally:
        bar.close()
    entries = _entries(cache, records, settings_json)
    for entry in entries:
        summary.count(entry)
    _write_index(cache, {**settings, 'complete': True, 'clips': entries,
                         'skipped': [{'path': str(s.path), 'reason': s.reason} for s in skipped]},
                 shard)
    summary.seconds = time.monotonic() - start
    return summary


def _records(dataset: str, root, shard: tuple[int, int] | None) -> tuple[list, list]:
    """The clips of `root` (of shard I of K when `shard`), and the files skipped indexing it.
    FileNotFoundError when there is no usable clip at all."""
    records, skipped = index_dataset(dataset, root)
    if not records:
        first = f' (first: {skipped[0].path.name}: {skipped[0].reason})' if skipped else ''
        raise FileNotFoundError(f'no usable clips under {root} for {dataset}: '
                                f'{format_skipped(skipped).splitlines()[0]}{first}')
    if shard is not None:
        records = [r for r in records if shard_of(r.clip_id, shard[1]) == shard[0]]
    return records, skipped


def _process_clips(todo: list[ClipRecord], cache: Path, settings_json: str, workers: int,
                   done: Callable[[], object]) -> None:
    """`process_clip` each of `todo`, here (one worker) or in a pool of `workers` processes;
    `done()` after each clip."""
    if workers == 1:
        for r in todo:
            process_clip(r, cache, settings_json)
            done()
        return
    # spawn: workers start clean (no torch state inherited from a parent that may have
    # initialised its thread pools), each with one torch thread.
    ctx = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(process_clip, r, cache, settings_json) for r in todo]
        try:
            for fut in as_completed(futures):
                fut.result()
                done()
        except BrokenProcessPool:
            raise ChildProcessError(
                'a prepare worker died (killed, or out of memory); run prepare again '
                'to resume, with fewer --workers if memory is short') from None


def _entries(cache: Path, records: list[ClipRecord], settings_json: str) -> list[dict]:
    """The index entries of `records`, every clip now cached."""
    entries = []
    for r in records:
        entry = _cached_entry(cache, r, settings_json)
        if entry is None:   # only if a clip file vanished while we ran
            raise RuntimeError(f'{clip_path(cache, r.clip_id)} missing after processing; '
                               'run prepare again')
        entries.append(entry)
    return entries


def _write_index(cache: Path, index: dict, shard: tuple[int, int] | None) -> None:
    """CACHE/index.json, or the shard's own index when `shard`."""
    if shard is None:
        atomic_save_json(cache / 'index.json', index)
    else:
        atomic_save_json(cache / shard_index_name(*shard),
                         {**index, 'shard': {'index': shard[0], 'count': shard[1]}})


# --- shards: several machines prepare disjoint parts of one cache -----------------------------
def shard_of(clip_id: str, count: int) -> int:
    """The shard (0 .. count-1) of a clip: crc32 of its id mod count, the same on any machine
    and Python version (unlike hash())."""
    return zlib.crc32(clip_id.encode('utf-8')) % count


def shard_index_name(index: int, count: int) -> str:
    return f'index.shard-{index}-of-{count}.json'


def merge_shards(cache: str | Path) -> str:
    """Merge the K shard indexes in `cache` into CACHE/index.json; returns a one-line report.

    Checks that all K shards are there and finished, made with the same settings, hold
    disjoint clips that follow the shard rule, and that every clip's file is in CACHE/clips.
    """
    cache = Path(cache)
    paths = sorted(cache.glob('index.shard-*-of-*.json'))
    if not paths:
        raise FileNotFoundError(f'no index.shard-I-of-K.json in {cache}: run `lightmer prepare '
                                '--shard I/K` first and copy every shard\'s output here')
    shards = [json.loads(p.read_text(encoding='utf-8')) for p in paths]
    counts = {s['shard']['count'] for s in shards}
    if len(counts) != 1:
        raise ValueError(f'{cache} mixes shards of different counts K {sorted(counts)}; keep '
                         'the shard indexes of one split only')
    count = counts.pop()
    missing = sorted(set(range(count)) - {s['shard']['index'] for s in shards})
    if missing:
        raise ValueError(f'shards {missing} of {count} are missing in {cache}: run `lightmer '
                         f'prepare --shard I/{count}` for them or copy their output here')
    own = ('complete', 'clips', 'skipped', 'shard')
    settings = {k: v for k, v in shards[0].items() if k not in own}
    for path, s in zip(paths, shards, strict=True):
        if {k: v for k, v in s.items() if k not in own} != settings:
            raise ValueError(f'{path.name} was prepared with other settings than '
                             f'{paths[0].name}; prepare every shard with the same version '
                             'and options')
        if not s.get('complete'):
            raise ValueError(f'{path.name} is from an unfinished run: run that shard again')
        strays = [c['clip_id'] for c in s['clips']
                  if shard_of(c['clip_id'], count) != s['shard']['index']]
        if strays:
            raise ValueError(f'{path.name} lists clips of other shards ({strays[:3]}...): it '
                             'was not written by this version of lightmer prepare')
    clips = sorted((c for s in shards for c in s['clips']), key=lambda c: c['clip_id'])
    absent = [c['clip_id'] for c in clips if not clip_path(cache, c['clip_id']).is_file()]
    if absent:
        raise FileNotFoundError(f'{len(absent)} clip file(s) missing from {cache / "clips"} '
                                f'(e.g. {absent[0]}.npz): copy every shard\'s clips/ here')
    skipped = {d['path']: d for s in shards for d in s['skipped']}   # every shard saw them all
    atomic_save_json(cache / 'index.json', {
        **settings, 'complete': True, 'clips': clips,
        'skipped': [skipped[k] for k in sorted(skipped)]})
    ok = sum(c['status'] == 'ok' for c in clips)
    return (f'merged {count} shards into {cache / "index.json"}: {len(clips)} clips '
            f'({ok} ok)')


def _check_existing_index(cache: Path, settings: dict) -> None:
    path = cache / 'index.json'
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding='utf-8'))
    old_settings = {k: old.get(k) for k in settings}
    if old_settings != settings:
        raise ValueError(f'{cache} holds a cache made with other settings ({old_settings}); '
                         'use another --cache folder or delete this one')


def _cached_entry(cache: Path, record: ClipRecord, settings_json: str) -> dict | None:
    """The index entry of a finished clip, or None when it must be (re)done."""
    path = clip_path(cache, record.clip_id)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:      # lazy: only the small members below are read
            # Other settings, or the audio now comes from another file (say AudioWAV/ was
            # added after a run that used the FLV's track): redo the clip.
            if (str(z['settings']) != settings_json
                    or str(z['audio_source']) != record.audio_source):
                return None
            return {'clip_id': record.clip_id, 'actor': record.actor, 'label': record.label,
                    'intensity': record.intensity, 'sentence': record.sentence,
                    'duration': float(z['duration']),
                    'audio_duration': float(z['audio_duration']),
                    'audio_source': record.audio_source, 'frames': int(z['frames']),
                    'faces': int(z['crops'].shape[0]), 'tried': int(z['tried']),
                    'status': str(z['status']), 'error': str(z['error'])}
    except (OSError, ValueError, KeyError):   # damaged or foreign file: redo the clip
        return None


# --- one clip (runs in a worker) --------------------------------------------------------------
_CROPPER = None


def _init_worker(parent_pid: int) -> None:
    _end_with_parent(parent_pid)
    import torch  # in the worker only: the parent of a pool never needs torch

    torch.set_num_threads(1)


_PR_SET_PDEATHSIG = 1     # linux/prctl.h


def _end_with_parent(parent_pid: int) -> None:
    """Make this worker end when `parent_pid` does, however it ends.

    A SIGKILLed parent (the OOM killer, `kill -9`) runs no clean-up, and a worker blocked in a
    C call never reads its closed pipe: left alone it would keep its GB of memory. On Linux the
    kernel sends this process SIGKILL when its parent dies (PR_SET_PDEATHSIG; the thread that
    started the pool outlives the pool, which is what that setting watches). Elsewhere a
    daemon thread polls the parent id. If the parent died before either was in place, this
    process was already re-parented: end now.
    """
    if sys.platform.startswith('linux'):
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    else:
        armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name='parent-watch', daemon=True).start()


def _cropper(cfg: FeatureConfig):
    global _CROPPER
    if _CROPPER is None or _CROPPER.cfg != cfg:
        _CROPPER = FaceCropper(cfg)
    return _CROPPER


def select_frames(times: np.ndarray, bounds: np.ndarray, k: int) -> list[np.ndarray]:
    """Per segment, the indices (into `times`) of up to `k` evenly spaced frames.

    Args:
        times: float (F,) ascending frame times (s); bounds: (N, 2) segment [start, end] (s);
        membership is `segments.segment_members` ([start, end), the last segment closed).
    Returns:
        N int arrays. A segment holding no frame (clip shorter than N frames) gets the frame
        nearest its centre, so no segment is empty.
    """
    out = []
    for (a, b), inside in zip(bounds, segment_members(times, bounds), strict=True):
        if inside.size == 0:
            out.append(np.array([nearest_index(times, (a + b) / 2)]))
        elif inside.size <= k:
            out.append(inside)
        else:   # the middle frame of each of k equal runs
            out.append(inside[((np.arange(k) + 0.5) * inside.size / k).astype(int)])
    return out


def duration_tolerance(video_s: float, audio_s: float) -> float:
    """Largest |video - audio| duration difference (s) still taken as one intact recording."""
    return max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * max(video_s, audio_s))


def check_streams(audio: np.ndarray, video_s: float, audio_s: float) -> tuple[str, str]:
    """(status, reason) of a clip from its decoded audio (float (n,)) and the video and audio
    durations (s): ('ok', ''), ('silent', why) or ('truncated', why)."""
    if is_digital_silence(audio):
        return 'silent', ('the audio is digital silence (no sample reaches one 16-bit step): '
                          'no speech to learn from')
    gap = video_s - audio_s
    if abs(gap) > duration_tolerance(video_s, audio_s):
        early, late = ('video', 'audio') if gap < 0 else ('audio', 'video')
        return 'truncated', (f'{early} ends {abs(gap):.2f} s before the {late} (video '
                             f'{video_s:.2f} s, audio {audio_s:.2f} s; tolerance '
                             f'{duration_tolerance(video_s, audio_s):.2f} s): a cut download? '
                             'copy the file again')
    return 'ok', ''


def process_clip(record: ClipRecord, cache: Path, settings_json: str) -> str:
    """Decode, check, crop and cache one clip; writes CACHE/clips/<clip_id>.npz; returns its
    status."""
    settings = json.loads(settings_json)
    cfg = FeatureConfig.from_dict(settings['features'])
    arrays = {'settings': np.array(settings_json),
              'audio_source': np.array(record.audio_source)}
    try:
        arrays.update(_extract(record, cfg, settings['n_segments'],
                               settings['frames_per_segment']))
    except media.MediaError as e:
        arrays.update(_without_faces(cfg, 'unreadable', str(e), 0.0, 0.0, 0))
    atomic_savez(clip_path(cache, record.clip_id), **arrays)
    return str(arrays['status'])


def _without_faces(cfg: FeatureConfig, status: str, error: str, duration: float,
                   audio_duration: float, frames: int) -> dict:
    """The cache arrays of a clip that training cannot use: no crops, no audio, the reason."""
    return {'crops': np.zeros((0, cfg.face_height, cfg.face_width), np.uint8),
            'crop_times': np.zeros(0), 'audio': np.zeros(0, np.float32),
            'duration': np.array(duration), 'audio_duration': np.array(audio_duration),
            'frames': np.array(frames), 'tried': np.array(0), 'status': np.array(status),
            'error': np.array(error)}


def _extract(record: ClipRecord, cfg: FeatureConfig, n_segments: int, k: int) -> dict:
    info = media.probe_video(record.video_path)
    duration = float(info.times[-1] + 1.0 / info.fps)
    audio, sr = media.decode_audio(record.audio_path or record.video_path)
    audio_duration = len(audio) / sr
    status, why = check_streams(audio, duration, audio_duration)
    if status != 'ok':      # checked before the detector runs: a rejected clip costs no MTCNN
        return _without_faces(cfg, status, why, duration, audio_duration, len(info.times))
    bounds = segment_bounds(duration, n_segments)
    chosen = select_frames(info.times, bounds, k)
    cropper = _cropper(cfg)
    faces: dict[int, np.ndarray] = {}       # frame index -> crop
    tried: set[int] = set()

    def run(indices: list[int]) -> None:
        indices = sorted(set(indices) - tried)
        if not indices:
            return
        frames, _ = media.decode_video_at(record.video_path, info.pts[indices])
        for i, crop in zip(indices, cropper(list(frames)), strict=True):
            tried.add(i)
            if crop is not None:
                faces[i] = crop

    candidates = [[int(i) for i in idx] for idx in chosen]
    run([i for idx in candidates for i in idx])
    # A segment whose chosen frames show no face: try the rest of that segment's frames.
    empty = [s for s, idx in enumerate(candidates) if not any(i in faces for i in idx)]
    if empty:
        every = select_frames(info.times, bounds, len(info.times))
        for s in empty:
            candidates[s] = [int(i) for i in every[s]]
        run([i for s in empty for i in candidates[s]])
    missing = [s for s, idx in enumerate(candidates) if not any(i in faces for i in idx)]
    order = sorted(faces)
    return {
        'crops': (np.stack([faces[i] for i in order]) if order
                  else np.zeros((0, cfg.face_height, cfg.face_width), np.uint8)),
        'crop_times': info.times[order].astype(np.float64),
        'audio': resample(audio, sr, cfg.sample_rate),
        'duration': np.array(duration),
        'audio_duration': np.array(audio_duration),
        'frames': np.array(len(info.times)),
        'tried': np.array(len(tried)),
        'status': np.array('no_face' if missing else 'ok'),
        'error': np.array(f'no face in segment(s) {missing}' if missing else ''),
    }
