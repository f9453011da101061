"""Time rules, once: how many frames an audio clip makes, which audio steps a frame sees, and how a
video is matched to the audio's length.

- Output length: ``round(seconds * fps)`` (halves up) frames for a clip (:func:`num_frames_for_duration`).
- Frame -> audio window: frame ``i`` sees whisper steps ``c-4 … c+5`` with ``c = int(i * 50 / fps)`` (the
  official ``get_sliced_feature``), clamped to the existing steps (:func:`window_steps`). Whisper step ``s``
  stands for the 20 ms of 16 kHz audio ``[320 s, 320 (s + 1))``; the silence detector uses the same rule.
- Length matching: a video shorter than the audio is looped back and forth (forward, reversed, forward,
  ...), exactly as the official ``LipsyncPipeline.loop_video`` does (the turning frame appears twice); a
  longer one is cut (:func:`ping_pong_indices`). The indices select frames, faces and affines alike
  (``FaceTrack.take``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .constants import AUDIO_CONTEXT_AFTER, AUDIO_CONTEXT_BEFORE, DEFAULT_FPS, WHISPER_STEPS_PER_SECOND
from .errors import AudioError, InputMismatchError


def check_fps(fps: float) -> float:
    """``fps`` as a float; :class:`AudioError` unless it is a positive finite number."""
    if not (fps > 0 and math.isfinite(fps)):
        raise AudioError(f"fps must be a positive number, got {fps}.")
    return float(fps)


def num_frames_for_duration(seconds: float, fps: float = DEFAULT_FPS) -> int:
    """Video frames that cover ``seconds`` of audio at ``fps``: ``round(seconds * fps)`` (halves up).

    The one rule for the output length of a lip-sync job (the official code makes two extra frames).
    """
    return max(0, math.floor(seconds * check_fps(fps) + 0.5))


def window_steps(frames, fps: float, num_steps: int) -> np.ndarray:
    """The whisper steps each video frame sees: int64 ``[n, 10]`` for int ``frames [n]``, clamped to
    ``0 .. num_steps - 1``."""
    # the same float64 arithmetic as the official int(i * 50 / fps)
    centers = (np.asarray(frames, dtype=np.int64).reshape(-1) * WHISPER_STEPS_PER_SECOND / check_fps(fps)).astype(np.int64)
    offsets = np.arange(-AUDIO_CONTEXT_BEFORE, AUDIO_CONTEXT_AFTER + 1)
    return np.clip(centers[:, None] + offsets[None], 0, num_steps - 1)


def frame_windows(features: torch.Tensor, frames, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """The audio windows of the given video frames: ``features [L, 5, 384]`` -> ``[n, 50, 384]``
    (steps time-major, then layer, as the official ``get_sliced_feature``); dtype and device of
    ``features``. ``frames``: int ``[n]`` in any order, repeats allowed."""
    if features.ndim != 3 or features.shape[0] == 0:
        raise AudioError(f"Expected whisper features [steps, layers, width], got shape {tuple(features.shape)}.")
    steps, layers, width = features.shape
    index = window_steps(frames, fps, steps)
    picked = features[torch.from_numpy(index).to(features.device)]  # [n, 10, layers, width]
    return picked.reshape(len(index), index.shape[1] * layers, width)


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
