"""`lightmer demo --quick`: the whole system on generated data, through the live nodes."""
import json
import subprocess
import sys

import pytest

# Slow tier (`lightmer demo --quick`: training and the live nodes): not in `make test-fast`.
pytestmark = pytest.mark.slow

# Chance is 1/6 on the six CREMA-D classes. The quick demo holds out 2 actors (12 clips);
# on this machine its deterministic training gives 6/12 offline and, through the bag and the
# live nodes, 6/12 again (earlier versions of the draw order gave 7/12 and 6/12). Requiring
# twice chance (4/12) leaves a margin of two clips for another CPU's floating point while
# still failing any pipeline that has lost the signal.
TWICE_CHANCE = 2 / 6


def test_quick_demo_learns_and_the_live_nodes_agree(tmp_path, ros_env):
    out = tmp_path / 'demo'
    result = subprocess.run(
        [sys.executable, '-m', 'lightmer.cli', 'demo', '--quick', '--json', '--out', str(out)],
        env=ros_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / 'demo.json').read_text())

    for key in ('accuracy_offline', 'accuracy_live', 'latency_ms', 'wall_s'):
        assert key in report
    assert report['accuracy_offline'] >= TWICE_CHANCE
    assert report['accuracy_live'] >= TWICE_CHANCE
    # The live nodes compute what the offline replay of the same bag computes.
    assert report['window_accuracy_live'] == report['window_accuracy_offline']
    assert report['latency_ms']['p95'] >= report['latency_ms']['p50'] > 0
    for png in ('confusion_matrix.png', 'accuracy_curve.png', 'loss_curve.png',
                'latency_histogram.png'):
        assert (out / png).stat().st_size > 0, png
    assert set(report['test_actors']).isdisjoint(
        json.loads((out / 'run' / 'uncertainty' / 'fold_0' / 'split.json').read_text())
        ['actors']['d0'])
