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
import ctypes
import logging
import math
import os
import sys
import time

import numpy as np
import torch

from .constants import (
    CHUNK_FRAMES,
    DEFAULT_GUIDANCE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    FACE_BORDER_VALUE,
    LATENT_CHANNELS,
    MAX_FACE_GAP,
    MODEL_FOLDER,
    VAE_DOWNSCALE,
)
from .errors import LatentSyncError
from .video_io import DEFAULT_CRF, VideoReader, VideoWriter, probe_video

log = logging.getLogger("latentsync_core.cli")

SEGMENT_FRAMES = 4 * CHUNK_FRAMES  # output frames sampled per segment (bounded host memory)
DETECT_CHUNK = 32  # frames decoded at a time for face detection
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


def release_host_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise, and the resident size creeps up
    by tens of MB per segment on long videos); a no-op where malloc_trim does not exist."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def detect_faces(reader: VideoReader, aligner, quiet: bool):
    """Pass 1: landmarks of every frame (the frames themselves are not kept)."""
    from .face.gaps import bridge_gaps, format_ranges, runs
    from .face.geometry import track_affines

    n = reader.num_frames
    landmarks = np.full((n, 68, 2), np.nan)
    found = np.zeros(n, dtype=bool)
    with _bar(n, "faces", quiet) as bar:
        for start, frames in reader.chunks(DETECT_CHUNK):
            lm, ok = aligner.detect(frames)
            landmarks[start : start + len(frames)], found[start : start + len(frames)] = lm, ok
            bar.update(len(frames))
    if not found.any():
        raise LatentSyncError(
            f"No face found in any of the {n} frames. Use a video with a clearly visible, reasonably frontal face."
        )
    landmarks, found, bridged = bridge_gaps(landmarks, found, MAX_FACE_GAP)
    _, affines = track_affines(landmarks, found, aligner.resolution)
    if (~found).any():
        log.warning("no face in frames %s: they are left untouched", format_ranges(runs(~found)))
    if bridged.any():
        log.info("face bridged over frames %s", format_ranges(runs(bridged)))
    return affines, found


def run(args) -> str:
    from .audio import embed_audio, load_audio_file, load_whisper
    from .face import FaceAligner, paste_back
    from .face.geometry import warp_face
    from .length import ping_pong_indices
    from .pipeline import LipSyncPipeline
    from .unet import load_unet
    from .unet.config import UNetConfig
    from .vae import load_vae

    t0 = time.perf_counter()
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    resolution = RESOLUTIONS[args.version]
    info = probe_video(args.video)
    fps = float(info.fps)
    log.info("video: %dx%d, %d frames at %.3f fps", info.width, info.height, info.num_frames, fps)
    if not args.out.lower().endswith((".mp4", ".mov", ".mkv")):
        raise LatentSyncError(f"--out {args.out}: use an .mp4, .mov or .mkv file name")

    paths = resolve_models(args)

    # audio: native samples for the output track, whisper windows for the model
    waveform, rate = load_audio_file(args.audio)
    whisper = load_whisper(paths["whisper"], device=device)
    frame_audio = embed_audio(whisper, waveform, rate, fps=fps)
    del whisper
    num_out = frame_audio.num_frames
    if num_out < 1:
        raise LatentSyncError("The audio is shorter than one video frame.")
    index = ping_pong_indices(info.num_frames, num_out)

    aligner = FaceAligner(resolution, face=args.face if args.face == "largest" else int(args.face), models_dir=args.models)
    with VideoReader(args.video) as reader:
        affines, found = detect_faces(reader, aligner, args.quiet)
        aligner.close()

        unet = load_unet(args.unet_config or UNetConfig(), paths["unet"], device=device, dtype=dtype)
        vae = load_vae(paths["vae"], args.vae_config, device=device, dtype=dtype)
        pipeline = LipSyncPipeline(unet, vae)
        # one noise frame for the whole video (as the official pipeline and the graph), and one generator
        # carried across segments for the VAE posterior samples
        generator = torch.Generator("cpu").manual_seed(int(args.seed))
        latent = resolution // VAE_DOWNSCALE
        noise = torch.randn(
            (1, LATENT_CHANNELS, 1, latent, latent), generator=torch.Generator("cpu").manual_seed(int(args.seed))
        )

        audio_track = (waveform[:, : math.ceil(num_out / fps * rate)].numpy(), rate)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with (
            VideoWriter(args.out, info.width, info.height, info.fps, audio=audio_track, crf=args.crf) as writer,
            _bar(num_out, "lip sync", args.quiet) as bar,
        ):
            for a in range(0, num_out, SEGMENT_FRAMES):
                src = index[a : a + SEGMENT_FRAMES]
                lo, hi = int(src.min()), int(src.max()) + 1
                frames = reader.read(lo, hi)  # the only full-size frames in memory
                faces = np.full((hi - lo, resolution, resolution, 3), FACE_BORDER_VALUE, dtype=np.uint8)
                for j in np.flatnonzero(found[lo:hi]):
                    faces[j] = warp_face(frames[j], affines[lo + j], resolution)
                if found[src].any():
                    result = pipeline.sync_faces(
                        torch.from_numpy(faces),
                        frame_audio.chunks[a : a + len(src)],
                        source_index=src - lo,
                        found=found[lo:hi],
                        steps=args.steps,
                        guidance=args.guidance,
                        generator=generator,
                        initial_latents=noise,
                        deepcache=args.deepcache,
                    )
                    synced = (result.faces.float() * 255).round().clamp(0, 255).to(torch.uint8).numpy()
                    out = paste_back(frames[src - lo], synced, affines[src], found[src])
                else:
                    out = frames[src - lo]
                writer.write(out)
                bar.update(len(src))
                del frames, faces, out
                release_host_memory()
    log.info("wrote %s: %d frames in %.1f s", args.out, num_out, time.perf_counter() - t0)
    return args.out


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
