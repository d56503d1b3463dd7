"""Training augmentation and modality dropout (datasets.augment through SegmentDataset): seeded
per segment, equal across ranks and resumes, the nodes' own input for a missing modality."""
import dataclasses

import numpy as np
import pytest
from scipy import signal

from lightmer.core.config import PRESETS
from lightmer.core.missing import missing_audio_input, missing_face_input
from lightmer.datasets import augment as aug
from lightmer.datasets.cache import SegmentDataset, dataset_mel_norm, load_index
from lightmer.training.train import TrainConfig

PRESET = PRESETS['crema-d']
BOTH = aug.AugmentConfig('both', 0.0)


def _dataset(cache, augment, seed=7, epoch=0, features=None):
    ids = load_index(cache).clip_ids[:6]
    ds = SegmentDataset(cache, ids, PRESET.n_segments, PRESET.labels, train=True, seed=seed,
                        features=features, augment=augment)
    ds.set_epoch(epoch)
    return ds


def _items(ds, indices=(0, 3, 5)):
    return [tuple(t.numpy() if hasattr(t, 'numpy') else t for t in ds[i]) for i in indices]


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for ia, ib in zip(a, b, strict=True)
               for x, y in zip(ia, ib, strict=True))


def test_augmented_items_are_a_function_of_seed_epoch_and_index(tiny_cache):
    """Two dataset objects (two ranks, or a resumed run's fresh one) draw the same; another
    epoch or seed draws differently; the read order does not matter."""
    first = _items(_dataset(tiny_cache, BOTH, epoch=3))
    rank_b = _dataset(tiny_cache, BOTH, epoch=0)
    _ = rank_b[4]                                        # other reads before, another epoch
    rank_b.set_epoch(3)
    assert _equal(first, list(reversed(_items(rank_b, (5, 3, 0)))))
    assert not _equal(first, _items(_dataset(tiny_cache, BOTH, epoch=4)))
    assert not _equal(first, _items(_dataset(tiny_cache, BOTH, seed=8, epoch=3)))


def test_augmentation_changes_the_inputs_and_none_is_the_paper_path(tiny_cache):
    plain = _items(_dataset(tiny_cache, aug.AugmentConfig()))
    legacy = SegmentDataset(tiny_cache, load_index(tiny_cache).clip_ids[:6], PRESET.n_segments,
                            PRESET.labels, train=True, seed=7)
    assert _equal(plain, _items(legacy))                 # 'none': the items of before
    faces_only = _items(_dataset(tiny_cache, aug.AugmentConfig('face')))
    both = _items(_dataset(tiny_cache, BOTH))
    for p, f, b in zip(plain, faces_only, both, strict=True):
        assert not np.array_equal(p[0], f[0]) and np.array_equal(p[1], f[1])   # faces only
        assert np.array_equal(f[0], b[0]) and not np.array_equal(p[1], b[1])   # same faces
        assert p[2] == b[2] and np.isfinite(b[1]).all()
        assert b[0].shape == p[0].shape and b[1].shape == p[1].shape


@pytest.mark.parametrize('mel_norm', ['window', 'dataset'])
def test_modality_dropout_gives_the_nodes_missing_inputs(tiny_cache, mel_norm):
    ids = load_index(tiny_cache).clip_ids[:6]
    features = (dataset_mel_norm(tiny_cache, ids, PRESET.n_segments)
                if mel_norm == 'dataset' else None)
    share = 0.6
    ds = _dataset(tiny_cache, aug.AugmentConfig('none', share), features=features, epoch=2)
    plain = _dataset(tiny_cache, aug.AugmentConfig(), features=features, epoch=2)
    no_face, no_audio = missing_face_input(ds.cfg), missing_audio_input(ds.cfg)
    counts = np.zeros(3, dtype=int)
    for i in range(len(ds)):
        faces, mels, _ = (t.numpy() if hasattr(t, 'numpy') else t for t in ds[i])
        ref_faces, ref_mels = (t.numpy() for t in plain[i][:2])
        drops = aug.drop_modalities(len(faces), share, aug.dropout_rng(7, 2, i))
        counts += np.bincount(drops, minlength=3)
        for k, d in enumerate(drops):
            assert np.array_equal(faces[k], no_face if d == 1 else ref_faces[k])
            assert np.array_equal(mels[k, 0], no_audio if d == 2 else ref_mels[k, 0])
    assert counts[1] > 0 and counts[2] > 0 and counts[0] > 0


def test_drop_modalities_share_and_never_both():
    drops = aug.drop_modalities(20000, 0.3, np.random.default_rng(0))
    share = np.bincount(drops, minlength=3) / drops.size
    assert share[0] == pytest.approx(0.7, abs=0.015)
    assert share[1] == pytest.approx(0.15, abs=0.01) and share[2] == pytest.approx(0.15, abs=0.01)
    assert not aug.drop_modalities(50, 0.0, np.random.default_rng(0)).any()


def test_face_and_audio_augmentations_keep_shape_type_and_inputs():
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, size=(98, 80), dtype=np.uint8)
    before = crop.copy()
    outs = [aug.augment_face(crop, aug.segment_rng(0, 0, i, 0, 'face')) for i in range(30)]
    assert np.array_equal(crop, before)
    assert all(o.shape == (98, 80) and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, crop) for o in outs) >= 25
    window = (0.3 * rng.standard_normal(24000)).astype(np.float32)
    w_before = window.copy()
    outs = [aug.augment_audio(window, 16000, aug.segment_rng(0, 0, i, 0, 'audio'))
            for i in range(30)]
    assert np.array_equal(window, w_before)
    assert all(o.shape == (24000,) and o.dtype == np.float32 and np.abs(o).max() <= 1.0
               for o in outs)
    silence = np.zeros(24000, dtype=np.float32)        # no level to add noise at: stays silent
    assert not aug.augment_audio(silence, 16000, np.random.default_rng(3)).any()
    with pytest.raises(ValueError):
        aug.augment_face(crop.astype(np.float32), np.random.default_rng(0))


@pytest.mark.parametrize('rt60', [0.3, 0.8])
def test_room_impulse_response_decays_in_its_rt60_with_its_direct_to_reverberant_ratio(rt60):
    sr = 16000
    rir = aug.room_impulse_response(sr, rt60, 6.0, np.random.default_rng(5))
    assert rir[0] == pytest.approx(1.0)
    drr = 10 * np.log10(1.0 / np.sum(rir[1:] ** 2))
    assert drr == pytest.approx(6.0, abs=0.01)
    # Schroeder backward integration of the reverberant part; -5 to -25 dB fit, times 3
    tail = rir[1:] ** 2
    edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
    t = np.arange(edc.size) / sr
    fit = (edc <= -5) & (edc >= -25)
    slope = np.polyfit(t[fit], edc[fit], 1)[0]                  # dB per second
    assert -60.0 / slope == pytest.approx(rt60, rel=0.25)


def test_low_pass_of_the_audio_augmentation_removes_high_frequencies():
    """The cheap-microphone filter as built: 4th order at 3 kHz, 40 dB down by 8 kHz-ish."""
    sos = signal.butter(4, 3000.0, 'lowpass', fs=16000, output='sos')
    _, h = signal.sosfreqz(sos, worN=[1000.0, 7000.0], fs=16000)
    assert abs(h[0]) > 0.95 and 20 * np.log10(abs(h[1])) < -25


def test_train_config_and_cli_check_the_settings(tmp_path):
    with pytest.raises(ValueError, match='augment'):
        TrainConfig.for_dataset('crema-d', cache=tmp_path, out=tmp_path, augment='colour')
    with pytest.raises(ValueError, match='modality dropout'):
        TrainConfig.for_dataset('crema-d', cache=tmp_path, out=tmp_path, modality_dropout=1.0)
    cfg = TrainConfig.for_dataset('crema-d', cache=tmp_path, out=tmp_path, augment='both',
                                  modality_dropout=0.25)
    assert cfg.run_settings()['augment'] == 'both'
    assert cfg.run_settings()['modality_dropout'] == 0.25
    assert dataclasses.replace(cfg, augment='none').augmentation == aug.AugmentConfig('none', 0.25)
