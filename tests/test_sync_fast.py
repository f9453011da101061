"""The fast sync signal (latentsync_core/sync_fast.py) and the SyncNet mel (audio/syncnet_mel.py), against
the official training batch and StableSyncNet check in LATENTSYNC_GOLDEN_TRAIN (README: batch.npz,
syncnet_forward.npz; clip0 speaks ``audio/en``, clip1 ``audio/cmn``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync_core.audio.io import load_audio_file
from latentsync_core.audio.syncnet_mel import mel_window, melspectrogram
from latentsync_core.errors import AudioError, InputMismatchError
from latentsync_core.sync_fast import fast_sync_score, visual_windows
from latentsync_core.train.syncnet import load_stable_syncnet, syncnet_config_from_yaml

GOLDEN = Path(os.environ.get("LATENTSYNC_GOLDEN_TRAIN") or Path(__file__).parent / "fixtures" / "train")
AUDIO = Path(__file__).parent / "fixtures" / "audio"
CLIP_AUDIO = {"data/clip0.mp4": "en", "data/clip1.mp4": "cmn"}  # the golden README's clips
TOL_MEL = 1e-6  # the reference is float32 of a float64 computation: 1.5e-7 measured
TOL_SIM = 1e-5  # cosine similarity, float32 network: 4e-8 measured


def _wav(clip: str) -> np.ndarray:
    wave, rate = load_audio_file(AUDIO / f"{CLIP_AUDIO[str(clip)]}.flac")
    assert rate == 16000
    return wave[0].numpy()


@pytest.fixture(scope="module")
def batch():
    with np.load(GOLDEN / "batch.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def tiny_syncnet():
    return load_stable_syncnet(GOLDEN / "syncnet_tiny_random.pt", syncnet_config_from_yaml(GOLDEN / "syncnet_tiny.yaml"))


@pytest.mark.parametrize("prefix", ["", "step2/"], ids=["step1", "step2"])
def test_mel_windows_match_the_official_dataset(batch, prefix):
    for b, (clip, start) in enumerate(zip(batch[prefix + "clip"], batch[prefix + "start_idx"])):
        got = mel_window(melspectrogram(_wav(clip)), int(start))
        ref = batch[prefix + "mel"][b, 0]
        assert got.shape == ref.shape == (80, 52)
        assert np.abs(got - ref).max() < TOL_MEL, (clip, start)


def test_mel_errors():
    with pytest.raises(AudioError, match="empty"):
        melspectrogram(np.zeros(0))
    with pytest.raises(AudioError, match="the audio has 41"):
        mel_window(melspectrogram(np.zeros(8000)), 10)  # 0.5 s: 41 columns, the window needs 32-83


def test_fast_score_matches_the_official_syncnet_check(batch, tiny_syncnet):
    """In-sync windows (gt faces with their mel) and out-of-sync ones (reference faces with the gt mel) give
    the official check's similarities."""
    with np.load(GOLDEN / "syncnet_forward.npz") as z:
        sims, stats = z["sims"], z["visual_input_stats"]
    faces = torch.from_numpy(batch["faces"])
    for b, (clip, start) in enumerate(zip(batch["clip"], batch["start_idx"])):
        for k, which in ((b, "gt_face_index"), (b + 2, "ref_face_index")):
            frames = faces[batch[which][b]]
            score = fast_sync_score(tiny_syncnet, frames, _wav(clip), first_frame=int(start))
            assert score.starts.tolist() == [0] and abs(score.similarities[0] - sims[k]) < TOL_SIM, (clip, which)
            visual = visual_windows(frames, np.array([0]))
            assert visual.shape == (1, 48, 128, 256)
            assert np.allclose([visual.mean(), visual.std(), visual.min(), visual.max()], stats[k][:4], atol=1e-5)
    assert "not LSE" in score.summary()


def test_fast_score_windows_and_errors(batch, tiny_syncnet):
    faces = torch.from_numpy(batch["faces"][[*range(16), *range(15, -1, -1), *range(8)]])  # 40 frames: 2 windows
    wav = _wav(batch["clip"][0])
    score = fast_sync_score(tiny_syncnet, faces, wav)
    assert score.starts.tolist() == [0, 16] and score.mean == pytest.approx(score.similarities.mean())
    short = fast_sync_score(tiny_syncnet, faces, wav[: int(16000 * 1.0)])  # audio for one window only
    assert short.starts.tolist() == [0]
    with pytest.raises(InputMismatchError, match="at least 16 frames"):
        fast_sync_score(tiny_syncnet, faces[:15], wav)
    big = torch.nn.functional.interpolate(faces[:16].permute(0, 3, 1, 2).float(), size=512).permute(0, 2, 3, 1)
    assert visual_windows(big.round().to(torch.uint8), np.array([0])).shape == (1, 48, 128, 256)  # 1.6's 512 px


@pytest.mark.usefixtures("landmarks_offline")
def test_fast_score_of_a_video_file_equals_the_in_memory_one(tiny_syncnet, tmp_path, monkeypatch, capsys):
    """Streamed from the file (landmarks, track, 8 windows of aligned faces at a time) = aligned in memory,
    and the score command's ``--scorer fast`` prints the same figure, labelled not LSE."""
    import json

    from test_stream import make_face_clip

    from latentsync_core import cli
    from latentsync_core.face import FaceAligner
    from latentsync_core.sync_fast import fast_score_video
    from latentsync_core.train import syncnet as syncnet_module
    from latentsync_core.video_io import VideoReader

    clip = make_face_clip(tmp_path / "c.mp4", 40)
    wav = _wav("data/clip0.mp4")
    aligner = FaceAligner()
    try:
        streamed = fast_score_video(tiny_syncnet, str(clip), aligner, audio=(torch.from_numpy(wav)[None], 16000))
        with VideoReader(clip) as r:
            aligned = aligner.align(r.read(0, 40))
    finally:
        aligner.close()
    in_memory = fast_sync_score(tiny_syncnet, torch.from_numpy(np.asarray(aligned.faces)), wav)
    assert streamed.starts.tolist() == [0, 16]
    assert np.allclose(streamed.similarities, in_memory.similarities, atol=1e-6)

    monkeypatch.setattr(syncnet_module, "load_stable_syncnet", lambda *a, **k: tiny_syncnet)
    weights = tmp_path / "stable_syncnet.pt"
    weights.write_bytes(b"stand-in: the loader is replaced by the tiny network")
    code = cli.main(["score", str(clip), "--audio", str(AUDIO / "en.flac"), "--scorer", "fast", "--stable-syncnet",
                     str(weights), "--json", "-q", "--no-download"])
    assert code == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["scorer"] == "fast" and "not LSE" in figures["label"] and figures["windows"] == 2
    assert figures["similarity"] == pytest.approx(streamed.mean, abs=1e-6)
