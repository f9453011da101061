"""The forward-diffusion arithmetic of a training step (DDPM/DDIM ``epsilon`` parameterisation).

All as the official step computes it with diffusers' ``DDIMScheduler`` (``configs/scheduler_config.json``):
scaled-linear betas, ``add_noise`` and the one-step x0 prediction of ``latentsync/utils/util.py``.
Latents are ``[B, 4, F, h, w]``; timesteps ``[B]`` int64 in [0, 1000).
"""

from __future__ import annotations

import torch

from ..constants import DDIM_SCHEDULER_CONFIG

NUM_TRAIN_TIMESTEPS = DDIM_SCHEDULER_CONFIG["num_train_timesteps"]


def alphas_cumprod(config: dict = DDIM_SCHEDULER_CONFIG) -> torch.Tensor:
    """``[1000]`` float32 ᾱ_t of the scaled-linear schedule (diffusers computes it the same way)."""
    if config["beta_schedule"] != "scaled_linear":
        raise ValueError(f"unsupported beta_schedule {config['beta_schedule']!r}")
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5,
                           config["num_train_timesteps"], dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(acp: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε`` (diffusers ``add_noise``: ᾱ in x0's dtype, ``** 0.5``)."""
    a = acp.to(device=x0.device, dtype=x0.dtype)[timesteps.to(x0.device)]
    return _per_sample(a**0.5, x0) * x0 + _per_sample((1 - a) ** 0.5, x0) * noise


def predict_x0(acp: torch.Tensor, pred_noise: torch.Tensor, timesteps: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """One-step x0 from the predicted noise (official ``one_step_sampling``, no clipping):
    ``(x_t − sqrt(1 − ᾱ_t)·ε̂) / sqrt(ᾱ_t)``; ᾱ in the prediction's dtype."""
    a = acp.to(pred_noise.device)[timesteps.to(pred_noise.device)].to(pred_noise.dtype)
    return (x_t - _per_sample((1 - a) ** 0.5, x_t) * pred_noise) / _per_sample(a**0.5, x_t)


def mixed_noise(shape: tuple[int, ...], alpha: float | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise ``[B, C, F, h, w]`` (float32, CPU).

    ``alpha`` given: a frame-shared part (std ``sqrt(α²/(1+α²))``) plus an independent part (std
    ``sqrt(1/(1+α²))``), the "mixed noise" of arXiv 2305.10474 the official configs use (α = 1).
    ``alpha=None``: one noise frame repeated over all frames (the official ``use_mixed_noise: false``).
    """
    b, c, f, h, w = shape
    shared = torch.randn((b, c, 1, h, w), generator=generator).repeat(1, 1, f, 1, 1)
    if alpha is None:
        return shared
    independent = torch.randn(shape, generator=generator)
    return independent * (1 / (1 + alpha**2)) ** 0.5 + shared * (alpha**2 / (1 + alpha**2)) ** 0.5


def sample_timesteps(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B]`` int64 uniform in [0, 1000)."""
    return torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator, dtype=torch.int64)
