"""Resumable runs: what `lightmer train` (per fold) and `lightmer finetune` (per round) share.

Both save their state after every completed step and continue from it with --resume, and both
refuse to continue, or extend, a run with settings that change its numbers:
- `StateFile`: one kind of state file, plain data and CPU tensors saved with torch, written
  atomically (a kill leaves the previous file whole) and read weights-only (a state file cannot
  run code), with a format version checked on reading;
- `run_settings` / `claim_settings`: the settings that determine a run's numbers, saved as JSON
  beside it; a second start must agree on every one, and the error names those that differ;
- `rng_state` / `set_rng_state` / `seed_global_generators`: torch's, numpy's and Python's
  global generators (and CUDA's in a CUDA run);
- `deterministic_algorithms`: bit-for-bit repeatable steps, which make a resumed run equal an
  uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightmer.core.atomic_io import atomic_save_json, atomic_torch_save


@dataclass(frozen=True)
class StateFile:
    """One kind of resumable state file (a fold's, a fine-tuning run's)."""

    version: int     # bump when the content changes meaning: older files are then refused
    restart: str     # what a user does with a file that cannot be used, e.g. 'delete the fold
    # directory to restart that fold'

    def save(self, path: Path, state: Mapping) -> None:
        """`state` (plain data, CPU tensors) and the version, atomically."""
        atomic_torch_save(path, {**state, 'version': self.version})

    def load(self, path: Path) -> dict:
        """The state saved at `path`; ValueError saying what to do when it cannot be used."""
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
            raise ValueError(f'cannot read {path} ({e}); {self.restart}') from e
        if not isinstance(state, dict) or state.get('version') != self.version:
            raise ValueError(f'{path} was written by another lightmer version; {self.restart}')
        return state


# --- settings -------------------------------------------------------------------------------
def run_settings(cfg, keys: Sequence[str]) -> dict:
    """The fields `keys` of the dataclass `cfg` as JSON values (tuples become lists, as they
    read back from the saved file)."""
    d = dataclasses.asdict(cfg)
    return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in keys}


def _short(value: object, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + '...'


def claim_settings(path: Path, settings: Mapping, saved_defaults: Mapping | None = None
                   ) -> None:
    """Save `settings` (JSON) at `path`, or raise ValueError naming every key whose saved
    value differs. saved_defaults: the value a key missing from the saved file had then (a
    setting newer than the run directory)."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding='utf-8'))
        then = {k: saved.get(k, (saved_defaults or {}).get(k)) for k in settings}
        diff = [k for k, v in settings.items() if then[k] != v]
        if diff:
            details = ', '.join(f'{k} {_short(then[k])} then, {_short(settings[k])} now'
                                for k in diff)
            raise ValueError(f'{path.parent} was run with other settings {diff} ({details}); '
                             'use the same options or another --out')
    atomic_save_json(path, dict(settings))


# --- random generators ----------------------------------------------------------------------
def rng_state() -> dict:
    """The global generators' states (CPU tensors and plain data: weights-only loadable)."""
    np_state = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'python': random.getstate(),
             'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                       *np_state[2:])}
    if torch.cuda.is_initialized():   # only a CUDA run has CUDA streams to restore
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state['torch'])
    random.setstate(state['python'])
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if 'cuda' in state and torch.cuda.is_available():   # a CPU rerun of a CUDA run skips it
        torch.cuda.set_rng_state_all(state['cuda'])


def seed_global_generators(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators from one (up to 64-bit) seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """torch's deterministic algorithms inside (a warning where an operation has none), the
    previous setting restored after."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
