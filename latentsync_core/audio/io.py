"""Audio in: decode files with PyAV, check samples, down-mix and resample for whisper.

Decoding and resampling both go through FFmpeg (PyAV): ``libswresample`` is the resampler the official
code gets from the ``ffmpeg`` command line (``-ac 1 -ar 16000``), so a 44.1 or 48 kHz file gives the
same 16 kHz samples here as there (up to the official loader's 16-bit rounding).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import av
import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..errors import AudioError

log = logging.getLogger(__name__)

# Files the Load Audio node lists: audio formats and containers whose audio track we decode.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS

_RESAMPLE_BLOCK = 1 << 16  # samples per frame pushed through the resampler


def _ffmpeg_error() -> type[BaseException]:
    error_module = getattr(av, "error", None)
    return getattr(error_module, "FFmpegError", None) or getattr(av, "AVError", Exception)


def load_audio_file(
    path: str | os.PathLike,
    start: float = 0.0,
    duration: float | None = None,
    sample_rate: int | None = None,
    mono: bool = False,
) -> tuple[torch.Tensor, int]:
    """Decode the first audio track of an audio or video file.

    Args:
        path: any file FFmpeg reads (wav, flac, mp3, ogg, m4a/aac, mp4/mov/mkv/webm ...).
        start: seconds to skip at the beginning (>= 0).
        duration: seconds to keep after ``start``; ``None`` or <= 0 keeps everything to the end.
        sample_rate: resample to this rate (libswresample); ``None`` keeps the file's rate.
        mono: down-mix to one channel (channel mean).

    Returns:
        ``(waveform, rate)``: float32 ``[C, T]`` in [-1, 1] (CPU) and its sample rate.

    Raises:
        AudioError: missing file, not a media file, no audio track, nothing left after ``start``.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise AudioError(f"Audio file not found: {path}")
    if start < 0 or not math.isfinite(start):
        raise AudioError(f"start must be a time >= 0 s, got {start}.")
    ffmpeg_error = _ffmpeg_error()
    try:
        container = av.open(path)
    except ffmpeg_error as exc:
        raise AudioError(f"{name} is not an audio or video file that FFmpeg can read ({exc}).") from exc
    with container:
        if not container.streams.audio:
            what = "a video without an audio track" if container.streams.video else "a file without an audio track"
            raise AudioError(f"{name} is {what}: choose a file with sound, or load the audio separately.")
        try:
            samples, rate, dropped = _decode(container.decode(container.streams.audio[0]), start, duration)
        except ffmpeg_error as exc:
            raise AudioError(f"{name}: decoding the audio track failed ({exc}).") from exc
    total_seconds = (dropped + samples.shape[1]) / rate
    samples = samples[:, round(start * rate) - dropped :]
    if duration is not None and duration > 0:
        samples = samples[:, : round(duration * rate)]
    if samples.shape[1] == 0:
        if start > 0:
            raise AudioError(f"{name}: start {start:.2f} s is at or past the end of the audio ({total_seconds:.2f} s).")
        raise AudioError(f"{name}: the audio track is empty (no samples).")
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if mono:
        waveform = waveform.mean(dim=0, keepdim=True)
    if sample_rate is not None and sample_rate != rate:
        waveform = resample(waveform, rate, sample_rate)
        rate = sample_rate
    return waveform, rate


def _decode(frames, start: float, duration: float | None) -> tuple[np.ndarray, int, int]:
    """Decode an audio stream (``frames``: its decoded frames) -> float32 ``[C, N]``, its rate, and how
    many samples before ``start`` were dropped without being kept.

    Always from the beginning, then cut by sample count: after a seek, codec delay (mp3's 1105 samples)
    and coarse container timestamps (Matroska's 1 ms) put the first sample off by up to tens of samples;
    counting from the start gives exactly the samples a full decode has. Stops once past ``start +
    duration``.
    """
    converter = None
    rate = 0
    blocks: list[np.ndarray] = []
    have = dropped = 0
    for frame in frames:
        if converter is None:
            rate = frame.sample_rate
            # same rate and layout: only the sample format changes (to float planar)
            converter = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=rate)
        for out in converter.resample(frame):
            block = out.to_ndarray()
            have += block.shape[1]
            if have <= round(start * rate):  # wholly before start: not kept
                dropped += block.shape[1]
            else:
                blocks.append(block)
        if duration is not None and duration > 0 and have > (start + duration) * rate:
            break
    if converter is not None:
        blocks.extend(out.to_ndarray() for out in converter.resample(None))
    if not blocks:
        return np.zeros((1, 0), np.float32), max(rate, 1), dropped
    return np.concatenate(blocks, axis=1).astype(np.float32, copy=False), rate, dropped


def resample(waveform: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """Resample float32 ``[C, T]`` from ``rate_in`` to ``rate_out`` Hz with libswresample (its default
    windowed-sinc filter, as the ``ffmpeg`` command line uses). Returns float32 ``[C, T']`` on the CPU."""
    if rate_in == rate_out:
        return waveform
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"Invalid sample rate {rate_in} Hz (must be a positive number).")
    channels = [_resample_channel(ch, rate_in, rate_out) for ch in waveform.detach().cpu().float().numpy()]
    length = min(len(c) for c in channels)
    return torch.from_numpy(np.stack([c[:length] for c in channels]))


def _resample_channel(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate_out)
    pieces = []
    for offset in range(0, len(x), _RESAMPLE_BLOCK):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x[None, offset : offset + _RESAMPLE_BLOCK], dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = rate_in
        frame.pts = None
        pieces.extend(out.to_ndarray()[0] for out in resampler.resample(frame))
    pieces.extend(out.to_ndarray()[0] for out in resampler.resample(None))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def checked_waveform(waveform: Any, name: str = "audio") -> torch.Tensor:
    """Validate samples and return them as float32 ``[C, T]`` (CPU).

    Accepts ``[T]``, ``[C, T]`` or ComfyUI's ``[B, C, T]`` (the first batch item is used). Raises
    :class:`AudioError` for empty audio and for NaN/Inf samples; silence is valid.
    """
    wave = torch.as_tensor(waveform).detach()
    if wave.ndim == 3:
        if wave.shape[0] > 1:
            log.warning("%s holds a batch of %d clips; using the first one", name, wave.shape[0])
        wave = wave[0] if wave.shape[0] else wave.reshape(0, 0)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise AudioError(f"{name}: expected a waveform [channels, samples], got shape {tuple(wave.shape)}.")
    if wave.numel() == 0:
        raise AudioError(f"{name} is empty (zero samples): connect audio that has sound in it.")
    wave = wave.cpu().float()
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioError(f"{name} contains {bad} NaN or infinite samples; fix or re-export the audio.")
    return wave


def to_whisper_input(waveform: Any, sample_rate: int) -> torch.Tensor:
    """Any waveform (``[T]``, ``[C, T]`` or ``[B, C, T]``, any rate) -> float32 ``[T']`` mono 16 kHz."""
    if not sample_rate or sample_rate <= 0:
        raise AudioError(f"Invalid sample rate {sample_rate!r}: the audio must say its rate in Hz.")
    wave = checked_waveform(waveform).mean(dim=0, keepdim=True)
    return resample(wave, int(sample_rate), SAMPLE_RATE)[0]


def comfy_audio_parts(audio: Any) -> tuple[torch.Tensor, int]:
    """``(waveform [B, C, T], sample_rate)`` from a ComfyUI AUDIO value: any Mapping with ``waveform``
    and ``sample_rate`` (core LoadAudio's dict, VideoHelperSuite's lazy mapping)."""
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioError("Expected ComfyUI AUDIO (a mapping with 'waveform' and 'sample_rate').")
    return torch.as_tensor(audio["waveform"]), int(audio["sample_rate"])
