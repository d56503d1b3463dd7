"""The generated corpus: exact layouts and containers, cues split across the two modalities."""
import json
import wave

import av
import librosa
import numpy as np
import pytest

from lightmer.cli import main
from lightmer.datasets import synth
from lightmer.datasets.media import decode_audio
from lightmer.datasets.names import parse_crema, parse_ravdess


def test_crema_layout_and_containers(tiny_corpus):
    videos = sorted((tiny_corpus / 'VideoFlash').iterdir())
    wavs = sorted((tiny_corpus / 'AudioWAV').iterdir())
    assert sorted(p.name for p in tiny_corpus.iterdir()) == ['AudioWAV', 'VideoFlash']
    assert [p.stem for p in videos] == [p.stem for p in wavs] and len(videos) == 24
    assert all(p.suffix == '.flv' for p in videos) and all(p.suffix == '.wav' for p in wavs)
    for p in videos:
        parse_crema(p.stem)
    with av.open(str(videos[0])) as c:
        assert c.format.name == 'flv'
        v = c.streams.video[0]
        assert v.codec_context.name == 'flv'           # FLV1 / Sorenson H.263
        assert (v.codec_context.width, v.codec_context.height) == (480, 360)
        assert float(v.average_rate) == 30.0
    durations = []
    for p in wavs:
        with wave.open(str(p)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            durations.append(w.getnframes() / 16000)
    # CREMA-D-like lengths (the real ones are 1.3-5 s, mean 2.5 s)
    assert 1.3 <= min(durations) and max(durations) <= 3.3


def test_ravdess_layout_and_containers(tiny_ravdess):
    assert sorted(p.name for p in tiny_ravdess.iterdir()) == ['Actor_01']
    files = sorted(tiny_ravdess.glob('Actor_*/*'))
    assert len(files) == 8 and all(p.suffix == '.mp4' for p in files)
    for p in files:
        n = parse_ravdess(p.stem)
        assert (n.modality, n.channel) == ('01', '01') and p.parent.name == f'Actor_{n.actor}'
    with av.open(str(files[0])) as c:
        assert 'mp4' in c.format.name
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == 'h264'
        assert a.codec_context.name == 'aac' and a.rate == 48000 and a.channels == 2
        assert float(v.average_rate) == pytest.approx(29.97, abs=0.01)


def test_each_emotion_is_one_face_voice_pair_and_neither_cue_suffices():
    for layout in ('crema-d', 'ravdess'):
        cues = synth.LAYOUTS[layout].cues
        assert sorted(cues) == sorted(synth.LAYOUTS[layout].codes)
        pairs = list(cues.values())
        assert len(set(pairs)) == len(pairs)                 # the pair identifies the emotion
        faces = {f for f, _ in pairs}
        voices = {v for _, v in pairs}
        assert set(pairs) == {(f, v) for f in faces for v in voices}   # full cross
        ceilings = synth.cue_ceilings(layout)
        assert ceilings['face'] == 0.5 and ceilings['voice'] < 0.5 and ceilings['both'] == 1.0


def _f0(audio: np.ndarray, sr: int) -> float:
    f0 = librosa.yin(y=audio, fmin=60, fmax=400, sr=sr, frame_length=1024, hop_length=256)
    rms = librosa.feature.rms(y=audio, frame_length=1024, hop_length=256)[0]
    return float(np.median(f0[rms > 0.3 * rms.max()]))      # speech frames only


def test_voice_cue_high_arousal_is_higher_pitched_for_every_actor(tiny_corpus):
    wavs = sorted((tiny_corpus / 'AudioWAV').glob('*.wav'))
    for actor in ('1001', '1002', '1003', '1004'):
        pitch = {'high': [], 'low': []}
        for p in wavs:
            n = parse_crema(p.stem)
            if n.actor == actor:
                audio, sr = decode_audio(p)
                pitch[synth.CREMA_CUES[n.emotion][1]].append(_f0(audio, sr))
        assert min(pitch['high']) > max(pitch['low']), (actor, pitch)


def test_face_cue_changes_the_crops_by_face_state(tiny_cache):
    """Within an actor, clips sharing a face state look more alike than clips that do not."""
    index = json.loads((tiny_cache / 'index.json').read_text())
    same, diff = [], []
    for actor in ('1001', '1002', '1003', '1004'):
        clips = [c for c in index['clips'] if c['actor'] == actor]
        means = {}
        for c in clips:
            with np.load(tiny_cache / 'clips' / f"{c['clip_id']}.npz") as z:
                means[c['label']] = z['crops'].astype(np.float64).mean(axis=0)
        for a in means:
            for b in means:
                if a < b:
                    d = np.abs(means[a] - means[b]).mean()
                    fa, fb = synth.CREMA_CUES[a][0], synth.CREMA_CUES[b][0]
                    (same if fa == fb else diff).append(d)
    assert np.mean(same) < 0.8 * np.mean(diff), (np.mean(same), np.mean(diff))


def test_clip_rendering_is_deterministic(tmp_path):
    spec = synth._plan(synth.LAYOUTS['crema-d'], tmp_path / 'a', 1, 1, seed=3,
                       speech_wavs=False)[0]
    synth.write_clip(spec)
    first = (spec.video_path.read_bytes(), spec.audio_path.read_bytes())
    synth.write_clip(spec)
    assert (spec.video_path.read_bytes(), spec.audio_path.read_bytes()) == first


def test_cli_synth_reports_and_refuses_impossible_requests(tmp_path, capsys):
    assert main(['synth', '--layout', 'crema-d', '--out', str(tmp_path / 'c'), '--actors', '1',
                 '--clips-per-emotion', '1', '--seed', '5']) == 0
    out = capsys.readouterr().out
    assert '6 clips = 1 actors x 6 emotions' in out and 'not accuracy' in out
    assert len(list((tmp_path / 'c' / 'VideoFlash').glob('1001_*.flv'))) == 6
    assert len(list((tmp_path / 'c' / 'AudioWAV').glob('1001_*.wav'))) == 6
    with pytest.raises(ValueError, match='actors 1..24'):
        synth.synthesize('ravdess', tmp_path / 'x', actors=25)
    with pytest.raises(ValueError, match='at most 12 clips'):
        synth.synthesize('crema-d', tmp_path / 'x', clips_per_emotion=13)
    with pytest.raises(ValueError, match='unknown layout'):
        synth.synthesize('iemocap', tmp_path / 'x')
