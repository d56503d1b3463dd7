"""The pool: a robot's own recordings as its nodes saw them, stored to be ranked and labelled.

`build_pool` replays rosbag2 recordings through the nodes' own processors
(`lightmer.stream.pipeline.OfflinePipeline`, as eval-bag offline) and stores every segment whose
logits the fusion computed (the face crop and the log-mel the model saw, with its segment id
and reference time) and every window the fusion published (the items people label), plus
the recording's 16 kHz audio for listening. `Pool` reads it back for selection, training and
the labelling page.

On disk (docs/ACTIVE_LEARNING.md describes every field):

    POOL/pool.json                         settings shared by every recording, recording ids
    POOL/recordings/<rec>/recording.json   bag, topics, times, counts, audio placement
    POOL/recordings/<rec>/segments.npz     k, t_ref, crops, mels, face_missing (one row per
                                           segment)
    POOL/recordings/<rec>/windows.npz      k_last, t_ref, rows, probs (one row per window)
    POOL/recordings/<rec>/audio.wav        the recording's audio, 16-bit mono 16 kHz
    POOL/logits/<checkpoint key>/<rec>.npy per-segment logits of one checkpoint (a cache)

A recording directory is written whole under a temporary name and renamed, then pool.json is
rewritten: a killed run leaves complete recordings, and running it again skips them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import time
import wave
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lightmer.core.atomic_io import atomic_save_json, atomic_savez, atomic_write, atomic_write_wav
from lightmer.core.backend import read_meta
from lightmer.core.config import FeatureConfig
from lightmer.core.features import face_to_input, resample
from lightmer.core.messages import stamp_ns_to_seconds
from lightmer.core.missing import missing_face_input
from lightmer.core.segments import reference_time, window_indices
from lightmer.core.uncertainty import entropy_bits
from lightmer.evaluation import bags
from lightmer.stream.pipeline import OfflinePipeline
from lightmer.stream.settings import StreamSettings

POOL_FORMAT = 'lightmer-pool'
POOL_VERSION = 1
WINDOW_ID_SEPARATOR = ':'          # window id = '<recording id>:<k_last>'
_TMP_PREFIX = '.incomplete-'
OUTPUT_CHUNK = 2048                # segments per model call when scoring many recordings


class PoolError(ValueError):
    """A pool that cannot be used or written as asked; the message says what to do."""


# --- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolConfig:
    """What `build_pool` needs."""

    bags: tuple[Path, ...]
    checkpoint: Path
    out: Path
    topics: bags.BagTopics = bags.BagTopics()
    # The nodes' processing settings (defaults: the nodes' own), as eval-bag takes them.
    settings: StreamSettings = field(default_factory=StreamSettings)
    threads: int = 1                     # torch threads
    progress: bool = True


def checkpoint_key(path: str | os.PathLike) -> str:
    """A short content hash of a checkpoint file: names its logits cache in a pool."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()[:16]


def recording_id(bag: str | os.PathLike) -> str:
    """'<bag directory name>-<6 hex of its absolute path>': readable, unique per bag, stable."""
    path = Path(bag).resolve()
    stem = re.sub(r'[^A-Za-z0-9_-]+', '_', path.name).strip('_') or 'bag'
    return f'{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}'


def window_id(rec: str, k_last: int) -> str:
    return f'{rec}{WINDOW_ID_SEPARATOR}{int(k_last)}'


def parse_window_id(wid: str) -> tuple[str, int]:
    rec, sep, k = str(wid).rpartition(WINDOW_ID_SEPARATOR)
    if not sep or not rec or not re.fullmatch(r'-?\d+', k):
        raise PoolError(f'{wid!r} is not a window id (expected <recording>:<segment>, as in '
                        'a batch manifest)')
    return rec, int(k)


def _pool_header(meta, settings) -> dict:
    """The settings every recording of a pool shares (compared on every append)."""
    return {'format': POOL_FORMAT, 'version': POOL_VERSION, 'preset': meta.preset,
            'features': meta.features.to_dict(), 'segment_s': meta.segment_s,
            'n_segments': meta.n_segments, 'settings': dataclasses.asdict(settings)}


def _differences(old: dict, new: dict) -> dict:
    """{key: (old, new)} where the two differ; the `features` dicts are compared key by key
    (`features.<name>`), after reading the old one through FeatureConfig.from_dict, so a pool
    written before a feature setting existed compares as what it was made with."""
    diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if k != 'features' and old.get(k) != new.get(k)}
    if 'features' in old or 'features' in new:
        have = FeatureConfig.from_dict(old['features']).to_dict() if old.get('features') else {}
        want = new.get('features') or {}
        diff.update({f'features.{k}': (have.get(k), want.get(k))
                     for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)})
    return diff


# --- building --------------------------------------------------------------------------------
class _SegmentRecorder:
    """Collects what the fusion computed per segment (SegmentFuser.segment_listener)."""

    def __init__(self):
        self.k: list[int] = []
        self.t_ref: list[float] = []
        self.crops: list[np.ndarray] = []
        self.face_missing: list[bool] = []
        self.mels: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    def __call__(self, k, t_ref, face, mel, logits) -> None:
        self.k.append(int(k))
        self.t_ref.append(float(t_ref))
        face = np.asarray(face)
        # Policy 'single' gave the model core.missing's float face input, which no uint8 crop
        # can hold: a blank crop is stored and the segment marked (the mel of a missing audio
        # is a log-mel like any other and is stored as it is).
        missing = face.dtype != np.uint8
        self.face_missing.append(missing)
        self.crops.append(np.zeros(face.shape[-2:], np.uint8) if missing
                          else np.array(face, dtype=np.uint8))
        self.mels.append(np.array(mel, dtype=np.float32))
        self.logits.append(np.array(logits, dtype=np.float64))


class _AudioTimeline:
    """The audio of a recording on one timeline at the features' rate, for listening.

    Chunks that continue the previous one within the nodes' gap tolerance are joined back to
    back (as the audio node does); a later stamp starts a new run and the hole reads as
    silence. Each run is resampled whole at the end.
    """

    def __init__(self, sample_rate: int, gap_tolerance_s: float):
        self.sample_rate = sample_rate
        self.tolerance = gap_tolerance_s
        self._runs: list[tuple[float, int, list[np.ndarray]]] = []   # (t0, sr, chunks)
        self._end = -np.inf

    def add(self, t: float, samples: np.ndarray, sr: int) -> None:
        if self._runs and sr == self._runs[-1][1] and abs(t - self._end) <= self.tolerance:
            self._runs[-1][2].append(samples)
            self._end += len(samples) / sr
        else:
            self._runs.append((t, sr, [samples]))
            self._end = t + len(samples) / sr

    def finish(self) -> tuple[np.ndarray, float]:
        """-> (float32 (n,) mono at sample_rate, stamp of sample 0 in seconds)."""
        if not self._runs:
            return np.zeros(0, np.float32), 0.0
        t0 = self._runs[0][0]
        pieces = [(t, resample(np.concatenate(chunks), sr, self.sample_rate))
                  for t, sr, chunks in self._runs]
        n = max(round((t - t0) * self.sample_rate) + len(x) for t, x in pieces)
        out = np.zeros(n, np.float32)
        for t, x in pieces:
            i = round((t - t0) * self.sample_rate)
            out[i:i + len(x)] = x
        return out, t0


def build_pool(cfg: PoolConfig) -> dict:
    """Pool every bag of `cfg.bags` into `cfg.out` (created, or extended and resumed).

    Every input is checked before anything is written: each bag must hold the camera, audio
    and audio-info topics with raw PCM audio (bags.BagFormatError otherwise), and an existing
    pool must have been made with the same features, segment grid, N and node settings
    (PoolError). Returns a summary: recordings added and skipped, segments, windows, seconds
    of recording, wall seconds, throughput (seconds of recording per second).
    """
    if not cfg.bags:
        raise PoolError('no bags given; pass --bag DIR [DIR ...]')
    ids = [recording_id(b) for b in cfg.bags]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise PoolError(f'the same bag is given twice ({repeated}); pass each bag once')
    infos = [bags.bag_info(b, cfg.topics) for b in cfg.bags]   # BagFormatError says what to do
    meta = read_meta(cfg.checkpoint)      # a checkpoint or its ONNX export, as the nodes take
    settings = cfg.settings
    header = _pool_header(meta, settings)
    out = Path(cfg.out)
    index = _read_index(out) if (out / 'pool.json').exists() else None
    if index is not None:
        diff = _differences({k: index.get(k) for k in header}, header)
        if diff:
            raise PoolError(f'{out} was pooled with other settings {diff} (pool, now); use the '
                            'same checkpoint features and node options, or another --out')
    elif out.exists() and any(out.iterdir()):
        raise PoolError(f'{out} exists and is not a pool (no pool.json); choose another --out')

    key = checkpoint_key(cfg.checkpoint)
    done = list(index['recordings']) if index is not None else []
    (out / 'recordings').mkdir(parents=True, exist_ok=True)
    for stale in (out / 'recordings').iterdir():       # a killed run's unfinished recording
        if stale.name.startswith(_TMP_PREFIX) or (stale.is_dir() and stale.name not in done):
            shutil.rmtree(stale)
    if index is None:
        atomic_save_json(out / 'pool.json', {**header, 'recordings': []})

    added, skipped, seconds, t0 = [], [], 0.0, time.perf_counter()
    for bag, info, rec in zip(cfg.bags, infos, ids, strict=True):
        if rec in done:
            skipped.append(rec)
            continue
        pipe = OfflinePipeline(cfg.checkpoint, settings, cfg.threads)
        summary = _pool_recording(out, rec, Path(bag), info, pipe, meta, settings, cfg, key)
        done.append(rec)
        atomic_save_json(out / 'pool.json', {**header, 'recordings': done})
        added.append(summary)
        seconds += summary['duration_s']
    elapsed = time.perf_counter() - t0
    return {'pool': str(out), 'added': [a['id'] for a in added], 'skipped': skipped,
            'segments': sum(a['segments'] for a in added),
            'windows': sum(a['windows'] for a in added), 'recording_s': seconds,
            'elapsed_s': elapsed, 'recording_s_per_s': seconds / elapsed if elapsed else None}


def _pool_recording(out: Path, rec: str, bag: Path, info: bags.BagInfo, pipe, meta, settings,
                    cfg: PoolConfig, key: str) -> dict:
    """Replay one bag through `pipe` and write POOL/recordings/<rec>/ whole."""
    segments, windows, audio = _replay(bag, info, pipe, meta, settings, cfg)
    samples, audio_t0 = audio.finish()
    tmp = out / 'recordings' / f'{_TMP_PREFIX}{rec}'
    order = _write_arrays(tmp, segments, windows, meta)
    atomic_write_wav(tmp / 'audio.wav', samples, meta.features.sample_rate)
    summary = {
        'id': rec, 'bag': str(bag.resolve()), 'bag_name': bag.name, 'storage': info.storage,
        'topics': dataclasses.asdict(cfg.topics), 'bag_start_ns': info.start_ns,
        'bag_end_ns': info.end_ns, 'duration_s': (info.end_ns - info.start_ns) / 1e9,
        'audio': {'file': 'audio.wav', 'sample_rate': meta.features.sample_rate,
                  'samples': int(len(samples)), 't0_s': audio_t0},
        'segments': len(order), 'windows': len(windows), 'counts': pipe.counts(),
        'checkpoint': {'path': str(Path(cfg.checkpoint).resolve()), 'key': key},
        'labels': list(meta.labels),
        'created': dt.datetime.now(dt.UTC).isoformat(timespec='seconds'),
    }
    atomic_save_json(tmp / 'recording.json', summary)
    # The pooling checkpoint's segment logits are a cache entry for free.
    _save_npy(out / 'logits' / key / f'{rec}.npy',
              np.asarray(segments.logits, np.float64).reshape(-1, len(meta.labels))[order])
    os.replace(tmp, out / 'recordings' / rec)
    return summary


def _replay(bag: Path, info: bags.BagInfo, pipe, meta, settings, cfg: PoolConfig
            ) -> tuple[_SegmentRecorder, list, _AudioTimeline]:
    """Every camera and audio message of `bag` through `pipe`, in bag order.
    -> (the segments the fusion computed, the windows it published, the audio)."""
    segments = _SegmentRecorder()
    pipe.fuser.segment_listener = segments
    audio = _AudioTimeline(meta.features.sample_rate, settings.gap_tolerance_s)
    windows = []
    n_msgs = sum(info.topics.get(t, ('', 0))[1] for t in (cfg.topics.image, cfg.topics.audio))
    messages = tqdm(bags.read_bag(bag, cfg.topics), total=n_msgs, unit='msg',
                    desc=f'pool {bag.name}', disable=None if cfg.progress else True)
    for msg in messages:
        t = stamp_ns_to_seconds(msg.stamp_ns)
        if msg.kind == 'image':
            windows.extend(pipe.push_image(t, msg.data))
        else:
            audio.add(t, msg.data, msg.sample_rate)
            windows.extend(pipe.push_audio(t, msg.data, msg.sample_rate))
        if sum(c['resets'] for c in pipe.counts().values()):
            raise PoolError(f'{bag}: stamps go back in time near t = {t:.3f} s (a looped or '
                            'concatenated recording); the pool needs one forward timeline per '
                            'bag: split the bag where the stamps jump and pool the parts')
    return segments, windows, audio


def _write_arrays(tmp: Path, segments: _SegmentRecorder, windows: list, meta) -> np.ndarray:
    """segments.npz (in segment id order) and windows.npz of one recording into `tmp`.
    -> the order that sorts the recorded segments by id."""
    f = meta.features
    order = np.argsort(segments.k, kind='stable')
    seg_k = np.asarray(segments.k, np.int64)[order]
    row_of = {int(k): i for i, k in enumerate(seg_k)}
    n = meta.n_segments
    rows = np.full((len(windows), n), -1, np.int64)   # (W, N) segment rows, -1 where absent
    for w, result in enumerate(windows):
        first = result.k_last - n + 1
        for k in result.segments:
            rows[w, k - first] = row_of[k]
    atomic_savez(tmp / 'segments.npz', k=seg_k,
                 t_ref=np.asarray(segments.t_ref, np.float64)[order],
                 crops=np.asarray(segments.crops, np.uint8).reshape(
                     -1, f.face_height, f.face_width)[order],
                 mels=np.asarray(segments.mels, np.float32).reshape(
                     -1, f.n_mels, f.mel_frames)[order],
                 face_missing=np.asarray(segments.face_missing, bool)[order])
    atomic_savez(tmp / 'windows.npz',
                 k_last=np.array([w.k_last for w in windows], np.int64),
                 t_ref=np.array([w.t_ref for w in windows], np.float64),
                 rows=rows,
                 probs=np.array([w.probs for w in windows], np.float64).reshape(
                     len(windows), len(meta.labels)))
    return order


def _save_npy(path: Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, 'wb') as f:   # a file object keeps numpy from appending '.npy'
            np.save(f, array)

    return atomic_write(path, write)


def _read_index(path: Path) -> dict:
    index_path = Path(path) / 'pool.json'
    if not index_path.is_file():
        raise PoolError(f'{path} is not a pool (no pool.json); make one with `lightmer pool '
                        f'--bag BAG --checkpoint M --out {path}`')
    d = json.loads(index_path.read_text(encoding='utf-8'))
    if d.get('format') != POOL_FORMAT or d.get('version') != POOL_VERSION:
        raise PoolError(f'{index_path} is not a version-{POOL_VERSION} lightmer pool; pool the '
                        'bags again with this lightmer')
    return d


# --- reading ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowTable:
    """Every window and segment of a pool in flat arrays (recordings in pool order).

    ids: W window ids; rec int64 (W,) index into rec_ids; k_last int64 (W,); t_ref float64
    (W,) seconds (the `emotion` stamp); rows int64 (W, N) global segment rows of the window's
    segments k_last-N+1 .. k_last, -1 where absent; probs float64 (W, C) as published when
    pooling. seg_rec, seg_k int64 (S,), seg_t_ref float64 (S,).
    """

    rec_ids: tuple[str, ...]
    ids: tuple[str, ...]
    rec: np.ndarray
    k_last: np.ndarray
    t_ref: np.ndarray
    rows: np.ndarray
    probs: np.ndarray
    seg_rec: np.ndarray
    seg_k: np.ndarray
    seg_t_ref: np.ndarray

    @cached_property
    def position(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.ids)}

    def index_of(self, window_ids) -> np.ndarray:
        """int64 positions of `window_ids`; PoolError naming the ones not in the pool."""
        missing = [w for w in window_ids if w not in self.position]
        if missing:
            raise PoolError(f'{len(missing)} window id(s) are not in this pool, e.g. '
                            f'{missing[:3]}; were they pooled into another pool?')
        return np.array([self.position[w] for w in window_ids], np.int64)


@dataclass(frozen=True)
class WindowView:
    """One window as a labelling page shows it.

    crops uint8 (N, 98, 80) oldest first (zeros where `present` is False); t_refs float64 (N,)
    segment reference times; frames_s: (start, end) stamp seconds of the camera time the
    window covers (first segment start to last segment end; read those frames from `bag`);
    audio_s: (start, end) of the audio its log-mels used (first reference - d/2 to last
    reference + d/2); probs float64 (C,) as published when pooling, in `labels` order.
    """

    window_id: str
    recording: str
    bag: Path
    topics: dict
    k_last: int
    segment_ids: tuple[int, ...]
    present: np.ndarray
    crops: np.ndarray
    t_refs: np.ndarray
    frames_s: tuple[float, float]
    audio_s: tuple[float, float]
    probs: np.ndarray
    labels: tuple[str, ...]

    @property
    def entropy_bits(self) -> float:
        return float(entropy_bits(self.probs[None])[0])


class Pool:
    """Read access to a pool directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.index = _read_index(self.path)
        self.features = FeatureConfig.from_dict(self.index['features'])
        self.segment_s = float(self.index['segment_s'])
        self.n_segments = int(self.index['n_segments'])
        self.settings = dict(self.index['settings'])
        self.recording_ids: tuple[str, ...] = tuple(self.index['recordings'])
        if not self.recording_ids:
            raise PoolError(f'{self.path} holds no finished recording; run `lightmer pool` '
                            'again to finish it')
        self._segments: dict[str, dict[str, np.ndarray]] = {}

    def recording(self, rec: str) -> dict:
        """recording.json of `rec`."""
        if rec not in self.recording_ids:
            raise PoolError(f'recording {rec!r} is not in {self.path}; it has '
                            f'{list(self.recording_ids)}')
        return json.loads((self.path / 'recordings' / rec / 'recording.json')
                          .read_text(encoding='utf-8'))

    def check_checkpoint(self, meta, checkpoint: str | os.PathLike = 'the checkpoint') -> None:
        """PoolError unless `meta` computes features on the pool's grid exactly as pooled."""
        have = {'features': self.features.to_dict(), 'segment_s': self.segment_s,
                'n_segments': self.n_segments}
        want = {'features': meta.features.to_dict(), 'segment_s': meta.segment_s,
                'n_segments': meta.n_segments}
        diff = _differences(have, want)
        if diff:
            raise PoolError(f'{self.path} was pooled with other feature settings than '
                            f'{checkpoint}: {diff} (pool, checkpoint); pool the bags again '
                            'with this checkpoint (`lightmer pool --checkpoint ...`) or use '
                            'a checkpoint trained with the pool\'s settings')

    @cached_property
    def table(self) -> WindowTable:
        recs, ids, rec_i, k_last, t_ref, rows, probs = [], [], [], [], [], [], []
        seg_rec, seg_k, seg_t = [], [], []
        offset = 0
        for r, rec in enumerate(self.recording_ids):
            d = self.path / 'recordings' / rec
            with np.load(d / 'windows.npz') as w, np.load(d / 'segments.npz') as s:
                k, tr = s['k'], s['t_ref']
                wk, wrows = w['k_last'], w['rows']
                ids.extend(window_id(rec, x) for x in wk)
                rec_i.append(np.full(len(wk), r, np.int64))
                k_last.append(wk)
                t_ref.append(w['t_ref'])
                rows.append(np.where(wrows >= 0, wrows + offset, -1))
                probs.append(w['probs'])
                seg_rec.append(np.full(len(k), r, np.int64))
                seg_k.append(k)
                seg_t.append(tr)
                offset += len(k)
            recs.append(rec)
        n_classes = max((p.shape[1] for p in probs if p.ndim == 2), default=0)
        return WindowTable(
            rec_ids=tuple(recs), ids=tuple(ids), rec=np.concatenate(rec_i),
            k_last=np.concatenate(k_last), t_ref=np.concatenate(t_ref),
            rows=np.concatenate(rows).reshape(-1, self.n_segments),
            probs=np.concatenate([p.reshape(-1, n_classes) for p in probs]),
            seg_rec=np.concatenate(seg_rec), seg_k=np.concatenate(seg_k),
            seg_t_ref=np.concatenate(seg_t))

    def _recording_segments(self, rec: str) -> dict[str, np.ndarray]:
        if rec not in self._segments:
            with np.load(self.path / 'recordings' / rec / 'segments.npz') as z:
                seg = {k: z[k] for k in ('k', 't_ref', 'crops', 'mels')}
                # pools written before policy 'single' existed: every segment had its face
                seg['face_missing'] = (z['face_missing'] if 'face_missing' in z
                                       else np.zeros(len(seg['k']), bool))
                self._segments[rec] = seg
        return self._segments[rec]

    def _network_faces(self, crops: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """float32 (R, 1, 98, 80): the face inputs the model saw for these segments (the
        crops through face_to_input; core.missing's input where the face was missing)."""
        faces = face_to_input(crops)
        faces[missing] = missing_face_input(self.features)
        return faces

    def segment_faces(self, rows: np.ndarray) -> np.ndarray:
        """Global segment rows (R,) -> the network's face inputs float32 (R, 1, 98, 80), as
        the fusion gave them to the model (training on pool windows uses these)."""
        rows = np.asarray(rows, np.int64)
        crops, _ = self.segment_inputs(rows)
        missing = np.zeros(len(rows), bool)
        table = self.table
        starts = np.searchsorted(table.seg_rec, np.arange(len(table.rec_ids)))
        for r, rec in enumerate(table.rec_ids):
            mine = np.flatnonzero(table.seg_rec[rows] == r)
            if mine.size:
                missing[mine] = self._recording_segments(rec)['face_missing'][rows[mine]
                                                                              - starts[r]]
        return self._network_faces(crops, missing)

    def segment_inputs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global segment rows (R,) -> (crops uint8 (R, 98, 80), mels float32 (R, 128, 43))."""
        table = self.table
        rows = np.asarray(rows, np.int64)
        f = self.features
        crops = np.empty((len(rows), f.face_height, f.face_width), np.uint8)
        mels = np.empty((len(rows), f.n_mels, f.mel_frames), np.float32)
        starts = np.searchsorted(table.seg_rec, np.arange(len(table.rec_ids)))
        for r, rec in enumerate(table.rec_ids):
            mine = np.flatnonzero(table.seg_rec[rows] == r)
            if mine.size:
                seg = self._recording_segments(rec)
                local = rows[mine] - starts[r]
                crops[mine] = seg['crops'][local]
                mels[mine] = seg['mels'][local]
        return crops, mels

    def segment_logits(self, logits_of, key: str | None = None,
                       progress: bool = False) -> np.ndarray:
        """float64 (S, C): logits of every segment of the pool.

        logits_of: face inputs float32 (B, 1, 98, 80) (`segment_faces`), mels float32
        (B, 128, 43) -> float64 (B, C), the model in eval mode (`segment_scorer`). With a
        `key` (checkpoint_key of the model's file) each recording's logits are read from, or
        written to, POOL/logits/<key>/<rec>.npy, so a checkpoint scores a pool once.
        """
        def outputs_of(faces: np.ndarray, mels: np.ndarray) -> dict[str, np.ndarray]:
            return {'logits': np.asarray(logits_of(faces, mels), np.float64)}

        return self.segment_outputs(outputs_of, ('logits',), key, progress)['logits']

    def segment_outputs(self, outputs_of, names: tuple[str, ...], key: str | None = None,
                        progress: bool = False) -> dict[str, np.ndarray]:
        """{name: (S, ...) array} of every segment of the pool, one model pass for all names.

        outputs_of: face inputs float32 (B, 1, 98, 80) (as `segment_faces`: the crops the
        model saw, core.missing's input where the face was missing), mels float32
        (B, 128, 43) -> {name: (B, ...)}
        ('logits' float64 (B, C), 'embeddings' float32 (B, D)). With a `key` each is cached
        per recording at POOL/<name>/<key>/<rec>.npy; a recording is run through the model
        only when one of `names` is missing, and cached arrays are never rewritten.
        """
        have: dict[str, dict[str, np.ndarray]] = {}
        todo = []                                 # recordings the model must run over
        for rec in self.table.rec_ids:
            caches = self._output_caches(rec, names, key)
            have[rec] = {n: np.load(c) for n, c in caches.items() if c is not None and c.is_file()}
            if len(have[rec]) < len(names):
                todo.append(rec)
        # Short recordings are run together: batches of a few dozen segments cost 2x per
        # segment (measured on bench_pool's 53-segment recordings).
        groups, group, size = [], [], 0
        for rec in todo:
            group.append(rec)
            size += int((self.table.seg_rec == self.table.rec_ids.index(rec)).sum())
            if size >= OUTPUT_CHUNK:
                groups, group, size = [*groups, group], [], 0
        for recs in tqdm([*groups, group] if group else groups, desc='segment outputs',
                         unit='group', disable=not progress):
            self._run_outputs(recs, outputs_of, names, key, have)
        return {n: np.concatenate([have[rec][n] for rec in self.table.rec_ids]) for n in names}

    def _output_caches(self, rec: str, names: tuple[str, ...], key: str | None
                       ) -> dict[str, Path | None]:
        return {n: self.path / n / key / f'{rec}.npy' if key else None for n in names}

    def _run_outputs(self, recs: list[str], outputs_of, names: tuple[str, ...],
                     key: str | None, have: dict[str, dict[str, np.ndarray]]) -> None:
        """The model over the segments of `recs` in one call; the outputs each recording
        lacks go into `have` (and the cache)."""
        segs = [self._recording_segments(rec) for rec in recs]
        out = outputs_of(
            np.concatenate([self._network_faces(s['crops'], s['face_missing']) for s in segs]),
            np.concatenate([s['mels'] for s in segs]))
        bounds = np.cumsum([0, *(len(s['mels']) for s in segs)])
        for rec, a, b in zip(recs, bounds[:-1], bounds[1:], strict=True):
            caches = self._output_caches(rec, names, key)
            for n in names:
                if n not in have[rec]:
                    have[rec][n] = np.asarray(out[n])[a:b]
                    if caches[n] is not None:
                        _save_npy(caches[n], have[rec][n])

    def window(self, wid: str, labels: tuple[str, ...] | None = None) -> WindowView:
        """One window for a labelling page (see WindowView)."""
        rec, _ = parse_window_id(wid)
        info = self.recording(rec)
        table = self.table
        i = int(table.index_of([wid])[0])
        rows = table.rows[i]
        present = rows >= 0
        f = self.features
        crops = np.zeros((self.n_segments, f.face_height, f.face_width), np.uint8)
        if present.any():
            crops[present] = self.segment_inputs(rows[present])[0]
        k_last = int(table.k_last[i])
        ks = tuple(window_indices(k_last, self.n_segments))
        # Pools written before StreamSettings named it 'reference' call it 'anchor'.
        reference = self.settings.get('reference', self.settings.get('anchor', 'centre'))
        t_refs = np.array([reference_time(k, self.segment_s, reference) for k in ks])
        half = f.window_s / 2
        return WindowView(
            window_id=wid, recording=rec, bag=Path(info['bag']), topics=dict(info['topics']),
            k_last=k_last, segment_ids=ks, present=present, crops=crops, t_refs=t_refs,
            frames_s=(ks[0] * self.segment_s, (ks[-1] + 1) * self.segment_s),
            audio_s=(float(t_refs[0] - half), float(t_refs[-1] + half)),
            probs=table.probs[i].copy(), labels=tuple(labels or info['labels']))

    def audio(self, rec: str, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
        """The recording's audio between two stamp times: (float32 (n,), sample rate).

        Times outside the recording read as silence, so a caller may ask for context freely.
        """
        info = self.recording(rec)['audio']
        sr, t0 = int(info['sample_rate']), float(info['t0_s'])
        i0, i1 = round((start_s - t0) * sr), round((end_s - t0) * sr)
        out = np.zeros(max(0, i1 - i0), np.float32)
        lo, hi = max(i0, 0), min(i1, int(info['samples']))
        if hi > lo:
            with wave.open(str(self.path / 'recordings' / rec / info['file']), 'rb') as w:
                w.setpos(lo)
                raw = w.readframes(hi - lo)
            out[lo - i0:hi - i0] = np.frombuffer(raw, '<i2').astype(np.float32) / 32768.0
        return out, sr
