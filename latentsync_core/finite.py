"""Never a silent black box: stop with a clear error when a model stage produces NaN/Inf.

In half precision the U-Net or the VAE can overflow; the official code then pastes a black or garbage
face and carries on. :func:`check_finite` is called on a stage's output (cheap: one reduction and one
host sync per call, so once per chunk, not per element or per frame) and raises
:class:`NonFiniteError` naming the stage and the fix.
"""

from __future__ import annotations

import torch

from .errors import LatentSyncError

STAGES = {
    "unet": (
        "the U-Net",
        "set the LatentSync model precision to bf16 or fp32 (fp16 can overflow)",
    ),
    "vae_encode": (
        "the VAE encode",
        "run the VAE in fp32 (sd-vae-ft-mse overflows in fp16; bf16 also works)",
    ),
    "vae_decode": (
        "the VAE decode",
        "run the VAE in fp32 (sd-vae-ft-mse overflows in fp16; bf16 also works)",
    ),
}


class NonFiniteError(LatentSyncError):
    """A model stage produced NaN or infinite values (usually half-precision overflow)."""


def check_finite(tensor: torch.Tensor, stage: str, where: str = "") -> torch.Tensor:
    """Return ``tensor`` unchanged if every value is finite, else raise :class:`NonFiniteError`.

    tensor: any floating tensor (any device); stage: ``"unet"``, ``"vae_encode"`` or ``"vae_decode"``;
    where: optional context for the message (e.g. ``"frames 16-31"``). One ``isfinite().all()`` reduction
    and one host sync; the NaN/Inf count is only computed when the check fails.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {sorted(STAGES)}")
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
        return tensor
    name, fix = STAGES[stage]
    bad = ~torch.isfinite(tensor)
    nan = int(torch.isnan(tensor).sum())
    at = f" ({where})" if where else ""
    raise NonFiniteError(
        f"{name} produced {int(bad.sum())} NaN/Inf values of {tensor.numel()}{at} in {str(tensor.dtype).replace('torch.', '')} "
        f"({nan} NaN): {fix}."
    )
