"""``python -m latentsync_core prepare SRC_DIR DATASET_DIR``: see :mod:`latentsync_core.train.prepare`."""

from __future__ import annotations

import argparse
import os

from ..cli import (
    StageBars,
    UsageError,
    add_machine_flags,
    add_verbosity_flags,
    logged,
    pick_device,
    raw_flag,
    resolve_models,
    run_command,
)
from ..options import FACE, PREPARE, OptionError, PrepareOptions, add_flags, settings_from_flags


def build_prepare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latentsync_core prepare",
        description="Turn a folder of talking-face clips into a LatentSync training dataset (25 fps, 16 kHz, "
                    "5-10 s segments, aligned faces, whisper features, SyncNet mel); resumable.",
    )
    p.add_argument("src_dir", help="folder of videos (audio: a same-named audio file beside each, or its own track)")
    p.add_argument("dataset_dir", help="the dataset folder to write (manifest.jsonl, segments/, prepare_report.jsonl)")
    add_machine_flags(p, "latentsync/whisper/tiny.pt")
    add_flags(p.add_argument_group("segments"), PREPARE)
    add_flags(p.add_argument_group("face"), [o for o in FACE if o.name in ("face", "max_gap")])
    p.add_argument("--whisper", help="whisper tiny checkpoint; overrides the --models layout")
    p.add_argument("--no-download", action="store_true", help="never download missing model files")
    add_verbosity_flags(p)
    return p


def _validate_prepare(args) -> None:
    from ..options import FaceOptions

    try:
        args.prepare_options = settings_from_flags(args, PrepareOptions)
        args.face_options = settings_from_flags(args, FaceOptions)
    except OptionError as exc:
        raise UsageError(exc.for_flag(raw_flag(args, exc.option.name))) from None
    if args.prepare_options.min_seconds > args.prepare_options.max_seconds:
        raise UsageError(f"--min-seconds {args.prepare_options.min_seconds} is more than --max-seconds "
                         f"{args.prepare_options.max_seconds}.")
    if not os.path.isdir(args.src_dir):
        raise UsageError(f"SRC_DIR {args.src_dir} is not a folder.")
    if os.path.exists(args.dataset_dir) and not os.path.isdir(args.dataset_dir):
        raise UsageError(f"DATASET_DIR {args.dataset_dir} is a file, not a folder.")
    if os.path.abspath(args.dataset_dir) == os.path.abspath(args.src_dir):
        raise UsageError("DATASET_DIR must not be SRC_DIR.")
    pick_device(args.device)


def _prepare(args) -> dict:
    from ..audio import load_whisper
    from ..face import FaceAligner
    from .prepare import prepare, sources

    sources(args.src_dir)  # no video: a clear message before the models load
    device = pick_device(args.device)
    whisper = load_whisper(resolve_models(args, {"whisper": (args.whisper, "whisper")})["whisper"], device=device)
    aligner = FaceAligner(face=args.face_options.face, max_gap=args.face_options.max_gap, models_dir=args.models,
                          download=not args.no_download)
    progress = StageBars(args.quiet, {"sources": "clip"})
    try:
        return prepare(args.src_dir, args.dataset_dir, whisper, aligner, args.prepare_options.max_seconds,
                       args.prepare_options.min_seconds, progress)
    finally:
        aligner.close()
        progress.close()


def _show_prepare(counts: dict) -> int:
    print(", ".join(f"{n} {k}" for k, n in counts.items()) + " segments")
    return 0 if counts["kept"] + counts["skipped"] else 1


def prepare_main(argv=None) -> int:
    return logged(build_prepare_parser().parse_args(argv),
                  lambda args: run_command(args, _validate_prepare, _prepare, _show_prepare))
