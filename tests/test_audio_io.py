"""Audio decoding: formats and containers (files made with PyAV in the test), start/duration, bad files."""

from __future__ import annotations

import math
import wave

import av
import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core.audio import checked_waveform, comfy_audio_parts, load_audio_file
from latentsync_core.errors import AudioError

RATE = 44100
SECONDS = 0.6


def tone(rate: int = RATE, seconds: float = SECONDS, channels: int = 2) -> np.ndarray:
    """float32 [channels, T]: 440 Hz left, 660 Hz right (a different tone per channel)."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.4 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)]).astype(np.float32)


def write_media(path, codec: str, samples: np.ndarray, rate: int = RATE, video: str | None = None, audio_format: str = "fltp"):
    """Encode ``samples`` [C, T] (and a few grey frames with ``video`` codec) into ``path`` with PyAV."""
    layout = "stereo" if samples.shape[0] == 2 else "mono"
    with av.open(str(path), "w") as out:
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 64, "yuv420p"
        astream = out.add_stream(codec, rate=rate, layout=layout) if codec else None
        if astream is not None:
            astream.format = audio_format
            resampler = av.AudioResampler(format=audio_format, layout=layout, rate=rate)
            block = 1024
            for i in range(0, samples.shape[1], block):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + block]), format="fltp", layout=layout)
                frame.sample_rate = rate
                frame.pts = i
                for f in resampler.resample(frame):
                    for packet in astream.encode(f):
                        out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
        if vstream is not None:
            for i in range(int(SECONDS * 25)):
                img = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 120, np.uint8), format="rgb24")
                img.pts = i
                for packet in vstream.encode(img):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)


def best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 3000) -> float:
    """Largest normalised correlation of two signals over lags up to ``max_lag`` samples (codec delay)."""
    n = min(len(a), len(b)) - max_lag
    best = 0.0
    ref = b[max_lag // 2 : max_lag // 2 + n]
    for lag in range(0, max_lag, 7):
        seg = a[lag : lag + n]
        c = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-12))
        best = max(best, c)
    return best


FORMATS = [
    ("wav", "pcm_s16le", None, "s16"),
    ("flac", "flac", None, "s16"),
    ("mp3", "libmp3lame", None, "fltp"),
    ("ogg", "libopus", None, "flt"),
    ("m4a", "aac", None, "fltp"),
    ("mp4", "aac", "mpeg4", "fltp"),
    ("mov", "aac", "mpeg4", "fltp"),
    ("mkv", "flac", "mpeg4", "s16"),
    ("webm", "libopus", "libvpx", "flt"),
]


@pytest.mark.parametrize("ext,codec,video,fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_decodes_audio_files_and_video_tracks(tmp_path, ext, codec, video, fmt):
    rate = 48000 if codec == "libopus" else RATE  # opus only runs at 48 kHz
    src = tone(rate)
    path = tmp_path / f"clip.{ext}"
    write_media(path, codec, src, rate=rate, video=video, audio_format=fmt)
    wave_, got_rate = load_audio_file(path)
    assert got_rate == rate
    assert wave_.dtype == torch.float32 and wave_.shape[0] == 2
    assert abs(wave_.shape[1] / rate - SECONDS) < 0.08  # codec padding/priming at most a few frames
    assert wave_.abs().max() <= 1.01
    for c in range(2):  # channel order and content survive
        assert best_correlation(wave_[c].numpy(), src[c]) > 0.95
    # a part is exactly those samples of the whole (no seek offsets from codec delay or timestamps)
    part, _ = load_audio_file(path, start=0.2, duration=0.25)
    first = round(0.2 * rate)
    assert torch.equal(part, wave_[:, first : first + round(0.25 * rate)])


def test_mono_and_16k_option(tmp_path):
    path = tmp_path / "clip.wav"
    write_media(path, "pcm_s16le", tone(48000), rate=48000, audio_format="s16")
    mono, rate = load_audio_file(path, sample_rate=16000, mono=True)
    assert rate == 16000 and mono.shape[0] == 1
    assert abs(mono.shape[1] - int(16000 * SECONDS)) <= 2
    stereo, _ = load_audio_file(path)
    expected = stereo.mean(0)[::3]  # 440/660 Hz tones: decimation is exact enough for a check
    n = min(len(expected), mono.shape[1]) - 50
    assert (mono[0, 50:n] - expected[50:n]).abs().max() < 5e-3


def test_start_and_duration_cut_exactly():
    full, rate = load_audio_file(FIXTURES / "audio" / "long.flac")
    part, rate2 = load_audio_file(FIXTURES / "audio" / "long.flac", start=31.25, duration=2.5)
    assert rate2 == rate == 16000
    assert part.shape == (1, 40000)
    assert torch.equal(part, full[:, 500000:540000])
    tail, _ = load_audio_file(FIXTURES / "audio" / "long.flac", start=34.0)
    assert torch.equal(tail, full[:, 544000:])
    with pytest.raises(AudioError, match="past the end"):
        load_audio_file(FIXTURES / "audio" / "long.flac", start=40.0)
    with pytest.raises(AudioError, match="start"):
        load_audio_file(FIXTURES / "audio" / "long.flac", start=-1.0)


def test_zero_length_file_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio_file(path)


def test_not_audio_is_an_error(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not the samples you are looking for\n" * 20)
    with pytest.raises(AudioError, match="not an audio or video file"):
        load_audio_file(path)
    with pytest.raises(AudioError, match="not found"):
        load_audio_file(tmp_path / "missing.wav")


def test_video_without_audio_track_is_an_error(tmp_path):
    path = tmp_path / "silent_film.mp4"
    write_media(path, "", np.zeros((1, 0), np.float32), video="mpeg4")
    with av.open(str(path)) as c:  # the file really is a video
        assert c.streams.video and not c.streams.audio
    with pytest.raises(AudioError, match="video without an audio track"):
        load_audio_file(path)


def test_checked_waveform_shapes_and_errors():
    assert checked_waveform(torch.zeros(5)).shape == (1, 5)
    assert checked_waveform(np.zeros((2, 5))).shape == (2, 5)
    assert checked_waveform(torch.zeros(3, 2, 5)).shape == (2, 5)  # first batch item
    with pytest.raises(AudioError, match="empty"):
        checked_waveform(torch.zeros(2, 0))
    with pytest.raises(AudioError, match="NaN"):
        checked_waveform(torch.tensor([0.0, math.nan]))
    with pytest.raises(AudioError, match="shape"):
        checked_waveform(torch.zeros(1, 1, 1, 4))


def test_comfy_audio_accepts_any_mapping():
    class LazyAudio(dict):  # like VideoHelperSuite's lazy AUDIO: values computed on access
        def __getitem__(self, key):
            return {"waveform": torch.zeros(1, 2, 10), "sample_rate": 22050}[key]

        def __contains__(self, key):
            return key in ("waveform", "sample_rate")

    wave_, rate = comfy_audio_parts(LazyAudio())
    assert wave_.shape == (1, 2, 10) and rate == 22050
    with pytest.raises(AudioError, match="AUDIO"):
        comfy_audio_parts(torch.zeros(10))
