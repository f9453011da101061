"""Whisper features at 50 steps per second, and the per-video-frame windows the U-Net attends to.

Whisper encodes fixed 30 s windows. The official code cuts the clip's log-mel into independent 30 s
windows (zero-padding the last), which leaves a seam every 30 s: steps near a window edge see no
context beyond it. ``mode="seamless"`` (the default) encodes 30 s windows every 20 s and takes every
step from the window in which it is farthest from an edge, cross-fading over 2 s where one window hands
over to the next; on clips up to 30 s both modes are one window and give identical (official) features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import (
    DEFAULT_FPS,
    HOP_LENGTH,
    SAMPLE_RATE,
    WHISPER_SEAMLESS_CROSSFADE_SECONDS,
    WHISPER_SEAMLESS_HOP_SECONDS,
    WHISPER_STEPS_PER_SECOND,
)
from ..errors import AudioError
from ..options import AUDIO_MODES as MODES  # the option table's
from ..timing import frame_windows, num_frames_for_duration  # noqa: F401  (re-exported)
from ..types import FrameAudio
from .io import to_whisper_input
from .mel import log_mel

MEL_FRAMES_PER_STEP = 2  # whisper's second convolution has stride 2
Progress = Callable[[int, int], None]  # (windows done, windows total)


def audio_features(
    whisper,
    waveform: Any,
    sample_rate: int,
    mode: str = MODES[0],
    progress: Progress | None = None,
) -> torch.Tensor:
    """Whisper hidden states of a clip, 50 steps per second.

    Args:
        whisper: a :class:`~.whisper.WhisperAudioEncoder` (from :func:`~.whisper.load_whisper`).
        waveform: samples in [-1, 1], ``[T]``, ``[C, T]`` or ``[B, C, T]`` (first item), any channels.
        sample_rate: rate of ``waveform`` in Hz (resampled to 16 kHz mono with libswresample).
        mode: ``"seamless"`` (overlapping windows, no 30 s seams) or ``"official"`` (independent 30 s
            windows, bit-for-bit the official behaviour). Identical on clips up to 30 s.
        progress: called with (windows done, windows total) after each 30 s window.

    Returns:
        float32 ``[L, 5, 384]`` on the CPU, ``L = samples_16k // 320``: input embedding + 4 block outputs.

    Raises:
        AudioError: empty, too short (< 20 ms), NaN/Inf samples, unknown mode.
    """
    return features_from_log_mel(whisper, log_mel(whisper_waveform(waveform, sample_rate)), mode, progress)


def whisper_waveform(waveform: Any, sample_rate: int) -> torch.Tensor:
    """Validated float32 ``[T]`` mono 16 kHz samples, long enough for one whisper step."""
    wave = to_whisper_input(waveform, sample_rate)
    min_samples = HOP_LENGTH * MEL_FRAMES_PER_STEP
    if wave.numel() < min_samples:
        raise AudioError(
            f"The audio is too short ({wave.numel() / SAMPLE_RATE * 1000:.1f} ms); it needs at least "
            f"{min_samples / SAMPLE_RATE * 1000:.0f} ms."
        )
    return wave


@torch.no_grad()
def features_from_log_mel(whisper, mel: torch.Tensor, mode: str = MODES[0], progress: Progress | None = None) -> torch.Tensor:
    """Whisper hidden states float32 ``[T // 2, 5, 384]`` from a whole-clip log-mel ``[80, T]``
    (see :func:`audio_features`)."""
    if mode not in MODES:
        raise AudioError(f"Unknown audio feature mode {mode!r}; use one of {MODES}.")
    frames = int(mel.shape[-1])
    window = whisper.window_frames
    steps = frames // MEL_FRAMES_PER_STEP
    if steps == 0:
        raise AudioError("The audio is too short for whisper (needs at least 20 ms).")
    starts = _window_starts(frames, window, mode)
    shares = _window_shares(starts, steps, whisper.n_ctx, overlapping=mode != "official" and len(starts) > 1)
    out = None
    for k, (start, (mine, share)) in enumerate(zip(starts, shares)):
        chunk = mel[:, start : start + window]
        chunk = F.pad(chunk, (0, window - chunk.shape[-1]))  # the official code pads the mel with 0
        hidden = whisper(chunk[None])[0].float().cpu()  # [n_ctx, 5, width]
        if out is None:
            out = hidden.new_zeros((steps, *hidden.shape[1:]))
        # out starts at zero and shares of 1.0 are exact, so owned steps are copied bit for bit
        picked = hidden[torch.from_numpy(mine - start // MEL_FRAMES_PER_STEP)]
        out[torch.from_numpy(mine)] += torch.from_numpy(share).float()[:, None, None] * picked
        if progress is not None:
            progress(k + 1, len(starts))
    return out


def _window_starts(frames: int, window: int, mode: str) -> list[int]:
    """First mel frame of each window: every 30 s (official), or every 20 s until one reaches the end."""
    if mode == "official" or frames <= window:
        return list(range(0, frames, window))
    hop = WHISPER_SEAMLESS_HOP_SECONDS * SAMPLE_RATE // HOP_LENGTH
    return [k * hop for k in range(math.ceil((frames - window) / hop) + 1)]


def _window_shares(starts: list[int], steps: int, n_ctx: int, overlapping: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each window: the output steps it contributes to and its float64 share of each (the shares of
    a step sum to 1).

    Without overlap (official), window k owns the steps it starts with. With overlap, each step comes
    from the window in which it has the most context: consecutive windows hand over in the middle of
    their overlap. The hand-over is a linear cross-fade over ``WHISPER_SEAMLESS_CROSSFADE_SECONDS``,
    because whisper's hidden states also encode the position inside the window (its positional
    embedding), which differs between two windows; a hard switch would itself be a seam.
    """
    begin = [s // MEL_FRAMES_PER_STEP for s in starts]
    if not overlapping:
        ends = begin[1:] + [steps]
        return [(np.arange(b, min(e, steps)), np.ones(max(0, min(e, steps) - b))) for b, e in zip(begin, ends)]
    fade = WHISPER_SEAMLESS_CROSSFADE_SECONDS * WHISPER_STEPS_PER_SECOND
    middles = []  # hand-over point between window k-1 and k
    for k in range(1, len(begin)):
        overlap = begin[k - 1] + n_ctx - begin[k]
        if overlap < fade:
            raise ValueError(f"windows overlap by {overlap} steps, less than the {fade}-step cross-fade")
        middles.append(begin[k] + overlap / 2)

    def ramp(t: np.ndarray, middle: float) -> np.ndarray:  # 0 -> 1 across the cross-fade
        return np.clip((t + 0.5 - (middle - fade / 2)) / fade, 0.0, 1.0)

    shares = []
    for k, b in enumerate(begin):
        t = np.arange(b, min(b + n_ctx, steps))
        share = np.ones(len(t))
        if k > 0:
            share *= ramp(t, middles[k - 1])
        if k + 1 < len(begin):
            share *= 1.0 - ramp(t, middles[k])
        keep = share > 0
        shares.append((t[keep], share[keep]))
    return shares


def frame_audio_chunks(features: torch.Tensor, num_frames: int, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """Per-video-frame audio windows of frames ``0 .. num_frames - 1`` (see :func:`frame_audio_windows`).

    Returns ``[num_frames, 50, 384]``, dtype and device of ``features``.
    """
    return frame_audio_windows(features, np.arange(max(int(num_frames), 0)), fps)


def frame_audio_windows(features: torch.Tensor, frames, fps: float = DEFAULT_FPS) -> torch.Tensor:
    """The audio windows of the given video frames (:func:`latentsync_core.timing.frame_windows`).

    Args:
        features: ``[L, 5, 384]`` from :func:`audio_features`.
        frames: int ``[n]`` video frame indices (any order; repeats allowed).
        fps: video frame rate.

    Returns:
        ``[n, 50, 384]``, dtype and device of ``features``.
    """
    return frame_windows(features, frames, fps)


def embed_audio(
    whisper,
    waveform: Any,
    sample_rate: int,
    fps: float = DEFAULT_FPS,
    mode: str = MODES[0],
    num_frames: int | None = None,
    progress: Progress | None = None,
) -> FrameAudio:
    """Everything the sampler needs from a clip: the 50 Hz features, from which the per-frame windows of
    ``num_frames`` frames at ``fps`` (default: :func:`num_frames_for_duration` of the clip) are cut on
    demand (:meth:`FrameAudio.windows`), and the 16 kHz mono waveform ``[1, T]``."""
    wave = whisper_waveform(waveform, sample_rate)
    if num_frames is None:
        num_frames = num_frames_for_duration(wave.numel() / SAMPLE_RATE, fps)
    features = features_from_log_mel(whisper, log_mel(wave), mode, progress)
    if num_frames > 0:
        frame_audio_windows(features, [0], fps)  # validate here, not in the first chunk of the sampler
    return FrameAudio(features=features.contiguous(), num_frames=int(num_frames), fps=float(fps),
                      waveform=wave[None].contiguous(), sample_rate=SAMPLE_RATE)
