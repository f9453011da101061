"""Safe reading of model files.

``.pt``/``.pth``/``.ckpt`` files are read with ``torch.load(weights_only=True)`` (memory-mapped where
the file allows it), so a model file can never run code; ``.safetensors`` through ``safetensors``.
Loaders for the individual models (U-Net, whisper) build on :func:`read_checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from .errors import CheckpointError, ModelMissingError

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Read a checkpoint container without executing code from it.

    Returns what the file holds: for ``.safetensors`` a ``{key: Tensor}`` dict, for pickle files the
    saved object restricted to tensors, containers and primitives (``weights_only``). Tensors stay in
    the file's dtype; pickle files are memory-mapped when they are zip archives, so nothing is copied
    until a tensor is used. Raises :class:`ModelMissingError` for a missing file and
    :class:`CheckpointError` for anything unreadable (truncated, not a checkpoint, unsafe pickle).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelMissingError(f"Model file not found: {path}")
    name = os.path.basename(path)
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{name} is not a readable .safetensors file ({exc}).") from exc
    mmap = zipfile.is_zipfile(path)  # legacy (non-zip) torch files cannot be memory-mapped
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{name} holds Python objects other than tensors, so it was not loaded "
            f"(model files are read with weights_only=True and never execute code): {exc}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{name} ({size:,} bytes) could not be read as a PyTorch checkpoint; it may be truncated "
            f"(an interrupted download) or not a model file: {exc}"
        ) from exc


def as_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap the usual containers (``{"state_dict": ...}``, ``{"model_state_dict": ...}``, ``{"model": ...}``)
    down to a flat ``{key: Tensor}`` dict."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            for wrapper in ("state_dict", "model_state_dict", "model", "module"):
                if isinstance(obj.get(wrapper), Mapping):
                    obj = obj[wrapper]
                    break
            else:
                break
        else:
            break
    raise CheckpointError(f"{name} does not contain a state dict of tensors.")


def strip_prefixes(state_dict: dict[str, torch.Tensor], prefixes=("module.", "unet.", "model.")) -> dict[str, torch.Tensor]:
    """Remove a prefix shared by every key (``module.`` from DataParallel, ``unet.`` from wrappers)."""
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def guess_model_kind(state_dict: Mapping[str, Any]) -> str:
    """A short description of what a state dict looks like, for error messages
    (e.g. "a Stable Diffusion U-Net (diffusers layout, no audio or temporal layers)")."""
    keys = list(state_dict)
    has = lambda fragment: any(fragment in k for k in keys)  # noqa: E731
    if not keys:
        return "an empty file"
    if has("motion_modules") and has("down_blocks"):
        return "a LatentSync U-Net (with temporal layers)"
    if has("audio_encoder") and has("visual_encoder"):
        return "a SyncNet checkpoint"
    if has("encoder.blocks.") and has("encoder.conv1"):
        return "an OpenAI whisper checkpoint"
    if has("encoder.layers.") and has("encoder.conv1"):
        return "a Hugging Face whisper checkpoint"
    if has("quant_conv") and has("decoder."):
        return "a VAE"
    if has("model.diffusion_model.") or has("input_blocks."):
        return "a Stable Diffusion checkpoint (original layout)"
    if has("down_blocks") and has("attn2"):
        ca = next((v for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")), None)
        if ca is not None and getattr(ca, "ndim", 0) == 2 and ca.shape[1] == 384:
            return "a LatentSync U-Net without temporal layers (LatentSync 1.0 / stage 1)"
        return "a Stable Diffusion U-Net (diffusers layout, no audio or temporal layers)"
    if has("down_blocks"):
        return "a diffusers U-Net without attention layers"
    return f"an unknown model ({len(keys)} tensors, e.g. {keys[0]!r})"
