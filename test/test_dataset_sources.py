"""Datasets as downloaded: CREMA-D's three audio sources, silent audio tracks and truncated
videos, through the real loaders and `prepare` on generated clips."""
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from lightmer.core.atomic_io import atomic_write_wav
from lightmer.datasets import synth
from lightmer.datasets.cache import load_index
from lightmer.datasets.loaders import index_dataset
from lightmer.datasets.media import decode_audio, decode_video, probe_video
from lightmer.datasets.prepare import duration_tolerance, prepare

# Slow tier (decodes and prepares many media files): not in `make test-fast`.
pytestmark = pytest.mark.slow

ACTOR = '1001'


def _clips(tiny_corpus: Path, n: int) -> list[str]:
    return sorted(p.stem for p in (tiny_corpus / 'VideoFlash').glob(f'{ACTOR}_*.flv'))[:n]


def _crema_root(tiny_corpus: Path, root: Path, clips: list[str], audio: str) -> Path:
    """VideoFlash/ for `clips` plus their audio as `audio`: 'AudioWAV', 'AudioMP3' or None."""
    (root / 'VideoFlash').mkdir(parents=True)
    for c in clips:
        shutil.copy(tiny_corpus / 'VideoFlash' / f'{c}.flv', root / 'VideoFlash' / f'{c}.flv')
        if audio == 'AudioWAV':
            (root / 'AudioWAV').mkdir(exist_ok=True)
            shutil.copy(tiny_corpus / 'AudioWAV' / f'{c}.wav', root / 'AudioWAV' / f'{c}.wav')
        elif audio == 'AudioMP3':
            (root / 'AudioMP3').mkdir(exist_ok=True)
            samples, sr = decode_audio(tiny_corpus / 'AudioWAV' / f'{c}.wav')
            synth.write_mp3(root / 'AudioMP3' / f'{c}.mp3', samples, sr)
    return root


def _lag(signal: np.ndarray, reference: np.ndarray) -> int:
    """Samples by which `signal` is late against `reference` (cross-correlation peak)."""
    n = min(len(signal), len(reference)) - 2000
    corr = np.correlate(signal[:n + 2000], reference[:n], 'valid')
    return int(np.argmax(corr))


@pytest.mark.parametrize('audio, source', [('AudioWAV', 'wav'), ('AudioMP3', 'mp3'),
                                           (None, 'video')])
def test_crema_d_audio_from_each_source(tiny_corpus, tmp_path, audio, source):
    clips = _clips(tiny_corpus, 2)
    root = _crema_root(tiny_corpus, tmp_path / 'root', clips, audio)
    records, skipped = index_dataset('crema-d', root)
    assert skipped == []
    assert [r.clip_id for r in records] == clips
    assert {r.audio_source for r in records} == {source}

    summary = prepare('crema-d', root, tmp_path / 'cache', workers=1, progress=False)
    assert summary.status == {'ok': 2}
    assert f'audio from: {source} 2' in str(summary)
    index = load_index(tmp_path / 'cache')
    assert [c['audio_source'] for c in index.clips] == [source, source]
    for c in clips:
        with np.load(tmp_path / 'cache' / 'clips' / f'{c}.npz') as z:
            cached = z['audio']
            assert str(z['audio_source']) == source
        wav, _ = decode_audio(tiny_corpus / 'AudioWAV' / f'{c}.wav')
        # The same speech whatever the source; the FLV's MP3 track starts late by the
        # encoder's delay (1105 samples at 44.1 kHz = 25 ms = 401 samples at 16 kHz).
        expected_lag = 401 if source == 'video' else 0
        assert abs(_lag(cached, wav) - expected_lag) <= 2
        assert abs(len(cached) - len(wav)) < 0.1 * 16000


def test_crema_d_sources_are_taken_in_order_and_a_clip_without_audio_is_skipped(
        tiny_corpus, tmp_path):
    a, b, c, d = _clips(tiny_corpus, 4)
    root = _crema_root(tiny_corpus, tmp_path / 'root', [a, b, c], 'AudioWAV')
    (root / 'AudioWAV' / f'{b}.wav').unlink()
    (root / 'AudioWAV' / f'{c}.wav').unlink()
    (root / 'AudioMP3').mkdir()
    for clip in (a, b):          # a has both: the WAV wins; b has only the MP3
        samples, sr = decode_audio(tiny_corpus / 'AudioWAV' / f'{clip}.wav')
        synth.write_mp3(root / 'AudioMP3' / f'{clip}.mp3', samples, sr)
    # d: an FLV without an audio track and no WAV or MP3 -> nothing to hear
    frames, _, _ = decode_video(tiny_corpus / 'VideoFlash' / f'{d}.flv')
    synth._write_flv(root / 'VideoFlash' / f'{d}.flv', list(frames[:30]), Fraction(30))
    # an MP3 without its video is reported like a WAV without its video
    shutil.copy(root / 'AudioMP3' / f'{a}.mp3', root / 'AudioMP3' / '1001_ITS_SAD_XX.mp3')

    records, skipped = index_dataset('crema-d', root)
    assert {r.clip_id: r.audio_source for r in records} == {a: 'wav', b: 'mp3', c: 'video'}
    reasons = {s.path.name: s.reason for s in skipped}
    assert set(reasons) == {f'{d}.flv', '1001_ITS_SAD_XX.mp3'}
    assert 'no audio' in reasons[f'{d}.flv'] and 'AudioWAV' in reasons[f'{d}.flv']
    assert 'no VideoFlash' in reasons['1001_ITS_SAD_XX.mp3']


def test_a_crema_d_root_without_videoflash_is_a_clear_error(tmp_path):
    (tmp_path / 'AudioWAV').mkdir()
    with pytest.raises(FileNotFoundError, match='VideoFlash'):
        index_dataset('crema-d', tmp_path)


# --- silent audio (item: digital silence is not speech) ---------------------------------------
def test_a_clip_whose_audio_is_digital_silence_is_skipped(tiny_corpus, tiny_ravdess, tmp_path):
    clips = _clips(tiny_corpus, 2)
    root = _crema_root(tiny_corpus, tmp_path / 'crema', clips, 'AudioWAV')
    silent = clips[1]
    samples, sr = decode_audio(root / 'AudioWAV' / f'{silent}.wav')
    atomic_write_wav(root / 'AudioWAV' / f'{silent}.wav', np.zeros_like(samples), sr)
    summary = prepare('crema-d', root, tmp_path / 'cache', workers=1, progress=False)
    assert summary.status == {'ok': 1, 'silent': 1}
    assert f'{silent}: silent (the audio is digital silence' in str(summary)
    assert load_index(tmp_path / 'cache').clip_ids == [clips[0]]

    # RAVDESS: an MP4 whose AAC track is silent, as the video-only takes carry
    rav = tmp_path / 'ravdess' / 'Actor_01'
    rav.mkdir(parents=True)
    mp4 = sorted((tiny_ravdess / 'Actor_01').glob('*.mp4'))[0]
    frames, _, _ = decode_video(mp4)
    audio, sr = decode_audio(mp4)
    synth._write_mp4(rav / mp4.name, list(frames), Fraction(30000, 1001),
                     np.zeros_like(audio), sr)
    summary = prepare('ravdess', rav.parent, tmp_path / 'rcache', workers=1, progress=False)
    assert summary.status == {'silent': 1}
    assert 'digital silence' in str(summary)


# --- truncated videos -------------------------------------------------------------------------
def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def _faststart(src: Path, dst: Path) -> None:
    """Remux an MP4 with its index (moov) first, as streaming-ready files have it: cut such a
    file and the frames before the cut still decode."""
    with av.open(str(src)) as inp, av.open(str(dst), 'w', format='mp4',
                                           options={'movflags': 'faststart'}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def test_a_truncated_flv_with_its_wav_intact_is_not_cached_ok(tiny_corpus, tmp_path):
    clips = _clips(tiny_corpus, 3)
    root = _crema_root(tiny_corpus, tmp_path / 'root', clips, 'AudioWAV')
    for clip, fraction in zip(clips[1:], (0.3, 0.9), strict=True):
        _cut(root / 'VideoFlash' / f'{clip}.flv', fraction)
        # this cut loses more than the tolerance (a cut may lose less: then nothing tells it
        # from codec padding, and nothing is lost that matters)
        info = probe_video(root / 'VideoFlash' / f'{clip}.flv')
        video_s = info.times[-1] + 1 / info.fps
        audio_s = len(decode_audio(root / 'AudioWAV' / f'{clip}.wav')[0]) / 16000
        assert audio_s - video_s > duration_tolerance(video_s, audio_s)
    summary = prepare('crema-d', root, tmp_path / 'cache', workers=1, progress=False)
    index = load_index(tmp_path / 'cache')
    by_id = {c['clip_id']: c for c in index.clips}
    assert by_id[clips[0]]['status'] == 'ok'           # an intact clip stays within tolerance
    for clip in clips[1:]:
        assert by_id[clip]['status'] == 'truncated'
        assert 'video ends' in by_id[clip]['error'] and 'before the audio' in by_id[clip]['error']
        assert f'{clip}: truncated' in str(summary)
    assert index.clip_ids == [clips[0]]


def test_a_truncated_mp4_with_its_speech_wav_intact_is_not_cached_ok(tiny_ravdess, tmp_path):
    actor = tmp_path / 'ravdess' / 'Actor_01'
    actor.mkdir(parents=True)
    mp4s = sorted((tiny_ravdess / 'Actor_01').glob('*.mp4'))[:4]
    for mp4 in mp4s:
        audio, sr = decode_audio(mp4)           # the take's separate speech WAV (03-01-...)
        atomic_write_wav(actor / f'03{mp4.stem[2:]}.wav', audio, sr)
    intact, fast30, fast90, plain = mp4s
    shutil.copy(intact, actor / intact.name)
    for mp4, fraction in ((fast30, 0.3), (fast90, 0.9)):
        _faststart(mp4, actor / mp4.name)
        _cut(actor / mp4.name, fraction)
    shutil.copy(plain, actor / plain.name)       # index at the end: a cut leaves nothing
    _cut(actor / plain.name, 0.9)

    records, skipped = index_dataset('ravdess', actor.parent)
    assert [s.path.name for s in skipped] == [plain.name]
    assert 'unreadable' in skipped[0].reason
    prepare('ravdess', actor.parent, tmp_path / 'cache', workers=1, progress=False)
    by_id = {c['clip_id']: c for c in load_index(tmp_path / 'cache').clips}
    assert by_id[intact.stem]['status'] == 'ok'
    assert by_id[intact.stem]['audio_source'] == 'wav'
    for mp4 in (fast30, fast90):
        assert by_id[mp4.stem]['status'] == 'truncated', by_id[mp4.stem]
