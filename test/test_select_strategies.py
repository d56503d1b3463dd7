"""The strategies for small budgets (typical, cluster-margin, staged), clean windows and the
rule that no two questions share a segment, on pure arrays and on a pool written in the
pool format with known utterance boundaries (real `Pool`, real `lightmer query`)."""
from __future__ import annotations

import dataclasses
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from lightmer.active.answers import Answer, append_answers
from lightmer.active.clean import pool_continuity, window_pauses
from lightmer.active.pool import POOL_FORMAT, POOL_VERSION, Pool
from lightmer.active.query import QueryConfig, compute_segment_outputs, run_query
from lightmer.active.selection import (
    DEFAULT_STRATEGY,
    cluster_margin_priority,
    embedding_priority,
    resolve_strategy,
    select_diverse,
    typical_priority,
    window_embeddings,
)
from lightmer.core.checkpoint import load_checkpoint, read_checkpoint_meta
from lightmer.core.model import inference_copy
from lightmer.stream.settings import StreamSettings

N = 5
SR = 16000


def _blobs(rng, sizes, dim=20, spread=8.0):
    """Points of well separated Gaussian blobs -> (x (M, dim), blob id (M,))."""
    centres = rng.normal(0, spread, size=(len(sizes), dim))
    blob = np.repeat(np.arange(len(sizes)), sizes)
    return centres[blob] + rng.normal(0, 1, size=(len(blob), dim)), blob


def _top(prio, n):
    """The n first picks when every window is its own recording (no overlap rule bites)."""
    m = len(prio)
    return select_diverse(prio, [f'r{i}:0' for i in range(m)], np.arange(m),
                          np.zeros(m, int), N, n)


def test_typical_takes_one_window_of_each_cluster_then_the_uncovered_ones():
    x, blob = _blobs(np.random.default_rng(0), [60, 40, 30, 20, 15, 10])
    typ, prio = typical_priority(x, 6, seed=0)
    picked = _top(prio, 6)
    assert sorted(blob[picked]) == [0, 1, 2, 3, 4, 5]          # one per cluster
    assert blob[picked[0]] == 0                                 # the largest cluster first
    for i in picked:                                            # each its cluster's most typical
        assert typ[i] == typ[blob == blob[i]].max()
    # A window of blob 0 and one of blob 1 are labelled (2 + 4 clusters: the blobs): the next
    # four questions cover the other blobs.
    labelled = [int(np.flatnonzero(blob == 0)[0]), int(np.flatnonzero(blob == 1)[0])]
    rest = np.setdiff1d(np.arange(len(x)), labelled)
    _, prio = typical_priority(x[rest], 4, seed=0, labelled=x[labelled])
    assert sorted(blob[rest][_top(prio, 4)]) == [2, 3, 4, 5]


def test_cluster_margin_spreads_the_uncertain_picks():
    rng = np.random.default_rng(1)
    x, blob = _blobs(rng, [20, 20, 100])
    margin = np.concatenate([rng.uniform(0, 0.05, 20), rng.uniform(0.05, 0.1, 20),
                             rng.uniform(0.5, 1.0, 100)])
    only_margin = _top(-margin, 4)
    assert set(blob[only_margin]) == {0}                        # margin alone: one blob
    score, prio = cluster_margin_priority(margin, x, 4, seed=0)
    picked = _top(prio, 4)
    assert set(blob[picked]) == {0, 1}                          # both uncertain blobs, not 2
    assert picked[0] == int(np.argmin(margin))                  # the most uncertain first
    np.testing.assert_array_equal(score, margin)


def test_the_seed_changes_the_first_batch():
    x = np.random.default_rng(2).normal(size=(300, 16))         # no cluster structure to find
    batches = {tuple(sorted(_top(typical_priority(x, 6, seed=s)[1], 6))) for s in range(4)}
    assert len(batches) > 1
    again = [tuple(_top(typical_priority(x, 6, seed=3)[1], 6)) for _ in range(2)]
    assert again[0] == again[1]                                 # a seed is reproducible


def test_staged_is_the_default_and_switches_after_the_first_labels():
    assert DEFAULT_STRATEGY == 'staged'
    assert resolve_strategy('staged', 0) == 'typical'
    assert resolve_strategy('staged', 12) == 'cluster-margin'
    assert resolve_strategy('margin', 0) == 'margin'
    with pytest.raises(ValueError, match='strategy'):
        resolve_strategy('greedy', 0)


def test_window_embeddings_average_present_segments():
    seg = np.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    rows = np.array([[0, 1, -1], [-1, -1, 2]])
    e = window_embeddings(seg, rows)
    np.testing.assert_allclose(e, [[0.6, 0.8], [2 ** -0.5, 2 ** -0.5]])
    with pytest.raises(ValueError, match='without segments'):
        window_embeddings(seg, np.array([[-1, -1, -1]]))


# --- a pool with known utterance boundaries -------------------------------------------------
def _speech(rng, n):
    """Noise with a 4 Hz syllable rhythm, RMS about 0.1."""
    t = np.arange(n) / SR
    return 0.14 * (0.7 + 0.3 * np.sin(2 * np.pi * 4 * t)) * rng.normal(size=n)


def _write_recording(pool: Path, rec: str, meta, t0: float, duration: float,
                     utterances, no_face, rng) -> None:
    """Audio: the utterances [(start, end)] over room noise 10 dB below the speech; the
    segments of [t0, t0 + duration) on the grid, absent where no_face [(start, end)] covers
    their reference time; every window the fusion publishes with >= 3 segments."""
    t_seg = meta.segment_s
    d = pool / 'recordings' / rec
    d.mkdir(parents=True)
    n = round(duration * SR)
    audio = 0.03 * rng.normal(size=n)
    for a, b in utterances:
        i, j = round((a - t0) * SR), round((b - t0) * SR)
        audio[i:j] += _speech(rng, j - i)
    with wave.open(str(d / 'audio.wav'), 'wb') as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype('<i2').tobytes())
    ks = np.arange(round(t0 / t_seg), round((t0 + duration) / t_seg))
    t_ref = (ks + 0.5) * t_seg
    seen = np.array([not any(a <= t < b for a, b in no_face) for t in t_ref])
    f = meta.features
    np.savez(d / 'segments.npz', k=ks[seen], t_ref=t_ref[seen],
             crops=rng.integers(0, 256, (seen.sum(), f.face_height, f.face_width), np.uint8),
             mels=rng.normal(size=(seen.sum(), f.n_mels, f.mel_frames)).astype(np.float32))
    row_of = {int(k): r for r, k in enumerate(ks[seen])}
    k_last, rows = [], []
    for k in ks[N - 1:]:
        r = [row_of.get(int(kk), -1) for kk in range(k - N + 1, k + 1)]
        if sum(x >= 0 for x in r) >= 3 and k in row_of:
            k_last.append(k)
            rows.append(r)
    c = len(meta.labels)
    np.savez(d / 'windows.npz', k_last=np.array(k_last), t_ref=(np.array(k_last) + 0.5) * t_seg,
             rows=np.array(rows), probs=np.full((len(k_last), c), 1 / c))
    (d / 'recording.json').write_text(json.dumps({
        'id': rec, 'bag': str(pool / 'no-bag'), 'topics': {'image': '/camera/image_raw'},
        'labels': list(meta.labels), 'windows': len(k_last),
        'audio': {'file': 'audio.wav', 'sample_rate': SR, 'samples': n, 't0_s': t0}}))


# Per recording: utterances and face-less spans, seconds from the recording's start.
UTTERANCES = [(0.0, 3.1), (4.2, 6.7), (7.6, 11.3), (12.5, 16.1), (17.0, 20.0)]
NO_FACE = [(6.9, 7.4), (16.3, 16.9)]      # the person out of view in two of the silences


@pytest.fixture(scope='module')
def made_pool(untrained_checkpoint, tmp_path_factory) -> Path:
    """Three 20 s recordings in the pool format, at stamps 1000 s apart."""
    meta = read_checkpoint_meta(untrained_checkpoint)
    pool = tmp_path_factory.mktemp('made_pool') / 'pool'
    rng = np.random.default_rng(7)
    recs = []
    for r in range(3):
        t0 = 1000.0 * (r + 1)
        shift = lambda spans, t0=t0: [(t0 + a, t0 + b) for a, b in spans]  # noqa: E731
        _write_recording(pool, f'rec{r}', meta, t0, 20.0, shift(UTTERANCES), shift(NO_FACE),
                         rng)
        recs.append(f'rec{r}')
    (pool / 'pool.json').write_text(json.dumps({
        'format': POOL_FORMAT, 'version': POOL_VERSION, 'preset': meta.preset,
        'features': meta.features.to_dict(), 'segment_s': meta.segment_s,
        'n_segments': meta.n_segments, 'settings': dataclasses.asdict(StreamSettings()),
        'recordings': recs}))
    return pool


def test_clean_windows_found_from_audio_and_missing_segments(made_pool):
    pool = Pool(made_pool)
    table = pool.table
    found = pool_continuity(pool)
    t_seg = pool.segment_s
    starts, ends = (table.k_last - N + 1) * t_seg, (table.k_last + 1) * t_seg
    t0 = 1000.0 * (table.rec + 1)
    pauses = [(b, c) for (_, b), (c, _) in zip(UTTERANCES, UTTERANCES[1:], strict=False)]
    want_pause = np.zeros(len(table.ids), bool)
    for a, b in pauses:                          # sound on both sides of it inside the window
        want_pause |= (starts < t0 + a) & (t0 + b < ends)
    np.testing.assert_array_equal(found.pause, want_pause)
    np.testing.assert_array_equal(found.gap, (table.rows < 0).any(axis=1))
    assert found.gap.any() and found.pause.any() and found.clean.any()
    assert (found.pause & ~found.gap).any()      # pauses with a face in view: audio alone
    # The page's per-window list agrees, with the pause's place.
    i = int(np.flatnonzero(found.pause & (table.rec == 0))[0])
    (a, b), = window_pauses(pool, [table.ids[i]])[0]
    assert a == pytest.approx(1000.0 + 3.1, abs=0.05) or a == pytest.approx(1000 + 6.7, abs=0.05)
    assert window_pauses(pool, [table.ids[int(np.flatnonzero(found.clean)[0])]]) == [[]]


def _overlaps(ids) -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ra, ka), (rb, kb) = a.rsplit(':', 1), b.rsplit(':', 1)
            if ra == rb and abs(int(ka) - int(kb)) < N:
                out.append((a, b))
    return out


def test_no_two_questions_share_a_segment_across_rounds(made_pool, untrained_checkpoint,
                                                       tmp_path):
    answers = tmp_path / 'answers.csv'
    labels = read_checkpoint_meta(untrained_checkpoint).labels
    asked, rules = [], []
    for rnd in range(3):
        batch = run_query(QueryConfig(pool=made_pool, checkpoint=untrained_checkpoint, n=5,
                                      answers=answers if rnd else None,
                                      out=tmp_path / f'batch{rnd}.json', seed=rnd))
        ids = [it['window_id'] for it in batch['items']]
        assert len(ids) == 5
        rules.append(batch['rule'])
        asked += ids
        append_answers(answers, [Answer(w, labels[j % len(labels)] if j else 'skip')
                                 for j, w in enumerate(ids)], labels)
    assert rules == ['typical', 'cluster-margin', 'cluster-margin']
    assert _overlaps(asked) == []
    # The clean windows went first: every question of the first batch is a clean window.
    clean = pool_continuity(Pool(made_pool)).clean
    first = json.loads((tmp_path / 'batch0.json').read_text())['items']
    assert all(it['clean'] for it in first)
    assert clean[Pool(made_pool).table.index_of([it['window_id'] for it in first])].all()


def test_the_seed_enters_the_first_query(made_pool, untrained_checkpoint, tmp_path):
    def batch(seed, name):
        m = run_query(QueryConfig(pool=made_pool, checkpoint=untrained_checkpoint, n=5,
                                  out=tmp_path / name, seed=seed))
        return [it['window_id'] for it in m['items']]

    firsts = [batch(s, f's{s}.json') for s in range(3)]
    assert len({tuple(sorted(b)) for b in firsts}) > 1
    assert batch(0, 'again.json') == firsts[0]


def test_few_or_no_candidates():
    """Fewer candidates than questions, or none: every candidate once, no error."""
    x = np.random.default_rng(3).normal(size=(3, 640))
    for _, prio in (typical_priority(x, 5, seed=0), cluster_margin_priority(
            np.array([0.3, 0.1, 0.2]), x, 5, seed=0)):
        assert sorted(_top(prio, 5)) == [0, 1, 2]
    assert _top(cluster_margin_priority(np.array([0.3, 0.1, 0.2]), x, 5, seed=0)[1], 1) == [1]
    score, prio = embedding_priority(np.zeros((0, 6)), 'typical', x[:0], 5, seed=0)
    assert score.shape == prio.shape == (0,)


def test_short_recordings_are_scored_in_one_call_with_the_same_outputs(made_pool,
                                                                      untrained_checkpoint):
    """Pool.segment_outputs runs several short recordings through the model together; each
    recording's rows are its own (as scoring it alone), in the table's segment order."""
    model = inference_copy(load_checkpoint(untrained_checkpoint)[0])
    pool = Pool(made_pool)
    calls = []

    def outputs_of(faces, mels):
        calls.append(len(faces))
        return compute_segment_outputs(model, faces, mels)

    together = pool.segment_outputs(outputs_of, ('logits', 'embeddings'))
    assert calls == [len(pool.table.seg_k)] and len(pool.table.rec_ids) == 3
    table = pool.table
    for r in range(3):
        rows = np.flatnonzero(table.seg_rec == r)
        crops, mels = pool.segment_inputs(rows)
        alone = compute_segment_outputs(model, crops, mels)
        np.testing.assert_allclose(together['logits'][rows], alone['logits'], atol=1e-5)
        np.testing.assert_allclose(together['embeddings'][rows], alone['embeddings'],
                                   atol=1e-5)
