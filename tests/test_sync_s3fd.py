"""The official face path of the sync score (latentsync_core/sync_s3fd.py): S3FD loading, the official face
tracks, and whole-video scoring on those tracks (``--crops s3fd``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stream import make_face_clip

from latentsync_core import cli
from latentsync_core import sync_s3fd as s3
from latentsync_core import sync_score as ss
from latentsync_core import sync_video as sv
from latentsync_core.audio import load_audio_file
from latentsync_core.errors import CheckpointError, FaceError
from latentsync_core.video_io import VideoReader

SPEECH = "tests/fixtures/audio/en.flac"


def _frames(n: int, *boxes_per_frame) -> list[np.ndarray]:
    """Detections of ``n`` frames: each argument is ``(first, end, box)``, the box present in those frames."""
    out = [[] for _ in range(n)]
    for first, end, box in boxes_per_frame:
        for i in range(first, end):
            out[i].append([*box, 0.99])
    return [np.asarray(d, dtype=np.float64).reshape(-1, 5) for d in out]


# -- the official tracks --------------------------------------------------------------------------------
def test_one_face_with_a_short_gap_is_one_interpolated_track():
    detections = _frames(80, (0, 30, (100, 100, 220, 240)), (40, 80, (110, 100, 230, 240)))  # 10 missing
    tracks = s3.face_tracks(detections)
    assert len(tracks) == 1
    first, end, boxes = tracks[0]
    assert (first, end) == (0, 80) and boxes.shape == (80, 4)
    assert boxes[29, 0] == 100 and boxes[40, 0] == 110 and 100 < boxes[35, 0] < 110  # linear in between


def test_tracks_the_official_rules_drop():
    assert s3.face_tracks(_frames(50, (0, 50, (0, 0, 150, 150)))) == []  # not more than 50 frames
    assert s3.face_tracks(_frames(80, (0, 80, (0, 0, 90, 90)))) == []  # faces of 100 px or less
    far = s3.face_tracks(_frames(200, (0, 60, (0, 0, 150, 150)), (100, 200, (0, 0, 150, 150))))
    assert [(a, b) for a, b, _ in far] == [(0, 60), (100, 200)]  # 40 frames apart: two tracks
    two = s3.face_tracks(_frames(60, (0, 60, (0, 0, 150, 150)), (0, 60, (400, 0, 550, 150))))
    assert sorted(b[0, 0] for _, _, b in two) == [0, 400]  # two people: a track each


def test_use_s3fd_follows_the_crops_option():
    assert s3.use_s3fd("s3fd", False) and s3.use_s3fd("auto", True)
    assert not s3.use_s3fd("auto", False) and not s3.use_s3fd("landmarks", True)


# -- the network ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3fd_file(tmp_path_factory):
    """A random-weight S3FD saved as sfd_face.pth is (a plain state dict)."""
    from test_sync_score_parity import _require_sync_packages

    _require_sync_packages()
    net = s3._s3fd_module().S3FDNet(device="cpu")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("s3fd") / "sfd_face.pth"
    torch.save(net.state_dict(), path)
    return path


def test_s3fd_loads_safely_and_detects(s3fd_file, tmp_path):
    detector = s3.load_s3fd(s3fd_file)
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    (boxes,) = s3.detect(detector, [frame])
    assert boxes.ndim == 2 and boxes.shape[1] == 5
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(CheckpointError, match="bad.pth is not an S3FD face detector"):
        s3.load_s3fd(bad)


class _FixedBox:
    """A stand-in detector: the same face box in every frame (S3FD's detect_faces interface)."""

    box = (100.0, 50.0, 230.0, 210.0, 0.99)

    def __init__(self):
        self.calls = []

    def detect_faces(self, image, conf_th, scales):
        self.calls.append((image.shape, conf_th, tuple(scales)))
        return np.array([self.box])


def test_score_on_official_tracks(syncnet, tmp_path):
    """60 frames: one track (more than 50 frames); the crops are the official geometry on its boxes, and
    the score is score_clip's on those crops."""
    silent = make_face_clip(tmp_path / "c.mp4", 60)
    wave, rate = load_audio_file(SPEECH, sample_rate=16000, mono=True)
    audio = (wave[:, : 60 * 640], rate)
    detector = _FixedBox()
    result = sv.score_video(syncnet, str(silent), audio=audio, detector=detector)
    assert result.crop_path == "s3fd" and [t for t, _ in result.tracks] == [(0, 60)]
    assert detector.calls[0] == ((240, 320, 3), s3.DETECT_CONFIDENCE, (s3.DETECT_SCALE,)) and len(detector.calls) == 60
    with VideoReader(silent) as r:
        frames = r.read(0, 60)
    geometry = sv.smoothed_geometry(np.tile(np.array(_FixedBox.box[:4]), (60, 1)))
    crops = np.stack([sv.crop_face(f, *g) for f, g in zip(frames, geometry)])
    expected = ss.score_clip(syncnet, crops, audio[0][0].numpy(), rate)
    assert result.score.lse_c == pytest.approx(expected.lse_c, abs=1e-6)
    assert result.score.offset == expected.offset and "comparable with papers" in result.summary()
    short = make_face_clip(tmp_path / "short.mp4", 40)  # 40 frames: no official track
    with pytest.raises(FaceError, match="No S3FD face track of more than 50 frames"):
        sv.score_video(syncnet, str(short), audio=audio, detector=_FixedBox())


def test_command_line_uses_s3fd_when_asked_or_present(syncnet_file, s3fd_file, tmp_path, capsys, monkeypatch):
    clip = make_face_clip(tmp_path / "c.mp4", 60)
    seen = {}
    real = sv.score_video

    def spy(model, video, aligner=None, audio=None, progress=None, check_interrupt=None, detector=None):
        seen["aligner"], seen["detector"] = aligner, detector
        return real(model, video, None, audio, progress, check_interrupt, _FixedBox())

    monkeypatch.setattr(sv, "score_video", spy)
    base = ["score", str(clip), "--audio", SPEECH, "--syncnet", str(syncnet_file), "-q", "--no-download",
            "--models", str(tmp_path / "models")]
    assert cli.main([*base, "--crops", "s3fd", "--s3fd", str(s3fd_file)]) == 0
    assert seen["detector"] is not None and seen["aligner"] is None
    assert "crops  s3fd" in capsys.readouterr().out
    # auto: s3fd only when sfd_face.pth is in the models folder; without it, the official path is not downloaded
    assert cli.main([*base, "--crops", "auto"]) == 0
    assert seen["detector"] is None and seen["aligner"] is not None
    target = tmp_path / "models" / "latentsync" / "auxiliary" / "sfd_face.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(s3fd_file.read_bytes())
    capsys.readouterr()
    assert cli.main(base) == 0 and seen["detector"] is not None  # auto is the default
    # s3fd without the weights and --no-download: the usual missing-file message (exit 1)
    target.unlink()
    assert cli.main([*base, "--crops", "s3fd"]) == 1
    assert "auxiliary/sfd_face.pth" in capsys.readouterr().err


def test_writes_nothing(tmp_path):
    """Scoring never writes into the models folder or next to the video (nothing to clean up)."""
    clip = make_face_clip(tmp_path / "c.mp4", 3)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["score", str(clip), "--audio", SPEECH, "--models", str(tmp_path / "m"), "--no-download"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before

