"""`lightmer pool`: a real make-bag bag through the nodes' processors into a pool; the pool's
windows are eval-bag's; the pooled crops, mels, logits and audio read back; resume after a
real SIGKILL; refused inputs write nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer

from fixtures_data import POOL_MIN_SEGMENTS as MIN_SEGMENTS
from lightmer.active.pool import (
    Pool,
    PoolConfig,
    PoolError,
    _differences,
    build_pool,
    checkpoint_key,
)
from lightmer.active.query import compute_segment_logits, window_probs
from lightmer.cli import main
from lightmer.core.backend import load_model
from lightmer.core.checkpoint import load_checkpoint, meta_for_preset, save_checkpoint
from lightmer.core.config import FeatureConfig
from lightmer.core.model import LightmerNet
from lightmer.evaluation import bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.stream.settings import StreamSettings
from polling import wait_until


def test_pool_windows_are_the_windows_eval_bag_publishes(robot_pool, robot_bags,
                                                          untrained_checkpoint, tmp_path):
    evaluate_bag(EvalConfig(bag=robot_bags[0], labels=bags.default_labels_path(robot_bags[0]),
                            checkpoint=untrained_checkpoint, out=tmp_path,
                            settings=StreamSettings(min_segments=MIN_SEGMENTS)))
    published = json.loads((tmp_path / 'windows.json').read_text())
    pool = Pool(robot_pool)
    table = pool.table
    first = table.rec == 0                                # the windows of robot_bags[0]
    assert len(published) == first.sum() > 10
    assert [w['k_last'] for w in published] == table.k_last[first].tolist()
    np.testing.assert_array_equal(table.t_ref[first], [w['stamp_s'] for w in published])
    np.testing.assert_array_equal(table.probs[first], [w['probs'] for w in published])
    # A window is the mean of its cached segment logits, as the fusion node computes it.
    logits = pool.segment_logits(None, key=json.loads(
        (robot_pool / 'recordings' / table.rec_ids[0] / 'recording.json').read_text())
        ['checkpoint']['key'])
    fuse = load_model(untrained_checkpoint).fuse           # the fusion node's fuse
    np.testing.assert_allclose(window_probs(logits, table.rows, fuse), table.probs, atol=1e-12)
    counts = (table.rows >= 0).sum(axis=1)
    assert counts.min() >= MIN_SEGMENTS and counts.max() == pool.n_segments


def test_pooled_segments_read_back(robot_pool, robot_bags, untrained_checkpoint):
    pool = Pool(robot_pool)
    table = pool.table
    rows = np.arange(len(table.seg_k))
    crops, mels = pool.segment_inputs(rows)
    assert crops.dtype == np.uint8 and crops.shape == (len(rows), 98, 80)
    assert mels.dtype == np.float32 and mels.shape == (len(rows), 128, 43)
    assert crops.std(axis=(1, 2)).min() > 5            # real face crops, not blanks
    model, _ = load_checkpoint(untrained_checkpoint)
    # The pooling checkpoint's logits, written while pooling (other tests may have added
    # other checkpoints' caches to this session pool).
    key = checkpoint_key(untrained_checkpoint)
    cached = np.concatenate([np.load(robot_pool / 'logits' / key / f'{rec}.npy')
                             for rec in table.rec_ids])
    # Batched recomputation agrees with the per-segment logits the fusion computed.
    np.testing.assert_allclose(compute_segment_logits(model, crops, mels), cached, atol=1e-4)
    for r in range(len(table.rec_ids)):                # segments in order, per recording
        assert np.all(np.diff(table.seg_k[table.seg_rec == r]) > 0)

    # The labelling page's view: N crops, time spans, probabilities, entropy.
    wid = table.ids[len(table.ids) // 2]
    view = pool.window(wid)
    n = pool.n_segments
    assert view.crops.shape == (n, 98, 80) and view.present.sum() >= MIN_SEGMENTS
    assert view.frames_s[1] - view.frames_s[0] == pytest.approx(n * pool.segment_s)
    assert view.audio_s[0] < view.frames_s[0] and view.audio_s[1] > view.frames_s[1]
    assert 0 <= view.entropy_bits <= np.log2(6) and view.bag == robot_bags[0].resolve()

    # The stored audio is the bag's audio, on the stamp clock.
    info = bags.bag_info(robot_bags[0])
    chunks = [m for m in bags.read_bag(robot_bags[0]) if m.kind == 'audio']
    stream = np.concatenate([c.data for c in chunks])
    t0 = chunks[0].stamp_ns / 1e9
    audio, sr = pool.audio(table.rec_ids[0], t0 - 0.5, t0 + 3.0)
    assert sr == 16000 and len(audio) == 3.5 * sr
    np.testing.assert_array_equal(audio[:8000], 0)       # before the recording: silence
    np.testing.assert_allclose(audio[8000:], stream[:3 * sr], atol=1e-6)
    assert info.start_ns / 1e9 == t0


@pytest.mark.slow
def test_a_single_policy_pool_keeps_the_inputs_the_model_saw(robot_bags, untrained_checkpoint,
                                                             tmp_path):
    """Policy 'single' fuses the grey gaps between clips (sound, no face) with core.missing's
    face input: the pool marks those segments, and the faces it gives back reproduce the
    logits the fusion computed, missing ones included."""
    out = tmp_path / 'pool'
    build_pool(PoolConfig(bags=(robot_bags[0],), checkpoint=untrained_checkpoint, out=out,
                          settings=StreamSettings(missing_policy='single',
                                                  min_segments=MIN_SEGMENTS),
                          progress=False))
    pool = Pool(out)
    rows = np.arange(len(pool.table.seg_k))
    faces = pool.segment_faces(rows)
    _, mels = pool.segment_inputs(rows)
    assert faces.dtype == np.float32 and faces.shape == (len(rows), 1, 98, 80)
    missing = (faces == 0).all(axis=(1, 2, 3))        # no crop gives exact zeros
    recording = json.loads((out / 'recordings' / pool.table.rec_ids[0] / 'recording.json')
                           .read_text())
    assert 0 < missing.sum() == recording['counts']['fusion']['audio_only'] < len(rows)
    model, _ = load_checkpoint(untrained_checkpoint)
    cached = np.load(out / 'logits' / checkpoint_key(untrained_checkpoint)
                     / f'{pool.table.rec_ids[0]}.npy')
    np.testing.assert_allclose(compute_segment_logits(model, faces, mels), cached, atol=1e-4)
    # scoring from the pool (query, fine-tuning) recomputes the same logits
    recomputed = pool.segment_logits(lambda f, m: compute_segment_logits(model, f, m))
    np.testing.assert_allclose(recomputed, cached, atol=1e-4)


@pytest.mark.slow
def test_pool_resumes_after_a_kill(robot_bags, untrained_checkpoint, robot_pool, tmp_path,
                                   ros_env):
    """SIGKILL while the second bag is pooled; the rerun keeps the first and finishes."""
    out = tmp_path / 'pool'
    cmd = [sys.executable, '-m', 'lightmer.cli', 'pool', '--bag', *map(str, robot_bags),
           '--checkpoint', str(untrained_checkpoint), '--out', str(out), '--min-segments', '3']
    proc = subprocess.Popen(cmd, env=ros_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    index = out / 'pool.json'
    wait_until(lambda: (index.exists() and json.loads(index.read_text())['recordings'])
               or proc.poll() is not None, 300, 'the first bag pooled or the end of the run')
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(json.loads(index.read_text())['recordings']) == 1
    result = subprocess.run([*cmd, '--json'], env=ros_env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert len(summary['skipped']) == 1 and len(summary['added']) == 1
    assert sorted(p.name for p in (out / 'recordings').iterdir()) == sorted(
        json.loads(index.read_text())['recordings'])     # nothing half-written left
    # The same recording as pooling both bags in one go (the session's pool fixture).
    rec = summary['added'][0]
    for name in ('segments.npz', 'windows.npz'):
        with np.load(out / 'recordings' / rec / name) as a, \
                np.load(robot_pool / 'recordings' / rec / name) as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])


def _custom_mp3_bag(path: Path) -> Path:
    store = bags.typestore()
    t = bags.DEFAULT_START_NS
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        for topic, msgtype, msg in (
                (bags.IMAGE_TOPIC, bags.IMAGE_TYPE,
                 bags.image_message(store, t, np.zeros((4, 4, 3), np.uint8))),
                (bags.AUDIO_TOPIC, bags.AUDIO_TYPE,
                 bags.audio_message(store, t, np.zeros(16, np.int16))),
                (bags.AUDIO_INFO_TOPIC, bags.AUDIO_INFO_TYPE,
                 bags.audio_info_message(store, coding_format='mp3'))):
            c = w.add_connection(topic, msgtype, typestore=store)
            w.write(c, t, store.serialize_cdr(msg, msgtype))
    return path


def test_refused_inputs_write_nothing(robot_bags, untrained_checkpoint, robot_pool, tmp_path,
                                      capsys):
    out = tmp_path / 'new_pool'
    # A bag without the topics: the message names the option to change.
    assert main(['pool', '--bag', str(robot_bags[0]), '--checkpoint', str(untrained_checkpoint),
                 '--out', str(out), '--audio-topic', '/mic/audio']) == 2
    assert 'no audio topic /mic/audio' in capsys.readouterr().err
    # mp3 audio (audio_capture's default): refused with the capture setting to use.
    mp3 = _custom_mp3_bag(tmp_path / 'mp3_bag')
    assert main(['pool', '--bag', str(robot_bags[0]), str(mp3), '--checkpoint',
                 str(untrained_checkpoint), '--out', str(out)]) == 2
    assert 'format:=wave' in capsys.readouterr().err
    assert not out.exists()

    # Extending a pool with other node settings or features than it was made with.
    before = {p: p.stat().st_mtime_ns for p in robot_pool.rglob('*') if p.is_file()}
    with pytest.raises(PoolError, match='other settings'):
        build_pool(PoolConfig(bags=(robot_bags[1],), checkpoint=untrained_checkpoint,
                              out=robot_pool, settings=StreamSettings(min_segments=4),
                              progress=False))
    assert before == {p: p.stat().st_mtime_ns for p in robot_pool.rglob('*') if p.is_file()}


def test_a_pool_from_before_a_feature_setting_existed_compares_as_made():
    """pool.json written before mel_norm/detect_max_side existed: read as what it was made
    with (window normalisation, detection on the full frame), differences named per key."""
    old = FeatureConfig(detect_max_side=0).to_dict()
    for key in ('mel_norm', 'mel_db_mean', 'mel_db_std', 'detect_max_side'):
        del old[key]
    assert _differences({'features': old, 'n_segments': 5},
                        {'features': FeatureConfig(detect_max_side=0).to_dict(),
                         'n_segments': 5}) == {}
    assert _differences({'features': old, 'n_segments': 5},
                        {'features': FeatureConfig(detect_max_side=640).to_dict(),
                         'n_segments': 12}) == {'features.detect_max_side': (0, 640),
                                                'n_segments': (5, 12)}


def test_query_refuses_a_checkpoint_with_other_features(robot_pool, tmp_path, capsys):
    torch.manual_seed(0)
    meta = meta_for_preset('crema-d', features=FeatureConfig(face_margin=0.2))
    other = tmp_path / 'other.pt'
    save_checkpoint(other, LightmerNet(meta.model), meta)
    batch = tmp_path / 'batch.json'
    assert main(['query', '--pool', str(robot_pool), '--checkpoint', str(other), '--n', '3',
                 '--out', str(batch)]) == 2
    err = capsys.readouterr().err
    assert 'other feature settings' in err and 'features.face_margin' in err
    assert not batch.exists() and not (robot_pool / 'batches').exists()


@pytest.mark.slow
def test_pool_from_a_bag_with_compressed_images(tiny_corpus, robot_pool, untrained_checkpoint,
                                                tmp_path):
    """A camera recorded as CompressedImage (JPEG, as robots record it): the pool reads it
    through bags.read_bag like eval-bag, and its crops are the raw bag's up to JPEG loss."""
    bag = tmp_path / 'robot_jpeg'
    assert main(['make-bag', '--dataset', 'crema-d', '--root', str(tiny_corpus), '--out',
                 str(bag), '--actors', '1001', '--compressed', 'jpeg']) == 0
    out = tmp_path / 'pool'
    assert main(['pool', '--bag', str(bag), '--checkpoint', str(untrained_checkpoint),
                 '--out', str(out), '--min-segments', str(MIN_SEGMENTS)]) == 0
    pool = Pool(out)
    table = pool.table
    assert pool.recording(table.rec_ids[0])['topics']['image'] == '/camera/image_raw'
    evaluate_bag(EvalConfig(bag=bag, labels=bags.default_labels_path(bag),
                            checkpoint=untrained_checkpoint, out=tmp_path / 'eval',
                            settings=StreamSettings(min_segments=MIN_SEGMENTS)))
    published = json.loads((tmp_path / 'eval' / 'windows.json').read_text())
    assert [w['k_last'] for w in published] == table.k_last.tolist() != []
    np.testing.assert_array_equal(table.probs, [w['probs'] for w in published])

    raw = Pool(robot_pool)                       # the same clips recorded as raw Image
    raw_k = raw.table.seg_k[raw.table.seg_rec == 0]
    both = np.intersect1d(raw_k, table.seg_k)
    assert len(both) >= 0.8 * len(raw_k)
    jpeg_crops, _ = pool.segment_inputs(np.searchsorted(table.seg_k, both))
    raw_crops, _ = raw.segment_inputs(np.searchsorted(raw_k, both))
    diff = np.abs(jpeg_crops.astype(float) - raw_crops.astype(float)).mean(axis=(1, 2))
    # Grey levels: the same faces, JPEG-coded (measured: median 2; an MTCNN box moved by a
    # pixel or two on the decoded frame makes a few crops differ more).
    assert np.median(diff) < 4.0 and diff.max() < 30.0
