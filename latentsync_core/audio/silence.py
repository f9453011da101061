"""Silence detection per video frame, on the audio window the model sees for that frame.

The U-Net conditions frame ``i`` on whisper steps ``c-4 … c+5`` with ``c = int(i * 50 / fps)``, clamped
to the valid steps (:func:`~.features.frame_audio_windows`). Whisper step ``s`` stands for the 20 ms of
16 kHz audio ``[320 s, 320 (s + 1))``. So, here:

1. the waveform is cut into those 20 ms steps (``L = T // 320`` of them, as whisper makes; a trailing
   partial step is ignored) and each step's RMS is taken in dBFS (``20 log10(rms)``, full scale = 1.0:
   a full-scale sine is -3 dBFS, digital silence -inf);
2. a step is *quiet* when it is under ``threshold_db`` **and** belongs to a run of such steps lasting at
   least ``min_duration_ms`` (rounded up to whole 20 ms steps), so short pauses between words and
   plosive closures do not count;
3. a frame is *silent* when **every** step of its window (after the same clamping as the features) is
   quiet. Consequence at the edges of a pause: the first silent frame is the first whose window starts
   inside the pause (its centre 80 ms after the pause begins) and the last is the last whose window
   ends inside it (centre 120 ms before speech resumes): frames whose window touches speech are synced,
   so the mouth closes and opens in time. A 1 s pause at 25 fps thus flags 20-21 frames.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..constants import SAMPLE_RATE, WHISPER_STEPS_PER_SECOND
from ..errors import AudioError
from ..options import SILENCE_DB as DEFAULT_SILENCE_DB  # the option table's defaults
from ..options import SILENCE_MS as DEFAULT_SILENCE_MS
from ..timing import check_fps, window_steps

SAMPLES_PER_STEP = SAMPLE_RATE // WHISPER_STEPS_PER_SECOND  # 320: one whisper step of 16 kHz audio

_FLOOR_DB = -200.0  # dBFS reported for digital silence (instead of -inf)


def step_levels_db(waveform: Any) -> np.ndarray:
    """RMS level of every 20 ms whisper step: float64 ``[T // 320]`` dBFS (digital silence = -200).

    waveform: 16 kHz mono samples in [-1, 1], ``[T]`` or ``[1, T]`` (``FrameAudio.waveform``), numpy or torch.
    """
    wave = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    wave = wave.reshape(-1) if wave.ndim == 1 or (wave.ndim == 2 and wave.shape[0] == 1) else None
    if wave is None:
        raise AudioError(f"silence detection needs a mono 16 kHz waveform [T] or [1, T], got shape {np.shape(waveform)}")
    steps = len(wave) // SAMPLES_PER_STEP
    if steps == 0:
        raise AudioError(f"the audio is too short for silence detection ({len(wave)} samples, needs {SAMPLES_PER_STEP})")
    blocks = wave[: steps * SAMPLES_PER_STEP].astype(np.float64).reshape(steps, SAMPLES_PER_STEP)
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    if not np.isfinite(rms).all():
        raise AudioError("the audio contains NaN or infinite samples; fix or re-export it")
    with np.errstate(divide="ignore"):
        return np.maximum(20.0 * np.log10(rms), _FLOOR_DB)


def quiet_steps(levels_db: np.ndarray, threshold_db: float, min_duration_ms: float) -> np.ndarray:
    """bool ``[L]``: steps under ``threshold_db`` in a run of at least ``min_duration_ms`` (whole steps)."""
    below = np.asarray(levels_db) < threshold_db
    min_steps = max(1, math.ceil(min_duration_ms * WHISPER_STEPS_PER_SECOND / 1000 - 1e-9))
    edges = np.diff(np.concatenate([[0], below.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    quiet = np.zeros_like(below)
    for start, stop in zip(starts, stops):
        if stop - start >= min_steps:
            quiet[start:stop] = True
    return quiet


def silent_frames(
    waveform: Any,
    num_frames: int,
    fps: float,
    *,
    threshold_db: float = DEFAULT_SILENCE_DB,
    min_duration_ms: float = DEFAULT_SILENCE_MS,
) -> np.ndarray:
    """Which output frames have a silent audio window (see the module docstring for the exact rule).

    Args:
        waveform: 16 kHz mono samples in [-1, 1], ``[T]`` or ``[1, T]`` (``FrameAudio.waveform``).
        num_frames: output frames (``FrameAudio.num_frames``).
        fps: video frame rate (``FrameAudio.fps``).
        threshold_db: a 20 ms step is quiet under this RMS level in dBFS (< 0, e.g. -40).
        min_duration_ms: quiet steps count only in runs at least this long (>= 0; e.g. 300).

    Returns:
        bool ``[num_frames]``, True = silent (the frame's whole window is in a long enough quiet run).

    Raises:
        AudioError: bad waveform, fps, threshold or duration.
    """
    check_fps(fps)
    if not (threshold_db < 0 and math.isfinite(threshold_db)):
        raise AudioError(f"the silence threshold is in dBFS and must be below 0 (e.g. -40), got {threshold_db}.")
    if not (min_duration_ms >= 0 and math.isfinite(min_duration_ms)):
        raise AudioError(f"the minimum silence duration must be 0 ms or more, got {min_duration_ms}.")
    quiet = quiet_steps(step_levels_db(waveform), threshold_db, min_duration_ms)
    return quiet[window_steps(np.arange(int(num_frames)), fps, len(quiet))].all(axis=1)
