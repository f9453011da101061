"""Precision names -> torch dtypes, and the one rule for ``"auto"`` (command line, nodes and training).

``auto``: fp32 on the CPU; on a GPU bf16 where it runs well (same range as fp32: no overflow in the
U-Net's attention), else fp16; fp32 where neither does.
"""

from __future__ import annotations

import torch

from .options import PRECISIONS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
assert set(DTYPES) | {"auto"} == set(PRECISIONS)


def auto_precision(device: torch.device | str, bf16: bool | None = None, fp16: bool | None = None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for ``device``.

    bf16 / fp16: whether the device runs them well, when the caller knows better (ComfyUI's model
    management, which honours its --force-fp16/--force-fp32 flags); None = ask torch (CUDA: bf16 where
    ``torch.cuda.is_bf16_supported()``, fp16 otherwise; other accelerators: fp32).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return "fp32"
    if bf16 is None:
        bf16 = device.type == "cuda" and _cuda_bf16()
    if fp16 is None:
        fp16 = device.type == "cuda"
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def _cuda_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (AssertionError, RuntimeError):  # no CUDA build or no driver: asked about a device that is not there
        return False


def pick_dtype(name: str, device: torch.device | str, bf16: bool | None = None, fp16: bool | None = None) -> torch.dtype:
    """The torch dtype for a precision name (``auto``: :func:`auto_precision`)."""
    return DTYPES[auto_precision(device, bf16, fp16) if name == "auto" else name]
