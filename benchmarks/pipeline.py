"""Seconds per output frame and peak memory of LipSyncPipeline.sync_faces with the full-size
LatentSync 1.5 U-Net and sd-vae-ft-mse shapes (random weights: speed and memory do not depend on them).

    python benchmarks/pipeline.py                       # CUDA when available, else CPU
    python benchmarks/pipeline.py --frames 16 --steps 1 # what fits in a few minutes on a 2-core CPU

On the CPU the whole-video runs are far too slow; ``--extrapolate`` (default on CPU) times the given
frame counts only as far as ``--measure-frames`` and scales linearly per 16-frame chunk x step
(the loop is exactly chunks x steps U-Net calls plus one VAE encode/decode per chunk), clearly labelled.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from latentsync_core.constants import CHUNK_FRAMES, RESOLUTION  # noqa: E402
from latentsync_core.pipeline import LipSyncPipeline  # noqa: E402
from latentsync_core.unet import load_unet  # noqa: E402
from latentsync_core.unet.config import UNetConfig  # noqa: E402


def build(device: torch.device, dtype: torch.dtype, config: UNetConfig | None = None):
    """The U-Net (full size unless ``config``) and an sd-vae-ft-mse-shaped VAE, random weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    unet = load_unet(config or UNetConfig(), None, device=device, dtype=dtype)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, sample_size=256)
    return unet, vae.to(device, dtype)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run(pipe, frames: int, steps: int, deepcache: int, device) -> tuple[float, int]:
    faces = torch.rand(min(frames, 64), RESOLUTION, RESOLUTION, 3)  # ping-ponged up to `frames`
    audio = torch.randn(frames, 50, 384)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    pipe.sync_faces(faces, audio, steps=steps, guidance=1.5, seed=0, deepcache=deepcache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, peak_bytes(device)


def compare_vae_modes() -> None:
    """vae_encode="sample" (official) vs "mean" (ComfyUI's VAE) on the golden tiny models, seed 1247."""
    import numpy as np

    from latentsync_core.audio import frame_audio_chunks
    from latentsync_core.face import fixed_mask
    from latentsync_core.vae import load_vae

    fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
    golden = np.load(os.path.join(fixtures, "pipeline", "golden_pipeline.npz"))
    unet = load_unet(os.path.join(fixtures, "unet", "config.json"), os.path.join(fixtures, "unet", "latentsync_unet.pt"))
    vae = load_vae(os.path.join(fixtures, "pipeline", "vae_tiny_random.pt"), os.path.join(fixtures, "pipeline", "vae_config.json"))
    chunks = frame_audio_chunks(torch.from_numpy(golden["features"]), 32, fps=25.0)
    faces = torch.from_numpy(golden["faces"])
    index = np.concatenate([np.arange(16), np.arange(16)[::-1]])
    runs = {}
    for mode in ("sample", "mean"):
        runs[mode] = LipSyncPipeline(unet, vae).sync_faces(faces, chunks, source_index=index, steps=3, guidance=1.5,
                                                           seed=1247, vae_encode=mode, return_latents=True)
    official0 = torch.from_numpy(golden["final_latents"][0])
    print(f"sample mode, nothing injected, chunk 0 final latents vs official: max abs "
          f"{(runs['sample'].final_latents[0][0] - official0).abs().max():.2e}")
    for c in range(2):
        d = (runs["sample"].final_latents[c] - runs["mean"].final_latents[c]).abs()
        print(f"chunk {c} final latents, sample vs mean: max abs {d.max():.3f}, mean abs {d.mean():.3f}")
    mouth = torch.tensor(fixed_mask(256)) < 0.5
    d = (runs["sample"].faces.float().clamp(0, 1) - runs["mean"].faces.float().clamp(0, 1)).abs()[:, mouth] * 255
    print(f"output faces in the mouth region, sample vs mean: mean {d.mean():.2f}, max {d.max():.1f} grey levels")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--deepcache", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    p.add_argument("--measure-frames", type=int, default=16, help="CPU: frames actually run before extrapolating")
    p.add_argument("--measure-steps", type=int, default=1, help="CPU: steps actually run before extrapolating")
    p.add_argument("--compare-vae-modes", action="store_true", help="sample vs mean VAE encoding on the golden tiny models")
    args = p.parse_args()
    if args.compare_vae_modes:
        compare_vae_modes()
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    torch.set_grad_enabled(False)
    unet, vae = build(device, dtype)
    pipe = LipSyncPipeline(unet, vae)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if device.type == 'cuda' else 'CPU cores'}), dtype {dtype}, steps {args.steps}, "
          f"deepcache {args.deepcache}, torch {torch.__version__}")
    if device.type == "cuda":
        run(pipe, 16, 1, 0, device)  # warm-up (kernels, allocator)
        for n in args.frames:
            secs, peak = run(pipe, n, args.steps, args.deepcache, device)
            print(f"{n:5d} frames: {secs / n:.3f} s/frame ({secs:.1f} s), peak GPU memory {peak / 2**30:.2f} GiB")
        return
    n0, s0 = args.measure_frames, args.measure_steps
    secs, peak = run(pipe, n0, s0, args.deepcache, device)
    chunk_steps = math.ceil(n0 / CHUNK_FRAMES) * s0
    per = secs / chunk_steps
    print(f"measured {n0} frames x {s0} step(s): {secs:.1f} s ({per:.1f} s per chunk-step incl. VAE), "
          f"peak RSS {peak / 2**30:.2f} GiB")
    for n in args.frames:
        est = math.ceil(n / CHUNK_FRAMES) * args.steps * per
        print(f"{n:5d} frames x {args.steps} steps: EXTRAPOLATED (upper bound: VAE counted per step) {est / n:.1f} s/frame ({est / 60:.1f} min)")


if __name__ == "__main__":
    main()
