"""Network inputs from raw media: face crops (MTCNN) and log-mel windows.

Training (`datasets.prepare`, `datasets.cache`) and the ROS nodes call these same functions
with the `FeatureConfig` stored in the checkpoint, so the two cannot drift apart.

Face pipeline: RGB uint8 frame -> (its copy downscaled to `detect_max_side`) -> MTCNN boxes
(mapped back to the frame) -> the largest face whose probability is at least
`face_min_prob` -> box grown by `face_margin` on each side, clipped to the frame -> grayscale
(ITU-R 601 luma, as PIL's 'L') -> resized to 98 high x 80 wide (bilinear) -> uint8 crop.
`face_to_input` then maps uint8 to float32 with a fixed affine map.

Audio pipeline: any rate, any channels -> mono float32 -> 16 kHz (soxr, as librosa.resample)
-> the 1.5 s window centred on a time, zero-padded past the clip edges -> power mel spectrogram
(n_fft 2048, hop 512, Hann, no centre padding: 128 x 43) -> dB (`mel_db`) -> normalised: per
window by default, or with the training set's dB statistics (`FeatureConfig.mel_norm`).
The STFT and the Slaney mel filterbank are numpy here, step for step librosa 0.11's
(`librosa.stft`, `librosa.filters.mel`; equal within 1e-5, test/test_features.py), so that the
audio node imports neither librosa nor the scipy and numba it drags in (seconds and ~150 MB).
"""
from __future__ import annotations

import functools

import numpy as np
import soxr

from lightmer.core.config import FeatureConfig
from lightmer.core.mtcnn import MTCNNNets, SearchRegion, detect_faces

# Largest batch handed to MTCNN at once: bounds its memory on a small robot computer.
_MAX_DETECT_BATCH = 16
# Floor of the mel power before the log: -100 dB, so digital silence stays finite.
_POWER_FLOOR = 1e-10
# Digital silence: no sample reaches one step of 16-bit PCM (what a muted or absent microphone
# and the audio track of a video-only recording hold).
_SILENCE_PEAK = 1.0 / 32768.0
# Floor of the per-window standard deviation in dB: a constant window (silence) maps to all
# zeros instead of dividing by zero, and near-silent hiss is not blown up to unit variance.
_STD_FLOOR_DB = 1.0


# --- faces -----------------------------------------------------------------------------------
# Smallest face MTCNN looks for, pixels: the face node's `min_face_size` default too.
MIN_FACE_SIZE = 40


class FaceCropper:
    """MTCNN face detection and cropping, with either of two detectors whose boxes are equal:

    - facenet-pytorch's `MTCNN` (torch; its weights ship in its wheel), the default;
    - given `nets`, `lightmer.core.mtcnn.detect_faces`, the same cascade in numpy around the same
      networks exported to ONNX (no torch; `lightmer.core.backend.face_cropper` builds it).

    Detection runs on the frame, or on its area-downscaled copy when the frame's longer side
    exceeds `cfg.detect_max_side`; `min_face_size` is in pixels of the image MTCNN sees.
    `detect_in` looks only in some regions of a frame (the faces of the last segment, followed)
    with `lightmer.core.mtcnn`'s cascade on either detector's networks.
    """

    def __init__(self, cfg: FeatureConfig, device: str = 'cpu',
                 min_face_size: int = MIN_FACE_SIZE, nets: MTCNNNets | None = None):
        self.cfg = cfg
        self.min_face_size = min_face_size
        self._nets = nets
        self._numpy_cascade = nets is not None    # whole frames: which detector runs them
        self._mtcnn = None
        if nets is None:
            from facenet_pytorch import MTCNN  # heavy import, only where faces are needed

            # keep_all: we choose the face ourselves (largest above threshold) so that each
            # box stays paired with its own probability; post_process off: we use the boxes.
            self._mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size,
                                post_process=False, select_largest=False)

    def detect_all(self, frames_rgb: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every face MTCNN reports, per frame, before any threshold.

        Args:
            frames_rgb: uint8 (H, W, 3) RGB frames; sizes may differ.
        Returns:
            per frame (boxes float64 (K, 4) x1 y1 x2 y2 pixels of the frame, probs float64
            (K,)), row k of both describing the same face; K = 0 when there is none.
        """
        copies = [detection_copy(_check_frame(f), self.cfg.detect_max_side) for f in frames_rgb]
        found = self._detect([image for image, _ in copies])
        return [(boxes * np.tile(to_frame, 2), probs)
                for (boxes, probs), (_, to_frame) in zip(found, copies, strict=True)]

    def _detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """`detect_all` on the images MTCNN sees (boxes in their pixels)."""
        empty = (np.zeros((0, 4)), np.zeros(0))
        out: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(images)
        # An image too small for a face goes to neither detector: it has no face to find.
        scannable = [i for i, image in enumerate(images)
                     if not too_small_for_a_face(image.shape, self.min_face_size)]
        if self._numpy_cascade:
            for i in scannable:
                out[i] = tuple(a.astype(np.float64) for a in
                               detect_faces(images[i], self._nets, self.min_face_size))
            return out
        # facenet-pytorch's batched detect needs equal sizes: one batch per size.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i in scannable:
            by_shape.setdefault(images[i].shape, []).append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), _MAX_DETECT_BATCH):
                chunk = idx[s:s + _MAX_DETECT_BATCH]
                batch = np.stack([images[i] for i in chunk])          # (B, H, W, 3) uint8
                boxes, probs = self._mtcnn.detect(batch)
                for i, b, p in zip(chunk, boxes, probs, strict=True):
                    if b is not None:
                        out[i] = (np.asarray(b, dtype=np.float64).reshape(-1, 4),
                                  np.asarray(p, dtype=np.float64).reshape(-1))
        return out

    def detect(self, frames_rgb: list[np.ndarray]) -> list[np.ndarray | None]:
        """Per frame the float64 (4,) box x1 y1 x2 y2 of the largest face whose probability is
        >= cfg.face_min_prob, or None when there is none. Batched as `detect_all`."""
        return [select_largest_confident(b, p, self.cfg.face_min_prob)
                for b, p in self.detect_all(frames_rgb)]

    def detect_in(self, frame_rgb: np.ndarray, regions: list[SearchRegion]
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Every face MTCNN reports in some regions of one frame, before any threshold.

        regions: `SearchRegion`s in pixels of the frame (their min_face too). P-Net scans only
        them, on the grid of the whole frame's pyramid (`lightmer.core.mtcnn.detect_faces`).
        Returns boxes float64 (K, 4) x1 y1 x2 y2 in frame pixels and probs float64 (K,).
        """
        image, to_frame = detection_copy(_check_frame(frame_rgb), self.cfg.detect_max_side)
        sx, sy = to_frame
        inside = [SearchRegion(int(np.floor(r.x0 / sx)), int(np.floor(r.y0 / sy)),
                               int(np.ceil(r.x1 / sx)), int(np.ceil(r.y1 / sy)),
                               r.min_face / max(sx, sy)) for r in regions]
        if too_small_for_a_face(image.shape, self.min_face_size):
            return np.zeros((0, 4)), np.zeros(0)
        boxes, probs = detect_faces(image, self.nets, self.min_face_size, regions=inside)
        return boxes.astype(np.float64) * np.tile(to_frame, 2), probs.astype(np.float64)

    @property
    def nets(self) -> MTCNNNets:
        """The three networks as numpy callables: the export's, or facenet-pytorch's own."""
        if self._nets is None:
            self._nets = _torch_nets(self._mtcnn)
        return self._nets

    def crop(self, frame_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB frame, box (4,) x1 y1 x2 y2 -> uint8 (98, 80) grayscale crop.

        Raises ValueError when the box, after margin and clipping, has no area in the frame.
        """
        return crop_face(_check_frame(frame_rgb), box, self.cfg)

    def __call__(self, frames_rgb: list[np.ndarray]) -> list[np.ndarray | None]:
        """Detect and crop: per frame a uint8 (98, 80) crop, or None when there is no face."""
        crops: list[np.ndarray | None] = []
        for frame, box in zip(frames_rgb, self.detect(frames_rgb), strict=True):
            if box is None:
                crops.append(None)
                continue
            try:
                crops.append(self.crop(frame, box))
            except ValueError:   # a box entirely outside the frame: treat as no face
                crops.append(None)
        return crops


def _torch_nets(mtcnn) -> MTCNNNets:
    """facenet-pytorch's P-, R- and O-Net as numpy callables (`MTCNNNets`), for
    `lightmer.core.mtcnn`'s cascade; the same weights the export carries."""
    import torch  # a checkpoint's detector only: torch is loaded already (facenet-pytorch)

    def run(net):
        def call(x: np.ndarray) -> tuple[np.ndarray, ...]:
            with torch.inference_mode():
                return tuple(t.numpy() for t in net(torch.from_numpy(x)))
        return call

    return MTCNNNets(run(mtcnn.pnet), run(mtcnn.rnet), run(mtcnn.onet))


def too_small_for_a_face(shape: tuple[int, ...], min_face_size: int) -> bool:
    """True when an (H, W, ...) image is too small to hold a face of `min_face_size` pixels.

    MTCNN scans an image pyramid whose first level scales the image by 12 / min_face_size; when
    that level is already under the 12-pixel detection window, upstream detect() has no level
    at all and fails on an empty concatenation. This is its own condition, written the same way
    (same floating-point operations), so exactly the images it cannot scan are refused.
    """
    return min(shape[0], shape[1]) * (12.0 / min_face_size) < 12.0


def detection_copy(frame_rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The image MTCNN runs on: uint8 (h, w, 3), the frame itself when its longer side is at
    most `max_side` (or max_side is 0), else its area-downscaled copy with that longer side
    (PIL's box filter: each copy pixel the mean of the frame area it covers); and the float64
    (2,) factors (x, y) that map the copy's pixels back to the frame's. Both detectors and
    `prepare` get the same copy.
    """
    from PIL import Image  # faces only: the audio node imports this module and never needs PIL

    h, w = frame_rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return frame_rgb, np.ones(2)
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    copy = Image.fromarray(np.ascontiguousarray(frame_rgb)).resize(
        (size[1], size[0]), Image.Resampling.BOX)
    return np.asarray(copy, dtype=np.uint8), np.array([w / size[1], h / size[0]])


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f'expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} '
                         f'{frame.shape}; convert with np.asarray(..., dtype=np.uint8)')
    return frame


def select_largest_confident(boxes: np.ndarray, probs: np.ndarray,
                             min_prob: float) -> np.ndarray | None:
    """The largest-area box among those whose own probability is >= min_prob, or None.

    boxes float (K, 4) x1 y1 x2 y2, probs float (K,), row-paired. Boxes and probabilities are
    filtered together, so the result is never a big box carrying a small box's confidence.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if b.shape[0] != p.shape[0]:
        raise ValueError(f'{b.shape[0]} boxes but {p.shape[0]} probabilities')
    keep = p >= min_prob
    if not keep.any():
        return None
    b = b[keep]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return b[int(np.argmax(area))].copy()


def crop_face(frame_rgb: np.ndarray, box: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Pure crop: uint8 (H, W, 3) RGB, box (4,) x1 y1 x2 y2 pixels -> uint8 (98, 80) gray.

    The box grows by cfg.face_margin of its width (height) on the left and right (top and
    bottom), is clipped to the frame and resized without keeping the aspect ratio, as the
    paper resizes every crop to the same size.
    """
    from PIL import Image  # faces only, as in detection_copy

    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    mx, my = cfg.face_margin * (x2 - x1), cfg.face_margin * (y2 - y1)
    h, w = frame_rgb.shape[:2]
    left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if right <= left or bottom <= top:
        raise ValueError(f'face box {[x1, y1, x2, y2]} lies outside the {w}x{h} frame')
    region = Image.fromarray(np.ascontiguousarray(frame_rgb[top:bottom, left:right]))
    gray = region.convert('L').resize((cfg.face_width, cfg.face_height),
                                      Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8).copy()


def face_to_input(crops_u8: np.ndarray) -> np.ndarray:
    """uint8 (..., 98, 80) crops -> float32 (..., 1, 98, 80) in [-0.996, 0.996]: (x - 127.5)/128.

    A fixed map (no per-image statistics) so that a crop always gives the same input.
    """
    crops = np.asarray(crops_u8)
    if crops.dtype != np.uint8 or crops.ndim < 2:
        raise ValueError(f'expected uint8 (..., H, W) crops, got {crops.dtype} {crops.shape}')
    x = (crops.astype(np.float32) - 127.5) / 128.0
    return x[..., None, :, :]


# --- audio -----------------------------------------------------------------------------------
def to_mono(audio: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) samples -> float32 (n,), the mean of the channels.

    Integer samples are scaled to [-1, 1) by their type's range (int16 / 32768; unsigned
    types are centred first, uint8 (x - 128) / 128).
    """
    a = np.asarray(audio)
    if a.ndim not in (1, 2):
        raise ValueError(f'expected (n,) or (n, channels) audio, got shape {a.shape}')
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        half_range = (int(info.max) - int(info.min) + 1) / 2     # 32768 for int16
        a = (a.astype(np.float64) - (int(info.min) + half_range)) / half_range
    a = a.astype(np.float32)
    return a.mean(axis=1, dtype=np.float32) if a.ndim == 2 else a.copy()


def is_digital_silence(samples: np.ndarray) -> bool:
    """True when float samples (any shape, full scale +-1) hold no sound at all: every |x| is
    below one 16-bit step (1/32768). Empty input counts as silence."""
    a = np.asarray(samples, dtype=np.float32)
    return a.size == 0 or float(np.max(np.abs(a))) < _SILENCE_PEAK


def resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """float mono (n,) at `sr` Hz -> float32 (ceil(n * target_sr / sr),) at `target_sr` Hz."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f'resample expects mono (n,) audio, got shape {a.shape}; use to_mono')
    if sr <= 0 or target_sr <= 0:
        raise ValueError(f'sample rates must be positive, got {sr} -> {target_sr}')
    if sr == target_sr:
        return a.copy()
    # librosa.resample's default ('soxr_hq'), length fixed to ceil(n * ratio) as it does
    out = soxr.resample(a, sr, target_sr, quality='soxr_hq').astype(np.float32)
    n = int(np.ceil(a.shape[0] * float(target_sr) / sr))
    return out[:n] if out.shape[0] >= n else np.pad(out, (0, n - out.shape[0]))


def audio_window(audio: np.ndarray, centre_s: float, cfg: FeatureConfig) -> np.ndarray:
    """The d-second window centred on `centre_s`: float32 (24000,) at cfg.sample_rate.

    Args:
        audio: float mono (n,) at cfg.sample_rate; sample j is at time j / sr seconds.
        centre_s: window centre, seconds from the first sample.
    Samples [round(c * sr) - L // 2, round(c * sr) - L // 2 + L) with L = window_samples;
    indices before 0 or past the end read as zeros (silence), so windows near the clip edges
    keep their length and their centre.
    """
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f'audio_window expects mono (n,) audio, got shape {a.shape}')
    length = cfg.window_samples
    start = int(round(centre_s * cfg.sample_rate)) - length // 2
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(start, 0), min(start + length, a.shape[0])
    if hi > lo:
        out[lo - start:hi - start] = a[lo:hi]
    return out


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney mel filters from 0 Hz to sr / 2: float32 (n_mels, 1 + n_fft // 2), read-only,
    built once per setting. Triangles between consecutive mel band edges, each scaled to unit
    area (2 / (upper - lower edge in Hz)): librosa.filters.mel's defaults (htk=False,
    norm='slaney')."""
    fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)                            # (bins,)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(edges)                                                    # (n_mels + 1,)
    ramps = np.subtract.outer(edges, fft_hz)                                   # (n_mels + 2, bins)
    weights = np.zeros((n_mels, fft_hz.shape[0]), dtype=np.float32)
    for i in range(n_mels):
        rising = -ramps[i] / widths[i]
        falling = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:n_mels + 2] - edges[:n_mels]))[:, None]
    weights.setflags(write=False)
    return weights


# Slaney's mel scale (Auditory Toolbox): linear below 1 kHz (200/3 Hz per mel), logarithmic
# above (27 mels per factor 6.4).
_MEL_HZ_STEP = 200.0 / 3
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz < _MEL_LOG_HZ:
        return hz / _MEL_HZ_STEP
    return _MEL_LOG_HZ / _MEL_HZ_STEP + float(np.log(hz / _MEL_LOG_HZ)) / _MEL_LOG_STEP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """float64 (n,) Slaney mels -> Hz."""
    hz = _MEL_HZ_STEP * mels
    log_mel_min = _MEL_LOG_HZ / _MEL_HZ_STEP
    above = mels >= log_mel_min
    hz[above] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels[above] - log_mel_min))
    return hz


@functools.lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    """The periodic Hann window of n samples (float64, read-only), as scipy's
    get_window('hann', n, fftbins=True) that librosa.stft uses."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.setflags(write=False)
    return w


def power_spectrogram(samples: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """float32 (n,) -> float32 (1 + n_fft // 2, 1 + (n - n_fft) // hop_length) power |STFT|^2:
    frames of n_fft samples every hop_length, no centre padding, periodic Hann window, the
    FFT in float64 and the spectrum kept in complex64 (librosa.stft's arithmetic)."""
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop_length]  # (F, n_fft)
    spec = np.fft.rfft(frames * _hann(n_fft), axis=-1).astype(np.complex64)          # (F, bins)
    return np.ascontiguousarray((np.abs(spec) ** 2).T)                               # (bins, F)


def mel_db(window: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """float32 (24000,) window -> float32 (128, 43) mel power in dB, floored at -100 dB.

    Power mel spectrogram (Hann window, n_fft 2048, hop 512, no centre padding, Slaney mel
    filters) -> dB = 10 log10(max(power, 1e-10)). Full scale is a sample amplitude of 1.
    Raises ValueError when the power is not finite (`power_to_db`).
    """
    w = np.asarray(window, dtype=np.float32)
    if w.shape != (cfg.window_samples,):
        raise ValueError(f'expected a ({cfg.window_samples},) window, got {w.shape}; '
                         'cut it with audio_window')
    with np.errstate(over='ignore', invalid='ignore'):     # checked in power_to_db
        power = power_spectrogram(w, cfg.n_fft, cfg.hop_length)                 # (1025, 43)
        mel = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels) @ power   # (128, 43)
    return power_to_db(mel).astype(np.float32)


def power_to_db(mel_power: np.ndarray) -> np.ndarray:
    """Mel power (any shape) -> dB with a -100 dB floor; ValueError when a power is not finite.

    The one guard both log-mel normalisations pass through: finite float32 samples can still
    overflow the squared spectrum (samples of 1e20 give inf, and inf - inf gives NaN), and such
    a window must be refused, never turned into NaN features.
    """
    if not np.isfinite(mel_power).all():
        raise ValueError('log-mel power is not finite (samples far beyond [-1, 1]?); '
                         'window refused')
    return 10.0 * np.log10(np.maximum(mel_power, _POWER_FLOOR))


def log_mel(window: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """float32 (24000,) window -> float32 (128, 43) normalised log-mel spectrogram: the network
    input of one segment, for training, the nodes and export alike.

    `mel_db` normalised as cfg.mel_norm says:
    - 'window' (default): (dB - mean) / max(std, 1 dB), mean and std over this window only.
      The absolute level is dropped: it depends on the microphone's gain (dataset studio vs
      robot) as much as on the speaker, and so does loudness, which carries emotion.
    - 'dataset': (dB - cfg.mel_db_mean) / cfg.mel_db_std, fixed statistics of the training set:
      a window 20 dB louder is 20 / mel_db_std higher everywhere. Level is kept, so the
      microphone's gain matters: calibrate it against the training material.
    Digital silence is finite in both (all zeros / (-100 - mean) / std), never NaN or inf.
    """
    db = mel_db(window, cfg)
    if cfg.mel_norm == 'dataset':
        z = (db - cfg.mel_db_mean) / cfg.mel_db_std
    else:
        z = (db - db.mean()) / max(float(db.std()), _STD_FLOOR_DB)
    return z.astype(np.float32)


def mel_db_statistics(windows, cfg: FeatureConfig) -> tuple[float, float]:
    """(mean, std) in dB of every value of `mel_db` over `windows` (iterable of float32
    (24000,) windows): the statistics of mel_norm 'dataset'. Accumulated in float64."""
    n, total, squares = 0, 0.0, 0.0
    for w in windows:
        db = mel_db(w, cfg).astype(np.float64)
        n += db.size
        total += float(db.sum())
        squares += float(np.square(db).sum())
    if n == 0:
        raise ValueError('no audio windows to take mel statistics from')
    mean = total / n
    return mean, float(np.sqrt(max(squares / n - mean * mean, 0.0)))


def log_mel_at(audio16k: np.ndarray, centre_s: float, cfg: FeatureConfig) -> np.ndarray:
    """float mono (n,) at cfg.sample_rate, centre in seconds -> float32 (128, 43)."""
    return log_mel(audio_window(audio16k, centre_s, cfg), cfg)
