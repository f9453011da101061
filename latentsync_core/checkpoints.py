"""Safe reading of model files.

``.pt``/``.pth``/``.ckpt`` files are read with ``torch.load(weights_only=True)`` (memory-mapped where
the file allows it), so a model file can never run code; ``.safetensors`` through ``safetensors``.
Loaders for the individual models (U-Net, whisper) build on :func:`read_checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .constants import RESOLUTION, SUPPORTED_RESOLUTIONS
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
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes), probably an interrupted download or copy: download it again.")
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
        unsafe = _UNSUPPORTED_GLOBAL.search(str(exc))
        if unsafe:
            raise CheckpointError(
                f"{name} holds Python objects other than tensors ({unsafe.group(1)}), so it was not loaded: model "
                "files are read safely and never execute code. Use the released model file or a .safetensors file."
            ) from exc
        raise CheckpointError(
            f"{name} ({size:,} bytes) is not a PyTorch checkpoint: its data is not a tensor archive "
            "(a corrupted download, or another kind of file). Download it again."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{name} ({size:,} bytes) could not be read as a PyTorch checkpoint; it may be truncated "
            f"(an interrupted download) or not a model file ({_reason(exc)}). Download it again."
        ) from exc


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _reason(exc: BaseException) -> str:
    """The first sentence of torch's error, without its advice (never suggest unsafe loading)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0].rstrip(".")
    if not text or "weights_only" in text or len(text) > 200:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"


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


_HIGH_RES_NAME = re.compile(r"(^|[^0-9])(1[._]6|512)([^0-9]|$)")


def guess_unet_resolution(name: str, path: str | os.PathLike | None = None) -> int:
    """Face size of a LatentSync U-Net file: the safetensors metadata ``resolution`` if ``path`` has it
    (written by ``latentsync_core.convert``), else its name (``1.6`` or ``512`` in the file or folder name
    means 512), else 256 (LatentSync 1.5)."""
    if path is not None and os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX):
        from safetensors import safe_open

        try:
            with safe_open(os.fspath(path), framework="pt") as fh:
                value = (fh.metadata() or {}).get("resolution")
            if value and int(value) in SUPPORTED_RESOLUTIONS:
                return int(value)
        except Exception:  # noqa: S110 (unreadable metadata: fall back to the name)
            pass
    if _HIGH_RES_NAME.search(name.replace("\\", "/")):
        return 512
    return RESOLUTION


MAX_NAMED = 3  # keys quoted per kind of problem in an error message


def state_dict_problems(state_dict: Mapping[str, Any], expected: Mapping[str, Any], *,
                        optional: Callable[[str], bool] = lambda key: False, extra_ok: bool = False) -> list[str]:
    """Why ``state_dict`` does not hold exactly the ``expected`` keys and shapes, as phrases for an error
    message ("2 missing (e.g. a, b)", ...); empty when it fits. ``optional(key)``: an expected key that may
    be absent; ``extra_ok``: keys beyond ``expected`` are allowed."""
    missing = [k for k in expected if k not in state_dict and not optional(k)]
    unexpected = [] if extra_ok else [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:MAX_NAMED])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:MAX_NAMED])})")
    if mismatched:
        shown = ", ".join(
            f"{k}: file {list(state_dict[k].shape)} vs model {list(expected[k])}" for k in mismatched[:MAX_NAMED]
        )
        problems.append(f"{len(mismatched)} with a different shape (e.g. {shown})")
    return problems
