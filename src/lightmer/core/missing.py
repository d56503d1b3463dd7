"""The network input for a modality that is not there: one definition for training and nodes.

A segment can lack its face (turned away, out of frame, MTCNN below threshold) or its sound
(nobody speaks near a muted microphone, a video-only recording). The fusion node's `single`
policy fills the missing half of such a segment with these inputs, and training's modality
dropout (`datasets.augment`) replaces a segment's face or audio with the very same values, so
the model learns to read one modality alone from the input it will meet on the robot.

- No face: an all-zero face input (1, 98, 80). `face_to_input` maps uint8 x to
  (x - 127.5) / 128, so zero is a uniform mid-grey crop: no edges, no expression, the centre
  of the input range (the batch-norm statistics of real crops stay near it), and no pixel
  value a real crop can be confused with at a whole tensor's scale. A black crop (-0.996)
  would instead look like a very dark face, which the photometric augmentation also makes.
- No audio: the log-mel of digital silence exactly as `features.log_mel` computes it for the
  checkpoint's FeatureConfig: all zeros under mel_norm 'window' (a constant -100 dB window with
  the 1 dB std floor), (-100 - mean) / std under 'dataset'. A muted or absent microphone
  already produces this through the audio node, so "no audio" has one input, whichever way
  it is missing; a constant written here could not follow the normalisation.
"""
from __future__ import annotations

import functools

import numpy as np

from lightmer.core.config import FeatureConfig
from lightmer.core.features import log_mel


def missing_face_input(cfg: FeatureConfig) -> np.ndarray:
    """float32 (1, face_height, face_width) zeros: what `face_to_input` would give for one
    crop, for a segment without a face. A new array each call."""
    return np.zeros((1, cfg.face_height, cfg.face_width), dtype=np.float32)


def missing_audio_input(cfg: FeatureConfig) -> np.ndarray:
    """float32 (n_mels, mel_frames): `log_mel` of a window of digital silence under `cfg`
    (its mel_norm included), for a segment without sound. A new array each call."""
    return _silence_log_mel(cfg).copy()


@functools.lru_cache(maxsize=8)
def _silence_log_mel(cfg: FeatureConfig) -> np.ndarray:
    mel = log_mel(np.zeros(cfg.window_samples, dtype=np.float32), cfg)
    mel.setflags(write=False)
    return mel
