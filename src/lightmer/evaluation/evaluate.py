"""`lightmer eval-bag`: score a rosbag2 against a labels CSV, offline or through the live nodes.

Offline (default): the bag's camera and audio messages, in bag-time order, go through the same
message-free processors the nodes wrap (`pipeline.OfflinePipeline`) in one process, with no
DDS. Deterministic.

Live (`--live`): `harness.live_eval` plays the bag to the three node processes over DDS on
loopback and hands back what they published; it is scored here the same way (`scoring`).

Per person (`people`): the nodes' several-people mode (max_faces > 1) on a bag of several
people (`make-bag --two-people`), scored per person (`people_scoring`): each id is the person on
whose half of the frame its faces were, each person scored on their own rows, id switches
counted. Live, the windows are those of /humans/faces/<id>/emotion and the faces' positions
those of the face node's face_crops.

Both report per node the counters the nodes publish on /diagnostics (`counts`). Offline, each
window also says how many of its segments had their own face and their own audio (windows.json
`segments`, `with_face`, `with_audio`; the report's `modalities` sums them), which
vision_msgs/Classification cannot carry; live, the fusion node's counts say how many segments
were fused from one modality (`face_only`, `audio_only`) and its /diagnostics the last window's
(`window_with_face`, `window_with_audio`). Latency:
- Window end: the capture time of the newest data the window uses, i.e. the end of its last
  segment's audio window, stamp + d/2 (the face frame is never later).
- Latency of a window: publish time minus window end. Sim: offline, the bag time of the
  message whose processing completed the window; live, the node clock (/clock) when the
  `emotion` message arrived. Wall: offline, sim latency plus the measured processing time of
  that message (a real-time replay without backlog); live, the wall time of arrival minus the
  wall time at which the player published the bag instant of the window end.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import read_meta
from lightmer.core.checkpoint import CheckpointMeta
from lightmer.core.messages import stamp_ns_to_seconds
from lightmer.core.plots import plot_confusion, plot_latency
from lightmer.evaluation import bags
from lightmer.evaluation.people_scoring import ids_on_both_sides, person_of_ids, score_people
from lightmer.evaluation.scoring import check_labels, percentiles, score
from lightmer.stream.pipeline import OfflinePeoplePipeline, OfflinePipeline
from lightmer.stream.settings import StreamSettings


@dataclass(frozen=True)
class EvalConfig:
    bag: Path
    labels: Path
    checkpoint: Path
    live: bool = False
    out: Path | None = None              # directory for eval.json, windows.json and PNGs
    image_topic: str = bags.IMAGE_TOPIC
    audio_topic: str = bags.AUDIO_TOPIC
    audio_info_topic: str = bags.AUDIO_INFO_TOPIC
    # The nodes' processing settings, offline and live alike (defaults: the nodes' own).
    settings: StreamSettings = field(default_factory=StreamSettings)
    threads: int = 1                     # runtime threads (offline, and per node live)
    # Live only.
    rate: float = 1.0                    # playback speed, x real time
    # Camera and audio from one DDS participant, as `ros2 bag play` publishes them (default:
    # the audio from a participant of its own, as a microphone driver's).
    one_participant: bool = False
    # Per person (offline): every face tracked, scored per person (labels need `person`).
    people: bool = False
    max_faces: int = 4
    audio_to: str = 'speaker'
    startup_timeout_s: float = 120.0     # nodes up, matched and holding the AudioInfo
    drain_timeout_s: float = 60.0        # after the last message, for the nodes to finish


@dataclass(frozen=True)
class WindowRecord:
    """One emitted window. probs: (C,) in the checkpoint's label order."""

    k_last: int
    stamp_s: float          # last segment's reference time (the emotion header stamp)
    end_s: float            # stamp + d/2, capture time of the newest data used
    probs: tuple[float, ...]
    publish_sim_s: float
    latency_sim_ms: float
    latency_wall_ms: float
    face_id: str = ''       # per person: whose window
    # Segments averaged, and of those the ones with their own face / audio (offline only: a
    # Classification message cannot say; None live).
    segments: int | None = None
    with_face: int | None = None
    with_audio: int | None = None

    def to_dict(self) -> dict:
        return {'k_last': self.k_last, 'face_id': self.face_id, 'stamp_s': self.stamp_s,
                'end_s': self.end_s,
                'probs': list(self.probs), 'publish_sim_s': self.publish_sim_s,
                'latency_sim_ms': self.latency_sim_ms, 'latency_wall_ms': self.latency_wall_ms,
                'segments': self.segments, 'with_face': self.with_face,
                'with_audio': self.with_audio}


@dataclass
class RunResult:
    windows: list[WindowRecord] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)   # node -> its counters
    extra: dict = field(default_factory=dict)


# --- offline replay ------------------------------------------------------------------------
def run_offline(cfg: EvalConfig, meta, topics: bags.BagTopics) -> RunResult:
    half = meta.features.window_s / 2
    if cfg.people:
        pipe = OfflinePeoplePipeline(cfg.checkpoint, cfg.settings, cfg.threads, cfg.max_faces,
                                     cfg.audio_to, frame_id=bags.CAMERA_FRAME)
    else:
        pipe = OfflinePipeline(cfg.checkpoint, cfg.settings, cfg.threads,
                               frame_id=bags.CAMERA_FRAME)
    result = RunResult()
    n_msgs = 0
    frame_width = 0
    for msg in _progress(bags.read_bag(cfg.bag, topics), 'eval-bag offline'):
        n_msgs += 1
        t = stamp_ns_to_seconds(msg.stamp_ns)
        t0 = time.perf_counter()
        if msg.kind == 'image':
            frame_width = msg.data.shape[1]
            done = pipe.push_image(t, msg.data)
        else:
            done = pipe.push_audio(t, msg.data, msg.sample_rate)
        compute_ms = (time.perf_counter() - t0) * 1e3
        publish_s = msg.t_ns / 1e9
        for d in done:
            face_id, w = (d.face_id, d.window) if cfg.people else ('', d)
            end_s = w.t_ref + half
            sim_ms = (publish_s - end_s) * 1e3
            result.windows.append(WindowRecord(
                w.k_last, w.t_ref, end_s, tuple(float(p) for p in w.probs), publish_s, sim_ms,
                sim_ms + compute_ms, face_id, len(w.segments), w.with_face, w.with_audio))
    result.extra = {'messages': n_msgs}
    if cfg.people:
        result.counts = {'face_crop': dataclasses.asdict(pipe.faces.counts),
                         'audio_feature': dataclasses.asdict(pipe.audio.counts),
                         'fusion': {**pipe.people.fusion_counts(),
                                    **dataclasses.asdict(pipe.people.counts)}}
        result.extra['centres_x'] = pipe.centres_x
        result.extra['frame_width'] = frame_width
        return result
    result.counts = pipe.counts()
    return result


def _progress(items, desc: str):
    return tqdm(items, desc=desc, unit='msg', disable=None)


# --- entry point ---------------------------------------------------------------------------
# Plays a bag through the live nodes: (cfg, meta, topics, camera compressed) -> RunResult.
LiveRunner = Callable[[EvalConfig, CheckpointMeta, bags.BagTopics, bool], RunResult]


def evaluate_bag(cfg: EvalConfig, live: LiveRunner | None = None) -> dict:
    """Replay `cfg.bag`, score the windows against `cfg.labels`; returns the summary dict that
    is also written to `<out>/eval.json` (with windows.json, confusion.png, latency.png).

    `cfg.live` needs `live`, the runner that drives the node processes
    (`harness.live_eval.run_live`, above this layer; `evaluate_bag_live` passes it)."""
    if cfg.live and live is None:
        raise ValueError('live evaluation drives the node processes: call '
                         'harness.live_eval.evaluate_bag_live (lightmer eval-bag --live)')
    topics = bags.BagTopics(cfg.image_topic, cfg.audio_topic, cfg.audio_info_topic)
    info = bags.bag_info(cfg.bag, topics)            # clear errors before any heavy loading
    topics = dataclasses.replace(topics, image=info.image_topic)   # may be its /compressed
    rows = bags.read_labels(cfg.labels, info.start_s)
    meta = read_meta(cfg.checkpoint)              # a checkpoint or an ONNX export
    check_labels([r.label for r in rows], meta.labels, str(cfg.labels))
    if cfg.people and not all(r.person for r in rows):
        raise ValueError('per-person scoring needs a labels CSV with a person column '
                         '(make-bag --two-people writes one)')
    t0 = time.perf_counter()
    if cfg.live:
        run = live(cfg, meta, topics, info.image_compressed)
    else:
        run = run_offline(cfg, meta, topics)
    elapsed = time.perf_counter() - t0

    stamps = np.array([w.stamp_s for w in run.windows])
    probs = np.array([w.probs for w in run.windows]).reshape(len(run.windows), len(meta.labels))
    if cfg.people:
        summary = _score_people(run, stamps, probs, rows, meta.labels)
    else:
        summary = score(stamps, probs, rows, meta.labels)
    summary.update({
        'mode': 'live' if cfg.live else 'offline',
        'bag': str(cfg.bag), 'labels_csv': str(cfg.labels), 'checkpoint': str(cfg.checkpoint),
        'labels': list(meta.labels), 'segment_s': meta.segment_s,
        'n_segments': meta.n_segments, 'settings': dataclasses.asdict(cfg.settings),
        'bag_duration_s': (info.end_ns - info.start_ns) / 1e9, 'elapsed_s': elapsed,
        'latency_ms': percentiles([w.latency_wall_ms for w in run.windows]),
        'latency_sim_ms': percentiles([w.latency_sim_ms for w in run.windows]),
        'latency_definition': 'publish time minus window end (last segment stamp + d/2); '
                              'latency_ms in wall time, latency_sim_ms in bag time',
        'counts': run.counts,
        'modalities': modalities(run.windows),
        **run.extra,
    })
    if cfg.out is not None:
        _write_outputs(Path(cfg.out), summary, run, meta.labels)
    return summary


def modalities(windows: list[WindowRecord]) -> dict | None:
    """How many of the windows' segments had their own face and their own audio (None when
    the windows do not say: live). `segments`, `with_face`, `with_audio`: sums over windows;
    `windows_without_face` / `windows_without_audio`: windows made of one modality alone."""
    if any(w.segments is None for w in windows):
        return None
    return {'windows': len(windows), 'segments': sum(w.segments for w in windows),
            'with_face': sum(w.with_face for w in windows),
            'with_audio': sum(w.with_audio for w in windows),
            'windows_without_face': sum(w.with_face == 0 for w in windows),
            'windows_without_audio': sum(w.with_audio == 0 for w in windows)}


def _score_people(run: RunResult, stamps, probs, rows, labels) -> dict:
    """people_scoring.score_people of the per-id windows, with the per-person confusion
    matrices summed at the top level (what the plots show)."""
    centres, width = run.extra.pop('centres_x'), run.extra.pop('frame_width')
    person_of = person_of_ids(centres, width)
    ids = [w.face_id for w in run.windows]
    result = score_people(ids, stamps, probs, rows, labels, person_of)
    people = result['people'].values()
    scored = sum(p['windows_scored'] for p in people)
    return {
        **result,
        'window_accuracy': (sum(p['window_accuracy'] * p['windows_scored'] for p in people
                                if p['windows_scored']) / scored) if scored else None,
        'windows': len(ids), 'windows_scored': scored,
        'person_of_id': person_of, 'ids_on_both_sides': ids_on_both_sides(centres, width),
        'confusion_windows': np.sum([p['confusion_windows'] for p in people], axis=0).tolist(),
        'confusion_clips': np.sum([p['confusion_clips'] for p in people], axis=0).tolist(),
    }


def _write_outputs(out: Path, summary: dict, run: RunResult, labels) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mode = summary['mode']
    summary['files'] = {
        'confusion_png': str(plot_confusion(
            np.array(summary['confusion_windows']), labels, out / 'confusion.png',
            title=f'eval-bag {mode}: windows')),
        'latency_png': str(plot_latency(
            [w.latency_wall_ms for w in run.windows], out / 'latency.png',
            title=f'eval-bag {mode}: emotion latency (wall)')),
        'windows_json': str(atomic_save_json(out / 'windows.json',
                                             [w.to_dict() for w in run.windows])),
    }
    summary['files']['eval_json'] = str(out / 'eval.json')
    atomic_save_json(out / 'eval.json', summary)
