"""`lightmer eval-bag --live`: a bag played to the three node processes over loopback DDS.

The three node executables run as child processes with use_sim_time and reliable inputs (the
rig); this process plays the bag at `rate` x real time (publishing /clock from the bag time
before each message), records `emotion` and the nodes' /diagnostics counts, and
`evaluation.evaluate` scores them as it scores an offline replay. It lives in the harness
layer because it drives the running nodes; the scoring and the report are evaluation's.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lightmer.core.messages import stamp_ns_to_seconds, time_to_float
from lightmer.core.segments import segment_of_reference
from lightmer.evaluation import bags
from lightmer.evaluation.evaluate import EvalConfig, RunResult, WindowRecord, evaluate_bag
from lightmer.harness.rig import NODE_NAMES, Event, NodeProcesses, Rig, Topics


def evaluate_bag_live(cfg: EvalConfig) -> dict:
    """evaluate_bag through the running nodes: what `lightmer eval-bag --live` does."""
    return evaluate_bag(dataclasses.replace(cfg, live=True), live=run_live)


DIAGNOSTICS_PERIOD_S = 0.5
PEOPLE_PREFIX = '/humans/faces'


def _node_params(cfg: EvalConfig, compressed: bool) -> dict:
    """ROS parameter file content for the three nodes: the same settings as offline, the
    camera's message type, and reliable inputs deep enough that no message of the replay is
    dropped (a sensor-data subscription may drop frames, which offline never does)."""
    common = {'torch_threads': cfg.threads, 'diagnostics_period_s': DIAGNOSTICS_PERIOD_S,
              **dataclasses.asdict(cfg.settings)}
    people = {'max_faces': cfg.max_faces} if cfg.people else {}
    return {
        '/**': {'ros__parameters': common},
        '/**/face_crop': {'ros__parameters': {'qos_reliability': 'reliable',
                                              'qos_depth': 100,
                                              'compressed_input': compressed, **people}},
        '/**/audio_feature': {'ros__parameters': {'qos_reliability': 'reliable',
                                                  'qos_depth': 500}},
        '/**/fusion': {'ros__parameters': {'queue_depth': 100, **people,
                                           **({'audio_to': cfg.audio_to} if cfg.people
                                              else {})}},
    }


def run_live(cfg: EvalConfig, meta, topics: bags.BagTopics, compressed: bool) -> RunResult:
    """Play the bag to the three node processes over loopback DDS with sim time (`harness.rig`)
    and record `emotion`; `compressed`: the camera topic carries CompressedImage. Raises
    TimeoutError/RuntimeError with the nodes' logs when they fail."""
    if not cfg.rate > 0:
        raise ValueError(f'rate must be positive, got {cfg.rate}')
    rig_topics = Topics(topics.image, topics.audio, topics.audio_info)
    launch = {'model': str(Path(cfg.checkpoint).resolve()), 'use_sim_time': 'true',
              **rig_topics.launch_args()}
    # A face node reading CompressedImage subscribes image/compressed, which the camera_topic
    # launch argument (a remap of `image`) does not reach.
    remaps = {'face_crop': [('image/compressed', topics.image)]} if compressed else {}
    with tempfile.TemporaryDirectory(prefix='lightmer-eval-') as tmp:
        log_dir = Path(cfg.out) / 'nodes' if cfg.out is not None else Path(tmp)
        started = time.monotonic()
        with (NodeProcesses(launch, log_dir, _node_params(cfg, compressed), remaps) as nodes,
              Rig(topics=rig_topics, use_sim_time=True, nodes=nodes, compressed=compressed,
                  own_mic_participant=not cfg.one_participant,
                  people=PEOPLE_PREFIX if cfg.people else None) as rig):
            return _replay(cfg, meta, topics, rig, started)


def _replay(cfg: EvalConfig, meta, topics: bags.BagTopics, rig, started: float) -> RunResult:
    """Play the bag to the running nodes, wait until they have finished, and collect what
    they published. `started`: time.monotonic() when the node processes were started."""
    kinds = {topics.image: 'image', topics.audio: 'audio', topics.audio_info: 'info'}
    messages = (Event(stamp_ns_to_seconds(t_ns), kinds[topic], raw)
                for topic, _, t_ns, raw in bags.iter_raw(cfg.bag, topics))
    first = next(messages)
    _bring_up(cfg, topics, rig, first.t_s)
    startup_s = time.monotonic() - started

    wall0 = time.monotonic()
    played = rig.play(itertools.chain([first], messages), cfg.rate, clock=True,
                      progress='eval-bag live')
    play_s = time.monotonic() - wall0
    rig.wait_settled(played.sent['image'], 4 * DIAGNOSTICS_PERIOD_S, cfg.drain_timeout_s)
    drain_s = time.monotonic() - wall0 - play_s

    snap = rig.snapshot()
    result = RunResult(windows=_windows(cfg, meta, snap, played))
    result.counts = {name: snap.counts(rig.node_name(name)) for name in NODE_NAMES}
    kept_up, frames_lost = _kept_up(cfg, played, result.counts)
    result.extra = {'messages': sum(played.sent.values()), 'rate': cfg.rate,
                    'kept_up': kept_up, 'startup_s': startup_s, 'play_wall_s': play_s,
                    'drain_s': drain_s, 'player_behind_max_s': played.behind_max_s,
                    'frames_lost': frames_lost}
    if cfg.people:
        result.extra.update(_face_positions(cfg, topics, snap))
    return result


def _bring_up(cfg: EvalConfig, topics: bags.BagTopics, rig, t0_s: float) -> None:
    """/clock at the bag's first instant and its latched AudioInfo, then wait until the nodes
    are matched and the audio node holds the format."""
    rig.publish_clock(t0_s)
    for topic, _, _, raw in bags.iter_raw(cfg.bag, topics):
        if topic == topics.audio_info:         # latched: the audio node gets it on match
            rig.publish('info', raw)
            break
    rig.wait_ready(cfg.startup_timeout_s)
    rig.wait_format(timeout_s=cfg.startup_timeout_s)


def _windows(cfg: EvalConfig, meta, snap, played) -> list[WindowRecord]:
    """The received emotion messages (per person: every id's) as windows, in stamp order;
    wall latency against the wall time the player published the window's end."""
    half = meta.features.window_s / 2
    received = [('', r) for r in snap.emotion]
    if cfg.people:
        received = [(i, r) for i, rs in snap.person_emotion.items() for r in rs]
    windows = []
    for face_id, got in sorted(received, key=lambda x: time_to_float(x[1].msg.header.stamp)):
        stamp = time_to_float(got.msg.header.stamp)
        scores = {h.class_id: h.score for h in got.msg.results}
        end_s = stamp + half
        wall_end = float(np.interp(end_s, played.t_s, played.wall_s))
        windows.append(WindowRecord(
            segment_of_reference(stamp, meta.segment_s, cfg.settings.reference), stamp, end_s,
            tuple(float(scores.get(label, math.nan)) for label in meta.labels), got.clock_s,
            (got.clock_s - end_s) * 1e3, (got.wall_s - wall_end) * 1e3, face_id))
    return windows


def _kept_up(cfg: EvalConfig, played, counts: dict) -> tuple[bool, int]:
    """Whether the nodes kept up with the replay (said on stderr when not), and the frames
    the face node did not receive."""
    frames_lost = played.sent['image'] - counts['face_crop'].get('frames', 0)
    # A replay (faster than real time especially) is only faithful while the nodes keep up:
    # no frame lost, no input arriving after its segment was given up. (The player falling
    # behind its schedule on a loaded machine only bunches messages up; it is reported as
    # player_behind_max_s.)
    late = counts['fusion'].get('late', 0)
    kept_up = frames_lost == 0 and late == 0
    if not kept_up:
        print(f'eval-bag --live: the nodes did not keep up at rate {cfg.rate} (late {late}, '
              f'frames lost {frames_lost}); lower --rate', file=sys.stderr)
    return kept_up, frames_lost


def _face_positions(cfg: EvalConfig, topics: bags.BagTopics, snap) -> dict:
    """Per face id the x centres of its face_crops, and the frame width: what per-person
    scoring tells the people apart by."""
    centres: dict[str, list[float]] = {}
    for r in snap.face_crops:
        for f in r.msg.faces:
            centres.setdefault(f.id, []).append(f.roi.x_offset + f.roi.width / 2)
    first_image = next(m for m in bags.read_bag(cfg.bag, topics) if m.kind == 'image')
    return {'centres_x': centres, 'frame_width': first_image.data.shape[1]}
