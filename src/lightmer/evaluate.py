"""`lightmer eval-bag`: score a rosbag2 against a labels CSV, offline or through the live nodes.

Offline (default): the bag's camera and audio messages, in bag-time order, go through the same
message-free processors the nodes wrap (`lightmer.streaming`: FrameSelector -> FaceCropper ->
SegmentFuser, AudioSegmenter -> SegmentFuser) in one process, with no DDS. Deterministic.

Live (`--live`): the three node executables run as child processes with use_sim_time and
reliable inputs; this process plays the bag over DDS on loopback at `rate` x real time
(publishing /clock from the bag time before each message), records `emotion` and the nodes'
/diagnostics counts, and scores them the same way.

Definitions used in the report:
- A window's stamp is its last segment's reference time (the `emotion` header stamp); the window
  belongs to the labelled clip whose [start, end] contains the stamp; windows outside every
  clip are counted but not scored.
- Clip decision: argmax of the mean of the window probabilities of the clip's windows. A clip
  with no window counts as wrong (reported as `clips_without_windows`).
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
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightmer import bags
from lightmer.io_utils import atomic_save_json
from lightmer.ros.description import NODE_MODULES

CLIP_DECISION = 'argmax of the mean window probabilities over the windows stamped in the clip'


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
    anchor: str = 'centre'               # segment reference time: 'centre' | 'start'
    # Node settings; None takes the nodes' own default (lightmer.ros.params), so that offline
    # and live evaluate the system as deployed.
    policy: str | None = None            # missing modality: 'skip' | 'nearest'
    min_segments: int | None = None      # 0: all N
    wait_s: float | None = None          # how long a half-complete segment waits (stamp clock)
    nearest_max: int | None = None
    min_face_size: int | None = None     # MTCNN minimum face size in pixels
    gap_tolerance_s: float | None = None
    threads: int = 1                     # runtime threads (offline, and per node live)
    # Live only.
    rate: float = 1.0                    # playback speed, x real time
    emotion_topic: str = 'emotion'
    startup_timeout_s: float = 120.0     # nodes up, matched and holding the AudioInfo
    drain_timeout_s: float = 60.0        # after the last message, for the nodes to finish


@dataclass(frozen=True)
class NodeSettings:
    """The resolved settings both modes run with (EvalConfig values or the nodes' defaults)."""

    anchor: str
    policy: str
    min_segments: int
    wait_s: float
    nearest_max: int
    min_face_size: int
    gap_tolerance_s: float

    @classmethod
    def resolve(cls, cfg: EvalConfig) -> NodeSettings:
        from lightmer.ros.params import AudioFeatureParams, FaceCropParams, FusionParams

        fusion, face, audio = FusionParams(), FaceCropParams(), AudioFeatureParams()

        def pick(value, default):
            return default if value is None else value

        return cls(anchor=cfg.anchor, policy=pick(cfg.policy, fusion.missing_policy),
                   min_segments=pick(cfg.min_segments, fusion.min_segments),
                   wait_s=pick(cfg.wait_s, fusion.missing_wait_s),
                   nearest_max=pick(cfg.nearest_max, fusion.nearest_max_segments),
                   min_face_size=pick(cfg.min_face_size, face.min_face_size),
                   gap_tolerance_s=pick(cfg.gap_tolerance_s, audio.gap_tolerance_s))


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

    def to_dict(self) -> dict:
        return {'k_last': self.k_last, 'stamp_s': self.stamp_s, 'end_s': self.end_s,
                'probs': list(self.probs), 'publish_sim_s': self.publish_sim_s,
                'latency_sim_ms': self.latency_sim_ms, 'latency_wall_ms': self.latency_wall_ms}


@dataclass
class RunResult:
    windows: list[WindowRecord] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)    # segments dropped, per reason
    extra: dict = field(default_factory=dict)


# --- scoring (pure) ------------------------------------------------------------------------
def check_labels(rows: list[bags.LabelRow], labels: tuple[str, ...], source='the labels CSV'):
    unknown = sorted({r.label for r in rows} - set(labels))
    if unknown:
        raise ValueError(f'{source} names {unknown}, which the checkpoint does not predict '
                         f'(it knows {list(labels)}); fix the CSV or use a matching checkpoint')


def assign_clips(stamps_s: np.ndarray, rows: list[bags.LabelRow]) -> np.ndarray:
    """int (M,) index of the row whose [start, end] contains each stamp, -1 for none."""
    out = np.full(len(stamps_s), -1, dtype=np.int64)
    for i, t in enumerate(np.asarray(stamps_s, dtype=np.float64)):
        for j, r in enumerate(rows):
            if r.start <= t <= r.end:
                out[i] = j
                break
    return out


def score(stamps_s: np.ndarray, probs: np.ndarray, rows: list[bags.LabelRow],
          labels: tuple[str, ...]) -> dict:
    """Window- and clip-level accuracy and confusion matrices.

    stamps_s: float (M,) window stamps; probs: float (M, C); rows: labelled clips whose label is
    one of `labels` (the checkpoint's classes, in output order).
    """
    from lightmer.plots import confusion_matrix

    probs = np.asarray(probs, dtype=np.float64).reshape(len(stamps_s), len(labels))
    check_labels(rows, labels)
    index = {name: i for i, name in enumerate(labels)}
    clip_of = assign_clips(stamps_s, rows)
    scored = clip_of >= 0
    true_w = np.array([index[rows[j].label] for j in clip_of[scored]], dtype=np.int64)
    pred_w = probs[scored].argmax(axis=1) if scored.any() else np.zeros(0, np.int64)
    true_c, pred_c, no_window = [], [], 0
    for j, r in enumerate(rows):
        mine = probs[clip_of == j]
        true_c.append(index[r.label])
        if len(mine):
            pred_c.append(int(mine.mean(axis=0).argmax()))
        else:
            no_window += 1
            pred_c.append(-1)                     # no decision: wrong by construction
    true_c_a, pred_c_a = np.array(true_c), np.array(pred_c)
    decided = pred_c_a >= 0
    n_classes = len(labels)
    return {
        'windows': int(len(stamps_s)),
        'windows_scored': int(scored.sum()),
        'windows_outside_clips': int((~scored).sum()),
        'window_accuracy': float((true_w == pred_w).mean()) if len(true_w) else None,
        'clips': len(rows),
        'clips_without_windows': no_window,
        'clip_accuracy': float((true_c_a == pred_c_a).mean()) if rows else None,
        'clip_decision': CLIP_DECISION,
        'confusion_windows': confusion_matrix(true_w, pred_w, n_classes).tolist(),
        'confusion_clips': confusion_matrix(true_c_a[decided], pred_c_a[decided],
                                            n_classes).tolist(),
    }


def _percentiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {'p50': None, 'p95': None, 'max': None, 'n': 0}   # JSON has no NaN
    return {'p50': float(np.percentile(v, 50)), 'p95': float(np.percentile(v, 95)),
            'max': float(v.max()), 'n': int(v.size)}


# --- offline replay ------------------------------------------------------------------------
def stamp_seconds(stamp_ns: int) -> float:
    """Integer nanoseconds -> seconds exactly as the nodes read a header stamp."""
    from lightmer.ros.conversions import stamp_to_seconds

    return stamp_to_seconds(*divmod(int(stamp_ns), 1_000_000_000))


class OfflinePipeline:
    """The three nodes' processing chain over numpy, in one thread, in message order.

    push_image / push_audio take the header stamp in seconds and return the windows that the
    message completed, as streaming.WindowResult.
    """

    def __init__(self, model_path, settings: NodeSettings, threads: int = 1):
        from lightmer.backend import face_cropper, load_model
        from lightmer.streaming import AudioSegmenter, FrameSelector, SegmentFuser

        # The checkpoint on torch or the ONNX export on onnxruntime, as the nodes run it.
        model = load_model(model_path, threads)
        meta = model.meta
        segment_s, n = meta.segment_s, meta.n_segments
        self.selector = FrameSelector(segment_s, settings.anchor)
        self.segmenter = AudioSegmenter(meta.features, segment_s, settings.anchor,
                                        settings.gap_tolerance_s)
        self.cropper = face_cropper(model_path, settings.min_face_size, threads)
        self.fuser = SegmentFuser(model.segment_logits, model.fuse, n, segment_s,
                                  settings.anchor,
                                  min_segments=settings.min_segments or n,
                                  policy=settings.policy, wait_s=settings.wait_s,
                                  nearest_max=settings.nearest_max)
        self.no_face = 0

    def push_image(self, t: float, frame: np.ndarray) -> list:
        out = []
        for _k, t_frame, chosen in self.selector.push(t, frame):
            (crop,) = self.cropper([chosen])          # uint8 (98, 80) or None
            if crop is None:
                self.no_face += 1
            else:
                out.extend(self.fuser.push_face(t_frame, crop, bags.CAMERA_FRAME))
        return out

    def push_audio(self, t: float, samples: np.ndarray, sr: int) -> list:
        out = []
        for _k, t_ref, mel in self.segmenter.push(t, samples, sr):
            out.extend(self.fuser.push_mel(t_ref, mel))
        return out

    def dropped(self) -> dict[str, int]:
        f, a = self.fuser.counts, self.segmenter.counts
        return {'no_face': self.no_face, 'audio_gap': a.gaps,
                'unpaired_after_wait': f.dropped, 'late': f.late, 'duplicate': f.duplicates,
                'reset': f.resets + a.resets + self.selector.resets, 'rejected': 0}


def run_offline(cfg: EvalConfig, meta, settings: NodeSettings,
                topics: bags.BagTopics) -> RunResult:
    half = meta.features.window_s / 2
    pipe = OfflinePipeline(cfg.checkpoint, settings, cfg.threads)
    result = RunResult()
    n_msgs = 0
    for msg in _progress(bags.read_bag(cfg.bag, topics), 'eval-bag offline'):
        n_msgs += 1
        t = stamp_seconds(msg.stamp_ns)
        t0 = time.perf_counter()
        if msg.kind == 'image':
            done = pipe.push_image(t, msg.data)
        else:
            done = pipe.push_audio(t, msg.data, msg.sample_rate)
        compute_ms = (time.perf_counter() - t0) * 1e3
        publish_s = msg.t_ns / 1e9
        for w in done:
            end_s = w.t_ref + half
            sim_ms = (publish_s - end_s) * 1e3
            result.windows.append(WindowRecord(
                w.k_last, w.t_ref, end_s, tuple(float(p) for p in w.probs), publish_s, sim_ms,
                sim_ms + compute_ms))
    result.dropped = pipe.dropped()
    result.extra = {'messages': n_msgs, 'model_calls': pipe.fuser.counts.model_calls}
    return result


# --- live replay through the three nodes over DDS ------------------------------------------
DIAGNOSTICS_PERIOD_S = 0.5


def loopback_env(base: dict | None = None) -> dict:
    """An environment whose DDS traffic stays on this machine's loopback."""
    env = dict(os.environ if base is None else base)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_LOCALHOST_ONLY'] = '1'
    return env


def _node_params(cfg: EvalConfig, settings: NodeSettings) -> dict:
    """ROS parameter YAML content for the three nodes: sim time, the checkpoint, the same
    settings as offline, and reliable inputs deep enough that no message of the replay is
    dropped (a sensor-data subscription may drop frames, which offline never does)."""
    common = {'use_sim_time': True, 'model_path': str(Path(cfg.checkpoint).resolve()),
              'reference': settings.anchor, 'torch_threads': cfg.threads,
              'diagnostics_period_s': DIAGNOSTICS_PERIOD_S}
    return {
        '/**': {'ros__parameters': common},
        '/face_crop': {'ros__parameters': {'qos_reliability': 'reliable', 'qos_depth': 100,
                                           'min_face_size': settings.min_face_size}},
        '/audio_feature': {'ros__parameters': {'qos_reliability': 'reliable',
                                               'qos_depth': 500,
                                               'gap_tolerance_s': settings.gap_tolerance_s}},
        '/fusion': {'ros__parameters': {'missing_policy': settings.policy,
                                        'min_segments': settings.min_segments,
                                        'missing_wait_s': settings.wait_s,
                                        'nearest_max_segments': settings.nearest_max,
                                        'queue_depth': 100}},
    }


class _NodeProcesses:
    """The three node executables as child processes, logs in `log_dir`."""

    def __init__(self, cfg: EvalConfig, settings: NodeSettings, topics: bags.BagTopics,
                 log_dir: Path, compressed: bool = False):
        import yaml

        log_dir.mkdir(parents=True, exist_ok=True)
        params = log_dir / 'params.yaml'
        node_params = _node_params(cfg, settings)
        node_params['/face_crop']['ros__parameters']['compressed_input'] = compressed
        params.write_text(yaml.safe_dump(node_params, sort_keys=True))
        camera = 'image/compressed' if compressed else 'image'
        remaps = {'face_crop': [f'{camera}:={topics.image}'],
                  'audio_feature': [f'audio:={topics.audio}',
                                    f'audio_info:={topics.audio_info}'],
                  'fusion': [f'emotion:={cfg.emotion_topic}']}
        env = loopback_env()
        self.logs = {name: log_dir / f'{name}.log' for name in NODE_MODULES}
        self.procs: dict[str, subprocess.Popen] = {}
        for name, module in NODE_MODULES.items():
            args = [sys.executable, '-m', module, '--ros-args', '--params-file', str(params)]
            for remap in remaps[name]:
                args += ['-r', remap]
            with open(self.logs[name], 'wb') as log:
                self.procs[name] = subprocess.Popen(args, env=env, stdout=log,
                                                    stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f'the {name} node exited with status {proc.returncode}:\n'
                                   + self.tail(name))

    def tail(self, name: str, lines: int = 15) -> str:
        text = self.logs[name].read_text(encoding='utf-8', errors='replace')
        return '\n'.join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)       # rclpy shuts down cleanly on SIGINT
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Recorder:
    """Records `emotion` (with sim and wall arrival times) and the nodes' /diagnostics."""

    def __init__(self, node, emotion_topic: str, labels: tuple[str, ...]):
        from diagnostic_msgs.msg import DiagnosticArray
        from vision_msgs.msg import Classification

        from lightmer.ros.conversions import diagnostics_counts
        from lightmer.ros.qos import output_qos

        self._node = node
        self._labels = labels
        self._counts_of = diagnostics_counts
        self.lock = threading.Lock()
        self.emotions: list[tuple[int, tuple[float, ...], int, float]] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        node.create_subscription(Classification, emotion_topic, self.emotion_callback,
                                 output_qos(1000))
        node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics_callback,
                                 100)

    def emotion_callback(self, msg) -> None:
        wall = time.monotonic()
        sim_ns = self._node.get_clock().now().nanoseconds
        scores = {h.class_id: h.score for h in msg.results}
        probs = tuple(float(scores.get(label, math.nan)) for label in self._labels)
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.emotions.append((stamp_ns, probs, sim_ns, wall))

    def diagnostics_callback(self, msg) -> None:
        with self.lock:
            self.diagnostics.update(self._counts_of(msg))

    def count(self, node_name: str, key: str) -> int | None:
        with self.lock:
            value = self.diagnostics.get(f'/{node_name}', {}).get(key)
        return None if value is None else int(float(value))

    def value(self, node_name: str, key: str) -> str | None:
        with self.lock:
            return self.diagnostics.get(f'/{node_name}', {}).get(key)


def _wait_for(condition, timeout_s: float, what: str, nodes: _NodeProcesses) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        nodes.check_alive()
        if time.monotonic() > deadline:
            logs = '\n'.join(f'--- {n}:\n{nodes.tail(n)}' for n in NODE_MODULES)
            raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what}; '
                               f'node logs:\n{logs}')
        time.sleep(0.05)


def run_live(cfg: EvalConfig, meta, settings: NodeSettings, topics: bags.BagTopics,
             info: bags.BagInfo) -> RunResult:
    """Play the bag to the three node processes over loopback DDS with sim time; record
    `emotion`. Raises TimeoutError/RuntimeError with the nodes' log tails when they fail."""
    import tempfile

    if not cfg.rate > 0:
        raise ValueError(f'rate must be positive, got {cfg.rate}')
    # This process speaks DDS too: keep it on loopback like the nodes.
    os.environ.update({k: v for k, v in loopback_env().items() if k.startswith('ROS_')})
    with tempfile.TemporaryDirectory(prefix='lightmer-eval-') as tmp:
        log_dir = Path(cfg.out) / 'nodes' if cfg.out is not None else Path(tmp)
        nodes = _NodeProcesses(cfg, settings, topics, log_dir, info.image_compressed)
        try:
            return _play_and_record(cfg, meta, topics, info, nodes)
        finally:
            nodes.stop()


def _play_and_record(cfg, meta, topics, info, nodes: _NodeProcesses) -> RunResult:
    import rclpy
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from lightmer.ros.common import close_own_participant, node_with_own_participant
    from lightmer.ros.conversions import float_to_time
    from lightmer.ros.qos import latched_qos
    from lightmer.streaming import segment_of_reference

    started = time.monotonic()
    mic = None
    ctx = Context()
    rclpy.init(args=[], context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    try:
        player = rclpy.create_node('lightmer_bag_player', context=ctx)
        rec_node = rclpy.create_node(
            'lightmer_emotion_recorder', context=ctx,
            parameter_overrides=[Parameter('use_sim_time', Parameter.Type.BOOL, True)])
        recorder = _Recorder(rec_node, cfg.emotion_topic, meta.labels)
        executor.add_node(rec_node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()

        def reliable(depth):
            return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)

        clock_pub = player.create_publisher(Clock, '/clock', reliable(10))
        # The bag's audio goes out from a participant of its own, as a microphone driver's
        # would (node_with_own_participant says what sharing one with the camera cost).
        mic = node_with_own_participant('lightmer_bag_player_audio')
        camera_type = CompressedImage if info.image_compressed else Image
        pubs = {topics.image: player.create_publisher(camera_type, topics.image, reliable(100)),
                topics.audio: mic.create_publisher(AudioDataStamped, topics.audio,
                                                   reliable(500)),
                topics.audio_info: mic.create_publisher(AudioInfo, topics.audio_info,
                                                        latched_qos())}

        def publish_clock(t_ns: int) -> None:
            clock_pub.publish(Clock(clock=float_to_time(stamp_seconds(t_ns))))

        messages = bags.iter_raw(cfg.bag, topics)
        first = next(messages)                     # (topic, msgtype, t_ns, raw)
        publish_clock(first[2])
        for topic, _, _, raw in bags.iter_raw(cfg.bag, topics):
            if topic == topics.audio_info:         # latched: the audio node gets it on match
                pubs[topic].publish(raw)
                break

        def ready() -> bool:
            return (pubs[topics.image].get_subscription_count() >= 1
                    and pubs[topics.audio].get_subscription_count() >= 1
                    and rec_node.count_publishers(cfg.emotion_topic) >= 1
                    and recorder.value('audio_feature', 'format') not in (None, 'none')
                    and recorder.count('fusion', 'windows') is not None
                    and recorder.count('face_crop', 'frames') is not None)

        _wait_for(ready, cfg.startup_timeout_s, 'the nodes to start, match and read the '
                  'AudioInfo', nodes)
        startup_s = time.monotonic() - started

        sent = {topics.image: 0, topics.audio: 0, topics.audio_info: 0}
        played_t: list[int] = []
        played_wall: list[float] = []
        behind_s = 0.0
        wall0 = time.monotonic()
        t_first = first[2]
        for topic, _, t_ns, raw in _progress(_chain(first, messages), 'eval-bag live'):
            target = wall0 + (t_ns - t_first) / 1e9 / cfg.rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                behind_s = max(behind_s, -delay)
            publish_clock(t_ns)
            pubs[topic].publish(raw)
            sent[topic] += 1
            played_t.append(t_ns - t_first)
            played_wall.append(time.monotonic())
        play_s = time.monotonic() - wall0

        # Done when the face node has taken every frame, the fusion node has published what
        # we received, and nothing changed for a few diagnostics periods.
        state = {'last': None, 'since': time.monotonic()}

        def drained() -> bool:
            snapshot = (recorder.count('face_crop', 'frames'),
                        recorder.count('audio_feature', 'published'),
                        recorder.count('fusion', 'used'), recorder.count('fusion', 'windows'),
                        len(recorder.emotions))
            if snapshot != state['last']:
                state['last'], state['since'] = snapshot, time.monotonic()
                return False
            quiet = time.monotonic() - state['since'] > 4 * DIAGNOSTICS_PERIOD_S
            frames, _, _, windows, received = snapshot
            all_frames = frames is not None and frames >= sent[topics.image]
            return quiet and windows == received and (
                all_frames or time.monotonic() - state['since'] > 10 * DIAGNOSTICS_PERIOD_S)

        _wait_for(drained, cfg.drain_timeout_s, 'the nodes to finish the replay', nodes)
        drain_s = time.monotonic() - wall0 - play_s

        half = meta.features.window_s / 2
        played_t_s = np.asarray(played_t, dtype=np.float64) / 1e9
        with recorder.lock:
            emotions = list(recorder.emotions)
        result = RunResult()
        for stamp_ns, probs, sim_ns, wall in sorted(emotions):
            stamp = stamp_seconds(stamp_ns)
            end_s = stamp + half
            end_rel = (stamp_ns - t_first) / 1e9 + half
            wall_end = float(np.interp(end_rel, played_t_s, played_wall))
            result.windows.append(WindowRecord(
                segment_of_reference(stamp, meta.segment_s, cfg.anchor), stamp, end_s, probs,
                sim_ns / 1e9, (sim_ns / 1e9 - end_s) * 1e3, (wall - wall_end) * 1e3))
        count = recorder.count
        result.dropped = {
            'no_face': count('face_crop', 'no_face') or 0,
            'audio_gap': count('audio_feature', 'audio_gap') or 0,
            'unpaired_after_wait': count('fusion', 'dropped') or 0,
            'late': count('fusion', 'late') or 0,
            'duplicate': count('fusion', 'duplicates') or 0,
            'reset': sum(count(n, 'resets') or 0 for n in NODE_MODULES),
            'rejected': sum(count(n, 'rejected') or 0 for n in NODE_MODULES),
            'frames_lost': sent[topics.image] - (count('face_crop', 'frames') or 0),
        }
        # A replay (faster than real time especially) is only faithful while the nodes keep
        # up: no frame lost, no input arriving after its segment was given up. (The player
        # falling behind its schedule on a loaded machine only bunches messages up; it is
        # reported as player_behind_max_s.)
        kept_up = result.dropped['frames_lost'] == 0 and result.dropped['late'] == 0
        if not kept_up:
            print(f'eval-bag --live: the nodes did not keep up at rate {cfg.rate} (late '
                  f"{result.dropped['late']}, frames lost {result.dropped['frames_lost']}); "
                  'lower --rate', file=sys.stderr)
        result.extra = {'messages': sum(sent.values()), 'rate': cfg.rate, 'kept_up': kept_up,
                        'startup_s': startup_s, 'play_wall_s': play_s, 'drain_s': drain_s,
                        'player_behind_max_s': behind_s,
                        'model_calls': count('fusion', 'used')}
        return result
    finally:
        executor.shutdown()
        if mic is not None:
            close_own_participant(mic)
        rclpy.try_shutdown(context=ctx)


def _chain(first, rest):
    yield first
    yield from rest


def _progress(items, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit='msg', disable=None)


# --- entry point ---------------------------------------------------------------------------
def evaluate_bag(cfg: EvalConfig) -> dict:
    """Replay `cfg.bag`, score the windows against `cfg.labels`; returns the summary dict that
    is also written to `<out>/eval.json` (with windows.json, confusion.png, latency.png)."""
    from lightmer.backend import read_meta

    settings = NodeSettings.resolve(cfg)
    topics = bags.BagTopics(cfg.image_topic, cfg.audio_topic, cfg.audio_info_topic)
    info = bags.bag_info(cfg.bag, topics)            # clear errors before any heavy loading
    topics = dataclasses.replace(topics, image=info.image_topic)   # may be its /compressed
    rows = bags.read_labels(cfg.labels, info.start_s)
    meta = read_meta(cfg.checkpoint)              # a checkpoint or an ONNX export
    check_labels(rows, meta.labels, str(cfg.labels))
    t0 = time.perf_counter()
    if cfg.live:
        run = run_live(cfg, meta, settings, topics, info)
    else:
        run = run_offline(cfg, meta, settings, topics)
    elapsed = time.perf_counter() - t0

    stamps = np.array([w.stamp_s for w in run.windows])
    probs = np.array([w.probs for w in run.windows]).reshape(len(run.windows), len(meta.labels))
    summary = score(stamps, probs, rows, meta.labels)
    summary.update({
        'mode': 'live' if cfg.live else 'offline',
        'bag': str(cfg.bag), 'labels_csv': str(cfg.labels), 'checkpoint': str(cfg.checkpoint),
        'labels': list(meta.labels), 'segment_s': meta.segment_s,
        'n_segments': meta.n_segments, 'settings': dataclasses.asdict(settings),
        'bag_duration_s': (info.end_ns - info.start_ns) / 1e9, 'elapsed_s': elapsed,
        'latency_ms': _percentiles([w.latency_wall_ms for w in run.windows]),
        'latency_sim_ms': _percentiles([w.latency_sim_ms for w in run.windows]),
        'latency_definition': 'publish time minus window end (last segment stamp + d/2); '
                              'latency_ms in wall time, latency_sim_ms in bag time',
        'segments_dropped': run.dropped,
        **run.extra,
    })
    if cfg.out is not None:
        _write_outputs(Path(cfg.out), summary, run, meta.labels)
    return summary


def _write_outputs(out: Path, summary: dict, run: RunResult, labels) -> None:
    from lightmer.plots import plot_confusion, plot_latency

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
