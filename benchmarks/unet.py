"""One forward of the full-size LatentSync U-Net (random weights) at inference shapes.

    python benchmarks/unet.py                      # 32x32 latents (1.5, 256 px) and 64x64 (1.6, 512 px)
    python benchmarks/unet.py --sizes 32 --dtype bf16 --channels-last --compile

B=2 (the CFG batch), 16 frames. Prints the FLOP count, seconds per forward and peak memory (CUDA: peak allocated;
CPU: peak resident set of the process, and its growth during the forward). Uses CUDA when available.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from latentsync_core.constants import AUDIO_EMBED_DIM, AUDIO_TOKENS_PER_FRAME, CHUNK_FRAMES, UNET_IN_CHANNELS  # noqa: E402
from latentsync_core.precision import DTYPES  # noqa: E402
from latentsync_core.unet import UNetConfig, build_unet  # noqa: E402

GIB = 1024**3


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def forward_tflop(size: int, batch: int, frames: int) -> float:
    """FLOPs of one forward (counted on the meta device: no memory, no time)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_unet(UNetConfig(), "meta")
    sample = torch.empty(batch, UNET_IN_CHANNELS, frames, size, size, device="meta")
    ehs = torch.empty(batch * frames, AUDIO_TOKENS_PER_FRAME, AUDIO_EMBED_DIM, device="meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(sample, torch.tensor(500, device="meta"), ehs)
    return counter.get_total_flops() / 1e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="latent sizes (256 px -> 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=CHUNK_FRAMES)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeat", type=int, default=1, help="timed forwards per size (after one warm-up on CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compile time reported)")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_unet(UNetConfig(), device, dtype)  # the released 1.5/1.6 layout, default random init
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    print(f"device {device} ({gpu}), threads {torch.get_num_threads()}, torch {torch.__version__}, dtype {dtype}, "
          f"{n_params:,} parameters, built in {build_s:.1f} s, channels_last={args.channels_last}")
    forward = torch.compile(model) if args.compile else model

    for size in args.sizes:
        print(f"  {size}x{size}: {forward_tflop(size, args.batch, args.frames):.2f} TFLOP per forward", flush=True)
        sample = torch.randn(args.batch, UNET_IN_CHANNELS, args.frames, size, size, device=device, dtype=dtype)
        ehs = torch.randn(args.batch * args.frames, AUDIO_TOKENS_PER_FRAME, AUDIO_EMBED_DIM, device=device, dtype=dtype)
        timestep = torch.tensor(500, device=device)
        with torch.inference_mode():
            if device.type == "cuda" or args.compile:
                t0 = time.perf_counter()
                forward(sample, timestep, ehs)  # warm-up (kernel selection / compilation)
                sync(device)
                print(f"  {size}x{size}: warm-up {time.perf_counter() - t0:.2f} s")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rss_before = rss_bytes()
            times = []
            for _ in range(args.repeat):
                sync(device)
                t0 = time.perf_counter()
                out = forward(sample, timestep, ehs)
                sync(device)
                times.append(time.perf_counter() - t0)
        assert out.shape == (args.batch, 4, args.frames, size, size) and torch.isfinite(out).all()
        if device.type == "cuda":
            mem = f"peak allocated {torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB"
        else:
            mem = (f"peak RSS {peak_rss_bytes() / GIB:.2f} GiB (weights+process {rss_before / GIB:.2f} GiB, "
                   f"forward adds up to {(peak_rss_bytes() - rss_before) / GIB:.2f} GiB)")
        print(f"  B={args.batch} F={args.frames} {size}x{size} latents ({size * 8} px): "
              f"{min(times):.2f} s/forward (best of {len(times)}), {mem}", flush=True)


if __name__ == "__main__":
    main()
