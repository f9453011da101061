"""Building the U-Net and loading ``latentsync_unet.pt`` / ``.safetensors`` into it, strictly and without
a transient full-precision copy: the model is built on the meta device (no memory), every checkpoint
tensor is moved once to the target device and dtype, and the module adopts those tensors
(``load_state_dict(assign=True)``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..checkpoints import as_state_dict, guess_model_kind, read_checkpoint, state_dict_problems, strip_prefixes
from ..errors import CheckpointError
from .config import UNetConfig, load_config
from .model import UNet3DConditionModel
from .motion import sinusoid_table

logger = logging.getLogger(__name__)

POSITION_BUFFER_SUFFIX = "pos_encoder.pe"  # deterministic buffers: recomputed when a file lacks them


def build_unet(config: Any, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32) -> UNet3DConditionModel:
    """The U-Net for ``config`` (see :func:`load_config`), weights uninitialised on ``meta`` (the
    default: shapes only, no memory) or randomly initialised on another device."""
    cfg = load_config(config)
    with torch.device(device):
        model = UNet3DConditionModel(cfg)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def read_unet_state_dict(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, display name)`` from a file (``.pt`` container or bare dict, ``.safetensors``) or
    a mapping; ``module.`` / ``unet.`` / ``model.`` key prefixes are removed. Tensors keep the file's dtype
    and stay memory-mapped where the file allows."""
    if isinstance(checkpoint, Mapping):
        name = "the given state dict"
        obj: Any = checkpoint
    else:
        name = os.path.basename(os.fspath(checkpoint))
        obj = read_checkpoint(checkpoint)
    return strip_prefixes(as_state_dict(obj, name)), name


def check_state_dict(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], name: str) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the ``expected`` keys and shapes
    (position-encoding buffers may be absent). The message names the first few problems and what the
    file looks like instead."""
    problems = state_dict_problems(state_dict, expected, optional=lambda k: k.endswith(POSITION_BUFFER_SUFFIX))
    if not problems:
        return
    kind = guess_model_kind(state_dict)
    if kind.startswith("a LatentSync U-Net (with temporal"):
        hint = "The file is a LatentSync U-Net: check that the config matches it (e.g. the LatentSync 1.5/1.6 stage2 config)."
    else:
        hint = "Select the LatentSync 1.5/1.6 latentsync_unet.pt (or a .safetensors converted from it)."
    raise CheckpointError(
        f"{name} does not fit the LatentSync U-Net config; it looks like {kind}. "
        f"Tensors: {'; '.join(problems)}. {hint}"
    )


def load_unet(
    config: UNetConfig | Mapping[str, Any] | str | os.PathLike | None,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNet3DConditionModel:
    """Build the LatentSync U-Net and load its weights.

    Args:
        config: a :class:`UNetConfig`, a dict of the official keys, or a ``.json`` / ``.yaml`` path (the
            official ``configs/unet/stage2.yaml`` works as is); ``None`` for the released 1.5/1.6 layout.
        checkpoint: ``latentsync_unet.pt`` (``{"state_dict": ...}`` or bare), a ``.safetensors`` file, a
            state dict, or ``None`` for no weights (random on a real device, nothing at all on ``"meta"``).
        device, dtype: where and in which floating dtype the weights live (fp32, fp16 or bf16).

    Returns the module in eval mode with ``requires_grad`` off. Raises :class:`CheckpointError` (or
    :class:`ModelMissingError`) for a missing, unreadable or wrong file.
    """
    device = torch.device(device)
    if checkpoint is None:
        return build_unet(config, device, dtype)
    model = build_unet(config, "meta", dtype)
    state_dict, name = read_unet_state_dict(checkpoint)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(state_dict, expected, name)
    if device.type == "meta":
        tensors = {k: torch.empty(v.shape, dtype=dtype, device=device) for k, v in state_dict.items()}
    else:
        # one move per tensor, straight to the target device and dtype (no full fp32 copy of a fp16 file)
        tensors = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        if not isinstance(checkpoint, Mapping):
            # a tensor that did not move still lives in the memory-mapped file: copy it once, so the
            # model does not pin the file (Windows cannot replace a mapped file; truncation would crash)
            tensors = {k: t.clone() if t is state_dict[k] else t for k, t in tensors.items()}
    for key, shape in expected.items():
        if key not in tensors:  # a position-encoding buffer the file left out
            logger.debug("%s lacks %s; using the standard sinusoid table", name, key)
            tensors[key] = sinusoid_table(shape[-1], shape[-2], device=device).to(dtype)
    model.load_state_dict(tensors, strict=True, assign=True)
    logger.info("Loaded LatentSync U-Net from %s (%s, %s)", name, device, dtype)
    return model.eval().requires_grad_(False)
