"""The smallest face to look for: face size in pixels at 0.5-3 m, and what min_face_size costs.

1. A table (pinhole model, `lightmer.core.camera`, adult face 0.14 m wide): the face's width in
   pixels of the image MTCNN sees (the frame, or its copy with the longer side 640, the default
   `detect_max_side`) at 0.5, 1, 1.5, 2, 2.5 and 3 m, for common resolutions and horizontal
   fields of view.
2. A measurement on a 640x480, 70 degree camera: the astronaut's real face pasted over another
   real photo at the width it has at each distance (three places per distance), whole-frame
   MTCNN (ONNX Runtime, one core) with min_face_size 16 ... 48: the fraction found per distance
   and the median CPU ms per frame.

Usage: nice -n 10 .venv/bin/python scripts/measure_min_face.py --out demo-out/min_face
Writes min_face.json and min_face.png and prints the tables.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import face_cropper
from lightmer.core.camera import face_width_px
from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.export import export_checkpoint
from lightmer.core.model import LightmerNet
from lightmer.core.plots import save_figure

DISTANCES_M = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
CAMERAS = ((640, 480, 60), (640, 480, 70), (640, 480, 90), (1280, 720, 70), (1280, 720, 90),
           (1920, 1080, 70), (1920, 1080, 90))
MIN_FACE_SIZES = (16, 20, 24, 28, 32, 40, 48)
MEASURED_CAMERA = (640, 480, 70)
DETECT_MAX_SIDE = 640
# The astronaut's head and shoulders (rows 0:300, columns 110:410); her MTCNN box is 86 px wide.
HEAD = (slice(0, 300), slice(110, 410))
HEAD_PER_FACE = 300 / 86


def table() -> dict[str, dict[str, list[float]]]:
    """{camera: {distance: [face px in the frame, face px in the detection copy]}}."""
    return {f'{w}x{h}, {fov} deg': {
        str(d): [round(face_width_px(d, w, fov), 1),
                 round(face_width_px(d, w, fov, DETECT_MAX_SIDE, h), 1)] for d in DISTANCES_M}
        for w, h, fov in CAMERAS}


def frames_at(distance_m: float) -> list[np.ndarray]:
    w, h, fov = MEASURED_CAMERA
    side = max(1, round(face_width_px(distance_m, w, fov) * HEAD_PER_FACE))
    head = np.asarray(Image.fromarray(data.astronaut()[HEAD]).resize((side, side)))
    canvas = np.asarray(Image.fromarray(data.coffee()).resize((w, h)))
    out = []
    for fx, fy in ((0.5, 0.45), (0.2, 0.3), (0.8, 0.6)):
        x0 = int(np.clip(fx * w - side / 2, 0, max(w - side, 0)))
        y0 = int(np.clip(fy * h - side / 2, 0, max(h - side, 0)))
        frame = canvas.copy()
        frame[y0:y0 + min(side, h), x0:x0 + min(side, w)] = head[:h, :w]
        out.append(frame)
    return out


def measure(model: Path) -> dict[str, dict]:
    sets = {str(d): frames_at(d) for d in DISTANCES_M}
    out = {}
    for size in MIN_FACE_SIZES:
        cropper = face_cropper(model, size, 1)
        found, ms = {}, []
        for d, frames in sets.items():
            hits = 0
            for frame in frames:
                t0 = time.thread_time()
                box = cropper.detect([frame])[0]
                ms.append((time.thread_time() - t0) * 1e3)
                hits += box is not None
            found[d] = hits / len(frames)
        out[str(size)] = {'found': found, 'median_cpu_ms': statistics.median(ms)}
        print(f'min_face_size {size}: {found}, {statistics.median(ms):.1f} ms', flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        meta = meta_for_preset('crema-d', dataset='min-face measurement (untrained)')
        save_checkpoint(Path(tmp) / 'm.pt', LightmerNet(meta.model), meta)
        export_checkpoint(Path(tmp) / 'm.pt', 'onnx')
        results = {'face_px': table(), 'measured_camera': list(MEASURED_CAMERA),
                   'min_face_size': measure(Path(tmp) / 'm.onnx')}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(args.out / 'min_face.json', results)
    _plot(results, args.out / 'min_face.png')
    print(_tables(results))
    return 0


def _tables(results: dict) -> str:
    head = ' | '.join(f'{d} m' for d in DISTANCES_M)
    lines = [f'| camera: face px in the frame (in the 640 px detection copy) | {head} |',
             '|---|' + '---:|' * len(DISTANCES_M)]
    for cam, row in results['face_px'].items():
        cells = [f'{a:.0f}' if a == b else f'{a:.0f} ({b:.0f})' for a, b in row.values()]
        lines.append(f'| {cam} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'| min_face_size | CPU ms per frame | found at {head} |',
              '|---:|---:|' + '---:|' * len(DISTANCES_M)]
    for size, r in results['min_face_size'].items():
        lines.append(f"| {size} | {r['median_cpu_ms']:.1f} | "
                     + ' | '.join(f'{v:.2f}' for v in r['found'].values()) + ' |')
    return '\n'.join(lines)


def _plot(results: dict, path: Path) -> None:
    import matplotlib  # only for the figure: the measurement runs without it
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_found, ax_ms) = plt.subplots(1, 2, figsize=(11, 4))
    rows = results['min_face_size']
    for size, r in rows.items():
        ax_found.plot(DISTANCES_M, list(r['found'].values()), 'o-', label=f'min_face_size {size}')
    ax_ms.plot([int(s) for s in rows], [r['median_cpu_ms'] for r in rows.values()], 'o-')
    ax_found.set_xlabel('distance, m (640x480, 70 deg camera, face 0.14 m)')
    ax_found.set_ylabel('fraction of faces found')
    ax_ms.set_xlabel('min_face_size, px')
    ax_ms.set_ylabel('whole-frame MTCNN, median CPU ms (1 core)')
    ax_found.legend(fontsize=7)
    for ax in (ax_found, ax_ms):
        ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=110)


if __name__ == '__main__':
    raise SystemExit(main())
