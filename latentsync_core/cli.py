"""``python -m latentsync_core``: lip-sync a video to a speech track without ComfyUI.

    python -m latentsync_core --video in.mp4 --audio speech.wav --out out.mp4 [--models DIR] [options]

Every option flag (sampling, face, audio and silence, paste-back, output, model) is generated from the
option table (:mod:`latentsync_core.options`): the same names, ranges, defaults and checks as the nodes'
widgets; ``--help`` lists them. Every flag is checked before any model loads (exit 2 with one line).

The same pipeline as the ComfyUI graph (whisper features, face alignment, the LatentSync sampler,
paste-back), with the video streamed through in segments so host memory stays bounded whatever the
length: pass 1 detects the face in every frame (landmarks only are kept); pass 2 reads one segment of
frames at a time, aligns, samples, pastes back and encodes it. The output has the input's resolution
and frame rate, is encoded once (x264, ``--crf``, default 18) and carries the new audio (AAC). The audio decides the
length: a shorter video is looped back and forth, a longer one is cut.

``--models DIR`` is laid out like ComfyUI's models folder (``DIR/latentsync/latentsync_unet.pt``,
``DIR/latentsync/whisper/tiny.pt``, ``DIR/vae/sd-vae-ft-mse.safetensors``), so a ComfyUI
``models`` folder works as is; missing files are downloaded from the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys

import torch

from .constants import MODEL_FOLDER
from .errors import LatentSyncError, ModelMissingError
from .options import (
    AUDIO,
    FACE,
    MODEL,
    OUTPUT,
    PASTE,
    SAMPLING,
    VERSIONS,
    OptionError,
    StreamSettings,
    add_flags,
    settings_from_flags,
)
from .precision import pick_dtype  # --dtype: the one precision rule, the Model Loader node's too
from .safe_output import check_output_path
from .video_io import probe_video

log = logging.getLogger("latentsync_core.cli")

OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")
EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(LatentSyncError):
    """A command-line argument that cannot work (exit status 2, before any work is done)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line: input/output and model-file flags, then every option of the option table
    (:mod:`latentsync_core.options`) as a generated flag with its range or choices and default."""
    p = argparse.ArgumentParser(
        prog="python -m latentsync_core",
        description="LatentSync lip sync: re-render the mouth of a talking-face video to follow a new speech track.",
        epilog="Other commands (each with --help): score VIDEO (lip-sync score), batch MANIFEST OUT_DIR (many "
               "clips), prepare SRC_DIR DATASET_DIR and train DATASET_DIR RUN_DIR (fine-tuning).",
    )
    p.add_argument("--video", required=True, help="input video with a visible face (any format FFmpeg reads)")
    p.add_argument("--audio", required=True, help="speech audio (wav, mp3, flac, m4a... or a video's audio track)")
    p.add_argument("--out", required=True, help="output video (.mp4, .mov or .mkv)")
    add_machine_flags(p, "latentsync/, vae/")
    add_job_flags(p)
    add_model_flags(p)
    add_verbosity_flags(p)
    return p


def add_job_flags(p: argparse.ArgumentParser, note: str = "") -> None:
    """Every option of a lip-sync job (sampling, face, audio and silence, paste-back, output) as flags,
    grouped as the option table groups them (``note`` is added to each group's title)."""
    for title, specs in (("sampling", SAMPLING), ("face", [o for o in FACE if o.flag]), ("audio and silence", AUDIO),
                         ("paste-back", PASTE), ("output", OUTPUT)):
        add_flags(p.add_argument_group(title + note), specs)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model options of the table (``--version --dtype --compile``), ``--no-download`` and the single-file
    overrides (``--unet --unet-config --whisper --vae --vae-config``)."""
    add_flags(p.add_argument_group("model"), list(MODEL))
    adv = add_model_file_flag(p)
    adv.add_argument("--unet-config", help="U-Net config (.json / .yaml); default: the released model")
    adv.add_argument("--whisper", help="whisper tiny checkpoint (tiny.pt) or Hugging Face folder")


def add_model_file_flag(p: argparse.ArgumentParser):
    """``--unet``, ``--vae`` and ``--vae-config`` (single files instead of the --models layout); returns the group."""
    adv = p.add_argument_group("model files (override the --models layout)")
    adv.add_argument("--unet", help="U-Net checkpoint (.pt / .safetensors)")
    adv.add_argument(
        "--vae",
        help="VAE weights .safetensors/.pt: diffusers AutoencoderKL or original SD layout "
        "(vae-ft-mse-840000-ema-pruned, ComfyUI's models/vae files), or a diffusers folder",
    )
    adv.add_argument("--vae-config", help="VAE config.json (default: sd-vae-ft-mse)")
    return adv


def add_machine_flags(p: argparse.ArgumentParser, layout: str) -> None:
    """``--models`` (a folder laid out like ComfyUI's: ``layout``), ``--device`` and ``--no-download``."""
    default_models = os.environ.get("LATENTSYNC_MODELS", "models")
    p.add_argument("--models", default=default_models,
                   help=f"models folder laid out like ComfyUI's ({layout}); env LATENTSYNC_MODELS "
                        f"(default: {default_models})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--no-download", action="store_true", help="never download missing model files")


def add_verbosity_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="debug messages, and the log output of mediapipe/TFLite (hidden otherwise)"
    )


def pick_device(name: str) -> torch.device:
    """The torch device for ``--device``; :class:`UsageError` when it does not exist in this torch/machine."""
    if name != "auto":
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N or mps.") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
                raise UsageError(
                    f"--device {name}: {why} (torch {torch.__version__}); use --device cpu, or install a CUDA "
                    "build of torch (https://pytorch.org/get-started/locally/)."
                )
            count = torch.cuda.device_count()
            if device.index is not None and device.index >= count:
                raise UsageError(f"--device {name}: only {count} CUDA device(s) (cuda:0..cuda:{count - 1}).")
        elif device.type == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise UsageError(f"--device {name}: Apple MPS is not available here; use --device cpu.")
        elif device.type != "cpu":
            backend = getattr(torch, device.type, None)
            if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
                raise UsageError(f"--device {name}: not available in this torch; use auto, cpu, cuda or mps.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def progress_bar(total: int, desc: str, quiet: bool, unit: str = "frame"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)


class StageBars:
    """``progress(stage, done, total)`` for a job of stages: one tqdm bar per stage (each has its own total),
    the last one closed when the next stage starts; :meth:`close` before printing the last lines."""

    def __init__(self, quiet: bool, units: dict[str, str]):
        self.quiet, self.units, self.bars = quiet, units, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            self.close()
            self.bars[stage] = progress_bar(total, stage, self.quiet, unit=self.units.get(stage, "frame"))
        self.bars[stage].update(done - self.bars[stage].n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def checked_options(args, *groups) -> tuple:
    """The option groups (option-group classes, e.g. ``StreamSettings``) from parsed flags, each checked;
    :class:`UsageError` in command-line words (``--steps 1001: use 1-1000 ...``)."""
    try:
        return tuple(settings_from_flags(args, g) for g in groups)
    except OptionError as exc:
        raise UsageError(exc.for_flag(raw_flag(args, exc.option.name))) from None


def validate_args(args) -> None:
    """Check every argument before any work is done (no model is loaded, no frame decoded); raises
    :class:`UsageError` with one line saying what to change. Sets ``args.settings`` (the checked
    :class:`~latentsync_core.options.StreamSettings`) and normalises ``args.out`` to an absolute path
    (refused when it is one of the inputs, has the wrong suffix or its folder is not writable)."""
    (args.settings,) = checked_options(args, StreamSettings)
    try:
        for spec in MODEL:
            spec.from_flag(getattr(args, spec.name))
    except OptionError as exc:
        raise UsageError(exc.for_flag(raw_flag(args, exc.option.name))) from None
    for flag in ("unet", "unet_config", "whisper", "vae", "vae_config", "lora"):
        value = getattr(args, flag)
        if value and not os.path.exists(value):
            raise UsageError(f"--{flag.replace('_', '-')} {value}: no such file.")
    pick_device(args.device)
    try:
        if args.unet_config:  # cheap to read: a broken config stops here, not after face detection
            from .unet.config import load_config

            load_config(args.unet_config)
        if args.vae_config:
            from .vae import read_vae_config

            read_vae_config(args.vae_config)
        for flag in ("video", "audio"):
            path = getattr(args, flag)
            if os.path.isdir(path):  # a missing file is reported where it is opened ("not found", exit 1)
                raise UsageError(f"--{flag} {path}: is a folder; give a file.")
        args.out = check_output_path(args.out, inputs=(args.video, args.audio), allowed_suffixes=OUTPUT_SUFFIXES)
    except UsageError:
        raise
    except LatentSyncError as exc:
        raise UsageError(str(exc)) from exc


def raw_flag(args, name: str):
    """What the user typed for option ``name`` (``-1`` rather than None for ``--feather``)."""
    return getattr(args, name, None)


def check_version(version: str, unet_path: str) -> None:
    """Warn when the U-Net file looks like another release than ``--version`` says (a 1.5 file with
    ``--version 1.6`` runs 512 px faces through a 256 px model: blurry, wrong mouths)."""
    from .checkpoints import guess_unet_resolution

    expected = VERSIONS[version]
    found = guess_unet_resolution(os.path.basename(unet_path), unet_path)
    if found != expected:
        other = next(v for v, r in VERSIONS.items() if r == found)
        log.warning("--version %s expects a %d px U-Net, but %s looks like LatentSync %s (%d px faces): check "
                    "--version / --unet", version, expected, unet_path, other, found)


def resolve_models(args, wanted: dict[str, tuple[str | None, str]] | None = None) -> dict[str, str]:
    """Paths of the model files (default: the U-Net, whisper and VAE), ``{role: (explicit path or None,
    model kind)}``: explicit flags, else the --models layout (downloaded when missing unless
    --no-download). Every file that is missing and cannot be fetched is listed in one
    :class:`ModelMissingError` (kind, URL, exact path)."""
    from .download import ensure_model_file, find_model_file, is_offline, missing_error, model_file

    folders = {MODEL_FOLDER: os.path.join(args.models, MODEL_FOLDER), "vae": os.path.join(args.models, "vae")}
    if wanted is None:
        wanted = {
            "unet": (args.unet, f"unet-{args.version}"),
            "whisper": (args.whisper, "whisper"),
            "vae": (args.vae, "vae"),
        }
    paths, absent = {}, {}
    for role, (explicit, kind) in wanted.items():
        if explicit:
            if not os.path.exists(explicit):
                raise LatentSyncError(f"--{role} {explicit}: no such file")
            paths[role] = explicit
            continue
        found = find_model_file(kind, [folders[model_file(kind).folder]])
        if found:
            paths[role] = found
        else:
            absent[role] = kind
    if absent and (args.no_download or is_offline()):
        reason = "--no-download given" if args.no_download else "offline: HF_HUB_OFFLINE is set"
        raise missing_error(list(absent.values()), folders, reason)
    failed: list[tuple[str, Exception]] = []
    for role, kind in absent.items():
        folder = folders[model_file(kind).folder]
        bar = None

        def progress(done, total, _kind=kind):
            nonlocal bar
            if bar is None:
                bar = progress_bar(total or None, f"download {_kind}", args.quiet, unit="B")
                bar.unit_scale = True
            bar.update(done - bar.n)

        try:
            paths[role] = ensure_model_file(kind, folder, progress=progress)
        except ModelMissingError as exc:  # the Hub is unreachable or refused: try the others, list all
            failed.append((kind, exc))
        finally:
            if bar is not None:
                bar.close()
    if failed:
        cause = failed[0][1].__cause__ or failed[0][1]
        reason = f"download failed: {type(cause).__name__}: {cause}"
        raise missing_error([kind for kind, _ in failed], folders, reason) from failed[0][1]
    return paths


@dataclasses.dataclass
class LoadedModels:
    """The models of a lip-sync job, loaded once (a batch worker keeps them for every row)."""

    whisper: torch.nn.Module
    unet: torch.nn.Module
    vae: object
    resolution: int
    device: torch.device
    paths: dict[str, str]


def load_models(args) -> LoadedModels:
    """Resolve (download when allowed) and load the U-Net, whisper and VAE that ``args`` name
    (``--models``, ``--unet`` ..., ``--version``, ``--dtype``, ``--compile``, ``--device``)."""
    from .audio import load_whisper
    from .unet import load_unet
    from .unet.config import UNetConfig
    from .vae import load_vae

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    paths = resolve_models(args)
    whisper = load_whisper(paths["whisper"], device=device)
    check_version(args.version, paths["unet"])
    unet = load_unet(args.unet_config or UNetConfig(), paths["unet"], device=device, dtype=dtype)
    if args.lora:
        from .train.lora import apply_lora

        applied = apply_lora(unet, args.lora, float(args.lora_strength), keep_backup=False,
                             expect={"resolution": VERSIONS[args.version]})
        log.info("LoRA %s applied at strength %s (%d layers)", os.path.basename(args.lora), args.lora_strength,
                 len(applied.modules))
    if args.compile:
        from .sampling import compile_unet

        unet = compile_unet(unet)
    vae = load_vae(paths["vae"], args.vae_config, device=device, dtype=dtype)
    return LoadedModels(whisper, unet, vae, VERSIONS[args.version], device, paths)


def lip_sync_file(models: LoadedModels, args, video: str, audio: str, out: str, settings: StreamSettings,
                  progress=None, check_interrupt=None):
    """One streaming job with loaded models: ``video`` lip-synced to ``audio`` into ``out`` (atomic).
    Returns the :class:`~latentsync_core.stream.StreamReport`."""
    from .audio import load_audio_file
    from .face import FaceAligner
    from .stream import lip_sync_video

    waveform, rate = load_audio_file(audio)
    aligner = FaceAligner(models.resolution, face=settings.face, max_gap=settings.max_gap, models_dir=args.models,
                          download=not args.no_download)
    try:
        return lip_sync_video(
            video, out, waveform, rate, unet=models.unet, vae=models.vae, whisper=models.whisper, settings=settings,
            resolution=models.resolution, aligner=aligner, progress=progress, check_interrupt=check_interrupt,
        )
    finally:
        aligner.close()


def run(args) -> str:
    """Load the models, then run the streaming job (:func:`latentsync_core.stream.lip_sync_video`)."""
    from .audio import load_audio_file

    settings = getattr(args, "settings", None) or settings_from_flags(args, StreamSettings)
    check_output_path(args.out, inputs=[args.video, args.audio])  # also when run() is called without main()
    probe_video(args.video)  # a clear error before any model loads
    load_audio_file(args.audio, duration=0.01)  # a missing or silent-less file fails before the models load
    models = load_models(args)
    progress = StageBars(args.quiet, STAGE_UNITS)
    try:
        report = lip_sync_file(models, args, args.video, args.audio, args.out, settings, progress)
    finally:
        progress.close()  # before the last lines: they are not glued to a bar
    log.info("wrote %s in %.1f s: %s", report.path, report.seconds, report.summary())
    return report.path


STAGE_UNITS = {"faces": "frame", "lip sync": "step"}


# native libraries (mediapipe's C++ graph, TFLite, absl) log straight to file descriptor 2
NATIVE_LOG_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}


@contextlib.contextmanager
def native_logs_hidden():
    """Hide what native libraries write to file descriptor 2 (mediapipe's "Created TensorFlow Lite
    XNNPACK delegate", absl's "All log messages before absl::InitializeLog()...") while Python's own
    ``sys.stderr`` (errors, logging, progress bars) still reaches the terminal: fd 2 goes to the null
    device and ``sys.stderr`` writes to a duplicate of the original fd 2. Yields the stream to log to.
    A no-op when ``sys.stderr`` is not fd 2 (tests capturing output, embedding applications)."""
    for key, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(key, value)
    try:
        redirect = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        redirect = False
    if not redirect:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    old = sys.stderr
    stream = open(os.dup(saved), "w", buffering=1, encoding=old.encoding, errors="backslashreplace")  # noqa: SIM115
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = stream
    try:
        yield stream
    finally:
        stream.flush()
        sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)
        stream.close()


def main(argv=None) -> int:
    """The command line; returns the exit status (0 done, 1 runtime error, 2 usage error, 130 Ctrl-C).
    ``score ...`` is the sync-score command (:mod:`latentsync_core.score_cli`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["score"]:
        from .score_cli import main as score_main

        return score_main(argv[1:])
    if argv[:1] == ["batch"]:
        from .batch.command import main as batch_main

        return batch_main(argv[1:])
    if argv[:1] == ["prepare"]:
        from .train.commands import prepare_main

        return prepare_main(argv[1:])
    if argv[:1] == ["train"]:
        from .train.commands import train_main

        return train_main(argv[1:])
    return logged(build_parser().parse_args(argv), _main)


def logged(args, command) -> int:
    """Run ``command(args)`` with log lines (``-q``/``-v`` levels) on stderr and native libraries' noise
    hidden unless ``--verbose``."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    with contextlib.nullcontext(sys.stderr) if args.verbose else native_logs_hidden() as err:
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(level)
        try:
            return command(args)
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def run_command(args, validate, work, show, usage_errors: tuple[type, ...] = ()) -> int:
    """The exit-status rules of every command: ``validate(args)`` (a :class:`LatentSyncError`: exit 2, nothing
    done), ``work(args)`` (``usage_errors`` found while working: 2; another LatentSyncError: 1; Ctrl-C: 130),
    then ``show(result)`` (its int, or 0). Errors are one line on stderr."""
    try:
        validate(args)
    except LatentSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = work(args)
    except LatentSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, usage_errors) else EXIT_RUNTIME
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    code = show(result)
    return 0 if code is None else code


def _main(args) -> int:
    return run_command(args, validate_args, run, print)
