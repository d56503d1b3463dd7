"""core.messages.valence_arousal: the class probabilities' point on Russell's circumplex."""
import numpy as np
import pytest

from lightmer.core.config import PRESETS
from lightmer.core.messages import CIRCUMPLEX, valence_arousal


def test_every_class_of_both_presets_has_a_point_on_the_unit_disc():
    for preset in PRESETS.values():
        for label in preset.labels:
            v, a = CIRCUMPLEX[label]
            assert v * v + a * a <= 1 + 1e-9, label


def test_the_quadrants_are_russells():
    assert CIRCUMPLEX['neutral'] == (0.0, 0.0)
    v, a = CIRCUMPLEX['happy']
    assert v > 0.9 and 0 < a < 0.2                    # pleasant, slightly aroused
    v, a = CIRCUMPLEX['angry']
    assert v < 0 and a > 0.9                          # aroused, unpleasant
    v, a = CIRCUMPLEX['sad']
    assert v < -0.8 and a < -0.4                      # unpleasant, low arousal
    v, a = CIRCUMPLEX['calm']
    assert v > 0.7 and a < -0.6                       # pleasant, low arousal


def test_valence_arousal_is_the_expected_point():
    labels = PRESETS['crema-d'].labels
    one_hot = np.eye(len(labels))
    for i, label in enumerate(labels):
        assert valence_arousal(one_hot[i], labels) == pytest.approx(CIRCUMPLEX[label])
    uniform = np.full(len(labels), 1 / len(labels))
    want = np.mean([CIRCUMPLEX[x] for x in labels], axis=0)
    assert valence_arousal(uniform, labels) == pytest.approx(tuple(want))
