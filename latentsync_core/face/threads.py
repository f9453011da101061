"""A small ordered thread map: OpenCV releases the GIL, so per-frame warps run in parallel."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def ordered_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in order. Work is submitted a few items
    ahead only, so a consumer that stops (interrupt) waits for at most that many items."""
    if workers <= 1:
        yield from map(fn, items)
        return
    chunk = workers * 2
    with ThreadPoolExecutor(workers, thread_name_prefix="latentsync-face") as pool:
        for start in range(0, len(items), chunk):
            yield from pool.map(fn, items[start : start + chunk])
