"""`lightmer bench` runs and reports every stage (timings themselves are not asserted)."""
import json

from lightmer.cli import main

STAGES = ('mtcnn_detect_640x480', 'face_crop', 'log_mel', 'visual_net', 'audio_net',
          'fc_fusion', 'segment_total', 'window_recompute_n5', 'window_recompute_n12',
          'networks_window_n5', 'networks_window_n12')


def test_bench_json_has_every_key(tmp_path, capsys):
    assert main(['bench', '--json', '--repeats', '2', '--threads', '1', '--no-nodes',
                 '--out', str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(STAGES) <= set(result['stage_ms'])
    assert all(v > 0 for v in result['stage_ms'].values())
    assert set(result['incremental_vs_recompute_ratio']) == {'5', '12'}
    assert all(0 < r for r in result['incremental_vs_recompute_ratio'].values())
    assert result['machine']['torch_threads'] == 1
    assert result['machine']['cores'] >= 1 and result['machine']['cpu_model']
    assert result['nodes'] == 'not measured'
    assert json.loads((tmp_path / 'bench.json').read_text()) == result
