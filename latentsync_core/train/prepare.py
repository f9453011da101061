"""``python -m latentsync_core prepare SRC_DIR DATASET_DIR``: a folder of clips -> a training dataset.

For every video in SRC_DIR (sorted; audio from a same-named audio file beside it, else the video's own track):
frames taken at 25 fps and audio at 16 kHz (as the official pipeline resamples); split at scene cuts
(PySceneDetect 0.6's adaptive detector, threshold ``--scene-threshold``: the official ``detect-adaptive
--threshold 2``; 0 = no split), then each scene cut into segments of at most ``--max-seconds`` (default 10;
the last one joins the previous one when shorter than ``--min-seconds``), so no segment crosses a cut;
segments under 48 frames dropped; every frame aligned with the pack's :class:`~latentsync_core.face.FaceAligner`
(the official affine crop, 256 px); a segment where the face is lost for longer than the gap rule is dropped,
and one whose median face is smaller than ``--min-face`` px (0: off). With ``--sync-filter`` each segment's
lip sync is scored (:func:`latentsync_core.sync_video.score_landmarks`: LSE-C and offset on the landmark crops)
and, as the official ``sync_av`` step, kept only when :func:`~latentsync_core.sync_video.trusted` (LSE-C >= 3,
|offset| <= 6 frames), its audio shifted by the offset (:func:`~latentsync_core.sync_video.shift_audio`). Then
the whisper features and the SyncNet mel of its audio are computed and the segment is written
(:func:`latentsync_core.train.dataset.write_segment`, atomic) and listed in ``manifest.jsonl``.

``DATASET_DIR/prepare_report.jsonl`` says for every source and segment what was kept or dropped and why
(and the sync score when measured). A rerun skips the segments already in the manifest, so an interrupted
run loses nothing. Several processes (``torchrun``: ``RANK`` / ``WORLD_SIZE``) share the work: rank k takes
the sorted sources ``k::WORLD_SIZE`` and all append to the one manifest and report
(:func:`~latentsync_core.train.dataset.append_line`). Not done here: HyperIQA's visual-quality filter.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np

from ..audio.io import load_audio_file
from ..constants import SAMPLE_RATE
from ..errors import LatentSyncError
from ..options import PrepareOptions
from .dataset import MANIFEST, MIN_SEGMENT_FRAMES, append_line, append_manifest, write_segment

log = logging.getLogger(__name__)

FPS = 25
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")
REPORT = "prepare_report.jsonl"


def sources(src_dir: str) -> list[tuple[str, str]]:
    """``(video, audio)`` pairs of SRC_DIR, sorted; audio = a same-named audio file, else the video itself."""
    if not os.path.isdir(src_dir):
        raise LatentSyncError(f"SRC_DIR {src_dir} is not a folder.")
    names = sorted(os.listdir(src_dir))
    pairs = []
    for name in names:
        stem, suffix = os.path.splitext(name)
        if suffix.lower() not in VIDEO_SUFFIXES:
            continue
        audio = next((os.path.join(src_dir, n) for n in names
                      if os.path.splitext(n)[0] == stem and os.path.splitext(n)[1].lower() in AUDIO_SUFFIXES), None)
        pairs.append((os.path.join(src_dir, name), audio or os.path.join(src_dir, name)))
    if not pairs:
        raise LatentSyncError(f"SRC_DIR {src_dir} has no video ({', '.join(VIDEO_SUFFIXES)}).")
    return pairs


def segment_bounds(frames: int, max_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """``(start, end)`` segments of at most ``max_frames``; a last piece shorter than ``min_frames`` joins the
    one before (so it may reach ``max_frames + min_frames - 1``)."""
    bounds = [(a, min(a + max_frames, frames)) for a in range(0, frames, max_frames)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_frames:
        bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
    return bounds


def _done_names(dataset_dir: str) -> set[str]:
    """Segments listed in the manifest whose file is there (a deleted one is made again)."""
    from .dataset import read_manifest

    if not os.path.isfile(os.path.join(dataset_dir, MANIFEST)):
        return set()
    return {segment.name for segment in read_manifest(dataset_dir)}


def segment_name(stem: str, first: int) -> str:
    """A segment's name from its first 25 fps frame: ``<stem>_<seconds>s``, with ``<frame>f`` added when it does
    not start on a whole second (after a scene cut), so names are unique and the same on every rerun."""
    seconds, frame = divmod(first, FPS)
    return f"{stem}_{seconds:05d}s" + (f"{frame:02d}f" if frame else "")


def scene_cuts(video: str, pick: np.ndarray, threshold: float) -> list[int]:
    """The 25 fps frames (indices into ``pick``, the source frame shown at each) where a new scene starts,
    found by PySceneDetect 0.6's :class:`AdaptiveDetector` (the official ``detect-adaptive --threshold``, its
    other settings at their defaults) on the PyAV backend; [] when ``threshold`` is 0."""
    if threshold <= 0:
        return []
    try:
        from scenedetect import AdaptiveDetector, SceneManager, open_video
    except ImportError as exc:
        raise LatentSyncError(f"scene detection needs PySceneDetect 0.6 ({exc}): pip install --no-deps "
                              "scenedetect==0.6.7.1, or --scene-threshold 0 to skip it.") from None
    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # its "Detecting scenes..." notes: noise here
    manager = SceneManager()
    manager.add_detector(AdaptiveDetector(adaptive_threshold=threshold))
    try:
        manager.detect_scenes(open_video(video, backend="pyav"))
    except Exception as exc:  # any decoder failure is this source's failure, reported
        raise LatentSyncError(f"scene detection failed on {video}: {exc}") from None
    starts = [scene[0].get_frames() for scene in manager.get_scene_list()[1:]]
    return sorted({int(i) for i in np.searchsorted(pick, starts) if 0 < i < len(pick)})


def scene_segments(frames: int, cuts: list[int], max_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """:func:`segment_bounds` within each scene (``cuts``: the frames where scenes start): no segment crosses
    a cut."""
    edges = [0, *[c for c in cuts if 0 < c < frames], frames]
    return [(a + s, a + e) for a, b in zip(edges, edges[1:]) if b > a
            for s, e in segment_bounds(b - a, max_frames, min_frames)]


def face_size(landmarks68: np.ndarray) -> float:
    """The median over frames of the larger side of the box around the 68 landmarks (px; NaN frames left
    out)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    sides = np.maximum(lm[..., 0].max(-1) - lm[..., 0].min(-1), lm[..., 1].max(-1) - lm[..., 1].min(-1))
    sides = sides[np.isfinite(sides)]
    return float(np.median(sides)) if len(sides) else 0.0


def shard(pairs: list, rank: int, world_size: int) -> list:
    """The sources of process ``rank`` of ``world_size``: every ``world_size``-th of the sorted list."""
    return pairs[rank::world_size]


@dataclasses.dataclass
class _Job:
    """One run's fixed inputs, shared by its sources and segments."""

    dataset_dir: str
    whisper: object
    aligner: object
    options: PrepareOptions
    syncnet: object
    done: set
    counts: dict

    def note(self, line: dict) -> None:
        append_line(os.path.join(self.dataset_dir, REPORT), line)
        if line["status"] in ("dropped", "failed"):
            log.warning("prepare: %s: %s", line.get("segment") or line["source"], line["reason"])
        if line["status"] in self.counts:
            self.counts[line["status"]] += 1


def prepare(src_dir: str, dataset_dir: str, whisper, aligner, options: PrepareOptions | None = None,
            progress: Callable[[str, int, int], None] | None = None, syncnet=None, rank: int = 0,
            world_size: int = 1) -> dict[str, int]:
    """Prepare the sources of SRC_DIR (this process's share: :func:`shard`) into DATASET_DIR; returns counts
    (kept, skipped, dropped, failed). ``syncnet``: the ``S`` network (:func:`~latentsync_core.sync_score.
    load_syncnet_v2`) when ``options.sync_filter`` is on."""
    options = options or PrepareOptions()
    if options.sync_filter and syncnet is None:
        raise ValueError("sync_filter needs the syncnet (load_syncnet_v2)")
    pairs = shard(sources(src_dir), rank, world_size)
    os.makedirs(dataset_dir, exist_ok=True)
    job = _Job(dataset_dir, whisper, aligner, options, syncnet if options.sync_filter else None,
               _done_names(dataset_dir), {"kept": 0, "skipped": 0, "dropped": 0, "failed": 0})
    for k, (video, audio) in enumerate(pairs):
        _prepare_source(job, video, audio)
        if progress is not None:
            progress("sources", k + 1, len(pairs))
    return job.counts


def _prepare_source(job: _Job, video: str, audio: str) -> None:
    """Cut one source into segments and prepare each (report lines for what fails)."""
    from ..sync_video import frames_at_25fps
    from ..video_io import probe_video

    try:
        info = probe_video(video)
        wave, _ = load_audio_file(audio, sample_rate=SAMPLE_RATE, mono=True)
        pick = frames_at_25fps(info.num_frames, float(info.fps))
        cuts = scene_cuts(video, pick, job.options.scene_threshold)
    except LatentSyncError as exc:
        job.note({"source": video, "status": "failed", "reason": str(exc)})
        return
    frames = min(len(pick), wave.shape[-1] * FPS // SAMPLE_RATE)  # the shorter of video and audio
    stem = os.path.splitext(os.path.basename(video))[0]
    o = job.options
    for a, b in scene_segments(frames, cuts, int(o.max_seconds * FPS), int(o.min_seconds * FPS)):
        name = segment_name(stem, a)
        if name in job.done:
            job.counts["skipped"] += 1
            continue
        base = {"source": video, "segment": name, "frames": b - a, "first_frame": a}
        job.note({**base, **_prepare_segment(job, video, pick[a:b], wave, a, b, name)})


def _prepare_segment(job: _Job, video: str, rows: np.ndarray, wave, a: int, b: int, name: str) -> dict:
    """Prepare frames ``a..b`` (source frames ``rows``) of one source; returns its report fields."""
    from ..audio.features import audio_features
    from ..audio.syncnet_mel import melspectrogram
    from ..sync_video import FIX_MAX_OFFSET, FIX_MIN_CONFIDENCE
    from ..video_io import VideoReader

    if b - a < MIN_SEGMENT_FRAMES:
        return {"status": "dropped", "reason": f"{b - a} frames: under {MIN_SEGMENT_FRAMES}"}
    with VideoReader(video) as reader:
        clip = reader.read(int(rows[0]), int(rows[-1]) + 1)[rows - rows[0]]
    try:
        aligned = job.aligner.align(list(clip))
    except LatentSyncError as exc:
        return {"status": "dropped", "reason": str(exc)}
    lost = int((~np.asarray(aligned.found, dtype=bool)).sum())
    if lost:
        return {"status": "dropped", "reason": f"the face is lost in {lost} frames beyond the gap rule"}
    size = face_size(aligned.landmarks)
    if size < job.options.min_face:
        return {"status": "dropped", "face_px": round(size, 1),
                "reason": f"median face {size:.0f} px: under --min-face {job.options.min_face}"}
    pcm, sync = wave[:, a * SAMPLE_RATE // FPS: b * SAMPLE_RATE // FPS], {}
    if job.syncnet is not None:
        try:
            pcm, sync = sync_checked(job.syncnet, clip, aligned, pcm)
        except LatentSyncError as exc:
            return {"status": "dropped", "reason": f"sync score: {exc}"}
        if not sync.pop("trusted"):
            return {"status": "dropped", **sync, "reason": f"sync: LSE-C {sync['lse_c']:.2f}, offset "
                    f"{sync['offset_frames']:+d} frames (kept: LSE-C >= {FIX_MIN_CONFIDENCE:g}, |offset| <= "
                    f"{FIX_MAX_OFFSET})"}
    features = audio_features(job.whisper, pcm, SAMPLE_RATE, mode="official")
    line = write_segment(job.dataset_dir, name, np.asarray(aligned.faces), features.cpu().numpy(),
                         melspectrogram(pcm[0].numpy()), source=os.path.abspath(video), first_frame=a, fps=FPS,
                         **sync)
    append_manifest(job.dataset_dir, line)
    return {"status": "kept", **sync}


def sync_checked(syncnet, clip: np.ndarray, aligned, pcm):
    """Score a segment (its frames, its :class:`~latentsync_core.face.AlignmentResult`, its 16 kHz audio
    ``[1, T]``) and apply the official rule: returns the audio (shifted by the offset when trusted) and
    ``{"lse_c", "offset_frames", "trusted"}``."""
    from ..sync_video import ArrayFrames, score_landmarks, shift_audio, trusted

    score = score_landmarks(syncnet, ArrayFrames(clip), aligned.landmarks, aligned.found, (pcm, SAMPLE_RATE)).score
    ok = trusted(score)
    sync = {"lse_c": round(float(score.lse_c), 4), "offset_frames": int(score.offset), "trusted": ok}
    return (shift_audio(pcm, SAMPLE_RATE, score.offset) if ok else pcm), sync
