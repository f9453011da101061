"""The LatentSync Sync Score node: LSE-C, LSE-D and the audio-video offset of a video, as papers report them."""

from __future__ import annotations

import logging
import os

import torch

from ..latentsync_core.audio import comfy_audio_parts
from ..latentsync_core.constants import S3FD_FILENAME, SYNCNET_V2_FILENAME
from ..latentsync_core.download import ensure_model_file
from ..latentsync_core.errors import LatentSyncError, ModelMissingError
from ..latentsync_core.options import FaceOptions, ScoreOptions, from_widgets, node_inputs
from ..latentsync_core.sync_s3fd import load_s3fd, use_s3fd
from ..latentsync_core.sync_score import load_syncnet_v2
from ..latentsync_core.sync_video import ArrayFrames, fixable, score_frames, score_video, shift_audio
from . import comfy_bridge as bridge
from .face import task_path
from .types import CATEGORY
from .video_files import remove_quietly, video_source

logger = logging.getLogger(__name__)
STAGES = {"faces": "finding faces", "score": "scoring"}


class LatentSyncSyncScore:
    NODE_ID = "LatentSyncSyncScore"
    DISPLAY_NAME = "LatentSync Sync Score"
    CATEGORY = f"{CATEGORY}/score"
    FUNCTION = "score"
    OUTPUT_NODE = True  # shows its summary even with no output connected
    DESCRIPTION = (
        "Measures lip sync as papers do, with joonson's SyncNet (syncnet_v2): LSE-C (confidence, higher is "
        "better; good lip sync is roughly 7-9 with the real weights), LSE-D (distance, lower is better) and the "
        "audio-video offset. crops = s3fd finds faces as the official evaluation (numbers comparable with "
        "papers); landmarks uses LatentSync's own face track (compare results only with each other)."
    )
    RETURN_TYPES = ("FLOAT", "FLOAT", "INT", "FLOAT", "STRING", "IMAGE", "AUDIO")
    RETURN_NAMES = ("lse_c", "lse_d", "offset_frames", "offset_ms", "summary", "plot", "fixed_audio")
    OUTPUT_TOOLTIPS = (
        "LSE-C: SyncNet confidence (median minus minimum mean distance); higher is better.",
        "LSE-D: the smallest mean SyncNet distance over the offsets searched; lower is better.",
        "Audio-video offset in frames at 25 fps: + means the sound comes early; 0 is in sync.",
        "The offset in milliseconds.",
        "The figures as one line of text (also shown on the node).",
        "Confidence over time and the mean distance per offset (minimum marked).",
        "The audio moved to cancel the measured offset when it is trusted (LSE-C >= 3 and |offset| <= 6 frames, "
        "the official data-pipeline rule); otherwise the audio unchanged.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        # SyncNet v2 files only (syncnet_v2.model, or a renamed copy with "syncnet_v2" in its name)
        files = sorted({n for n in bridge.model_files(suffixes=(".model", ".pt", ".pth", ".safetensors"))
                        if n.endswith(".model") or "syncnet_v2" in n.rsplit("/", 1)[-1]} | {SYNCNET_V2_FILENAME})
        return {
            "required": {
                "syncnet": (files, {"default": SYNCNET_V2_FILENAME,
                                    "tooltip": f"SyncNet weights under models/latentsync/ ({SYNCNET_V2_FILENAME}: "
                                               "downloaded when missing)."}),
                **node_inputs("face", "crops"),
            },
            "optional": {
                "video": ("VIDEO", {"tooltip": "The video to score (its own audio unless AUDIO is connected)."}),
                "images": ("IMAGE", {"tooltip": "Instead of a VIDEO: frames to score, with AUDIO and fps."}),
                "audio": ("AUDIO", {"tooltip": "Score against this audio (needed with IMAGE frames)."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.001,
                                  "tooltip": "Frame rate of the IMAGE frames (a VIDEO carries its own)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }  # fmt: skip

    def score(self, syncnet, video=None, images=None, audio=None, fps=25.0, unique_id=None, **widgets):
        face = FaceOptions(**from_widgets(widgets, ["face"])).face  # checked before any work
        crops = ScoreOptions(**from_widgets(widgets, ["crops"])).crops
        if video is None and images is None:
            raise LatentSyncError("Nothing to score: connect a VIDEO, or IMAGE frames with AUDIO.")
        if video is not None and images is not None:
            raise LatentSyncError("Connect either a VIDEO or IMAGE frames, not both.")
        if images is not None and audio is None:
            raise LatentSyncError("IMAGE frames need an AUDIO input to be scored against.")
        speech = comfy_audio_parts(audio) if audio is not None else None
        device = bridge.compute_device()
        model = load_syncnet_v2(_syncnet_path(syncnet), device)
        detector, aligner = None, None
        if use_s3fd(crops, bridge.model_path(S3FD_FILENAME) is not None):
            detector = load_s3fd(_download(S3FD_FILENAME, "s3fd"), device)
        else:
            from ..latentsync_core.face import FaceAligner

            aligner = FaceAligner(face=face, task_path=task_path())
        progress = bridge.stage_progress(unique_id, STAGES)
        scratch = None
        try:
            if images is not None:
                result = score_frames(model, ArrayFrames(images), len(images), float(fps), aligner, speech,
                                      progress, bridge.check_interrupted, name="the IMAGE frames", detector=detector)
            else:
                path, scratch = video_source(video, "", os.path.join(bridge.temp_directory(), "latentsync"))
                result = score_video(model, path, aligner, speech, progress, bridge.check_interrupted, detector)
                if speech is None:
                    from ..latentsync_core.audio.io import load_audio_file

                    speech = load_audio_file(path)
        finally:
            if aligner is not None:
                aligner.close()
            if scratch is not None:
                remove_quietly(scratch)
        from ..latentsync_core.sync_plot import plot_score

        fix = fixable(result.score)
        waveform, rate = speech
        waveform = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1, torch.as_tensor(waveform).shape[-1])
        fixed = shift_audio(waveform, rate, result.score.offset) if fix else waveform
        summary = result.summary() + ("; audio shifted to cancel the offset" if fix else "")
        logger.info("LatentSync Sync Score: %s", summary)
        plot = torch.from_numpy(plot_score(result)).float().div(255).unsqueeze(0)
        s = result.score
        return {"ui": {"text": [summary]},
                "result": (s.lse_c, s.lse_d, s.offset, result.offset_ms, summary, plot,
                           {"waveform": fixed.unsqueeze(0), "sample_rate": int(rate)})}


def _syncnet_path(name: str) -> str:
    if bridge.model_path(name) is None and name != SYNCNET_V2_FILENAME:
        raise ModelMissingError(f"SyncNet file not found: models/latentsync/{name}")
    return _download(name, "syncnet-v2")


def _download(name: str, kind: str) -> str:
    """The file ``name`` under models/latentsync/, downloaded (as model kind ``kind``) when missing."""
    path = bridge.model_path(name)
    if path is not None:
        return path
    folders = bridge.model_folders()
    return ensure_model_file(kind, folders[0], search_folders=folders[1:], progress=bridge.progress_callback())


NODE_CLASSES = [LatentSyncSyncScore]
