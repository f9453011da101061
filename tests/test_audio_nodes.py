"""The three audio nodes as ComfyUI runs them: Load Audio -> Whisper Embedding <- Whisper Loader."""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Mapping

import pytest
import torch
from conftest import FIXTURES, PACK_NAME, load_pack

AUDIO = FIXTURES / "audio"

# the nodes raise the pack's own copy of the error classes (imported as ComfyUI does, by package path)
load_pack()
_errors = importlib.import_module(f"{PACK_NAME}.latentsync_core.errors")
AudioError, CheckpointError, ModelMissingError = _errors.AudioError, _errors.CheckpointError, _errors.ModelMissingError


@pytest.fixture(scope="module")
def nodes(pack):
    m = pack.NODE_CLASS_MAPPINGS
    return m["LatentSyncLoadAudio"], m["LatentSyncWhisperLoader"], m["LatentSyncWhisperEmbedding"]


@pytest.fixture(scope="module")
def input_dir(pack):
    import folder_paths

    folder = folder_paths.get_input_directory()
    shutil.copy(AUDIO / "en.flac", f"{folder}/speech.flac")
    with open(f"{folder}/readme.txt", "w") as f:
        f.write("not media")
    return folder


@pytest.fixture(scope="module")
def whisper_file(pack):
    import folder_paths

    dest = f"{folder_paths.models_dir}/latentsync/whisper/tiny.pt"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copy(AUDIO / "whisper_tiny_encoder.pt", dest)
    return dest


@pytest.fixture(scope="module")
def whisper(nodes, whisper_file):
    _, loader, _ = nodes
    (model,) = loader().load("whisper/tiny.pt", device="auto", precision="fp32")
    return model


def test_load_audio_lists_media_files_with_upload(nodes, input_dir):
    load, _, _ = nodes
    spec = load.INPUT_TYPES()
    files, options = spec["required"]["audio"]
    assert "speech.flac" in files and "readme.txt" not in files
    assert options["audio_upload"] is True
    # no saved widget may follow the upload widget the front end appends after `audio` (it is not
    # saved, so later widget values would load back shifted by one)
    assert list(spec["required"]) == ["start", "duration", "audio"]
    assert "optional" not in spec


def test_load_audio_returns_comfy_audio(nodes, input_dir):
    load, _, _ = nodes
    (audio,) = load().load("speech.flac")
    assert audio["sample_rate"] == 16000
    assert audio["waveform"].shape == (1, 1, 79774) and audio["waveform"].dtype == torch.float32
    (part,) = load().load("speech.flac", start=1.0, duration=0.5)
    assert part["waveform"].shape == (1, 1, 8000)
    assert torch.equal(part["waveform"], audio["waveform"][..., 16000:24000])


def test_load_audio_change_detection_and_validation(nodes, input_dir):
    load, _, _ = nodes
    h1 = load.IS_CHANGED("speech.flac")
    assert h1 == load.IS_CHANGED("speech.flac")
    assert h1 != load.IS_CHANGED("speech.flac", start=1.0)
    assert load.VALIDATE_INPUTS("speech.flac") is True
    assert "not found" in load.VALIDATE_INPUTS("nope.wav")


def test_load_audio_bad_file_is_a_clear_error(nodes, input_dir):
    load, _, _ = nodes
    with pytest.raises(AudioError, match="not an audio or video file"):
        load().load("readme.txt")


def test_whisper_loader_lists_files_and_loads(nodes, whisper_file, whisper):
    _, loader, _ = nodes
    spec = loader.INPUT_TYPES()["required"]
    assert "whisper/tiny.pt" in spec["whisper"][0]
    assert spec["device"][0] == ["auto", "cpu"] and "fp32" in spec["precision"][0]
    assert whisper.dtype == torch.float32 and not any(p.requires_grad for p in whisper.parameters())


def test_whisper_loader_rejects_a_unet(nodes, pack):
    import folder_paths

    _, loader, _ = nodes
    path = f"{folder_paths.models_dir}/latentsync/whisper/unet_by_mistake.pt"
    torch.save({"state_dict": {"down_blocks.0.motion_modules.0.x.weight": torch.zeros(2)}}, path)
    assert "whisper/unet_by_mistake.pt" in loader.INPUT_TYPES()["required"]["whisper"][0]
    with pytest.raises(CheckpointError, match="LatentSync U-Net"):
        loader().load("whisper/unet_by_mistake.pt")
    with pytest.raises(ModelMissingError):
        loader().load("whisper/gone.pt")


def test_embedding_from_core_load_audio_dict(nodes, whisper, input_dir):
    load, _, embed = nodes
    (audio,) = load().load("speech.flac")
    import comfy.utils

    updates_before = len(comfy.utils.UPDATES)
    frame_audio, count = embed().embed(audio, whisper, fps=25.0)
    assert count == frame_audio.num_frames == 125  # round(4.986 s x 25)
    assert frame_audio.windows().shape == (125, 50, 384) and frame_audio.fps == 25.0
    assert frame_audio.waveform.shape == (1, 79774) and frame_audio.sample_rate == 16000
    assert comfy.utils.UPDATES[updates_before:] == [(1, 1)]  # one 30 s window


def test_embedding_from_lazy_mapping_48k_stereo(nodes, whisper):
    """VideoHelperSuite passes a lazy Mapping; 48 kHz stereo is resampled; fps 30 sets the count."""
    _, _, embed = nodes

    class LazyAudio(Mapping):
        def __init__(self):
            self.loads = 0

        def __getitem__(self, key):
            self.loads += 1
            t = torch.arange(48000 * 2) / 48000
            data = {"waveform": torch.stack([torch.sin(2 * torch.pi * 300 * t)] * 2)[None] * 0.3, "sample_rate": 48000}
            return data[key]

        def __iter__(self):
            return iter(("waveform", "sample_rate"))

        def __len__(self):
            return 2

    frame_audio, count = embed().embed(LazyAudio(), whisper, fps=30.0, mode="official")
    assert count == 60 and frame_audio.windows().shape == (60, 50, 384)
    assert frame_audio.waveform.shape[0] == 1 and abs(frame_audio.waveform.shape[1] - 32000) <= 2


def test_embedding_bad_audio_is_a_clear_error(nodes, whisper):
    _, _, embed = nodes
    with pytest.raises(AudioError, match="empty"):
        embed().embed({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, whisper)
    bad = torch.zeros(1, 1, 16000)
    bad[0, 0, 5] = float("nan")
    with pytest.raises(AudioError, match="NaN"):
        embed().embed({"waveform": bad, "sample_rate": 16000}, whisper)
    silent, count = embed().embed({"waveform": torch.zeros(1, 2, 8000), "sample_rate": 8000}, whisper)
    assert count == 25 and torch.isfinite(silent.windows()).all()


def test_embedding_can_be_cancelled(nodes, whisper):
    import comfy.model_management as mm

    _, _, embed = nodes
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            embed().embed({"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}, whisper)
    finally:
        mm.interrupt_current_processing(False)


def test_whisper_loader_offline_without_file_says_where_to_put_it(nodes, pack, tmp_path, monkeypatch):
    """The default tiny.pt is fetched when missing; offline, the error names the URL and the destination."""
    _, loader, _ = nodes
    bridge = importlib.import_module(f"{PACK_NAME}.nodes.comfy_bridge")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(bridge, "model_path", lambda name: None)
    monkeypatch.setattr(bridge, "model_folders", lambda: [str(tmp_path)])
    with pytest.raises(ModelMissingError, match=r"(?s)offline.*LatentSync-1.5.*whisper/tiny.pt"):
        loader().load("whisper/tiny.pt")
