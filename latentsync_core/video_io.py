"""Video files with PyAV (FFmpeg's libraries; no ffmpeg binary): read frames in ranges, write once.

- :func:`probe_video`: size, exact frame count, fps, whether there is an audio track.
- :class:`VideoReader`: ``read(start, stop)`` returns frames ``[start, stop)`` as uint8 ``[n, H, W, 3]``
  RGB. Reading forward continues decoding; reading backwards (the ping-pong loop) seeks to the nearest
  keyframe, so only the requested range is ever in memory.
- :class:`VideoWriter`: H.264 (libx264, CRF 18 by default: visually lossless), the input's size and
  frame rate, and the audio muxed as AAC, interleaved with the video as frames arrive. It writes to a
  hidden temporary file beside the output and renames it only when complete
  (:mod:`latentsync_core.safe_output`), so a failed, interrupted or killed run never leaves a broken
  file under the output name and never deletes an earlier one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from .errors import LatentSyncError
from .options import DEFAULT_CRF  # noqa: F401  (x264 quality: the option table's default)
from .safe_output import AtomicOutput, disk_full_error

log = logging.getLogger(__name__)


DEFAULT_PRESET = "medium"
AUDIO_BITRATE = 192_000
_SEEK_AHEAD = 64  # decode forward rather than seek when the next range starts this close


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction  # average frame rate
    num_frames: int
    has_audio: bool

    @property
    def duration(self) -> float:
        return float(self.num_frames / self.fps)


def _open(path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LatentSyncError(f"Video file not found: {path}")
    try:
        container = av.open(path)
    except av.FFmpegError as exc:
        raise LatentSyncError(f"{os.path.basename(path)} is not a video FFmpeg can read ({exc}).") from exc
    if not container.streams.video:
        container.close()
        raise LatentSyncError(f"{os.path.basename(path)} has no video track.")
    return container


def _frame_pts(container, stream, path: str) -> list[int] | None:
    """Presentation timestamps of every frame, in display order (demuxing only: no decoding).

    Raises :class:`LatentSyncError` for a truncated file whose index (``moov`` at the front) lists more
    frames than the file still holds: such a file would otherwise be taken for a shorter video."""
    pts: list[int] | None = []
    count, end = 0, 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        count += 1
        if packet.pos is not None and packet.pos >= 0:
            end = max(end, packet.pos + packet.size)
        if packet.pts is None:
            pts = None
        elif pts is not None:
            pts.append(packet.pts)
    claimed = int(stream.frames or 0)
    if claimed > count and end >= os.path.getsize(path):  # the data stops at the end of the file: cut off
        name = os.path.basename(path)
        whole = max(count - 1, 1)  # the last packet runs into the end of the file: count it as cut off
        raise LatentSyncError(
            f"{name} is truncated: its index lists {claimed} frames but the file holds only {whole} whole ones "
            f"(an interrupted download or copy?). Use the complete file; to use the {whole} frames that are "
            f"there, re-encode them first (e.g. ffmpeg -i {name} -frames:v {whole} fixed.mp4)."
        )
    return sorted(pts) if pts is not None else None


def _fps(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise LatentSyncError("The video does not state a frame rate.")
    return Fraction(rate)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and exact frame count (counted from the packets) of the first video track."""
    with _open(path) as container:
        stream = container.streams.video[0]
        pts = _frame_pts(container, stream, os.fspath(path))
        count = len(pts) if pts is not None else stream.frames
        if not count:
            raise LatentSyncError(f"{os.path.basename(os.fspath(path))}: the video track has no frames.")
        return VideoInfo(
            int(stream.codec_context.width),
            int(stream.codec_context.height),
            _fps(stream),
            int(count),
            bool(container.streams.audio),
        )


class VideoReader:
    """Random-access reading of frame ranges; memory holds only the range asked for."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.container = _open(self.path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.pts = _frame_pts(self.container, self.stream, self.path)  # None: no timestamps, sequential only
        self.index_of = {p: i for i, p in enumerate(self.pts)} if self.pts is not None else {}
        self.num_frames = len(self.pts) if self.pts is not None else int(self.stream.frames)
        self.fps = _fps(self.stream)
        self._restart(0)

    def _restart(self, start: int) -> None:
        """Position the decoder at (or before) frame ``start``."""
        if self.pts is not None and start > 0:
            self.container.seek(self.pts[start], stream=self.stream, backward=True, any_frame=False)
        else:
            self.container.seek(0, stream=self.stream) if self.pts is not None else self._reopen()
        self._decoder = self.container.decode(self.stream)
        self._next = None  # index of the next decoded frame, known after the first one
        self._count = 0  # fallback counter (no timestamps, or decoding from the start)

    def _reopen(self) -> None:
        self.container.close()
        self.container = _open(self.path)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def _decode_next(self):
        try:
            frame = next(self._decoder, None)
        except av.FFmpegError as exc:
            after = self._next if self._next is not None else self._count
            raise LatentSyncError(
                f"{os.path.basename(self.path)}: frame {after} cannot be decoded ({exc}); the file is damaged: "
                "re-encode it or use the original."
            ) from exc
        if frame is None:
            return None, None
        index = self.index_of.get(frame.pts) if frame.pts is not None else None
        if index is None:
            index = self._count if self._next is None else self._next
        self._count = index + 1
        self._next = index + 1
        return index, frame

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` .. ``stop - 1`` as uint8 ``[n, H, W, 3]`` RGB."""
        stop = min(stop, self.num_frames)
        if not 0 <= start < stop:
            raise IndexError(f"frame range {start}..{stop} outside 0..{self.num_frames}")
        ahead = self._next if self._next is not None else 0
        if not (ahead <= start <= ahead + _SEEK_AHEAD):
            self._restart(start)
        out: list[np.ndarray | None] = [None] * (stop - start)
        while True:
            index, frame = self._decode_next()
            if index is None:
                break
            if start <= index < stop:
                out[index - start] = frame.to_ndarray(format="rgb24")
            if index >= stop - 1:
                break
        dropped = [start + i for i, f in enumerate(out) if f is None]
        for i, f in enumerate(out):  # a frame the decoder dropped: repeat its neighbour
            if f is None:
                out[i] = next((g for g in (out[i - 1 :: -1] if i else []) if g is not None), None)
        if any(f is None for f in out):
            raise LatentSyncError(f"{os.path.basename(self.path)}: could not decode frames {start}..{stop - 1}.")
        if dropped:
            log.warning(
                "%s: %d of %d frames in %d..%d did not decode (%s); each was replaced by the frame before it",
                os.path.basename(self.path), len(dropped), stop - start, start, stop - 1,
                ", ".join(map(str, dropped[:10])) + (" ..." if len(dropped) > 10 else ""),
            )
        return np.stack(out)

    def chunks(self, size: int):
        """``(start, frames)`` for consecutive ranges of ``size`` frames, from the first frame on."""
        for start in range(0, self.num_frames, size):
            yield start, self.read(start, min(start + size, self.num_frames))

    def close(self) -> None:
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VideoWriter:
    """Encode RGB frames once to H.264 and mux an audio track as AAC.

    audio: float32 ``[C, T]`` in [-1, 1] (any rate FFmpeg's AAC accepts; more than 2 channels are
    down-mixed) and its rate, or None for a silent video. The audio is cut to the video's length.
    The file appears under ``path`` only after :meth:`close` (or a clean exit of the ``with`` block);
    until then it is a hidden ``.partial`` file in the same folder, removed on failure.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        width: int,
        height: int,
        fps: Fraction | float,
        *,
        audio: tuple[np.ndarray, int] | None = None,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
    ):
        self.path = os.fspath(path)
        self.fps = Fraction(fps).limit_denominator(1001 * 1000)
        self._target = AtomicOutput(self.path)
        self.container = None
        try:
            self._open(width, height, audio, crf, preset)
        except BaseException:
            self._abort()
            raise

    def _open(self, width, height, audio, crf, preset) -> None:
        try:
            self.container = av.open(self._target.tmp, "w")
        except (av.FFmpegError, OSError) as exc:
            raise LatentSyncError(f"Cannot write {self.path}: {exc}; choose a writable location.") from exc
        self.video = self.container.add_stream("libx264", rate=self.fps)
        self.video.width, self.video.height = int(width), int(height)
        # yuv420p halves the colour resolution and needs even sizes; odd sizes keep full chroma instead
        self.video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.video.options = {"crf": str(int(crf)), "preset": preset}
        self.frames_written = 0
        self.audio = None
        if audio is not None:
            samples, rate = audio
            samples = np.asarray(samples, dtype=np.float32)
            if samples.ndim == 1:
                samples = samples[None]
            if samples.shape[0] > 2:
                samples = samples.mean(axis=0, keepdims=True)
            self.samples, self.rate = np.clip(samples, -1.0, 1.0), int(rate)
            self.audio = self.container.add_stream("aac", rate=self.rate)
            self.audio.layout = "stereo" if self.samples.shape[0] == 2 else "mono"
            self.audio.bit_rate = AUDIO_BITRATE
            self.audio_written = 0

    def _mux_audio_until(self, seconds: float) -> None:
        if self.audio is None:
            return
        end = min(self.samples.shape[1], round(seconds * self.rate))
        if end <= self.audio_written:
            return
        block = np.ascontiguousarray(self.samples[:, self.audio_written : end])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=self.audio.layout.name)
        frame.sample_rate = self.rate
        frame.pts = self.audio_written
        frame.time_base = Fraction(1, self.rate)
        self.container.mux(self.audio.encode(frame))
        self.audio_written = end

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 ``[n, H, W, 3]`` RGB frames (or one ``[H, W, 3]`` frame)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.video.height, self.video.width, 3):
            raise ValueError(
                f"expected uint8 frames [n, {self.video.height}, {self.video.width}, 3], got {frames.dtype} {frames.shape}"
            )
        with self._disk_full_said():
            for rgb in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = self.frames_written
                frame.time_base = 1 / self.fps
                self.container.mux(self.video.encode(frame))
                self.frames_written += 1
            self._mux_audio_until(self.frames_written / self.fps)

    @contextlib.contextmanager
    def _disk_full_said(self):
        """A full disk while encoding: one line with the path and the free space, not FFmpeg's traceback."""
        try:
            yield
        except OSError as exc:
            said = disk_full_error(exc, self.path)
            if said is None:
                raise
            raise said from exc

    def close(self) -> None:
        """Finish the streams and move the complete file onto ``path``."""
        if self.container is None:
            return
        try:
            with self._disk_full_said():
                self.container.mux(self.video.encode(None))
                if self.audio is not None:
                    self._mux_audio_until(self.frames_written / self.fps)
                    self.container.mux(self.audio.encode(None))
                self.container.close()
            self.container = None
            self._target.commit()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        """Drop the unfinished temporary file; an earlier file at ``path`` stays as it was."""
        if self.container is not None:
            try:
                self.container.close()
            except Exception as exc:  # the original error matters, not this one
                log.debug("closing an aborted video failed: %s", exc)
            self.container = None
        self._target.discard()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:  # failed or interrupted: no broken file, the earlier output (if any) untouched
            self._abort()
