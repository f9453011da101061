"""Samplers and chunk batching for :class:`latentsync_core.pipeline.LipSyncPipeline`.

- ``ddim`` is the official sampler (the scheduler config in :data:`constants.DDIM_SCHEDULER_CONFIG`);
  ``dpmpp_2m`` is diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M) built from the same betas
  and timestep spacing: an opt-in speed-up (about 10 steps for DDIM's 20), NOT the official result. A
  fresh scheduler is made for every batch of chunks, so no multistep state crosses chunks.
- Chunk batching runs several 16-frame chunks in one U-Net call. Every ResNet GroupNorm normalises per
  batch item over the frames of that item, so chunks stacked on the batch axis keep per-chunk
  statistics; chunks of different lengths (the short last one) never share a call.
"""

from __future__ import annotations

import torch

from .constants import CHUNK_FRAMES
from .errors import LatentSyncError
from .options import MAX_CHUNK_BATCH, SAMPLERS  # noqa: F401  (the option table's)

# Peak U-Net activation memory of one 16-frame chunk, per batch item (CFG doubles it), in units of
# latent pixels x frames x base channels x bytes per element: measured 27.0 on the meta device
# (`benchmarks/throughput.py memory`: live tensor bytes of the full-size U-Net, fused attention as on
# CUDA; the same at 256 and 512 px, bf16 and fp32; 50.6 with DeepCache's cache, which "auto" counts as
# twice this). 40 leaves room for kernel workspaces and fragmentation; not yet checked on a GPU.
ACTIVATION_BYTES_FACTOR = 40
AUTO_MEMORY_SHARE = 0.7  # of the free device memory that "auto" plans to fill with activations


def compile_unet(unet: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile`` with fixed shapes. :class:`~latentsync_core.pipeline.LipSyncPipeline` calls the
    compiled module only for full 16-frame calls of its usual batch size and the eager one
    (``._orig_mod``) for the short last chunk, a smaller last batch and DeepCache, so a run compiles once
    (per batch size / CFG setting) and never per chunk."""
    return torch.compile(unet, dynamic=False, backend=backend)


def make_scheduler(name: str, config: dict, steps: int):
    """A fresh scheduler with ``steps`` inference steps; timesteps on the CPU (the loop passes Python
    ints to ``step`` so nothing in it waits for the device)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        scheduler = DDIMScheduler(**config)
    elif name == "dpmpp_2m":
        # same betas / spacing / offset / prediction type; DPM-Solver++ 2nd order, first order at the end
        scheduler = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True)
    else:
        raise LatentSyncError(f"sampler must be one of {SAMPLERS}, not {name!r}.")
    scheduler.set_timesteps(steps)
    return scheduler


def chunk_activation_bytes(base_channels: int, latent_hw: int, dtype: torch.dtype, cfg: bool,
                           frames: int = CHUNK_FRAMES) -> int:
    """Estimated peak activation bytes of one chunk in one U-Net call (both CFG halves)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(ACTIVATION_BYTES_FACTOR * (2 if cfg else 1) * frames * latent_hw**2 * base_channels * itemsize)


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (driver-free plus what torch's cache holds unused); None elsewhere."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def resolve_chunk_batch(chunk_batch: int | str | None, device: torch.device, per_chunk_bytes: int,
                        num_chunks: int) -> int:
    """``chunk_batch`` (int >= 1, or ``"auto"`` / 0 / None) -> chunks per U-Net call, at most ``num_chunks``.

    auto: as many chunks as :data:`AUTO_MEMORY_SHARE` of the free CUDA memory holds (at most
    :data:`MAX_CHUNK_BATCH`); 1 on the CPU and other devices (batching brings nothing there).
    """
    if chunk_batch in (None, 0, "auto", "0"):
        free = free_device_bytes(device)
        k = 1 if free is None else int(free * AUTO_MEMORY_SHARE // max(per_chunk_bytes, 1))
        k = max(1, min(k, MAX_CHUNK_BATCH))
    else:
        try:
            k = int(chunk_batch)
        except (TypeError, ValueError):
            k = 0
        if k < 1:
            raise LatentSyncError(f"chunk_batch must be 'auto' or an integer >= 1 (got {chunk_batch!r}).")
    return max(1, min(k, max(num_chunks, 1)))


def group_chunks(lengths: list[int], per_call: int) -> list[list[int]]:
    """Chunk indices grouped for one U-Net call each: consecutive chunks of equal length, at most
    ``per_call`` per group (``[16, 16, 16, 5]``, 2 -> ``[[0, 1], [2], [3]]``)."""
    groups: list[list[int]] = []
    for c, n in enumerate(lengths):
        if groups and len(groups[-1]) < per_call and lengths[groups[-1][0]] == n:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups
