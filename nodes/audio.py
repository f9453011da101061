"""Audio nodes: LatentSync Load Audio, LatentSync Whisper Loader, LatentSync Whisper Embedding
(adapters over ``latentsync_core.audio``)."""

from __future__ import annotations

import hashlib

import torch

from ..latentsync_core.audio import (
    MEDIA_EXTENSIONS,
    comfy_audio_parts,
    embed_audio,
    load_audio_file,
    load_whisper,
)
from ..latentsync_core.constants import DEFAULT_FPS, WHISPER_FILENAME
from ..latentsync_core.download import ensure_model_file
from ..latentsync_core.errors import ModelMissingError
from ..latentsync_core.options import option
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_AUDIO, LATENTSYNC_WHISPER, WHISPER_INPUT

DEVICES = ["auto", "cpu"]
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class LatentSyncLoadAudio:
    NODE_ID = "LatentSyncLoadAudio"
    DISPLAY_NAME = "LatentSync Load Audio"
    CATEGORY = f"{CATEGORY}/audio"
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads the speech track from ComfyUI's input folder: wav, flac, mp3, ogg, m4a/aac, or the audio "
        "track of an mp4/mov/mkv/webm video (decoded with FFmpeg via PyAV), optionally a part of it. "
        "The output is ordinary ComfyUI AUDIO at the file's own sample rate and channels."
    )
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    OUTPUT_TOOLTIPS = ("The decoded audio: waveform [1, channels, samples] in [-1, 1] and its sample rate.",)

    @classmethod
    def INPUT_TYPES(cls):
        # start/duration come BEFORE the file: the front end appends its (unsaved) upload widget after
        # `audio`, and a saved widget placed after it would load back shifted by one.
        return {
            "required": {
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.01, "tooltip": "Seconds to skip at the beginning."}),
                "duration": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.01, "tooltip": "Seconds to keep from start; 0 = to the end."},
                ),
                "audio": (
                    bridge.input_files(MEDIA_EXTENSIONS),
                    {"audio_upload": True, "tooltip": "An audio or video file in ComfyUI's input folder (upload with the button)."},
                ),
            },
        }

    def load(self, audio: str, start: float = 0.0, duration: float = 0.0):
        waveform, rate = load_audio_file(bridge.input_path(audio), start=start, duration=duration or None)
        return ({"waveform": waveform.unsqueeze(0), "sample_rate": rate},)

    @classmethod
    def IS_CHANGED(cls, audio: str, start: float = 0.0, duration: float = 0.0):
        digest = hashlib.sha256(f"{start}:{duration}:".encode())
        try:
            with open(bridge.input_path(audio), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return float("nan")  # unreadable: always re-run (and report the error there)
        return digest.hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, audio: str):
        if not bridge.input_exists(audio):
            return f"Audio file not found in the input folder: {audio}"
        return True


class LatentSyncWhisperLoader:
    NODE_ID = "LatentSyncWhisperLoader"
    DISPLAY_NAME = "LatentSync Whisper Loader"
    CATEGORY = f"{CATEGORY}/audio"
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads the whisper-tiny audio encoder LatentSync listens with, from models/latentsync/whisper/: the "
        "official tiny.pt (downloaded from the LatentSync release on first use when missing) or a Hugging "
        "Face whisper-tiny model.safetensors with its config.json."
    )
    RETURN_TYPES = (LATENTSYNC_WHISPER,)
    RETURN_NAMES = ("whisper",)
    OUTPUT_TOOLTIPS = ("The whisper-tiny encoder: connect it to LatentSync Whisper Embedding.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(set(bridge.model_files("whisper")) | {WHISPER_FILENAME})
        return {
            "required": {
                "whisper": (files, {"default": WHISPER_FILENAME, "tooltip": f"File under models/latentsync/; {WHISPER_FILENAME} is the official one."}),
                "device": (DEVICES, {"default": "auto", "tooltip": "auto: ComfyUI's compute device (the encoder is 30 MB); cpu: keep it off the GPU."}),
                "precision": (
                    list(PRECISIONS),
                    {"default": "fp32", "tooltip": "fp32 reproduces the official features; fp16/bf16 are faster on a GPU and differ slightly."},
                ),
            }
        }

    def load(self, whisper: str, device: str = "auto", precision: str = "fp32"):
        path = bridge.model_path(whisper)
        if path is None:
            if whisper != WHISPER_FILENAME:
                raise ModelMissingError(f"Whisper file not found: models/latentsync/{whisper}")
            folders = bridge.model_folders()
            bar = bridge.progress_bar(100)
            path = ensure_model_file(
                "whisper",
                folders[0],
                search_folders=folders[1:],
                progress=lambda done, total: bar.update_absolute(done * 100 // max(total, 1), 100),
            )
        target = bridge.compute_device() if device == "auto" else torch.device("cpu")
        return (load_whisper(path, device=target, dtype=PRECISIONS[precision]),)


class LatentSyncWhisperEmbedding:
    NODE_ID = "LatentSyncWhisperEmbedding"
    DISPLAY_NAME = "LatentSync Whisper Embedding"
    CATEGORY = f"{CATEGORY}/audio"
    FUNCTION = "embed"
    DESCRIPTION = (
        "Turns speech into what the LatentSync U-Net listens to: whisper-tiny features (50 per second, "
        "computed exactly as the official code does) cut into one 50-token window per video frame at the "
        "video's frame rate. The audio decides the output length: frame_count = round(seconds x fps)."
    )
    RETURN_TYPES = (LATENTSYNC_AUDIO, "INT")
    RETURN_NAMES = ("audio_embeds", "frame_count")
    OUTPUT_TOOLTIPS = (
        "Per-frame audio windows [frames, 50, 384] with the fps and the 16 kHz mono audio: connect to the sampler.",
        "How many video frames the audio covers at this fps (size or trim a video with it).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "audio": ("AUDIO", {"tooltip": "Speech, any sample rate and channels (down-mixed and resampled to 16 kHz mono)."}),
                "whisper": WHISPER_INPUT,
                "fps": (
                    "FLOAT",
                    {"default": DEFAULT_FPS, "min": 1.0, "max": 240.0, "step": 0.001, "tooltip": "Frame rate of the video to lip-sync (the model was trained at 25)."},
                ),
            },
            "optional": {
                "mode": option("audio_mode").input(),
            },
        }

    def embed(self, audio, whisper, fps: float = DEFAULT_FPS, mode: str | None = None):
        mode = option("audio_mode").default if mode is None else option("audio_mode").from_widget(mode)
        waveform, rate = comfy_audio_parts(audio)
        frame_audio = embed_audio(whisper, waveform, rate, fps=fps, mode=mode, progress=bridge.progress_callback())
        return (frame_audio, frame_audio.num_frames)


NODE_CLASSES: list[type] = [LatentSyncLoadAudio, LatentSyncWhisperLoader, LatentSyncWhisperEmbedding]
