"""Live-node figures for `lightmer bench`: the three real nodes as three processes over DDS.

`harness.rig` starts the nodes and plays a camera (640x480 rgb8, the astronaut's face) and a
microphone (S16LE mono 16 kHz, 32 ms chunks) on the wall clock (`WallClockSensors`). Reported:

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

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lightmer.core.backend import read_meta
from lightmer.core.messages import time_to_float
from lightmer.harness.bench_inputs import camera_frame, untrained_checkpoint
from lightmer.harness.rig import NODE_NAMES, NodeProcesses, Rig, WallClockSensors, info_msg

SAMPLE_RATE = 16000
CHUNK = 512                         # samples per audio message (32 ms, a usual capture size)
SUSTAINED_FRACTION = 0.98
CAMERA_RATES = (30, 60, 120, 240)
DIAGNOSTICS_PERIOD_S = 0.5


def _settle(sensors) -> int:
    """Frames the face node has counted, once it has caught up with what was sent."""
    rig = sensors.rig
    rig.wait_settled(sensors.frames_sent, 2 * DIAGNOSTICS_PERIOD_S, 30.0)
    return rig.snapshot().counts(rig.node_name('face_crop')).get('frames', 0)


def bench_nodes(checkpoint: Path | None, repeats: int) -> dict:
    """Start the nodes, measure, stop them. `repeats` scales the run length (20 -> ~15 s of
    latency measurement)."""
    latency_s = max(6.0, 0.75 * repeats)
    # Reliable depth 10, as with a reliable camera driver: across processes, best effort loses
    # about half of the 640x480 frames at 30 fps (the node still needs only one a segment, but
    # the rate figure would measure DDS fragment loss, not the node).
    params = {'/**': {'ros__parameters': {'diagnostics_period_s': DIAGNOSTICS_PERIOD_S}},
              '/**/face_crop': {'ros__parameters': {'qos_reliability': 'reliable'}}}
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            checkpoint = untrained_checkpoint(Path(tmp))
        model_mb = Path(checkpoint).stat().st_size / 1e6
        meta = read_meta(checkpoint)
        started = time.time()
        with (NodeProcesses({'model': str(checkpoint)}, Path(tmp) / 'nodes', params) as nodes,
              Rig(nodes=nodes) as rig):
            sensors = WallClockSensors(rig, camera_frame(), SAMPLE_RATE, CHUNK)
            latencies = np.array(list(latency_run(sensors, latency_s, meta).values()))
            rates = _camera_rates(sensors)
            memory = nodes.memory_mb()
            first_seen = rig.snapshot().first_seen
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
        'start_to_ready_s': {name: round(first_seen[f'/{name}'] - started, 2)
                             for name in NODE_NAMES if f'/{name}' in first_seen},
        'model': Path(checkpoint).name,
        'model_mb': round(model_mb, 2),
        'latency_run_s': latency_s,
        'camera_qos': 'reliable, depth 10',
        'latency_samples_ms': [round(float(x), 2) for x in latencies],
    }


def latency_run(sensors, seconds: float, meta, timeout_s: float = 90.0,
                on_start: Callable[[], None] | None = None) -> dict[float, float]:
    """Bring the nodes up to speed, then (calling `on_start` first) play `seconds` of camera
    (30 fps) and microphone through `sensors` (a `rig.WallClockSensors`) and wait for the nodes
    to settle. Returns {window stamp (s): latency (ms)} of the windows of that run: arrival
    minus the capture time of the newest data used (stamp + d/2)."""
    rig, half = sensors.rig, meta.features.window_s / 2
    rig.wait_ready(timeout_s)
    rig.publish('info', info_msg(rate=sensors.sr))
    rig.wait_format()
    sensors.warm_up(timeout_s)
    first = len(rig.snapshot().emotion)
    if on_start is not None:
        on_start()
    sensors.play(seconds, 30.0)
    # Settled: nothing moved for two periods of the nodes' default diagnostics (1 s), longer
    # than the d/2 of audio the last window waits for after its reference time.
    rig.wait_settled(sensors.frames_sent, 2.0, timeout_s)
    return {_stamp(r): (r.wall_s - _stamp(r) - half) * 1000
            for r in rig.snapshot().emotion[first:]}


def _stamp(received) -> float:
    return time_to_float(received.msg.header.stamp)


def _camera_rates(sensors, seconds: float = 3.0) -> dict[int, float]:
    """Fraction of published frames the face node received, per camera rate, stepped up until
    one is not sustained."""
    fractions = {}
    for rate in CAMERA_RATES:
        before = _settle(sensors)
        sent = sensors.play(seconds, float(rate)).sent['image']
        received = _settle(sensors) - before
        fractions[rate] = min(1.0, received / sent) if sent else 0.0
        if fractions[rate] < SUSTAINED_FRACTION:
            break
    return fractions
