"""Cost and detection rate of MTCNN per `detect_max_side`: what chose its default.

For each setting, on one core, with the default min_face_size (40 px of the image MTCNN sees):
  - real-face frames: the scikit-image astronaut scaled so that its face is 30 ... 320 px wide,
    pasted at three places into 640x480 and 1280x720 frames over another real photo;
  - generated-corpus frames: a few frames of every clip of a fresh CREMA-D-layout corpus
    (480x360) and the same frames upscaled to 1280x720 (real RAVDESS clips are 720p);
it reports the fraction of frames where a face is found, the median CPU milliseconds per
frame on one core (onnxruntime path, and the torch path for comparison), and how far the crop
is from the crop of full-resolution detection (mean absolute grey-level difference of the
98x80 crops, and the largest corner distance of the boxes in per cent of the face width).
As a yardstick for those distances: the same between full-resolution detection on the frame
and on the frame moved right by one pixel (MTCNN's own jitter when the camera moves).

Usage: .venv/bin/python scripts/measure_detect_side.py --out demo-out/detect_side
Writes detect_side.json and detect_side.png (cost and rate per setting) and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import mtcnn_nets
from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.export import export_checkpoint
from lightmer.core.features import FaceCropper
from lightmer.core.model import LightmerNet
from lightmer.core.plots import save_figure
from lightmer.datasets.media import decode_video
from lightmer.datasets.synth import synthesize

SIDES = (0, 320, 480, 640, 960)
FACE_WIDTHS = (30, 40, 60, 80, 120, 160, 240, 320)      # astronaut face width, frame px
FRAME_SIZES = ((480, 640), (720, 1280))
# The astronaut's head and shoulders, rows 0:300 and columns 110:410 of data.astronaut(); her
# MTCNN box is 86 px wide in it.
HEAD = (slice(0, 300), slice(110, 410))
HEAD_PER_FACE = 3.5


def astronaut_frames() -> list[tuple[str, np.ndarray]]:
    photo = data.astronaut()[HEAD]
    background = np.asarray(Image.fromarray(data.coffee()).convert('RGB'))
    frames = []
    for h, w in FRAME_SIZES:
        canvas = np.asarray(Image.fromarray(background).resize((w, h)))
        for face in FACE_WIDTHS:
            side = round(face * HEAD_PER_FACE)
            if side > h:
                continue
            small = np.asarray(Image.fromarray(photo).resize((side, side)))
            for k, (fx, fy) in enumerate(((0.5, 0.5), (0.15, 0.2), (0.85, 0.7))):
                x0 = int(np.clip(fx * w - side / 2, 0, w - side))
                y0 = int(np.clip(fy * h - side / 2, 0, h - side))
                frame = canvas.copy()
                frame[y0:y0 + side, x0:x0 + side] = small
                frames.append((f'astronaut {w}x{h} face {face}px #{k}', frame))
    return frames


def corpus_frames(root: Path, per_clip: int = 3) -> list[tuple[str, np.ndarray]]:
    synthesize('crema-d', root, actors=4, clips_per_emotion=1, seed=1)
    frames = []
    for path in sorted((root / 'VideoFlash').glob('*.flv')):
        video, _, _ = decode_video(path)
        for i in np.linspace(0, len(video) - 1, per_clip).astype(int):
            frames.append((f'corpus 480x360 {path.stem}#{i}', video[i]))
            big = np.asarray(Image.fromarray(video[i]).resize((1280, 720)))
            frames.append((f'corpus 1280x720 {path.stem}#{i}', big))
    return frames


def measure(frames, croppers: dict, reference) -> dict:
    """Per cropper: found fraction, median CPU ms, crop and box distance to `reference`; and
    under 'jitter 1px' the reference's own distance when the frame moves one pixel right."""
    ref_boxes = reference.detect([f for _, f in frames])
    out = {}
    for name, cropper in {**croppers, 'jitter 1px': reference}.items():
        found, ms, crop_diff, corner = 0, [], [], []
        for (_, frame), ref in zip(frames, ref_boxes, strict=True):
            shift = np.zeros(4)
            if name == 'jitter 1px':
                frame = np.roll(frame, 1, axis=1)
                shift = np.array([1.0, 0.0, 1.0, 0.0])
            # CPU time of this thread: both detectors run on it (one torch thread, one
            # onnxruntime intra-op thread), and it does not count time other processes
            # took from us on a shared machine, as wall time would.
            t0 = time.thread_time()
            box = cropper.detect([frame])[0]
            ms.append((time.thread_time() - t0) * 1e3)
            if box is None:
                continue
            found += 1
            if ref is not None:
                a = cropper.crop(frame, box).astype(float)
                b = reference.crop(np.roll(frame, -int(shift[0]), axis=1), ref).astype(float)
                crop_diff.append(float(np.abs(a - b).mean()))
                corner.append(float(np.abs(box - ref - shift).max() / (ref[2] - ref[0])))
        out[name] = {'found': found / len(frames), 'n': len(frames),
                     'median_cpu_ms': statistics.median(ms),
                     'crop_mean_abs_diff': statistics.mean(crop_diff) if crop_diff else None,
                     'crop_mean_abs_diff_max': max(crop_diff) if crop_diff else None,
                     'box_corner_max_pct': 100 * max(corner) if corner else None}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        meta = meta_for_preset('crema-d', dataset='detect-side measurement (untrained)')
        save_checkpoint(tmp / 'm.pt', LightmerNet(meta.model), meta)
        export_checkpoint(tmp / 'm.pt', 'onnx')
        nets = mtcnn_nets(tmp / 'm.onnx', threads=1)
        sets = {'astronaut': astronaut_frames(), 'corpus': corpus_frames(tmp / 'corpus')}
        results = {}
        for set_name, frames in sets.items():
            by_size: dict[str, list] = {}
            for name, frame in frames:
                by_size.setdefault(f'{frame.shape[1]}x{frame.shape[0]}', []).append(
                    (name, frame))
            for size, group in by_size.items():
                full = FaceCropper(dataclasses.replace(meta.features, detect_max_side=0))
                croppers = {}
                for side in SIDES:
                    cfg = dataclasses.replace(meta.features, detect_max_side=side)
                    croppers[f'onnx {side}'] = FaceCropper(cfg, nets=nets)
                    croppers[f'torch {side}'] = FaceCropper(cfg)
                results[f'{set_name} {size}'] = measure(group, croppers, full)
                print(f'{set_name} {size}: {len(group)} frames', flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / 'detect_side.json', results)
    _plot(results, args.out / 'detect_side.png')
    print(_table(results))
    return 0


def _table(results: dict) -> str:
    lines = ['| frames | detect_max_side | found (onnx / torch) | CPU ms onnx | CPU ms torch | '
             'crop diff, grey levels (mean / max) | box corner max, % of face width |',
             '|---|---:|---:|---:|---:|---:|---:|']

    def dist(r: dict) -> tuple[str, str]:
        if r['crop_mean_abs_diff'] is None:
            return '-', '-'
        return (f"{r['crop_mean_abs_diff']:.1f} / {r['crop_mean_abs_diff_max']:.1f}",
                f"{r['box_corner_max_pct']:.1f}")

    for group, rows in results.items():
        for side in SIDES:
            o, t = rows[f'onnx {side}'], rows[f'torch {side}']
            diff, corner = dist(o)
            lines.append(f"| {group} ({o['n']}) | {side or 'full'} | {o['found']:.2f} / "
                         f"{t['found']:.2f} | {o['median_cpu_ms']:.1f} | "
                         f"{t['median_cpu_ms']:.1f} | {diff} | {corner} |")
        diff, corner = dist(rows['jitter 1px'])
        lines.append(f'| {group} | full, frame moved 1 px | | | | {diff} | {corner} |')
    return '\n'.join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib  # only for the figure: the measurement runs without it
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_ms, ax_rate) = plt.subplots(1, 2, figsize=(11, 4))
    sides = sorted(SIDES, key=lambda s: s or 1400)            # full frame last, drawn at 1400
    xs = [s or 1400 for s in sides]
    for group, rows in results.items():
        ax_ms.plot(xs, [rows[f'onnx {s}']['median_cpu_ms'] for s in sides], 'o-', label=group)
        ax_rate.plot(xs, [rows[f'onnx {s}']['found'] for s in sides], 'o-', label=group)
    for ax, label in ((ax_ms, 'median CPU ms per frame (onnxruntime, 1 core)'),
                      (ax_rate, 'fraction of frames with a face')):
        ax.set_xlabel('detect_max_side (1400 = full frame)')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_rate.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


if __name__ == '__main__':
    raise SystemExit(main())
