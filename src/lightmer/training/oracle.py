"""The oracle of Algorithm 1 (line 9): who says what the selected samples' classes are.

`Oracle` is the one protocol every oracle implements: `DatasetOracle` below (the dataset's own
labels, what `train` asks), and the oracles for a robot's pooled windows in
`lightmer.active.oracles` (a person's answers file; a bag's labels CSV), which `finetune` asks.
An oracle may answer `NO_LABEL` for a sample nobody can label (a person answered `skip` or
`unsure`): that sample does not train.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

NO_LABEL = -1   # the answer for a sample that must not train (skip / unsure)


class Oracle(Protocol):
    """Checks the classes a model assigned to selected samples and returns the right ones."""

    def check(self, ids: Sequence[str], predicted: Sequence[int]) -> list[int]:
        """ids: the samples (clip or window ids); predicted: the model's class index per
        sample -> the correct class index per sample, or NO_LABEL for one that must not
        train. An oracle that cannot answer yet raises (see active.oracles.UnansweredError)."""
        ...


class DatasetOracle(Oracle):
    """An oracle that knows the dataset's labels (class indices by clip id); never NO_LABEL."""

    def __init__(self, labels: Mapping[str, int]):
        self._labels = dict(labels)

    def check(self, ids: Sequence[str], predicted: Sequence[int]) -> list[int]:
        if len(ids) != len(predicted):
            raise ValueError('ids and predicted must have the same length')
        return [self._labels[c] for c in ids]
