"""Bounded waiting by polling: the only kind of waiting tests and the CLI do."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(TimeoutError):
    """A condition did not come true in time; the message says what was awaited and last seen."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `probe` until it returns something other than None/False; return that value.

    Raises WaitTimeoutError after `timeout` seconds; `describe()` (if given) adds the last state
    seen to the message so a failure says why.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)
