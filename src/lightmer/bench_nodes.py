"""Live-node figures for `lightmer bench`: the three real nodes as three processes over DDS.

A driver in this process plays a camera (640x480 rgb8, the astronaut face) and a microphone
(S16LE mono 16 kHz, 32 ms chunks) in wall-clock time, stamped with the wall clock, and listens to
`emotion` and `/diagnostics`. It reports:

- end-to-end latency of each `emotion` message: arrival time minus the capture time of the
  newest data the window used (its last segment's reference time + d/2, when the audio window
  closes), at 30 fps;
- the highest camera rate the face node takes in without loss: rates are stepped up and a rate
  counts as sustained when the node received at least 98 % of the frames published at it;
- resident memory of each node process (VmRSS after the run, VmHWM peak) and their total;
- start-to-ready of each node process: from its start to its first /diagnostics message,
  which a node publishes once it is built (imports done, model loaded, first inference made).

`checkpoint` may be a .pt checkpoint (the nodes run torch) or an ONNX export (onnxruntime);
`lightmer bench` runs this once for each.

DDS stays on loopback: run it under scripts/loopback.sh (`make bench` does).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lightmer.evaluate import loopback_env
from lightmer.ros.description import NODE_MODULES

SAMPLE_RATE = 16000
CHUNK = 512                         # samples per audio message (32 ms, a usual capture size)
FRAME_SHAPE = (480, 640)
SUSTAINED_FRACTION = 0.98


def _camera_frame() -> np.ndarray:
    """uint8 (480, 640, 3): the astronaut's head on a grey canvas (MTCNN finds it)."""
    from skimage import data

    frame = np.full(FRAME_SHAPE + (3,), 128, np.uint8)
    face = data.astronaut()[:300, 110:410]
    frame[90:390, 170:470] = face
    return frame


def _untrained_checkpoint(directory: Path) -> Path:
    import torch

    from lightmer.checkpoint import meta_for_preset, save_checkpoint
    from lightmer.model import LightmerNet

    torch.manual_seed(0)
    meta = meta_for_preset('crema-d', dataset='bench (untrained)')
    path = directory / 'bench_model.pt'
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path


def _start_nodes(checkpoint: Path, env: dict) -> dict[str, subprocess.Popen]:
    common = ['-p', f'model_path:={checkpoint}', '-p', 'diagnostics_period_s:=0.5']
    remaps = {
        # Reliable depth 10, as with a reliable camera driver: across processes, best effort
        # loses about half of the 640x480 frames at 30 fps (the node still needs only one a
        # segment, but the rate figure would measure DDS fragment loss, not the node).
        'face_crop': ['-r', 'image:=/bench/image', '-p', 'qos_reliability:=reliable'],
        'audio_feature': ['-r', 'audio:=/bench/audio', '-r', 'audio_info:=/bench/audio_info'],
        'fusion': [],
    }
    return {name: subprocess.Popen(
        [sys.executable, '-m', module, '--ros-args', *common, *remaps[name]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, module in NODE_MODULES.items()}


def _memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                fields[key] = int(value.split()[0]) / 1024
    return {'rss_mb': round(fields['VmRSS'], 1), 'peak_mb': round(fields['VmHWM'], 1)}


class _Driver:
    """Publishes camera and audio in wall-clock time; records what comes back."""

    def __init__(self, node, mic, window_half_s: float):
        from audio_common_msgs.msg import AudioDataStamped, AudioInfo
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Classification

        from lightmer.ros.qos import latched_qos, output_qos

        self.node = node
        self.window_half_s = window_half_s
        self.image_pub = node.create_publisher(Image, '/bench/image', output_qos())
        # Audio from `mic`, a participant of its own as a microphone driver's would be
        # (node_with_own_participant says what sharing the camera's cost).
        self.audio_pub = mic.create_publisher(AudioDataStamped, '/bench/audio', output_qos(50))
        self.info_pub = mic.create_publisher(AudioInfo, '/bench/audio_info', latched_qos())
        self.info_pub.publish(AudioInfo(channels=1, sample_rate=SAMPLE_RATE,
                                        sample_format='S16LE', bitrate=SAMPLE_RATE * 16,
                                        coding_format='wave'))
        self.latencies_ms: list[float] = []
        self.frames_received = 0
        self.first_diagnostics: dict[str, float] = {}      # node name -> time.monotonic()
        self.lock = threading.Lock()
        node.create_subscription(Classification, 'emotion', self._on_emotion, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 50)
        self._rng = np.random.default_rng(0)
        # Stamp of the next audio chunk. It runs on across `play` calls, as a microphone's
        # does: restarting it at `now` could step back behind the last chunk sent.
        self._next_audio = 0.0

    def _on_emotion(self, msg) -> None:
        from lightmer.ros.conversions import time_to_float

        newest_data = time_to_float(msg.header.stamp) + self.window_half_s
        with self.lock:
            self.latencies_ms.append((time.time() - newest_data) * 1000)

    def _on_diagnostics(self, msg) -> None:
        from lightmer.ros.conversions import diagnostics_counts

        for name, counts in diagnostics_counts(msg).items():
            with self.lock:
                self.first_diagnostics.setdefault(name.strip('/'), time.monotonic())
            if name.endswith('face_crop') and 'frames' in counts:
                with self.lock:
                    self.frames_received = int(counts['frames'])

    def play(self, seconds: float, fps: float, frame: np.ndarray) -> int:
        """Publish `seconds` of camera at `fps` and audio at real time; returns frames sent."""
        from audio_common_msgs.msg import AudioDataStamped
        from sensor_msgs.msg import Image

        from lightmer.ros.conversions import float_to_time

        height, width = frame.shape[:2]
        image = Image(height=height, width=width, encoding='rgb8', step=width * 3,
                      data=frame.tobytes())
        image.header.frame_id = 'camera'
        t0 = time.time()
        next_frame, sent = t0, 0
        next_audio = max(self._next_audio, t0)
        chunk_s = CHUNK / SAMPLE_RATE
        while (now := time.time()) < t0 + seconds:
            if now >= next_frame:
                image.header.stamp = float_to_time(now)
                self.image_pub.publish(image)
                sent += 1
                next_frame += 1 / fps
            # A microphone delivers a chunk after its last sample is captured.
            if now >= next_audio + chunk_s:
                noise = self._rng.normal(0, 3000, CHUNK).clip(-32768, 32767).astype('<i2')
                msg = AudioDataStamped()
                msg.header.stamp = float_to_time(next_audio)
                msg.audio.data = noise.tobytes()
                self.audio_pub.publish(msg)
                next_audio += chunk_s
            time.sleep(max(0.0, min(next_frame, next_audio + chunk_s) - time.time()))
        self._next_audio = next_audio
        return sent


def bench_nodes(checkpoint: Path | None, repeats: int) -> dict:
    """Start the nodes, measure, stop them. `repeats` scales the run length (20 -> ~15 s of
    latency measurement)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from lightmer.config import FeatureConfig
    from lightmer.ros.common import close_own_participant, node_with_own_participant

    env = loopback_env(dict(os.environ, OMP_NUM_THREADS='1'))
    os.environ.update(loopback_env({}))                  # this process's own participant too
    latency_s = max(6.0, 0.75 * repeats)
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            checkpoint = _untrained_checkpoint(Path(tmp))
        model_mb = Path(checkpoint).stat().st_size / 1e6
        started = time.monotonic()
        nodes = _start_nodes(checkpoint, env)
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node('lightmer_bench_driver', context=context)
        mic = node_with_own_participant('lightmer_bench_microphone')
        driver = _Driver(node, mic, FeatureConfig().window_s / 2)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            frame = _camera_frame()
            _wait_until_nodes_ready(driver, nodes, frame)
            with driver.lock:
                driver.latencies_ms.clear()
            driver.play(latency_s, 30.0, frame)
            time.sleep(1.5)                         # the last window's audio closes ~0.75 s later
            with driver.lock:
                latencies = np.array(driver.latencies_ms)
            rates = _max_camera_fps(driver, frame)
            memory = {name: _memory_mb(p.pid) for name, p in nodes.items()}
        finally:
            executor.shutdown()
            node.destroy_node()
            close_own_participant(mic)
            rclpy.try_shutdown(context=context)
            for p in nodes.values():
                p.terminate()
            for p in nodes.values():
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    if latencies.size == 0:
        raise RuntimeError('the nodes published no emotion message during the benchmark')
    sustained = [r for r, frac in rates.items() if frac >= SUSTAINED_FRACTION]
    return {
        'latency_ms': {'p50': float(np.percentile(latencies, 50)),
                       'p95': float(np.percentile(latencies, 95)),
                       'n': int(latencies.size),
                       'definition': 'emotion arrival minus capture time of the newest data '
                                     'used (last segment reference time + d/2)'},
        'camera_rates_received_fraction': {str(r): round(f, 3) for r, f in rates.items()},
        'max_camera_fps': max(sustained) if sustained else 0,
        'max_camera_fps_is_highest_tested': bool(sustained) and max(sustained) == CAMERA_RATES[-1],
        'rss_mb': {name: m['rss_mb'] for name, m in memory.items()},
        'rss_total_mb': round(sum(m['rss_mb'] for m in memory.values()), 1),
        'peak_rss_mb': {name: m['peak_mb'] for name, m in memory.items()},
        'start_to_ready_s': {name: round(driver.first_diagnostics[name] - started, 2)
                             for name in nodes if name in driver.first_diagnostics},
        'model': Path(checkpoint).name,
        'model_mb': round(model_mb, 2),
        'latency_run_s': latency_s,
        'camera_qos': 'reliable, depth 10',
        'latency_samples_ms': [round(float(x), 2) for x in latencies],
    }


def _wait_until_nodes_ready(driver: _Driver, nodes: dict, frame: np.ndarray,
                            timeout_s: float = 90.0) -> None:
    """Play input until the first emotion message arrives (models loaded, topics matched)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, p in nodes.items():
            if p.poll() is not None:
                raise RuntimeError(f'{name} node exited with {p.returncode}: '
                                   f'{p.stderr.read()[-2000:]}')
        driver.play(1.0, 30.0, frame)
        with driver.lock:
            if driver.latencies_ms:
                return
    raise RuntimeError(f'no emotion message within {timeout_s:.0f} s of starting the nodes')


CAMERA_RATES = (30, 60, 120, 240)


def _max_camera_fps(driver: _Driver, frame: np.ndarray, seconds: float = 3.0,
                    rates=CAMERA_RATES) -> dict[int, float]:
    """Fraction of published frames the face node received, per camera rate."""
    fractions = {}
    for rate in rates:
        time.sleep(1.0)                             # let diagnostics settle
        with driver.lock:
            before = driver.frames_received
        sent = driver.play(seconds, float(rate), frame)
        time.sleep(1.5)                             # two diagnostics periods
        with driver.lock:
            received = driver.frames_received - before
        fractions[rate] = min(1.0, received / sent) if sent else 0.0
        if fractions[rate] < SUSTAINED_FRACTION:
            break
    return fractions
