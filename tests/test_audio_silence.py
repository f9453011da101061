"""Silence detection per video frame (issue 11) on the English fixture with a 1 s silent gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core.audio import load_audio_file
from latentsync_core.audio.silence import quiet_steps, silent_frames, step_levels_db
from latentsync_core.errors import AudioError

GAP_AT = 16000  # 1.0 s: inside speech (steps 45..55 of the clip are loud)


@pytest.fixture(scope="module")
def speech():
    wave, rate = load_audio_file(FIXTURES / "audio" / "en.flac", sample_rate=16000, mono=True)
    assert rate == 16000
    return wave[0].numpy()


@pytest.fixture(scope="module")
def gapped(speech):
    assert step_levels_db(speech[GAP_AT - 320 : GAP_AT + 320]).min() > -30  # speech on both sides of the cut
    return np.concatenate([speech[:GAP_AT], np.zeros(16000, np.float32), speech[GAP_AT:]])


def test_frames_inside_a_one_second_gap_are_silent(speech, gapped):
    n = len(gapped) * 25 // 16000
    flags = silent_frames(gapped, n, 25.0)
    assert flags.shape == (n,) and flags.dtype == bool
    # gap = whisper steps 50..99; frame i sees steps 2i-4 .. 2i+5: silent iff 27 <= i <= 47 (documented edges)
    np.testing.assert_array_equal(np.flatnonzero(flags[:60]), np.arange(27, 48))
    # elsewhere exactly what the clip without the gap gives (shifted by the 25 inserted frames)
    alone = silent_frames(speech, len(speech) * 25 // 16000, 25.0)
    np.testing.assert_array_equal(flags[:26], alone[:26])
    np.testing.assert_array_equal(flags[26 + 25 + 23 :], alone[26 + 23 : n - 25])
    # the espeak clip's own pauses: a 200 ms one mid-sentence (too short) and ~420 ms at the end
    assert not alone[:-12].any() and alone[-3:].all()
    # frames whose window has speech in it are never silent
    levels = step_levels_db(gapped)
    loud = np.array([levels[np.clip(2 * i + np.arange(-4, 6), 0, len(levels) - 1)].max() > -30 for i in range(n)])
    assert loud.sum() > 0.6 * n and not (flags & loud).any()


def test_threshold_and_min_duration(speech, gapped):
    n = len(gapped) * 25 // 16000
    base = silent_frames(gapped, n, 25.0)
    # shorter minimum: the clip's 200 ms mid-sentence pause (10 steps = one frame window) now counts
    short = silent_frames(gapped, n, 25.0, min_duration_ms=200)
    assert (short >= base).all() and short.sum() > base.sum()
    # a gap shorter than the minimum is not silence
    np.testing.assert_array_equal(silent_frames(gapped, n, 25.0, min_duration_ms=1100)[:60], np.zeros(60, bool))
    # a threshold above the speech level makes everything silent; one far below only the inserted zeros
    assert silent_frames(gapped, n, 25.0, threshold_db=-1.0).all()
    np.testing.assert_array_equal(np.flatnonzero(silent_frames(gapped, n, 25.0, threshold_db=-150.0)), np.arange(27, 48))


def test_other_fps_and_inputs(gapped):
    n = len(gapped) * 30 // 16000
    flags = silent_frames(torch.from_numpy(gapped)[None], n, 30.0)  # FrameAudio.waveform layout [1, T]
    centers = (np.arange(n) * 50 / 30).astype(int)
    expected = (centers - 4 >= 50) & (centers + 5 <= 99)
    np.testing.assert_array_equal(flags[:70], expected[:70])
    assert flags[:70].sum() == expected[:70].sum() > 20
    # more frames than audio: windows clamp to the last step (as the features do)
    assert silent_frames(np.zeros(8000, np.float32), 40, 25.0).all()


def test_quiet_steps_runs():
    levels = np.array([-10, -90, -90, -10, -90, -90, -90, -90, -10], dtype=float)
    np.testing.assert_array_equal(quiet_steps(levels, -40, 60), [0, 0, 0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(quiet_steps(levels, -40, 40), [0, 1, 1, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(quiet_steps(levels, -40, 0), levels < -40)


def test_errors():
    with pytest.raises(AudioError, match="dBFS"):
        silent_frames(np.zeros(16000), 25, 25.0, threshold_db=3.0)
    with pytest.raises(AudioError, match="duration"):
        silent_frames(np.zeros(16000), 25, 25.0, min_duration_ms=-1)
    with pytest.raises(AudioError, match="fps"):
        silent_frames(np.zeros(16000), 25, 0.0)
    with pytest.raises(AudioError, match="short"):
        silent_frames(np.zeros(100), 25, 25.0)
    with pytest.raises(AudioError, match="mono"):
        silent_frames(np.zeros((2, 16000)), 25, 25.0)
    with pytest.raises(AudioError, match="NaN"):
        silent_frames(np.full(16000, np.nan), 25, 25.0)
