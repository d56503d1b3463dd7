"""`lightmer query` and `lightmer finetune` on a pool made from a real make-bag bag: batches,
the CSV oracle end to end, the human flow (stop, answer, resume), a real SIGKILL and resume,
inputs refused before anything is written."""
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

from lightmer.active.answers import Answer, append_answers, latest, read_answers
from lightmer.active.pool import Pool
from lightmer.active.query import compute_segment_logits, pool_probs
from lightmer.active.selection import overlapping
from lightmer.cli import main
from lightmer.core.checkpoint import load_checkpoint, save_checkpoint
from lightmer.core.features import face_to_input
from lightmer.core.uncertainty import entropy_bits
from lightmer.evaluation import bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.ros.params import CommonParams, load_for_node
from lightmer.stream.settings import StreamSettings
from polling import wait_until

# Slow tier (fine-tuning runs, one killed and resumed): not in `make test-fast`.
pytestmark = pytest.mark.slow

# Small, fast settings: each tiny bag holds about 20 windows of 6 clips; the second bag is
# the held-out recording.
RUN = ['--per-round', '3', '--eval-windows', '6', '--steps', '4', '--batch-size', '4',
       '--lr', '1e-3']


def _eval_bag(robot_bags) -> list[str]:
    return ['--eval-recordings', str(robot_bags[1])]


def test_query_writes_a_diverse_most_uncertain_batch(robot_pool, untrained_checkpoint,
                                                     tmp_path, capsys):
    answers = tmp_path / 'answers.csv'
    pool = Pool(robot_pool)
    table = pool.table
    append_answers(answers, [Answer(table.ids[0], 'angry', 'test')])
    out = tmp_path / 'batch.json'
    assert main(['query', '--pool', str(robot_pool), '--checkpoint',
                 str(untrained_checkpoint), '--n', '4', '--labels', str(answers),
                 '--out', str(out), '--strategy', 'uncertainty']) == 0
    assert 'batch in' in capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m['format'] == 'lightmer-batch' and m['score'] == 'entropy_bits'
    items = m['items']
    assert 1 <= len(items) <= 4 and m['already_answered'] == 1
    ids = [it['window_id'] for it in items]
    assert table.ids[0] not in ids
    h = entropy_bits(table.probs)                    # the pooling checkpoint is this one
    # Windows sharing a segment with the answered one are not asked either.
    free = ~overlapping(table.rec, table.k_last, np.array([0]), pool.n_segments)
    assert items[0]['entropy_bits'] == pytest.approx(h[free].max())
    assert free[table.index_of(ids)].all()
    assert [it['score'] for it in items] == sorted((it['score'] for it in items), reverse=True)
    for a in items:
        assert sum(a['probs']) == pytest.approx(1.0) and a['predicted'] in m['labels']
        for b in items:
            if a is not b and a['recording'] == b['recording']:
                assert abs(a['k_last'] - b['k_last']) >= pool.n_segments


def test_query_with_the_onnx_export_ranks_as_the_checkpoint(robot_pool, onnx_export, tmp_path):
    """The model runs as the nodes run it: a checkpoint on torch or its export on onnxruntime."""
    manifests = []
    for model in onnx_export:
        out = tmp_path / f'{model.suffix[1:]}.json'
        assert main(['query', '--pool', str(robot_pool), '--checkpoint', str(model), '--n', '5',
                     '--out', str(out), '--strategy', 'uncertainty']) == 0
        manifests.append(json.loads(out.read_text()))
    pt, onnx = manifests
    assert [i['window_id'] for i in pt['items']] == [i['window_id'] for i in onnx['items']]
    np.testing.assert_allclose([i['probs'] for i in pt['items']],
                               [i['probs'] for i in onnx['items']], atol=1e-4)


def _finetune(pool, ckpt, answers, out, *extra, cache=None):
    args = ['finetune', '--checkpoint', str(ckpt), '--pool', str(pool), '--labels',
            str(answers), '--out', str(out), *RUN, *extra]
    if cache is not None:
        args += ['--base-cache', str(cache)]
    return main(args)


def test_csv_oracle_run_changes_the_model(robot_pool, robot_bags, untrained_checkpoint,
                                          tiny_cache, tmp_path):
    answers, out = tmp_path / 'answers.csv', tmp_path / 'run'
    assert _finetune(robot_pool, untrained_checkpoint, answers, out, '--rounds', '2',
                     '--oracle', 'bag-labels', '--folds', '0', *_eval_bag(robot_bags),
                     cache=tiny_cache) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['rounds_done'] == 2 and report['eval_windows'] == 6
    base, _ = load_checkpoint(untrained_checkpoint)
    tuned, meta = load_checkpoint(out / 'finetuned.pt')
    changed = [k for k, v in tuned.state_dict().items()
               if not torch.equal(v, base.state_dict()[k])]
    assert 'fc.weight' in changed and len(changed) > 10
    prov = meta.provenance
    assert prov['finetuned_from']['provenance']['dataset'] == 'test-fixture'
    assert prov['rounds'] == 2 and prov['labels_used'] == report['labels_used'] > 0
    assert prov['pool_recordings'] == list(Pool(robot_pool).recording_ids)
    # The oracle's answers went through the answers file, with the bag CSV's class names.
    rows = bags.read_labels(bags.default_labels_path(robot_bags[0]))
    written = latest(read_answers(answers))
    assert {a.label for a in written.values()} <= {r.label for r in rows} | {'skip'}
    asked = [it['window_id'] for r in (1, 2)
             for it in json.loads((out / f'round_{r}' / 'batch.json').read_text())['items']]
    # Held-out + two rounds of up to three: no question shares a segment with an earlier
    # one, so the small training recording (about 20 windows) runs short in round 2.
    assert len(written) == 6 + len(asked) and 4 <= len(asked) <= 6
    table = Pool(robot_pool).table
    index = table.index_of(asked)
    for j, i in enumerate(index):
        assert not overlapping(table.rec, table.k_last, index[:j], 5)[i]
    held_out = json.loads((out / 'plan.json').read_text())['eval_windows']
    assert len(set(asked)) == len(asked) and not set(asked) & set(held_out)
    pool = Pool(robot_pool)
    assert {pool.table.rec_ids[pool.table.rec[pool.table.position[w]]] for w in held_out} \
        == {pool.table.rec_ids[1]}
    for name in ('confusion_before.png', 'confusion_after.png', 'learning_curve.png'):
        assert (out / name).stat().st_size > 0
    assert np.array(report['after']['confusion']).sum() == report['after']['windows']

    # The fine-tuned checkpoint loads in the nodes unchanged (their loader and processors).
    _, node_meta, segment_s = load_for_node(CommonParams(model_path=str(out / 'finetuned.pt')))
    assert node_meta.labels == meta.labels and segment_s == meta.segment_s
    result = evaluate_bag(EvalConfig(bag=robot_bags[0],
                                     labels=bags.default_labels_path(robot_bags[0]),
                                     checkpoint=out / 'finetuned.pt',
                                     settings=StreamSettings(min_segments=3)))
    assert result['windows'] == (Pool(robot_pool).table.rec == 0).sum()


def test_people_answer_between_rounds(robot_pool, robot_bags, untrained_checkpoint, tmp_path,
                                      capsys):
    """The human oracle: the run stops with the batch to answer; answered, it resumes."""
    answers, out = tmp_path / 'answers.csv', tmp_path / 'run'
    held = _eval_bag(robot_bags)
    assert _finetune(robot_pool, untrained_checkpoint, answers, out, '--rounds', '1',
                     *held) == 3
    err = capsys.readouterr().err
    assert 'wait for an answer' in err and '--resume' in err
    held_out = json.loads((out / 'eval_batch.json').read_text())['items']
    assert len(held_out) == 6 and not (out / 'state.pt').exists()

    def answer(items):
        append_answers(answers, [Answer(it['window_id'], it['predicted'], 'a person')
                                 for it in items])

    answer(held_out)
    assert _finetune(robot_pool, untrained_checkpoint, answers, out, '--rounds', '1', *held,
                     '--resume') == 3
    batch = json.loads((out / 'round_1' / 'batch.json').read_text())['items']
    assert len(batch) == 3
    answer(batch[:2])
    append_answers(answers, [Answer(batch[2]['window_id'], 'unsure', 'a person')])
    assert _finetune(robot_pool, untrained_checkpoint, answers, out, '--rounds', '1', *held,
                     '--resume') == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['labels_used'] == 2                     # 'unsure' does not train
    assert report['before']['accuracy'] == 1.0            # answered with the predictions


def _state_rounds(out: Path) -> int:
    try:
        return len(json.loads((out / 'report.json').read_text())['rounds'])
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    state = out / 'state.pt'
    if not state.exists():
        return 0
    try:
        return len(torch.load(state, weights_only=True)['metrics'])
    except (RuntimeError, EOFError, OSError):
        return 0


def test_killed_finetune_resumes_to_the_same_model(robot_pool, robot_bags, untrained_checkpoint,
                                                   tiny_cache, tmp_path, ros_env):
    args = ['--rounds', '2', '--oracle', 'bag-labels', '--base-cache', str(tiny_cache),
            *_eval_bag(robot_bags)]

    def cmd(out):
        return [sys.executable, '-m', 'lightmer.cli', 'finetune', '--checkpoint',
                str(untrained_checkpoint), '--pool', str(robot_pool), '--labels',
                str(out / 'answers.csv'), '--out', str(out), *RUN, *args]

    whole = tmp_path / 'whole'
    assert subprocess.run(cmd(whole), env=ros_env, capture_output=True,
                          timeout=600).returncode == 0
    killed = tmp_path / 'killed'
    proc = subprocess.Popen(cmd(killed), env=ros_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # round 1 done (round 0 = the base)
    wait_until(lambda: _state_rounds(killed) >= 2 or proc.poll() is not None, 600,
               'round 1 in state.pt or the end of the run')
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / 'report.json').exists()
    done = subprocess.run([*cmd(killed), '--resume'], env=ros_env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a = json.loads((whole / 'report.json').read_text())
    b = json.loads((killed / 'report.json').read_text())
    assert [m['accuracy'] for m in a['rounds']] == [m['accuracy'] for m in b['rounds']]
    assert [m.get('train_loss') for m in a['rounds']] == [m.get('train_loss') for m in b['rounds']]
    wa, _ = load_checkpoint(whole / 'finetuned.pt')
    wb, _ = load_checkpoint(killed / 'finetuned.pt')
    for k, v in wa.state_dict().items():
        assert torch.equal(v, wb.state_dict()[k]), k
    # The answers file holds each answer once: the repeated round asked the same windows.
    ids = [x.window_id for x in read_answers(killed / 'answers.csv')]
    assert len(ids) == len(set(ids))


def _two_class_base(untrained: Path, adapted: Path, pool: Pool, out: Path) -> Path:
    """The untrained model with a head that splits the pool's windows into classes 0 and 1
    along their main direction of variation as the adapted model embeds them, so that the
    adapted model's own answers hold two classes (an untrained head gives one class)."""
    model, _ = load_checkpoint(adapted)
    crops, mels = pool.segment_inputs(np.arange(len(pool.table.seg_rec)))
    with torch.no_grad():
        e = torch.cat([model.embed_visual(torch.from_numpy(face_to_input(crops))),
                       model.embed_audio(torch.from_numpy(mels)[:, None])], 1)   # (S, 640)
        u = torch.linalg.svd(e - e.mean(0), full_matrices=False).Vh[0]         # (640,)
        base, meta = load_checkpoint(untrained)
        base.fc.weight.zero_()
        base.fc.bias.fill_(-100.0)
        base.fc.weight[0], base.fc.weight[1] = u, -u
        base.fc.bias[0], base.fc.bias[1] = -(u @ e.mean(0)), u @ e.mean(0)
    save_checkpoint(out, base, meta)
    return out


def test_round_zero_is_the_adaptation_and_a_harmful_round_is_rolled_back(
        robot_pool, untrained_checkpoint, tmp_path):
    """Answers that agree with the adapted model, and a learning rate that wrecks it: the
    cross-validation over the answers sees held-back answers get worse, so the round is not
    kept (the model stays the adapted one); without validation the same round is kept."""
    pool = Pool(robot_pool)
    adapted = tmp_path / 'adapted.pt'
    assert main(['adapt', '--checkpoint', str(untrained_checkpoint), '--pool', str(robot_pool),
                 '--out', str(adapted)]) == 0
    base = _two_class_base(untrained_checkpoint, adapted, pool, tmp_path / 'base.pt')
    assert main(['adapt', '--checkpoint', str(base), '--pool', str(robot_pool),
                 '--out', str(adapted)]) == 0
    model, meta = load_checkpoint(adapted)
    table = pool.table
    probs = pool_probs(pool, lambda c, m: compute_segment_logits(model, c, m),
                       lambda x: np.exp(x.mean(0) - x.mean(0).max()))
    # Windows sharing no segment (about ten), labelled with the adapted model's own classes.
    picks = list(range(0, len(table.ids), pool.n_segments))[:12]
    predicted = [meta.labels[int(probs[i].argmax())] for i in picks]
    assert len(set(predicted)) == 2, predicted
    answers = tmp_path / 'answers.csv'
    append_answers(answers, [Answer(table.ids[i], y, 'test') for i, y in
                             zip(picks, predicted, strict=True)])
    wreck = ['--rounds', '0', '--eval-windows', '0', '--steps', '6', '--batch-size', '4',
             '--lr', '1.0', '--l2sp', '0']
    out = tmp_path / 'checked'
    assert _finetune(robot_pool, base, answers, out, *wreck) == 0
    report = json.loads((out / 'report.json').read_text())
    first = report['rounds'][1]
    assert report['rounds'][0]['adapted'] and first['labels'] == len(picks)
    assert first['validation']['anchor_accuracy'] == 1.0
    assert first['validation']['cv_accuracy'] < 1.0 and first['kept'] is False
    kept, _ = load_checkpoint(out / 'finetuned.pt')
    for k, v in model.state_dict().items():
        assert torch.equal(v, kept.state_dict()[k]), f'{k}: the rolled-back round changed it'

    out = tmp_path / 'unchecked'
    assert _finetune(robot_pool, base, answers, out, *wreck, '--folds', '0') == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['rounds'][1]['kept'] is True and report['rounds'][1]['validation'] is None
    changed, _ = load_checkpoint(out / 'finetuned.pt')
    assert not torch.equal(changed.state_dict()['fc.weight'], model.state_dict()['fc.weight'])

    # --keep-margin: the candidates must get that many more answers right than the anchor;
    # more than there are answers can never be met, whatever the training did.
    out = tmp_path / 'margin'
    assert _finetune(robot_pool, base, answers, out, *wreck[:8], '--keep-margin',
                     str(len(picks) + 1)) == 0
    first = json.loads((out / 'report.json').read_text())['rounds'][1]
    assert first['kept'] is False and first['validation']['gain_answers'] <= len(picks)
    assert first['validation']['gain_answers'] == round(
        (first['validation']['cv_accuracy'] - first['validation']['anchor_accuracy'])
        * len(picks))


def test_refused_inputs_write_nothing(robot_pool, untrained_checkpoint, tmp_path, capsys):
    answers, out = tmp_path / 'answers.csv', tmp_path / 'run'
    answers.write_text('window_id,label,who,when\nx:1,surprised,me,\n')
    assert _finetune(robot_pool, untrained_checkpoint, answers, out) == 2
    assert "['surprised'], which the checkpoint does not know" in capsys.readouterr().err
    assert not out.exists()
    assert answers.read_text() == 'window_id,label,who,when\nx:1,surprised,me,\n'
    # A labels CSV for the bag-labels oracle naming a class the model does not have.
    answers.unlink()
    assert _finetune(robot_pool, untrained_checkpoint, answers, out, '--eval-recordings',
                     'no-such-recording') == 2
    assert 'neither a recording id nor a bag' in capsys.readouterr().err
    assert not answers.exists()
