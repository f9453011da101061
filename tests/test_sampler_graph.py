"""The whole graph through the nodes, as ComfyUI runs it: Load Audio -> Whisper Embedding, Face Crop &
Align, Model Loader -> Sampler -> Paste Back, with the golden tiny models and seed, on a 5-second clip."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES
from test_pipeline import StandInVae

from latentsync_core.constants import DEFAULT_SEED
from latentsync_core.pipeline import LipSyncPipeline
from latentsync_core.vae import load_vae

PIPE = FIXTURES / "pipeline"


@pytest.fixture(scope="module")
def graph_files(pack):
    import folder_paths

    models = os.path.join(folder_paths.models_dir, "latentsync")
    os.makedirs(os.path.join(models, "whisper"), exist_ok=True)
    os.makedirs(os.path.join(models, "tiny"), exist_ok=True)
    shutil.copy(FIXTURES / "audio" / "whisper_tiny_encoder.pt", os.path.join(models, "whisper", "tiny.pt"))
    shutil.copy(FIXTURES / "unet" / "latentsync_unet.pt", os.path.join(models, "tiny", "latentsync_unet.pt"))
    shutil.copy(FIXTURES / "unet" / "config.json", os.path.join(models, "tiny", "config.json"))
    shutil.copy(FIXTURES / "audio" / "cmn.flac", os.path.join(folder_paths.get_input_directory(), "graph_cmn.flac"))


@pytest.mark.slow
@pytest.mark.usefixtures("landmarks_offline")
def test_five_second_clip_through_the_graph(pack, graph_files):
    n = pack.NODE_CLASS_MAPPINGS
    frames = np.stack([cv2.cvtColor(cv2.imread(str(FIXTURES / "face" / f"detect_{i}.png")), cv2.COLOR_BGR2RGB)
                       for i in (0, 15)])
    images = torch.from_numpy(frames).float() / 255

    (audio,) = n["LatentSyncLoadAudio"]().load("graph_cmn.flac", start=0.0, duration=5.0)
    (whisper,) = n["LatentSyncWhisperLoader"]().load("whisper/tiny.pt", device="auto", precision="fp32")
    frame_audio, count = n["LatentSyncWhisperEmbedding"]().embed(audio, whisper, fps=25.0)
    faces, _mouth, track = n["LatentSyncFaceCropAlign"]().align(images, "largest", 0, 10, 256)["result"]
    (model,) = n["LatentSyncModelLoader"]().load("tiny/latentsync_unet.pt", "auto", "auto")
    vae = StandInVae(load_vae(PIPE / "vae_tiny_random.pt", PIPE / "vae_config.json").vae)
    synced, out_track = n["LatentSyncSampler"]().sample(model, vae, faces, track, frame_audio,
                                                       seed=DEFAULT_SEED, steps=1, guidance=1.0, deepcache="off")["result"]
    video, _ = n["LatentSyncPasteBack"]().paste(images, synced, out_track, "auto")

    assert count == 125 and len(frame_audio.windows()) == count  # 5 s at 25 fps
    assert synced.shape == (count, 256, 256, 3) and video.shape == (count, *frames.shape[1:])
    assert out_track.frame_index[:6].tolist() == [0, 1, 1, 0, 0, 1]  # 2 frames ping-ponged
    changed = (video[0] - images[0]).abs().amax(-1) > 2 / 255
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert 0 < len(ys) < 0.2 * changed.numel()  # only the face region changed

    # the first chunk equals the core library run on the same faces, audio and seed
    core = LipSyncPipeline(model.unet, vae.first_stage_model).sync_faces(
        faces, frame_audio.windows()[:16], source_index=out_track.frame_index[:16], steps=1, guidance=1.0,
        seed=DEFAULT_SEED, vae_encode="mean")
    assert (core.faces.float() - synced[:16]).abs().max() < 2e-3  # unclamped, everywhere


@pytest.mark.usefixtures("landmarks_offline")
def test_core_whole_job_on_frames_and_audio(pack):
    """``LipSyncPipeline(unet, vae, whisper)(frames, waveform, rate, fps)``: the core API without ComfyUI."""
    from latentsync_core.audio import load_whisper
    from latentsync_core.unet import load_unet

    frames = np.stack([cv2.cvtColor(cv2.imread(str(FIXTURES / "face" / f"detect_{i}.png")), cv2.COLOR_BGR2RGB)
                       for i in (0, 15)])
    unet = load_unet(FIXTURES / "unet" / "config.json", FIXTURES / "unet" / "latentsync_unet.pt")
    vae = load_vae(PIPE / "vae_tiny_random.pt", PIPE / "vae_config.json")
    whisper = load_whisper(FIXTURES / "audio" / "whisper_tiny_encoder.pt")
    waveform = 0.1 * torch.randn(1, 3200, generator=torch.Generator().manual_seed(0))  # 0.2 s -> 5 frames
    out = LipSyncPipeline(unet, vae, whisper)(frames, waveform, 16000, fps=25.0, steps=1, guidance=1.0)
    assert out.shape == (5, *frames.shape[1:]) and out.dtype == np.uint8
    for i, src in enumerate([0, 1, 1, 0, 0]):  # ping-pong of 2 frames: each output is closest to its source
        own, other = (np.abs(out[i].astype(int) - frames[k]).mean() for k in (src, 1 - src))
        assert own < other
    changed = np.abs(out[0].astype(int) - frames[0].astype(int)).max(-1) > 2
    assert 0 < changed.mean() < 0.2  # only the face region changed

    # 512 px faces (LatentSync 1.6): the aligner the pipeline builds follows `resolution`
    small = LipSyncPipeline(unet, vae, whisper, resolution=512)(frames, waveform, 16000, fps=25.0, steps=1, guidance=1.0)
    assert small.shape == out.shape
    changed_small = np.abs(small[0].astype(int) - frames[0].astype(int)).max(-1) > 2
    assert 0 < changed_small.mean() < 0.2 and not np.array_equal(small, out)
