"""Parity of latentsync_core.sync_score with the official SyncNet evaluation (LSE-C, LSE-D, AV offset).

Reference: the folder in ``LATENTSYNC_GOLDEN_SYNC`` (default ``tests/fixtures/sync``; its README.md explains
every file and the tolerances). Every input and expected number is read from that folder (weights, frames,
audio, features, distances, scores, the case-b shift, the aggregation crops), so the same tests pass on a
folder made by the same script with another seed, frame order and shift.

``source_crops.npz`` is ours, not the official script's: the 16 RGB source frames the reference videos were
made from, cropped by ``crop_box_y0y1x0x1`` from ``golden/face/face_clip.npz`` (``crops`` [16, 160, 160, 3]
uint8). The videos' frames are ``cv2.resize(crop, (S, S), INTER_AREA)`` (sha256 in the folder's ``meta.json``)
in the order ``videos.npz`` ``K_source_index``. A folder without that file uses the default folder's copy.

The network and ``calc_pdist`` come from syncnet-python (installed ``--no-deps``); when it or
python_speech_features is missing those tests skip, unless ``LATENTSYNC_REQUIRE_SYNC=1`` (as in ``.ci/run``)
makes that a failure.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync_core import sync_score as ss
from latentsync_core.errors import (
    AudioError,
    CheckpointError,
    FaceError,
    InputMismatchError,
    LatentSyncError,
    ModelMissingError,
)

DEFAULT_FOLDER = Path(__file__).parent / "fixtures" / "sync"
GOLDEN = Path(os.environ.get("LATENTSYNC_GOLDEN_SYNC") or DEFAULT_FOLDER)
CASES = "abcde"

# README "Expected parity for a correct float32 re-implementation"
TOL_FEAT = 1e-4  # im_feat, cc_feat: max abs
TOL_DIST = 1e-4  # dists, mean_dists: max abs
TOL_LSE = 1e-4  # LSE-D, LSE-C: abs
TOL_MFCC = 1e-5
# Ours (measured on the default folder; see the report in the test docstrings)
JPEG_MEAN_ABS = 0.05  # fed frames from our PyAV JPEGs vs the reference's: 0.008 (224²), 0.007 (256²)
JPEG_EQUAL_FRACTION = 0.97  # share of identical pixel values: 0.994, 0.995
JPEG_LSE = 0.05  # LSE from our JPEGs vs the reference (case c end to end)


def _meta() -> dict:
    return json.loads((GOLDEN / "meta.json").read_text())


def _case(name: str) -> dict:
    with np.load(GOLDEN / f"case_{name}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def videos() -> dict:
    with np.load(GOLDEN / "videos.npz") as z:
        return {k: z[k] for k in z.files}


def _fed(videos: dict, key: str) -> np.ndarray:
    return videos[f"{key}_fed_unique_bgr"][videos[f"{key}_fed_index"]]


def _require_sync_packages() -> None:
    missing = []
    try:
        ss._syncnet_python()  # the two syncnet-python files, loaded as the library loads them
    except LatentSyncError as exc:
        missing.append(f"syncnet-python ({exc.__cause__})")
    for module in ("python_speech_features", "scipy.signal"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    if missing:
        if os.environ.get("LATENTSYNC_REQUIRE_SYNC"):
            pytest.fail(f"LATENTSYNC_REQUIRE_SYNC is set but the sync-score packages are missing: {missing}")
        pytest.skip(f"sync-score packages not installed ({', '.join(missing)}): {ss.INSTALL_HINT}")


@pytest.fixture(scope="module")
def model_file(syncnet_file) -> Path:
    """``syncnet_v2.model`` as README.md says to make it: a plain float32 state dict (conftest's syncnet_file)."""
    return syncnet_file


@pytest.fixture(scope="module")
def model(syncnet):
    return syncnet


@pytest.fixture(scope="module")
def video_feats(model, videos) -> dict:
    """Our video features of every window of each reference video, from the stored fed frames.

    The videos repeat their source frames, so only the distinct 5-frame windows go through the network (each
    computed by ``video_features`` at its first start) and are copied to the repeats."""
    out = {}
    for key in sorted({str(_case(c)["video"]) for c in CASES}):
        index = videos[f"{key}_fed_index"]
        windows = len(index) - ss.WINDOW_FRAMES + 1
        first: dict[tuple, int] = {}
        for v in range(windows):
            first.setdefault(tuple(index[v : v + ss.WINDOW_FRAMES]), v)
        feats = ss.video_features(model, _fed(videos, key), list(first.values()))
        row = {window: i for i, window in enumerate(first)}
        out[key] = feats[[row[tuple(index[v : v + ss.WINDOW_FRAMES])] for v in range(windows)]]
    return out


@pytest.fixture(scope="module")
def our_scores(model, video_feats) -> dict:
    """SyncScore of every case from our features (our MFCC, network, distances)."""
    scores = {}
    for c in CASES:
        z = _case(c)
        n = ss.num_windows(int(z["num_frames"]), len(z["pcm"]))
        audio = ss.audio_features(model, ss.mfcc(z["pcm"], int(z["sample_rate"])), n)
        scores[c] = (video_feats[str(z["video"])][:n], audio, ss.score_features(video_feats[str(z["video"])][:n], audio))
    return scores


def _max_abs(a, b) -> float:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.max(np.abs(a.astype(np.float64) - np.asarray(b, dtype=np.float64))))


# -- weights ----------------------------------------------------------------------------------------------


def test_weights_load_exactly(model):
    with np.load(GOLDEN / "syncnet_v2_random.npz") as weights:
        state = model.state_dict()
        assert {k for k in state if not k.endswith("num_batches_tracked")} == set(weights.files)
        for k in weights.files:
            assert torch.equal(state[k], torch.from_numpy(weights[k]).float()), k  # float16 values are exact in float32
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_weights_errors_name_the_file(tmp_path, model_file):
    wrong = tmp_path / "not_syncnet.model"
    torch.save({"netfclip.3.weight": torch.zeros(512, 512), "extra.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="not_syncnet.model") as info:
        ss.load_syncnet_v2(wrong)
    message = str(info.value)
    assert "missing" in message and "unexpected" in message and "netfclip.3.weight" in message
    with pytest.raises(ModelMissingError, match="nowhere.model"):
        ss.load_syncnet_v2(tmp_path / "nowhere.model")


# -- audio ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_mfcc_and_window_count(case):
    _require_sync_packages()
    z = _case(case)
    got = ss.mfcc(z["pcm"], int(z["sample_rate"]))
    assert got.shape == z["mfcc"].shape
    assert _max_abs(got, z["mfcc"]) <= TOL_MFCC
    n = ss.num_windows(int(z["num_frames"]), len(z["pcm"]))
    assert n == int(z["min_length"]) - ss.WINDOW_FRAMES == len(z["im_feat"]) == len(z["dists"])


def test_float_audio_becomes_the_same_int16():
    pcm = _case("a")["pcm"]
    assert np.array_equal(ss.pcm16(pcm.astype(np.float32) / 32768.0), pcm)
    assert np.array_equal(ss.pcm16(torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]), pcm)
    assert ss.pcm16(np.array([1.5, -1.5, 0.5 / 32768])).tolist() == [32767, -32768, 0]  # clipped; half to even


# -- features, distances, scores --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_features_match(case, our_scores):
    z = _case(case)
    video, audio, _ = our_scores[case]
    assert video.shape == audio.shape == z["im_feat"].shape
    assert _max_abs(video, z["im_feat"]) <= TOL_FEAT
    assert _max_abs(audio, z["cc_feat"]) <= TOL_FEAT


def _check_score(score: ss.SyncScore, z: dict) -> None:
    assert score.dists.shape == z["dists"].shape
    assert _max_abs(score.dists, z["dists"]) <= TOL_DIST
    assert _max_abs(score.mean_dists, z["mean_dists"]) <= TOL_DIST
    assert score.min_index == int(z["minidx"])
    assert score.offset == int(z["av_offset"]) == score.vshift - score.min_index
    assert abs(score.lse_d - float(z["min_dist"])) <= TOL_LSE
    assert abs(score.lse_c - float(z["conf"])) <= TOL_LSE
    assert abs(score.median - float(z["median"])) <= TOL_LSE
    assert score.per_frame_conf.shape == z["framewise_conf"].shape
    assert _max_abs(score.per_frame_conf, z["framewise_conf"]) <= TOL_DIST


@pytest.mark.parametrize("case", CASES)
def test_scores_from_stored_features(case):
    """calc_pdist, mean, min, median, offset and the per-frame curve alone, from the reference features."""
    _require_sync_packages()
    z = _case(case)
    _check_score(ss.score_features(torch.from_numpy(z["im_feat"]), torch.from_numpy(z["cc_feat"])), z)


@pytest.mark.parametrize("case", CASES)
def test_scores_from_our_features(case, our_scores):
    """The whole chain from the fed frames and the PCM: our MFCC, network and scoring."""
    _check_score(our_scores[case][2], _case(case))


def test_shifted_audio_moves_the_offset(our_scores):
    shift = int(_meta()["shift_frames_case_b"])
    assert shift != 0
    assert our_scores["b"][2].offset - our_scores["a"][2].offset == shift


def test_official_aggregation(our_scores):
    aggregation = _meta()["aggregation"]
    scores = [our_scores[c][2] for c in aggregation["crops_cases"]]
    got = ss.aggregate(scores)
    assert got.offset == int(aggregation["av_offset"])
    assert abs(got.lse_c - float(aggregation["conf"])) <= TOL_LSE
    assert abs(got.lse_d - float(np.mean([s.lse_d for s in scores]))) <= 1e-9


def test_aggregation_truncates_toward_zero():
    def fake(offset):
        return ss.SyncScore(offset, 1.0, 5.0, np.zeros(31, np.float32), np.zeros((1, 31), np.float32),
                            np.zeros(1, np.float32), 6.0, ss.VSHIFT - offset)

    assert ss.aggregate([fake(0), fake(3)]).offset == 1  # 1.5 -> 1 (round would give 2)
    assert ss.aggregate([fake(-3), fake(0)]).offset == -1  # -1.5 -> -1 (floor would give -2)
    assert fake(2).offset_ms == pytest.approx(80.0)
    with pytest.raises(FaceError):
        ss.aggregate([])


# -- the JPEG round trip ----------------------------------------------------------------------------------


def _source_frames(videos: dict, key: str) -> np.ndarray:
    """RGB frames of video ``key`` rebuilt from source_crops.npz (skips if this folder used other sources)."""
    import cv2

    crops_file = GOLDEN / "source_crops.npz"
    if not crops_file.is_file():
        crops_file = DEFAULT_FOLDER / "source_crops.npz"
    with np.load(crops_file) as z:
        crops = z["crops"]
    data, offsets = videos[f"{key}_jpeg_bytes"], videos[f"{key}_jpeg_offsets"]
    size = ss.decode_jpeg(bytes(data[offsets[0] : offsets[1]])).shape[0]  # the video's frame size
    source = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
    expected = _meta()["source_frames_sha256"][str(size)]
    if hashlib.sha256(source.tobytes()).hexdigest() != expected:
        pytest.skip(f"the frames rebuilt from {crops_file} are not this folder's source frames ({size}x{size})")
    return source[videos[f"{key}_source_index"]]


@pytest.mark.parametrize("key", ["v224_n105", "v256_n105"])
def test_stored_jpegs_decode_to_the_fed_frames(videos, key):
    """decode_jpeg (cv2) + the 224 resize of the reference's own JPEG files gives exactly the fed frames."""
    import cv2

    data, offsets = videos[f"{key}_jpeg_bytes"], videos[f"{key}_jpeg_offsets"]
    decoded = [ss.decode_jpeg(bytes(data[offsets[i] : offsets[i + 1]])) for i in range(len(offsets) - 1)]
    decoded = [d if d.shape[0] == 224 else cv2.resize(d, (224, 224)) for d in decoded]
    fed = _fed(videos, key)
    for t, i in enumerate(videos[f"{key}_jpeg_index"]):
        assert np.array_equal(decoded[i], fed[t]), t


@pytest.mark.parametrize("key", ["v224_n105", "v256_n105"])
def test_pyav_jpeg_round_trip_is_close_to_ffmpeg(videos, key):
    """Our PyAV MJPEG round trip from the lossless frames vs the frames the reference's ffmpeg produced.

    Measured on the default folder: mean |diff| 0.008 (224²) / 0.007 (256²) grey levels, 99.4% / 99.5% of values
    identical, the same quantiser on every frame. For scale: the lossless frames are 4.2 grey levels from the
    JPEG ones, and PyAV's own RGB->YUV conversion (chroma truncated) would give 0.67."""
    source = _source_frames(videos, key)
    ours = ss.fed_frames(source)
    fed = _fed(videos, key)
    assert ours.shape == fed.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - fed.astype(np.int16))
    assert diff.mean() <= JPEG_MEAN_ABS
    assert (diff == 0).mean() >= JPEG_EQUAL_FRACTION


def test_score_clip_end_to_end(model, videos):
    """score_clip on the lossless RGB frames (PyAV JPEG round trip) and case c's shorter audio: offset exact,
    LSE within JPEG_LSE (measured on the default folder: 0.009 on case a, 0.0008 on case e)."""
    z = _case("c")
    key = str(z["video"])
    frames = _source_frames(videos, key)[: int(z["num_frames"])]
    score = ss.score_clip(model, frames, z["pcm"], int(z["sample_rate"]))
    assert score.num_windows == len(z["im_feat"])
    assert score.offset == int(z["av_offset"])
    assert abs(score.lse_d - float(z["min_dist"])) <= JPEG_LSE
    assert abs(score.lse_c - float(z["conf"])) <= JPEG_LSE


# -- bad input --------------------------------------------------------------------------------------------


def test_bad_input_errors():
    z = _case("a")
    frames = np.zeros((30, 224, 224, 3), np.uint8)
    with pytest.raises(AudioError, match="too short"):
        ss.score_clip(None, frames, z["pcm"][: ss.SAMPLE_RATE - 1])
    with pytest.raises(AudioError, match="silent"):
        ss.score_clip(None, frames, np.zeros(ss.SAMPLE_RATE * 2, np.int16))
    with pytest.raises(FaceError, match="no frames"):
        ss.score_clip(None, np.zeros((0, 224, 224, 3), np.uint8), z["pcm"])
    with pytest.raises(InputMismatchError, match="too few"):
        ss.sync_features(None, frames[:5], z["pcm"])
    with pytest.raises(InputMismatchError):
        ss.score_clip(None, np.zeros((30, 224, 224), np.uint8), z["pcm"])


def test_missing_package_names_the_pip_command(monkeypatch):
    import importlib.util

    for key in [k for k in sys.modules if k.startswith(ss._SYNCNET_MODULES)]:
        monkeypatch.delitem(sys.modules, key)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "syncnet_python" else real_find_spec(name, *a))
    with pytest.raises(LatentSyncError, match="pip install --no-deps syncnet-python==0.2.3"):
        ss.load_syncnet_v2("anything.model")
