"""Generated corpus -> rosbag2 (mcap and sqlite3) -> eval-bag offline and live (three node
processes over loopback DDS with sim time); the modes agree window by window."""
from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from lightmer.cli import main
from lightmer.core.config import PRESETS
from lightmer.core.export import export_checkpoint
from lightmer.datasets.loaders import index_dataset
from lightmer.datasets.media import decode_audio, decode_video
from lightmer.evaluation import bag_corpus, bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.evaluation.scoring import score
from lightmer.harness.live_eval import evaluate_bag_live
from lightmer.stream.settings import StreamSettings

# Slow tier (eval-bag through the live node processes): not in `make test-fast`.
pytestmark = pytest.mark.slow

ACTOR = '1001'


@pytest.fixture(scope='module')
def checkpoint(untrained_checkpoint) -> Path:
    """An untrained, seeded model: agreement needs no trained one."""
    return untrained_checkpoint


@pytest.fixture(scope='module')
def corpus_bags(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp('bags')
    report = bag_corpus.make_bag('crema-d', tiny_corpus, out / 'mcap', actors=[ACTOR],
                                 storage='mcap', gap_s=1.0)
    assert '(mcap): 6 clips' in report
    # The other one through the command line.
    assert main(['make-bag', '--dataset', 'crema-d', '--root', str(tiny_corpus), '--out',
                 str(out / 'sqlite3'), '--actors', ACTOR, '--storage', 'sqlite3']) == 0
    assert (out / 'sqlite3.labels.csv').exists()
    return {'mcap': out / 'mcap', 'sqlite3': out / 'sqlite3'}


def test_make_bag_carries_the_clips(corpus_bags, tiny_corpus):
    bag = corpus_bags['mcap']
    info = bags.bag_info(bag)
    rows = bags.read_labels(bags.default_labels_path(bag), info.start_s)
    records = {r.clip_id: r for r in index_dataset('crema-d', tiny_corpus)[0]
               if r.actor == ACTOR}
    preset = PRESETS['crema-d']
    assert sorted(r.clip_id for r in rows) == sorted(records)
    for r in rows:                                 # class names, from the clip's own code
        assert r.label == preset.labels[preset.codes.index(records[r.clip_id].label)]

    first = records[rows[0].clip_id]
    frames, times, _ = decode_video(first.video_path)
    audio, sr = decode_audio(first.audio_path)
    assert sr == bags.SAMPLE_RATE                  # CREMA-D WAVs are 16 kHz already
    images, chunks = [], []
    for m in bags.read_bag(bag):
        if m.kind == 'image' and rows[0].start - 1e-6 <= m.stamp_ns / 1e9 <= rows[0].end:
            images.append(m)
        elif m.kind == 'audio':
            chunks.append(m)
    assert len(images) == len(frames)
    np.testing.assert_array_equal(images[0].data, frames[0])
    np.testing.assert_array_equal(images[-1].data, frames[-1])
    # container times on the clip's clock: a first frame 25 ms in stays 25 ms after its start
    assert images[0].stamp_ns / 1e9 == pytest.approx(rows[0].start + times[0], abs=1e-6)
    assert images[-1].stamp_ns / 1e9 == pytest.approx(rows[0].start + times[-1], abs=1e-6)
    stream = np.concatenate([c.data for c in chunks])
    i0 = round((rows[0].start - info.start_s) * bags.SAMPLE_RATE)
    np.testing.assert_allclose(stream[i0:i0 + len(audio)], audio, atol=1 / 16000)
    # Both storages hold the same messages (digests: a bag is hundreds of MB of raw frames).
    raw = {s: [(t, topic, hashlib.sha1(data).digest()) for topic, _, t, data in bags.iter_raw(b)]
           for s, b in corpus_bags.items()}
    assert raw['mcap'] == raw['sqlite3']


def _windows(out: Path) -> list[dict]:
    return json.loads((out / 'windows.json').read_text())


@pytest.fixture(scope='module')
def offline(corpus_bags, checkpoint, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    results = {}
    for storage, bag in corpus_bags.items():
        out = tmp_path_factory.mktemp(f'eval_{storage}')
        cfg = EvalConfig(bag=bag, labels=bags.default_labels_path(bag), checkpoint=checkpoint,
                         out=out)
        results[storage] = (evaluate_bag(cfg), out)
    return results


def test_offline_report(offline):
    result, out = offline['mcap']
    assert result['mode'] == 'offline'
    assert result['windows'] >= 3
    assert result['windows'] == len(_windows(out))
    # the accuracies are those of the windows written beside them, scored against the CSV
    windows = _windows(out)
    rows = bags.read_labels(result['labels_csv'])
    rescored = score(np.array([w['stamp_s'] for w in windows]),
                     np.array([w['probs'] for w in windows]), rows, tuple(result['labels']))
    assert result['window_accuracy'] == rescored['window_accuracy']
    assert result['clip_accuracy'] == rescored['clip_accuracy']
    assert result['clips'] == 6
    assert result['counts']['face_crop']['no_face'] > 0   # grey gap frames have no face
    # A window completes when its last audio chunk arrives: the bag time of a chunk is its
    # last sample's, so the sim latency lies in [0, one chunk] (64 ms).
    for w in _windows(out):
        assert 0 <= w['latency_sim_ms'] <= 64.0 + 1e-3
        assert w['latency_wall_ms'] >= w['latency_sim_ms']
        assert sum(w['probs']) == pytest.approx(1.0)
    assert result['latency_ms']['p50'] <= result['latency_ms']['p95']
    for name in ('confusion.png', 'latency.png', 'eval.json'):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / 'eval.json').read_text())['windows'] == result['windows']
    # 'skip' (the default): every window's segments had both modalities
    m = result['modalities']
    assert m['segments'] == m['with_face'] == m['with_audio'] == sum(
        w['segments'] for w in windows) and m['windows'] == len(windows)


def test_single_policy_windows_say_which_segments_lacked_a_face(corpus_bags, checkpoint,
                                                                 offline, tmp_path):
    """The grey gaps between clips have sound (silence) but no face: 'skip' drops those
    segments, 'single' fuses them from the audio alone and the report counts them."""
    skip, _ = offline['mcap']
    bag = corpus_bags['mcap']
    result = evaluate_bag(EvalConfig(
        bag=bag, labels=bags.default_labels_path(bag), checkpoint=checkpoint, out=tmp_path,
        settings=StreamSettings(missing_policy='single')))
    fusion = result['counts']['fusion']
    assert 0 < fusion['audio_only'] <= fusion['no_face'] and fusion['dropped'] == 0
    assert fusion['used'] == (skip['counts']['fusion']['used'] + fusion['audio_only']
                              + fusion['face_only'])
    assert result['windows'] > skip['windows']
    windows = _windows(tmp_path)
    m = result['modalities']
    assert m['with_face'] == sum(w['with_face'] for w in windows) < m['segments']
    assert m['with_audio'] == m['segments'] == sum(w['segments'] for w in windows)
    assert m['windows_without_face'] == sum(w['with_face'] == 0 for w in windows)
    assert any(w['with_face'] < w['segments'] for w in windows)    # windows over a gap
    assert all(0 <= w['with_face'] <= w['segments'] and sum(w['probs']) == pytest.approx(1.0)
               for w in windows)


def test_offline_is_deterministic_across_storages(offline):
    (a, out_a), (b, out_b) = offline['mcap'], offline['sqlite3']
    strip = ('k_last', 'stamp_s', 'end_s', 'probs', 'latency_sim_ms')
    wa = [{k: w[k] for k in strip} for w in _windows(out_a)]
    wb = [{k: w[k] for k in strip} for w in _windows(out_b)]
    assert wa == wb
    assert a['counts'] == b['counts']


def test_live_agrees_with_offline(corpus_bags, checkpoint, offline, tmp_path):
    bag = corpus_bags['mcap']
    # Real time: at 2x and 4x the windows still agreed here, but with other work on the two
    # cores the face node fell behind at 4x (late faces, more segments given up).
    cfg = EvalConfig(bag=bag, labels=bags.default_labels_path(bag), checkpoint=checkpoint,
                     live=True, out=tmp_path, rate=1.0)
    live = evaluate_bag_live(cfg)
    off, off_out = offline['mcap']
    assert live['mode'] == 'live'
    assert live['frames_lost'] == 0
    assert live['kept_up'] is True
    wl, wo = _windows(tmp_path), _windows(off_out)
    assert [w['k_last'] for w in wl] == [w['k_last'] for w in wo]
    for a, b in zip(wl, wo, strict=True):
        assert a['stamp_s'] == pytest.approx(b['stamp_s'], abs=1e-6)
        np.testing.assert_allclose(a['probs'], b['probs'], atol=1e-5)
        assert a['latency_sim_ms'] > 0 and a['latency_wall_ms'] > 0
    assert live['window_accuracy'] == off['window_accuracy']
    assert live['clip_accuracy'] == off['clip_accuracy']
    assert live['counts']['face_crop']['no_face'] == off['counts']['face_crop']['no_face']
    assert (tmp_path / 'confusion.png').exists() and (tmp_path / 'latency.png').exists()


def test_cli_eval_bag_json(corpus_bags, checkpoint, offline, tmp_path, capsys):
    bag = corpus_bags['sqlite3']
    assert main(['eval-bag', '--bag', str(bag), '--labels',
                 str(bags.default_labels_path(bag)), '--checkpoint', str(checkpoint),
                 '--json']) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = offline['sqlite3'][0]
    for key in ('window_accuracy', 'clip_accuracy', 'windows', 'counts'):
        assert printed[key] == expected[key]
    assert set(printed['latency_ms']) >= {'p50', 'p95'}


def test_errors_before_any_work(corpus_bags, checkpoint, tmp_path):
    bag = corpus_bags['mcap']
    bad = tmp_path / 'labels.csv'
    bad.write_text('start,end,label,clip_id\n0.5,2.0,contempt,x\n')
    with pytest.raises(ValueError, match=r"\['contempt'\], which the checkpoint does not"):
        evaluate_bag(EvalConfig(bag=bag, labels=bad, checkpoint=checkpoint))
    with pytest.raises(bags.BagFormatError, match='no audio topic /mic'):
        evaluate_bag(EvalConfig(bag=bag, labels=bad, checkpoint=checkpoint,
                                audio_topic='/mic'))


def test_score_definitions():
    rows = [bags.LabelRow(0.0, 2.0, 'a', 'c1'), bags.LabelRow(3.0, 5.0, 'b', 'c2'),
            bags.LabelRow(6.0, 7.0, 'a', 'c3')]
    stamps = np.array([0.5, 1.0, 1.5, 2.5, 4.0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6],   # c1: 1 of 3 right, mean -> 'a'
                      [0.0, 1.0],                          # in the gap: not scored
                      [0.3, 0.7]])                         # c2: right
    s = score(stamps, probs, rows, ('a', 'b'))
    assert s['windows'] == 5 and s['windows_scored'] == 4 and s['windows_outside_clips'] == 1
    assert s['window_accuracy'] == pytest.approx(2 / 4)
    # c1 decided by the mean (0.567 vs 0.433 for 'a'), not the majority of windows ('b');
    # c3 has no window and counts as wrong.
    assert s['clips_without_windows'] == 1
    assert s['clip_accuracy'] == pytest.approx(2 / 3)
    assert s['confusion_clips'] == [[1, 0], [0, 1]]
    assert s['confusion_windows'] == [[1, 2], [0, 1]]


@pytest.fixture(scope='module')
def onnx_model(checkpoint, tmp_path_factory) -> Path:
    return export_checkpoint(checkpoint, 'onnx', tmp_path_factory.mktemp('onnx'))[0]


def _same_windows(a: list[dict], b: list[dict]) -> None:
    """Window for window: the same segments and stamps, probabilities within 1e-4."""
    assert [w['k_last'] for w in a] == [w['k_last'] for w in b] and a
    for wa, wb in zip(a, b, strict=True):
        assert wa['stamp_s'] == pytest.approx(wb['stamp_s'], abs=1e-6)
        np.testing.assert_allclose(wa['probs'], wb['probs'], rtol=0, atol=1e-4)


def test_onnx_export_gives_the_same_windows_offline(corpus_bags, onnx_model, offline,
                                                    tmp_path):
    bag = corpus_bags['mcap']
    result = evaluate_bag(EvalConfig(bag=bag, labels=bags.default_labels_path(bag),
                                     checkpoint=onnx_model, out=tmp_path))
    torch_result, torch_out = offline['mcap']
    _same_windows(_windows(tmp_path), _windows(torch_out))
    assert result['counts'] == torch_result['counts']
    assert result['window_accuracy'] == torch_result['window_accuracy']


def test_onnx_export_through_the_live_nodes(corpus_bags, onnx_model, offline, tmp_path):
    """The three node processes on the ONNX export (onnxruntime, no torch) publish the windows
    the checkpoint gives offline on torch."""
    bag = corpus_bags['mcap']
    live = evaluate_bag_live(EvalConfig(bag=bag, labels=bags.default_labels_path(bag),
                                        checkpoint=onnx_model, live=True, out=tmp_path,
                                        rate=1.0))
    assert live['kept_up'] is True and live['frames_lost'] == 0
    _same_windows(_windows(tmp_path), _windows(offline['mcap'][1]))


def _readme_commands(prefix: str, bag: str = 'eval.bag') -> list[str]:
    """The README's command lines starting with `prefix` that name the bag `bag`."""
    readme = Path(__file__).resolve().parents[1] / 'README.md'
    return [line.strip() for line in readme.read_text(encoding='utf-8').splitlines()
            if line.strip().startswith(prefix) and f' {bag} ' in f'{line} ']


def test_the_readme_bag_commands_run_verbatim(tiny_corpus, checkpoint, tmp_path, monkeypatch,
                                              capsys):
    """The README's make-bag and eval-bag lines, run as written (the dataset root and model
    placeholders swapped for real ones): `--out eval.bag` makes a rosbag2 directory whose name
    ends in .bag, which eval-bag must open."""
    (make,) = _readme_commands('lightmer make-bag ')
    (evaluate,) = _readme_commands('lightmer eval-bag --bag ')
    monkeypatch.chdir(tmp_path)
    make = make.replace('~/data/CREMA-D', str(tiny_corpus))
    evaluate = evaluate.replace('model.pt', str(checkpoint))
    assert main(shlex.split(make)[1:]) == 0
    assert (tmp_path / 'eval.bag' / 'metadata.yaml').exists()
    assert main(shlex.split(evaluate)[1:]) == 0
    printed = capsys.readouterr().out
    assert 'window accuracy' in printed
    result = json.loads((tmp_path / 'eval' / 'eval.json').read_text())
    assert result['clips'] == 12 and result['windows'] > 0


@pytest.fixture(scope='module')
def compressed_bags(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """The first two clips of ACTOR, raw and as JPEG and PNG camera topics."""
    preset = PRESETS['crema-d']
    records = [r for r in index_dataset('crema-d', tiny_corpus)[0] if r.actor == ACTOR][:2]
    clips = [bag_corpus._load_clip(r, preset.labels[preset.codes.index(r.label)]) for r in records]
    out = tmp_path_factory.mktemp('compressed')
    made = {}
    for fmt in ('raw', 'jpeg', 'png'):
        made[fmt] = out / fmt
        bags.write_bag(clips, made[fmt], gap_s=1.0, compressed=None if fmt == 'raw' else fmt)
    return made


def _evaluate(bag: Path, checkpoint: Path, out: Path, live: bool = False) -> list[dict]:
    # 2 of N segments: windows on these short clips whatever the nodes' default
    evaluate = evaluate_bag_live if live else evaluate_bag
    evaluate(EvalConfig(bag=bag, labels=bags.default_labels_path(bag), checkpoint=checkpoint,
                        out=out, live=live, settings=StreamSettings(min_segments=2)))
    return _windows(out)


def test_compressed_camera_offline_and_live(compressed_bags, checkpoint, tmp_path):
    """PNG decodes to the very frames: the same windows as the raw bag. JPEG: the live nodes
    (compressed_input) and the offline replay decode the same bytes the same way."""
    raw = _evaluate(compressed_bags['raw'], checkpoint, tmp_path / 'raw')
    png = _evaluate(compressed_bags['png'], checkpoint, tmp_path / 'png')
    assert len(raw) >= 2
    assert [(w['k_last'], w['probs']) for w in png] == [(w['k_last'], w['probs']) for w in raw]

    jpeg = _evaluate(compressed_bags['jpeg'], checkpoint, tmp_path / 'jpeg')
    live = _evaluate(compressed_bags['jpeg'], checkpoint, tmp_path / 'jpeg_live', live=True)
    assert [w['k_last'] for w in live] == [w['k_last'] for w in jpeg]
    for a, b in zip(live, jpeg, strict=True):
        np.testing.assert_allclose(a['probs'], b['probs'], atol=1e-5)
