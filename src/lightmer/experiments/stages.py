"""Named stages of a long run (the demo, the robot simulation): a banner when one starts, its
wall time printed and recorded when it ends, so a newcomer watching the terminal knows where
the minutes go and the run's JSON keeps them."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    """Print a banner, run the block, then record `timings[name]` (wall seconds) and print it.
    The time is recorded even when the block raises, so a failed run shows where it stopped."""
    print(f'\n=== {name} ===', flush=True)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f'--- {name}: {timings[name]:.1f} s', flush=True)
