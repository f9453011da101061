"""Whisper's log-mel spectrogram, computed the way the official LatentSync code does.

The clamp to ``max - 8`` uses the maximum of the *whole clip*; the mel is padded to 30 s windows only
afterwards (see :mod:`.features`). ``transformers``' feature extractor pads the *audio* to 30 s first,
which moves that maximum: its features differ from the official ones, so only its filter bank is used.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..constants import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE


@lru_cache(maxsize=4)
def mel_filters(device: str = "cpu") -> torch.Tensor:
    """Slaney-style mel filter bank float32 ``[80, 201]`` (equal to whisper's ``mel_filters.npz``,
    which librosa made, to ~2e-9)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=N_MELS,
        min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.T.copy()).float().to(device)


def log_mel(waveform_16k: torch.Tensor) -> torch.Tensor:
    """Log-mel spectrogram of a mono 16 kHz waveform.

    Args:
        waveform_16k: float ``[T]`` samples in [-1, 1] (``T`` > 200: the STFT reflect-pads 200 samples).

    Returns:
        float32 ``[80, T // 160]``, roughly in [-1.5, 1.5]: ``log10`` power clamped to the clip's
        maximum − 8, then ``(x + 4) / 4`` (100 frames per second).
    """
    audio = torch.as_tensor(waveform_16k).float().reshape(-1)
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[:, :-1].abs() ** 2  # the last frame is dropped, as whisper does
    mel = mel_filters(str(audio.device)) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0
