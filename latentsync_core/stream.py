"""The streaming lip-sync job: video file + audio -> video file, with host memory flat in video length.

The command line (``python -m latentsync_core``) and the ComfyUI node *LatentSync Lip Sync Video* both
run :func:`lip_sync_video`; neither holds the video in memory:

1. **Audio**: whisper features of the whole clip (50 Hz, ~6 MB a minute); the per-frame windows are cut
   per chunk (:class:`~latentsync_core.types.FrameAudio`). The audio decides the output length; a
   shorter video is looped back and forth, a longer one is cut (:func:`ping_pong_indices`).
2. **Pass 1, faces**: landmarks of every frame, decoded a few frames at a time (only ``[V, 68, 2]``
   landmarks are kept), then gap bridging, smoothing and affines over the whole clip, exactly as
   Face Crop & Align does on a frame batch.
3. **Pass 2, segments**: the output frames are cut into segments that each hold ``segment_frames``
   (a multiple of the 16-frame chunk) frames that go through the model (a face was found, and the frame
   is not kept as the input for silence). Per segment: decode, align (the aligner's own warp), sample,
   paste back, encode. One :class:`~latentsync_core.pipeline.SamplingJob` (one generator, one noise
   frame, one chunk plan) samples every segment, and segments hold whole chunks, so the result equals
   one sampler run over the whole video with the same seed (the IMAGE graph), frame for frame.

**Overlap** (``StreamSettings.overlap``; on by default when the U-Net is not on the CPU): segment k+1
is decoded and aligned and segment k-1 pasted back and encoded on two helper threads while segment k is
sampled, so a GPU does not wait for the CPU stages. Each stage does the same work in the same order as
without overlap (the generator is used by the sampler only), so the output is bit-identical; up to three
segments' frames are in memory instead of one.

The output keeps the input's size and average frame rate, is encoded once (x264) and carries the new
audio; it is written to a hidden temporary file and renamed only when complete, so a failed or
cancelled run never leaves a file under the output name.

**Variable frame rate**: frames are taken in presentation order and written at the video's average
frame rate (constant), output frame *i* carrying the mouth for audio time ``i / fps``. Lips and audio
stay in sync in the output whatever the input's timing; only the pacing of the original motion is
evened out where the input's frame durations varied.
"""

from __future__ import annotations

import ctypes
import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from .constants import FACE_BORDER_VALUE, MAX_FACE_GAP, RESOLUTION
from .errors import LatentSyncError
from .options import SEGMENT_FRAMES, StreamSettings
from .safe_output import check_output_path
from .video_io import VideoReader, VideoWriter, probe_video

log = logging.getLogger(__name__)

DETECT_BLOCK = 32  # frames decoded at a time for face detection
IO_BLOCK = 32  # output frames decoded / pasted / encoded at a time
HOLD_BYTES = 512 << 20  # a segment's decoded frames are kept for paste-back up to this size, else decoded again

# (stage, done, total): "faces" counts video frames searched for the face; "lip sync" counts sampler
# steps of 16-frame chunks over the whole job (the sampling job's own total)
Progress = Callable[[str, int, int], None]
__all__ = ["StreamSettings", "StreamReport", "FacePlan", "lip_sync_video", "plan_segments", "detect_faces"]


@dataclass
class StreamReport:
    """What a job did: the output file and the face report (the Face Crop & Align text)."""

    path: str
    num_frames: int
    fps: Fraction
    width: int
    height: int
    video_frames: int
    faces: str
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.num_frames} frames ({self.num_frames / float(self.fps):.2f} s at {float(self.fps):.3f} fps, "
            f"{self.width}x{self.height}) from {self.video_frames} video frames; {self.faces}"
        )


@dataclass
class FacePlan:
    """Pass 1's result for the ``V`` frames of the video: affines float64 ``[V, 2, 3]`` (NaN where no
    face), found bool ``[V]`` (bridged frames included), bridged bool ``[V]``, and the report line."""

    affines: np.ndarray
    found: np.ndarray
    bridged: np.ndarray
    summary: str


def release_host_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the resident size creeps up
    by tens of MB per segment on long videos); a no-op where malloc_trim does not exist."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def plan_segments(generated: np.ndarray, per_segment: int = SEGMENT_FRAMES) -> list[tuple[int, int]]:
    """Cut ``N`` output frames into ranges ``[a, b)``, each holding exactly ``per_segment`` frames that
    go through the model (``generated`` True; the last: the rest). A new segment starts at such a frame,
    so the other frames between two segments end the earlier one. Sampler chunks never straddle a segment.
    """
    n = len(generated)
    todo = np.flatnonzero(generated)
    starts = [0, *(int(todo[k]) for k in range(per_segment, len(todo), per_segment))]
    ends = [*starts[1:], n]
    return [(a, b) for a, b in zip(starts, ends) if b > a]


def detect_faces(
    reader: VideoReader,
    aligner,
    max_gap: int = MAX_FACE_GAP,
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> FacePlan:
    """Pass 1: landmarks of every frame (frames are decoded ``DETECT_BLOCK`` at a time and dropped),
    then the aligner's own bridging, smoothing and affines on the whole clip (``FaceAligner.track``).
    ``max_gap`` is the aligner's (kept for callers that pass it)."""
    from .face.aligner import face_summary
    from .face.gaps import runs

    n = reader.num_frames
    landmarks = np.full((n, 68, 2), np.nan)
    found = np.zeros(n, dtype=bool)
    for start, frames in reader.chunks(DETECT_BLOCK):
        if check_interrupt is not None:
            check_interrupt()
        lm, ok = aligner.detect(frames)
        landmarks[start : start + len(frames)], found[start : start + len(frames)] = lm, ok
        if progress is not None:
            progress(start + len(frames), n)
    _, affines, found, bridged = aligner.track(landmarks, found)
    summary = face_summary(found, bridged, runs(~found))
    if (~found).any() or bridged.any():
        log.warning("LatentSync face alignment: %s", summary)
    return FacePlan(affines, found, bridged, summary)


def lip_sync_video(
    video: str,
    out: str,
    waveform: Any,
    sample_rate: int,
    *,
    unet: torch.nn.Module,
    vae,
    whisper,
    settings: StreamSettings | None = None,
    resolution: int = RESOLUTION,
    aligner=None,
    task_path: str | None = None,
    progress: Progress | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> StreamReport:
    """Lip-sync the video file ``video`` to the audio and write ``out`` (.mp4/.mov/.mkv).

    waveform: the new speech in [-1, 1], ``[T]``, ``[C, T]`` or ``[B, C, T]`` (first item), any rate
    ``sample_rate``: whisper gets it as 16 kHz mono, the output gets it as it is (AAC).
    unet / vae / whisper: as :class:`~latentsync_core.pipeline.LipSyncPipeline` takes them (the U-Net's
    device and dtype are the run's). aligner: a ``FaceAligner`` (default: one at ``resolution`` with
    the settings' face selection; ``task_path`` for the Tasks backend). progress: ``(stage, done,
    total)``, see :data:`Progress`. check_interrupt: called between blocks and before every U-Net call;
    raise from it to cancel (nothing is written under ``out``).

    Raises LatentSyncError (FaceError, AudioError, ...) with a message for the user.
    """
    from .face import FaceAligner

    t0 = time.perf_counter()
    settings = settings or StreamSettings()
    out = check_output_path(out, inputs=[video], what="output")
    info = probe_video(video)
    samples, rate = _waveform_ct(waveform), int(sample_rate)
    announce_length(info, samples.shape[-1] / rate)
    own_aligner = aligner is None
    if own_aligner:
        aligner = FaceAligner(resolution, face=settings.face, max_gap=settings.max_gap, task_path=task_path)
    job = _StreamJob(settings, info, samples, rate, whisper, progress, check_interrupt)
    with VideoReader(video) as reader:
        try:
            plan = detect_faces(reader, aligner, settings.max_gap, lambda d, t: job.report("faces", d, t),
                                check_interrupt)
        finally:
            if own_aligner:
                aligner.close()
        job.plan_sampling(plan, aligner, unet, vae)
        with VideoWriter(out, info.width, info.height, info.fps, audio=job.audio_track, crf=settings.crf) as writer:
            # a second decoder for paste-back when it runs beside the next segment's decode
            paste_reader = VideoReader(video) if job.stages.overlap else reader
            try:
                job.run(reader, paste_reader, writer)
            finally:
                if paste_reader is not reader:
                    paste_reader.close()
    seconds = time.perf_counter() - t0
    return StreamReport(out, job.num_out, info.fps, info.width, info.height, info.num_frames, plan.summary, seconds)


def announce_length(info, audio_seconds: float) -> None:
    """Say before any work how the video will be matched to the audio when they differ a lot (a 10-minute
    audio on a 2 s video means thousands of looped frames)."""
    from .timing import num_frames_for_duration

    num_out = num_frames_for_duration(audio_seconds, float(info.fps))
    video_seconds = info.num_frames / float(info.fps)
    log.info("video: %dx%d, %d frames at %.3f fps; audio %.2f s -> %d frames", info.width, info.height,
             info.num_frames, float(info.fps), audio_seconds, num_out)
    if num_out > 2 * info.num_frames:
        log.warning("the audio (%.1f s) is %.0fx longer than the video (%.1f s): the video is played back and forth "
                    "to make %d frames", audio_seconds, audio_seconds / max(video_seconds, 1e-9), video_seconds, num_out)


class _StreamJob:
    """Pass 2 of one streaming job: the audio, the plan of generated frames, the sampling job, and the
    per-segment stages prepare (decode + align) -> sample -> finish (paste + encode)."""

    def __init__(self, settings, info, samples, rate, whisper, progress, check_interrupt):
        from .audio import embed_audio

        self.settings, self.info, self.fps = settings, info, float(info.fps)
        self.progress, self.check_interrupt = progress, check_interrupt
        self.frame_audio = embed_audio(whisper, samples, rate, fps=self.fps, mode=settings.audio_mode)
        self.num_out = self.frame_audio.num_frames
        if self.num_out < 1:
            raise LatentSyncError("The audio is shorter than one video frame.")
        self.audio_track = (samples[:, : math.ceil(self.num_out / self.fps * rate)].numpy(), rate)
        self.stages = _Stages(False, check_interrupt)
        self._reported: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, stage: str, done: int, total: int) -> None:
        """Progress of one stage; never backwards (helper threads report too)."""
        if self.progress is None:
            return
        with self._lock:
            done = max(self._reported.get(stage, 0), int(done))
            self._reported[stage] = done
            self.progress(stage, done, total)

    def plan_sampling(self, plan: FacePlan, aligner, unet, vae) -> None:
        """Which output frames are generated (face found, not silent), and the sampling job over them."""
        from .audio.silence import silent_frames
        from .options import SamplingOptions
        from .pipeline import LipSyncPipeline
        from .timing import ping_pong_indices

        s = self.settings
        self.plan, self.aligner = plan, aligner
        self.index = ping_pong_indices(self.info.num_frames, self.num_out)  # output frame -> video frame
        generated = plan.found[self.index]
        if s.silence:  # before plan_segments: segments still hold whole chunks of generated frames
            quiet = silent_frames(self.frame_audio.waveform, self.num_out, self.fps, threshold_db=s.silence_db,
                                  min_duration_ms=s.silence_ms)
            log.info("silence: %d of %d frames kept as the input", int((generated & quiet).sum()), self.num_out)
            generated = generated & ~quiet
        self.generated = generated
        self.pipeline = pipeline = LipSyncPipeline(unet, vae)
        # one generator for the whole job: the noise frame is drawn first, then every chunk's VAE samples
        self.sampling = pipeline.job(
            aligner.resolution, s.group(SamplingOptions), planned_frames=int(generated.sum()),
            progress=lambda d, t: self.report("lip sync", d, t), check_interrupt=self.check_interrupt)
        self.fast = s.paste == "fast" or (s.paste == "auto" and pipeline.device.type != "cpu")
        overlap = s.overlap if s.overlap is not None else pipeline.device.type != "cpu"
        self.stages = _Stages(overlap, self.check_interrupt)

    def run(self, reader, paste_reader, writer) -> None:
        self.reader, self.paste_reader, self.writer = reader, paste_reader, writer
        self.stages.run(plan_segments(self.generated, self.settings.segment_frames), self.prepare, self.sample,
                        self.finish)

    def prepare(self, segment: tuple[int, int]):
        """Decode and align a segment: (rows, held frames or None, uint8 faces of its generated frames)."""
        a, b = segment
        rows = np.arange(a, b)
        hold = (b - a) * self.info.width * self.info.height * 3 <= HOLD_BYTES
        held, faces = _gather(self.reader, self.index[rows], self.generated[rows], self.plan.affines, self.aligner,
                              hold, self.stages.check)
        return rows, held, faces

    def sample(self, rows: np.ndarray, faces: np.ndarray) -> np.ndarray | None:
        """The segment's generated faces (float 0..1 ``[n, res, res, 3]``, unclamped), None if none."""
        todo = np.flatnonzero(self.generated[rows])
        if not len(todo):
            return None
        n = len(todo)
        result = self.sampling.run(torch.from_numpy(faces), _windows_of(self.frame_audio, rows[todo]), np.arange(n),
                                   np.ones(n, dtype=bool))
        return result.faces.float().numpy()  # float 0..1, unclamped: paste-back resizes first (official)

    def finish(self, rows: np.ndarray, held, result) -> None:
        _paste_and_write(self.writer, self.paste_reader, rows, self.index, self.generated, result, self.plan.affines,
                         held, self.fast, self.pipeline.device, self.stages.check, self.settings)
        release_host_memory()


def _windows_of(frame_audio, frames: np.ndarray):
    """``rows -> [n,50,384]``: the audio windows of the segment's generated frames (rows index ``frames``)."""
    return lambda rows: frame_audio.windows(frames[rows])


class _Stopped(Exception):
    """Raised in a helper thread when the job stops for another reason (the main thread's error)."""


class _Stages:
    """Runs pass 2 as prepare (decode + align) -> sample -> finish (paste + encode) per segment, either
    one after the other or overlapped: prepare(k+1) and finish(k-1) on two helper threads while the
    calling thread samples k. Segments are finished in order, at most one prepared ahead."""

    def __init__(self, overlap: bool, check_interrupt: Callable[[], None] | None):
        self.overlap = overlap
        self.check_interrupt = check_interrupt
        self.stop = threading.Event()

    def check(self) -> None:
        """The interrupt check for the helpers' blocks: also stops them when the job failed elsewhere."""
        if self.stop.is_set():
            raise _Stopped()
        if self.check_interrupt is not None:
            self.check_interrupt()

    def run(self, segments, prepare, sample, finish) -> None:
        if not self.overlap:
            for segment in segments:
                rows, held, faces = prepare(segment)
                result = sample(rows, faces)
                del faces
                finish(rows, held, result)
                del held, result
            return
        with ThreadPoolExecutor(1, thread_name_prefix="latentsync-prepare") as preparer, \
                ThreadPoolExecutor(1, thread_name_prefix="latentsync-write") as writer:  # fmt: skip
            ahead, written = preparer.submit(prepare, segments[0]), None
            try:
                for k in range(len(segments)):
                    rows, held, faces = ahead.result()
                    ahead = preparer.submit(prepare, segments[k + 1]) if k + 1 < len(segments) else None
                    result = sample(rows, faces)
                    del faces
                    if written is not None:
                        written.result()  # in order; raises the writer's error
                    written = writer.submit(finish, rows, held, result)
                    del held, result
                written.result()
            except BaseException:
                self.stop.set()  # the helpers stop at their next block; their own errors are secondary
                for future in (ahead, written):
                    if future is not None:
                        future.cancel()
                raise


def _waveform_ct(waveform: Any) -> torch.Tensor:
    """float32 ``[C, T]`` from ``[T]``, ``[C, T]`` or ``[B, C, T]`` (first item)."""
    w = torch.as_tensor(waveform).detach().float().cpu()
    if w.ndim == 3:
        w = w[0]
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2:
        raise LatentSyncError(f"Expected audio samples [channels, samples], got shape {tuple(w.shape)}.")
    return w


def _read(reader: VideoReader, src: np.ndarray) -> np.ndarray:
    """Video frames ``src`` (output order; ranges of the ping-pong loop) as uint8 ``[n, H, W, 3]``."""
    lo, hi = int(src.min()), int(src.max()) + 1
    return reader.read(lo, hi)[src - lo]


def _gather(reader, src, generated, affines, aligner, hold, check_interrupt):
    """Decode a segment block by block: the aligned faces of its generated frames (uint8 ``[n, res, res, 3]``,
    the aligner's own warp) and, when ``hold``, its decoded frames for paste-back (else None: decoded again)."""
    from .face.threads import default_workers, ordered_map

    res = aligner.resolution
    faces = np.full((int(generated.sum()), res, res, 3), FACE_BORDER_VALUE, dtype=np.uint8)
    held = [] if hold else None
    k = 0
    workers = default_workers()
    for s in range(0, len(src), IO_BLOCK):
        if check_interrupt is not None:
            check_interrupt()
        block_src, block_generated = src[s : s + IO_BLOCK], generated[s : s + IO_BLOCK]
        if not hold and not block_generated.any():
            continue
        frames = _read(reader, block_src)
        todo = np.flatnonzero(block_generated)
        warps = ordered_map(lambda j, f=frames, s=block_src: aligner.warp(f[j], affines[s[j]]), todo, workers)
        for face in warps:  # OpenCV releases the GIL: the warps run on a few threads
            faces[k] = face
            k += 1
        if hold:
            held.append(frames)
    return held, faces


def _paste_and_write(writer, reader, rows, index, generated, result, affines, held, fast, device, check_interrupt,
                     settings: StreamSettings):
    """Paste the segment's generated faces into its frames and encode them, block by block."""
    from .face import paste_back

    seg_generated = generated[rows]
    position = np.cumsum(seg_generated) - 1  # row -> its face in result (where generated)
    for n, s in enumerate(range(0, len(rows), IO_BLOCK)):
        if check_interrupt is not None:
            check_interrupt()
        block = slice(s, s + IO_BLOCK)
        src = index[rows[block]]
        frames = held[n] if held is not None else _read(reader, src)
        ok = seg_generated[block]
        if ok.any():
            faces = np.zeros((len(src), *result.shape[1:]), dtype=np.float32)
            faces[ok] = result[position[block][ok]]
            frames = paste_back(frames, faces, affines[src], ok, fast=fast, device=device, blend=settings.blend,
                                mask_grow=settings.mask_grow, feather=settings.feather)
        writer.write(frames)
