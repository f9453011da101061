"""Which U-Net parameters a training run updates.

The official rule (``scripts/train_unet.py``): with motion modules, a parameter trains when its name
contains any of ``run.trainable_modules`` (substring match); without them (stage 1) every parameter
trains. The named sets below are the official configs' lists; ``lora`` trains adapters only
(:mod:`latentsync_core.train.lora`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..errors import LatentSyncError

TRAINABLE_SETS: dict[str, tuple[str, ...] | None] = {
    "stage1": None,  # every parameter (the stage-1 U-Net has no motion modules)
    "stage2": ("motion_modules.", "attentions."),
    "stage2_efficient": ("motion_modules.", "attn2."),  # with motion_module_decoder_only: true
}
LORA_SET = "lora"  # low-rank adapters only (train/lora.py); the U-Net itself stays frozen
SET_NAMES = (*TRAINABLE_SETS, LORA_SET)


def trainable_names(model: nn.Module, modules: Iterable[str] | None) -> list[str]:
    """Parameter names that train: those containing any substring of ``modules``; all when None."""
    names = [name for name, _ in model.named_parameters()]
    if modules is None:
        return names
    modules = tuple(modules)
    if not modules:
        raise LatentSyncError("trainable_modules is empty: nothing would train.")
    chosen = [name for name in names if any(m in name for m in modules)]
    if not chosen:
        raise LatentSyncError(f"No U-Net parameter name contains any of {list(modules)}: nothing would train.")
    return chosen


def select_trainable(model: nn.Module, modules: Iterable[str] | str | None, **lora_options) -> list[nn.Parameter]:
    """Freeze ``model`` except the chosen parameters (a set name from :data:`SET_NAMES`, a list of
    substrings, or None for all) and return those, in ``named_parameters`` order (the optimiser's order).

    ``"lora"`` injects adapters first (``lora_options``: ``rank``, ``alpha``, ``targets``, ``dropout`` of
    :func:`latentsync_core.train.lora.add_lora`) and returns only their parameters."""
    if modules == LORA_SET:
        from .lora import add_lora, lora_parameters

        add_lora(model, **lora_options)
        return lora_parameters(model)
    if lora_options:
        raise LatentSyncError(f"LoRA options {sorted(lora_options)} only apply to the 'lora' set.")
    if isinstance(modules, str):
        if modules not in TRAINABLE_SETS:
            raise LatentSyncError(f"Unknown trainable set {modules!r}; known: {', '.join(SET_NAMES)}.")
        modules = TRAINABLE_SETS[modules]
    chosen = set(trainable_names(model, modules))
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in chosen)
        if name in chosen:
            params.append(param)
    return params


def count_parameters(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)
