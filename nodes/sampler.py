"""Sampler node: LatentSync Sampler (aligned faces + audio -> lip-synced faces), over latentsync_core.pipeline."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from ..latentsync_core.audio.silence import silent_frames
from ..latentsync_core.errors import AudioError, FaceError, InputMismatchError
from ..latentsync_core.options import AudioOptions, SamplingOptions, from_widgets, group_options, node_inputs
from ..latentsync_core.pipeline import LipSyncPipeline, plan_frames
from ..latentsync_core.types import FaceTrack, FrameAudio
from ..latentsync_core.vae import ComfyVae
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_AUDIO, LATENTSYNC_FACES, MODEL_INPUT, VAE_INPUT

logger = logging.getLogger(__name__)

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
                "model": MODEL_INPUT,
                "vae": VAE_INPUT,
                "faces": ("IMAGE", {"tooltip": "Aligned faces from LatentSync Face Crop & Align."}),
                "face_track": (LATENTSYNC_FACES, {"tooltip": "Face track from LatentSync Face Crop & Align."}),
                "audio": (LATENTSYNC_AUDIO, {"tooltip": "Per-frame audio from LatentSync Whisper Embedding "
                                                        "(made for the video's fps)."}),
                **node_inputs(*REQUIRED_OPTIONS),
            },
            "optional": node_inputs(*OPTIONAL_OPTIONS),
        }

    def sample(self, model, vae, faces: torch.Tensor, face_track: FaceTrack, audio: FrameAudio, **widgets):
        values = from_widgets(widgets, REQUIRED_OPTIONS + OPTIONAL_OPTIONS)  # checked before any work
        options = SamplingOptions(**{k: v for k, v in values.items() if k in group_options(SamplingOptions)})
        silence = AudioOptions(**{k: v for k, v in values.items() if k in group_options(AudioOptions)})
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

        skip = None
        if silence.silence:
            if getattr(audio, "waveform", None) is None:
                raise AudioError("silence = keep original needs the audio waveform: connect the audio from "
                                 "LatentSync Whisper Embedding (or set silence to sync).")
            skip = silent_frames(audio.waveform, audio.num_frames, audio.fps, threshold_db=silence.silence_db,
                                 min_duration_ms=silence.silence_ms)
        index, generated = plan_frames(len(face_track), audio.num_frames, found=face_track.found, skip=skip)
        track = face_track.take(index)

        with model.on_compute_device() as unet:
            pipe = LipSyncPipeline(unet, ComfyVae(vae, device=bridge.compute_device()))
            job = pipe.job(resolution, replace(options, vae_encode="mean"), planned_frames=int(generated.sum()),
                           check_interrupt=bridge.check_interrupted,
                           out_dtype=torch.float32)  # the IMAGE itself: no second copy of all faces
            bar = bridge.progress_bar(max(1, job.total))  # the job's own total: chunks x steps
            job.progress = bar.update_absolute
            result = job.run(faces[..., :3], audio.windows, index, generated)
        # not clamped: values a little outside 0..1 where the VAE overshoots, as the official pipeline
        # hands them to the paste-back (which resizes first and clamps after); previews clip them
        out = result.faces.float().to(bridge.intermediate_device())
        with_face = np.asarray(track.found, dtype=bool)
        text = f"{int(generated.sum())} of {len(index)} frames lip-synced"
        if skip is not None:
            text += f"; {int((with_face & skip).sum())} silent frames kept as the input face"
        if (~with_face).any():
            text += f"; {int((~with_face).sum())} frames without a face passed through"
        logger.info("LatentSync Sampler: %s", text)
        return {"ui": {"text": [text]}, "result": (out, track)}


REQUIRED_OPTIONS = ("seed", "steps", "guidance", "deepcache")
OPTIONAL_OPTIONS = ("chunk_batch", "sampler", "silence", "silence_db", "silence_ms")
NODE_CLASSES: list[type] = [LatentSyncSampler]
