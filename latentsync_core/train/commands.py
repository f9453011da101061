"""``python -m latentsync_core prepare SRC_DIR DATASET_DIR``: see :mod:`latentsync_core.train.prepare`."""

from __future__ import annotations

import argparse
import os

from ..cli import (
    StageBars,
    UsageError,
    add_machine_flags,
    add_verbosity_flags,
    checked_options,
    logged,
    pick_device,
    progress_bar,
    resolve_models,
    run_command,
)
from ..options import FACE, PREPARE, TRAIN, PrepareOptions, add_flags


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
    p.add_argument("--syncnet", help="SyncNet v2 weights (syncnet_v2.model) for --sync-filter; overrides the --models "
                                     "layout")
    add_verbosity_flags(p)
    p.epilog = ("Several processes share the sources under torchrun (RANK / WORLD_SIZE; each takes every "
                "WORLD_SIZE-th source and uses cuda:LOCAL_RANK), all writing into the one DATASET_DIR.")
    return p


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` from torchrun's ``RANK`` / ``WORLD_SIZE`` (``(0, 1)`` when unset)."""
    raw = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if raw == (None, None):
        return 0, 1
    try:
        rank, world = (int(v) for v in raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"RANK={raw[0]} WORLD_SIZE={raw[1]}: set both, as whole numbers (torchrun does).") from None
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} WORLD_SIZE={world}: RANK must be 0..WORLD_SIZE-1.")
    return rank, world


def _validate_prepare(args) -> None:
    from ..options import FaceOptions

    args.prepare_options, args.face_options = checked_options(args, PrepareOptions, FaceOptions)
    if args.prepare_options.min_seconds > args.prepare_options.max_seconds:
        raise UsageError(f"--min-seconds {args.prepare_options.min_seconds} is more than --max-seconds "
                         f"{args.prepare_options.max_seconds}.")
    if not os.path.isdir(args.src_dir):
        raise UsageError(f"SRC_DIR {args.src_dir} is not a folder.")
    if os.path.exists(args.dataset_dir) and not os.path.isdir(args.dataset_dir):
        raise UsageError(f"DATASET_DIR {args.dataset_dir} is a file, not a folder.")
    if os.path.abspath(args.dataset_dir) == os.path.abspath(args.src_dir):
        raise UsageError("DATASET_DIR must not be SRC_DIR.")
    if args.syncnet is not None and not os.path.isfile(args.syncnet):
        raise UsageError(f"--syncnet {args.syncnet}: no such file.")
    if args.prepare_options.scene_threshold > 0:
        try:
            import scenedetect  # noqa: F401 - only whether it is there
        except ImportError:
            raise UsageError("scene detection needs PySceneDetect 0.6: pip install --no-deps scenedetect==0.6.7.1 "
                             "(or --scene-threshold 0: no scene split).") from None
    args.rank, args.world_size = distributed()
    pick_device(args.device)


def _prepare(args) -> dict:
    from ..audio import load_whisper
    from ..face import FaceAligner
    from .prepare import prepare, sources

    sources(args.src_dir)  # no video: a clear message before the models load
    device = pick_device(args.device)
    if args.world_size > 1:
        from .distributed import rank_device

        device = rank_device(device)  # torchrun: one GPU per process
    wanted = {"whisper": (args.whisper, "whisper")}
    if args.prepare_options.sync_filter:
        wanted["syncnet"] = (args.syncnet, "syncnet-v2")
    paths = resolve_models(args, wanted)  # every missing file named at once, before any model loads
    syncnet = None
    if args.prepare_options.sync_filter:
        from ..sync_score import load_syncnet_v2

        syncnet = load_syncnet_v2(paths["syncnet"], device)
    whisper = load_whisper(paths["whisper"], device=device)
    aligner = FaceAligner(face=args.face_options.face, max_gap=args.face_options.max_gap, models_dir=args.models,
                          download=not args.no_download)
    progress = StageBars(args.quiet, {"sources": "clip"})
    try:
        return prepare(args.src_dir, args.dataset_dir, whisper, aligner, args.prepare_options, progress,
                       syncnet=syncnet, rank=args.rank, world_size=args.world_size)
    finally:
        aligner.close()
        progress.close()


def _show_prepare(counts: dict) -> int:
    print(", ".join(f"{n} {k}" for k, n in counts.items()) + " segments")
    return 0 if counts["kept"] + counts["skipped"] or not any(counts.values()) else 1  # a rank with no source: 0


def prepare_main(argv=None) -> int:
    return logged(build_prepare_parser().parse_args(argv),
                  lambda args: run_command(args, _validate_prepare, _prepare, _show_prepare))


# ---------------------------------------------------------------------------------------------- train


def build_train_parser() -> argparse.ArgumentParser:
    from ..cli import add_model_file_flag

    p = argparse.ArgumentParser(
        prog="python -m latentsync_core train",
        description="Fine-tune LatentSync on a prepared dataset (python -m latentsync_core prepare): a LoRA or the "
                    "official stage-2 trainable sets; logs, loss curve, checkpoints, exact --resume.",
    )
    p.add_argument("dataset_dir", help="a dataset folder made by `prepare`")
    p.add_argument("run_dir", help="the run's folder: log.jsonl, loss.png, checkpoint-*/, lora_*.safetensors")
    add_machine_flags(p, "latentsync/latentsync_unet.pt, vae/, the judges under latentsync/")
    add_flags(p.add_argument_group("training"), TRAIN)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--config", help="an official-format training yaml instead of the preset's (its model and loss "
                                    "sections; the flags above override it)")
    add_model_file_flag(p)
    add_verbosity_flags(p)
    return p


def _validate_train(args) -> None:
    from ..options import TrainOptions
    from .dataset import read_manifest

    (args.train_options,) = checked_options(args, TrainOptions)
    if os.path.exists(args.run_dir) and not os.path.isdir(args.run_dir):
        raise UsageError(f"RUN_DIR {args.run_dir} is a file, not a folder.")
    if args.config and not os.path.isfile(args.config):
        raise UsageError(f"--config {args.config}: no such file.")
    read_manifest(args.dataset_dir)  # not a dataset: a clear message now
    pick_device(args.device)


def _train(args) -> dict:
    """One process, or one of torchrun's (``torchrun --nproc_per_node=N -m latentsync_core train ...``): the
    process group is joined for the run and left at its end (:mod:`latentsync_core.train.distributed`)."""
    from .distributed import process_group

    with process_group(pick_device(args.device)) as device:
        return _train_on(args, device)


def _train_on(args, device) -> dict:
    from ..constants import MODEL_FOLDER
    from ..vae import load_vae
    from .distributed import is_main, main_first
    from .fine_tune import fine_tune

    o = args.train_options
    with main_first():  # rank 0 downloads what is missing, the others then find it
        paths = resolve_models(args, {"unet": (args.unet, "unet-1.5"), "vae": (args.vae, "vae")})
    bar = progress_bar(o.train_steps, "train", args.quiet or not is_main(), unit="step")

    def progress(step: int, total: int, line: dict) -> None:
        bar.n = step
        bar.set_postfix({k: f"{v:.4f}" for k, v in line["losses"].items()}, refresh=True)

    try:
        return fine_tune(args.dataset_dir, args.run_dir, o, unet=paths["unet"],
                         vae=load_vae(paths["vae"], args.vae_config, device=device),
                         models_dir=os.path.join(args.models, MODEL_FOLDER), config_file=args.config, device=device,
                         download=not args.no_download, resume=args.resume, progress=progress)
    finally:
        bar.close()


def _show_train(result: dict) -> None:
    from .distributed import launched_rank

    if launched_rank() != 0:  # under torchrun rank 0 alone reports
        return
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.get("losses", {}).items())
    print(f"step {result.get('step')}: {losses}; see {os.path.join(result['run_dir'], 'log.jsonl')}")


def train_main(argv=None) -> int:
    return logged(build_train_parser().parse_args(argv),
                  lambda args: run_command(args, _validate_train, _train, _show_train))
