"""A fast sync signal: LatentSync's own StableSyncNet on the aligned faces. NOT LSE-C / LSE-D.

The network the LatentSync U-Net is trained against (:mod:`latentsync_core.train.syncnet`) embeds 16
aligned frames (the lower half of each 256 px face, ``[-1, 1]``, channels frame-major) and the 16 frames'
Wav2Lip-style mel window (:mod:`latentsync_core.audio.syncnet_mel`); their cosine similarity is 1 for
perfect sync as the network sees it, 0 for none. It runs on the faces the pipeline already aligned (no
detector, no JPEG round trip) and scores every 16-frame window: useful to compare settings or filter
training clips, but it is a different number from the papers' LSE and is labelled so everywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from .audio.syncnet_mel import COLUMNS_PER_SECOND, WINDOW_COLUMNS, mel_window, melspectrogram
from .constants import CHUNK_FRAMES, RESOLUTION
from .errors import InputMismatchError

BATCH = 8  # windows per forward pass


@dataclasses.dataclass(frozen=True)
class FastSyncScore:
    """similarities: float32 ``[W]``, the cosine similarity of each 16-frame window (starts ``[W]`` at
    0, 16, 32, ...); mean: their mean. Not LSE: see the module docstring."""

    similarities: np.ndarray
    starts: np.ndarray
    mean: float
    label: str = "StableSyncNet cosine similarity (not LSE)"

    def summary(self) -> str:
        return f"{self.label}: {self.mean:.3f} over {len(self.similarities)} windows of {CHUNK_FRAMES} frames"

    def as_dict(self) -> dict:
        return {"scorer": "fast", "label": self.label, "similarity": self.mean, "windows": len(self.similarities),
                "window_starts": self.starts.tolist(), "similarities": self.similarities.tolist()}


def visual_windows(faces: torch.Tensor, starts: np.ndarray) -> torch.Tensor:
    """Aligned faces ``[N, res, res, 3]`` (uint8 or float 0..1) -> float32 ``[W, 48, 128, 256]``: the lower
    halves of each window's 16 frames at 256 px in ``[-1, 1]``, channel = 3 * frame + colour (as training)."""
    faces = torch.as_tensor(faces)
    pixels = faces.float() / 255.0 if not faces.is_floating_point() else faces.float()
    pixels = pixels.permute(0, 3, 1, 2) * 2 - 1  # [N, 3, res, res]
    if pixels.shape[-1] != RESOLUTION:  # 1.6's 512 px faces: the SyncNet sees 256 px
        pixels = F.interpolate(pixels, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False,
                               antialias=True)
    index = torch.as_tensor(starts)[:, None] + torch.arange(CHUNK_FRAMES)[None]  # [W, 16]
    windows = pixels[index.reshape(-1)].reshape(len(starts), CHUNK_FRAMES * 3, RESOLUTION, RESOLUTION)
    return windows[:, :, RESOLUTION // 2:]


@torch.no_grad()
def window_similarities(syncnet: torch.nn.Module, faces: torch.Tensor, starts: np.ndarray, mel: np.ndarray,
                        first_frame: int = 0, fps: float = 25.0) -> np.ndarray:
    """float32 ``[len(starts)]``: the cosine similarity of the 16-frame windows of ``faces`` starting at
    ``starts`` (indices into ``faces``), ``faces[0]`` being video frame ``first_frame`` of the ``mel``."""
    param = next(syncnet.parameters())
    sims = []
    for i in range(0, len(starts), BATCH):
        part = starts[i:i + BATCH]
        visual = visual_windows(faces, part).to(param.device, param.dtype)
        windows = np.stack([mel_window(mel, first_frame + int(s), fps) for s in part])[:, None]
        vision, sound = syncnet(visual, torch.from_numpy(windows).to(param.device, param.dtype))
        sims.append(F.cosine_similarity(vision.float(), sound.float()).cpu())
    return torch.cat(sims).numpy() if sims else np.zeros(0, np.float32)


def _fits(starts: np.ndarray, mel: np.ndarray, first_frame: int, fps: float) -> np.ndarray:
    """The window starts whose mel window lies inside the audio."""
    ok = [int(COLUMNS_PER_SECOND * (first_frame + s) / fps) + WINDOW_COLUMNS <= mel.shape[1] for s in starts]
    return starts[np.asarray(ok, dtype=bool)] if len(starts) else starts


def _too_short(frames: int, seconds: float) -> InputMismatchError:
    return InputMismatchError(
        f"The fast sync score needs at least {CHUNK_FRAMES} frames with a face and audio under them; got "
        f"{frames} frames and {seconds:.2f} s of audio."
    )


def fast_sync_score(syncnet: torch.nn.Module, faces: torch.Tensor, wav16k: np.ndarray, fps: float = 25.0,
                    first_frame: int = 0) -> FastSyncScore:
    """StableSyncNet cosine similarity of every whole 16-frame window of the aligned ``faces``
    ``[N, res, res, 3]`` against 16 kHz mono ``wav16k`` ``[L]`` (float in [-1, 1]), ``faces[0]`` being video
    frame ``first_frame`` of that audio (the mel is computed on the whole audio, as the official dataset
    does); windows whose audio ends early are left out. Raises :class:`InputMismatchError` with fewer than
    16 frames (or audio)."""
    mel = melspectrogram(np.asarray(wav16k, dtype=np.float64))
    starts = _fits(np.arange(0, len(faces) - CHUNK_FRAMES + 1, CHUNK_FRAMES), mel, first_frame, fps)
    if len(starts) == 0:
        raise _too_short(len(faces), len(wav16k) / 16000)
    similarities = window_similarities(syncnet, faces, starts, mel, first_frame, fps)
    return FastSyncScore(similarities, starts, float(similarities.mean()))


def fast_score_video(syncnet: torch.nn.Module, video: str, aligner, audio=None, progress=None) -> FastSyncScore:
    """:func:`fast_sync_score` of a video file, streamed: landmarks of every frame (the aligner's track:
    bridging, smoothing, affines), then 8 windows of aligned faces at a time. Windows with a frame
    without a face are skipped. ``audio``: ``(waveform, rate)``; None = the file's own track."""
    from .audio.io import load_audio_file, to_whisper_input
    from .video_io import VideoReader, probe_video

    info = probe_video(video)
    waveform, rate = audio if audio is not None else load_audio_file(video)
    wav = to_whisper_input(torch.as_tensor(waveform, dtype=torch.float32), int(rate)).numpy()
    mel = melspectrogram(wav)
    n, block = info.num_frames, BATCH * CHUNK_FRAMES
    with VideoReader(video) as reader:
        landmarks, found = np.full((n, 68, 2), np.nan), np.zeros(n, dtype=bool)
        for start in range(0, n, block):
            frames = reader.read(start, min(n, start + block))
            landmarks[start:start + len(frames)], found[start:start + len(frames)] = aligner.detect(list(frames))
            if progress is not None:
                progress("faces", start + len(frames), n)
        _, affines, found, _ = aligner.track(landmarks, found)
        starts = [s for s in range(0, n - CHUNK_FRAMES + 1, CHUNK_FRAMES) if found[s:s + CHUNK_FRAMES].all()]
        starts = _fits(np.asarray(starts, dtype=np.int64), mel, 0, float(info.fps))
        if len(starts) == 0:
            raise _too_short(int(found.sum()), len(wav) / 16000)
        sims = []
        for i in range(0, len(starts), BATCH):
            part = starts[i:i + BATCH]
            frames = reader.read(int(part[0]), int(part[-1]) + CHUNK_FRAMES)
            blank = np.zeros((aligner.resolution, aligner.resolution, 3), np.uint8)  # frames between windows
            faces = torch.from_numpy(np.stack([aligner.warp(f, affines[part[0] + j]) if found[part[0] + j] else blank
                                               for j, f in enumerate(frames)]))
            sims.append(window_similarities(syncnet, faces, part - part[0], mel, int(part[0]), float(info.fps)))
            if progress is not None:
                progress("score", i + len(part), len(starts))
    similarities = np.concatenate(sims)
    return FastSyncScore(similarities, starts, float(similarities.mean()))
