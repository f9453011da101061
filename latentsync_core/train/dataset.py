"""Training data: a prepared dataset folder, and samples drawn as the official ``UNetDataset`` draws them.

A dataset folder holds ``manifest.jsonl`` (a line per segment: ``name``, ``frames``, ``file``) and one
``segments/<name>.npz`` per segment with everything a training step reads, computed once:

- ``faces``    uint8 ``[N, res, res, 3]``: the aligned faces (the official affine crop, 25 fps);
- ``features`` float32 ``[L, 5, 384]``: the whisper features of the segment's audio (50 per second);
- ``mel``      float32 ``[80, M]``: the Wav2Lip-style SyncNet mel of the same audio (80 columns per second).

Sampling (official ``UNetDataset.get_frames`` and ``__getitem__``): segments shorter than 48 frames are never
drawn; a 16-frame gt window starts uniformly in ``[0, N - 16]``; the reference window starts uniformly in the
same range, redrawn while it overlaps the gt window (``start - 16 < ref < start + 16``); the mel window is the
52 columns from ``int(80 * start / 25)``; the U-Net's audio rows are the whisper windows of the gt frames
(:func:`latentsync_core.timing.frame_windows`, the official ``crop_overlap_audio_window``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Sequence

import numpy as np
import torch

from ..audio.syncnet_mel import mel_window
from ..constants import CHUNK_FRAMES, DEFAULT_FPS
from ..errors import InputMismatchError, LatentSyncError
from ..safe_output import atomic_path
from ..timing import frame_windows

MANIFEST = "manifest.jsonl"
SEGMENTS = "segments"
MIN_SEGMENT_FRAMES = 3 * CHUNK_FRAMES  # the official loader skips shorter videos


class DatasetError(LatentSyncError):
    """A dataset folder that cannot be trained on (missing, empty, too short, broken segment)."""


@dataclasses.dataclass(frozen=True)
class Segment:
    name: str
    frames: int
    file: str  # absolute path of its .npz
    resolution: int = 256  # face size in px


def write_segment(dataset_dir: str, name: str, faces: np.ndarray, features: np.ndarray, mel: np.ndarray,
                  **meta) -> dict:
    """Store one segment (atomically) and return its manifest line (not yet appended: see
    :func:`append_manifest`). faces uint8 ``[N, res, res, 3]``, features ``[L, 5, 384]``, mel ``[80, M]``."""
    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
        raise InputMismatchError(f"segment {name}: faces must be uint8 [N, res, res, 3], got {faces.dtype} {faces.shape}")
    rel = f"{SEGMENTS}/{name}.npz"
    path = os.path.join(dataset_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, faces=faces, features=np.asarray(features, np.float32), mel=np.asarray(mel, np.float32))
    return {"name": name, "frames": int(len(faces)), "file": rel, "resolution": int(faces.shape[1]), **meta}


def append_line(path: str, line: dict) -> None:
    """Append one JSON line to ``path``, safely while other processes append to it (``prepare`` on several
    ranks): the file is opened ``O_APPEND`` (every write lands at the end, never over another's) and the line
    goes out in one ``write`` under an exclusive ``flock`` (where there is one: not on Windows), so lines never
    interleave, even on file systems where a plain append of a long line could be split. One shared file, not
    a part per rank: the dataset stays one ``manifest.jsonl`` whatever the number of processes."""
    data = (json.dumps(line) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _locked(fd, exclusive=True):
            written = os.write(fd, data)
            while written < len(data):  # a regular file takes it all at once; a short write is finished here
                written += os.write(fd, data[written:])
    finally:
        os.close(fd)


class _locked:
    """``flock`` held on ``fd`` for a ``with`` block (nothing where fcntl is missing)."""

    def __init__(self, fd: int, exclusive: bool):
        self.fd, self.exclusive = fd, exclusive

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: one process at a time there
            self.fcntl = None
            return self
        self.fcntl = fcntl
        fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc):
        if self.fcntl is not None:
            self.fcntl.flock(self.fd, self.fcntl.LOCK_UN)


def append_manifest(dataset_dir: str, line: dict) -> None:
    """Add a segment's line to ``manifest.jsonl`` (after its file exists: a crash never lists a missing file;
    safe while other processes append: :func:`append_line`)."""
    append_line(os.path.join(dataset_dir, MANIFEST), line)


def read_manifest(dataset_dir: str) -> list[Segment]:
    """The segments listed in ``manifest.jsonl`` whose files exist (later lines of a name win)."""
    path = os.path.join(dataset_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DatasetError(f"{dataset_dir} is not a prepared dataset (no {MANIFEST}): run "
                           "python -m latentsync_core prepare SRC_DIR DATASET_DIR first.")
    segments: dict[str, Segment] = {}
    with open(path, encoding="utf-8") as fh, _locked(fh.fileno(), exclusive=False):  # no half-written line
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                segments[row["name"]] = Segment(row["name"], int(row["frames"]), os.path.join(dataset_dir, row["file"]),
                                                int(row.get("resolution", 256)))
            except (ValueError, KeyError, TypeError) as exc:
                raise DatasetError(f"{path} line {n} is broken ({exc}).") from None
    return [s for s in segments.values() if os.path.isfile(s.file)]


class TrainDataset:
    """Samples of a prepared dataset: ``draw(rng)`` picks (segment, start, ref start) as the official loader;
    ``sample(...)`` builds the tensors of one; ``batch(...)`` stacks samples into a
    :class:`~latentsync_core.train.step.TrainBatch`."""

    def __init__(self, dataset_dir: str, fps: float = DEFAULT_FPS, cache: int = 8):
        self.segments = [s for s in read_manifest(dataset_dir) if s.frames >= MIN_SEGMENT_FRAMES]
        if not self.segments:
            raise DatasetError(f"{dataset_dir} has no segment of at least {MIN_SEGMENT_FRAMES} frames "
                               f"({MIN_SEGMENT_FRAMES / fps:.2f} s) to train on.")
        sizes = {s.resolution for s in self.segments}
        if len(sizes) > 1:
            raise DatasetError(f"{dataset_dir} mixes face sizes {sorted(sizes)}: prepare it again at one size.")
        self.resolution = sizes.pop()
        self.fps, self._cache, self._cache_size = float(fps), {}, cache

    def __len__(self) -> int:
        return len(self.segments)

    def hold_out(self) -> tuple[Segment, bool]:
        """Take the last segment (manifest order) out of the draws, for validation: ``(segment, True)``.
        A dataset of one segment keeps it (``(segment, False)``: validation then sees training data)."""
        segment = self.segments[-1]
        if len(self.segments) < 2:
            return segment, False
        self.segments = self.segments[:-1]
        self._cache.pop(len(self.segments), None)  # cached by index: the held-out one's slot is gone
        return segment, True

    def _load(self, i: int) -> dict[str, np.ndarray]:
        if i not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            try:
                with np.load(self.segments[i].file) as z:
                    self._cache[i] = {k: z[k] for k in ("faces", "features", "mel")}
            except (OSError, ValueError, KeyError) as exc:
                raise DatasetError(f"segment {self.segments[i].file} is unreadable ({exc}).") from None
        return self._cache[i]

    def draw(self, rng: random.Random) -> tuple[int, int, int]:
        """(segment, start, ref start) with the official rule; windows whose mel would run past the audio's
        end are drawn again, as the official loader does."""
        while True:
            i = rng.randint(0, len(self.segments) - 1)
            n = self.segments[i].frames
            start = rng.randint(0, n - CHUNK_FRAMES)
            while True:
                ref = rng.randint(0, n - CHUNK_FRAMES)
                if not start - CHUNK_FRAMES < ref < start + CHUNK_FRAMES:
                    break
            try:
                mel_window(self._load(i)["mel"], start, self.fps)
            except LatentSyncError:
                continue
            return i, start, ref

    def sample(self, segment: int, start: int, ref: int) -> dict[str, torch.Tensor]:
        """gt / ref pixels float32 ``[16, 3, res, res]`` in [-1, 1], mel ``[1, 80, 52]``, audio_embeds
        ``[16, 50, 384]`` (float32)."""
        data = self._load(segment)

        def pixels(first: int) -> torch.Tensor:
            faces = torch.from_numpy(data["faces"][first:first + CHUNK_FRAMES])
            if len(faces) != CHUNK_FRAMES:
                raise InputMismatchError(f"window at {first} runs past the segment's {len(data['faces'])} frames")
            return ((faces.permute(0, 3, 1, 2).float() / 255.0) - 0.5) / 0.5  # official process_images

        mel = torch.from_numpy(np.ascontiguousarray(mel_window(data["mel"], start, self.fps))).float()[None]
        rows = frame_windows(torch.from_numpy(data["features"]), np.arange(start, start + CHUNK_FRAMES), self.fps)
        return {"gt": pixels(start), "ref": pixels(ref), "mel": mel, "audio_embeds": rows.float()}

    def batch(self, picks: Sequence[tuple[int, int, int]], keep_mask: torch.Tensor):
        """A :class:`~latentsync_core.train.step.TrainBatch` of the picked samples (``keep_mask`` ``[H, W]``,
        1 = keep: the official fixed mask)."""
        from .step import TrainBatch

        samples = [self.sample(*p) for p in picks]
        stack = lambda key: torch.stack([s[key] for s in samples])  # noqa: E731
        return TrainBatch(stack("gt"), stack("ref"), keep_mask, stack("mel"), stack("audio_embeds"))
