"""LatentSync Lip Sync Video: the whole job on a video file, streamed (adapter over latentsync_core.stream).

For long clips: core ``VIDEO`` in (core Load Video; or a file path for VideoHelperSuite's path loaders),
a file-backed ``VIDEO`` out (core Save Video stores it without re-encoding). The video is never held as
an IMAGE batch: host memory stays flat whatever the length.
"""

from __future__ import annotations

import logging
import os
import uuid

from ..latentsync_core.audio import comfy_audio_parts
from ..latentsync_core.options import StreamSettings, from_widgets, node_inputs
from ..latentsync_core.stream import lip_sync_video
from ..latentsync_core.vae import as_latent_vae
from . import comfy_bridge as bridge
from .face import task_path
from .types import CATEGORY, MODEL_INPUT, VAE_INPUT, WHISPER_INPUT
from .video_files import remove_quietly, video_source

logger = logging.getLogger(__name__)

OUTPUT_SUBFOLDER = "latentsync"  # under ComfyUI's temp folder
STAGES = {"faces": "finding faces", "lip sync": "lip sync"}


class LatentSyncLipSyncVideo:
    NODE_ID = "LatentSyncLipSyncVideo"
    DISPLAY_NAME = "LatentSync Lip Sync Video"
    CATEGORY = f"{CATEGORY}/video"
    FUNCTION = "lip_sync"
    DESCRIPTION = (
        "Lip-syncs a whole video file to new speech in one node, streamed in segments so memory stays flat "
        "however long the video is (use it for clips over ~20 s; the IMAGE graph holds every frame in RAM). "
        "Same result as Face Crop & Align -> Sampler -> Paste Back with the same settings and seed. The "
        "output keeps the video's size and frame rate, has the new audio, and is encoded once: connect Save Video."
    )
    RETURN_TYPES = ("VIDEO", "STRING")
    RETURN_NAMES = ("video", "face_report")
    OUTPUT_TOOLTIPS = (
        "The lip-synced video (H.264 + AAC mp4 in ComfyUI's temp folder): connect core Save Video.",
        "Which frames had a face (bridged gaps, frames left untouched), as Face Crop & Align reports it.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        # the settings are the option table's widgets (same names, ranges and tooltips as the other nodes)
        return {
            "required": {
                "audio": ("AUDIO", {"tooltip": "The new speech (any rate and channels). Its length decides the output length: a shorter video is played back and forth, a longer one is cut."}),
                "model": MODEL_INPUT,
                "vae": VAE_INPUT,
                "whisper": WHISPER_INPUT,
                **node_inputs(*REQUIRED_OPTIONS),
            },
            "optional": {
                **node_inputs(*OPTIONAL_OPTIONS[:2]),
                "video": ("VIDEO", {"tooltip": "The video with the face (core Load Video). Leave unconnected to use video_path."}),
                "video_path": ("STRING", {"default": "", "tooltip": "Instead of a VIDEO: a video file path (absolute, or a file in ComfyUI's input folder), e.g. from VideoHelperSuite's path loaders."}),
                **node_inputs(*OPTIONAL_OPTIONS[2:]),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }  # fmt: skip

    def lip_sync(self, audio, model, vae, whisper, video=None, video_path="", unique_id=None, **widgets):
        settings = StreamSettings(**from_widgets(widgets, REQUIRED_OPTIONS + OPTIONAL_OPTIONS))  # checked first
        waveform, rate = comfy_audio_parts(audio)
        folder = os.path.join(bridge.temp_directory(), OUTPUT_SUBFOLDER)
        out = os.path.join(folder, f"LatentSync_{uuid.uuid4().hex[:12]}.mp4")
        source, scratch = video_source(video, video_path, folder)
        progress = bridge.stage_progress(unique_id, STAGES)  # each stage has its own total: a fresh bar

        try:
            with model.on_compute_device() as unet:
                device = bridge.compute_device()
                latent_vae = as_latent_vae(vae, device)  # ComfyUI's VAE, or a diffusers AutoencoderKL
                report = lip_sync_video(
                    source, out, waveform, rate, unet=unet, vae=latent_vae, whisper=whisper, settings=settings,
                    resolution=model.resolution, task_path=task_path(), progress=progress,
                    check_interrupt=bridge.check_interrupted,
                )
        finally:
            if scratch is not None:
                remove_quietly(scratch)
        summary = report.summary()
        logger.info("LatentSync Lip Sync Video: %s -> %s", summary, report.path)
        video_cls = bridge.video_from_file_class()
        return {"ui": {"text": [summary]}, "result": (video_cls(report.path), summary)}


REQUIRED_OPTIONS = ("seed", "steps", "guidance", "deepcache", "face", "max_gap", "audio_mode")
OPTIONAL_OPTIONS = ("chunk_batch", "sampler", "blend", "mask_grow", "feather", "silence", "silence_db", "silence_ms")

if bridge.video_from_file_class() is None:
    logger.warning("[ComfyUI-LatentSync] LatentSync Lip Sync Video skipped: this ComfyUI has no VIDEO type (update to >= 0.3.31).")
    NODE_CLASSES: list[type] = []
else:
    NODE_CLASSES = [LatentSyncLipSyncVideo]
