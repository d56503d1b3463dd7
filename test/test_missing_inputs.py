"""The one definition of a missing modality's network input (core.missing)."""
import dataclasses

import numpy as np

from lightmer.core.config import FeatureConfig
from lightmer.core.features import face_to_input, log_mel, to_mono
from lightmer.core.missing import missing_audio_input, missing_face_input
from lightmer.stream.audio import AudioSegmenter
from lightmer.stream.settings import StreamSettings


def test_missing_face_is_a_mid_grey_input_of_the_crop_shape():
    cfg = FeatureConfig()
    face = missing_face_input(cfg)
    real = face_to_input(np.full((cfg.face_height, cfg.face_width), 128, dtype=np.uint8))
    assert face.shape == real.shape == (1, 98, 80) and face.dtype == np.float32
    assert not face.any()
    assert np.abs(real - face).max() < 0.01    # a uniform mid-grey crop is next to it
    face[0, 0, 0] = 5.0                        # a new array each call: nothing shared
    assert not missing_face_input(cfg).any()


def test_missing_audio_is_the_log_mel_of_digital_silence_under_each_normalisation():
    window_cfg = FeatureConfig()
    silence = np.zeros(window_cfg.window_samples, dtype=np.float32)
    mel = missing_audio_input(window_cfg)
    assert mel.shape == (128, 43) and mel.dtype == np.float32
    np.testing.assert_array_equal(mel, log_mel(silence, window_cfg))
    assert not mel.any()                       # per-window standardisation of a constant
    dataset_cfg = dataclasses.replace(window_cfg, mel_norm='dataset', mel_db_mean=-40.0,
                                      mel_db_std=20.0)
    mel_d = missing_audio_input(dataset_cfg)
    np.testing.assert_array_equal(mel_d, log_mel(silence, dataset_cfg))
    # float32 arithmetic: the -100 dB floor and the standardisation round at ~5e-7
    np.testing.assert_allclose(mel_d, (-100.0 + 40.0) / 20.0, rtol=1e-6)
    mel_d[:] = 1.0                             # a copy: the cached value is untouched
    np.testing.assert_allclose(missing_audio_input(dataset_cfg), -3.0, rtol=1e-6)


def test_the_audio_node_gives_the_missing_audio_input_for_a_muted_microphone():
    cfg = FeatureConfig()
    segmenter = AudioSegmenter(cfg, 0.5, StreamSettings())
    muted = to_mono(np.zeros(16000 * 4, dtype=np.int16))
    out = segmenter.push(100.0, muted, 16000)
    assert out, 'four seconds of audio publish segments'
    for _, _, mel in out:
        np.testing.assert_array_equal(mel, missing_audio_input(cfg))
