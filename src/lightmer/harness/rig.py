"""The nodes as a robot runs them, driven and watched from one process.

The one harness behind `eval-bag --live`, `lightmer bench` and the node tests:

- `NodeProcesses` starts the three node executables as child processes from the one node
  description (`description.resolve` and `NodeInvocation.ros_args`: the command line launch_ros
  builds), with logs in files, and stops them with SIGINT as a terminal would; one node can be
  killed and started again (recovery).
- `Rig` stands in for the robot around the nodes: a camera (Image or CompressedImage), a
  microphone (AudioDataStamped and a latched AudioInfo, from a DDS participant of its own, as a
  separate driver process has), /clock, all published with one QoS policy (`sensor_qos`); and
  subscriptions recording everything lightmer publishes (emotion-like topics,
  emotion/label_info, /diagnostics, face_crop, log_mel) with their arrival times. It holds the
  one readiness rule (`wait_ready`) and plays timed streams of sensor messages (`play`).
- `sensor_events` turns frames and audio into such a stream.

DDS stays on loopback: the children get `loopback_env()`; this process must already be set up
that way (`require_loopback`), which `lightmer`'s DDS commands and the test suite do.
"""
from __future__ import annotations

import dataclasses
import heapq
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rclpy
import yaml
from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray
from hri_msgs.msg import Expression, IdsList
from lightmer_msgs.msg import FaceCrops
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from tqdm import tqdm
from vision_msgs.msg import Classification, LabelInfo

from lightmer.core.atomic_io import atomic_write_text
from lightmer.core.messages import (
    ConversionError,
    check_face_id,
    diagnostics_counts,
    time_to_float,
)
from lightmer.ros.common import close_own_participant, node_with_own_participant
from lightmer.ros.conversions import float_to_time
from lightmer.ros.description import NODES, defaults, resolve
from lightmer.ros.qos import latched_qos, output_qos


def loopback_variables(distro: str | None = None) -> dict[str, str]:
    """The environment variable that keeps DDS discovery on this machine, for the ROS 2
    distribution in use (`distro`, default $ROS_DISTRO; a pip install without it is Jazzy).

    Humble reads only ROS_LOCALHOST_ONLY; Iron and later read ROS_AUTOMATIC_DISCOVERY_RANGE and
    warn on every start that ROS_LOCALHOST_ONLY is deprecated, so exactly one is set.
    """
    distro = os.environ.get('ROS_DISTRO', '') if distro is None else distro
    if distro.strip().lower() == 'humble':
        return {'ROS_LOCALHOST_ONLY': '1'}
    return {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}


# See the README, "DDS stays on loopback" (scripts/loopback.sh applies the same rule).
LOOPBACK = loopback_variables()
# History of every sensor publisher, in messages: 3 s of a 30 fps camera or of 32 ms audio
# chunks. A reliable reader that falls behind is repaired from it; a shorter history loses
# what a busy reader has not acknowledged yet.
SENSOR_HISTORY = 100
NODE_NAMES = tuple(n.name for n in NODES)


def loopback_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: this process's environment) for child processes: DDS on
    loopback, one OpenMP thread (the nodes set their torch threads themselves)."""
    env = dict(os.environ if base is None else base)
    env.update(LOOPBACK)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def require_loopback() -> None:
    """Raise RuntimeError unless this process's own DDS traffic stays on loopback."""
    if not any(os.environ.get(k) == v for k, v in LOOPBACK.items()):
        raise RuntimeError('this process would send DDS discovery beyond this machine: run it '
                           'under scripts/loopback.sh, or set ROS_AUTOMATIC_DISCOVERY_RANGE='
                           'LOCALHOST before anything starts rclpy')


def sensor_qos(reliable: bool = True):
    """The QoS of every sensor the rig publishes: keep last SENSOR_HISTORY, reliable (nothing
    of a replay may be lost, as offline nothing is) unless a test asks for best effort."""
    return QoSProfile(depth=SENSOR_HISTORY, reliability=ReliabilityPolicy.RELIABLE
                      if reliable else ReliabilityPolicy.BEST_EFFORT)


# --- node processes --------------------------------------------------------------------------
class NodeProcesses:
    """The three node executables as child processes of this one.

    Args:
        launch_args: launch arguments as `ros2 launch` takes them (`model`, `use_sim_time`,
            `camera_topic`, ...); `params_file` is this object's own when `params` is given.
        log_dir: where `<node>.log` (stdout and stderr) and `params.yaml` go.
        params: ROS parameter file content ({'/**': {'ros__parameters': {...}}, ...}).
        remappings: node name -> extra (from, to) remappings, after the launch file's.
    """

    def __init__(self, launch_args: Mapping[str, str], log_dir: Path,
                 params: Mapping | None = None,
                 remappings: Mapping[str, Iterable[tuple[str, str]]] | None = None):
        self.log_dir = Path(log_dir)
        args = dict(launch_args)
        if params is not None:
            path = atomic_write_text(self.log_dir / 'params.yaml',
                                     yaml.safe_dump(dict(params), sort_keys=True))
            args['params_file'] = str(path)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        extra = remappings or {}
        self.invocations = {inv.name: dataclasses.replace(
            inv, remappings=inv.remappings + tuple(extra.get(inv.name, ())))
            for inv in resolve(args)}
        self.env = loopback_env()
        self.procs: dict[str, subprocess.Popen] = {}
        for name in self.invocations:
            self.start(name)

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f'{name}.log'

    def start(self, name: str) -> None:
        """Start node `name` (again): the launch_ros command line, output appended to its log
        (a file, not a pipe, which a chatty node could fill and block on)."""
        inv = self.invocations[name]
        cmd = [sys.executable, '-m', 'lightmer.ros.start', inv.executable, *inv.ros_args()]
        with open(self.log_path(name), 'a', encoding='utf-8') as log:
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT)

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> int:
        """Send `sig` to node `name` and wait for it to end; returns its exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout=timeout_s)

    def restart(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Kill node `name` with `sig` and start it again (a crash and a respawn); returns the
        exit status it ended with."""
        status = self.kill(name, sig)
        self.start(name)
        return status

    def check_alive(self) -> None:
        """Raise RuntimeError naming the first node process that has ended, with its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f'node {name} exited with status {proc.returncode}; its '
                                   f'log ends:\n{self.tail(name)}')

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.log_path(name)
        text = path.read_text(encoding='utf-8', errors='replace') if path.exists() else ''
        return '\n'.join(text.splitlines()[-lines:])

    def tails(self) -> str:
        return '\n'.join(f'--- {name}:\n{self.tail(name)}' for name in self.procs)

    def memory_mb(self) -> dict[str, dict[str, float]]:
        """Per node: resident memory now (rss_mb) and its peak (peak_mb), from /proc."""
        out = {}
        for name, proc in self.procs.items():
            fields = {}
            with open(f'/proc/{proc.pid}/status', encoding='ascii') as f:
                for line in f:
                    key, _, value = line.partition(':')
                    if key in ('VmRSS', 'VmHWM'):
                        fields[key] = int(value.split()[0]) / 1024
            out[name] = {'rss_mb': round(fields['VmRSS'], 1),
                         'peak_mb': round(fields['VmHWM'], 1)}
        return out

    def stop(self, timeout_s: float = 20.0) -> dict[str, int]:
        """SIGINT to every node (as Ctrl-C in a terminal), then SIGKILL to what is left after
        `timeout_s`; returns each exit status."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {name: proc.returncode for name, proc in self.procs.items()}


# --- sensor streams --------------------------------------------------------------------------
class Event(NamedTuple):
    """One sensor message of a timed stream."""

    t_s: float      # when it is published, in the stream's clock (capture / bag time), seconds
    kind: str       # 'image', 'audio' or 'info'
    msg: Any        # the message, or its serialized CDR bytes (a bag's)


def image_msg(t: float, frame: np.ndarray, frame_id: str = 'camera', encoding: str = 'rgb8'):
    """uint8 (H, W, 3) or (H, W) -> sensor_msgs/Image stamped `t` seconds."""
    channels = frame.shape[2] if frame.ndim == 3 else 1
    msg = Image(header=Header(stamp=float_to_time(t), frame_id=frame_id),
                height=frame.shape[0], width=frame.shape[1], encoding=encoding,
                is_bigendian=0, step=frame.shape[1] * channels)
    msg.data = np.ascontiguousarray(frame).tobytes()
    return msg


def audio_msg(t: float, pcm: bytes, frame_id: str = 'microphone'):
    """PCM bytes -> audio_common_msgs/AudioDataStamped whose first sample is at `t` seconds."""
    return AudioDataStamped(header=Header(stamp=float_to_time(t), frame_id=frame_id),
                            audio=AudioData(data=pcm))


def info_msg(sample_format: str = 'S16LE', rate: int = 16000, channels: int = 1,
             coding: str = 'wave'):
    """audio_common_msgs/AudioInfo as audio_capture publishes it in wave mode."""
    return AudioInfo(channels=channels, sample_rate=rate, sample_format=sample_format,
                     bitrate=0, coding_format=coding)


def sensor_events(frames: Iterable[tuple[float, np.ndarray]], audio_t0: float,
                  audio: np.ndarray, sr: int, chunk: int,
                  frame_id: str = 'camera') -> Iterator[Event]:
    """A camera and a microphone as one stream, in publication order.

    Args:
        frames: (stamp seconds, uint8 (H, W, 3) RGB) in stamp order; published at their stamp.
        audio_t0: stamp of audio[0], seconds. audio: int16 (n,) mono at `sr` Hz, cut into
            `chunk`-sample messages, each published when its last sample is captured.
    Messages are built lazily, so a long stream costs no memory.
    """
    def images():
        for t, frame in frames:
            yield Event(t, 'image', (t, frame))

    def chunks():
        for s in range(0, len(audio), chunk):
            piece = audio[s:s + chunk]
            yield Event(audio_t0 + (s + len(piece)) / sr, 'audio',
                        (audio_t0 + s / sr, piece))

    for t, kind, (stamp, data) in heapq.merge(images(), chunks(), key=lambda e: e.t_s):
        msg = (image_msg(stamp, data, frame_id) if kind == 'image'
               else audio_msg(stamp, data.astype('<i2').tobytes()))
        yield Event(t, kind, msg)


@dataclass(frozen=True)
class Played:
    """What `Rig.play` sent: counts per kind and, per message, its stream and wall times."""

    sent: dict[str, int]
    t_s: np.ndarray           # float64 (M,) stream time of each message
    wall_s: np.ndarray        # float64 (M,) time.time() when it was published
    behind_max_s: float       # how far the player fell behind its schedule (a loaded machine)


class WallClockSensors:
    """A camera and a microphone running on the wall clock, stamped with it, as live drivers
    are: `play(seconds, fps)` sends that much of a still `frame` (uint8 (H, W, 3)) and of quiet
    noise (S16LE mono, `chunk` samples a message). The microphone's timeline runs on across
    calls, as a real one does (restarting it at `now` could step back behind the last chunk)."""

    def __init__(self, rig: Rig, frame: np.ndarray, sr: int = 16000, chunk: int = 512):
        self.rig = rig
        self.frame = frame
        self.sr = sr
        self.chunk = chunk
        self.frames_sent = 0
        self.audio_end = 0.0                  # stamp of the end of the last chunk sent
        self._rng = np.random.default_rng(0)

    def play(self, seconds: float, fps: float) -> Played:
        t0 = time.time()
        frames = ((t0 + i / fps, self.frame) for i in range(int(seconds * fps)))
        audio_t0 = max(self.audio_end, t0)
        n = int((t0 + seconds - audio_t0) * self.sr) // self.chunk * self.chunk
        noise = self._rng.normal(0, 3000, n).clip(-32768, 32767).astype('<i2')
        played = self.rig.play(sensor_events(frames, audio_t0, noise, self.sr, self.chunk))
        self.audio_end = audio_t0 + n / self.sr
        self.frames_sent += played.sent['image']
        return played

    def warm_up(self, timeout_s: float = 90.0) -> None:
        """Play until the first emotion message comes back: models warm, every path
        connected."""
        deadline = time.monotonic() + timeout_s
        while not self.rig.snapshot().emotion:
            if time.monotonic() > deadline:
                raise TimeoutError(f'no emotion message within {timeout_s:.0f} s of playing')
            self.play(1.0, 30.0)


# --- the rig ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topics:
    """Where the rig's camera and microphone publish (defaults: the launch file's)."""

    image: str = defaults()['camera_topic']
    audio: str = defaults()['audio_topic']
    audio_info: str = defaults()['audio_info_topic']

    def launch_args(self) -> dict[str, str]:
        return {'camera_topic': self.image, 'audio_topic': self.audio,
                'audio_info_topic': self.audio_info}


@dataclass(frozen=True)
class Received:
    """One message lightmer published, as the rig received it."""

    msg: Any
    topic: str
    wall_s: float       # time.time() at arrival
    clock_s: float      # the rig node's clock at arrival: /clock time under use_sim_time


@dataclass
class Outputs:
    emotion: list[Received] = field(default_factory=list)     # every emotion-like topic
    label_info: list[Received] = field(default_factory=list)
    crops: list[Received] = field(default_factory=list)       # face_crop
    mels: list[Received] = field(default_factory=list)        # log_mel
    diagnostics: dict[str, dict[str, str]] = field(default_factory=dict)
    # ^ status name (node FQN) -> its latest key/values, and '_message' (the problem text)
    first_seen: dict[str, float] = field(default_factory=dict)
    # ^ status name -> time.time() of its first /diagnostics (a node reports once it is built)
    # Several people (Rig(people=...)): face_crops (FaceCrops), <prefix>/tracked (IdsList),
    # and per face id its <prefix>/<id>/emotion (Classification) and /expression.
    face_crops: list[Received] = field(default_factory=list)
    tracked: list[Received] = field(default_factory=list)
    person_emotion: dict[str, list[Received]] = field(default_factory=dict)
    person_expression: dict[str, list[Received]] = field(default_factory=dict)

    def counts(self, node: str) -> dict[str, int]:
        """The numeric counters of node `node` (FQN) in its latest /diagnostics."""
        out = {}
        for key, value in self.diagnostics.get(node, {}).items():
            try:
                out[key] = int(float(value))
            except ValueError:
                continue                      # 'format', '_message'
        return out


class Rig:
    """Camera, microphone and /clock publishers, and recorders of lightmer's outputs.

    Args:
        context: an initialised rclpy Context to share (the nodes' own, in-process); default:
            a context of the rig's own, shut down by `close()`.
        namespace: the nodes' namespace; output topics and node names are taken under it.
        topics: the sensor topics. emotion_topics: emotion-like outputs to record (relative
            names resolve under `namespace`).
        compressed: the camera publishes sensor_msgs/CompressedImage.
        camera_reliable, audio_reliable: best effort where False (`sensor_qos`).
        own_mic_participant: the microphone publishes from a DDS participant of its own, as
            a separate driver process does; False puts camera and microphone in one
            participant, as `ros2 bag play` does.
        use_sim_time: the rig's clock (arrival `clock_s`) follows /clock.
        nodes: the node processes, if the rig started them: waits then fail as soon as one
            dies, with its log.
        people: the ROS4HRI face prefix ('/humans/faces') when the nodes run with several
            people: the rig then records face_crops, <prefix>/tracked and, as face ids
            appear on face_crops, each id's emotion and expression topics.
    """

    def __init__(self, *, context=None, namespace: str = '', topics: Topics = Topics(),
                 emotion_topics: tuple[str, ...] = ('emotion',), compressed: bool = False,
                 camera_reliable: bool = True, audio_reliable: bool = True,
                 own_mic_participant: bool = True, use_sim_time: bool = False,
                 nodes: NodeProcesses | None = None, name: str = 'lightmer_rig',
                 people: str | None = None):
        require_loopback()
        self.nodes = nodes
        self.namespace = namespace.rstrip('/')
        self.people = people
        self._own_context = context is None
        if context is None:
            context = rclpy.Context()
            rclpy.init(args=[], context=context)
        self.context = context
        self._lock = threading.Lock()
        self._got = Outputs()
        self.node = rclpy.create_node(name, context=context, namespace=namespace or None,
                                      parameter_overrides=[Parameter(
                                          'use_sim_time', Parameter.Type.BOOL, use_sim_time)])
        self.mic = (node_with_own_participant(f'{name}_microphone')
                    if own_mic_participant else self.node)
        self._create_sensors(topics, compressed, camera_reliable, audio_reliable)
        self._emotion_topics = tuple(self.node.resolve_topic_name(t) for t in emotion_topics)
        self._create_recorders()
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _create_sensors(self, topics: Topics, compressed: bool, camera_reliable: bool,
                        audio_reliable: bool) -> None:
        """The camera and /clock on the rig's node; the microphone and its latched AudioInfo
        on `self.mic`."""
        n = self.node
        self.image_pub = n.create_publisher(CompressedImage if compressed else Image,
                                            topics.image, sensor_qos(camera_reliable))
        self.audio_pub = self.mic.create_publisher(AudioDataStamped, topics.audio,
                                                   sensor_qos(audio_reliable))
        self.info_pub = self.mic.create_publisher(AudioInfo, topics.audio_info, latched_qos())
        self.clock_pub = n.create_publisher(Clock, '/clock', sensor_qos())

    def _create_recorders(self) -> None:
        """Subscriptions to everything lightmer publishes (`Outputs`)."""
        n, people = self.node, self.people
        for topic in self._emotion_topics:
            n.create_subscription(Classification, topic, self._keeper('emotion', topic),
                                  output_qos(SENSOR_HISTORY))
        n.create_subscription(LabelInfo, 'emotion/label_info',
                              self._keeper('label_info', 'emotion/label_info'), latched_qos())
        if people:
            n.create_subscription(FaceCrops, 'face_crops', self._face_crops_callback,
                                  output_qos(SENSOR_HISTORY))
            n.create_subscription(IdsList, f'{people}/tracked',
                                  self._keeper('tracked', f'{people}/tracked'),
                                  output_qos(SENSOR_HISTORY))
        else:
            n.create_subscription(Image, 'face_crop', self._keeper('crops', 'face_crop'),
                                  output_qos(SENSOR_HISTORY))
        n.create_subscription(Image, 'log_mel', self._keeper('mels', 'log_mel'),
                              output_qos(SENSOR_HISTORY))
        n.create_subscription(DiagnosticArray, '/diagnostics', self._diagnostics_callback,
                              SENSOR_HISTORY)

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        if self.mic is not self.node:
            close_own_participant(self.mic)
        self.node.destroy_node()
        if self._own_context:
            rclpy.try_shutdown(context=self.context)

    # --- recording ---------------------------------------------------------------------------
    def _keeper(self, attr: str, topic: str) -> Callable:
        resolved = self.node.resolve_topic_name(topic)

        def callback(msg) -> None:
            got = Received(msg, resolved, time.time(),
                           self.node.get_clock().now().nanoseconds / 1e9)
            with self._lock:
                getattr(self._got, attr).append(got)
        return callback

    def _face_crops_callback(self, msg) -> None:
        """Record a FaceCrops and subscribe the per-person topics of ids not seen before."""
        self._keeper('face_crops', 'face_crops')(msg)
        for face in msg.faces:
            try:
                check_face_id(face.id)            # the fusion node refuses the others too
            except ConversionError:
                continue
            with self._lock:
                if face.id in self._got.person_emotion:
                    continue
                self._got.person_emotion[face.id] = []
                self._got.person_expression[face.id] = []
            base = f'{self.people}/{face.id}'
            for kind, topic, attr in ((Classification, f'{base}/emotion', 'person_emotion'),
                                      (Expression, f'{base}/expression', 'person_expression')):
                self.node.create_subscription(kind, topic,
                                              self._person_keeper(attr, face.id, topic),
                                              output_qos(SENSOR_HISTORY))

    def _person_keeper(self, attr: str, face_id: str, topic: str) -> Callable:
        def callback(msg) -> None:
            got = Received(msg, topic, time.time(),
                           self.node.get_clock().now().nanoseconds / 1e9)
            with self._lock:
                getattr(self._got, attr)[face_id].append(got)
        return callback

    def _diagnostics_callback(self, msg) -> None:
        counts = diagnostics_counts(msg)
        for status in msg.status:            # keep the problem text beside the counts
            counts[status.name]['_message'] = status.message
        now = time.time()
        with self._lock:
            self._got.diagnostics.update(counts)
            for name in counts:
                self._got.first_seen.setdefault(name, now)

    def snapshot(self) -> Outputs:
        """A copy of everything recorded so far."""
        with self._lock:
            g = self._got
            return Outputs(list(g.emotion), list(g.label_info), list(g.crops), list(g.mels),
                           {k: dict(v) for k, v in g.diagnostics.items()},
                           dict(g.first_seen), list(g.face_crops), list(g.tracked),
                           {k: list(v) for k, v in g.person_emotion.items()},
                           {k: list(v) for k, v in g.person_expression.items()})

    def node_name(self, name: str) -> str:
        """FQN of lightmer node `name` under the rig's namespace (its /diagnostics name)."""
        return f'{self.namespace}/{name}'

    def wait_for(self, predicate: Callable[[Outputs], Any], timeout_s: float, what: str):
        """Poll `predicate(snapshot)` until it returns something truthy, and return that.
        Raises TimeoutError naming `what` (with the node logs, if the rig started the nodes),
        or RuntimeError as soon as a node process has died."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate(self.snapshot())
            if value:
                return value
            if self.nodes is not None:
                self.nodes.check_alive()
            if time.monotonic() > deadline:
                snap = self.snapshot()
                logs = f'\nnode logs:\n{self.nodes.tails()}' if self.nodes else ''
                raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what}; '
                                   f'{len(snap.emotion)} emotion messages, diagnostics '
                                   f'{snap.diagnostics}{logs}')
            time.sleep(0.05)

    # --- readiness ---------------------------------------------------------------------------
    def missing(self, snap: Outputs, nodes: tuple[str, ...] = NODE_NAMES) -> str:
        """What keeps the nodes from being ready, or '' when they are: each node has reported
        on /diagnostics (built, model loaded), every rig publisher is matched, and the rig
        hears every emotion topic, face_crop and log_mel from a node that also feeds fusion."""
        n = self.node
        for name in nodes:
            if self.node_name(name) not in snap.diagnostics:
                return f'/diagnostics from {self.node_name(name)}'
        for pub in (self.image_pub, self.audio_pub, self.info_pub):
            if pub.get_subscription_count() < 1:
                return f'a subscriber of {pub.topic_name}'
        for topic in self._emotion_topics:
            if n.count_publishers(topic) < 1:
                return f'a publisher of {topic}'
        faces = 'face_crops' if self.people else 'face_crop'
        for topic in (faces, 'log_mel'):             # the fusion node and the rig read them
            if n.count_subscribers(n.resolve_topic_name(topic)) < 2:
                return f'the fusion node subscribing {topic}'
        return ''

    def wait_ready(self, timeout_s: float = 120.0, nodes: tuple[str, ...] = NODE_NAMES) -> None:
        """The one readiness rule (`missing`), polled until it holds."""
        try:
            self.wait_for(lambda s: not self.missing(s, nodes), timeout_s,
                          'the nodes to start and match')
        except TimeoutError as exc:
            raise TimeoutError(f'still missing {self.missing(self.snapshot(), nodes)}: '
                               f'{exc}') from None

    def wait_format(self, text: str | None = None, timeout_s: float = 20.0) -> None:
        """Until the audio node holds an audio format (`text`, e.g. '1ch 16000 Hz int16', or
        any usable one): chunks sent before would be dropped, and a latched AudioInfo can reach
        a newly matched reader seconds late."""
        node = self.node_name('audio_feature')

        def holds(snap: Outputs) -> bool:
            fmt = snap.diagnostics.get(node, {}).get('format', 'none')
            return fmt == text if text else fmt != 'none'

        self.wait_for(holds, timeout_s, f'{node} to take the audio format {text or ""}')

    def prime_audio(self, t0: float, sr: int = 16000, chunk: int = 1600,
                    timeout_s: float = 25.0) -> None:
        """Send silence stamped from `t0`, in real time, until a log-mel of it comes back.

        A reader that the writer already sees may not yet see the writer, and drops what comes
        meanwhile; this proves the audio path connected end to end. Use a `t0` well before the
        data that follows, which then starts a new audio run.
        """
        silence = np.zeros(chunk, dtype='<i2').tobytes()
        deadline = time.monotonic() + timeout_s
        t = t0
        while time.monotonic() < deadline:
            if any(t0 <= time_to_float(r.msg.header.stamp) < t for r in self.snapshot().mels):
                return
            if self.nodes is not None:
                self.nodes.check_alive()
            self.audio_pub.publish(audio_msg(t, silence))
            t += chunk / sr
            time.sleep(chunk / sr)           # real time: stamps never run into what follows
        raise TimeoutError(f'no log-mel came back within {timeout_s:.0f} s of priming audio')

    def wait_settled(self, frames_sent: int, quiet_s: float, timeout_s: float) -> None:
        """Until the nodes have finished what was played: the face node counted every frame
        sent and neither the nodes' counts nor the windows received have moved for `quiet_s`
        (or for 2.5 x `quiet_s` when frames were lost on the way)."""
        face, audio, fusion = (self.node_name(n) for n in NODE_NAMES)
        state = {'last': None, 'since': time.monotonic()}

        def settled(snap: Outputs) -> bool:
            counts = (snap.counts(face).get('frames', 0), snap.counts(audio).get('published'),
                      snap.counts(fusion).get('used'), snap.counts(fusion).get('windows'),
                      len(snap.emotion))
            now = time.monotonic()
            if counts != state['last']:
                state['last'], state['since'] = counts, now
                return False
            quiet = now - state['since']
            return quiet > quiet_s and (counts[0] >= frames_sent or quiet > 2.5 * quiet_s)

        self.wait_for(settled, timeout_s, 'the nodes to finish what was played')

    # --- publishing --------------------------------------------------------------------------
    def publish_clock(self, t: float) -> None:
        self.clock_pub.publish(Clock(clock=float_to_time(t)))

    def publish(self, kind: str, msg) -> None:
        """Publish a message or its CDR bytes on the camera ('image'), microphone ('audio') or
        AudioInfo ('info') topic."""
        pub = {'image': self.image_pub, 'audio': self.audio_pub, 'info': self.info_pub}[kind]
        pub.publish(msg)

    def play(self, events: Iterable[Event], rate: float = 1.0, clock: bool = False,
             progress: str | None = None) -> Played:
        """Publish `events` paced by their times at `rate` x real time, each preceded by
        /clock at its time when `clock` (a bag replay with sim time)."""
        if not rate > 0:
            raise ValueError(f'rate must be positive, got {rate}')
        if progress is not None:
            events = tqdm(events, desc=progress, unit='msg', disable=None)
        sent = {'image': 0, 'audio': 0, 'info': 0}
        times, walls = [], []
        behind = 0.0
        start = t_first = None
        for t, kind, msg in events:
            if start is None:
                start, t_first = time.monotonic(), t
            delay = start + (t - t_first) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                behind = max(behind, -delay)
            if clock:
                self.publish_clock(t)
            self.publish(kind, msg)
            sent[kind] += 1
            times.append(t)
            walls.append(time.time())
        return Played(sent, np.asarray(times, dtype=np.float64),
                      np.asarray(walls, dtype=np.float64), behind)
