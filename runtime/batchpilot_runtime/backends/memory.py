"""Find the largest batch that fits in device memory (torch-free; the probe is injected)."""

from __future__ import annotations

from collections.abc import Callable

from batchpilot_runtime.batcher import OutOfMemory


def largest_fitting_batch(try_batch: Callable[[int], int], *, budget_bytes: int, limit: int) -> int:
    """The largest ``n <= limit`` whose forward pass peaks within ``budget_bytes``.

    ``try_batch(n)`` runs one forward pass of ``n`` inputs of the longest length and returns
    the peak device memory in bytes, or raises :class:`OutOfMemory`. ``n`` doubles from 1
    until a pass does not fit, then bisects between the last fit and the first miss, so the
    probe costs about ``2 * log2(answer)`` passes.
    """

    def fits(n: int) -> bool:
        try:
            return try_batch(n) <= budget_bytes
        except OutOfMemory:
            return False

    if limit < 1 or not fits(1):
        raise OutOfMemory("not even one input fits in device memory")
    good, n = 1, 2
    while n <= limit and fits(n):
        good, n = n, n * 2
    bad = min(n, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
