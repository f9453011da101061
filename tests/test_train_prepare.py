"""``python -m latentsync_core prepare`` (latentsync_core/train/prepare.py): a folder of clips built from the
tests' face becomes a dataset the trainer's reader loads; what is dropped is reported with the reason; a rerun
skips finished segments."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_cli import FIX, _write_wav
from test_stream import make_face_clip

from latentsync_core import cli
from latentsync_core.audio import audio_features, load_audio_file, load_whisper
from latentsync_core.audio.syncnet_mel import melspectrogram
from latentsync_core.train.dataset import TrainDataset
from latentsync_core.train.prepare import scene_segments, segment_bounds, segment_name
from latentsync_core.video_io import VideoReader, VideoWriter

pytestmark = pytest.mark.usefixtures("landmarks_offline")
WHISPER = FIX / "audio" / "whisper_tiny_encoder.pt"


def _with_audio(src: Path, dst: Path, seconds: float) -> None:
    """``src``'s frames with ``seconds`` of the test speech in the file (AAC)."""
    with VideoReader(src) as r:
        frames = r.read(0, r.num_frames)
    wave, rate = load_audio_file(FIX / "audio" / "en.flac", sample_rate=16000, mono=True)
    with VideoWriter(dst, frames.shape[2], frames.shape[1], 25, crf=0,
                     audio=(wave[:, : int(seconds * rate)].numpy(), rate)) as w:
        w.write(frames)
    src.unlink()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("src")
    tmp = tmp_path_factory.mktemp("tmp")
    _with_audio(make_face_clip(tmp / "a.mp4", 60), folder / "a.mp4", 2.4)  # audio in the file
    make_face_clip(folder / "b.mp4", 70)  # a silent video with a same-named audio file beside it
    _write_wav(folder / "b.wav", 2.8)
    _with_audio(make_face_clip(tmp / "c.mp4", 60, grey=tuple(range(60))), folder / "c.mp4", 2.4)  # no face
    _with_audio(make_face_clip(tmp / "d.mp4", 30), folder / "d.mp4", 1.2)  # too short
    make_face_clip(folder / "e.mp4", 60)  # no audio at all
    return folder


def test_segment_bounds():
    assert segment_bounds(60, 50, 48) == [(0, 60)]  # a short last piece joins the one before
    assert segment_bounds(120, 50, 10) == [(0, 50), (50, 100), (100, 120)]
    assert segment_bounds(30, 50, 48) == [(0, 30)]


def test_prepare_writes_a_dataset_and_reports_what_it_dropped(src, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["prepare", str(src), str(out), "--whisper", str(WHISPER), "--no-download", "-q",
            "--max-seconds", "2", "--min-seconds", "1.92"]
    assert cli.main(argv) == 0
    assert "2 kept, 0 skipped, 2 dropped, 1 failed" in capsys.readouterr().out
    report = [json.loads(x) for x in (out / "prepare_report.jsonl").read_text().splitlines()]
    why = {Path(r["source"]).name: (r["status"], r.get("reason", "")) for r in report}
    assert why["a.mp4"][0] == why["b.mp4"][0] == "kept"
    assert why["c.mp4"][0] == "dropped" and "No face found" in why["c.mp4"][1]
    assert why["d.mp4"][0] == "dropped" and "30 frames: under 48" in why["d.mp4"][1]
    assert why["e.mp4"][0] == "failed" and "audio track" in why["e.mp4"][1]

    ds = TrainDataset(str(out))
    assert [(s.name, s.frames) for s in ds.segments] == [("a_00000s", 60), ("b_00000s", 70)]
    with np.load(ds.segments[1].file) as z:
        faces, features, mel = z["faces"], z["features"], z["mel"]
    assert faces.shape == (70, 256, 256, 3) and faces.dtype == np.uint8
    wave, rate = load_audio_file(src / "b.wav", sample_rate=16000, mono=True)
    expected = audio_features(load_whisper(WHISPER), wave[:, : 70 * 640], 16000, mode="official")
    assert torch.allclose(torch.from_numpy(features), expected, atol=1e-5)
    assert np.allclose(mel, melspectrogram(wave[0, : 70 * 640].numpy()), atol=1e-6)
    sample = ds.sample(1, 0, 40)
    assert sample["gt"].shape == (16, 3, 256, 256) and sample["audio_embeds"].shape == (16, 50, 384)

    # a rerun skips what is done; a deleted segment file is made again
    assert cli.main(argv) == 0
    assert "0 kept, 2 skipped" in capsys.readouterr().out
    Path(ds.segments[0].file).unlink()
    assert cli.main(argv) == 0
    assert "1 kept, 1 skipped" in capsys.readouterr().out
    assert [s.name for s in TrainDataset(str(out)).segments] == ["a_00000s", "b_00000s"]


def test_prepare_usage_errors(src, tmp_path, capsys):
    assert cli.main(["prepare", str(tmp_path / "none"), str(tmp_path / "ds")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["prepare", str(src), str(tmp_path / "ds"), "--min-seconds", "8", "--max-seconds", "4"]) == 2
    assert "--min-seconds 8.0 is more than --max-seconds 4.0" in capsys.readouterr().err
    assert cli.main(["prepare", str(src), str(tmp_path / "ds"), "--max-seconds", "100"]) == 2
    assert "--max-seconds 100.0: use 2.0" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["prepare", str(empty), str(tmp_path / "ds"), "--whisper", str(WHISPER)]) == 1
    assert "has no video" in capsys.readouterr().err


# -- scene cuts, face size, sync filter, several processes ------------------------------------------------
def _scene_clip(path: Path, tmp: Path, n: int = 55) -> Path:
    """``n`` frames of the face, then the same frames mirrored: one hard cut at frame ``n`` (both scenes have a
    face)."""
    with VideoReader(make_face_clip(tmp / "face.mp4", n)) as r:
        frames = r.read(0, n)
    with VideoWriter(path, frames.shape[2], frames.shape[1], 25, crf=0) as w:
        w.write(np.concatenate([frames, np.ascontiguousarray(frames[:, :, ::-1])]))
    return path


@pytest.fixture(scope="module")
def src2(tmp_path_factory) -> Path:
    """Three sources with faces: a (2.4 s, audio in the file), b (2.8 s, audio beside), s (4.4 s, a scene cut at
    2.2 s, audio beside)."""
    folder, tmp = tmp_path_factory.mktemp("src2"), tmp_path_factory.mktemp("tmp2")
    _with_audio(make_face_clip(tmp / "a.mp4", 60), folder / "a.mp4", 2.4)
    make_face_clip(folder / "b.mp4", 70)
    _write_wav(folder / "b.wav", 2.8)
    _scene_clip(folder / "s.mp4", tmp)
    _write_wav(folder / "s.wav", 4.4)
    return folder


def _report(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "prepare_report.jsonl").read_text().splitlines()]


SHORT = ["--whisper", str(WHISPER), "--no-download", "-q", "--max-seconds", "2", "--min-seconds", "1.92"]


def test_scene_segments_and_names():
    assert scene_segments(110, [], 50, 48) == [(0, 50), (50, 110)]
    assert scene_segments(110, [55], 50, 48) == [(0, 55), (55, 110)]  # no segment crosses the cut
    assert scene_segments(160, [20, 130], 50, 11) == [(0, 20), (20, 70), (70, 130), (130, 160)]
    assert scene_segments(60, [0, 60, 99], 50, 48) == [(0, 60)]  # cuts at the edges or past the end: none
    assert segment_name("x", 0) == "x_00000s" and segment_name("x", 50) == "x_00002s"
    assert segment_name("x", 55) == "x_00002s05f"  # not on a whole second: still unique


def test_a_scene_cut_splits_the_source(src2, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    for name in ("s.mp4", "s.wav"):
        (one / name).symlink_to(src2 / name)
    cut, flat = tmp_path / "cut", tmp_path / "flat"
    assert cli.main(["prepare", str(one), str(cut), *SHORT]) == 0  # scene detection on by default
    assert "2 kept, 0 skipped" in capsys.readouterr().out
    assert [(s.name, s.frames) for s in TrainDataset(str(cut)).segments] == [("s_00000s", 55), ("s_00002s05f", 55)]
    assert cli.main(["prepare", str(one), str(flat), *SHORT, "--scene-threshold", "0"]) == 0
    capsys.readouterr()
    assert [(s.name, s.frames) for s in TrainDataset(str(flat)).segments] == [("s_00000s", 50), ("s_00002s", 60)]
    assert cli.main(["prepare", str(one), str(cut), *SHORT]) == 0  # the same names again: all skipped
    assert "0 kept, 2 skipped" in capsys.readouterr().out
    wave, _ = load_audio_file(src2 / "s.wav", sample_rate=16000, mono=True)
    with np.load(TrainDataset(str(cut)).segments[1].file) as z:  # the second scene's own audio
        assert np.allclose(z["mel"], melspectrogram(wave[0, 55 * 640: 110 * 640].numpy()), atol=1e-6)
    assert [r["first_frame"] for r in _report(cut)] == [0, 55]


def test_min_face_drops_small_faces(src2, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.mp4").symlink_to(src2 / "a.mp4")
    assert cli.main(["prepare", str(one), str(tmp_path / "big"), *SHORT, "--min-face", "64"]) == 1
    assert "0 kept, 0 skipped, 1 dropped" in capsys.readouterr().out
    (line,) = _report(tmp_path / "big")
    assert line["status"] == "dropped" and "under --min-face 64" in line["reason"]
    assert 40 < line["face_px"] < 52  # the test face: about 46 px in its 320x240 frame
    assert cli.main(["prepare", str(one), str(tmp_path / "small"), *SHORT, "--min-face", "40"]) == 0
    assert "1 kept" in capsys.readouterr().out


def _fixed_score(monkeypatch, offset: int, lse_c: float) -> None:
    """The segment's sync score, whatever its frames: the rule alone is tested."""
    import latentsync_core.sync_video as sv

    score = sv.AggregateScore(offset=offset, lse_c=lse_c, lse_d=7.0)
    monkeypatch.setattr(sv, "score_landmarks", lambda *a, **k: SimpleNamespace(score=score))


@pytest.mark.parametrize(("offset", "lse_c", "kept"), [(3, 5.0, True), (-6, 3.0, True), (0, 2.9, False),
                                                       (7, 9.0, False)])
def test_sync_filter_keeps_and_shifts_by_the_official_rule(src2, tmp_path, monkeypatch, offset, lse_c, kept):
    from latentsync_core.face import FaceAligner
    from latentsync_core.options import PrepareOptions
    from latentsync_core.sync_video import shift_audio
    from latentsync_core.train.prepare import prepare

    one = tmp_path / "one"
    one.mkdir()
    for name in ("b.mp4", "b.wav"):
        (one / name).symlink_to(src2 / name)
    _fixed_score(monkeypatch, offset, lse_c)
    options = PrepareOptions(max_seconds=2.0, min_seconds=1.92, scene_threshold=0.0, sync_filter=True)
    aligner = FaceAligner()
    try:
        counts = prepare(str(one), str(tmp_path / "ds"), load_whisper(WHISPER), aligner, options, syncnet=object())
    finally:
        aligner.close()
    (line,) = _report(tmp_path / "ds")
    assert (line["lse_c"], line["offset_frames"]) == (lse_c, offset)
    assert counts["kept"] == int(kept) and line["status"] == ("kept" if kept else "dropped")
    if not kept:
        assert "sync: LSE-C" in line["reason"] and not (tmp_path / "ds" / "segments").exists()
        return
    (segment,) = TrainDataset(str(tmp_path / "ds")).segments
    manifest = json.loads((tmp_path / "ds" / "manifest.jsonl").read_text())
    assert (manifest["lse_c"], manifest["offset_frames"]) == (lse_c, offset)
    wave, _ = load_audio_file(src2 / "b.wav", sample_rate=16000, mono=True)
    shifted = shift_audio(wave[:, : 70 * 640], 16000, offset)  # the audio moved by the offset, then mel + whisper
    with np.load(segment.file) as z:
        assert np.allclose(z["mel"], melspectrogram(shifted[0].numpy()), atol=1e-6)
        assert not np.allclose(z["mel"], melspectrogram(wave[0, : 70 * 640].numpy()), atol=1e-3)
        expected = audio_features(load_whisper(WHISPER), shifted, 16000, mode="official")
        assert torch.allclose(torch.from_numpy(z["features"]), expected, atol=1e-5)


def test_sync_filter_scores_with_the_syncnet(src2, syncnet, syncnet_file, tmp_path, capsys):
    """The command loads the syncnet only for --sync-filter, and scores each segment on its landmark crops."""
    from latentsync_core.face import FaceAligner
    from latentsync_core.sync_video import ArrayFrames, score_landmarks, trusted

    one = tmp_path / "one"
    one.mkdir()
    for name in ("b.mp4", "b.wav"):
        (one / name).symlink_to(src2 / name)
    models = tmp_path / "models"  # no syncnet_v2.model there: a clear error before any work
    assert cli.main(["prepare", str(one), str(tmp_path / "x"), *SHORT, "--sync-filter", "--models", str(models)]) == 1
    assert "syncnet" in capsys.readouterr().err.lower() and not (tmp_path / "x").exists()
    out = tmp_path / "ds"
    argv = ["prepare", str(one), str(out), *SHORT, "--sync-filter", "--syncnet", str(syncnet_file)]
    assert cli.main(argv) in (0, 1)
    capsys.readouterr()
    (line,) = _report(out)
    with VideoReader(one / "b.mp4") as r:
        frames = r.read(0, 70)
    wave, _ = load_audio_file(one / "b.wav", sample_rate=16000, mono=True)
    aligner = FaceAligner()
    try:
        aligned = aligner.align(list(frames))
    finally:
        aligner.close()
    score = score_landmarks(syncnet, ArrayFrames(frames), aligned.landmarks, aligned.found,
                            (wave[:, : 70 * 640], 16000)).score
    assert line["offset_frames"] == score.offset and line["lse_c"] == pytest.approx(score.lse_c, abs=1e-3)
    assert line["status"] == ("kept" if trusted(score) else "dropped")


def test_two_processes_make_the_same_dataset_as_one(src2, tmp_path):
    """torchrun-style RANK / WORLD_SIZE: two processes at once share the sources and append to one manifest."""
    import os
    import subprocess
    import sys

    single, double = tmp_path / "single", tmp_path / "double"
    assert cli.main(["prepare", str(src2), str(single), *SHORT]) == 0
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "latentsync_core", "prepare", str(src2), str(double), *SHORT],
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=root) for rank in (0, 1)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert "3 kept" in results[0][0] and "1 kept" in results[1][0]  # rank 0: a, s (2 segments); rank 1: b
    one, two = TrainDataset(str(single)).segments, TrainDataset(str(double)).segments
    assert sorted(s.name for s in one) == sorted(s.name for s in two) == [
        "a_00000s", "b_00000s", "s_00000s", "s_00002s05f"]
    for a in one:
        b = next(s for s in two if s.name == a.name)
        with np.load(a.file) as x, np.load(b.file) as y:
            assert np.array_equal(x["faces"], y["faces"]) and np.array_equal(x["mel"], y["mel"])
            assert np.allclose(x["features"], y["features"], atol=1e-6)
    assert len(_report(double)) == len(_report(single)) == 4


def _append_many(path: str, tag: int) -> None:
    from latentsync_core.train.dataset import append_line

    for i in range(200):
        append_line(path, {"tag": tag, "i": i, "pad": "x" * 9000})  # longer than a pipe's atomic 4 KiB


def test_lines_appended_by_several_processes_never_interleave(tmp_path):
    import multiprocessing

    path = str(tmp_path / "m.jsonl")
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, t)) for t in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert sorted((x["tag"], x["i"]) for x in lines) == [(t, i) for t in range(3) for i in range(200)]
