"""The node path against the official output: LatentSync Sampler -> LatentSync Paste Back on the golden
tiny models reproduces the official output frames (<= 2 grey levels), as the core float path does.

The official run's random draws (initial noise, VAE posterior samples) are injected into the pipeline
the node calls; everything else is the nodes' own code: ComfyUI-style VAE adapter (its decode must not
clamp), the Sampler's output (float, unclamped) and Paste Back (floats resized, then clamped)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import PACK_NAME, load_pack
from test_pipeline import PIPE, UNET, StandInVae, golden  # noqa: F401  (module fixture)

from latentsync_core.audio import frame_audio_chunks

load_pack()
model_mod = importlib.import_module(f"{PACK_NAME}.nodes.model")
sampler_mod = importlib.import_module(f"{PACK_NAME}.nodes.sampler")
types_mod = importlib.import_module(f"{PACK_NAME}.latentsync_core.types")
unet_mod = importlib.import_module(f"{PACK_NAME}.latentsync_core.unet")
vae_mod = importlib.import_module(f"{PACK_NAME}.latentsync_core.vae")


@pytest.mark.slow
def test_sampler_then_paste_back_nodes_match_official_output(pack, golden, monkeypatch):  # noqa: F811
    n = 16  # the first chunk: the fixture's check frames (0, 7, 15) lie in it
    overrides = [{"masked_image_latents": torch.from_numpy(golden["masked_image_latents"][0][None]),
                  "ref_latents": torch.from_numpy(golden["ref_latents"][0][None])}]  # fmt: skip
    real = sampler_mod.LipSyncPipeline

    class OfficialDraws(real):
        def job(self, *args, **kw):  # the node's sampling job, with the official run's draws
            kw.update(initial_latents=torch.from_numpy(golden["initial_noise"]), latent_overrides=overrides)
            return super().job(*args, **kw)

    monkeypatch.setattr(sampler_mod, "LipSyncPipeline", OfficialDraws)

    unet = unet_mod.load_unet(UNET / "config.json", UNET / "latentsync_unet.pt")
    model = model_mod.LatentSyncModel(unet=unet, resolution=256, dtype=torch.float32, name="tiny")
    vae = StandInVae(vae_mod.load_vae(PIPE / "vae_tiny_random.pt", PIPE / "vae_config.json").vae)
    faces = torch.from_numpy(golden["faces"][:n]).float() / 255.0  # IMAGE, as Face Crop & Align outputs

    # original frames and affines: the fixture holds them for the check frames (the changed box only)
    check = golden["check_frames"]
    y0, y1, x0, x1 = golden["out_box"]
    images = torch.zeros((n, 480, 640, 3))
    images[torch.from_numpy(check), y0:y1, x0:x1] = torch.from_numpy(golden["frames_crop"]).float() / 255.0
    affines = np.tile(golden["affines"][:1], (n, 1, 1))
    affines[check] = golden["affines"]
    track = types_mod.FaceTrack(affines=affines, found=np.ones(n, bool), landmarks=np.zeros((n, 68, 2), np.float32),
                                frame_size=(480, 640), crop_size=tuple(int(v) for v in golden["crop_size"]),
                                resolution=256)  # fmt: skip
    audio = types_mod.FrameAudio.from_windows(frame_audio_chunks(torch.from_numpy(golden["features"]), 32, fps=25.0)[:n], fps=25.0)

    sampler = pack.NODE_CLASS_MAPPINGS["LatentSyncSampler"]()
    synced, out_track = sampler.sample(model, vae, faces, track, audio, seed=1247, steps=3, guidance=1.5)["result"]
    assert synced.shape == (n, 256, 256, 3) and out_track.frame_index.tolist() == list(range(n))
    assert synced.min() < 0 or synced.max() > 1  # the tiny VAE overshoots: clamping here would show

    paste = pack.NODE_CLASS_MAPPINGS["LatentSyncPasteBack"]()
    frames, _ = paste.paste(images, synced, out_track, "reference (OpenCV)")
    got = (frames[torch.from_numpy(check), y0:y1, x0:x1] * 255).round().to(torch.int64).numpy()
    diff = np.abs(got - golden["out_crop"].astype(np.int64))
    assert diff.max() <= 2, f"max {diff.max()} grey levels, mean {diff.mean():.3f}"
