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
   (a multiple of the 16-frame chunk) frames with a face. Per segment: decode, align, sample, paste
   back, encode. One noise frame and one generator run through all segments, and segments hold whole
   chunks of the frames that go through the model, so the result equals one sampler run over the whole
   video with the same seed (the IMAGE graph), frame for frame.

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

from .audio.silence import DEFAULT_SILENCE_DB, DEFAULT_SILENCE_MS, silent_frames
from .constants import (
    CHUNK_FRAMES,
    DEFAULT_GUIDANCE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    FACE_BORDER_VALUE,
    MAX_FACE_GAP,
    RESOLUTION,
)
from .errors import FaceError, LatentSyncError
from .safe_output import check_output_path
from .video_io import DEFAULT_CRF, VideoReader, VideoWriter, probe_video

log = logging.getLogger(__name__)

SEGMENT_FRAMES = 4 * CHUNK_FRAMES  # frames with a face sampled per segment (bounded host memory)
DETECT_BLOCK = 32  # frames decoded at a time for face detection
IO_BLOCK = 32  # output frames decoded / pasted / encoded at a time
HOLD_BYTES = 512 << 20  # a segment's decoded frames are kept for paste-back up to this size, else decoded again
PASTE_METHODS = ("auto", "reference", "fast")

Progress = Callable[[str, int, int], None]  # (stage, done, total): frames of the whole job


@dataclass(frozen=True)
class StreamSettings:
    """The job's settings (the Sampler's and Face Crop & Align's widgets).

    vae_encode: ``"auto"`` (the VAE posterior sampled with the run's generator where the VAE allows it,
    as the official code; ComfyUI's VAE only gives the mean), ``"sample"`` or ``"mean"``.
    paste: ``"auto"`` (batched torch/kornia on a GPU, OpenCV reference on the CPU), ``"reference"``, ``"fast"``.
    sampler / chunk_batch: as :meth:`LipSyncPipeline.sync_faces` (``"ddim"``: official; chunks per U-Net
    call, 0/"auto" from free device memory); chunks are batched within a segment.
    blend / mask_grow / feather: as :func:`~latentsync_core.face.paste_back` (``"face"``, 0, None: official).
    silence: True = frames whose audio window is silent (under ``silence_db`` dBFS for at least
    ``silence_ms``, :func:`~latentsync_core.audio.silence.silent_frames`) are not synced: written as the
    input frame, like frames without a face (False: official, every frame is synced).
    overlap: decode/align the next segment and paste/encode the previous one on helper threads while a
    segment is sampled (same output); None = when the U-Net is not on the CPU (on the CPU the sampler
    already uses every core).
    """

    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    seed: int = DEFAULT_SEED
    deepcache: int = 0
    face: str | int = "largest"
    max_gap: int = MAX_FACE_GAP
    audio_mode: str = "seamless"
    vae_encode: str = "auto"
    paste: str = "auto"
    crf: int = DEFAULT_CRF
    segment_frames: int = SEGMENT_FRAMES
    sampler: str = "ddim"
    chunk_batch: int | str = "auto"
    blend: str = "face"
    mask_grow: int = 0
    feather: int | None = None
    silence: bool = False
    silence_db: float = DEFAULT_SILENCE_DB
    silence_ms: int = DEFAULT_SILENCE_MS
    overlap: bool | None = None

    def __post_init__(self):
        from .face.paste import check_blend_options

        check_blend_options(self.blend, self.mask_grow, self.feather)
        if self.segment_frames < CHUNK_FRAMES or self.segment_frames % CHUNK_FRAMES:
            raise ValueError(f"segment_frames must be a positive multiple of {CHUNK_FRAMES}, got {self.segment_frames}")
        if self.paste not in PASTE_METHODS:
            raise ValueError(f"paste must be one of {PASTE_METHODS}, not {self.paste!r}")


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


def plan_segments(synced: np.ndarray, per_segment: int = SEGMENT_FRAMES) -> list[tuple[int, int]]:
    """Cut ``N`` output frames into ranges ``[a, b)``, each holding exactly ``per_segment`` frames with
    ``synced`` True (the last: the rest). A new segment starts at a synced frame, so the frames without
    a face between two segments end the earlier one. Chunks of the sampler never straddle a segment.
    """
    n = len(synced)
    todo = np.flatnonzero(synced)
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
    then the same bridging, smoothing and affines as ``FaceAligner.build`` on the whole clip."""
    from .face.aligner import face_summary, no_face_message
    from .face.gaps import bridge_gaps, runs
    from .face.geometry import track_affines

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
    if not found.any():
        raise FaceError(no_face_message(n, aligner.face))
    landmarks, found, bridged = bridge_gaps(landmarks, found, max_gap)
    _, affines = track_affines(landmarks, found, aligner.resolution)
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
    total)`` with stages ``"faces"`` and ``"lip sync"`` counted in frames (total = video frames +
    output frames). check_interrupt: called between blocks and before every U-Net call; raise from it
    to cancel (nothing is written under ``out``).

    Raises LatentSyncError (FaceError, AudioError, ...) with a message for the user.
    """
    from .audio import embed_audio
    from .face import FaceAligner
    from .length import ping_pong_indices
    from .pipeline import LipSyncPipeline

    t0 = time.perf_counter()
    settings = settings or StreamSettings()
    out = check_output_path(out, inputs=[video], what="output")
    info = probe_video(video)
    fps = float(info.fps)
    log.info("video: %dx%d, %d frames at %.3f fps", info.width, info.height, info.num_frames, fps)

    samples, rate = _waveform_ct(waveform), int(sample_rate)
    frame_audio = embed_audio(whisper, samples, rate, fps=fps, mode=settings.audio_mode)
    num_out = frame_audio.num_frames
    if num_out < 1:
        raise LatentSyncError("The audio is shorter than one video frame.")
    total = info.num_frames + num_out

    reported = [0]
    report_lock = threading.Lock()

    def report(stage: str, done: int) -> None:
        """Progress in frames of the whole job; never backwards (helper threads report too)."""
        if progress is None:
            return
        with report_lock:
            reported[0] = done = max(reported[0], int(done))
            progress(stage, done, total)

    own_aligner = aligner is None
    if own_aligner:
        aligner = FaceAligner(resolution, face=settings.face, max_gap=settings.max_gap, task_path=task_path)
    with VideoReader(video) as reader:
        try:
            plan = detect_faces(reader, aligner, settings.max_gap, lambda d, _t: report("faces", d), check_interrupt)
        finally:
            if own_aligner:
                aligner.close()
        res = aligner.resolution

        index = ping_pong_indices(info.num_frames, num_out)  # output frame -> video frame
        synced = plan.found[index]
        if settings.silence:  # before plan_segments: segments still hold whole chunks of synced frames
            quiet = silent_frames(frame_audio.waveform, num_out, fps, threshold_db=settings.silence_db,
                                  min_duration_ms=settings.silence_ms)
            log.info("silence: %d of %d frames kept as the input", int((synced & quiet).sum()), num_out)
            synced = synced & ~quiet
        pipeline = LipSyncPipeline(unet, vae)
        vae_encode = settings.vae_encode
        if vae_encode == "auto":
            vae_encode = "sample" if pipeline.vae.can_sample else "mean"
        fast = settings.paste == "fast" or (settings.paste == "auto" and pipeline.device.type != "cpu")
        # one generator for the whole job: the noise frame is drawn first, then every chunk's VAE samples
        generator = torch.Generator("cpu").manual_seed(int(settings.seed))
        noise = pipeline.draw_noise(generator, res, settings.steps, settings.sampler)
        audio_track = (samples[:, : math.ceil(num_out / fps * rate)].numpy(), rate)

        frame_bytes = info.width * info.height * 3
        overlap = settings.overlap if settings.overlap is not None else pipeline.device.type != "cpu"
        stages = _Stages(overlap, check_interrupt)

        def prepare(segment: tuple[int, int]):
            """Decode and align a segment: (rows, held frames or None, uint8 faces of its synced frames)."""
            a, b = segment
            rows = np.arange(a, b)
            hold = (b - a) * frame_bytes <= HOLD_BYTES
            held, faces = _gather(reader, index[rows], synced[rows], plan.affines, res, hold, stages.check)
            return rows, held, faces

        def sample(rows: np.ndarray, faces: np.ndarray) -> np.ndarray | None:
            """The segment's generated faces (float 0..1 ``[n, res, res, 3]``, unclamped), None if none."""
            todo = np.flatnonzero(synced[rows])
            if not len(todo):
                return None
            a, b = int(rows[0]), int(rows[-1]) + 1
            steps_total = math.ceil(len(todo) / CHUNK_FRAMES) * int(settings.steps)
            return pipeline.sync_faces(
                torch.from_numpy(faces),
                frame_audio.windows(rows[todo]),
                source_index=np.arange(len(todo)),
                steps=settings.steps,
                guidance=settings.guidance,
                generator=generator,
                initial_latents=noise,
                vae_encode=vae_encode,
                deepcache=settings.deepcache,
                sampler=settings.sampler,
                chunk_batch=settings.chunk_batch,
                progress=lambda d, _t: report("lip sync", info.num_frames + a + (b - a) * d // max(steps_total, 1) - 1),
                check_interrupt=check_interrupt,
            ).faces.float().numpy()  # float 0..1, unclamped: paste-back resizes first (official)

        with VideoWriter(out, info.width, info.height, info.fps, audio=audio_track, crf=settings.crf) as writer:
            # a second decoder for paste-back when it runs beside the next segment's decode
            paste_reader = VideoReader(video) if overlap else reader
            try:

                def finish(rows: np.ndarray, held, result) -> None:
                    _paste_and_write(writer, paste_reader, rows, index, synced, result, plan.affines, held, fast,
                                     pipeline.device, stages.check, settings)  # fmt: skip
                    report("lip sync", info.num_frames + int(rows[-1]) + 1)
                    release_host_memory()

                stages.run(plan_segments(synced, settings.segment_frames), prepare, sample, finish)
            finally:
                if paste_reader is not reader:
                    paste_reader.close()
    seconds = time.perf_counter() - t0
    log.info("wrote %s: %d frames in %.1f s", out, num_out, seconds)
    return StreamReport(out, num_out, info.fps, info.width, info.height, info.num_frames, plan.summary, seconds)


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


def _gather(reader, src, synced, affines, res, hold, check_interrupt):
    """Decode a segment block by block: the aligned faces of its synced frames (uint8 ``[n, res, res, 3]``)
    and, when ``hold``, its decoded frames for paste-back (else None: they are decoded again)."""
    from .face.geometry import warp_face
    from .face.threads import default_workers, ordered_map

    faces = np.full((int(synced.sum()), res, res, 3), FACE_BORDER_VALUE, dtype=np.uint8)
    held = [] if hold else None
    k = 0
    workers = default_workers()
    for s in range(0, len(src), IO_BLOCK):
        if check_interrupt is not None:
            check_interrupt()
        block_src, block_synced = src[s : s + IO_BLOCK], synced[s : s + IO_BLOCK]
        if not hold and not block_synced.any():
            continue
        frames = _read(reader, block_src)
        todo = np.flatnonzero(block_synced)
        warps = ordered_map(lambda j, f=frames, s=block_src: warp_face(f[j], affines[s[j]], res), todo, workers)
        for face in warps:  # OpenCV releases the GIL: the warps run on a few threads
            faces[k] = face
            k += 1
        if hold:
            held.append(frames)
    return held, faces


def _paste_and_write(writer, reader, rows, index, synced, result, affines, held, fast, device, check_interrupt,
                     settings: StreamSettings):
    """Paste the segment's generated faces into its frames and encode them, block by block."""
    from .face import paste_back

    seg_synced = synced[rows]
    position = np.cumsum(seg_synced) - 1  # row -> its face in result (where synced)
    for n, s in enumerate(range(0, len(rows), IO_BLOCK)):
        if check_interrupt is not None:
            check_interrupt()
        block = slice(s, s + IO_BLOCK)
        src = index[rows[block]]
        frames = held[n] if held is not None else _read(reader, src)
        ok = seg_synced[block]
        if ok.any():
            faces = np.zeros((len(src), *result.shape[1:]), dtype=np.float32)
            faces[ok] = result[position[block][ok]]
            frames = paste_back(frames, faces, affines[src], ok, fast=fast, device=device, blend=settings.blend,
                                mask_grow=settings.mask_grow, feather=settings.feather)
        writer.write(frames)
