"""``python -m latentsync_core prepare SRC_DIR DATASET_DIR``: a folder of clips -> a training dataset.

For every video in SRC_DIR (sorted; audio from a same-named audio file beside it, else the video's own track):
frames taken at 25 fps and audio at 16 kHz (as the official pipeline resamples); cut into segments of at most
``--max-seconds`` (default 10; the last one joins the previous one when shorter than ``--min-seconds``);
segments under 48 frames dropped; every frame aligned with the pack's :class:`~latentsync_core.face.FaceAligner`
(the official affine crop, 256 px); a segment where the face is lost for longer than the gap rule is dropped;
then the whisper features and the SyncNet mel of its audio are computed and the segment is written
(:func:`latentsync_core.train.dataset.write_segment`, atomic) and listed in ``manifest.jsonl``.

``DATASET_DIR/prepare_report.jsonl`` says for every source and segment what was kept or dropped and why. A
rerun skips the segments already in the manifest, so an interrupted run loses nothing. Not done here yet: the
official scene-cut split (PySceneDetect), the sync-confidence filter and HyperIQA; a source is cut into
segments by length only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import numpy as np

from ..audio.io import load_audio_file
from ..constants import SAMPLE_RATE
from ..errors import LatentSyncError
from ..options import PrepareOptions
from .dataset import MANIFEST, MIN_SEGMENT_FRAMES, append_manifest, write_segment

log = logging.getLogger(__name__)
_OPTIONS = PrepareOptions()  # the option table's defaults

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


def prepare(src_dir: str, dataset_dir: str, whisper, aligner, max_seconds: float = _OPTIONS.max_seconds,
            min_seconds: float = _OPTIONS.min_seconds, progress: Callable[[str, int, int], None] | None = None
            ) -> dict[str, int]:
    """Prepare every source of SRC_DIR into DATASET_DIR; returns counts (kept, skipped, dropped, failed)."""
    from ..audio.features import audio_features
    from ..audio.syncnet_mel import melspectrogram
    from ..sync_video import frames_at_25fps
    from ..video_io import VideoReader, probe_video

    pairs = sources(src_dir)
    os.makedirs(dataset_dir, exist_ok=True)
    done = _done_names(dataset_dir)
    counts = {"kept": 0, "skipped": 0, "dropped": 0, "failed": 0}
    with open(os.path.join(dataset_dir, REPORT), "a", encoding="utf-8") as report:
        def note(line: dict) -> None:
            report.write(json.dumps(line) + "\n")
            report.flush()
            if line["status"] in ("dropped", "failed"):
                log.warning("prepare: %s: %s", line.get("segment") or line["source"], line["reason"])

        for k, (video, audio) in enumerate(pairs):
            stem = os.path.splitext(os.path.basename(video))[0]
            try:
                info = probe_video(video)
                wave, _ = load_audio_file(audio, sample_rate=SAMPLE_RATE, mono=True)
            except LatentSyncError as exc:
                counts["failed"] += 1
                note({"source": video, "status": "failed", "reason": str(exc)})
                continue
            pick = frames_at_25fps(info.num_frames, float(info.fps))
            frames = min(len(pick), wave.shape[-1] * FPS // SAMPLE_RATE)  # the shorter of video and audio
            for a, b in segment_bounds(frames, int(max_seconds * FPS), int(min_seconds * FPS)):
                name = f"{stem}_{a // FPS:05d}s"
                base = {"source": video, "segment": name, "frames": b - a}
                if name in done:
                    counts["skipped"] += 1
                    continue
                if b - a < MIN_SEGMENT_FRAMES:
                    counts["dropped"] += 1
                    note({**base, "status": "dropped", "reason": f"{b - a} frames: under {MIN_SEGMENT_FRAMES}"})
                    continue
                with VideoReader(video) as reader:
                    rows = pick[a:b]
                    clip = reader.read(int(rows[0]), int(rows[-1]) + 1)[rows - rows[0]]
                try:
                    aligned = aligner.align(list(clip))
                except LatentSyncError as exc:
                    counts["dropped"] += 1
                    note({**base, "status": "dropped", "reason": str(exc)})
                    continue
                lost = int((~np.asarray(aligned.found, dtype=bool)).sum())
                if lost:
                    counts["dropped"] += 1
                    note({**base, "status": "dropped", "reason": f"the face is lost in {lost} frames beyond the "
                                                                 "gap rule"})
                    continue
                pcm = wave[:, a * SAMPLE_RATE // FPS: b * SAMPLE_RATE // FPS]
                features = audio_features(whisper, pcm, SAMPLE_RATE, mode="official")
                line = write_segment(dataset_dir, name, np.asarray(aligned.faces), features.cpu().numpy(),
                                     melspectrogram(pcm[0].numpy()), source=os.path.abspath(video),
                                     first_frame=a, fps=FPS)
                append_manifest(dataset_dir, line)
                counts["kept"] += 1
                note({**base, "status": "kept"})
            if progress is not None:
                progress("sources", k + 1, len(pairs))
    return counts
