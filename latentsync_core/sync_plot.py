"""A picture of a sync score: confidence over time (left) and mean SyncNet distance per offset (right).

Drawn with OpenCV (no plotting library): uint8 RGB ``[H, W, 3]``, what a ComfyUI IMAGE preview shows.
"""

from __future__ import annotations

import numpy as np

from .plot import BLUE, line_chart
from .sync_video import VideoScore


def plot_score(result: VideoScore, width: int = 768, height: int = 300) -> np.ndarray:
    """uint8 RGB ``[height, width, 3]``: the confidence curve over the video's seconds (left, 2/3) and the
    mean distance per audio offset of the first face track with its minimum marked (right, 1/3)."""
    conf = line_chart(result.per_frame_conf.astype(np.float64), (width * 2 // 3, height), BLUE,
                  f"confidence over time (LSE-C {result.score.lse_c:.2f})", "seconds", 0.0, 1 / 25)
    first = result.tracks[0][1]
    dists = first.mean_dists[::-1].astype(np.float64)  # index k -> offset k - vshift (ascending)
    offsets = line_chart(dists, (width - width * 2 // 3, height), BLUE,
                     f"distance per offset ({first.offset:+d})", "offset (frames)", -first.vshift, 1,
                     mark=first.vshift + first.offset, zero=False)
    return np.concatenate([conf, offsets], axis=1)
