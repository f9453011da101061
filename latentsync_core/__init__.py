"""latentsync_core: LatentSync 1.5/1.6 lip sync as a plain torch/numpy library.

No ComfyUI imports: usable alone (``python -m latentsync_core --help``) and from the ComfyUI nodes in
``nodes/``. Public names are imported lazily so that ``import latentsync_core`` stays cheap and a
missing optional dependency only matters to the stage that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import constants
from .errors import (
    AudioError,
    CheckpointError,
    FaceError,
    InputMismatchError,
    LatentSyncError,
    ModelMissingError,
)
from .types import FaceTrack, FrameAudio

__version__ = "0.1.0"

# public name -> submodule that defines it (the DESIGN.md core API contract and its helpers)
_LAZY = {
    "load_unet": ".unet",
    "UNet3DConditionModel": ".unet",
    "load_whisper": ".audio",
    "log_mel": ".audio",
    "audio_features": ".audio",
    "frame_audio_chunks": ".audio",
    "num_frames_for_duration": ".audio",
    "load_audio_file": ".audio",
    "embed_audio": ".audio",
    "FaceAligner": ".face",
    "AlignmentResult": ".face",
    "paste_back": ".face",
    "paste_back_track": ".face",
    "fixed_mask": ".face",
    "draw_preview": ".face",
    "draw_previews": ".face",
    "silent_frames": ".audio.silence",
    "check_finite": ".finite",
    "NonFiniteError": ".finite",
    "LipSyncPipeline": ".pipeline",
    "load_vae": ".vae",
    "ping_pong_indices": ".timing",
}

__all__ = [
    "constants",
    "AudioError",
    "CheckpointError",
    "FaceError",
    "InputMismatchError",
    "LatentSyncError",
    "ModelMissingError",
    "FaceTrack",
    "FrameAudio",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
