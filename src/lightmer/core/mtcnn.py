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

from collections.abc import Callable, Sequence
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
                 factor: float = FACTOR,
                 regions: Sequence[SearchRegion] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Faces in one RGB image, or in some regions of it.

    Args:
        image: uint8 (H, W, 3) RGB.
        nets: the three networks (`MTCNNNets`).
        min_face_size: smallest face looked for, pixels of `image`.
        regions: None: the whole image. Otherwise P-Net scans only these parts of it (see
            `SearchRegion`), on the very pixel grid of the whole image's pyramid: a candidate
            found there is the one the whole image gives, and R-Net and O-Net see the same
            crops, so a face found equals the whole image's (unless a candidate outside the
            regions would have suppressed it).
    Returns:
        boxes float32 (K, 4) x1 y1 x2 y2 pixels and probabilities float32 (K,), highest
        probability first; K = 0 when there is no face.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected a uint8 (H, W, 3) RGB image, got {img.dtype} {img.shape}')
    h, w = img.shape[:2]
    scales = scale_pyramid(h, w, min_face_size, factor)
    if regions is None:
        sums = image_sums(img, nets.integral)     # every resize below sums rectangles of it
        boxes = _propose(sums, nets.pnet, scales, thresholds[0], None)
    else:
        sums, boxes = _propose_in_regions(img, nets, scales, thresholds[0], regions)
    if len(boxes):
        sums = _covering(img, sums, boxes, nets.integral)
        boxes, reg = _refine(sums, boxes, nets.rnet, 24, thresholds[1])
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = square(regress(boxes[keep], reg[keep], plus_one=True))
    if len(boxes):
        sums = _covering(img, sums, boxes, nets.integral)
        boxes, reg = _refine(sums, boxes, nets.onet, 48, thresholds[2])
        boxes = regress(boxes, reg, plus_one=True)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, over_min=True)]
    return boxes[:, :4].copy(), boxes[:, 4].copy()


class SearchRegion(NamedTuple):
    """A part of an image to look for faces in: pixels [x0, x1) x [y0, y1), and the smallest
    face worth looking for there (pixels; pyramid scales for smaller faces are skipped).

    P-Net keeps the candidates whose 12-pixel cell, at a scale of the whole image's pyramid,
    lies inside the region; R-Net and O-Net then crop wherever those candidates lead.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    min_face: float = 0.0


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
    return _resize_part(image_sums(img), size, (0, size[0]), (0, size[1]))


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


class ImageSums(NamedTuple):
    """The integral image of part of an image: ii[r, c] = sum of image[top:top + r,
    left:left + c] (int (h + 1, w + 1, C)); `shape`: the whole image's (H, W). Rectangles
    inside the part sum exactly as on the whole image's integral."""

    ii: np.ndarray
    top: int
    left: int
    shape: tuple[int, int]

    def covers(self, top: int, left: int, bottom: int, right: int) -> bool:
        """True when the image rectangle rows [top, bottom) x columns [left, right) is inside."""
        return (top >= self.top and left >= self.left
                and bottom <= self.top + self.ii.shape[0] - 1
                and right <= self.left + self.ii.shape[1] - 1)


def image_sums(image: np.ndarray, integral=None, top: int = 0, left: int = 0,
               bottom: int | None = None, right: int | None = None) -> ImageSums:
    """`ImageSums` of image rows [top, bottom) x columns [left, right) (default: all of it)."""
    h, w = image.shape[:2]
    bottom, right = h if bottom is None else bottom, w if right is None else right
    part = image if (top, left, bottom, right) == (0, 0, h, w) else image[top:bottom, left:right]
    return ImageSums(integral_image(part, integral), top, left, (h, w))


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


def _resize_part(sums: ImageSums, size: tuple[int, int], rows: tuple[int, int],
                 cols: tuple[int, int]) -> np.ndarray:
    """Rows [rows[0], rows[1]) and columns [cols[0], cols[1]) of the whole image (behind
    `sums`) area-resized to `size`: float32 (rows, cols, C), each pixel exactly what the whole
    resize gives there (the part's windows must lie inside `sums`).

    Rows then columns (two gathers of whole rows, then of columns), cheaper than four corner
    gathers per output pixel for one large region."""
    (r0, r1), (c0, c1) = (_windows(np.zeros(1, int), np.array([n]), m)
                          for n, m in zip(sums.shape, size, strict=True))
    r0, r1 = r0[0, rows[0]:rows[1]], r1[0, rows[0]:rows[1]]
    c0, c1 = c0[0, cols[0]:cols[1]], c1[0, cols[0]:cols[1]]
    strips = sums.ii[r1 - sums.top] - sums.ii[r0 - sums.top]                # (h, w_part + 1, C)
    parts = (np.take(strips, c1 - sums.left, axis=1)
             - np.take(strips, c0 - sums.left, axis=1))                      # (h, w, C)
    return _divide(parts, (r1 - r0)[:, None], (c1 - c0)[None, :])


def _resize_boxes(ii: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize K regions of the image behind integral image `ii` to `size`.

    boxes: int (K, 4) top, left, bottom, right (exclusive) -> float32 (K, h, w, C).
    """
    r0, r1 = _windows(boxes[:, 0], boxes[:, 2] - boxes[:, 0], size[0])     # (K, h)
    c0, c1 = _windows(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size[1])     # (K, w)
    # Corners as flat pixel indices, gathered with np.take on (pixels, C) rows: ~8x faster
    # than indexing ii with two broadcast index arrays.
    flat = np.ascontiguousarray(ii).reshape(-1, ii.shape[2])
    top, bottom = (r0 * ii.shape[1])[:, :, None], (r1 * ii.shape[1])[:, :, None]
    left, right = c0[:, None, :], c1[:, None, :]
    sums = (np.take(flat, bottom + right, axis=0) - np.take(flat, top + right, axis=0)
            - np.take(flat, bottom + left, axis=0) + np.take(flat, top + left, axis=0))
    return _divide(sums, (r1 - r0)[:, :, None], (c1 - c0)[:, None, :])      # (K, h, w, C)


def _to_input(pixels: np.ndarray) -> np.ndarray:
    """float32 (..., H, W, 3) pixel values -> float32 (..., 3, H, W) network input."""
    x = (pixels - np.float32(127.5)) * np.float32(0.0078125)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3), dtype=np.float32)


def _propose(sums: ImageSums, pnet, scales: list[float], threshold: float,
             parts: list[list[tuple[int, int, int, int]]] | None) -> np.ndarray:
    """Stage 1: float32 (K, 5) candidate boxes x1 y1 x2 y2 score, squared and regressed.

    parts: None (every scale on the whole image), or per scale the rectangles of the scaled
    image to scan (rows i0 i1, columns j0 j1; i0, j0 even)."""
    h, w = sums.shape
    found = []
    for n, scale in enumerate(scales):
        size = (int(h * scale + 1), int(w * scale + 1))
        rects = [(0, size[0], 0, size[1])] if parts is None else parts[n]
        cand = [_scan(sums, pnet, scale, size, rect, threshold) for rect in rects]
        if cand:
            cand = np.concatenate(cand)
            found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
    cand = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
    cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
    boxes = regress(cand[:, :5], cand[:, 5:9], plus_one=False)
    return square(boxes)


def _scan(sums: ImageSums, pnet, scale: float, size: tuple[int, int],
          rect: tuple[int, int, int, int], threshold: float) -> np.ndarray:
    """P-Net on rows [i0, i1) x columns [j0, j1) of the image resized to `size`: float32 (K, 9)
    candidates x1 y1 x2 y2 score and regression, those whose cell sees only pixels of the
    rectangle (their outputs are the whole image's: P-Net has no padding and the even i0, j0
    keep its 2 x 2 pooling on the whole image's grid)."""
    i0, i1, j0, j1 = rect
    resized = _resize_part(sums, size, (i0, i1), (j0, j1))
    reg, prob = pnet(_to_input(resized)[None])              # (1, 4, h', w'), (1, 2, h', w')
    hit = prob[0, 1] >= np.float32(threshold)
    # a cell sees input rows [2r, 2r + 12): cut where the rectangle ends inside the image
    if i1 < size[0]:
        hit[max(0, (i1 - i0 - _CELL) // _STRIDE + 1):] = False
    if j1 < size[1]:
        hit[:, max(0, (j1 - j0 - _CELL) // _STRIDE + 1):] = False
    rows, cols = np.nonzero(hit)                            # row-major, as torch.nonzero's
    cells = np.stack([cols + j0 // _STRIDE, rows + i0 // _STRIDE], axis=1).astype(np.float32)
    s = np.float32(scale)
    q1 = np.floor((_STRIDE * cells + 1) / s)
    q2 = np.floor((_STRIDE * cells + _CELL) / s)
    return np.concatenate([q1, q2, prob[0, 1, rows, cols][:, None],
                           reg[0][:, rows, cols].T], axis=1).astype(np.float32)   # (K, 9)


def _propose_in_regions(image: np.ndarray, nets: MTCNNNets, scales: list[float],
                        threshold: float, regions: Sequence[SearchRegion]
                        ) -> tuple[ImageSums, np.ndarray]:
    """Stage 1 on the regions only: (the sums of the part of the image they span, float32
    (K, 5) candidates as `_propose` gives them)."""
    h, w = image.shape[:2]
    clipped = [(max(0, int(r.x0)), max(0, int(r.y0)), min(w, int(r.x1)), min(h, int(r.y1)),
                r.min_face) for r in regions]
    clipped = [r for r in clipped if r[2] > r[0] and r[3] > r[1]]
    if not clipped:
        return ImageSums(np.zeros((1, 1, 3), np.int32), 0, 0, (h, w)), np.zeros((0, 5), np.float32)
    top, left = min(r[1] for r in clipped), min(r[0] for r in clipped)
    bottom, right = max(r[3] for r in clipped), max(r[2] for r in clipped)
    sums = image_sums(image, nets.integral, top, left, bottom, right)
    parts = []
    for scale in scales:
        size = (int(h * scale + 1), int(w * scale + 1))
        parts.append([rect for x0, y0, x1, y1, min_face in clipped
                      if _CELL / scale >= min_face * (1 - 1e-6)
                      for rect in [_scaled_rect((y0, y1), (x0, x1), (h, w), size)]
                      if rect[1] - rect[0] >= _CELL and rect[3] - rect[2] >= _CELL])
    return sums, _propose(sums, nets.pnet, scales, threshold, parts)


def _scaled_rect(rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, int],
                 size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rows [i0, i1) and columns [j0, j1) of the image resized from `shape` to `size` whose
    area windows lie inside image rows `rows` and columns `cols`; i0 and j0 rounded up to even.
    """
    out = []
    for (lo, hi), n, m in zip((rows, cols), shape, size, strict=True):
        start = -(-lo * m // n)                   # first i with floor(i n / m) >= lo
        start += start % 2
        out += [start, min(m, hi * m // n)]       # last i + 1 with ceil((i + 1) n / m) <= hi
    return out[0], out[1], out[2], out[3]


def _covering(image: np.ndarray, sums: ImageSums, boxes: np.ndarray, integral) -> ImageSums:
    """`sums`, or the sums of a larger part of the image when the crops of `boxes` (float (K,
    >= 4), as `crop_candidates` reads them) reach beyond it."""
    h, w = sums.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    top, left = int(max(b[:, 1].min(), 1)) - 1, int(max(b[:, 0].min(), 1)) - 1
    bottom, right = int(min(b[:, 3].max(), h)), int(min(b[:, 2].max(), w))
    if bottom <= top or right <= left or sums.covers(top, left, bottom, right):
        return sums
    top, left = min(top, sums.top), min(left, sums.left)
    bottom = max(bottom, sums.top + sums.ii.shape[0] - 1)
    right = max(right, sums.left + sums.ii.shape[1] - 1)
    return image_sums(image, integral, max(top, 0), max(left, 0), min(bottom, h), min(right, w))


def _refine(sums: ImageSums, boxes: np.ndarray, net, size: int, threshold: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Stages 2 and 3: score square crops of `boxes` (float32 (K, 5)) with R-Net or O-Net.

    Returns the boxes whose new probability > threshold (float32 (M, 5), that probability in
    column 4) and their regressions (M, 4).
    """
    crops, inside = crop_candidates(sums, boxes, size)
    boxes = boxes[inside]
    if not len(boxes):
        return boxes, np.zeros((0, 4), np.float32)
    out = net(_to_input(crops))
    reg, prob = out[0], out[-1]                 # O-Net's landmarks, out[1], are not used
    keep = prob[:, 1] > np.float32(threshold)
    boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], axis=1).astype(np.float32)
    return boxes, reg[keep].astype(np.float32)


def crop_candidates(sums: ImageSums, boxes: np.ndarray, size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each box, area-resized: float32 (M, size, size, 3), and the bool (K,) mask of
    the boxes that overlap the image (the others have no pixels and are dropped).

    sums: `image_sums` of the image (of a part holding every crop); boxes: float (K, >= 4)
    x1 y1 x2 y2, truncated to integers and read as 1-based inclusive, clipped to the image.
    """
    h, w = sums.shape
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    x2, y2 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
    inside = (x2 > x1 - 1) & (y2 > y1 - 1)
    regions = np.stack([y1 - 1 - sums.top, x1 - 1 - sums.left, y2 - sums.top,
                        x2 - sums.left], axis=1)[inside]                # top left bottom right
    return _resize_boxes(sums.ii, regions, (size, size)), inside


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
