"""Data passed between pipeline stages (and between ComfyUI nodes as custom socket types).

``FrameAudio`` is what the Whisper Embedding node emits (``LATENTSYNC_AUDIO``); ``FaceTrack`` is what
Face Crop & Align emits (``LATENTSYNC_FACES``) and Paste Back consumes. Both are index-aligned with the
video frames they describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .constants import DEFAULT_FPS, RESOLUTION, SAMPLE_RATE


@dataclass(frozen=True)
class FrameAudio:
    """Audio conditioning for ``num_frames`` video frames at ``fps``.

    chunks:      float32 ``[num_frames, 50, 384]`` per-frame whisper windows (CPU).
    fps:         video frame rate the windows were cut for.
    waveform:    float32 ``[1, T]`` mono 16 kHz waveform in [-1, 1] (for writing the output video).
    sample_rate: always ``SAMPLE_RATE`` (16000).
    """

    chunks: torch.Tensor
    fps: float = DEFAULT_FPS
    waveform: torch.Tensor | None = None
    sample_rate: int = SAMPLE_RATE

    @property
    def num_frames(self) -> int:
        return int(self.chunks.shape[0])


@dataclass(frozen=True)
class FaceTrack:
    """Where the face is in every frame, and how to put a generated face back.

    affines:     float64 ``[N, 2, 3]`` image -> crop affine per frame (crop of ``crop_size``; NaN where not found).
    found:       bool ``[N]``; False = no face: the frame passes through untouched.
    landmarks:   float32 ``[N, 68, 2]`` (smoothed) landmarks in image pixels (NaN where not found).
    frame_index: int64 ``[N]``: the index of the original video frame each entry belongs to. Identity
                 after alignment; after the sampler length-matches the video to the audio (ping-pong
                 loop or cut) it maps each output frame back to its source frame.
    frame_size:  (H, W) of the original frames.
    crop_size:   (w, h) of the affine crop before the resize to ``resolution`` (210, 280 at 256).
    resolution:  side of the square aligned face (256 for LatentSync 1.5, 512 for 1.6).
    """

    affines: np.ndarray
    found: np.ndarray
    landmarks: np.ndarray
    frame_size: tuple[int, int]
    crop_size: tuple[int, int]
    resolution: int = RESOLUTION
    frame_index: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.frame_index is None:
            object.__setattr__(self, "frame_index", np.arange(len(self.found), dtype=np.int64))

    def __len__(self) -> int:
        return int(len(self.found))

    def take(self, indices) -> FaceTrack:
        """A track for the entries at ``indices`` (used to loop or cut the video to the audio)."""
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            affines=self.affines[idx],
            found=self.found[idx],
            landmarks=self.landmarks[idx],
            frame_index=self.frame_index[idx],
        )
