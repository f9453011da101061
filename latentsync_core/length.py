"""The length rule: the audio decides how many frames come out.

A video shorter than the audio is looped back and forth (forward, reversed, forward, ...), exactly as
the official ``LipsyncPipeline.loop_video`` does (the turning frame appears twice); a longer video is
cut. The returned indices select frames, faces and affines alike (``FaceTrack.take``).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputMismatchError


def ping_pong_indices(num_video_frames: int, num_output_frames: int) -> np.ndarray:
    """Source-frame index for each of ``num_output_frames`` output frames.

    Returns int64 ``[num_output_frames]``: ``arange`` cut to length when the video is long enough,
    otherwise the forward/reversed loop ``0..V-1, V-1..0, 0..V-1, ...`` cut to length.
    """
    if num_video_frames < 1:
        raise InputMismatchError("The video has no frames: connect at least one frame to the sampler.")
    if num_output_frames < 1:
        raise InputMismatchError("The audio is too short for even one video frame: use a longer audio clip.")
    forward = np.arange(num_video_frames, dtype=np.int64)
    if num_output_frames <= num_video_frames:
        return forward[:num_output_frames]
    loops = math.ceil(num_output_frames / num_video_frames)
    parts = [forward if i % 2 == 0 else forward[::-1] for i in range(loops)]
    return np.concatenate(parts)[:num_output_frames]
