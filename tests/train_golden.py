"""Reading the official training reference (``tests/fixtures/train`` or ``$LATENTSYNC_GOLDEN_TRAIN``).

Everything seed-dependent comes from the folder's files (batch, draws, expected values), so the tests
run unchanged on a variant folder made with another seed. The U-Net and VAE are always the golden set's
``tiny_unet`` and ``pipeline`` models (copies in ``tests/fixtures``).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import numpy as np
import torch

FIX = Path(__file__).resolve().parent / "fixtures"
GOLDEN = Path(os.environ.get("LATENTSYNC_GOLDEN_TRAIN") or FIX / "train")
UNET_CKPT = FIX / "unet" / "latentsync_unet.pt"
VAE_FILE, VAE_CONFIG = FIX / "pipeline" / "vae_tiny_random.pt", FIX / "pipeline" / "vae_config.json"
RUNS = {"stage2": ("stage2_tiny.yaml", "step_stage2.npz"),
        "stage2_efficient": ("stage2_efficient_tiny.yaml", "step_stage2_efficient.npz")}


@cache
def npz(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / name) as data:
        return {k: data[k] for k in data.files}


@cache
def meta() -> dict:
    return json.loads((GOLDEN / "meta.json").read_text())


def t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def prefix(step: int) -> str:
    return "" if step == 1 else f"step{step}/"


def train_batch(step: int = 1):
    """The official dataset's batch of step 1 or 2 as a :class:`TrainBatch`."""
    from latentsync_core.train.step import TrainBatch

    b, p = npz("batch.npz"), prefix(step)
    faces = t(b["faces"]).permute(0, 3, 1, 2).float() / 255.0
    pixels = (faces - 0.5) / 0.5  # ImageProcessor: normalize(images / 255.0)
    gt, ref = pixels[t(b[f"{p}gt_face_index"])], pixels[t(b[f"{p}ref_face_index"])]  # [B, F, 3, H, W]
    rows = t(b[f"{p}audio_feature_rows"])  # [B, 40, 5, 384]
    frames = gt.shape[1]
    embeds = torch.stack([rows[:, 2 * f: 2 * f + 10].reshape(rows.shape[0], 50, 384) for f in range(frames)], 1)
    return TrainBatch(gt_pixels=gt, ref_pixels=ref, keep_mask=t(b["fixed_mask"]), mel=t(b[f"{p}mel"]),
                      audio_embeds=embeds)


def _bf(latents: np.ndarray) -> torch.Tensor:
    x = t(latents)  # [B, 4, F, h, w] -> [(B F), 4, h, w]
    return x.transpose(1, 2).reshape(-1, *x.shape[1:2], *x.shape[3:])


def step_draws(step: int = 1):
    """Step 1: the official VAE posterior eps (recovered from the stored latents and posterior), noise and
    timesteps. Step 2 (no posterior stored): only noise and timesteps — tests then compare from the stored
    U-Net input."""
    from latentsync_core.constants import LATENT_SCALE
    from latentsync_core.train.step import StepDraws

    s, p = npz("step_stage2.npz"), prefix(step)
    eps = None
    if step == 1:
        ui = s["unet_input"]
        stored = {"gt": s["gt_latents"], "masked": ui[:, 5:9], "ref": ui[:, 9:13]}
        eps = {k: (_bf(v) / LATENT_SCALE - t(s[f"vae_posterior/{k}_mean"])) / t(s[f"vae_posterior/{k}_std"])
               for k, v in stored.items()}
    return StepDraws(vae_eps=eps, noise=t(s[f"{p}noise"]), timesteps=t(s[f"{p}timesteps"]))


def build_trainer(run: str = "stage2", gradient_checkpointing: bool | None = None, **overrides):
    """A fp32 CPU trainer with the tiny models of the reference run ``run``."""
    from latentsync_core.train.config import config_from_mapping, read_yaml
    from latentsync_core.train.models import load_training_unet
    from latentsync_core.train.step import Trainer
    from latentsync_core.train.syncnet import load_stable_syncnet, syncnet_config_from_yaml
    from latentsync_core.train.videomae import load_videomae
    from latentsync_core.vae import load_vae

    yaml_path = GOLDEN / RUNS[run][0]
    cfg = config_from_mapping(read_yaml(yaml_path))
    if gradient_checkpointing is not None:
        overrides["gradient_checkpointing"] = gradient_checkpointing
    cfg = cfg.replace(precision="fp32", **overrides)
    unet = load_training_unet(yaml_path, UNET_CKPT)
    vae = load_vae(VAE_FILE, VAE_CONFIG)
    syncnet = load_stable_syncnet(GOLDEN / "syncnet_tiny_random.pt", syncnet_config_from_yaml(GOLDEN / "syncnet_tiny.yaml"),
                                  gradient_checkpointing=True)
    trepa = None
    if cfg.uses_trepa:
        trepa = load_videomae(GOLDEN / "videomae_tiny_random.pt", GOLDEN / "videomae_tiny_config.json",
                              gradient_checkpointing=True)
    return Trainer(unet, vae, cfg, syncnet=syncnet, lpips=golden_lpips(), trepa_net=trepa)


def golden_lpips():
    from latentsync_core.train.lpips import lpips_from_state_dict

    z = npz("lpips_vgg16_random.npz")
    state = {}
    for key in z:
        if key.endswith(".weight_ternary"):
            i = key.split(".")[0]
            state[f"features.{i}.weight"] = t(z[key]).float() * t(z[f"{i}.weight_scale"])
        elif key.endswith(".bias"):
            state[f"features.{key}"] = t(z[key])
        elif key.startswith("lin."):
            state[key[len("lin."):]] = t(z[key])
    return lpips_from_state_dict(state, "lpips_vgg16_random.npz")


def rel_l2(a: torch.Tensor, g) -> float:
    g = torch.as_tensor(g, dtype=torch.float64)
    return float((a.detach().double() - g).norm() / g.norm())


def rel(a, g) -> float:
    return abs(float(a) - float(g)) / abs(float(g))


def max_abs(a: torch.Tensor, g) -> float:
    return float((a.detach().double() - torch.as_tensor(g, dtype=torch.float64)).abs().max())


CLIP_AUDIO = {"data/clip0.mp4": "en", "data/clip1.mp4": "cmn"}  # the golden README's clips


def build_dataset(folder) -> dict[str, int]:
    """The golden batch's two clips as a prepared dataset folder (faces by ``video_face_map``, whisper
    features and SyncNet mel of their audio, made by the library as ``prepare`` makes them); returns
    clip name -> segment index."""
    import numpy as np

    from latentsync_core.audio import audio_features, load_audio_file, load_whisper
    from latentsync_core.audio.syncnet_mel import melspectrogram
    from latentsync_core.train.dataset import append_manifest, write_segment

    with np.load(GOLDEN / "batch.npz") as z:
        faces, face_map, names = z["faces"], z["video_face_map"], z["video_names"]
    whisper = load_whisper(FIX / "audio" / "whisper_tiny_encoder.pt")
    index = {}
    for c, clip in enumerate(names):
        wave, rate = load_audio_file(FIX / "audio" / f"{CLIP_AUDIO[str(clip)]}.flac")
        features = audio_features(whisper, wave, rate, mode="official").numpy()
        line = write_segment(str(folder), f"clip{c}", faces[face_map[c]], features, melspectrogram(wave[0].numpy()))
        append_manifest(str(folder), line)
        index[str(clip)] = c
    return index
