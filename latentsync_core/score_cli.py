"""``python -m latentsync_core score VIDEO``: the lip-sync score of a video (LSE-C, LSE-D, AV offset).

    python -m latentsync_core score result.mp4 [--audio speech.wav] [--json] [--models DIR]

Prints LSE-C (SyncNet confidence, higher is better), LSE-D (distance, lower is better) and the audio-video
offset in frames and ms, computed as the official evaluation does (:mod:`latentsync_core.sync_score`) on
face crops as the official evaluation finds them (S3FD, ``--crops s3fd``) or from the pack's face track
(``--crops landmarks``; :mod:`latentsync_core.sync_video`). ``--face`` picks the face on the landmarks
path; the official path scores every face track, as the official evaluation does. ``--json`` prints one JSON
object instead (per-track figures included). The SyncNet weights (``auxiliary/syncnet_v2.model``) are
found under ``--models`` (ComfyUI's layout: ``DIR/latentsync/auxiliary/``) or downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from .cli import (
    StageBars,
    UsageError,
    add_machine_flags,
    add_verbosity_flags,
    checked_options,
    logged,
    pick_device,
    resolve_models,
    run_command,
)
from .constants import MODEL_FOLDER
from .options import FACE, SCORE, FaceOptions, ScoreOptions, add_flags

log = logging.getLogger("latentsync_core.score")
SCORE_FACE_OPTIONS = [o for o in FACE if o.name == "face"]  # which face; the crop is the official one


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latentsync_core score",
        description="Lip-sync score of a video: LSE-C (higher is better), LSE-D (lower is better) and the "
                    "audio-video offset, as the official SyncNet evaluation computes them.",
    )
    p.add_argument("video", help="the video to score (any format FFmpeg reads), e.g. a lip-sync result")
    p.add_argument("--audio", help="score against this audio instead of the video's own audio track")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_machine_flags(p, "latentsync/auxiliary/syncnet_v2.model")
    p.add_argument("--syncnet", help="SyncNet v2 weights (syncnet_v2.model); overrides the --models layout")
    add_flags(p.add_argument_group("face"), [*SCORE_FACE_OPTIONS, *SCORE])
    p.add_argument("--s3fd", help="S3FD weights (sfd_face.pth) for --crops s3fd; overrides the --models layout")
    p.add_argument("--stable-syncnet", help="stable_syncnet.pt for --scorer fast; overrides the --models layout")
    add_verbosity_flags(p)
    return p


def validate(args) -> None:
    """Every argument checked before any model loads: :class:`UsageError` with one line."""
    from .video_io import probe_video

    args.face_options, args.score_options = checked_options(args, FaceOptions, ScoreOptions)
    for flag in ("video", "audio", "syncnet", "s3fd", "stable_syncnet"):
        value = getattr(args, flag)
        if value is not None and os.path.isdir(value):
            raise UsageError(f"{_flag_name(flag)} {value} is a folder, not a file.")
        if value is not None and not os.path.exists(value):
            raise UsageError(f"{_flag_name(flag)} {value}: no such file.")
    pick_device(args.device)
    probe_video(args.video)


def _flag_name(dest: str) -> str:
    return dest if dest == "video" else "--" + dest.replace("_", "-")


def run(args) -> dict:
    """Score ``args.video``; returns :meth:`~latentsync_core.sync_video.VideoScore.as_dict` plus ``summary``."""
    from .audio.io import load_audio_file
    from .download import find_model_file
    from .sync_s3fd import load_s3fd, use_s3fd
    from .sync_score import SAMPLE_RATE, load_syncnet_v2
    from .sync_video import score_video

    device = pick_device(args.device)
    audio = load_audio_file(args.audio, sample_rate=SAMPLE_RATE, mono=True) if args.audio else None
    if args.score_options.scorer == "fast":
        return _run_fast(args, device, audio)
    present = args.s3fd or find_model_file("s3fd", [os.path.join(args.models, MODEL_FOLDER)])
    wanted = {"syncnet": (args.syncnet, "syncnet-v2")}
    if use_s3fd(args.score_options.crops, bool(present)):
        wanted["s3fd"] = (args.s3fd, "s3fd")
    paths = resolve_models(args, wanted)
    model = load_syncnet_v2(paths["syncnet"], device)
    if "s3fd" in paths:
        detector, aligner = load_s3fd(paths["s3fd"], device), None
    else:
        detector, aligner = None, _aligner(args)
    progress = StageBars(args.quiet, STAGE_UNITS)
    try:
        result = score_video(model, args.video, aligner, audio=audio, progress=progress, detector=detector)
    finally:
        if aligner is not None:
            aligner.close()
        progress.close()
    return {**result.as_dict(), "summary": result.summary()}


STAGE_UNITS = {"faces": "frame", "score": "track"}


def _aligner(args):
    from .face import FaceAligner

    return FaceAligner(face=args.face_options.face, models_dir=args.models, download=not args.no_download)


def _run_fast(args, device, audio) -> dict:
    """``--scorer fast``: StableSyncNet cosine similarity on the aligned faces (not LSE)."""
    from .sync_fast import fast_score_video
    from .train.config import SYNCNET_CONFIG
    from .train.syncnet import load_stable_syncnet

    path = resolve_models(args, {"stable_syncnet": (args.stable_syncnet, "stable-syncnet")})["stable_syncnet"]
    syncnet = load_stable_syncnet(path, SYNCNET_CONFIG, device)
    aligner, progress = _aligner(args), StageBars(args.quiet, {"faces": "frame", "score": "batch"})
    try:
        result = fast_score_video(syncnet, args.video, aligner, audio=audio, progress=progress)
    finally:
        aligner.close()
        progress.close()
    return {**result.as_dict(), "summary": result.summary()}


def _show(figures: dict) -> None:
    if figures.get("json"):
        print(json.dumps({k: v for k, v in figures.items() if k != "json"}))
    elif figures.get("scorer") == "fast":
        print(figures["summary"])
    else:
        print(f"LSE-C  {figures['lse_c']:.3f}   (SyncNet confidence; higher is better)")
        print(f"LSE-D  {figures['lse_d']:.3f}   (SyncNet distance; lower is better)")
        print(f"offset {figures['offset_frames']:+d} frames ({figures['offset_ms']:+.0f} ms; + = the sound comes early)")
        print(f"crops  {figures['crop_path']} ({len(figures['tracks'])} face track(s), {figures['frames']} frames at 25 fps)")


def _main(args) -> int:
    return run_command(args, validate, lambda a: {**run(a), "json": a.json}, _show)


def main(argv=None) -> int:
    """``score`` command; returns the exit status (0 done, 1 runtime error, 2 usage error, 130 Ctrl-C)."""
    return logged(build_parser().parse_args(argv), _main)
