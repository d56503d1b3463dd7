"""`lightmer bench`: what each stage costs on this machine, and what the segment cache saves.

The result is a dict of sections merged into one JSON object:
- model section (`bench_model`): `stage_ms` (medians over repeats, milliseconds),
  `incremental_vs_recompute_ratio` and `machine` (CPU model, cores, torch threads);
- `backends` (`bench_backends`): one segment's stages on torch (the checkpoint) and on
  onnxruntime (its ONNX export) side by side, CPU milliseconds of one core, with the
  torch / onnxruntime ratios, at 640x480 and 1280x720 with the default `detect_max_side`;
- the live-node figures of `lightmer.harness.bench_nodes` (latency_ms, max_camera_fps, rss_mb,
  model_mb, ...), merged at the top level, unless `--no-nodes`.

`incremental_vs_recompute_ratio[N]` = one segment in total (detect + crop + log-mel + VN + AN +
FC + fusion of N cached logits) / a full-window recompute of N segments (all N frames detected,
cropped, N log-mels, the networks on N segments, fusion). With the cache a new window costs one
segment, so the ratio is about 1/N (paper Fig. 2). `networks_window_n{N}` is the model alone
on a whole window (no detection, no log-mel), the figure the paper reports per window.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import face_cropper, load_model, read_meta
from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.config import FeatureConfig
from lightmer.core.export import export_checkpoint
from lightmer.core.features import FaceCropper, crop_face, face_to_input, log_mel_at
from lightmer.core.model import LightmerNet, ModelConfig, fuse
from lightmer.core.plots import plot_latency
from lightmer.harness.bench_inputs import bench_frame_720p, camera_frame, untrained_checkpoint
from lightmer.stream.people import MultiFaceSegmenter

RECOMPUTE_N = (5, 12)


def _median_ms(fn: Callable[[], object], repeats: int,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Median time of fn() in ms on `clock` (wall by default) over `repeats` calls, after one
    untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1e3)
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


def _median_cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """`_median_ms` in CPU time of this thread. Both runtimes compute on the calling thread when
    given one thread, so this is the cost on one core, unaffected by other processes sharing
    the machine (wall time is not)."""
    return _median_ms(fn, repeats, time.thread_time)


def bench_backends(checkpoint, repeats: int) -> dict[str, Any]:
    """One segment on each backend: CPU ms per stage (one thread each) and torch / onnxruntime.

    `checkpoint`: a .pt file; it is exported to ONNX in a temporary directory.
    """
    frames = {'640x480': camera_frame(), '1280x720': bench_frame_720p()}
    with tempfile.TemporaryDirectory() as tmp:
        export = export_checkpoint(checkpoint, 'onnx', tmp)[0]
        stages = {name: _segment_stages(path, frames, repeats)
                  for name, path in (('torch', checkpoint), ('onnxruntime', export))}
    detect_max_side = read_meta(checkpoint).features.detect_max_side
    return {'cpu_ms': stages, 'detect_max_side': detect_max_side,
            'torch_over_onnxruntime': {
                k: round(stages['torch'][k] / max(stages['onnxruntime'][k], 1e-6), 2)
                for k in stages['torch']},
            'definition': 'median CPU ms of one thread (one core), after a warm-up call'}


def _segment_stages(path, frames: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    """CPU ms per stage of one segment with the model at `path`, on one thread."""
    model = load_model(path, threads=1)
    meta, cropper = model.meta, face_cropper(path, threads=1, meta=model.meta)
    audio = np.random.default_rng(0).normal(0, 0.1, 4 * meta.features.sample_rate)
    audio = audio.astype(np.float32)
    mel = log_mel_at(audio, 2.0, meta.features)
    cached = np.zeros((meta.n_segments - 1, len(meta.labels)))     # the window's other logits

    def segment(frame: np.ndarray) -> np.ndarray:   # detect + crop + log-mel + nets + fusion
        crop = cropper([frame])[0]
        m = log_mel_at(audio, 2.0, meta.features)
        return model.fuse(np.vstack([cached, model.segment_logits(crop, m)]))

    ms: dict[str, float] = {}
    for size, frame in frames.items():
        if cropper.detect([frame])[0] is None:
            raise RuntimeError(f'MTCNN ({path}) found no face in the {size} bench frame')
        ms[f'mtcnn_detect_{size}'] = _median_cpu_ms(lambda f=frame: cropper.detect([f]),
                                                    repeats)
        ms[f'segment_total_{size}'] = _median_cpu_ms(lambda f=frame: segment(f), repeats)
    crop = cropper([frames['640x480']])[0]
    ms['log_mel'] = _median_cpu_ms(lambda: log_mel_at(audio, 2.0, meta.features), repeats)
    ms['face_to_input'] = _median_cpu_ms(lambda: face_to_input(crop), repeats)
    ms['segment_networks'] = _median_cpu_ms(lambda: model.segment_logits(crop, mel), repeats)
    ms['fusion'] = _median_cpu_ms(lambda: model.fuse(np.vstack([cached, cached[:1]])), repeats)
    return {k: round(v, 3) for k, v in ms.items()}


def bench_model(repeats: int, threads: int | None = None, checkpoint=None) -> dict[str, Any]:
    """The model section: per-stage medians, incremental/recompute ratios, machine facts."""
    if threads is not None:
        torch.set_num_threads(threads)
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint)
        fcfg = meta.features
    else:
        fcfg = FeatureConfig()
        model = LightmerNet(ModelConfig(n_classes=6)).eval()
    inputs = _segment_inputs(model, fcfg)
    with torch.inference_mode():
        stage_ms = _stage_ms(inputs, repeats)
        window_ms, ratios = _window_ms(inputs, repeats, stage_ms['segment_total'])
    stage_ms.update(window_ms)
    return {
        'stage_ms': {k: round(v_, 4) for k, v_ in stage_ms.items()},
        'incremental_vs_recompute_ratio': {k: round(r, 4) for k, r in ratios.items()},
        'two_people_vs_one_ratio': round(stage_ms['segment_total_two_people']
                                         / stage_ms['segment_total'], 3),
        'repeats': repeats,
        'machine': {'cpu_model': _cpu_model(), 'cores': os.cpu_count(),
                    'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
                    'python': platform.python_version()},
    }


@dataclass(frozen=True)
class _SegmentInputs:
    """One segment's inputs, raw and as the networks take them, and the model."""

    model: LightmerNet
    fcfg: FeatureConfig
    cropper: FaceCropper
    frame: np.ndarray           # uint8 (480, 640, 3), one person
    box: np.ndarray             # (4,) her face
    audio: np.ndarray           # float32 (4 * sample_rate,) noise, 4 s
    centre: float               # s, the audio window's centre
    face: torch.Tensor          # (1, 1, 98, 80)
    mel: torch.Tensor           # (1, 1, 128, 43)
    cached: dict[int, torch.Tensor]   # N -> (N - 1, C): a window's other, cached logits
    two: np.ndarray             # uint8 (480, 640, 3), two people
    people: MultiFaceSegmenter


def _segment_inputs(model: LightmerNet, fcfg: FeatureConfig) -> _SegmentInputs:
    """The bench frames' faces found (RuntimeError when MTCNN misses one) and the inputs."""
    cropper = FaceCropper(fcfg)
    frame = camera_frame()
    box = cropper.detect([frame])[0]
    if box is None:
        raise RuntimeError('MTCNN found no face in the bench frame; is facenet-pytorch intact?')
    audio = np.random.default_rng(0).normal(0, 0.1, 4 * fcfg.sample_rate).astype(np.float32)
    centre = 2.0
    face = torch.from_numpy(face_to_input(crop_face(frame, box, fcfg))[None])   # (1,1,98,80)
    mel = torch.from_numpy(log_mel_at(audio, centre, fcfg)[None, None])         # (1,1,128,43)
    cached = {n: torch.zeros(n - 1, model.cfg.n_classes) for n in RECOMPUTE_N}
    # Several people: the face node's per-person path (every face, tracked, one crop each),
    # then one segment and one window per person in fusion.
    two = camera_frame(people=2)
    people = MultiFaceSegmenter(cropper, 0.5, 'centre', max_faces=4)
    if len(people.faces_of(two)[0]) != 2:
        raise RuntimeError('MTCNN did not find both faces of the two-person bench frame')
    return _SegmentInputs(model, fcfg, cropper, frame, box, audio, centre, face, mel, cached,
                          two, people)


def _one_segment(x: _SegmentInputs, n_window: int) -> torch.Tensor:
    """What a new segment costs with the cache: detect, crop, log-mel, the networks on it,
    fusion with the window's N - 1 cached logits."""
    b = x.cropper.detect([x.frame])[0]
    f = torch.from_numpy(face_to_input(crop_face(x.frame, b, x.fcfg))[None])
    m = torch.from_numpy(log_mel_at(x.audio, x.centre, x.fcfg)[None, None])
    logits = x.model.segment_logits(f, m)                                       # (1, C)
    return fuse(torch.cat([x.cached[n_window], logits]))                        # (C,)


def _two_people_segment(x: _SegmentInputs) -> list[torch.Tensor]:
    faces, _ = x.people.faces_of(x.two)
    m = torch.from_numpy(log_mel_at(x.audio, x.centre, x.fcfg)[None, None])
    return [fuse(torch.cat([x.cached[5], x.model.segment_logits(
        torch.from_numpy(face_to_input(f.crop)[None]), m)])) for f in faces]


def _recompute(x: _SegmentInputs, n: int) -> torch.Tensor:
    """A whole window without the cache: N frames detected, cropped, N log-mels, the model."""
    boxes = x.cropper.detect([x.frame] * n)                                     # one batch
    faces = np.stack([face_to_input(crop_face(x.frame, b, x.fcfg)) for b in boxes])
    mels = np.stack([log_mel_at(x.audio, x.centre, x.fcfg)[None] for _ in range(n)])
    logits = x.model(torch.from_numpy(faces)[None], torch.from_numpy(mels)[None])  # (1, C)
    return torch.softmax(logits, dim=-1)


def _stage_ms(x: _SegmentInputs, repeats: int) -> dict[str, float]:
    """Median ms of each stage of one segment, and of a whole segment for one and two
    people."""
    model, cropper, fcfg, frame, box = x.model, x.cropper, x.fcfg, x.frame, x.box
    audio, centre, face, mel, cached = x.audio, x.centre, x.face, x.mel, x.cached
    v = model.embed_visual(face)
    a = model.embed_audio(mel)
    stage_ms: dict[str, float] = {}
    stage_ms['mtcnn_detect_640x480'] = _median_ms(lambda: cropper.detect([frame]), repeats)
    stage_ms['face_crop'] = _median_ms(
        lambda: face_to_input(crop_face(frame, box, fcfg)), repeats)
    stage_ms['log_mel'] = _median_ms(lambda: log_mel_at(audio, centre, fcfg), repeats)
    stage_ms['visual_net'] = _median_ms(lambda: model.embed_visual(face), repeats)
    stage_ms['audio_net'] = _median_ms(lambda: model.embed_audio(mel), repeats)
    stage_ms['fc_fusion'] = _median_ms(
        lambda: fuse(torch.cat([cached[5], model.head(v, a)])), repeats)
    stage_ms['segment_total'] = _median_ms(lambda: _one_segment(x, 5), repeats)
    stage_ms['segment_total_two_people'] = _median_ms(lambda: _two_people_segment(x), repeats)
    return stage_ms


def _window_ms(x: _SegmentInputs, repeats: int,
               segment_total_n5: float) -> tuple[dict[str, float], dict[str, float]]:
    """Per N in RECOMPUTE_N: a window recomputed, the networks alone on a window (ms), and the
    incremental / recompute ratio (`segment_total_n5`: the N = 5 segment, measured already)."""
    window_ms: dict[str, float] = {}
    ratios = {}
    for n in RECOMPUTE_N:
        seg = segment_total_n5 if n == 5 else _median_ms(
            lambda n=n: _one_segment(x, n), repeats)
        full = _median_ms(lambda n=n: _recompute(x, n), repeats)
        window_ms[f'window_recompute_n{n}'] = full
        # the networks alone on a whole window: the paper's "inference per window"
        faces_n = x.face.expand(n, -1, -1, -1)[None]                # (1, N, 1, 98, 80)
        mels_n = x.mel.expand(n, -1, -1, -1)[None]                  # (1, N, 1, 128, 43)
        window_ms[f'networks_window_n{n}'] = _median_ms(
            lambda f=faces_n, m=mels_n: torch.softmax(x.model(f, m), dim=-1), repeats)
        ratios[str(n)] = seg / full
    return window_ms, ratios


def _markdown(result: dict[str, Any]) -> str:
    m = result['machine']
    lines = [f"machine: {m['cpu_model']}, {m['cores']} cores, torch threads "
             f"{m['torch_threads']} (each node: 1); medians over {result['repeats']} repeats",
             '', '| stage | median ms |', '|---|---:|']
    lines += [f'| {k} | {v:.2f} |' for k, v in result['stage_ms'].items()]
    lines += ['', '| N | incremental / recompute |', '|---|---:|']
    lines += [f'| {n} | {r:.3f} |' for n, r in result['incremental_vs_recompute_ratio'].items()]
    lines += ['', f"two people / one person, one segment: {result['two_people_vs_one_ratio']:.2f}"
                  " (segment_total_two_people / segment_total)"]
    if 'backends' in result:
        b = result['backends']
        lines += ['', f"one segment per backend, CPU ms on one core (detect_max_side "
                      f"{b['detect_max_side']})", '',
                  '| stage | torch | onnxruntime | torch / onnxruntime |', '|---|---:|---:|---:|']
        lines += [f"| {k} | {v:.2f} | {b['cpu_ms']['onnxruntime'][k]:.2f} | "
                  f"{b['torch_over_onnxruntime'][k]:.2f} |"
                  for k, v in b['cpu_ms']['torch'].items()]
    if 'latency_ms' not in result:
        lines += ['', 'live nodes: not measured']
        return '\n'.join(lines)
    lat = result['latency_ms']
    lines += ['', '| live nodes (3 processes, DDS on loopback) | value |', '|---|---:|',
              f"| end-to-end latency p50 / p95, 30 fps 640x480 | {lat['p50']:.0f} / "
              f"{lat['p95']:.0f} ms |",
              f"| highest camera rate without loss | "
              f"{'>= ' if result['max_camera_fps_is_highest_tested'] else ''}"
              f"{result['max_camera_fps']} fps |",
              f"| model file | {result['model_mb']:.2f} MB |"]
    lines += [f'| resident memory, {name} | {mb:.0f} MB |'
              for name, mb in result['rss_mb'].items()]
    if 'onnxruntime_nodes' in result:
        lines += ['', _nodes_by_backend(result, result['onnxruntime_nodes'])]
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
    and (with the nodes) latency_histogram.png there."""
    result: dict[str, Any] = dict(bench_model(repeats, threads, checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        model_path = checkpoint if checkpoint is not None else untrained_checkpoint(Path(tmp))
        result['backends'] = bench_backends(model_path, repeats)
        if nodes:
            # rclpy and the message packages: `bench --no-nodes` runs without ROS.
            from lightmer.harness.bench_nodes import bench_nodes

            # The torch run's figures (latency_ms, max_camera_fps, rss_mb, model_mb, ...) sit
            # at the top level beside the model's, as one flat report; the same figures with
            # the nodes on the ONNX export under `onnxruntime_nodes`.
            result.update(bench_nodes(model_path, repeats))
            export = export_checkpoint(model_path, 'onnx', Path(tmp) / 'onnx')[0]
            result['onnxruntime_nodes'] = bench_nodes(export, repeats)
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
