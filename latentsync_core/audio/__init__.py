"""Audio: decode files, whisper-tiny features equal to the official ones, per-frame windows at any fps.

- :func:`load_audio_file`: any audio/video file -> float32 ``[C, T]`` (PyAV), optional start/duration.
- :func:`load_whisper`: OpenAI ``tiny.pt`` or a Hugging Face whisper folder -> encoder module.
- :func:`log_mel`: whisper's log-mel of a 16 kHz clip (official: clamp over the whole clip).
- :func:`audio_features`: ``[L, 5, 384]`` at 50 Hz (seam-free or official windows).
- :func:`frame_audio_chunks` / :func:`frame_audio_windows` / :func:`num_frames_for_duration`: ``[N, 50, 384]``
  per video frame (all frames, or the frames asked for).
- :func:`embed_audio`: all of the above for one clip -> :class:`~latentsync_core.types.FrameAudio`.
"""

from .features import (
    MODES,
    audio_features,
    embed_audio,
    features_from_log_mel,
    frame_audio_chunks,
    frame_audio_windows,
    num_frames_for_duration,
)
from .io import MEDIA_EXTENSIONS, checked_waveform, comfy_audio_parts, load_audio_file, resample, to_whisper_input
from .mel import log_mel
from .whisper import WhisperAudioEncoder, load_whisper

__all__ = [
    "MEDIA_EXTENSIONS",
    "MODES",
    "WhisperAudioEncoder",
    "audio_features",
    "checked_waveform",
    "comfy_audio_parts",
    "embed_audio",
    "features_from_log_mel",
    "frame_audio_chunks",
    "frame_audio_windows",
    "load_audio_file",
    "load_whisper",
    "log_mel",
    "num_frames_for_duration",
    "resample",
    "to_whisper_input",
]
