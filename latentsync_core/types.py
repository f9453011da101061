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
from .timing import frame_windows


@dataclass(frozen=True)
class FrameAudio:
    """Audio conditioning for ``num_frames`` video frames at ``fps``.

    Holds the 50 Hz whisper features, not the per-frame table: each frame's ``[50, 384]`` window is cut
    when a chunk needs it (:meth:`windows`), so 10 minutes at 25 fps take ~60 MB instead of ~1.2 GB.

    features:    float32 ``[L, 5, 384]`` whisper hidden states, 50 per second (CPU).
    num_frames:  how many video frames the audio covers (the output length).
    fps:         video frame rate the windows are cut for.
    waveform:    float32 ``[1, T]`` mono 16 kHz waveform in [-1, 1] (for writing the output video).
    sample_rate: always ``SAMPLE_RATE`` (16000).
    table:       optional precomputed windows ``[num_frames, 50, 384]`` (:meth:`from_windows`); when set,
                 ``features`` may be None.
    """

    features: torch.Tensor | None
    num_frames: int
    fps: float = DEFAULT_FPS
    waveform: torch.Tensor | None = None
    sample_rate: int = SAMPLE_RATE
    table: torch.Tensor | None = None

    @classmethod
    def from_windows(cls, windows: torch.Tensor, fps: float = DEFAULT_FPS, **kwargs) -> FrameAudio:
        """A ``FrameAudio`` over given per-frame windows ``[N, 50, 384]`` (tests, custom conditioning)."""
        return cls(features=None, num_frames=int(windows.shape[0]), fps=fps, table=windows, **kwargs)

    def windows(self, frames=None) -> torch.Tensor:
        """Windows of the given output frames (int ``[n]``; default all, 77 KB a frame: short clips only):
        float ``[n, 50, 384]``."""
        if frames is None:
            frames = np.arange(self.num_frames)
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        if len(frames) and (frames.min() < 0 or frames.max() >= self.num_frames):
            raise IndexError(f"audio frames {frames.min()}..{frames.max()} outside 0..{self.num_frames - 1}")
        if self.table is not None:
            return self.table[torch.from_numpy(frames)]
        return frame_windows(self.features, frames, self.fps)


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
