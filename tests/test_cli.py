"""The command line (``python -m latentsync_core``) and its video I/O (latentsync_core.video_io).

The end-to-end test lip-syncs a generated clip (a real face photo, jittered) with the tiny golden
models: short audio, 1 step, no CFG, and small segments so the streaming path (ping-pong loop read
backwards, several segments) runs in a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from latentsync_core import cli
from latentsync_core.video_io import VideoReader, VideoWriter, probe_video

FIX = Path(__file__).resolve().parent / "fixtures"
TINY = [
    "--unet", str(FIX / "unet" / "latentsync_unet.pt"),
    "--unet-config", str(FIX / "unet" / "config.json"),
    "--whisper", str(FIX / "audio" / "whisper_tiny_encoder.pt"),
    "--vae", str(FIX / "pipeline" / "vae_tiny_random.pt"),
    "--vae-config", str(FIX / "pipeline" / "vae_config.json"),
]  # fmt: skip
W, H = 320, 240


def _band_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frames whose top band encodes their index (grey level 6 x index; survives lossy coding)."""
    rng = np.random.default_rng(0)
    base = np.kron((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8), np.ones((8, 8, 1), np.uint8))
    frames = np.repeat(base[None], n, axis=0)
    for i in range(n):
        frames[i, :8] = i * 6
    return frames


def _index_of(frames: np.ndarray) -> list[int]:
    return [int(round(f[:8].mean() / 6)) for f in frames]


def _write_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    from latentsync_core.audio import load_audio_file

    wav, sr = load_audio_file(FIX / "audio" / "en.flac", start=0.5, duration=seconds, sample_rate=rate, mono=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes((wav[0].numpy() * 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """4 frames, 320x240 at 25 fps, of a real face (tests/fixtures/face) with a little jitter."""
    img = cv2.cvtColor(cv2.imread(str(FIX / "face" / "detect_0.png")), cv2.COLOR_BGR2RGB)
    small = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    frames = np.stack(
        [
            cv2.warpAffine(small, np.float32([[1, 0, d], [0, 1, -d]]), (W, H), borderMode=cv2.BORDER_REFLECT)
            for d in (0, 1, 2, 1)
        ]
    )
    path = tmp_path_factory.mktemp("clip") / "face.mp4"
    with VideoWriter(path, W, H, 25, crf=0) as w:
        w.write(frames)
    return path, frames


# ------------------------------------------------------------------------------------------ video_io
def test_writer_reader_roundtrip_with_audio(tmp_path):
    frames = _band_frames(40)
    t = np.arange(int(44100 * 2.0)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]).astype(np.float32) * 0.3
    path = tmp_path / "v.mp4"
    with VideoWriter(path, 64, 48, Fraction(30000, 1001), audio=(stereo, 44100)) as w:
        for s in range(0, 40, 7):
            w.write(frames[s : s + 7])
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.num_frames, info.has_audio) == (
        64,
        48,
        Fraction(30000, 1001),
        40,
        True,
    )
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        assert a.codec_context.name == "aac" and a.channels == 2 and a.rate == 44100
        audio_seconds = sum(f.samples for f in c.decode(a)) / 44100
    assert abs(audio_seconds - info.duration) < 0.05  # audio cut to the video's length
    with VideoReader(path) as r:  # forward, backwards (seek), overlapping, single frames
        for a_, b_ in [(0, 10), (10, 20), (33, 40), (5, 15), (39, 40), (0, 1), (20, 30)]:
            got = r.read(a_, b_)
            assert got.shape == (b_ - a_, 48, 64, 3)
            assert _index_of(got) == list(range(a_, b_))
            assert np.abs(got.astype(int) - frames[a_:b_]).mean() < 8


def test_writer_odd_size_and_bad_frames(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 33, 21, 24) as w:
        w.write(np.zeros((3, 21, 33, 3), np.uint8))
        with pytest.raises(ValueError, match="expected uint8 frames"):
            w.write(np.zeros((1, 20, 33, 3), np.uint8))
    assert probe_video(path).num_frames == 3 and (probe_video(path).width, probe_video(path).height) == (33, 21)
    failed = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(failed, 32, 32, 25) as w:
            w.write(np.zeros((2, 32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert not failed.exists()  # no broken output left behind


# ------------------------------------------------------------------------------------------ CLI
def test_cli_lipsyncs_a_clip_with_tiny_models(face_clip, tmp_path, monkeypatch):
    clip, frames = face_clip
    speech = tmp_path / "speech.wav"
    _write_wav(speech, 0.28)  # 7 frames at 25 fps: the 4-frame clip is looped 0 1 2 3 3 2 1
    out = tmp_path / "out" / "synced.mp4"
    monkeypatch.setattr(cli, "SEGMENT_FRAMES", 3)  # several segments, one read backwards
    argv = ["--video", str(clip), "--audio", str(speech), "--out", str(out), *TINY]
    code = cli.main([*argv, "--steps", "1", "--guidance", "1.0", "--seed", "7", "--no-download", "-q"])
    assert code == 0
    info = probe_video(out)
    assert (info.width, info.height, info.fps, info.num_frames, info.has_audio) == (W, H, 25, 7, True)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        rate = c.streams.audio[0].rate
        seconds = sum(f.samples for f in c.decode(c.streams.audio[0])) / rate
        assert 0.27 <= seconds <= 0.28 + 1024 / rate + 0.01  # AAC pads its last 1024-sample frame
    with VideoReader(out) as r:
        got = r.read(0, 7).astype(int)
    loop = [0, 1, 2, 3, 3, 2, 1]
    diff = np.abs(got - frames[loop].astype(int)).mean(axis=-1)  # [7, H, W]
    changed = diff > 24
    assert changed.any(axis=(1, 2)).all()  # every frame got a new mouth (random model: very different)
    ys, xs = np.nonzero(changed.any(axis=0))
    # the change is local (the lower face), and the rest of the frame is the input, re-encoded once
    assert changed.mean() < 0.15
    assert H * 0.3 < ys.mean() < H * 0.9 and W * 0.25 < xs.mean() < W * 0.75
    assert diff[:, : H // 5].mean() < 5.0  # x264 CRF 18 + RGB/YUV rounding: a few grey levels


@pytest.mark.face
def test_cli_finds_the_task_file_under_models_on_new_mediapipe(face_clip, tmp_path, monkeypatch, task_file):
    """mediapipe without the legacy mesh (the README install today): --models DIR/latentsync/face_landmarker.task
    is used, offline, with no network attempt (issue 13 item 3)."""
    import shutil

    from latentsync_core.face import landmarks

    clip, _ = face_clip
    speech = tmp_path / "speech.wav"
    _write_wav(speech, 0.12)
    models = tmp_path / "models"
    (models / "latentsync").mkdir(parents=True)
    shutil.copyfile(task_file, models / "latentsync" / "face_landmarker.task")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(landmarks, "legacy_face_mesh_available", lambda: False)  # as on mediapipe >= 0.10.30
    opened = []
    real_init = landmarks.TasksFaceLandmarker.__init__

    def spy(self, model_path, *args, **kw):
        opened.append(model_path)
        real_init(self, model_path, *args, **kw)

    monkeypatch.setattr(landmarks.TasksFaceLandmarker, "__init__", spy)
    out = tmp_path / "synced.mp4"
    argv = ["--video", str(clip), "--audio", str(speech), "--out", str(out), "--models", str(models), *TINY]
    assert cli.main([*argv, "--steps", "1", "--guidance", "1.0", "--no-download", "-q"]) == 0
    assert opened == [str(models / "latentsync" / "face_landmarker.task")]
    assert probe_video(out).num_frames == 3


def test_cli_errors(face_clip, tmp_path, capsys):
    clip, _ = face_clip
    speech = tmp_path / "s.wav"
    _write_wav(speech, 0.2)
    out = tmp_path / "o.mp4"
    models = tmp_path / "models"
    code = cli.main(
        [
            "--video",
            str(clip),
            "--audio",
            str(speech),
            "--out",
            str(out),
            "--models",
            str(models),
            "--no-download",
            "-q",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt" in err
    assert str(models / "latentsync" / "latentsync_unet.pt") in err
    assert not out.exists()

    grey = tmp_path / "grey.mp4"
    with VideoWriter(grey, 64, 64, 25) as w:
        w.write(np.full((3, 64, 64, 3), 128, np.uint8))
    code = cli.main(["--video", str(grey), "--audio", str(speech), "--out", str(out), *TINY, "-q"])
    assert code == 1
    assert "No face found" in capsys.readouterr().err
    assert not out.exists()

    code = cli.main(["--video", str(tmp_path / "missing.mp4"), "--audio", str(speech), "--out", str(out), *TINY, "-q"])
    assert code == 1 and "not found" in capsys.readouterr().err


def test_module_entry_point_help():
    res = subprocess.run(
        [sys.executable, "-m", "latentsync_core", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0
    for flag in ("--video", "--audio", "--out", "--models", "--steps", "--guidance", "--seed", "--device"):
        assert flag in res.stdout
