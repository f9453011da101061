"""The SyncNet audio input: the Wav2Lip-style mel spectrogram LatentSync's StableSyncNet was trained on.

Official ``latentsync/utils/audio.py`` ``melspectrogram`` (Wav2Lip's hparams): pre-emphasis 0.97; STFT with
``n_fft`` = window = 800, hop 200 (80 columns per second at 16 kHz), periodic Hann window, centred frames
zero-padded by 400 (``librosa.stft`` 0.10 defaults); magnitude -> 80 Slaney mel bands from 55 to 7600 Hz
(``librosa.filters.mel`` defaults: Slaney scale and area normalisation); ``20 log10(max(1e-5, m)) - 20`` dB;
mapped from [-100, 0] dB onto [-4, 4] and clipped. The dataset then takes, for a 16-frame window starting at
video frame ``s`` (25 fps), the 52 columns from ``int(80 * s / 25)``.

Written in numpy (no librosa); float64 throughout, as the official code computes it.
"""

from __future__ import annotations

import functools

import numpy as np

from ..constants import SAMPLE_RATE
from ..errors import AudioError

N_FFT = 800
HOP = 200  # 80 mel columns per second at 16 kHz
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB, MIN_LEVEL_DB, MAX_ABS = 20.0, -100.0, 4.0
COLUMNS_PER_SECOND = SAMPLE_RATE // HOP
WINDOW_COLUMNS = 52  # one 16-frame window at 25 fps (0.64 s) plus the official rounding slack


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear to 1 kHz, logarithmic above (librosa ``hz_to_mel(htk=False)``)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """float64 ``[80, 401]``: triangular Slaney-normalised filters (librosa ``filters.mel`` defaults)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2))
    fdiff = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_freqs[2:N_MELS + 2] - mel_freqs[:N_MELS]))[:, None]


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """16 kHz mono float samples ``[L]`` (in [-1, 1]) -> float64 ``[80, 1 + L // 200]`` in [-4, 4]."""
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    if wav.size == 0 or not np.isfinite(wav).all():
        raise AudioError("SyncNet mel: the audio is empty or has NaN/infinite samples.")
    emphasised = np.concatenate([wav[:1], wav[1:] - PREEMPHASIS * wav[:-1]])  # scipy lfilter([1, -k], [1], x)
    padded = np.pad(emphasised, N_FFT // 2)  # centred frames, zero padding
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(count, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0]), writeable=False
    )
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T  # [401, count]
    db = 20 * np.log10(np.maximum(1e-5, mel_basis() @ magnitude)) - REF_LEVEL_DB
    return np.clip(2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS, -MAX_ABS, MAX_ABS)


def mel_window(mel: np.ndarray, start_frame: int, fps: float = 25.0) -> np.ndarray:
    """The 52 columns of one 16-frame window starting at video frame ``start_frame`` (official
    ``crop_audio_window``: from ``int(80 * start / fps)``); ``[80, 52]``. Raises when the audio ends first."""
    first = int(COLUMNS_PER_SECOND * start_frame / fps)
    if first + WINDOW_COLUMNS > mel.shape[1]:
        raise AudioError(
            f"SyncNet mel: the window of frame {start_frame} needs columns {first}-{first + WINDOW_COLUMNS - 1}, "
            f"the audio has {mel.shape[1]}."
        )
    return mel[:, first:first + WINDOW_COLUMNS]
