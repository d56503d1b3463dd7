"""Shared pieces of the node tests: a fixture model, a generated clip, its offline expectation,
and a probe node that publishes inputs and collects outputs over real DDS (loopback)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightmer.ros.conversions import time_to_float

T0 = 1000.3          # clip start, stamp seconds (not on the segment grid)
FPS = 10.0
DURATION_S = 4.5
SR = 16000
CHUNK = 1600         # 0.1 s audio chunks
FRAME_ID = 'camera_optical'


def make_checkpoint(path: Path, preset: str = 'crema-d', seed: int = 0) -> Path:
    """An untrained, seeded LightmerNet saved as a checkpoint (a fixture model)."""
    import torch

    from lightmer.checkpoint import meta_for_preset, save_checkpoint
    from lightmer.model import LightmerNet

    torch.manual_seed(seed)
    meta = meta_for_preset(preset, dataset='test-fixture')
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path


@dataclass
class Clip:
    """Frames (constant within each segment, so any frame of a segment gives the same crop)
    and int16 mono audio of one generated clip starting at T0."""

    frame_times: np.ndarray            # (F,) stamp seconds
    frames: list[np.ndarray]           # uint8 (480, 640, 3) RGB
    audio: np.ndarray                  # int16 (n,)
    segment_s: float

    def audio_float(self) -> np.ndarray:
        from lightmer.features import to_mono

        return to_mono(self.audio)


def _face_image(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    face = data.astronaut()[:300, 110:410]                          # head and shoulders
    return np.asarray(Image.fromarray(face).resize((size, size), Image.Resampling.BILINEAR))


def make_clip(segment_s: float = 0.5, seed: int = 0, face: bool = True) -> Clip:
    from lightmer.segments import segment_index

    rng = np.random.default_rng(seed)
    portrait = _face_image(260)
    n_frames = int(DURATION_S * FPS)
    times = T0 + np.arange(n_frames) / FPS
    frames = []
    for t in times:
        k = segment_index(float(t), segment_s)
        frame = np.full((480, 640, 3), 90, dtype=np.uint8)
        if face:
            # The face moves and brightens per segment, so every segment's crop differs.
            x, y = 60 + (k * 37) % 300, 40 + (k * 23) % 160
            shade = np.clip(portrait.astype(np.int16) + (k % 5) * 12 - 24, 0, 255)
            frame[y:y + 260, x:x + 260] = shade.astype(np.uint8)
        frames.append(frame)
    n = int(DURATION_S * SR)
    t = np.arange(n) / SR
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)                # a gliding "voice"
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voice = sum(np.sin(h * phase) / h for h in range(1, 6)) * (0.5 + 0.5 * np.sin(3.1 * t))
    audio = 0.3 * voice + 0.02 * rng.standard_normal(n)
    return Clip(times, frames, (np.clip(audio, -1, 1) * 32000).astype(np.int16), segment_s)


def expected_windows(clip: Clip, checkpoint: Path, n_segments: int, min_segments: int,
                     anchor: str = 'centre') -> dict[int, np.ndarray]:
    """Offline model output per window last-segment id: the clip's segments computed from the
    whole clip (crops by FaceCropper on the segment's frame, log-mel of the whole audio),
    segment logits by LightmerNet, fused over the segments of each window."""
    import torch

    from lightmer.checkpoint import load_checkpoint
    from lightmer.features import FaceCropper, face_to_input, log_mel_at
    from lightmer.model import fuse
    from lightmer.segments import reference_time, segment_index, window_indices

    model, meta = load_checkpoint(checkpoint)
    cfg = meta.features
    half = cfg.window_s / 2
    end = T0 + len(clip.audio) / SR
    audio = clip.audio_float()
    cropper = FaceCropper(cfg)
    ks = sorted({segment_index(float(t), clip.segment_s) for t in clip.frame_times})
    logits = {}
    for k in ks:
        ref = reference_time(k, clip.segment_s, anchor)
        if ref - half < T0 - 1e-9 or ref + half > end + 1e-9:
            continue                                    # the audio does not cover its window
        if not any(t >= ref for t in clip.frame_times):
            continue                                    # the selector never closes it
        i = int(np.argmin(np.abs(clip.frame_times - ref)))
        crop = cropper([clip.frames[i]])[0]
        assert crop is not None, 'the test face must be found'
        mel = log_mel_at(audio, ref - T0, cfg)
        with torch.inference_mode():
            logits[k] = model.segment_logits(torch.from_numpy(face_to_input(crop[None])),
                                             torch.from_numpy(mel)[None, None])[0]
    out = {}
    for k in logits:
        ids = [j for j in window_indices(k, n_segments) if j in logits]
        if len(ids) >= min_segments:
            out[k] = fuse(torch.stack([logits[j] for j in ids])).double().numpy()
    return out


@dataclass
class Collected:
    emotion: list = field(default_factory=list)
    label_info: list = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)    # status name -> {key: value}
    crops: list = field(default_factory=list)
    mels: list = field(default_factory=list)


class Probe:
    """A test node in its own executor thread: publishers of camera/audio/clock, collectors of
    everything lightmer publishes. Input topics are the launch defaults under `namespace`."""

    def __init__(self, context, image_reliable: bool = True, audio_reliable: bool = True,
                 namespace: str = '', name: str = 'lightmer_test_probe'):
        import rclpy
        from audio_common_msgs.msg import AudioDataStamped, AudioInfo
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Classification, LabelInfo

        from lightmer.ros.common import node_with_own_participant
        from lightmer.ros.conversions import diagnostics_counts
        from lightmer.ros.qos import latched_qos, output_qos

        self._lock = threading.Lock()
        self.got = Collected()
        self.node = rclpy.create_node(name, context=context, namespace=namespace or None)
        prefix = namespace.rstrip('/')

        def qos(reliable: bool) -> QoSProfile:
            return QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE if reliable
                              else ReliabilityPolicy.BEST_EFFORT)

        # The microphone has a participant of its own, as on a robot (see
        # node_with_own_participant: sharing one delayed audio chunks by seconds).
        self.mic = node_with_own_participant(f'{name}_mic', namespace=namespace or None)
        n = self.node
        self.image_pub = n.create_publisher(Image, f'{prefix}/camera/image_raw',
                                            qos(image_reliable))
        self.audio_pub = self.mic.create_publisher(
            AudioDataStamped, f'{prefix}/audio/audio_stamped', qos(audio_reliable))
        self.info_pub = self.mic.create_publisher(AudioInfo, f'{prefix}/audio/audio_info',
                                                  latched_qos())
        self.clock_pub = n.create_publisher(Clock, '/clock', 10)

        def keep(attr):
            def callback(msg):
                with self._lock:
                    getattr(self.got, attr).append(msg)
            return callback

        def diagnostics(msg):
            counts = diagnostics_counts(msg)
            for status in msg.status:          # keep the problem text beside the counts
                counts[status.name]['_message'] = status.message
            with self._lock:
                self.got.diagnostics.update(counts)

        n.create_subscription(Classification, 'emotion', keep('emotion'), output_qos())
        n.create_subscription(LabelInfo, 'emotion/label_info', keep('label_info'),
                              latched_qos())
        n.create_subscription(Image, 'face_crop', keep('crops'), output_qos())
        n.create_subscription(Image, 'log_mel', keep('mels'), output_qos())
        n.create_subscription(DiagnosticArray, '/diagnostics', diagnostics, 50)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(n)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        from lightmer.ros.common import close_own_participant

        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        close_own_participant(self.mic)

    def snapshot(self) -> Collected:
        with self._lock:
            return Collected(list(self.got.emotion), list(self.got.label_info),
                             {k: dict(v) for k, v in self.got.diagnostics.items()},
                             list(self.got.crops), list(self.got.mels))

    def wait_for(self, predicate, timeout_s: float, what: str):
        """Poll `predicate(snapshot)` until it is truthy; fail with `what` at the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            snap = self.snapshot()
            value = predicate(snap)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f'timed out after {timeout_s} s waiting for {what}; got '
                             f'{len(self.snapshot().emotion)} emotion messages, diagnostics '
                             f'{self.snapshot().diagnostics}')

    def _resolve(self, topic: str) -> str:
        return self.node.resolve_topic_name(topic)

    def wait_matched(self, timeout_s: float = 30.0) -> None:
        """Until the three nodes are up and connected to the probe and to each other."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n = self.node
            if (self.image_pub.get_subscription_count() > 0
                    and self.audio_pub.get_subscription_count() > 0
                    and self.info_pub.get_subscription_count() > 0
                    # fusion is up too: it and this probe read face_crop and log_mel
                    and n.count_subscribers(self._resolve('face_crop')) >= 2
                    and n.count_subscribers(self._resolve('log_mel')) >= 2
                    and n.count_publishers(self._resolve('emotion')) >= 1):
                return
            time.sleep(0.05)
        raise AssertionError('lightmer nodes never subscribed to the probe topics')

    # --- publishing --------------------------------------------------------------------------
    def publish_info(self, sample_format: str = 'S16LE', rate: int = SR, channels: int = 1,
                     coding: str = 'wave') -> None:
        from audio_common_msgs.msg import AudioInfo

        self.info_pub.publish(AudioInfo(channels=channels, sample_rate=rate,
                                        sample_format=sample_format, bitrate=0,
                                        coding_format=coding))

    def wait_format(self, node: str, channels: int = 1, rate: int = SR,
                    dtype: str = 'int16', timeout_s: float = 20.0) -> None:
        """Until `node`'s diagnostics show it holds this AudioInfo: chunks sent earlier would be
        dropped, and a latched message can reach a newly matched reader seconds late."""
        text = f'{channels}ch {rate} Hz {dtype}'
        self.wait_for(lambda s: s.diagnostics.get(node, {}).get('format') == text, timeout_s,
                      f'{node} to take the audio format {text}')

    def prime_audio(self, t0: float, timeout_s: float = 25.0) -> None:
        """Send silence stamped from `t0`, in real time, until a log-mel of it comes back.

        A reader that the writer already sees may not yet see the writer, and drops what comes
        meanwhile; this proves the audio path is connected end to end before a clip is played.
        Call it with `t0` well before the clip: the clip then starts a new audio run.
        """
        silence = np.zeros(CHUNK, dtype=np.int16).tobytes()
        deadline = time.monotonic() + timeout_s
        t = t0
        while time.monotonic() < deadline:
            if any(t0 <= time_to_float(m.header.stamp) < t for m in self.snapshot().mels):
                return
            self.audio_pub.publish(self.audio_msg(t, silence))
            t += CHUNK / SR
            time.sleep(CHUNK / SR)         # real time: stamps never run into the clip's
        raise AssertionError(f'no log-mel came back within {timeout_s} s of priming audio')

    def image_msg(self, t: float, frame: np.ndarray, encoding: str = 'rgb8'):
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        from lightmer.ros.conversions import float_to_time

        channels = frame.shape[2] if frame.ndim == 3 else 1
        msg = Image(header=Header(stamp=float_to_time(t), frame_id=FRAME_ID),
                    height=frame.shape[0], width=frame.shape[1], encoding=encoding,
                    is_bigendian=0, step=frame.shape[1] * channels)
        msg.data = np.ascontiguousarray(frame).tobytes()
        return msg

    def audio_msg(self, t: float, data: bytes):
        from audio_common_msgs.msg import AudioData, AudioDataStamped
        from std_msgs.msg import Header

        from lightmer.ros.conversions import float_to_time

        msg = AudioDataStamped(header=Header(stamp=float_to_time(t), frame_id='mic'))
        msg.audio = AudioData(data=data)
        return msg

    def publish_clock(self, t: float) -> None:
        from rosgraph_msgs.msg import Clock

        from lightmer.ros.conversions import float_to_time

        self.clock_pub.publish(Clock(clock=float_to_time(t)))

    def play(self, clip: Clip, offset_s: float = 0.0, speed: float = 1.0,
             clock: bool = False) -> None:
        """Publish the clip's frames and 0.1 s audio chunks in stamp order, paced at `speed`
        times real time (pacing keeps reliable writers from overwriting unacknowledged data)."""
        events = [(float(t) + offset_s, 'image', i) for i, t in enumerate(clip.frame_times)]
        events += [(T0 + offset_s + s / SR, 'audio', s) for s in range(0, len(clip.audio), CHUNK)]
        events.sort(key=lambda e: (e[0], e[1]))
        start = time.monotonic()
        t_first = events[0][0]
        for t, kind, i in events:
            delay = (t - t_first) / speed - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
            if clock:
                self.publish_clock(t)
            if kind == 'image':
                self.image_pub.publish(self.image_msg(t, clip.frames[i]))
            else:
                self.audio_pub.publish(self.audio_msg(t, clip.audio[i:i + CHUNK].tobytes()))


def emotion_by_segment(msgs, segment_s: float, anchor: str = 'centre') -> dict[int, np.ndarray]:
    """Classification messages -> {window's last segment id: probabilities (C,)}."""
    from lightmer.ros.conversions import time_to_float
    from lightmer.streaming import segment_of_reference

    out = {}
    for m in msgs:
        k = segment_of_reference(time_to_float(m.header.stamp), segment_s, anchor)
        out[k] = np.array([h.score for h in m.results])
    return out


class NodeProcesses:
    """The three node executables as processes, started from the launch description
    (`description.resolve` + `NodeInvocation.ros_args`, the command line launch_ros builds),
    each logging to `<log_dir>/<name>.log` (a file: a full pipe would block a node). One node
    can be stopped and started again (restart tests, the recovery benchmark)."""

    def __init__(self, log_dir: Path, launch_args: dict[str, str], env: dict):
        from lightmer.ros.description import resolve

        self.log_dir, self.env = Path(log_dir), env
        self.invocations = {inv.name: inv for inv in resolve(launch_args)}
        self.procs: dict = {}
        for name in self.invocations:
            self.start(name)

    def start(self, name: str) -> None:
        import subprocess
        import sys

        inv = self.invocations[name]
        with open(self.log_dir / f'{name}.log', 'a') as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, '-m', inv.description.module, *inv.ros_args()], env=self.env,
                stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.log_dir / f'{name}.log').read_text()

    def alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f'{name} exited {p.returncode}:\n{self.log(name)[-3000:]}'

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


class LiveStream:
    """Camera (10 fps, the generated clip's frames) and microphone (0.1 s chunks) published in
    real time with wall-clock stamps through `probe`, until `close()`: what a robot's drivers
    keep sending while a node restarts."""

    def __init__(self, probe: Probe, segment_s: float = 0.5):
        self.probe = probe
        self.clip = make_clip(segment_s, seed=8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        audio, frames = self.clip.audio, self.clip.frames
        t0 = time.time()
        i = 0
        while not self.stop.is_set():
            t = t0 + i / FPS
            self.probe.image_pub.publish(self.probe.image_msg(t, frames[i % len(frames)]))
            s = (i * CHUNK) % (len(audio) - CHUNK)
            self.probe.audio_pub.publish(self.probe.audio_msg(t, audio[s:s + CHUNK].tobytes()))
            i += 1
            time.sleep(max(0.0, t0 + i / FPS - time.time()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
