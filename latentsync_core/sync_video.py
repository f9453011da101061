"""The sync score of a whole video file: face crops as the official evaluation cuts them, then LSE-C / LSE-D.

The official pipeline (joonson's ``run_pipeline.py``, as ``syncnet-python``'s ``SyncNetPipeline``) converts
the video to 25 fps, finds faces with S3FD, links them into tracks (gaps of up to 25 frames interpolated,
tracks of more than 50 frames kept), and cuts each track's crop: the box's half-size ``s`` and centre
``(x, y)`` median-filtered over 13 frames, the frame padded with grey 110 by ``s (1 + 2 cs)``, rows
``y - s .. y + s (1 + 2 cs)``, columns ``x ± s (1 + cs)`` with crop scale ``cs = 0.4``, resized to 224x224.
Each track is scored with :func:`latentsync_core.sync_score.score_clip`; the video's score is the official
aggregation over the tracks (:func:`latentsync_core.sync_score.aggregate`).

Here the face boxes come from the pack's own face track (the landmark detector of
:class:`~latentsync_core.face.FaceAligner`: the box around the 68 landmarks), not from S3FD, so the
crops sit slightly differently than the official ones: :attr:`VideoScore.crop_path` says ``"landmarks"``,
and the numbers are comparable with papers only on the official S3FD crops.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import FaceError
from .face.gaps import format_ranges, runs
from .sync_s3fd import TRACK_MIN_FRAMES, detect
from .sync_s3fd import face_tracks as official_face_tracks
from .sync_score import FPS, MIN_SECONDS, SAMPLE_RATE, AggregateScore, SyncScore, aggregate, score_clip
from .video_io import VideoReader, probe_video

log = logging.getLogger(__name__)

CROP_SCALE = 0.4  # the official crop_scale: the crop reaches 0.4 box sizes below the face and to the sides
SMOOTH_FRAMES = 13  # the official median filter over the box size and centre
PAD_GREY = 110  # the official padding colour (cv2.copyMakeBorder value)
CROP_SIZE = 224
MAX_GAP = 25  # frames without a face bridged inside one track (the official num_failed_det)
MIN_TRACK = int(MIN_SECONDS * FPS)  # frames: shorter tracks are not scored (the audio would be under 1 s)
READ_BLOCK = 64  # frames decoded at a time (host memory stays flat in video length)
CROP_PATH = "landmarks"  # crops from the pack's face track ("s3fd": the official detector's)

Progress = Callable[[str, int, int], None]  # (stage, done, total): stages "faces", "crops"


@dataclasses.dataclass(frozen=True)
class VideoScore:
    """A video's sync score.

    score:      the official aggregation over the face tracks (offset in frames at 25 fps, LSE-C, LSE-D).
    tracks:     ``(first frame, end frame)`` at 25 fps of each scored face track, and its :class:`SyncScore`.
    crop_path:  how the face crops were found (``"landmarks"``: the pack's face track, not the official S3FD).
    frames:     video frames at 25 fps; fps: the file's frame rate.
    """

    score: AggregateScore
    tracks: list[tuple[tuple[int, int], SyncScore]]
    crop_path: str
    frames: int
    fps: float

    @property
    def offset_ms(self) -> float:
        return self.score.offset * 1000.0 / FPS

    @property
    def per_frame_conf(self) -> np.ndarray:
        """float32 ``[frames]``: each track's confidence curve at its frames (window i covers frames i..i+4:
        shown at its middle frame), NaN where no track is scored."""
        curve = np.full(self.frames, np.nan, dtype=np.float32)
        for (start, _), s in self.tracks:
            at = start + np.arange(len(s.per_frame_conf)) + 2
            curve[at[at < self.frames]] = s.per_frame_conf[: int((at < self.frames).sum())]
        return curve

    def summary(self) -> str:
        s = self.score
        return (f"LSE-C {s.lse_c:.3f}, LSE-D {s.lse_d:.3f}, offset {s.offset:+d} frames ({self.offset_ms:+.0f} ms) "
                f"over {len(self.tracks)} face track(s) of {self.frames} frames at 25 fps; crops: {self.crop_path} "
                f"({'comparable with papers' if self.crop_path == 's3fd' else 'not the official S3FD crops'})")

    def as_dict(self) -> dict[str, Any]:
        return {"lse_c": self.score.lse_c, "lse_d": self.score.lse_d, "offset_frames": self.score.offset,
                "offset_ms": self.offset_ms, "crop_path": self.crop_path, "frames": self.frames, "fps": self.fps,
                "tracks": [{"frames": [a, b], "lse_c": s.lse_c, "lse_d": s.lse_d, "offset_frames": s.offset}
                           for (a, b), s in self.tracks]}


def frames_at_25fps(num_frames: int, fps: float) -> np.ndarray:
    """int64 ``[M]``: the source frame shown at each 25 fps frame (``ffmpeg -r 25``: the nearest earlier
    frame by presentation time), for a clip of ``num_frames`` frames at ``fps``."""
    if abs(fps - FPS) < 1e-6:
        return np.arange(num_frames)
    count = int(np.floor(num_frames / fps * FPS + 1e-9))
    return np.minimum(np.floor(np.arange(count) * fps / FPS + 1e-9).astype(np.int64), num_frames - 1)


def landmark_boxes(landmarks68: np.ndarray) -> np.ndarray:
    """float64 ``[N, 4]`` ``(x0, y0, x1, y1)``: the box around each frame's 68 landmarks (NaN rows stay NaN)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    return np.concatenate([lm.min(axis=1), lm.max(axis=1)], axis=1)


def smoothed_geometry(boxes: np.ndarray) -> np.ndarray:
    """float64 ``[N, 3]`` ``(s, x, y)``: half of the box's larger side and its centre, each median-filtered over
    13 frames (the official crop_video; ``scipy.signal.medfilt`` pads the ends with zeros, as there)."""
    from scipy.signal import medfilt

    b = np.asarray(boxes, dtype=np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x, y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([medfilt(v, SMOOTH_FRAMES) for v in (s, x, y)], axis=1)


def crop_face(frame: np.ndarray, s: float, x: float, y: float, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """One frame uint8 ``[H, W, 3]`` -> its official sync crop uint8 ``[224, 224, 3]`` (same channel order)."""
    import cv2

    pad = int(s * (1 + 2 * crop_scale))
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_GREY,) * 3)
    my, mx = y + pad, x + pad
    y1, y2 = int(my - s), int(my + s * (1 + 2 * crop_scale))
    x1, x2 = int(mx - s * (1 + crop_scale)), int(mx + s * (1 + crop_scale))
    return cv2.resize(padded[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE))  # INTER_LINEAR, as the official resize


Track = tuple[int, int, np.ndarray]  # (first 25 fps frame, end frame (exclusive), face boxes float64 [n, 4])


def face_tracks(found: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` (end exclusive) runs of frames with a face (gaps already bridged), at least
    :data:`MIN_TRACK` frames long."""
    return [(a, b + 1) for a, b in runs(np.asarray(found, dtype=bool)) if b + 1 - a >= MIN_TRACK]


def _blocks(reader, pick: np.ndarray, start: int, stop: int, check_interrupt=None):
    """``(first index, uint8 frames)`` of the 25 fps frames ``pick[start:stop]``, READ_BLOCK at a time."""
    for first in range(start, stop, READ_BLOCK):
        if check_interrupt is not None:
            check_interrupt()
        rows = pick[first:min(stop, first + READ_BLOCK)]
        yield first, reader.read(int(rows[0]), int(rows[-1]) + 1)[rows - rows[0]]


def landmark_tracks(reader, pick: np.ndarray, aligner, progress=None, check_interrupt=None) -> tuple[list[Track], str]:
    """The pack's face path: landmarks of every 25 fps frame, gaps of up to 25 frames bridged, runs of at
    least 1 s, boxes around the 68 landmarks. Returns the tracks and the frames without a face (text)."""
    from .face.gaps import bridge_gaps

    m = len(pick)
    landmarks, found = np.full((m, 68, 2), np.nan), np.zeros(m, dtype=bool)
    for first, frames in _blocks(reader, pick, 0, m, check_interrupt):
        landmarks[first:first + len(frames)], found[first:first + len(frames)] = aligner.detect(list(frames))
        if progress is not None:
            progress("faces", first + len(frames), m)
    landmarks, found, _ = bridge_gaps(landmarks, found, MAX_GAP)
    tracks = [(a, b, landmark_boxes(landmarks[a:b])) for a, b in face_tracks(found)]
    return tracks, format_ranges(runs(~found))


def s3fd_tracks(reader, pick: np.ndarray, detector, progress=None, check_interrupt=None) -> tuple[list[Track], str]:
    """The official face path (:mod:`latentsync_core.sync_s3fd`): S3FD on every 25 fps frame, the official
    tracks. Returns the tracks and the frames without a detection (text)."""
    m = len(pick)
    detections: list[np.ndarray] = []
    for first, frames in _blocks(reader, pick, 0, m, check_interrupt):
        detections += detect(detector, frames)
        if progress is not None:
            progress("faces", first + len(frames), m)
    return official_face_tracks(detections), format_ranges(runs(np.array([len(d) == 0 for d in detections])))


def _crops(reader, pick: np.ndarray, track: Track) -> np.ndarray:
    """uint8 ``[n, 224, 224, 3]`` RGB crops of one track's frames."""
    a, b, boxes = track
    geometry = smoothed_geometry(boxes)
    out = np.empty((b - a, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    for first, frames in _blocks(reader, pick, a, b):
        for i, frame in enumerate(frames):
            out[first - a + i] = crop_face(frame, *geometry[first - a + i])
    return out


class ArrayFrames:
    """Frames already in memory (a ComfyUI IMAGE ``[N, H, W, 3]`` float 0..1, or uint8) as a frame source:
    ``read(start, stop)`` -> uint8 ``[n, H, W, 3]`` (converted a block at a time)."""

    def __init__(self, frames: Any):
        self.frames = frames
        self.num_frames = len(frames)

    def read(self, start: int, stop: int) -> np.ndarray:
        block = self.frames[start:stop]
        if isinstance(block, torch.Tensor):
            block = block.detach().cpu()
            if block.is_floating_point():
                return (block.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            return block.numpy()
        block = np.asarray(block)
        if np.issubdtype(block.dtype, np.floating):
            return (np.clip(block, 0, 1) * 255).round().astype(np.uint8)
        return block.astype(np.uint8, copy=False)


def score_video(
    model: torch.nn.Module,
    video: str,
    aligner=None,
    audio: tuple[Any, int] | None = None,
    progress: Progress | None = None,
    check_interrupt: Callable[[], None] | None = None,
    detector=None,
) -> VideoScore:
    """Score the lip sync of a video file.

    model: the ``S`` network (:func:`~latentsync_core.sync_score.load_syncnet_v2`). video: any file PyAV reads.
    aligner: a :class:`~latentsync_core.face.FaceAligner` (its landmark detector and face selection) for
    the pack's crops, or detector: S3FD (:func:`~latentsync_core.sync_s3fd.load_s3fd`) for the official ones. audio:
    ``(waveform [C, T] or [T] in [-1, 1], sample rate)``; None = the video's own audio track. Raises
    :class:`FaceError` when no face track of at least 1 s exists (naming the frames without a face) and
    :class:`AudioError` for missing, silent or too short audio, before the network runs.
    """
    from .audio.io import load_audio_file

    info = probe_video(video)  # a clear error for a missing or broken file
    if audio is None:
        audio = load_audio_file(video, sample_rate=SAMPLE_RATE, mono=True)
    with VideoReader(video) as reader:
        return score_frames(model, reader, info.num_frames, float(info.fps), aligner, audio, progress,
                            check_interrupt, name=video, detector=detector)


def score_frames(
    model: torch.nn.Module,
    frames,
    num_frames: int,
    fps: float,
    aligner,
    audio: tuple[Any, int],
    progress: Progress | None = None,
    check_interrupt: Callable[[], None] | None = None,
    name: str = "the video",
    detector=None,
) -> VideoScore:
    """:func:`score_video` on a frame source (``read(start, stop)`` -> uint8 RGB ``[n, H, W, 3]``: a
    ``VideoReader`` or :class:`ArrayFrames`) of ``num_frames`` frames at ``fps``."""
    from .sync_score import _audio_16k, check_audio

    waveform, rate = audio
    waveform = torch.as_tensor(waveform, dtype=torch.float32)
    samples = _audio_16k(waveform.reshape(-1, waveform.shape[-1]).mean(0), rate)
    check_audio(samples)  # before any face work
    pick = frames_at_25fps(num_frames, fps)
    if (aligner is None) == (detector is None):
        raise ValueError("give an aligner (the pack's crops) or an S3FD detector (the official crops), not both")
    if detector is not None:
        tracks, missing = s3fd_tracks(frames, pick, detector, progress, check_interrupt)
        need = f"S3FD face track of more than {TRACK_MIN_FRAMES} frames"
    else:
        tracks, missing = landmark_tracks(frames, pick, aligner, progress, check_interrupt)
        need = f"face track of at least {MIN_SECONDS:g} s"
    if not tracks:
        raise FaceError(
            f"No {need} to score in {name} ({len(pick)} frames at 25 fps"
            + (f"; no face in frames {missing}" if missing else "") + ")."
        )
    crop_path = "s3fd" if detector is not None else CROP_PATH
    return _score_tracks(model, frames, pick, tracks, samples, crop_path, float(fps), progress, check_interrupt)


def _score_tracks(model, frames, pick: np.ndarray, tracks: list[Track], samples: torch.Tensor, crop_path: str,
                  fps: float, progress: Progress | None = None, check_interrupt=None) -> VideoScore:
    """Score each track's crops against its audio (16 kHz mono ``samples``) and aggregate."""
    from .sync_score import check_audio

    scored = []
    per_frame = SAMPLE_RATE // FPS
    for k, (a, b, boxes) in enumerate(tracks):
        if check_interrupt is not None:
            check_interrupt()
        pcm = samples[a * per_frame: b * per_frame]
        if len(pcm) >= MIN_SECONDS * SAMPLE_RATE:  # else the audio ends before this track does
            scored.append(((a, b), score_clip(model, _crops(frames, pick, (a, b, boxes)), pcm)))
        if progress is not None:
            progress("score", k + 1, len(tracks))
    if not scored:
        check_audio(samples[tracks[0][0] * per_frame:])  # raises: the audio is too short there
    return VideoScore(aggregate([s for _, s in scored]), scored, crop_path, len(pick), fps)


def score_landmarks(model: torch.nn.Module, frames, landmarks68: np.ndarray, found, audio: tuple[Any, int]
                    ) -> VideoScore:
    """The landmarks path of :func:`score_frames` on landmarks already found (a 25 fps frame source,
    ``landmarks68`` float ``[N, 68, 2]`` in its pixels, ``found`` bool ``[N]`` with gaps already bridged): the
    same tracks, crops and score without detecting the faces again (``prepare``'s sync filter)."""
    from .sync_score import _audio_16k, check_audio

    waveform, rate = audio
    waveform = torch.as_tensor(waveform, dtype=torch.float32)
    samples = _audio_16k(waveform.reshape(-1, waveform.shape[-1]).mean(0), rate)
    check_audio(samples)
    landmarks = np.asarray(landmarks68, dtype=np.float64)
    tracks = [(a, b, landmark_boxes(landmarks[a:b])) for a, b in face_tracks(found)]
    if not tracks:
        raise FaceError(f"No face track of at least {MIN_SECONDS:g} s to score ({len(landmarks)} frames).")
    return _score_tracks(model, frames, np.arange(len(landmarks)), tracks, samples, CROP_PATH, float(FPS))


# -- acting on a score --------------------------------------------------------------------------------------
FIX_MIN_CONFIDENCE = 3.0  # the official data pipeline shifts a clip's audio only when LSE-C >= 3 ...
FIX_MAX_OFFSET = 6  # ... and |offset| <= 6 frames (larger offsets are more likely a wrong minimum)


def trusted(score: AggregateScore) -> bool:
    """Whether a score is confident enough to act on: LSE-C >= 3 and |offset| <= 6 frames (the official data
    pipeline keeps such clips, shifted by the offset, and drops the rest)."""
    return score.lse_c >= FIX_MIN_CONFIDENCE and abs(score.offset) <= FIX_MAX_OFFSET


def fixable(score: AggregateScore) -> bool:
    """Whether the measured offset is trusted enough to correct (the official data-pipeline rule)."""
    return score.offset != 0 and trusted(score)


def shift_audio(waveform: torch.Tensor, rate: int, offset_frames: int) -> torch.Tensor:
    """``waveform [..., T]`` moved to cancel an offset of ``offset_frames`` (at 25 fps; + = the sound comes
    early, so it is delayed): the same length, silence where it moved away from the edge."""
    length = waveform.shape[-1]
    shift = max(-length, min(length, round(offset_frames * rate / FPS)))
    out = torch.zeros_like(waveform)
    if shift >= 0:
        out[..., shift:] = waveform[..., : length - shift]
    else:
        out[..., : length + shift] = waveform[..., -shift:]
    return out
