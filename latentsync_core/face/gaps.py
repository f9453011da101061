"""Frames where no face was detected: bridge short gaps, report long ones."""

from __future__ import annotations

import numpy as np


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(first, last)`` index ranges where the bool ``mask`` is True."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def format_ranges(ranges: list[tuple[int, int]]) -> str:
    """``[(3, 3), (10, 24)]`` -> ``"3, 10-24"``."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def bridge_gaps(landmarks: np.ndarray, found: np.ndarray, max_gap: int):
    """Fill runs of at most ``max_gap`` missing frames from their neighbours.

    landmarks: ``[N, P, 2]`` float (values where ``found`` is False are ignored); found: bool ``[N]``.
    A gap between two detections is linearly interpolated; a gap at the start or end of the clip
    holds the nearest detection. Returns (landmarks, found, bridged) with ``bridged`` marking the
    frames that were filled; longer gaps stay not-found.
    """
    landmarks = np.array(landmarks, dtype=np.float64, copy=True)
    found = np.asarray(found, dtype=bool)
    bridged = np.zeros_like(found)
    if max_gap <= 0 or not found.any():
        return landmarks, found.copy(), bridged
    n = len(found)
    for first, last in runs(~found):
        if last - first + 1 > max_gap:
            continue
        before, after = first - 1, last + 1
        for i in range(first, last + 1):
            if before >= 0 and after < n:
                t = (i - before) / (after - before)
                landmarks[i] = (1 - t) * landmarks[before] + t * landmarks[after]
            else:
                landmarks[i] = landmarks[before if before >= 0 else after]
        bridged[first : last + 1] = True
    return landmarks, found | bridged, bridged
