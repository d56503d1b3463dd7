"""Face crops from real MTCNN and log-mels from real speech, as training and nodes use them."""
import shutil
import subprocess

import librosa
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from skimage import data

from lightmer.core.backend import face_cropper
from lightmer.core.config import FeatureConfig
from lightmer.core.features import (
    FaceCropper,
    audio_window,
    crop_face,
    detection_copy,
    face_to_input,
    log_mel,
    log_mel_at,
    mel_db,
    mel_db_statistics,
    mel_filterbank,
    resample,
    select_largest_confident,
    to_mono,
    too_small_for_a_face,
)

torch.set_num_threads(1)
CFG = FeatureConfig()


@pytest.fixture(scope='module')
def cropper() -> FaceCropper:
    return FaceCropper(CFG)


@pytest.fixture(scope='module')
def astronaut() -> np.ndarray:
    return data.astronaut()                                      # uint8 (512, 512, 3)


@pytest.fixture(scope='module')
def speech16k(tmp_path_factory) -> np.ndarray:
    """Real synthetic speech: espeak-ng writes a wav (22.05 kHz), resampled to 16 kHz."""
    assert shutil.which('espeak-ng'), 'espeak-ng is a test dependency (apt install espeak-ng)'
    wav = tmp_path_factory.mktemp('speech') / 'speech.wav'
    subprocess.run(['espeak-ng', '-w', str(wav), 'Kids are talking by the door, hello robot'],
                   check=True, timeout=30)
    audio, sr = soundfile.read(wav, dtype='float32')
    return resample(to_mono(audio), sr, CFG.sample_rate)


def test_mtcnn_finds_the_one_face_of_the_astronaut(cropper, astronaut):
    [(boxes, probs)] = cropper.detect_all([astronaut])
    assert boxes.shape[0] == probs.shape[0] >= 1
    assert (probs >= CFG.face_min_prob).sum() == 1             # one confident face
    [box] = cropper.detect([astronaut])
    x1, y1, x2, y2 = box
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200           # her face, upper centre
    [crop] = cropper([astronaut])
    assert crop.shape == (98, 80) and crop.dtype == np.uint8
    assert crop.std() > 10                                      # an image, not a flat patch


@pytest.mark.parametrize('face_px', [240, 300])
def test_a_face_of_the_documented_size_is_found_in_a_4k_frame(cropper, astronaut, face_px):
    """docs/RUNTIME.md: with detect_max_side 640 a 3840x2160 frame is searched at 640x360, so
    faces from about 40 x 6 = 240 px are found (the astronaut's face is 88 px wide)."""
    side = round(512 * face_px / 88)
    head = np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.BICUBIC))
    frame = np.full((2160, 3840, 3), 120, np.uint8)
    frame[200:200 + side, 1200:1200 + side] = head
    assert CFG.detect_max_side == 640
    [box] = cropper.detect([frame])
    assert box is not None
    assert abs((box[2] - box[0]) - face_px) < 0.15 * face_px, box


def test_blank_frame_is_no_face(cropper):
    blank = np.zeros((480, 640, 3), np.uint8)
    assert cropper.detect([blank]) == [None]
    assert cropper([blank]) == [None]


def test_batched_detect_over_mixed_sizes(cropper, astronaut):
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[:, 64:576] = astronaut[:480]
    frames = [astronaut, np.zeros((480, 640, 3), np.uint8), canvas, np.zeros((64, 64, 3),
              np.uint8), astronaut]
    boxes = cropper.detect(frames)
    assert [b is None for b in boxes] == [False, True, False, True, False]
    np.testing.assert_allclose(boxes[0], boxes[4], atol=1e-3)     # batch position is irrelevant
    # a different canvas changes the image pyramid, so the box moves by a few pixels
    np.testing.assert_allclose(boxes[2], boxes[0] + [64, 0, 64, 0], atol=6.0)
    [single] = cropper.detect([astronaut])
    np.testing.assert_allclose(single, boxes[0], atol=1e-3)
    with pytest.raises(ValueError, match='uint8'):
        cropper.detect([astronaut.astype(np.float32)])


def test_selection_keeps_boxes_and_probs_paired():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 100, 100], [0, 0, 50, 50]], float)
    probs = np.array([0.99, 0.5, 0.95])                        # the biggest box is unsure
    np.testing.assert_array_equal(select_largest_confident(boxes, probs, 0.9), boxes[2])
    assert select_largest_confident(boxes, probs, 0.999) is None
    assert select_largest_confident(np.zeros((0, 4)), np.zeros(0), 0.9) is None


def test_crop_margin_clipping_and_purity(astronaut):
    frame = astronaut.copy()
    edge = crop_face(frame, np.array([-30.0, -20.0, 60.0, 90.0]), CFG)  # partly outside
    assert edge.shape == (98, 80) and edge.dtype == np.uint8
    np.testing.assert_array_equal(frame, astronaut)              # input untouched
    with pytest.raises(ValueError, match='outside'):
        crop_face(frame, np.array([600.0, 600.0, 700.0, 700.0]), CFG)
    # a uniform grey region crops to that grey (luma of an equal-channel pixel is itself)
    grey = np.full((100, 100, 3), 77, np.uint8)
    assert np.all(crop_face(grey, np.array([10.0, 10.0, 50.0, 60.0]), CFG) == 77)


def test_face_to_input_fixed_affine():
    crops = np.array([[[0, 255], [128, 127]]], np.uint8)
    x = face_to_input(crops)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [[-127.5 / 128, 127.5 / 128], [0.5 / 128, -0.5 / 128]])


def test_log_mel_on_real_speech(speech16k):
    duration = speech16k.shape[0] / CFG.sample_rate
    assert duration > 1.5
    mel = log_mel_at(speech16k, duration / 2, CFG)
    assert mel.shape == (128, 43) and mel.dtype == np.float32
    assert np.all(np.isfinite(mel))
    assert abs(float(mel.mean())) < 1e-4 and float(mel.std()) == pytest.approx(1.0, abs=1e-3)
    # voiced speech carries its energy in the low bands (< ~1 kHz) rather than the top ones
    assert mel[:40].mean() > mel[-30:].mean() + 0.5
    # frames differ over time (syllables), unlike a stationary signal
    assert mel.std(axis=0).std() > 0.05
    np.testing.assert_array_equal(mel, log_mel_at(speech16k, duration / 2, CFG))   # pure


def _librosa_mel_db(window: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """The training features as librosa computed them before the numpy ones replaced it."""
    spec = librosa.stft(y=window, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=False)
    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels)
    return 10 * np.log10(np.maximum(basis @ (np.abs(spec) ** 2), 1e-10))


def _assert_librosa_features(audio: np.ndarray, sr: int, cfg: FeatureConfig) -> int:
    """The numpy resampler, mel dB and log-mel equal librosa's (1e-5) on every 0.25 s of
    `audio`; returns how many windows were compared."""
    ours, theirs = resample(audio, sr, cfg.sample_rate), librosa.resample(
        y=audio, orig_sr=sr, target_sr=cfg.sample_rate)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    centres = np.arange(0.0, ours.shape[0] / cfg.sample_rate, 0.25)
    for centre in centres:
        window = audio_window(ours, centre, cfg)
        reference = _librosa_mel_db(window, cfg)
        np.testing.assert_allclose(mel_db(window, cfg), reference, rtol=0, atol=1e-4)  # dB
        z = (reference - reference.mean()) / max(float(reference.std()), 1.0)
        np.testing.assert_allclose(log_mel(window, cfg), z, rtol=0, atol=1e-5)
    return len(centres)


def test_numpy_features_equal_librosa_on_real_speech(tmp_path):
    wav = tmp_path / 'speech.wav'
    subprocess.run(['espeak-ng', '-w', str(wav), 'How do you feel today? I am fine, thanks'],
                   check=True, timeout=30)
    audio, sr = soundfile.read(wav, dtype='float32')
    assert sr != CFG.sample_rate                          # the resampler is exercised too
    np.testing.assert_allclose(mel_filterbank(CFG.sample_rate, CFG.n_fft, CFG.n_mels),
                               librosa.filters.mel(sr=CFG.sample_rate, n_fft=CFG.n_fft,
                                                   n_mels=CFG.n_mels), rtol=0, atol=1e-7)
    assert _assert_librosa_features(to_mono(audio), sr, CFG) >= 8


def test_numpy_features_equal_librosa_on_generated_audio(tiny_corpus):
    """The generated corpus's clips (espeak-ng in a room, 16 kHz wav), at 16 and 48 kHz, and
    other mel settings (n_fft 1024, hop 256, 64 bands)."""
    wavs = sorted((tiny_corpus / 'AudioWAV').glob('*.wav'))[:2]
    other = FeatureConfig(n_fft=1024, hop_length=256, n_mels=64)
    for wav in wavs:
        audio, sr = soundfile.read(wav, dtype='float32')
        assert _assert_librosa_features(audio, sr, CFG) >= 4
        loud = np.clip(librosa.resample(y=audio * 8, orig_sr=sr, target_sr=48000), -1, 1)
        assert _assert_librosa_features(loud, 48000, other) >= 4


def test_log_mel_on_silence_is_finite():
    for signal in (np.zeros(32000, np.float32), np.full(32000, 1e-9, np.float32)):
        mel = log_mel_at(signal, 1.0, CFG)
        assert mel.shape == (128, 43)
        assert np.all(np.isfinite(mel))
        assert np.abs(mel).max() < 1e-3                          # flat -> all zeros
    with pytest.raises(ValueError, match='audio_window'):
        log_mel(np.zeros(1000, np.float32), CFG)


# --- the level-preserving option (mel_norm 'dataset') ----------------------------------------
def test_default_normalisation_is_blind_to_level_and_dataset_normalisation_keeps_it(speech16k):
    centre = speech16k.shape[0] / CFG.sample_rate / 2
    loud, quiet = speech16k, speech16k * 0.1          # the same speech 20 dB quieter
    # default: per-window standardisation removes the level (both have mean 0; they differ
    # only where the quieter one reaches the -100 dB floor)
    a, b = log_mel_at(loud, centre, CFG), log_mel_at(quiet, centre, CFG)
    assert abs(float(a.mean()) - float(b.mean())) < 1e-4
    assert float(np.abs(a - b).mean()) < 0.1
    # 'dataset': dB standardised with fixed (training-set) statistics keeps it
    cfg = FeatureConfig(mel_norm='dataset', mel_db_mean=-40.0, mel_db_std=12.0)
    a, b = log_mel_at(loud, centre, cfg), log_mel_at(quiet, centre, cfg)
    db = mel_db(audio_window(loud, centre, cfg), cfg)
    voiced = db > -70                                  # well above the -100 dB floor
    np.testing.assert_allclose((a - b)[voiced], 20.0 / 12.0, atol=1e-3)
    np.testing.assert_allclose(a, (db + 40.0) / 12.0, atol=1e-5)
    assert a.dtype == np.float32 and np.all(np.isfinite(a))
    silence = log_mel_at(np.zeros(32000, np.float32), 1.0, cfg)
    np.testing.assert_allclose(silence, (-100.0 + 40.0) / 12.0, atol=1e-5)   # finite, low


def test_log_mel_is_the_normalised_mel_db(speech16k):
    window = audio_window(speech16k, 1.0, CFG)
    db = mel_db(window, CFG)
    assert db.shape == (128, 43) and db.dtype == np.float32 and db.min() >= -100.001
    z = (db - db.mean()) / db.std()
    np.testing.assert_allclose(log_mel(window, CFG), z, atol=1e-4)


def test_mel_db_statistics_are_those_of_every_value(speech16k):
    windows = [audio_window(speech16k, c, CFG) for c in (0.8, 1.2, 1.6)]
    mean, std = mel_db_statistics(windows, CFG)
    every = np.stack([mel_db(w, CFG) for w in windows]).astype(np.float64)
    assert mean == pytest.approx(every.mean(), abs=1e-4)
    assert std == pytest.approx(every.std(), abs=1e-4)
    with pytest.raises(ValueError, match='no audio windows'):
        mel_db_statistics([], CFG)


def test_feature_config_mel_norm_is_checked_and_old_dicts_still_load():
    with pytest.raises(ValueError, match="mel_norm must be 'window' or 'dataset'"):
        FeatureConfig(mel_norm='loudness')
    with pytest.raises(ValueError, match='mel_db_std'):
        FeatureConfig(mel_norm='dataset', mel_db_std=0.0)
    with pytest.raises(ValueError, match='mel_db_mean'):
        FeatureConfig(mel_norm='dataset', mel_db_mean=float('nan'))
    cfg = FeatureConfig(mel_norm='dataset', mel_db_mean=-50.5, mel_db_std=11.25)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    old = FeatureConfig().to_dict()
    for key in ('mel_norm', 'mel_db_mean', 'mel_db_std'):   # a checkpoint from before
        del old[key]
    assert FeatureConfig.from_dict(old) == FeatureConfig()


def test_audio_window_zero_pads_past_the_edges():
    audio = np.ones(16000, np.float32)                             # 1 s of ones
    start = audio_window(audio, 0.0, CFG)
    assert start.shape == (24000,) and start.dtype == np.float32
    assert np.all(start[:12000] == 0) and np.all(start[12000:] == 1)
    end = audio_window(audio, 1.0, CFG)                            # window [0.25 s, 1.75 s)
    assert np.all(end[:12000] == 1) and np.all(end[12000:] == 0)
    far = audio_window(audio, 10.0, CFG)
    assert np.all(far == 0)
    np.testing.assert_array_equal(audio, 1.0)                      # input untouched


def test_resample_and_mono():
    sr = 48000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    stereo = np.stack([tone, tone], axis=1)
    mono = to_mono(stereo)
    np.testing.assert_allclose(mono, tone, atol=1e-6)
    y = resample(mono, sr, 16000)
    assert y.dtype == np.float32 and y.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 440) <= 1                     # 1 Hz bins over 1 s
    np.testing.assert_allclose(to_mono(np.array([-32768, 0, 16384], np.int16)),
                               [-1.0, 0.0, 0.5])


@pytest.mark.parametrize('shape', [(1, 1), (3, 5000), (5000, 3), (39, 640), (640, 39),
                                   (20, 20)])
def test_an_image_too_small_for_a_face_is_no_face(cropper, shape):
    """MTCNN's image pyramid has no scale for an image narrower than min_face_size; upstream
    then concatenates an empty list. Such an image holds no face the detector could find."""
    frame = np.full((*shape, 3), 128, np.uint8)
    assert cropper.detect_all([frame])[0][0].shape == (0, 4)
    assert cropper([frame]) == [None]
    # mixed with a real face in one call, the face is still found
    boxes = cropper.detect([frame, data.astronaut()])
    assert boxes[0] is None and boxes[1] is not None


@pytest.mark.parametrize('shape', [(1, 1), (3, 5000), (5000, 3), (39, 640)])
def test_an_image_too_small_for_a_face_is_no_face_on_the_onnx_detector(onnx_export, shape):
    onnx = face_cropper(onnx_export[1])
    frame = np.full((*shape, 3), 128, np.uint8)
    assert onnx([frame]) == [None]
    assert onnx.detect([frame, data.astronaut()])[1] is not None


def test_the_smallest_image_mtcnn_scans_is_scanned(cropper):
    """The guard is exact: an image whose shorter side equals min_face_size goes to MTCNN."""
    side = cropper.min_face_size
    assert not too_small_for_a_face((side, 4 * side), side)
    assert too_small_for_a_face((side - 1, 4 * side), side)
    frame = np.full((side, 4 * side, 3), 128, np.uint8)
    assert cropper([frame]) == [None]


@pytest.mark.parametrize('amplitude', [1e30, 3e38, 1e20])
def test_log_mel_refuses_a_window_whose_power_is_not_finite(amplitude):
    """Finite float32 samples can still overflow the power spectrum; such a window is refused
    (ValueError) rather than turned into NaN features."""
    window = np.zeros(CFG.window_samples, np.float32)
    window[::7] = amplitude
    window[3::7] = -amplitude
    with np.errstate(over='ignore', invalid='ignore'):
        try:
            mel = log_mel(window, CFG)
        except ValueError as exc:
            assert 'not finite' in str(exc)
        else:
            assert np.isfinite(mel).all()


def _head_in_720p(x0: int, y0: int, side: int) -> np.ndarray:
    """uint8 (720, 1280, 3): the astronaut's head (face ~side / 3.5 px wide) on a real photo."""
    frame = np.asarray(Image.fromarray(data.coffee()).resize((1280, 720))).copy()
    head = np.asarray(Image.fromarray(data.astronaut()[:300, 110:410]).resize((side, side)))
    frame[y0:y0 + side, x0:x0 + side] = head
    return frame


# How far detection on the downscaled copy may move the box and the crop from full-resolution
# detection (docs/RUNTIME.md): as far as MTCNN itself moves them when the camera moves by one
# pixel, measured at 720p: box corners <= 10.2 % of the face width, crops <= 23.4 grey levels
# apart on average (scripts/measure_detect_side.py), rounded up.
COPY_BOX_TOLERANCE = 0.12          # of the face width
COPY_CROP_TOLERANCE = 25.0         # mean absolute grey-level difference of the 98x80 crops


@pytest.mark.parametrize('x0, y0, side', [(500, 100, 420), (60, 300, 400), (900, 40, 330)])
def test_detection_on_a_downscaled_copy_crops_as_full_resolution(x0, y0, side):
    """720p frame, face 95-120 px: the crop from detection on the 640x360 copy equals the crop
    from full-resolution detection within the documented tolerance."""
    frame = _head_in_720p(x0, y0, side)
    full = FaceCropper(FeatureConfig(detect_max_side=0))
    small = FaceCropper(FeatureConfig(detect_max_side=640))
    [box_full], [box_small] = full.detect([frame]), small.detect([frame])
    assert box_full is not None and box_small is not None
    width = box_full[2] - box_full[0]
    assert np.abs(box_small - box_full).max() <= COPY_BOX_TOLERANCE * width
    crop_full, crop_small = full.crop(frame, box_full), small.crop(frame, box_small)
    diff = np.abs(crop_small.astype(float) - crop_full.astype(float)).mean()
    assert diff <= COPY_CROP_TOLERANCE
    # the same faces, not just similar numbers: the crops correlate strongly
    assert np.corrcoef(crop_small.ravel(), crop_full.ravel())[0, 1] > 0.8


def test_detection_copy_sizes_and_factors():
    frame = np.zeros((720, 1280, 3), np.uint8)
    copy, to_frame = detection_copy(frame, 640)
    assert copy.shape == (360, 640, 3) and copy.dtype == np.uint8
    np.testing.assert_allclose(to_frame, [2.0, 2.0])
    odd, to_frame = detection_copy(np.zeros((481, 333, 3), np.uint8), 320)
    assert odd.shape == (320, 222, 3)
    np.testing.assert_allclose(to_frame, [333 / 222, 481 / 320])
    for side in (0, 1280, 2000):                                   # no copy: the frame itself
        same, to_frame = detection_copy(frame, side)
        assert same is frame and (to_frame == 1).all()


def test_feature_files_from_before_detect_max_side_detect_on_the_full_frame():
    old = FeatureConfig().to_dict()
    del old['detect_max_side']
    assert FeatureConfig.from_dict(old).detect_max_side == 0
    assert FeatureConfig.from_dict(FeatureConfig().to_dict()) == FeatureConfig()
    with pytest.raises(ValueError, match='detect_max_side'):
        FeatureConfig(detect_max_side=-1)
