"""Who is speaking: the speaker estimate on the generated two-person bag, per segment, against
what the bag holds; per-person accuracy with `audio_to: speaker`; the estimate's cost.

The bag (`make-bag --two-people`, with a turn where both talk at once every second pair) is
replayed offline through the nodes' processors (stream.pipeline.OfflinePeoplePipeline, which
keeps every frame's mouth regions as the face node does). Each segment's estimate
(people.PeopleFuser.take_estimates) is compared with the truth of its compared span (the
`span_s` before its reference time): the labels row it lies in says who speaks (left, right,
both), and the bag's own audio says whether anyone does (its RMS over the span under
SILENCE_DBFS: silence, the clips' quiet lead-in and tail). An id is a person by the half of
the frame its faces were in (people_scoring.person_of_ids). Spans across a turn boundary are
left out (who speaks changes inside them).

Per-person accuracy: `eval-bag --people` with audio_to speaker and all on the same bag, and the
one-person bag of the same clips, as scripts/measure_people.py does.

Cost: the time of `MouthHistory.motion` + `estimate_speakers` per face per segment, and of
`MouthHistory.push` per frame, measured on this bag's own frames and log-mels.

Latency (`live`, after the rest): both bags through the three node processes (`eval-bag
--live`, the nodes' defaults: audio_to speaker with two people), end-to-end p50/p95 of one
person and of two; merged into OUT/speaker.json under `live`.

Usage (held-out actors of the checkpoint's fold):
  bash scripts/loopback.sh .venv/bin/python scripts/measure_speaker.py \
      CORPUS CHECKPOINT OUT ACTOR_A ACTOR_B [live]
Writes OUT/speaker.json and OUT/speaker.png.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.messages import image_green, image_to_rgb
from lightmer.core.plots import plot_grouped_bars
from lightmer.core.segments import segment_index
from lightmer.evaluation import bag_corpus, bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.evaluation.people_scoring import person_of_ids
from lightmer.evaluation.scoring import percentiles, score
from lightmer.evaluation.two_people import OVERLAP
from lightmer.stream.pipeline import OfflinePeoplePipeline
from lightmer.stream.speaker import MouthHistory, SpeakerSettings, estimate_speakers

SILENCE_DBFS = -45.0      # a span quieter than this (RMS) holds no voice
OVERLAP_EVERY = 2


def main(corpus: Path, checkpoint: Path, out: Path, actors: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    one, two = out / 'one.bag', out / 'two.bag'
    if not one.exists():
        print(bag_corpus.make_bag('crema-d', corpus, one, actors=actors))
    if not two.exists():
        print(bag_corpus.make_bag('crema-d', corpus, two, actors=actors, two_people=True,
                                  overlap_every=OVERLAP_EVERY))
    rows = bags.read_labels(bags.default_labels_path(two))
    attribution, cost = replay(two, checkpoint, rows)
    accuracy = per_person_accuracy(one, two, checkpoint, out)
    result = {'actors': {'left': actors[0], 'right': actors[1]},
              'checkpoint': str(checkpoint), 'speaker_settings': SpeakerSettings().__dict__,
              'silence_dbfs': SILENCE_DBFS, 'attribution': attribution, 'cost': cost,
              'accuracy': accuracy}
    atomic_save_json(out / 'speaker.json', result)
    plot(result, out / 'speaker.png')
    print(json.dumps(result, indent=2))
    return 0


def replay(bag: Path, checkpoint: Path, rows) -> tuple[dict, dict]:
    """The bag through the offline pipeline: each segment's estimate against the truth, and
    the estimate's cost on the same data."""
    pipe = OfflinePeoplePipeline(checkpoint, audio_to='speaker', frame_id=bags.CAMERA_FRAME)
    estimates, audio, frames, mels, width = [], [], [], {}, 0
    for msg in bags.read_bag(bag, bags.BagTopics()):
        t = msg.stamp_ns / 1e9
        if msg.kind == 'image':
            width = msg.data.shape[1]
            frames.append((t, msg.data))
            pipe.push_image(t, msg.data)
        else:
            audio.append((t, msg.data))
            for _k, t_ref, mel in pipe.audio.push(t, msg.data, msg.sample_rate):
                mels[t_ref] = mel
                pipe.people.push_mel(t_ref, mel)
        estimates += pipe.people.take_estimates()
    person_of = person_of_ids(pipe.centres_x, width)
    truth = truths(np.concatenate([a for _, a in audio]), audio[0][0], rows,
                   [e[1] for e in estimates])
    return (attribution_summary(estimates, truth, person_of),
            cost_of(frames, mels, pipe.meta.features, pipe.meta.segment_s))


def truths(samples: np.ndarray, t0: float, rows, t_refs) -> list[str]:
    """Per reference time: 'left' / 'right' / 'both' (who speaks over its span), 'silence', or
    '' (the span crosses a turn boundary or no row)."""
    span = SpeakerSettings.span_s
    out = []
    for t_ref in t_refs:
        row = [r for r in rows if r.start <= t_ref - span and t_ref <= r.end]
        i0, i1 = int((t_ref - span - t0) * bags.SAMPLE_RATE), int((t_ref - t0)
                                                                   * bags.SAMPLE_RATE)
        chunk = samples[max(0, i0):max(0, i1)]
        rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) if chunk.size else 0.0
        if rms < 10 ** (SILENCE_DBFS / 20):
            out.append('silence')
        else:
            out.append(row[0].person if len(row) == 1 else '')
    return out


def attribution_summary(estimates, truth, person_of) -> dict:
    """Per truth: how often the estimate credited the right people, and its states."""
    groups: dict[str, list] = {}
    for (_k, _t, est, _ids), who in zip(estimates, truth, strict=True):
        if who:
            groups.setdefault(who, []).append(est)
    out = {}
    for who, ests in sorted(groups.items()):
        credited = [sorted({person_of.get(i, '?') for i in e.speaking}) for e in ests]
        want = {'left': ['left'], 'right': ['right'], OVERLAP: ['left', 'right'],
                'silence': []}[who]
        out[who] = {'segments': len(ests),
                    'right': float(np.mean([c == want for c in credited])),
                    'states': dict(Counter(e.state for e in ests))}
    one = [e for w in ('left', 'right') for e in [out.get(w)] if e]
    out['one_speaker'] = {
        'segments': sum(e['segments'] for e in one),
        'right': (sum(e['right'] * e['segments'] for e in one)
                  / max(1, sum(e['segments'] for e in one)))}
    return out


def cost_of(frames, mels, features, segment_s: float) -> dict:
    """Per frame: MouthHistory.push; per face and segment: its motion and its share of the
    estimate, on this bag's frames (two faces: both halves' centre boxes)."""
    history, push_s, face_s = MouthHistory(), [], []
    h, w = frames[0][1].shape[:2]
    boxes = [np.array([w * 0.1, h * 0.2, w * 0.4, h * 0.8]),
             np.array([w * 0.6, h * 0.2, w * 0.9, h * 0.8])]
    mel_at = {segment_index(t, segment_s): m for t, m in mels.items()}
    last_k = None
    for t, frame in frames:
        t0 = time.perf_counter()
        history.push(t, frame)
        push_s.append(time.perf_counter() - t0)
        k = segment_index(t, segment_s)
        if k != last_k and k in mel_at:
            last_k = k
            t0 = time.perf_counter()
            mouths = {str(i): history.motion(b, t, SpeakerSettings.span_s)
                      for i, b in enumerate(boxes)}
            estimate_speakers(mouths, mel_at[k], features)
            face_s.append((time.perf_counter() - t0) / len(boxes))
    return {'per_frame_push_ms': percentiles(1e3 * np.array(push_s)),
            'per_frame_decode_ms': decode_cost(frames[0][1]),
            'per_face_per_segment_ms': percentiles(1e3 * np.array(face_s))}


def decode_cost(frame: np.ndarray) -> dict:
    """What the face node adds per frame before MouthHistory.push_plane: reading the green
    plane of every camera message (rgb8 sensor_msgs/Image of this size, image_green), and for
    comparison the full conversion (image_to_rgb) it does only for segment frames."""
    from sensor_msgs.msg import Image  # rclpy message type: only this figure needs it

    h, w = frame.shape[:2]
    msg = Image(height=h, width=w, encoding='rgb8', step=3 * w, data=frame.tobytes())
    out = {}
    for name, read in (('image_green', image_green), ('image_to_rgb', image_to_rgb)):
        times = []
        for _ in range(100):
            t0 = time.perf_counter()
            read(msg)
            times.append(time.perf_counter() - t0)
        out[name] = percentiles(1e3 * np.array(times))
    return out


def per_person_accuracy(one: Path, two: Path, checkpoint: Path, out: Path) -> dict:
    """Clip accuracy per person on the two-person bag (audio_to speaker, all) and one person
    at a time on the same clips."""
    single = evaluate_bag(EvalConfig(one, bags.default_labels_path(one), checkpoint,
                                     out=out / 'eval_one'))
    paired = {c for r in bags.read_labels(bags.default_labels_path(two)) if r.person != OVERLAP
              for c in [r.clip_id]}
    rows = [r for r in bags.read_labels(bags.default_labels_path(one)) if r.clip_id in paired]
    windows = json.loads((out / 'eval_one' / 'windows.json').read_text())
    same = score(np.array([w['stamp_s'] for w in windows]),
                 np.array([w['probs'] for w in windows]), rows, tuple(single['labels']))
    result = {'clips': len(rows), 'one_person': {'clip_accuracy': same['clip_accuracy'],
                                                 'window_accuracy': same['window_accuracy']}}
    for policy in ('speaker', 'all'):
        people = evaluate_bag(EvalConfig(two, bags.default_labels_path(two), checkpoint,
                                         out=out / f'eval_two_{policy}', people=True,
                                         audio_to=policy))
        result[f'two_people_{policy}'] = {
            'clip_accuracy': people['clip_accuracy'],
            'window_accuracy': people['window_accuracy'],
            'difference_points': round(100 * (people['clip_accuracy']
                                              - same['clip_accuracy']), 1)}
    return result


def plot(result: dict, path: Path) -> None:
    a, acc = result['attribution'], result['accuracy']
    groups = {f'{who} ({a[who]["segments"]})': [a[who]['right']]
              for who in ('left', 'right', OVERLAP, 'silence') if who in a}
    groups.update({'clip acc: one person': [acc['one_person']['clip_accuracy']],
                   'clip acc: two, speaker': [acc['two_people_speaker']['clip_accuracy']],
                   'clip acc: two, all': [acc['two_people_all']['clip_accuracy']]})
    plot_grouped_bars(groups, ['fraction'], path, ylabel='fraction',
                      title='speaker right per true speaker (segments); clip accuracy')


def live(checkpoint: Path, out: Path) -> int:
    """Both bags through the live nodes; latency merged into OUT/speaker.json."""
    from lightmer.harness.live_eval import evaluate_bag_live  # rclpy: only `live` needs it

    result = json.loads((out / 'speaker.json').read_text())
    runs = {}
    for name, bag, people in (('one_person', out / 'one.bag', False),
                              ('two_people', out / 'two.bag', True)):
        r = evaluate_bag_live(EvalConfig(bag, bags.default_labels_path(bag), checkpoint,
                                         live=True, out=out / f'live_{name}', people=people))
        runs[name] = {'latency_ms': r['latency_ms'], 'kept_up': r['kept_up'],
                      'clip_accuracy': r['clip_accuracy']}
    runs['p95_difference_ms'] = (runs['two_people']['latency_ms']['p95']
                                 - runs['one_person']['latency_ms']['p95'])
    result['live'] = runs
    atomic_save_json(out / 'speaker.json', result)
    print(json.dumps(runs, indent=2))
    return 0


if __name__ == '__main__':
    if len(sys.argv) not in (6, 7) or sys.argv[6:] not in ([], ['live']):
        raise SystemExit(__doc__)
    if sys.argv[6:] == ['live']:
        raise SystemExit(live(Path(sys.argv[2]), Path(sys.argv[3])))
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                          sys.argv[4:6]))
