"""Both loaders on generated corpora, their skip reports, and PyAV decoding."""
import shutil
import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from lightmer.datasets.loaders import format_skipped, index_dataset
from lightmer.datasets.media import (
    MediaError,
    decode_audio,
    decode_video,
    decode_video_at,
    probe_video,
)
from lightmer.datasets.names import CREMA_EMOTIONS, RAVDESS_EMOTIONS

LFS_POINTER = (b'version https://git-lfs.github.com/spec/v1\n'
               b'oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n'
               b'size 123456\n')


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_crema_loader_indexes_the_generated_corpus(tiny_corpus):
    records, skipped = index_dataset('crema-d', tiny_corpus)
    assert skipped == []
    assert len(records) == 4 * 6
    assert [r.clip_id for r in records] == sorted(r.clip_id for r in records)
    assert {r.actor for r in records} == {'1001', '1002', '1003', '1004'}
    assert sorted({r.label for r in records}) == sorted(CREMA_EMOTIONS)
    for r in records:
        assert r.video_path == tiny_corpus / 'VideoFlash' / f'{r.clip_id}.flv'
        assert r.audio_path == tiny_corpus / 'AudioWAV' / f'{r.clip_id}.wav'
        assert r.clip_id == f'{r.actor}_{r.sentence}_{r.label}_{r.intensity}'


def test_crema_loader_skips_and_reports_bad_files(tiny_corpus, tmp_path):
    root = _copy(tiny_corpus, tmp_path / 'crema')
    video, audio = root / 'VideoFlash', root / 'AudioWAV'
    good = sorted(video.glob('*.flv'))
    # malformed names (one is the misnamed file of old CREMA-D copies)
    shutil.copy(good[0], video / '1001_DFA_ANG.flv')
    shutil.copy(audio / f'{good[0].stem}.wav', audio / '1040_ITH_SAD_X.wav')
    # a known-bad clip, present with both media
    shutil.copy(good[0], video / '1076_MTI_NEU_XX.flv')
    shutil.copy(audio / f'{good[0].stem}.wav', audio / '1076_MTI_NEU_XX.wav')
    # a corrupted video: header bytes destroyed
    corrupted = good[1]
    data = bytearray(corrupted.read_bytes())
    data[:4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    corrupted.write_bytes(bytes(data))
    # a git-lfs pointer instead of a video, and one instead of a WAV
    lfs_video = good[2]
    lfs_video.write_bytes(LFS_POINTER)
    lfs_audio = audio / f'{good[3].stem}.wav'
    lfs_audio.write_bytes(LFS_POINTER)
    # a video without its WAV (its audio then comes from the FLV's own track), a WAV without
    # its video, a stray hidden file
    (audio / f'{good[4].stem}.wav').unlink()
    (video / f'{good[5].stem}.flv').unlink()
    (video / '._1001_DFA_ANG_XX.flv').write_bytes(b'\0' * 10)

    records, skipped = index_dataset('crema-d', root)
    reasons = {s.path.name: s.reason for s in skipped}
    assert 'malformed name' in reasons['1001_DFA_ANG.flv']
    assert 'malformed name' in reasons['1040_ITH_SAD_X.wav']
    assert reasons['1076_MTI_NEU_XX.flv'] == 'known-bad CREMA-D clip'
    assert reasons['1076_MTI_NEU_XX.wav'] == 'known-bad CREMA-D clip'
    assert 'unreadable' in reasons[corrupted.name]
    assert 'git-lfs pointer' in reasons[lfs_video.name]
    assert 'git-lfs pointer' in reasons[good[3].name]      # the clip of the LFS WAV
    assert good[4].name not in reasons
    assert 'no VideoFlash' in reasons[f'{good[5].stem}.wav']
    assert '._1001_DFA_ANG_XX.flv' not in reasons
    assert len(skipped) == 8
    bad = {corrupted.stem, lfs_video.stem, good[3].stem, good[5].stem}
    assert [r.clip_id for r in records] == sorted(p.stem for p in good if p.stem not in bad)
    assert {r.clip_id: r.audio_source for r in records}[good[4].stem] == 'video'
    report = format_skipped(skipped)
    assert report.startswith('skipped 8:') and 'known-bad CREMA-D clip x2' in report


def test_ravdess_loader_indexes_the_generated_corpus(tiny_ravdess):
    records, skipped = index_dataset('ravdess', tiny_ravdess)
    assert skipped == []
    assert len(records) == 8
    assert [r.clip_id for r in records] == sorted(r.clip_id for r in records)
    assert {r.actor for r in records} == {'01'}
    assert sorted({r.label for r in records}) == list(RAVDESS_EMOTIONS)
    for r in records:
        assert r.audio_path is None      # the audio is the MP4's AAC track
        assert r.video_path.parent.name == f'Actor_{r.actor}'
        assert r.clip_id.startswith('01-01-') and r.video_path.suffix == '.mp4'


def test_ravdess_loader_uses_speech_wavs_and_skips_what_the_paper_does_not_use(tiny_ravdess,
                                                                               tmp_path):
    root = _copy(tiny_ravdess, tmp_path / 'ravdess')
    actor1 = root / 'Actor_01'
    clip = sorted(actor1.glob('01-01-*.mp4'))[0]
    take = clip.stem[6:]
    # the separate speech WAV of one clip (Audio_Speech_Actors_01-24 unpacked beside)
    audio, sr = decode_audio(clip)
    pcm = (np.clip(audio, -1, 0.999) * 32767).astype('<i2')
    with wave.open(str(actor1 / f'03-01-{take}.wav'), 'wb') as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    shutil.copy(clip, actor1 / '01-02-05-01-01-01-01.mp4')     # song
    shutil.copy(clip, actor1 / '02-01-05-01-01-01-01.mp4')     # video only
    shutil.copy(clip, actor1 / '01-01-05-01-01-01-02.mp4')     # actor 02 in Actor_01
    shutil.copy(clip, actor1 / '01-01-05-01-01-01.mp4')        # malformed
    lfs = sorted(actor1.glob('01-01-*.mp4'))[-1]
    lfs.write_bytes(LFS_POINTER)

    records, skipped = index_dataset('ravdess', root)
    reasons = {s.path.name: s.reason for s in skipped}
    assert 'song' in reasons['01-02-05-01-01-01-01.mp4']
    assert 'modality 02' in reasons['02-01-05-01-01-01-01.mp4']
    assert 'Actor_01' in reasons['01-01-05-01-01-01-02.mp4']
    assert 'malformed name' in reasons['01-01-05-01-01-01.mp4']
    assert 'git-lfs pointer' in reasons[lfs.name]
    assert len(skipped) == 5
    assert len(records) == 8 - 1      # the LFS pointer replaced one of the eight
    with_wav = [r for r in records if r.audio_path is not None]
    assert [r.clip_id for r in with_wav] == [clip.stem]
    assert with_wav[0].audio_path == actor1 / f'03-01-{take}.wav'


def test_missing_root_is_an_error_not_an_empty_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match='VideoFlash'):
        index_dataset('crema-d', tmp_path)
    with pytest.raises(FileNotFoundError, match='Actor_XX'):
        index_dataset('ravdess', tmp_path)
    with pytest.raises(ValueError, match='unknown dataset'):
        index_dataset('iemocap', tmp_path)


def test_flv_decoding_reads_times_and_fps_from_the_container(tiny_corpus):
    path = sorted((tiny_corpus / 'VideoFlash').glob('*.flv'))[0]
    frames, times, fps = decode_video(path)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == 'flv'
        stamps = [p.pts for p in c.demux(s) if p.size]
        tb = float(s.time_base)
    assert fps == 30.0
    assert frames.dtype == np.uint8 and frames.shape[1:] == (360, 480, 3)
    # FLV stores millisecond stamps: the times are those, not k / 30
    np.testing.assert_array_equal(times, np.sort(stamps) * tb)
    # the muxer starts the video after the MP3 track's encoder delay (25 ms at 44.1 kHz)
    assert np.all(np.diff(times) > 0) and 0.0 <= times[0] < 1 / 30
    assert np.allclose(np.diff(times), 1 / 30, atol=1e-3)
    info = probe_video(path)
    np.testing.assert_array_equal(info.times, times)
    assert (info.width, info.height) == (480, 360)


def test_mp4_decoding_and_frames_at_chosen_stamps(tiny_ravdess):
    path = sorted(tiny_ravdess.glob('Actor_01/*.mp4'))[0]
    frames, times, fps = decode_video(path)
    assert fps == pytest.approx(float(Fraction(30000, 1001)))
    assert np.all(np.diff(times) > 0)
    info = probe_video(path)
    np.testing.assert_allclose(info.times, times)
    pick = info.pts[[7, 0, len(info.pts) - 1]]
    some, some_times = decode_video_at(path, pick)
    assert some.shape == (3,) + frames.shape[1:]
    np.testing.assert_array_equal(some[0], frames[7])
    np.testing.assert_array_equal(some[2], frames[-1])
    np.testing.assert_allclose(some_times, times[[7, 0, len(times) - 1]])
    audio, sr = decode_audio(path)
    assert sr == 48000 and audio.dtype == np.float32 and audio.ndim == 1
    # the AAC track lasts as long as the video, give or take the encoder's priming frame
    assert abs(len(audio) / sr - (times[-1] + 1 / fps)) < 0.05
    with pytest.raises(MediaError, match='could not be decoded'):
        decode_video_at(path, [int(info.pts[-1]) + 12345])


def test_wav_decoding_gives_16k_mono_float(tiny_corpus):
    path = sorted((tiny_corpus / 'AudioWAV').glob('*.wav'))[0]
    audio, sr = decode_audio(path)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        raw = np.frombuffer(w.readframes(w.getnframes()), '<i2')
    assert sr == 16000 and audio.dtype == np.float32
    np.testing.assert_allclose(audio, raw / 32768.0, atol=1e-6)
