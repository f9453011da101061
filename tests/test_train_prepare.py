"""``python -m latentsync_core prepare`` (latentsync_core/train/prepare.py): a folder of clips built from the
tests' face becomes a dataset the trainer's reader loads; what is dropped is reported with the reason; a rerun
skips finished segments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import FIX, _write_wav
from test_stream import make_face_clip

from latentsync_core import cli
from latentsync_core.audio import audio_features, load_audio_file, load_whisper
from latentsync_core.audio.syncnet_mel import melspectrogram
from latentsync_core.train.dataset import TrainDataset
from latentsync_core.train.prepare import segment_bounds
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
