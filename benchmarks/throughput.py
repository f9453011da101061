"""Throughput of the LatentSync sampling loop: machine-independent FLOP per output frame, peak activation
memory per chunk, host syncs in the step loop, and CPU seconds per frame for chunk batching.

    python benchmarks/throughput.py flops              # TFLOP per output frame (meta device, full-size)
    python benchmarks/throughput.py memory             # peak live activation bytes of one chunk (meta)
    python benchmarks/throughput.py profile            # host syncs / concatenations per step (CPU, tiny)
    python benchmarks/throughput.py cpu --repeat 2     # s per output frame, chunk_batch 1 vs 2 (small config)
    python benchmarks/throughput.py compile            # tiny U-Net: eager vs torch.compile, short chunk
    python benchmarks/throughput.py channels-last --frames 8  # CPU: one full-size forward, layout A/B
    python benchmarks/throughput.py gpu --out gpu.json # CUDA: fps and peak VRAM, 1.5/1.6 x compile x
                                                       # chunk_batch x deepcache (benchmarks/gpu_run.sh)

FLOP are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no memory, no
time): U-Net forwards at B=2 (CFG), 16 frames; VAE (sd-vae-ft-mse layout) two encodes (masked face,
reference) and one decode per frame.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latentsync_core.constants import (  # noqa: E402
    AUDIO_EMBED_DIM,
    AUDIO_TOKENS_PER_FRAME,
    CHUNK_FRAMES,
    UNET_IN_CHANNELS,
)
from latentsync_core.deepcache import DeepCache  # noqa: E402
from latentsync_core.unet import UNetConfig, build_unet  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


class LegacyDeepCache(DeepCache):
    """DeepCache before the fix: motion modules of skipped layers run again on cached inputs."""

    def _targets(self):
        return ((m, key) for m, key in super()._targets() if key[1] != "motion")


def unet_inputs(hw: int, batch: int = 2, frames: int = CHUNK_FRAMES, device="meta", dtype=torch.float32):
    sample = torch.zeros(batch, UNET_IN_CHANNELS, frames, hw, hw, device=device, dtype=dtype)
    audio = torch.zeros(batch * frames, AUDIO_TOKENS_PER_FRAME, AUDIO_EMBED_DIM, device=device, dtype=dtype)
    return sample, audio


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def unet_step_flops(hw: int, cache_cls=DeepCache) -> tuple[int, int]:
    """(full forward, cached-step forward with DeepCache interval 3) FLOP at B=2, 16 frames."""
    model = build_unet(UNetConfig(), "meta")
    sample, audio = unet_inputs(hw)
    cache = cache_cls(model, 3)
    with torch.no_grad(), cache.active():
        cache.step = 0
        full = flops(lambda: model(sample, 500, audio))
        cache.step = 1
        cached = flops(lambda: model(sample, 500, audio))
    return full, cached


def vae_flops_per_frame(resolution: int) -> int:
    """Two encodes (posterior parameters) and one decode of one face with the sd-vae-ft-mse layout."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            sample_size=resolution)
    x = torch.zeros(1, 3, resolution, resolution, device="meta")
    z = torch.zeros(1, 4, resolution // 8, resolution // 8, device="meta")
    with torch.no_grad():
        return 2 * flops(lambda: vae.encode(x)) + flops(lambda: vae.decode(z))


def cmd_flops(args) -> None:
    for res in args.resolutions:
        hw = res // 8
        full, cached = unet_step_flops(hw)
        _, cached_old = unet_step_flops(hw, LegacyDeepCache)
        vae = vae_flops_per_frame(res)
        per = {
            "official (DDIM 20, CFG 1.5)": 20 * full,
            "DeepCache 3, before the fix": 7 * full + 13 * cached_old,
            "DeepCache 3, after the fix": 7 * full + 13 * cached,
            "dpmpp_2m 10 steps": 10 * full,
        }
        print(f"{res} px ({hw}x{hw} latents): U-Net forward {full / 1e12:.3f} TFLOP; cached step "
              f"{cached_old / 1e12:.3f} -> {cached / 1e12:.3f} TFLOP ({1 - cached / cached_old:.1%} less); "
              f"VAE {vae / 1e12:.3f} TFLOP/frame")
        for name, total in per.items():
            unet = total / CHUNK_FRAMES
            print(f"  {name:30s} U-Net {unet / 1e12:6.2f}  + VAE {vae / 1e12:.2f} = {(unet + vae) / 1e12:6.2f} "
                  f"TFLOP per output frame")


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the mode (works on the meta device)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, set()

    def _release(self, key, nbytes):
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t._base is None:
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._seen:
                    self._seen.add(key)
                    nbytes = storage.nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._release, key, nbytes)
        return out


def fused_sdpa(q, k, v, *args, **kwargs):
    """Stand-in for a fused (flash / memory-efficient) attention kernel: allocates only its output, as
    CUDA's SDPA backends do; the meta device's math path would materialise the attention matrix."""
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def cmd_memory(args) -> None:
    """Peak live activation bytes of one U-Net call on one chunk (B=2), fused attention as on CUDA."""
    from unittest import mock

    from latentsync_core.sampling import ACTIVATION_BYTES_FACTOR

    cfg = UNetConfig()
    for res in args.resolutions:
        hw = res // 8
        for dtype in (torch.bfloat16, torch.float32):
            for deepcache in (0, 3):
                model = build_unet(cfg, "meta", dtype)
                sample, audio = unet_inputs(hw, dtype=dtype)
                cache = DeepCache(model, deepcache)
                with (torch.no_grad(), cache.active(), LiveBytes() as live,
                      mock.patch("torch.nn.functional.scaled_dot_product_attention", fused_sdpa)):
                    cache.step = 0
                    model(sample, 500, audio)
                    peak = live.peak
                    kept = live.live  # what the cache holds after the call
                unit = 2 * CHUNK_FRAMES * hw * hw * cfg.block_out_channels[0] * sample.element_size()
                print(f"{res} px {str(dtype):15s} deepcache {deepcache}: peak {peak / 2**30:.2f} GiB per chunk "
                      f"(B=2), held after the call {kept / 2**30:.2f} GiB; factor {peak / unit:.1f} "
                      f"(ACTIVATION_BYTES_FACTOR = {ACTIVATION_BYTES_FACTOR})")


def tiny_pipeline(dtype=torch.float32):
    from latentsync_core.pipeline import LipSyncPipeline
    from latentsync_core.unet import load_unet
    from latentsync_core.vae import load_vae

    unet = load_unet(FIXTURES / "unet" / "config.json", FIXTURES / "unet" / "latentsync_unet.pt", dtype=dtype)
    vae = load_vae(FIXTURES / "pipeline" / "vae_tiny_random.pt", FIXTURES / "pipeline" / "vae_config.json")
    return LipSyncPipeline(unet, vae)


def faces_audio(frames: int, res: int = 64, faces: int = 4):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(faces, res, res, 3, generator=g),
            torch.randn(frames, AUDIO_TOKENS_PER_FRAME, AUDIO_EMBED_DIM, generator=g))


def cmd_profile(args) -> None:
    """Op counts of a whole sync_faces run at 2 and 4 steps: the difference / 2 is what one step adds."""
    from torch.profiler import ProfilerActivity, profile

    pipe = tiny_pipeline()
    faces, audio = faces_audio(16)
    watch = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::cat", "aten::to", "aten::copy_")
    counts = {}
    for steps in (2, 4):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pipe.sync_faces(faces, audio, steps=steps, guidance=1.5, seed=0)
        events = prof.key_averages()
        counts[steps] = {name: sum(e.count for e in events if e.key == name) for name in watch}
    sample, audio_in = unet_inputs(8, device="cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        pipe.unet(sample, torch.tensor(500), audio_in)
    in_unet = {name: sum(e.count for e in prof.key_averages() if e.key == name) for name in watch}
    print("per step (sync_faces at 4 steps minus 2 steps, / 2) vs inside one U-Net forward:")
    for name in watch:
        per_step = (counts[4][name] - counts[2][name]) / 2
        print(f"  {name:28s} per step {per_step:6.1f}   in one U-Net forward {in_unet[name]:5d}")


def cmd_cpu(args) -> None:
    """s per output frame, chunk_batch 1 vs 2, alternating, on a small config (full size: ~3 min per
    forward on this CPU)."""
    from latentsync_core.pipeline import LipSyncPipeline
    from latentsync_core.vae import load_vae

    cfg = UNetConfig(block_out_channels=tuple(args.channels or (64, 128, 256, 256)))
    args.steps = args.steps or 2
    torch.manual_seed(0)
    unet = build_unet(cfg, "cpu")
    vae = load_vae(FIXTURES / "pipeline" / "vae_tiny_random.pt", FIXTURES / "pipeline" / "vae_config.json")
    pipe = LipSyncPipeline(unet, vae)
    frames = 2 * CHUNK_FRAMES
    faces, audio = faces_audio(frames, res=args.resolution)
    print(f"config block_out_channels {cfg.block_out_channels}, {args.resolution} px, {frames} frames, "
          f"{args.steps} steps, CFG 1.5, threads {torch.get_num_threads()}")
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for k in (1, 2):
            t0 = time.perf_counter()
            pipe.sync_faces(faces, audio, steps=args.steps, guidance=1.5, seed=0, chunk_batch=k)
            times[k].append((time.perf_counter() - t0) / frames)
            print(f"  chunk_batch {k}: {times[k][-1]:.3f} s/frame", flush=True)
    for k, ts in times.items():
        print(f"chunk_batch {k}: {min(ts):.3f}-{max(ts):.3f} s per output frame over {len(ts)} runs")


def cmd_compile(args) -> None:
    """Tiny U-Net on CPU: eager vs compiled, 16-frame calls and a 5-frame short chunk run eagerly or
    padded to 16 frames (padding changes the GroupNorm statistics, so it is NOT exact: timing only)."""
    from latentsync_core.unet import load_unet

    unet = load_unet(FIXTURES / "unet" / "config.json", FIXTURES / "unet" / "latentsync_unet.pt")
    compiled = torch.compile(unet, dynamic=False)
    full = unet_inputs(8, device="cpu")
    short = unet_inputs(8, frames=5, device="cpu")
    t = torch.tensor(500)

    def timed(fn, *a, n=args.repeat):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn(*a)
            ts.append(time.perf_counter() - t0)
        return min(ts)

    with torch.no_grad():
        t0 = time.perf_counter()
        compiled(full[0], t, full[1])
        print(f"compile (16 frames): {time.perf_counter() - t0:.1f} s")
        eager_out, compiled_out = unet(full[0], t, full[1]), compiled(full[0], t, full[1])
        print(f"compiled vs eager, 16 frames: max abs diff {(compiled_out - eager_out).abs().max().item():.2e} "
              f"(output max abs {eager_out.abs().max().item():.2f})")
        print(f"16 frames: eager {timed(unet, full[0], t, full[1]) * 1e3:.1f} ms, "
              f"compiled {timed(compiled, full[0], t, full[1]) * 1e3:.1f} ms")
        print(f"5 frames eager: {timed(unet, short[0], t, short[1]) * 1e3:.1f} ms; "
              f"padded to 16, compiled: {timed(compiled, full[0], t, full[1]) * 1e3:.1f} ms")
        t0 = time.perf_counter()
        compiled(short[0], t, short[1])
        print(f"compiling a 5-frame shape instead: {time.perf_counter() - t0:.1f} s (a recompile)")


def cmd_channels_last(args) -> None:
    """One U-Net forward (full size unless ``--channels``, 256 px faces -> 32x32 latents, B=2) in the
    default layout vs channels-last, alternating A/B in one process after one warm-up of each."""
    cfg = UNetConfig(block_out_channels=tuple(args.channels)) if args.channels else UNetConfig()
    torch.manual_seed(0)
    unet = build_unet(cfg, "cpu")
    sample, audio = unet_inputs(args.resolution // 8, frames=args.frames, device="cpu")
    sample.normal_()
    audio.normal_()
    t = torch.tensor(500)

    def forward(channels_last: bool) -> float:
        unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = unet(sample, t, audio)
        assert torch.isfinite(out).all()
        return time.perf_counter() - t0

    print(f"{sum(p.numel() for p in unet.parameters()):,} parameters, B=2, {args.frames} frames, "
          f"{args.resolution // 8}x{args.resolution // 8} latents, {torch.get_num_threads()} threads", flush=True)
    forward(False), forward(True)  # warm-ups (oneDNN primitive caches for both layouts)
    for r in range(args.repeat):
        load = os.getloadavg()[0]
        a, b = forward(False), forward(True)
        print(f"round {r + 1}: load {load:.2f}-{os.getloadavg()[0]:.2f}, contiguous {a:.2f} s, channels-last "
              f"{b:.2f} s ({a / b:.3f}x)", flush=True)


def gpu_matrix(args) -> list[dict]:
    """The rows of ``gpu``, most wanted first (a run cut short by its time budget keeps the first ones):
    per version the eager chunk_batch x deepcache grid and channels-last, then torch.compile."""
    rows = []
    for version, res in zip(args.versions, args.resolutions):
        for deepcache in (0, 3):
            for k in args.chunk_batches:
                rows.append(dict(version=version, resolution=res, compile=False, channels_last=False,
                                 chunk_batch=k, deepcache=deepcache))
        rows.append(dict(version=version, resolution=res, compile=False, channels_last=True,
                         chunk_batch=args.chunk_batches[-1], deepcache=0))
    if not args.skip_compile:
        for version, res in zip(args.versions, args.resolutions):
            for k in (args.chunk_batches[0], args.chunk_batches[-1]):
                rows.append(dict(version=version, resolution=res, compile=True, channels_last=False,
                                 chunk_batch=k, deepcache=0))
    return rows


def cmd_gpu(args) -> None:
    """Output fps and peak device memory of ``sync_faces`` (H2D copies, VAE encodes/decode, every U-Net
    call: the sampler's whole work per frame) with the full-size U-Net and the sd-vae-ft-mse layout,
    random weights (speed and memory do not depend on them), DDIM 20 steps, CFG 1.5. Each row: one
    warm-up run (kernels, allocator; for compile: the compile, timed), then ``--repeat`` timed runs; the
    JSON file is rewritten after every row, so a run stopped at its time limit keeps what it measured.
    ``--device cpu --channels 32 64 64 64 --resolutions 64`` checks the script itself on a CPU."""
    import datetime
    import json
    import platform

    import diffusers
    from pipeline import build  # benchmarks/pipeline.py: the random full-size U-Net and VAE

    from latentsync_core.pipeline import LipSyncPipeline
    from latentsync_core.sampling import compile_unet

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cuda = device.type == "cuda"
    args.steps = args.steps or 20
    torch.set_grad_enabled(False)
    cfg = UNetConfig(block_out_channels=tuple(args.channels)) if args.channels else UNetConfig()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or 'cpu'})",
        "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
        "dtype": args.dtype, "steps": args.steps, "guidance": 1.5, "frames": args.frames,
        "block_out_channels": list(cfg.block_out_channels), "cpu_count": os.cpu_count(), "rows": [],
    }

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))

    def timed_run(pipe, faces, audio, row, steps):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        pipe.sync_faces(faces, audio, steps=steps, guidance=1.5, seed=0, deepcache=row["deepcache"],
                        chunk_batch=row["chunk_batch"])
        if cuda:
            torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)) if cuda else (0, 0)
        return time.perf_counter() - t0, peak

    start = time.perf_counter()
    models: dict = {}
    print(f"{report['device']}, torch {torch.__version__}, {args.dtype}, {args.frames} frames, {args.steps} steps",
          flush=True)
    for row in gpu_matrix(args):
        if time.perf_counter() - start > args.budget_s:
            row["skipped"] = f"time budget of {args.budget_s} s spent"
            report["rows"].append(row)
            continue
        try:
            if "unet" not in models:
                torch.manual_seed(0)
                models["unet"], models["vae"] = build(device, dtype, cfg)
            unet = models["unet"]
            if row["channels_last"]:
                unet = unet.to(memory_format=torch.channels_last)
            elif unet.channels_last:
                unet = unet.to(memory_format=torch.contiguous_format)
            if row["compile"]:
                torch.compiler.reset()  # one compiled graph alive at a time
                unet = compile_unet(unet)
            pipe = LipSyncPipeline(unet, models["vae"])
            g = torch.Generator().manual_seed(0)
            faces = torch.rand(args.frames, row["resolution"], row["resolution"], 3, generator=g)
            audio = torch.randn(args.frames, AUDIO_TOKENS_PER_FRAME, AUDIO_EMBED_DIM, generator=g)
            warm, _ = timed_run(pipe, faces, audio, row, 1)  # compiles here when compiled
            secs = [timed_run(pipe, faces, audio, row, args.steps) for _ in range(args.repeat)]
            best = min(s for s, _ in secs)
            row.update(warmup_s=round(warm, 2), seconds=[round(s, 3) for s, _ in secs],
                       fps=round(args.frames / best, 2), fps_range=[round(args.frames / max(s for s, _ in secs), 2),
                                                                  round(args.frames / best, 2)],
                       peak_allocated_gib=round(max(p[0] for _, p in secs) / 2**30, 2),
                       peak_reserved_gib=round(max(p[1] for _, p in secs) / 2**30, 2))
        except Exception as exc:  # a row that fails (e.g. no Triton) must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        report["rows"].append(row)
        save()
        print(json.dumps(row), flush=True)
    save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["flops", "memory", "profile", "cpu", "compile", "channels-last", "gpu"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--channels", type=int, nargs="+", default=None,
                        help="U-Net block_out_channels (cpu: default 64 128 256 256; gpu: the full 320 640 1280 1280)")
    parser.add_argument("--resolution", type=int, default=256, help="cpu: face size")
    parser.add_argument("--steps", type=int, default=None, help="cpu: default 2; gpu: default 20 (official)")
    parser.add_argument("--repeat", type=int, default=2)
    gpu = parser.add_argument_group("gpu")
    gpu.add_argument("--versions", nargs="+", default=["1.5", "1.6"], help="gpu: labels, one per --resolutions")
    gpu.add_argument("--frames", type=int, default=64, help="gpu: output frames per run (64 = 4 chunks); channels-last: frames per forward")
    gpu.add_argument("--chunk-batches", type=int, nargs="+", default=[1, 2, 4])
    gpu.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    gpu.add_argument("--device", default=None, help="gpu: default cuda when available")
    gpu.add_argument("--skip-compile", action="store_true")
    gpu.add_argument("--budget-s", type=float, default=420, help="gpu: start no new row after this many seconds")
    gpu.add_argument("--out", default=None, help="gpu: JSON file, rewritten after every row")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        {"flops": cmd_flops, "memory": cmd_memory, "profile": cmd_profile, "cpu": cmd_cpu,
         "compile": cmd_compile, "channels-last": cmd_channels_last, "gpu": cmd_gpu}[args.what](args)


if __name__ == "__main__":
    main()
