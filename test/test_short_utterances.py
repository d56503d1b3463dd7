"""People speak to a robot in utterances of 1.5-3 s, shorter than a full window (CREMA-D models:
N = 5 x 0.5 s; RAVDESS: 12 x 0.6 s). With the default settings every generated clip of a bag
gets at least one window, in both presets; the default is defined once (StreamSettings, which
the nodes' FusionParams declare) and is what eval-bag, the launch presets and the demo use."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import ros_helpers as rh
from lightmer.evaluation import bag_corpus, bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.experiments import demo
from lightmer.ros.params import FusionParams
from lightmer.stream.settings import StreamSettings

# Slow tier (trains and evaluates bags): not in `make test-fast`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module', params=['crema-d', 'ravdess'])
def layout_bag(request, tiny_corpus, tiny_ravdess, tmp_path_factory):
    layout = request.param
    out = tmp_path_factory.mktemp(f'short_{layout}')
    corpus, actors = (tiny_corpus, ['1001']) if layout == 'crema-d' else (tiny_ravdess, None)
    bag_corpus.make_bag(layout, corpus, out / 'bag', actors=actors, gap_s=1.0)
    checkpoint = rh.make_checkpoint(out / 'model.pt', preset=layout)
    return layout, out / 'bag', checkpoint


def test_every_short_clip_gets_a_window_with_the_default_settings(layout_bag):
    layout, bag, checkpoint = layout_bag
    labels = bags.default_labels_path(bag)
    rows = bags.read_labels(labels)
    durations = [r.end - r.start for r in rows]
    assert 1.3 < min(durations) and max(durations) < 3.5, durations    # short utterances
    result = evaluate_bag(EvalConfig(bag=bag, labels=labels, checkpoint=checkpoint))
    assert result['settings']['min_segments'] == FusionParams().min_segments
    assert result['clips_without_windows'] == 0, (layout, result['clips'], durations)
    assert result['windows'] >= len(rows)


def test_the_default_is_defined_once():
    default = StreamSettings().min_segments
    assert 1 <= default == FusionParams().min_segments
    assert EvalConfig(bag=Path('b'), labels=Path('l'),
                      checkpoint=Path('c')).settings.min_segments == default
    for name in ('lightmer.yaml', 'crema_d.yaml', 'ravdess.yaml'):
        doc = yaml.safe_load((ROOT / 'config' / name).read_text())
        for section in doc.values():
            assert 'min_segments' not in section['ros__parameters'], \
                f'config/{name} sets min_segments: the default lives in StreamSettings'
    assert 'min_segments' not in demo.DemoSize.__dataclass_fields__
