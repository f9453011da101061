"""The sync score of a whole video (latentsync_core/sync_video.py), its command (``score``) and its node.

The network is the reference's random-weight ``syncnet_v2`` (LATENTSYNC_GOLDEN_SYNC); the clips are the
tests' real face. Random weights make the figures meaningless as lip-sync quality, so these tests prove the
wiring: the official crop geometry, the same numbers from library, command line and node, and errors
before any work. The computation itself is proven against the official code in test_sync_score_parity.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from comfy_api.input_impl import VideoFromFile
from test_stream import make_face_clip

from latentsync_core import cli
from latentsync_core import sync_video as sv
from latentsync_core.audio import load_audio_file
from latentsync_core.errors import AudioError, FaceError
from latentsync_core.video_io import VideoReader, VideoWriter

pytestmark = pytest.mark.usefixtures("landmarks_offline")
SPEECH = "tests/fixtures/audio/en.flac"


# -- the official crop ----------------------------------------------------------------------------------
def test_crop_geometry_is_the_official_one():
    """A face box of half-size s centred at (x, y): the crop spans rows y - s .. y + 1.8 s and columns
    x ± 1.4 s (crop scale 0.4), so the box fills rows 0..160 and columns 32..192 of the 224 crop."""
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[150:250, 160:260] = 255  # the box: s = 50, centre (210, 200)
    crop = sv.crop_face(frame, 50.0, 210.0, 200.0)
    assert crop.shape == (224, 224, 3)
    rows, cols = np.nonzero(crop[..., 0] > 127)
    assert abs(rows.min() - 0) <= 1 and abs(rows.max() + 1 - 160) <= 1
    assert abs(cols.min() - 32) <= 1 and abs(cols.max() + 1 - 192) <= 1
    # near an edge the frame is padded with the official grey 110
    edge = sv.crop_face(frame, 50.0, 10.0, 10.0)
    assert (edge[0, 0] == 110).all()


def test_box_size_and_centre_are_median_filtered():
    boxes = np.tile([100.0, 100.0, 200.0, 220.0], (30, 1))
    boxes[15] += 40  # one jumpy detection
    s, x, y = sv.smoothed_geometry(boxes).T
    assert np.allclose(s[6:-6], 60) and np.allclose(x[6:-6], 150) and np.allclose(y[6:-6], 160)


def test_frames_at_25fps():
    assert sv.frames_at_25fps(10, 25.0).tolist() == list(range(10))
    assert sv.frames_at_25fps(10, 50.0).tolist() == [0, 2, 4, 6, 8]
    assert sv.frames_at_25fps(6, 30.0).tolist() == [0, 1, 2, 3, 4]  # 0.2 s: frames at 0, 40, 80, 120, 160 ms


def test_fixing_the_offset():
    wave = torch.arange(1, 1601, dtype=torch.float32).reshape(1, -1)  # 0.1 s at 16 kHz
    early = sv.shift_audio(wave, 16000, 1)  # the sound came 1 frame (640 samples) early: delay it
    assert early.shape == wave.shape and (early[0, :640] == 0).all() and torch.equal(early[0, 640:], wave[0, :960])
    late = sv.shift_audio(wave, 16000, -1)
    assert torch.equal(late[0, :960], wave[0, 640:]) and (late[0, 960:] == 0).all()
    assert (sv.shift_audio(wave, 16000, 100) == 0).all()  # more than the clip: silence, no error
    score = sv.AggregateScore
    assert sv.fixable(score(offset=3, lse_c=5.0, lse_d=7.0))
    assert not sv.fixable(score(offset=3, lse_c=2.9, lse_d=7.0))  # not confident enough
    assert not sv.fixable(score(offset=7, lse_c=9.0, lse_d=7.0))  # too far: likely a wrong minimum
    assert not sv.fixable(score(offset=0, lse_c=9.0, lse_d=7.0))


# -- whole videos ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory):
    """40 frames (1.6 s) of the test face with 1.6 s of speech in the file."""
    folder = tmp_path_factory.mktemp("score")
    silent = make_face_clip(folder / "silent.mp4", 40)
    with VideoReader(silent) as r:
        frames = r.read(0, 40)
    wave, rate = load_audio_file(SPEECH, sample_rate=16000, mono=True)
    path = folder / "talking.mp4"
    with VideoWriter(path, frames.shape[2], frames.shape[1], 25, crf=0, audio=(wave[:, :25600].numpy(), rate)) as w:
        w.write(frames)
    return path, silent, frames


class _NoDetection:
    """An aligner that fails the test if faces are looked for (errors must come first)."""

    def detect(self, frames):
        raise AssertionError("face detection ran before the input was checked")


def test_library_command_and_node_give_the_same_numbers(syncnet, syncnet_file, clip_with_audio, pack, comfy_base,
                                                        capsys):
    from latentsync_core.face import FaceAligner

    path = clip_with_audio[0]
    aligner = FaceAligner()
    try:
        lib = sv.score_video(syncnet, str(path), aligner)
    finally:
        aligner.close()
    assert lib.crop_path == "landmarks" and lib.frames == 40 and len(lib.tracks) == 1
    assert lib.tracks[0][0] == (0, 40) and lib.tracks[0][1].num_windows == 35  # 40 frames - 5
    assert np.isfinite([lib.score.lse_c, lib.score.lse_d]).all() and -15 <= lib.score.offset <= 15

    code = cli.main(["score", str(path), "--syncnet", str(syncnet_file), "--json", "-q", "--no-download"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["lse_c"] == pytest.approx(lib.score.lse_c, abs=1e-5)
    assert figures["lse_d"] == pytest.approx(lib.score.lse_d, abs=1e-5)
    assert figures["offset_frames"] == lib.score.offset and figures["crop_path"] == "landmarks"

    target = comfy_base / "models" / "latentsync" / "auxiliary" / "syncnet_v2.model"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(syncnet_file.read_bytes())
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncSyncScore"]()
    out = node.score("auxiliary/syncnet_v2.model", video=VideoFromFile(str(path)), face="largest", face_index=0)
    lse_c, lse_d, offset, offset_ms, summary, plot, fixed = out["result"]
    assert (lse_c, lse_d, offset) == pytest.approx((lib.score.lse_c, lib.score.lse_d, lib.score.offset), abs=1e-5)
    assert offset_ms == offset * 40 and out["ui"]["text"] == [summary] and "LSE-C" in summary
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= float(plot.min()) and float(plot.max()) <= 1
    assert fixed["waveform"].ndim == 3 and not sv.fixable(lib.score)  # unchanged audio: the file's own
    assert torch.equal(fixed["waveform"][0], load_audio_file(path)[0]) and fixed["sample_rate"] == load_audio_file(path)[1]
    # IMAGE frames + AUDIO: the same frames, the same numbers
    wave, rate = load_audio_file(path, sample_rate=16000, mono=True)  # the file's audio, as score_video reads it
    speech = {"waveform": wave.unsqueeze(0), "sample_rate": rate}
    with VideoReader(path) as r:
        frames = r.read(0, 40)  # the frames as the file holds them
    image_out = node.score("auxiliary/syncnet_v2.model", images=torch.from_numpy(frames).float() / 255,
                           audio=speech, fps=25.0, face="largest", face_index=0)["result"]
    assert image_out[:3] == pytest.approx(out["result"][:3], abs=1e-5)


def test_bad_input_fails_before_the_work(syncnet, clip_with_audio, tmp_path):
    path, silent, _ = clip_with_audio
    wave, rate = load_audio_file(SPEECH, sample_rate=16000, mono=True)
    with pytest.raises(AudioError, match="too short to score"):
        sv.score_video(syncnet, str(path), _NoDetection(), audio=(wave[:, :8000], rate))
    with pytest.raises(AudioError, match="silent"):
        sv.score_video(syncnet, str(path), _NoDetection(), audio=(torch.zeros(1, 32000), rate))
    with pytest.raises(AudioError, match="no audio track|without an audio track"):
        sv.score_video(syncnet, str(silent), _NoDetection())
    grey = make_face_clip(tmp_path / "grey.mp4", 30, grey=tuple(range(30)))
    from latentsync_core.face import FaceAligner

    aligner = FaceAligner()
    try:
        with pytest.raises(FaceError, match=r"No face track of at least 1 s .* no face in frames 0-29"):
            sv.score_video(syncnet, str(grey), aligner, audio=(wave, rate))
    finally:
        aligner.close()


def test_command_line_errors_are_one_line_before_work(tmp_path, capsys):
    assert cli.main(["score", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert cli.main(["score", str(tmp_path / "none.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err
    clip = make_face_clip(tmp_path / "c.mp4", 3)
    assert cli.main(["score", str(clip), "--face", "-1"]) == 2
    assert "--face -1" in capsys.readouterr().err
    assert cli.main(["score", str(clip), "--audio", SPEECH, "--models", str(tmp_path), "--no-download"]) == 1
    err = capsys.readouterr().err
    assert "auxiliary/syncnet_v2.model" in err and "--no-download" in err


def test_node_lists_only_syncnet_v2_files(pack, comfy_base):
    folder = comfy_base / "models" / "latentsync"
    (folder / "auxiliary").mkdir(parents=True, exist_ok=True)
    for name in ("auxiliary/my_syncnet_v2.pt", "some_unet.pt"):  # syncnet_v2.model is always offered
        (folder / name).write_bytes(b"x")
    choices = pack.NODE_CLASS_MAPPINGS["LatentSyncSyncScore"].INPUT_TYPES()["required"]["syncnet"][0]
    assert "auxiliary/syncnet_v2.model" in choices and "auxiliary/my_syncnet_v2.pt" in choices
    assert "some_unet.pt" not in choices
    (folder / "some_unet.pt").unlink()
    (folder / "auxiliary" / "my_syncnet_v2.pt").unlink()
