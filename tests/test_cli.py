"""The command line (``python -m latentsync_core``) and its video I/O (latentsync_core.video_io).

The end-to-end test lip-syncs a generated clip (a real face photo, jittered) with the tiny golden
models: short audio, 1 step, no CFG, and small segments so the streaming path (ping-pong loop read
backwards, several segments) runs in a few seconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from latentsync_core import cli, stream
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
@pytest.mark.usefixtures("landmarks_offline")
def test_cli_lipsyncs_a_clip_with_tiny_models(face_clip, tmp_path, monkeypatch):
    clip, frames = face_clip
    speech = tmp_path / "speech.wav"
    _write_wav(speech, 0.28)  # 7 frames at 25 fps: the 4-frame clip is looped 0 1 2 3 3 2 1
    out = tmp_path / "out" / "synced.mp4"
    monkeypatch.setattr(stream, "IO_BLOCK", 3)  # several blocks, one read backwards
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
    assert opened and set(opened) == {str(models / "latentsync" / "face_landmarker.task")}  # one per thread
    assert probe_video(out).num_frames == 3


@pytest.mark.usefixtures("landmarks_offline")
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


# ------------------------------------------------------------------------------- argument checks (#13)
def _args(video, audio, out, *extra):
    return ["--video", str(video), "--audio", str(audio), "--out", str(out), *TINY, "--no-download", "-q", *extra]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Argument errors must come before any model is touched."""

    def fail(*a, **k):
        raise AssertionError("models were resolved before the arguments were checked")

    monkeypatch.setattr(cli, "resolve_models", fail)
    monkeypatch.setattr(cli, "probe_video", fail)


def test_cli_refuses_to_overwrite_an_input(face_clip, tmp_path, monkeypatch, capsys, no_model_loading):
    clip, _ = face_clip
    video = tmp_path / "a.mp4"
    video.write_bytes(clip.read_bytes())
    speech = tmp_path / "s.wav"
    _write_wav(speech, 0.12)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.mp4").symlink_to(video)
    for out in ["a.mp4", str(video), "./x/../a.mp4", "link.mp4"]:
        assert cli.main(_args("a.mp4", speech, out)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out ") and "is the input file" in err and err.count("\n") == 1
    assert cli.main(_args(video, "s.wav", str(tmp_path / "link.mp4"))) == 2  # a link to the video
    assert video.read_bytes() == clip.read_bytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "/proc/out.mp4"], "not writable"),
        (["--out", "/proc/latentsync/out.mp4"], "cannot create the folder"),
        (["--out", "{tmp}/file/out.mp4"], "writable location"),
        (["--out", "{tmp}/out.avi"], "ending in .mp4"),
        (["--steps", "0"], "--steps 0: use 1 or more"),
        (["--guidance", "0.5"], "--guidance 0.5: use 1.0"),
        (["--guidance", "nan"], "--guidance nan"),
        (["--deepcache", "9"], "--deepcache 9: use 0 (off) or an interval 2-5"),
        (["--deepcache", "1"], "--deepcache 1"),
        (["--crf", "99"], "--crf 99: use 0-51"),
        (["--crf", "-1"], "--crf -1"),
        (["--face", "left"], "--face left: use 'largest'"),
        (["--vae-config", "{tmp}/nope.json"], "--vae-config .*nope.json: no such file"),
        (["--vae-config", "{tmp}/empty.json"], "VAE config .*empty.json is empty"),
        (["--vae-config", "{tmp}/file"], "VAE config .*file is not valid JSON"),
        (["--unet-config", "{tmp}/empty.json"], "empty.json is not a readable U-Net config"),
        (["--device", "gpu"], "--device gpu: not a device name"),
        (["--device", "cuda"], "--device cuda: "),
        (["--device", "cuda:7"], "--device cuda:7: "),
        (["--device", "mps"], "--device mps: Apple MPS is not available"),
    ],
)
def test_cli_usage_errors_before_any_work(face_clip, tmp_path, capsys, no_model_loading, extra, message):
    import re

    import torch

    if "cuda" in extra[-1] and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    if extra[-1] == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is present")
    clip, _ = face_clip
    (tmp_path / "file").write_text("in the way")
    (tmp_path / "empty.json").write_text("")
    extra = [e.format(tmp=tmp_path) for e in extra]
    out = tmp_path / "o.mp4"
    argv = _args(clip, clip, out, *extra)
    if "--out" in extra:  # the later --out wins in argparse
        argv = _args(clip, clip, extra[1], *extra[2:])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message.replace("(", r"\(").replace(")", r"\)").replace(".mp4", r"\.mp4"), err), err
    assert not out.exists()


def test_cli_cuda_on_cpu_only_torch(monkeypatch):
    """The AssertionError "Torch not compiled with CUDA enabled" becomes a usage error."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(cli.UsageError, match="--device cuda: this torch is a CPU-only build.*--device cpu"):
        cli.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(cli.UsageError, match=r"only 1 CUDA device\(s\)"):
        cli.pick_device("cuda:1")


def test_cli_lists_every_missing_model_at_once(face_clip, tmp_path, monkeypatch, capsys):
    clip, _ = face_clip
    speech = tmp_path / "s.wav"
    _write_wav(speech, 0.12)
    models = tmp_path / "models"
    base = ["--video", str(clip), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"), "--models", str(models), "-q"]
    expected = [
        ("https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt",
         models / "latentsync" / "latentsync_unet.pt"),
        ("https://huggingface.co/ByteDance/LatentSync-1.5/resolve/main/whisper/tiny.pt",
         models / "latentsync" / "whisper" / "tiny.pt"),
        ("https://huggingface.co/stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.safetensors",
         models / "vae" / "sd-vae-ft-mse.safetensors"),
    ]  # fmt: skip
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert cli.main([*base, "--no-download"]) == 1
    err = capsys.readouterr().err
    for url, path in expected:
        assert url in err and str(path) in err
    assert "--no-download given" in err

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the same list, no network attempt
    assert cli.main(base) == 1
    err = capsys.readouterr().err
    assert all(url in err and str(path) in err for url, path in expected) and "offline" in err

    # the Hub unreachable: every download is tried, the one error lists all that failed
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    (models / "latentsync" / "whisper").mkdir(parents=True)
    (models / "latentsync" / "whisper" / "tiny.pt").write_bytes(b"present")  # found: not listed
    assert cli.main(base) == 1
    err = capsys.readouterr().err
    assert "download failed" in err
    assert str(expected[0][1]) in err and str(expected[2][1]) in err and "whisper" not in err
    assert f"http://127.0.0.1:{port}/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt" in err


@pytest.mark.usefixtures("landmarks_offline")
def test_cli_hides_native_log_noise(tmp_path):
    """mediapipe/TFLite/absl print to file descriptor 2 ("Created TensorFlow Lite XNNPACK delegate",
    "All log messages before absl::InitializeLog()"): hidden unless --verbose; our own error still shows."""
    grey = tmp_path / "grey.mp4"
    with VideoWriter(grey, 64, 64, 25) as w:
        w.write(np.full((3, 64, 64, 3), 128, np.uint8))
    speech = tmp_path / "s.wav"
    _write_wav(speech, 0.12)
    cmd = [sys.executable, "-m", "latentsync_core", *_args(grey, speech, tmp_path / "o.mp4")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No face found"), res.stderr


def test_truncated_video_with_index_at_the_front_is_refused(tmp_path, capsys):
    """A cut-off mp4 whose index (moov) sits at the front used to be read as a shorter video (25 of 75
    frames, the rest made up by the loop): it is refused with the counts."""
    from latentsync_core.errors import LatentSyncError

    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        noise = np.random.default_rng(1).integers(0, 255, (75, 48, 64, 3), dtype=np.uint8)  # incompressible
        for i in range(75):
            f = av.VideoFrame.from_ndarray(noise[i], format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    data = whole.read_bytes()
    assert data[:64].find(b"moov") > 0  # the index really is at the front
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    assert probe_video(whole).num_frames == 75
    with VideoReader(whole) as r:
        assert r.num_frames == 75 and r.read(70, 75).shape == (5, 48, 64, 3)
    for opener in (probe_video, VideoReader):
        with pytest.raises(LatentSyncError, match=r"cut\.mp4 is truncated: its index lists 75 frames but the file holds only \d+"):
            opener(cut)
    speech = tmp_path / "s.wav"
    _write_wav(speech, 0.12)
    assert cli.main(["--video", str(cut), "--audio", str(speech), "--out", str(tmp_path / "o.mp4"), *TINY, "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cut.mp4 is truncated") and "Traceback" not in err
    import re

    said = re.search(r"holds only (\d+) whole ones.*to use the (\d+) frames.*-frames:v (\d+) ", err)
    assert said and said[1] == said[2] == said[3], err  # the count and the advice agree


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "1001"], "--steps 1001: use 1-1000"),
        (["--blend", "mouth", "--mask-grow", "-100000"], "--mask-grow -100000: use -64 or more"),
        (["--silence", "keep", "--silence-db", "50"], "--silence-db 50.0: use -100.0 to -10.0"),
        (["--silence-ms", "-10"], "--silence-ms -10: use 0 or more"),
        (["--feather", "-5"], "--feather -5: use -1 or more"),
        (["--guidance", "1e9"], "--guidance 1000000000.0: use 1.0-10.0"),
        (["--seed", "-5"], "--seed -5: use 0 or more"),
        (["--chunk-batch", "17"], "--chunk-batch 17: use 0-16"),
        (["--max-gap", "-1"], "--max-gap -1: use 0 or more"),
        (["--video", "{tmp}"], "--video .*: is a folder"),
    ],
)
def test_cli_out_of_range_options_stop_before_any_work(face_clip, tmp_path, capsys, no_model_loading, extra, message):
    """What a new user typed: each ends as one line and exit 2 before any model loads or frame is read."""
    import re

    clip, _ = face_clip
    extra = [e.format(tmp=tmp_path) for e in extra]
    out = tmp_path / "o.mp4"
    assert cli.main(_args(clip, clip, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not out.exists()


def test_cli_help_is_generated_and_documented():
    text = cli.build_parser().format_help()
    assert "(default: None)" not in text and "DDIM steps" not in text
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    flags = [o for a in cli.build_parser()._actions for o in a.option_strings if o.startswith("--")]
    assert len(flags) > 25
    missing = [f for f in flags if f not in ("--help",) and f not in readme]
    assert not missing, f"README does not mention {missing}"


def test_cli_warns_when_the_unet_file_is_another_version(tmp_path, caplog):
    unet = tmp_path / "latentsync_unet.pt"  # the 1.5 file name: 256 px
    unet.write_bytes(b"")
    with caplog.at_level("WARNING", logger="latentsync_core.cli"):
        cli.check_version("1.5", str(unet))
        assert not caplog.records
        cli.check_version("1.6", str(unet))
    assert "--version 1.6 expects a 512 px U-Net" in caplog.text and "LatentSync 1.5" in caplog.text


@pytest.mark.usefixtures("landmarks_offline")
def test_cli_progress_bars_finish_and_the_last_line_stands_alone(face_clip, tmp_path, capfd):
    """Without -q: a "faces" bar that ends at its total (detection of the 4 frames), then a "lip sync" bar
    over chunk-steps that ends at its own (never restarting), then the "wrote" line once, on a line of its
    own (not glued to a bar)."""
    clip, _ = face_clip
    speech = tmp_path / "speech.wav"
    _write_wav(speech, 0.28)
    out = tmp_path / "synced.mp4"
    code = cli.main(["--video", str(clip), "--audio", str(speech), "--out", str(out), *TINY,
                     "--steps", "3", "--guidance", "1.0", "--no-download"])
    assert code == 0
    err = capfd.readouterr().err
    states = [s.strip() for s in re.split(r"[\r\n]", err) if s.strip()]
    faces = [s for s in states if s.startswith("faces:")]
    sync = [s for s in states if s.startswith("lip sync:")]
    assert faces and "4/4" in faces[-1] and "100%" in faces[-1], faces
    assert sync and "3/3" in sync[-1] and "100%" in sync[-1], sync  # 1 chunk x 3 steps
    done = [re.search(r"(\d+)/3", s).group(1) for s in sync]
    assert done == sorted(done), sync  # never backwards
    wrote = [line for line in err.splitlines() if "wrote " in line]
    assert len(wrote) == 1 and re.match(r"^(\S+ )?wrote ", wrote[0].split("] ")[-1].lstrip()), err
