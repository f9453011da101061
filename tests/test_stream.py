"""The streaming job (latentsync_core.stream): equal to one sampler run over the whole video, segment
planning, cancel/failure safety, bad input, variable frame rate, and the lazy per-frame audio."""

from __future__ import annotations

import os
import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from test_cli import FIX, TINY, _write_wav

from latentsync_core import FaceError, LatentSyncError, stream
from latentsync_core.audio import embed_audio, load_audio_file, load_whisper
from latentsync_core.face import FaceAligner, paste_back
from latentsync_core.pipeline import LipSyncPipeline
from latentsync_core.stream import StreamSettings, lip_sync_video, plan_segments
from latentsync_core.timing import ping_pong_indices
from latentsync_core.unet import load_unet
from latentsync_core.vae import load_vae
from latentsync_core.video_io import VideoReader, VideoWriter, probe_video

W, H = 320, 240
FAST = {"steps": 1, "guidance": 1.0, "seed": 7}


def make_face_clip(path: Path, n: int, grey: tuple[int, ...] = (), fps=25) -> Path:
    """``n`` frames (320x240) of a real face with a little jitter; frames in ``grey`` are flat grey
    (no face). Lossless H.264."""
    img = cv2.cvtColor(cv2.imread(str(FIX / "face" / "detect_0.png")), cv2.COLOR_BGR2RGB)
    small = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        d = (0, 1, 2, 1)[i % 4]
        frame = cv2.warpAffine(small, np.float32([[1, 0, d], [0, 1, -d]]), (W, H), borderMode=cv2.BORDER_REFLECT)
        frames.append(np.full_like(frame, 128) if i in grey else frame)
    with VideoWriter(path, W, H, fps, crf=0) as w:
        w.write(np.stack(frames))
    return path


@pytest.fixture(scope="module")
def models():
    return {
        "unet": load_unet(FIX / "unet" / "config.json", FIX / "unet" / "latentsync_unet.pt"),
        "vae": load_vae(FIX / "pipeline" / "vae_tiny_random.pt", FIX / "pipeline" / "vae_config.json"),
        "whisper": load_whisper(FIX / "audio" / "whisper_tiny_encoder.pt"),
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """6 frames; frame 3 has no face (with max_gap 0 it stays untouched)."""
    return make_face_clip(tmp_path_factory.mktemp("stream") / "clip.mp4", 6, grey=(3,))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[torch.Tensor, int]:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    _write_wav(path, 0.8)  # 20 frames at 25 fps: the 6-frame clip ping-pongs 0..5 5..0 0..5 5 4
    return load_audio_file(path)


class Recorder(VideoWriter):
    """The real writer, also keeping every frame it encodes."""

    frames: list[np.ndarray] = []

    def write(self, frames):
        Recorder.frames.append(np.array(frames, copy=True))
        super().write(frames)


def run_stream(clip, out, speech, models, **settings):
    waveform, rate = speech
    return lip_sync_video(str(clip), str(out), waveform, rate, **models,
                          settings=StreamSettings(**{**FAST, "max_gap": 0, **settings}))


# --- segment planning -----------------------------------------------------------------------------
def test_plan_segments_hold_whole_chunks():
    synced = np.ones(100, bool)
    synced[[5, 6, 40, 41, 42, 99]] = False
    segments = plan_segments(synced, 16)
    assert segments[0][0] == 0 and segments[-1][1] == 100
    assert all(b == c for (_, b), (c, _) in zip(segments, segments[1:]))  # contiguous, in order
    counts = [int(synced[a:b].sum()) for a, b in segments]
    assert counts[:-1] == [16] * (len(counts) - 1) and 0 < counts[-1] <= 16 and sum(counts) == synced.sum()
    assert all(synced[a] for a, _ in segments[1:])  # a segment starts at a frame with a face
    assert plan_segments(np.zeros(5, bool), 16) == [(0, 5)]
    with pytest.raises(ValueError, match="multiple of 16"):
        StreamSettings(segment_frames=24)


# --- equal to one sampler run -----------------------------------------------------------------------
@pytest.mark.usefixtures("landmarks_offline")
@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
def test_stream_equals_one_sampler_run_over_the_whole_video(clip, speech, models, tmp_path, monkeypatch, overlap):
    """2 segments of 16 synced frames (one frame without a face, the ping-pong loop read backwards):
    the frames sent to the encoder are bit-identical to aligning the whole clip, one sync_faces call with
    the same seed, and paste-back with float faces (what the IMAGE graph computes); the same with the
    CPU stages overlapped with sampling (helper threads)."""
    monkeypatch.setattr(stream, "VideoWriter", Recorder)
    monkeypatch.setattr(stream, "IO_BLOCK", 5)
    Recorder.frames = []
    out = tmp_path / "out.mp4"
    report = run_stream(clip, out, speech, models, segment_frames=16, overlap=overlap)
    got = np.concatenate(Recorder.frames)

    with VideoReader(clip) as r:
        frames = r.read(0, 6)
    aligner = FaceAligner(256, max_gap=0)
    aligned = aligner.align(frames)
    aligner.close()
    audio = embed_audio(models["whisper"], *speech, fps=25.0)
    index = ping_pong_indices(6, audio.num_frames)
    result = LipSyncPipeline(models["unet"], models["vae"]).sync_faces(
        torch.from_numpy(aligned.faces), audio, source_index=index, found=aligned.found, **FAST)
    expected = paste_back(frames[index], result.faces.float().numpy(), aligned.affines[index], result.generated)

    assert report.num_frames == 20 and got.shape == expected.shape
    assert len(plan_segments(aligned.found[index], 16)) == 2 and not aligned.found[3]
    assert np.array_equal(got, expected)
    assert np.array_equal(got[index == 3], frames[[3] * int((index == 3).sum())])  # no face: untouched
    assert "NO FACE in 1 frames" in report.faces and "20 frames" in report.summary()
    info = probe_video(out)
    assert (info.width, info.height, info.fps, info.num_frames, info.has_audio) == (W, H, 25, 20, True)
    assert os.listdir(tmp_path) == ["out.mp4"]  # no temporary file left


@pytest.mark.usefixtures("landmarks_offline")
def test_a_segment_too_big_to_hold_is_decoded_again(clip, models, tmp_path, monkeypatch):
    wav = tmp_path / "s.wav"
    _write_wav(wav, 0.32)  # 8 frames, two decode blocks of 5
    speech = load_audio_file(wav)
    monkeypatch.setattr(stream, "VideoWriter", Recorder)
    monkeypatch.setattr(stream, "IO_BLOCK", 5)
    Recorder.frames = []
    run_stream(clip, tmp_path / "a.mp4", speech, models)
    held = np.concatenate(Recorder.frames)
    monkeypatch.setattr(stream, "HOLD_BYTES", 0)
    for overlap in (False, True):  # overlapped: paste-back decodes again on its own reader
        Recorder.frames = []
        run_stream(clip, tmp_path / f"b{overlap}.mp4", speech, models, overlap=overlap)
        assert np.array_equal(np.concatenate(Recorder.frames), held)


def _helper_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith(("latentsync-prepare", "latentsync-write"))]


@pytest.mark.usefixtures("landmarks_offline")
@pytest.mark.parametrize("where", ["sampler", "prepare", "paste"])
def test_cancel_with_overlap_stops_every_stage_and_writes_nothing(clip, speech, models, tmp_path, monkeypatch, where):
    """Overlapped stages: a cancel in the sampler (main thread) or in a helper thread (the next segment's
    decode, the previous segment's paste-back) ends the job with that error, stops the helpers and keeps
    the earlier file; the next run is complete."""
    import threading

    out = tmp_path / "result.mp4"
    out.write_bytes(b"an earlier result")
    helper = {"sampler": None, "prepare": "latentsync-prepare", "paste": "latentsync-write"}[where]
    calls = {"main": 0}

    def cancel():
        name = threading.current_thread().name
        if helper is None and threading.current_thread() is threading.main_thread():
            calls["main"] += 1
            if calls["main"] == 3:  # a U-Net call of segment 2 (pass 1 + segment 1 came first)
                raise KeyboardInterrupt
        elif helper is not None and name.startswith(helper):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 2:  # the helper's second block
                raise KeyboardInterrupt

    monkeypatch.setattr(stream, "IO_BLOCK", 4)
    waveform, rate = speech
    with pytest.raises(KeyboardInterrupt):
        lip_sync_video(str(clip), str(out), waveform, rate, **models,
                       settings=StreamSettings(**FAST, segment_frames=16, overlap=True), check_interrupt=cancel)
    assert out.read_bytes() == b"an earlier result"
    assert sorted(os.listdir(tmp_path)) == ["result.mp4"]
    assert _helper_threads() == []
    report = run_stream(clip, out, speech, models, segment_frames=16, overlap=True)
    assert probe_video(out).num_frames == report.num_frames == 20


# --- cancel, failures, bad input ---------------------------------------------------------------------
@pytest.mark.usefixtures("landmarks_offline")
def test_cancel_keeps_an_earlier_file_then_a_normal_run_works(clip, speech, models, tmp_path):
    out = tmp_path / "result.mp4"
    out.write_bytes(b"an earlier result")
    calls = []

    def cancel_at_second_segment():
        calls.append(1)
        if len(calls) == 6:  # detect; segment 1: decode, U-Net, paste; segment 2: decode, U-Net <- here
            raise KeyboardInterrupt

    waveform, rate = speech
    with pytest.raises(KeyboardInterrupt):
        lip_sync_video(str(clip), str(out), waveform, rate, **models,
                       settings=StreamSettings(**FAST, segment_frames=16), check_interrupt=cancel_at_second_segment)
    assert out.read_bytes() == b"an earlier result"
    assert sorted(os.listdir(tmp_path)) == ["result.mp4"]
    updates = []
    report = lip_sync_video(str(clip), str(out), waveform, rate, **models, settings=StreamSettings(**FAST),
                            progress=lambda stage, done, total: updates.append((stage, done, total)))
    assert probe_video(out).num_frames == report.num_frames == 20
    assert_progress_stages(updates, {"faces": 6, "lip sync": 2})  # 6 frames searched; 20 frames: 2 chunks x 1 step


def assert_progress_stages(updates, totals: dict[str, int]) -> None:
    """Each stage in turn, each with its own fixed total, counting up (never backwards) to that total."""
    stages = list(dict.fromkeys(stage for stage, _, _ in updates))
    assert stages == list(totals), stages
    for stage, total in totals.items():
        mine = [(d, t) for s, d, t in updates if s == stage]
        assert {t for _, t in mine} == {total}, (stage, mine)
        assert [d for d, _ in mine] == sorted(d for d, _ in mine) and mine[-1][0] == total, (stage, mine)


@pytest.mark.usefixtures("landmarks_offline")
def test_bad_input_fails_before_work_and_writes_nothing(clip, speech, models, tmp_path):
    waveform, rate = speech
    audio_only = FIX / "audio" / "en.flac"
    with pytest.raises(LatentSyncError, match="no video track"):
        lip_sync_video(str(audio_only), str(tmp_path / "a.mp4"), waveform, rate, **models)
    grey = make_face_clip(tmp_path / "grey.mp4", 3, grey=(0, 1, 2))
    with pytest.raises(FaceError, match=r"No face found in any of the 3 frames\. Use a video"):  # not "(the face)"
        lip_sync_video(str(grey), str(tmp_path / "b.mp4"), waveform, rate, **models)
    with pytest.raises(FaceError, match=r"face #5 \(counting from the left"):
        lip_sync_video(str(clip), str(tmp_path / "b.mp4"), waveform, rate, **models, settings=StreamSettings(face=5))
    # checked before anything runs: no model is touched
    for out, match in [("/proc/latentsync.mp4", "not writable|cannot create"), (str(clip), "input"),
                       (str(tmp_path / "x.gif"), ".mp4")]:
        with pytest.raises(LatentSyncError, match=match):
            lip_sync_video(str(clip), out, waveform, rate, unet=None, vae=None, whisper=None)
    assert sorted(os.listdir(tmp_path)) == ["grey.mp4"]


@pytest.mark.usefixtures("landmarks_offline")
def test_short_audio_cuts_the_video(clip, models, tmp_path):
    wav = tmp_path / "short.wav"
    _write_wav(wav, 0.12)  # 3 frames of a 6-frame video
    out = tmp_path / "short.mp4"
    waveform, rate = load_audio_file(wav)
    report = lip_sync_video(str(clip), str(out), waveform, rate, **models, settings=StreamSettings(**FAST))
    assert report.num_frames == probe_video(out).num_frames == 3 and report.video_frames == 6


@pytest.mark.usefixtures("landmarks_offline")
def test_variable_frame_rate_input_is_written_at_its_average_rate(models, tmp_path):
    """Frames of a VFR file are taken in order at its average rate: the output is constant-rate, one
    output frame per audio frame, audio in sync by construction (see latentsync_core.stream)."""
    src = make_face_clip(tmp_path / "cfr.mp4", 6)
    with VideoReader(src) as r:
        frames = r.read(0, 6)
    vfr = tmp_path / "vfr.mp4"
    with av.open(str(vfr), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for rgb, pts in zip(frames, [0, 20, 60, 80, 120, 140]):  # 20 ms and 40 ms frame durations
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts, f.time_base = pts, Fraction(1, 1000)
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    with av.open(str(vfr)) as c:
        gaps = np.diff([p.pts for p in c.demux(c.streams.video[0]) if p.pts is not None])
        assert len(set(gaps.tolist())) > 1  # really variable
    info = probe_video(vfr)
    wav = tmp_path / "s.wav"
    _write_wav(wav, 0.4)
    waveform, rate = load_audio_file(wav)
    out = tmp_path / "out.mp4"
    report = lip_sync_video(str(vfr), str(out), waveform, rate, **models, settings=StreamSettings(**FAST))
    assert report.fps == info.fps and report.num_frames == round(0.4 * float(info.fps))
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(v) if p.pts is not None)
        assert len(pts) == report.num_frames and len(set(np.diff(pts).tolist())) == 1  # constant rate


# --- per-frame audio without the per-frame table -----------------------------------------------------
def test_frame_audio_keeps_features_and_cuts_windows_on_demand(models, speech):
    from latentsync_core.audio import audio_features, frame_audio_chunks

    audio = embed_audio(models["whisper"], *speech, fps=25.0)
    full = frame_audio_chunks(audio_features(models["whisper"], *speech), audio.num_frames, fps=25.0)
    assert audio.table is None and audio.features.shape[1:] == (5, 384)
    assert audio.features.nbytes * 4 < full.nbytes  # 50 Hz x 5 x 384 instead of 50 x 384 per frame
    rows = np.array([19, 0, 17, 17, 3])
    assert torch.equal(audio.windows(rows), full[rows])
    assert torch.equal(audio.windows(), full)
    with pytest.raises(IndexError):
        audio.windows([20])


@pytest.mark.usefixtures("landmarks_offline")
def test_cli_is_a_thin_wrapper_over_the_stream(clip, tmp_path, monkeypatch):
    seen = {}
    real = stream.lip_sync_video

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "lip_sync_video", spy)
    from latentsync_core import cli

    wav = tmp_path / "s.wav"
    _write_wav(wav, 0.12)
    code = cli.main(["--video", str(clip), "--audio", str(wav), "--out", str(tmp_path / "o.mp4"), *TINY,
                     "--steps", "1", "--guidance", "1.0", "--seed", "3", "--no-download", "-q"])
    assert code == 0 and seen["settings"].seed == 3 and seen["settings"].steps == 1


@pytest.mark.usefixtures("landmarks_offline")
def test_cli_blend_mouth_changes_only_the_mouth_and_silence_keeps_the_input(clip, speech, models, tmp_path,
                                                                            monkeypatch):
    """--blend mouth --feather 4 through the CLI: the encoded frames equal paste-back with those options
    (one sampler run), and every pixel outside the mouth blend is the input frame's. With silent audio
    and --silence keep no frame goes through the model: every frame is the input frame."""
    from latentsync_core import cli

    monkeypatch.setattr(stream, "VideoWriter", Recorder)
    Recorder.frames = []
    wav = tmp_path / "s.wav"
    _write_wav(wav, 0.8)
    base = ["--video", str(clip), "--audio", str(wav), *TINY, "--steps", "1", "--guidance", "1.0", "--seed", "7",
            "--no-download", "-q"]
    assert cli.main([*base, "--out", str(tmp_path / "m.mp4"), "--blend", "mouth", "--feather", "4"]) == 0
    got = np.concatenate(Recorder.frames)

    with VideoReader(clip) as r:
        frames = r.read(0, 6)
    aligner = FaceAligner(256)  # the CLI's default max gap (frame 3 is bridged)
    aligned = aligner.align(frames)
    aligner.close()
    audio = embed_audio(models["whisper"], *load_audio_file(wav), fps=25.0)
    index = ping_pong_indices(6, audio.num_frames)
    result = LipSyncPipeline(models["unet"], models["vae"]).sync_faces(
        torch.from_numpy(aligned.faces), audio, source_index=index, found=aligned.found, **FAST)
    expected, weight = paste_back(frames[index], result.faces.float().numpy(), aligned.affines[index], result.generated,
                                  blend="mouth", feather=4, return_mask=True)
    face, face_weight = paste_back(frames[index], result.faces.float().numpy(), aligned.affines[index],
                                   result.generated, return_mask=True)
    assert np.array_equal(got, expected)
    outside = weight == 0
    assert np.array_equal(got[outside], frames[index][outside])  # outside the mouth: the input, bit for bit
    assert 0 < (weight > 0).sum() < 0.5 * (face_weight > 0).sum()
    assert (got != frames[index]).any() and (face != got).any()

    Recorder.frames = []
    silent = tmp_path / "silent.wav"
    with wave.open(str(silent), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(np.zeros(16000, "<i2").tobytes())
    base[3] = str(silent)
    assert cli.main([*base, "--out", str(tmp_path / "s.mp4"), "--silence", "keep"]) == 0
    kept = np.concatenate(Recorder.frames)
    index = ping_pong_indices(6, len(kept))
    assert len(kept) == 25 and np.array_equal(kept, frames[index])


def test_a_much_longer_audio_is_announced_before_work(clip, caplog):
    from latentsync_core.stream import announce_length

    info = probe_video(clip)  # 6 frames = 0.24 s
    with caplog.at_level("INFO", logger="latentsync_core.stream"):
        announce_length(info, 0.4)  # 10 frames: under 2x, no warning
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        announce_length(info, 600.0)  # 10 minutes
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "played back and forth to make 15000 frames" in warning[0], warning
