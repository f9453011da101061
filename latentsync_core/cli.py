"""``python -m latentsync_core``: lip-sync a video to a speech track without ComfyUI.

    python -m latentsync_core --video in.mp4 --audio speech.wav --out out.mp4 [--models DIR]
        [--steps 20 --guidance 1.5 --seed 1247 --device auto]

The same pipeline as the ComfyUI graph (whisper features, face alignment, the LatentSync sampler,
paste-back), with the video streamed through in segments so host memory stays bounded whatever the
length: pass 1 detects the face in every frame (landmarks only are kept); pass 2 reads one segment of
frames at a time, aligns, samples, pastes back and encodes it. The output has the input's resolution
and frame rate, is encoded once (x264, CRF 18) and carries the new audio (AAC). The audio decides the
length: a shorter video is looped back and forth, a longer one is cut.

``--models DIR`` is laid out like ComfyUI's models folder (``DIR/latentsync/latentsync_unet.pt``,
``DIR/latentsync/whisper/tiny.pt``, ``DIR/vae/sd-vae-ft-mse.safetensors``), so a ComfyUI
``models`` folder works as is; missing files are downloaded from the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from .constants import (
    DEFAULT_GUIDANCE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    MODEL_FOLDER,
)
from .errors import LatentSyncError
from .safe_output import check_output_path
from .video_io import DEFAULT_CRF, probe_video

log = logging.getLogger("latentsync_core.cli")

RESOLUTIONS = {"1.5": 256, "1.6": 512}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latentsync_core",
        description="LatentSync lip sync: re-render the mouth of a talking-face video to follow a new speech track.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--video", required=True, help="input video with a visible face (any format FFmpeg reads)")
    p.add_argument("--audio", required=True, help="speech audio (wav, mp3, flac, m4a... or a video's audio track)")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument(
        "--models",
        default=os.environ.get("LATENTSYNC_MODELS", "models"),
        help="models folder laid out like ComfyUI's (latentsync/, vae/); env LATENTSYNC_MODELS",
    )
    p.add_argument("--version", choices=sorted(RESOLUTIONS), default="1.5", help="LatentSync model version")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale (>= 1)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (same seed, same result)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: fp16 on CUDA, else fp32")
    p.add_argument("--deepcache", type=int, default=0, help="DeepCache interval 2-5 (faster, slightly softer); 0 off")
    p.add_argument("--face", default="largest", help="which face: 'largest' or its index from the left (0-based)")
    p.add_argument("--crf", type=int, default=DEFAULT_CRF, help="x264 quality (lower = better; 18 visually lossless)")
    p.add_argument("--no-download", action="store_true", help="never download missing model files")
    adv = p.add_argument_group("model files (override the --models layout)")
    adv.add_argument("--unet", help="U-Net checkpoint (.pt / .safetensors)")
    adv.add_argument("--unet-config", help="U-Net config (.json / .yaml); default: the released model")
    adv.add_argument("--whisper", help="whisper tiny checkpoint (tiny.pt) or Hugging Face folder")
    adv.add_argument("--vae", help="VAE weights (diffusers AutoencoderKL .safetensors) or folder")
    adv.add_argument("--vae-config", help="VAE config.json (default: sd-vae-ft-mse)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.float32


def _bar(total: int, desc: str, quiet: bool, unit: str = "frame"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)


def resolve_models(args) -> dict[str, str]:
    """Paths of the U-Net, whisper and VAE files: explicit flags, else the --models layout (downloaded
    when missing unless --no-download)."""
    from .download import ensure_model_file, find_model_file, missing_error

    folders = {MODEL_FOLDER: os.path.join(args.models, MODEL_FOLDER), "vae": os.path.join(args.models, "vae")}
    wanted = {
        "unet": (args.unet, f"unet-{args.version}"),
        "whisper": (args.whisper, "whisper"),
        "vae": (args.vae, "vae"),
    }
    paths = {}
    for role, (explicit, kind) in wanted.items():
        if explicit:
            if not os.path.exists(explicit):
                raise LatentSyncError(f"--{role} {explicit}: no such file")
            paths[role] = explicit
            continue
        from .download import model_file

        folder = folders[model_file(kind).folder]
        if args.no_download:
            found = find_model_file(kind, [folder])
            if not found:
                raise missing_error([kind], folder, "--no-download given")
            paths[role] = found
            continue
        bar = None

        def progress(done, total, _kind=kind):
            nonlocal bar
            if bar is None:
                bar = _bar(total or None, f"download {_kind}", args.quiet, unit="B")
                bar.unit_scale = True
            bar.update(done - bar.n)

        try:
            paths[role] = ensure_model_file(kind, folder, progress=progress)
        finally:
            if bar is not None:
                bar.close()
    return paths


def run(args) -> str:
    """Load the models, then run the streaming job (:func:`latentsync_core.stream.lip_sync_video`)."""
    from .audio import load_audio_file, load_whisper
    from .face import FaceAligner
    from .stream import StreamSettings, lip_sync_video
    from .unet import load_unet
    from .unet.config import UNetConfig
    from .vae import load_vae

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    resolution = RESOLUTIONS[args.version]
    face = args.face if args.face == "largest" else int(args.face)
    settings = StreamSettings(
        steps=args.steps, guidance=args.guidance, seed=args.seed, deepcache=args.deepcache, face=face, crf=args.crf
    )
    check_output_path(args.out, inputs=[args.video, args.audio])
    probe_video(args.video)  # a clear error before any model loads

    paths = resolve_models(args)
    waveform, rate = load_audio_file(args.audio)
    whisper = load_whisper(paths["whisper"], device=device)
    unet = load_unet(args.unet_config or UNetConfig(), paths["unet"], device=device, dtype=dtype)
    vae = load_vae(paths["vae"], args.vae_config, device=device, dtype=dtype)
    aligner = FaceAligner(resolution, face=face)
    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = _bar(total, stage, args.quiet)
        bars[stage].update(done - bars[stage].n)

    try:
        report = lip_sync_video(
            args.video, args.out, waveform, rate, unet=unet, vae=vae, whisper=whisper, settings=settings,
            resolution=resolution, aligner=aligner, progress=progress,
        )
    finally:
        aligner.close()
        for bar in bars.values():
            bar.close()
    log.info("%s", report.summary())
    log.info("wrote %s in %.1f s", report.path, report.seconds)
    return report.path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.face != "largest" and not args.face.isdigit():
        print("error: --face must be 'largest' or a number", file=sys.stderr)
        return 2
    try:
        out = run(args)
    except LatentSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(out)
    return 0
