"""MTCNN face detection around three networks given as numpy callables (no torch).

The cascade of Zhang et al., "Joint Face Detection and Alignment Using Multitask Cascaded
Convolutional Networks" (IEEE Signal Processing Letters, 2016): an image pyramid scanned by
P-Net for candidate windows, R-Net and then O-Net re-scoring and refining square crops of them,
non-maximum suppression between the stages. The arithmetic follows facenet-pytorch 2.6.0's
detector (the paper's reference detector here) convention by convention, so that with its
P/R/O-Net weights (exported to ONNX by `lightmer.core.export`) the boxes equal its `MTCNN.detect`
(tested box for box in test/test_mtcnn.py):

- pyramid scales 12/min_face_size * factor^k while the scaled shorter side is >= 12 px; scale
  s resizes to (int(h s + 1), int(w s + 1)) by area averaging; pixels map to (x - 127.5) / 128;
- a P-Net cell (row r, column c) at scale s is the box floor((2c + 1) / s), floor((2r + 1) / s),
  floor((2c + 12) / s), floor((2r + 12) / s) (MATLAB's 1-based origin), kept when its face
  probability is >= thresholds[0]; IoU NMS 0.5 per scale, then 0.7 over all scales;
- P-Net's regression scales by the box size x2 - x1; R-Net's and O-Net's by x2 - x1 + 1;
  boxes are made square around their centre before each crop; a crop spans the truncated,
  1-based, clipped box; R-Net keeps probabilities > thresholds[1] (IoU NMS 0.7), O-Net
  > thresholds[2], then NMS 0.7 on intersection over the smaller area ("Min");
- arithmetic in float32, as the torch original.

Deliberate differences, where facenet-pytorch raises instead of answering: an image too small
for any pyramid scale, and candidates whose crop lies wholly outside the image, are no face.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

THRESHOLDS = (0.6, 0.7, 0.7)    # face probability per stage (facenet-pytorch's defaults)
FACTOR = 0.709                  # pyramid step: the area halves every second scale
_CELL = 12                      # P-Net's receptive field and the smallest face it sees, px
_STRIDE = 2                     # P-Net's output stride, px


class MTCNNNets(NamedTuple):
    """The three networks as numpy callables on float32 NCHW batches, and optionally a faster
    `integral_image`.

    pnet: (1, 3, h, w) -> (regression (1, 4, h', w'), probabilities (1, 2, h', w'))
    rnet: (K, 3, 24, 24) -> (regression (K, 4), probabilities (K, 2))
    onet: (K, 3, 48, 48) -> (regression (K, 4), landmarks (K, 10), probabilities (K, 2))
    integral: uint8 (H, W, 3) -> int32 (H + 1, W + 1, 3), as `integral_image` computes it
        (the export carries it as an ONNX graph: numpy's cumulative sums are ~8x slower);
        used while the image's sum fits in int32.
    """

    pnet: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    rnet: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    onet: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    integral: Callable[[np.ndarray], np.ndarray] | None = None


def detect_faces(image: np.ndarray, nets: MTCNNNets, min_face_size: float = 40,
                 thresholds: tuple[float, float, float] = THRESHOLDS,
                 factor: float = FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """Faces in one RGB image.

    Args:
        image: uint8 (H, W, 3) RGB.
        nets: the three networks (`MTCNNNets`).
        min_face_size: smallest face looked for, pixels of `image`.
    Returns:
        boxes float32 (K, 4) x1 y1 x2 y2 pixels and probabilities float32 (K,), highest
        probability first; K = 0 when there is no face.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}')
    h, w = img.shape[:2]
    ii = integral_image(img, nets.integral)     # every resize below sums rectangles of it
    boxes = _propose(ii, nets.pnet, scale_pyramid(h, w, min_face_size, factor), thresholds[0])
    if len(boxes):
        boxes, reg = _refine(ii, boxes, nets.rnet, 24, thresholds[1])
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = square(regress(boxes[keep], reg[keep], plus_one=True))
    if len(boxes):
        boxes, reg = _refine(ii, boxes, nets.onet, 48, thresholds[2])
        boxes = regress(boxes, reg, plus_one=True)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, over_min=True)]
    return boxes[:, :4].copy(), boxes[:, 4].copy()


def scale_pyramid(h: int, w: int, min_face_size: float, factor: float = FACTOR) -> list[float]:
    """Scales at which P-Net scans an (h, w) image: none when the image is too small."""
    scale = _CELL / min_face_size
    shorter = min(h, w) * scale
    scales = []
    while shorter >= _CELL:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) image -> float32 (h, w, C) by area averaging.

    Output pixel (i, j) averages input rows [floor(i H / h), ceil((i + 1) H / h)) and columns
    likewise: torch's adaptive average pooling, which facenet-pytorch's `interpolate(mode=
    'area')` is. The window sums are exact (from an integral image) and divided as torch
    divides, by the row count, then by the column count, in float32: the result is bit for
    bit torch's while a window's sum stays below 2^24. The pyramid and the crops use the
    same arithmetic on one integral image per frame.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f'area_resize expects uint8 pixels, got {img.dtype}')
    return _resize_whole(integral_image(img), size)


def integral_image(image: np.ndarray, integral=None) -> np.ndarray:
    """uint8 (H, W, C) -> int (H + 1, W + 1, C): ii[r, c] = sum of image[:r, :c] (exact).

    int32 while the whole image's sum fits in it (below 8.4 megapixels), computed by
    `integral` when given; int64 beyond.
    """
    h, w, c = image.shape
    if 255 * h * w >= 2**31:
        return np.pad(image.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    if integral is not None:
        return integral(np.ascontiguousarray(image))
    ii = np.zeros((h + 1, w + 1, c), np.int32)
    # Down the rows first, on (H, W * C) views (each row of ii[1:, 1:] is contiguous, so the
    # reshape is a view, not a copy), then along the columns.
    np.cumsum(image.reshape(h, w * c), axis=0, dtype=np.int32,
              out=ii[1:, 1:].reshape(h, w * c))
    np.cumsum(ii[1:, 1:], axis=1, out=ii[1:, 1:])
    return ii


def _windows(start: np.ndarray, length: np.ndarray, n_out: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pooling windows [lo, hi) of n_out outputs over `length` pixels from `start`:
    int (K,) each -> (K, n_out) each."""
    i = np.arange(n_out)
    n = length[:, None]
    return start[:, None] + (i * n) // n_out, start[:, None] + ((i + 1) * n + n_out - 1) // n_out


def _divide(sums: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Window sums -> means, dividing as torch does: by the row count, then the column count."""
    return (sums.astype(np.float32) / rows.astype(np.float32)[..., None]
            / cols.astype(np.float32)[..., None])


def _resize_whole(ii: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize the whole image behind integral image `ii` to `size`: float32 (h, w, C).

    Rows then columns (two gathers of whole rows, then of columns), cheaper than four corner
    gathers per output pixel for one large region."""
    (r0, r1), (c0, c1) = (_windows(np.zeros(1, int), np.array([n]), m)
                          for n, m in zip((ii.shape[0] - 1, ii.shape[1] - 1), size, strict=True))
    strips = ii[r1[0]] - ii[r0[0]]                               # (h, W + 1, C)
    sums = strips[:, c1[0]] - strips[:, c0[0]]                   # (h, w, C)
    return _divide(sums, (r1 - r0)[0][:, None], (c1 - c0)[0][None, :])


def _resize_boxes(ii: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize K regions of the image behind integral image `ii` to `size`.

    boxes: int (K, 4) top, left, bottom, right (exclusive) -> float32 (K, h, w, C).
    """
    r0, r1 = _windows(boxes[:, 0], boxes[:, 2] - boxes[:, 0], size[0])     # (K, h)
    c0, c1 = _windows(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size[1])     # (K, w)
    r0, r1 = r0[:, :, None], r1[:, :, None]
    c0, c1 = c0[:, None, :], c1[:, None, :]
    sums = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]                # (K, h, w, C)
    return _divide(sums, r1 - r0, c1 - c0)


def _to_input(pixels: np.ndarray) -> np.ndarray:
    """float32 (..., H, W, 3) pixel values -> float32 (..., 3, H, W) network input."""
    x = (pixels - np.float32(127.5)) * np.float32(0.0078125)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3), dtype=np.float32)


def _propose(ii: np.ndarray, pnet, scales: list[float], threshold: float) -> np.ndarray:
    """Stage 1: float32 (K, 5) candidate boxes x1 y1 x2 y2 score, squared and regressed."""
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    found = []
    for scale in scales:
        resized = _resize_whole(ii, (int(h * scale + 1), int(w * scale + 1)))
        reg, prob = pnet(_to_input(resized)[None])              # (1, 4, h', w'), (1, 2, h', w')
        # row-major order, as torch.nonzero's
        rows, cols = np.nonzero(prob[0, 1] >= np.float32(threshold))
        cells = np.stack([cols, rows], axis=1).astype(np.float32)        # (K, 2) x, y
        s = np.float32(scale)
        q1 = np.floor((_STRIDE * cells + 1) / s)
        q2 = np.floor((_STRIDE * cells + _CELL) / s)
        cand = np.concatenate([q1, q2, prob[0, 1, rows, cols][:, None],
                               reg[0][:, rows, cols].T], axis=1).astype(np.float32)  # (K, 9)
        found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
    cand = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
    cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
    boxes = regress(cand[:, :5], cand[:, 5:9], plus_one=False)
    return square(boxes)


def _refine(ii: np.ndarray, boxes: np.ndarray, net, size: int, threshold: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Stages 2 and 3: score square crops of `boxes` (float32 (K, 5)) with R-Net or O-Net.

    Returns the boxes whose new probability > threshold (float32 (M, 5), that probability in
    column 4) and their regressions (M, 4).
    """
    crops, inside = crop_candidates(ii, boxes, size)
    boxes = boxes[inside]
    if not len(boxes):
        return boxes, np.zeros((0, 4), np.float32)
    out = net(_to_input(crops))
    reg, prob = out[0], out[-1]                 # O-Net's landmarks, out[1], are not used
    keep = prob[:, 1] > np.float32(threshold)
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1).astype(np.float32)
    return boxes, reg[keep].astype(np.float32)


def crop_candidates(ii: np.ndarray, boxes: np.ndarray, size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each box, area-resized: float32 (M, size, size, 3), and the bool (K,) mask of
    the boxes that overlap the image (the others have no pixels and are dropped).

    ii: the image's `integral_image`; boxes: float (K, >= 4) x1 y1 x2 y2, truncated to
    integers and read as 1-based inclusive, clipped to the image.
    """
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    x2, y2 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    inside = (x2 > x1 - 1) & (y2 > y1 - 1)
    regions = np.stack([y1 - 1, x1 - 1, y2, x2], axis=1)[inside]    # top left bottom right
    return _resize_boxes(ii, regions, (size, size)), inside


def regress(boxes: np.ndarray, reg: np.ndarray, plus_one: bool) -> np.ndarray:
    """Move box edges by reg (K, 4) times the box width/height: float32 (K, 5) -> (K, 5).

    P-Net's offsets are relative to x2 - x1, R-Net's and O-Net's to x2 - x1 + 1.
    """
    one = np.float32(1 if plus_one else 0)
    out = boxes.astype(np.float32).copy()
    bw = out[:, 2] - out[:, 0] + one
    bh = out[:, 3] - out[:, 1] + one
    out[:, :4] += reg.astype(np.float32) * np.stack([bw, bh, bw, bh], axis=1)
    return out


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box as the square of side max(width, height) on the same centre: (K, 5) -> (K, 5)."""
    out = boxes.astype(np.float32).copy()
    bw = out[:, 2] - out[:, 0]
    bh = out[:, 3] - out[:, 1]
    side = np.maximum(bw, bh)
    half = np.float32(0.5)
    out[:, 0] = out[:, 0] + bw * half - side * half
    out[:, 1] = out[:, 1] + bh * half - side * half
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float,
        over_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    boxes float32 (K, 4) x1 y1 x2 y2, scores (K,). A box is dropped when its overlap with a kept
    box exceeds `threshold`: intersection over union with areas (x2 - x1)(y2 - y1), as
    torchvision's nms; with `over_min`, intersection over the smaller area with 1 added to
    each side (facenet-pytorch's final "Min" suppression, whose score order is numpy's default
    argsort, reproduced here).
    """
    if not len(boxes):
        return np.zeros(0, np.int64)
    b = boxes.astype(np.float32)
    one = np.float32(1 if over_min else 0)
    area = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    order = (np.argsort(scores)[::-1] if over_min
             else np.argsort(-scores.astype(np.float32), kind='stable'))
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(np.float32(0), np.minimum(b[i, 2], b[rest, 2])
                        - np.maximum(b[i, 0], b[rest, 0]) + one)
        ih = np.maximum(np.float32(0), np.minimum(b[i, 3], b[rest, 3])
                        - np.maximum(b[i, 1], b[rest, 1]) + one)
        inter = iw * ih
        with np.errstate(divide='ignore', invalid='ignore'):
            if over_min:     # kept when overlap <= threshold (a NaN overlap drops the box)
                order = rest[inter / np.minimum(area[i], area[rest]) <= np.float32(threshold)]
            else:            # dropped when overlap > threshold (a NaN overlap keeps it)
                overlap = inter / (area[i] + area[rest] - inter)
                order = rest[~(overlap > np.float32(threshold))]
    return np.array(keep, dtype=np.int64)
