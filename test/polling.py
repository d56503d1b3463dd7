"""The one way tests wait for something that happens in another thread or process.

A test that waits polls a condition until it holds or a deadline passes, then fails with a
message that names what it waited for and what it last saw. Nothing else sleeps: a fixed
sleep either wastes time or hopes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar('T')


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, *,
               interval_s: float = 0.05, each: Callable[[], object] | None = None,
               describe: Callable[[], object] | None = None) -> T:
    """Call `condition()` until it returns something truthy, and return that.

    each: called before every check (a test that feeds input at the inputs' own pace).
    describe: called on timeout for the state to report (default: the last value seen).
    Raises AssertionError naming `what` after `timeout_s` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if each is not None:
            each()
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = describe() if describe is not None else value
            raise AssertionError(f'timed out after {timeout_s:g} s waiting for {what}; '
                                 f'last seen: {seen!r}')
        time.sleep(interval_s)
