"""`lightmer bench`: what each stage costs on this machine, and what the segment cache saves.

One definition for every figure of the model section: **median CPU milliseconds of the calling
thread** (`time.thread_time`, one intra-op thread, after one untimed warm-up call), each stage
timed as a call of the one function the node runs, on each backend (the checkpoint on torch,
its ONNX export on onnxruntime). CPU time of one thread is the cost on one core, and other
processes sharing the machine do not add to it (wall time would count their turns: that is
why an earlier version's first table, wall time with torch's default two threads under load,
gave `segment_total` 121 ms where its per-backend table, CPU time on one thread, gave 59 ms
for the same stage; see docs/MEASUREMENTS.md).

Per backend (`cpu_ms[backend]`):
- `mtcnn_detect_{size}`: whole-frame MTCNN; `mtcnn_follow_{size}`: MTCNN following the face
  found in the previous segment (`stream.follow`, the nodes' default between whole-frame
  searches);
- `face_crop`, `log_mel`, `segment_networks` (VN + AN + FC on one segment), `fusion` (mean of N
  cached logits, softmax);
- `segment_total_{size}` = detect (whole frame) + crop + log-mel + networks + fusion;
  `segment_following_{size}` the same with the face followed; `segment_two_people` the
  per-person path on two people (every face tracked and followed, one segment and one fusion
  per person);
- `window_recompute_n{N}` = N x (detect + crop + log-mel + networks) + fusion: a window
  without the cache; `networks_window_n{N}`: the networks alone on a window (the paper's
  "inference per window").
Derived on onnxruntime (the robot's runtime), from those same figures:
`incremental_vs_recompute_ratio[N]` = segment_total_640x480 / window_recompute_n{N} (both with
whole-frame detection: the cache's saving alone, ~1/N, paper Fig. 2) and
`two_people_vs_one_ratio` = segment_two_people / segment_following_640x480.
The live-node figures of `lightmer.harness.bench_nodes` (latency_ms, rss_mb, start_to_ready_s,
...) are merged at the top level, unless `--no-nodes`. `goals` states each goal of issue 26
against its figure.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import face_cropper, load_model
from lightmer.core.export import export_checkpoint
from lightmer.core.features import crop_face, log_mel_at
from lightmer.core.plots import plot_latency
from lightmer.harness.bench_inputs import bench_frame_720p, camera_frame, untrained_checkpoint
from lightmer.stream.follow import FaceFollower, FollowSettings
from lightmer.stream.people import MultiFaceSegmenter

RECOMPUTE_N = (5, 12)
SIZES = ('640x480', '1280x720')
# Following only (no periodic whole-frame search) while a following figure is timed.
_ALWAYS_FOLLOW = FollowSettings(every=10 ** 9)


def _median_cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU ms of this thread over `repeats` calls of fn(), after one untimed warm-up
    call. Both runtimes compute on the calling thread when given one thread, so this is the
    cost on one core, unaffected by other processes sharing the machine."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append((time.thread_time() - t0) * 1e3)
    return statistics.median(times)


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class _Segments:
    """One model's per-segment work on one thread, as the nodes do it: the functions every
    figure of its backend is timed on."""

    def __init__(self, path):
        self.model = load_model(path, threads=1)
        meta = self.model.meta
        self.fcfg = meta.features
        self.cropper = face_cropper(path, threads=1, meta=meta)
        self.frames = {'640x480': camera_frame(), '1280x720': bench_frame_720p()}
        self.audio = np.random.default_rng(0).normal(0, 0.1, 4 * self.fcfg.sample_rate
                                                     ).astype(np.float32)
        self.cached = {n: np.zeros((n - 1, len(meta.labels))) for n in RECOMPUTE_N}
        self.followers = {}
        for size, frame in self.frames.items():
            if self.detect(frame) is None:
                raise RuntimeError(f'MTCNN ({path}) found no face in the {size} bench frame')
            self.followers[size] = FaceFollower(self.cropper, _ALWAYS_FOLLOW)
            self.followers[size].detect(frame)           # found whole: followed from now on
        self.two = camera_frame(people=2)
        self.people = MultiFaceSegmenter(self.cropper, 0.5, 'centre', max_faces=4,
                                         follow=_ALWAYS_FOLLOW)
        if len(self.people.faces_of(self.two)[0]) != 2:
            raise RuntimeError('MTCNN did not find both faces of the two-person bench frame')

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        return self.cropper.detect([frame])[0]

    def follow(self, size: str) -> np.ndarray:
        """The face of the bench frame `size`, followed from the previous call."""
        follower = self.followers[size]
        searched_whole = follower.counts.whole
        boxes, probs = follower.detect(self.frames[size])
        if follower.counts.whole != searched_whole:
            raise RuntimeError(f'the {size} bench face was not followed: {follower.counts}')
        return boxes[int(np.argmax(probs))]

    def mel(self) -> np.ndarray:
        return log_mel_at(self.audio, 2.0, self.fcfg)

    def logits(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Crop, log-mel and the networks of one segment whose face is `box`: (C,)."""
        return self.model.segment_logits(crop_face(frame, box, self.fcfg), self.mel())

    def segment(self, size: str, following: bool) -> np.ndarray:
        """One new segment with the cache: detect, crop, log-mel, networks, fusion of N = 5."""
        frame = self.frames[size]
        box = self.follow(size) if following else self.detect(frame)
        return self.model.fuse(np.vstack([self.cached[5], self.logits(frame, box)]))

    def two_people(self) -> list[np.ndarray]:
        faces, _ = self.people.faces_of(self.two)
        mel = self.mel()
        return [self.model.fuse(np.vstack([self.cached[5],
                                           self.model.segment_logits(f.crop, mel)]))
                for f in faces]

    def recompute(self, n: int) -> np.ndarray:
        """A window without the cache: every one of its N segments detected whole, cropped,
        its log-mel and networks, then fusion."""
        frame = self.frames['640x480']
        return self.model.fuse(np.stack([self.logits(frame, self.detect(frame))
                                         for _ in range(n)]))

    def networks_window(self, n: int, crop: np.ndarray, mel: np.ndarray) -> np.ndarray:
        """The networks alone on a window of N segments (crops and log-mels given)."""
        return self.model.fuse(np.stack([self.model.segment_logits(crop, mel)
                                         for _ in range(n)]))


def backend_stages(path, repeats: int) -> dict[str, float]:
    """CPU ms of every figure (module docstring) with the model at `path`, one thread."""
    x = _Segments(path)
    ms: dict[str, float] = {}
    for size, frame in x.frames.items():
        ms[f'mtcnn_detect_{size}'] = _median_cpu_ms(lambda f=frame: x.detect(f), repeats)
        ms[f'mtcnn_follow_{size}'] = _median_cpu_ms(lambda s=size: x.follow(s), repeats)
        ms[f'segment_total_{size}'] = _median_cpu_ms(lambda s=size: x.segment(s, False),
                                                     repeats)
        ms[f'segment_following_{size}'] = _median_cpu_ms(lambda s=size: x.segment(s, True),
                                                         repeats)
    frame = x.frames['640x480']
    box, crop = x.detect(frame), x.cropper([frame])[0]
    ms['face_crop'] = _median_cpu_ms(lambda: crop_face(frame, box, x.fcfg), repeats)
    ms['log_mel'] = _median_cpu_ms(x.mel, repeats)
    mel = x.mel()
    ms['segment_networks'] = _median_cpu_ms(lambda: x.model.segment_logits(crop, mel), repeats)
    ms['fusion'] = _median_cpu_ms(lambda: x.model.fuse(x.cached[5]), repeats)
    ms['segment_two_people'] = _median_cpu_ms(x.two_people, repeats)
    for n in RECOMPUTE_N:
        ms[f'window_recompute_n{n}'] = _median_cpu_ms(lambda n=n: x.recompute(n),
                                                      max(3, repeats // 4))
        ms[f'networks_window_n{n}'] = _median_cpu_ms(
            lambda n=n: x.networks_window(n, crop, mel), repeats)
    return {k: round(v, 3) for k, v in ms.items()}


def bench_model(repeats: int, checkpoint) -> dict[str, Any]:
    """The model section: every figure on both backends (`checkpoint`, a .pt file, and its
    ONNX export in a temporary directory), the ratios derived from the onnxruntime figures."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        export = export_checkpoint(checkpoint, 'onnx', tmp)[0]
        cpu_ms = {name: backend_stages(path, repeats)
                  for name, path in (('torch', checkpoint), ('onnxruntime', export))}
    ort = cpu_ms['onnxruntime']
    return {
        'definition': 'median CPU ms of one thread (one core), after a warm-up call',
        'cpu_ms': cpu_ms,
        'stage_ms': ort,
        'torch_over_onnxruntime': {k: round(cpu_ms['torch'][k] / max(v, 1e-6), 2)
                                   for k, v in ort.items()},
        'incremental_vs_recompute_ratio': {
            str(n): round(ort['segment_total_640x480'] / ort[f'window_recompute_n{n}'], 4)
            for n in RECOMPUTE_N},
        'two_people_vs_one_ratio': round(ort['segment_two_people']
                                         / ort['segment_following_640x480'], 3),
        'repeats': repeats,
        'machine': {'cpu_model': _cpu_model(), 'cores': os.cpu_count(),
                    'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
                    'python': platform.python_version(),
                    'load_average_1_5_15': [round(v, 2) for v in os.getloadavg()]},
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 26's goals against the figures of `result` (onnxruntime, one core per stage):
    [{goal, target, value, met}], value None where this run did not measure it."""
    ort = result['stage_ms']
    nodes = result.get('onnxruntime_nodes', {})
    ready = nodes.get('start_to_ready_s', {})

    def row(goal: str, value: float | None, target: float) -> dict[str, Any]:
        return {'goal': goal, 'target': target, 'value': value,
                'met': None if value is None else bool(value <= target)}

    return [
        row('one segment 640x480, face followed, ms', ort['segment_following_640x480'], 10),
        row('one segment 640x480, whole-frame search, ms', ort['segment_total_640x480'], 30),
        row('one segment 1280x720, face followed, ms', ort['segment_following_1280x720'], 12),
        row('two people / one person', result['two_people_vs_one_ratio'], 1.5),
        row('incremental / recompute, N = 5', result['incremental_vs_recompute_ratio']['5'],
            0.25),
        row('incremental / recompute, N = 12', result['incremental_vs_recompute_ratio']['12'],
            0.104),
        row('three nodes resident, MB', nodes.get('rss_total_mb'), 450),
        row('slowest node start to ready, s', max(ready.values()) if ready else None, 1.5),
        row('latency p95, ms', nodes.get('latency_ms', {}).get('p95'), 40),
    ]


def _markdown(result: dict[str, Any]) -> str:
    m = result['machine']
    lines = [f"machine: {m['cpu_model']}, {m['cores']} cores, load average "
             f"{m['load_average_1_5_15']}; {result['definition']}, medians over "
             f"{result['repeats']} repeats", '',
             '| figure | torch | onnxruntime | torch / onnxruntime |', '|---|---:|---:|---:|']
    ratio = result['torch_over_onnxruntime']
    lines += [f"| {k} | {result['cpu_ms']['torch'][k]:.2f} | {v:.2f} | {ratio[k]:.2f} |"
              for k, v in result['stage_ms'].items()]
    lines += ['', '| N | incremental / recompute (onnxruntime) |', '|---|---:|']
    lines += [f'| {n} | {r:.3f} |' for n, r in result['incremental_vs_recompute_ratio'].items()]
    lines += ['', f"two people / one person, one segment: {result['two_people_vs_one_ratio']:.2f}"
                  ' (segment_two_people / segment_following_640x480)']
    if 'latency_ms' in result:
        lat = result['latency_ms']
        lines += ['', '| live nodes on torch (3 processes, DDS on loopback) | value |',
                  '|---|---:|',
                  f"| end-to-end latency p50 / p95, 30 fps 640x480 | {lat['p50']:.0f} / "
                  f"{lat['p95']:.0f} ms |",
                  f"| highest camera rate without loss | "
                  f"{'>= ' if result['max_camera_fps_is_highest_tested'] else ''}"
                  f"{result['max_camera_fps']} fps |",
                  f"| model file | {result['model_mb']:.2f} MB |"]
        if 'onnxruntime_nodes' in result:
            lines += ['', _nodes_by_backend(result, result['onnxruntime_nodes'])]
    else:
        lines += ['', 'live nodes: not measured']
    lines += ['', '| goal (issue 26) | target | measured | met |', '|---|---:|---:|---|']
    for g in result['goals']:
        value = '-' if g['value'] is None else f"{g['value']:.3g}"
        met = 'not measured' if g['met'] is None else ('yes' if g['met'] else '**missed**')
        lines.append(f"| {g['goal']} | {g['target']:g} | {value} | {met} |")
    lines.append('(restart: a killed node back on /emotion <= 3 s is measured by '
                 'scripts/bench_recovery.py, not here)')
    return '\n'.join(lines)


def _nodes_by_backend(torch_run: dict[str, Any], ort_run: dict[str, Any]) -> str:
    """Markdown: the live-node figures of the torch and the onnxruntime runs side by side."""
    rows = [('end-to-end latency p50, ms', lambda r: r['latency_ms']['p50']),
            ('end-to-end latency p95, ms', lambda r: r['latency_ms']['p95']),
            ('resident memory, all three nodes, MB', lambda r: r['rss_total_mb'])]
    rows += [(f'resident memory, {n}, MB', lambda r, n=n: r['rss_mb'][n])
             for n in torch_run['rss_mb']]
    rows += [(f'start to ready, {n}, s',
              lambda r, n=n: r['start_to_ready_s'].get(n, float('nan')))
             for n in torch_run['rss_mb']]
    lines = ['| live nodes, 3 processes | torch (.pt) | onnxruntime (.onnx) | '
             'torch / onnxruntime |', '|---|---:|---:|---:|']
    for label, get in rows:
        a, b = get(torch_run), get(ort_run)
        lines.append(f'| {label} | {a:.1f} | {b:.1f} | {a / b if b else float("nan"):.2f} |')
    return '\n'.join(lines)


def run_bench(repeats: int = 20, threads: int | None = None, checkpoint=None,
              nodes: bool = True, out_dir=None, as_json: bool = False) -> int:
    """Measure, merge the sections, print JSON or markdown; with `out_dir`, write bench.json
    and (with the nodes) latency_histogram.png there. `threads`: None or 1 (every figure is
    one core's by definition)."""
    if threads not in (None, 1):
        raise ValueError(f'bench figures are CPU time of one thread by definition (the nodes '
                         f'run one intra-op thread); got threads={threads}: leave it out')
    with tempfile.TemporaryDirectory() as tmp:
        model_path = checkpoint if checkpoint is not None else untrained_checkpoint(Path(tmp))
        result: dict[str, Any] = dict(bench_model(repeats, model_path))
        if nodes:
            # rclpy and the message packages: `bench --no-nodes` runs without ROS.
            from lightmer.harness.bench_nodes import bench_nodes

            # The torch run's figures (latency_ms, max_camera_fps, rss_mb, model_mb, ...) sit
            # at the top level beside the model's, as one flat report; the same figures with
            # the nodes on the ONNX export under `onnxruntime_nodes`.
            result.update(bench_nodes(model_path, repeats))
            export = export_checkpoint(model_path, 'onnx', Path(tmp) / 'onnx')[0]
            result['onnxruntime_nodes'] = bench_nodes(export, repeats)
    result['goals'] = goals(result)
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_save_json(out_dir / 'bench.json', result)
        if 'latency_samples_ms' in result:
            plot_latency(result['latency_samples_ms'], out_dir / 'latency_histogram.png',
                         'emotion latency through the live nodes, 30 fps camera')
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(_markdown(result))
    sys.stdout.flush()
    return 0
