"""Sampler node: LatentSync Sampler (aligned faces + audio -> lip-synced faces), over latentsync_core.pipeline."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..latentsync_core.audio.silence import DEFAULT_SILENCE_DB, DEFAULT_SILENCE_MS, silent_frames
from ..latentsync_core.constants import CHUNK_FRAMES, DEFAULT_GUIDANCE, DEFAULT_SEED, DEFAULT_STEPS
from ..latentsync_core.deepcache import DEEPCACHE_INTERVALS
from ..latentsync_core.errors import AudioError, FaceError, InputMismatchError
from ..latentsync_core.length import ping_pong_indices
from ..latentsync_core.pipeline import LipSyncPipeline
from ..latentsync_core.sampling import MAX_CHUNK_BATCH, SAMPLERS
from ..latentsync_core.types import FaceTrack, FrameAudio
from ..latentsync_core.vae import ComfyVae
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_AUDIO, LATENTSYNC_FACES, LATENTSYNC_MODEL

logger = logging.getLogger(__name__)

DEEPCACHE_CHOICES = ["off", *(str(i) for i in DEEPCACHE_INTERVALS)]
SILENCE_CHOICES = ["sync", "keep original"]


class LatentSyncSampler:
    NODE_ID = "LatentSyncSampler"
    DISPLAY_NAME = "LatentSync Sampler"
    CATEGORY = f"{CATEGORY}/sampler"
    FUNCTION = "sample"
    DESCRIPTION = (
        "Re-renders the mouth of every aligned face so it follows the audio (LatentSync: DDIM with audio "
        "classifier-free guidance, 16-frame chunks). The audio decides the number of output frames: a shorter "
        "video is played back and forth, a longer one is cut. Frames without a face pass through unchanged."
    )
    RETURN_TYPES = ("IMAGE", LATENTSYNC_FACES)
    RETURN_NAMES = ("faces", "face_track")
    OUTPUT_TOOLTIPS = (
        "Lip-synced aligned faces [N, res, res, 3], one per audio frame: connect to Paste Back. Not clamped (the "
        "VAE can overshoot 0..1 slightly; Paste Back clamps after resizing, as the official code; previews clip).",
        "The face track matched to the audio length (frames looped or cut): connect to Paste Back.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (LATENTSYNC_MODEL, {"tooltip": "From LatentSync Model Loader."}),
                "vae": ("VAE", {"tooltip": "Stable Diffusion VAE from ComfyUI's Load VAE: sd-vae-ft-mse "
                                           "(vae-ft-mse-840000-ema-pruned.safetensors), as LatentSync was trained."}),
                "faces": ("IMAGE", {"tooltip": "Aligned faces from LatentSync Face Crop & Align."}),
                "face_track": (LATENTSYNC_FACES, {"tooltip": "Face track from LatentSync Face Crop & Align."}),
                "audio": (LATENTSYNC_AUDIO, {"tooltip": "Per-frame audio from LatentSync Whisper Embedding "
                                                        "(made for the video's fps)."}),
                "seed": ("INT", {"default": DEFAULT_SEED, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Noise seed: the same seed gives the same frames."}),
                "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": 200,
                                  "tooltip": "DDIM steps per 16-frame chunk (official: 20)."}),
                "guidance": ("FLOAT", {"default": DEFAULT_GUIDANCE, "min": 1.0, "max": 10.0, "step": 0.1,
                                       "tooltip": "Audio guidance scale (official: 1.5; 1.0 = no unconditional pass, "
                                                  "faster, weaker lip sync)."}),
                "deepcache": (DEEPCACHE_CHOICES, {"default": "off",
                                                  "tooltip": "DeepCache: run the full U-Net only every n-th step and "
                                                             "reuse its deep features in between (faster, slightly "
                                                             "different; the official --enable_deepcache uses 3)."}),
            },
            "optional": {
                "chunk_batch": ("INT", {"default": 0, "min": 0, "max": MAX_CHUNK_BATCH,
                                        "tooltip": "16-frame chunks denoised together in one U-Net call (same "
                                                   "result, faster on a GPU, more memory). 0 = auto: from the "
                                                   "free GPU memory (1 on the CPU)."}),
                "sampler": (list(SAMPLERS), {"default": SAMPLERS[0],
                                             "tooltip": "ddim: the official sampler. dpmpp_2m: DPM-Solver++ 2M, "
                                                        "about as good in half the steps (try 10) but NOT the "
                                                        "official result."}),
                "silence": (SILENCE_CHOICES, {"default": SILENCE_CHOICES[0],
                                              "tooltip": "sync: the official behaviour, every frame is regenerated. "
                                                         "keep original: frames whose audio window is silent are not "
                                                         "sent through the model and come back as the input face "
                                                         "(closed-mouth pauses stay closed)."}),
                "silence_threshold_db": ("FLOAT", {"default": DEFAULT_SILENCE_DB, "min": -100.0, "max": -10.0,
                                                   "step": 1.0,
                                                   "tooltip": "keep original: audio quieter than this (RMS, dBFS) "
                                                              "counts as silence."}),
                "silence_min_ms": ("INT", {"default": DEFAULT_SILENCE_MS, "min": 0, "max": 5000, "step": 20,
                                           "tooltip": "keep original: only pauses at least this long (ms) count, "
                                                      "so short gaps between words are still lip-synced."}),
            },
        }

    def sample(self, model, vae, faces: torch.Tensor, face_track: FaceTrack, audio: FrameAudio,
               seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
               deepcache: str = "off", chunk_batch: int = 0, sampler: str = SAMPLERS[0],
               silence: str = "sync", silence_threshold_db: float = DEFAULT_SILENCE_DB,
               silence_min_ms: int = DEFAULT_SILENCE_MS):
        if faces.ndim != 4 or faces.shape[1] != faces.shape[2]:
            raise InputMismatchError(f"faces must be aligned square faces [N, res, res, 3], got {tuple(faces.shape)}.")
        if len(faces) != len(face_track):
            raise InputMismatchError(
                f"{len(faces)} faces but the face track has {len(face_track)} frames: connect both outputs of the "
                "same Face Crop & Align node."
            )
        resolution = int(faces.shape[1])
        if resolution != face_track.resolution:
            raise InputMismatchError(f"faces are {resolution} px but the face track says {face_track.resolution} px.")
        model.check_faces(resolution)
        if not np.asarray(face_track.found).any():
            raise FaceError("No face was found in any frame: use a video where a face is visible.")

        if silence not in SILENCE_CHOICES:
            raise InputMismatchError(f"silence must be one of {SILENCE_CHOICES}, not {silence!r}.")
        index = ping_pong_indices(len(face_track), audio.num_frames)
        track = face_track.take(index)
        steps = int(steps)
        skip = None
        if silence == "keep original":
            if getattr(audio, "waveform", None) is None:
                raise AudioError("silence = keep original needs the audio waveform: connect the audio from "
                                 "LatentSync Whisper Embedding (or set silence to sync).")
            skip = silent_frames(audio.waveform, audio.num_frames, audio.fps, threshold_db=float(silence_threshold_db),
                                 min_duration_ms=int(silence_min_ms))
        with_face = np.asarray(track.found, dtype=bool)
        synced_frames = int((with_face & ~skip).sum() if skip is not None else with_face.sum())
        bar = bridge.progress_bar(max(1, math.ceil(synced_frames / CHUNK_FRAMES) * max(steps, 1)))

        with model.on_compute_device() as unet:
            pipe = LipSyncPipeline(unet, ComfyVae(vae, device=bridge.compute_device()))
            result = pipe.sync_faces(
                faces[..., :3], audio, source_index=index, found=face_track.found,
                skip=skip, steps=steps, guidance=guidance, seed=seed, vae_encode="mean",
                deepcache=0 if deepcache == "off" else int(deepcache),
                chunk_batch=int(chunk_batch), sampler=sampler,
                progress=lambda done, total: bar.update_absolute(done, total),
                check_interrupt=bridge.check_interrupted,
                out_dtype=torch.float32,  # the IMAGE itself: no second copy of all faces
            )
        # not clamped: values a little outside 0..1 where the VAE overshoots, as the official pipeline
        # hands them to the paste-back (which resizes first and clamps after); previews clip them
        out = result.faces.float().to(bridge.intermediate_device())
        kept = int((with_face & skip).sum()) if skip is not None else 0
        text = f"{int(result.synced.sum())} of {len(index)} frames lip-synced"
        if skip is not None:
            text += f"; {kept} silent frames kept as the input face"
        if (~with_face).any():
            text += f"; {int((~with_face).sum())} frames without a face passed through"
        logger.info("LatentSync Sampler: %s", text)
        return {"ui": {"text": [text]}, "result": (out, track)}


NODE_CLASSES: list[type] = [LatentSyncSampler]
