"""Convert a LatentSync U-Net checkpoint to ``.safetensors``.

    python -m latentsync_core.convert latentsync_unet.pt latentsync_unet.safetensors [--dtype fp16]

The file is read safely (``weights_only``), checked key by key against the U-Net config (the released
1.5/1.6 layout unless ``--config`` names another), optionally cast, and written with safetensors, which
loads faster and can never hold code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from .errors import LatentSyncError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
logger = logging.getLogger(__name__)


def convert_unet(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None, config=None) -> int:
    """Write the U-Net state dict of ``src`` to ``dst`` (``.safetensors``); returns the tensor count.

    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``None`` to keep the file's dtypes. Raises
    :class:`CheckpointError` if ``src`` is not a U-Net for ``config`` (default: the released layout).
    """
    from safetensors.torch import save_file

    from .unet import build_unet, check_state_dict, read_unet_state_dict
    from .unet.config import UNetConfig

    if not os.fspath(dst).lower().endswith(".safetensors"):
        raise LatentSyncError(f"The output must be a .safetensors file, got {os.fspath(dst)!r}.")
    state_dict, name = read_unet_state_dict(src)
    expected = {k: v.shape for k, v in build_unet(config or UNetConfig()).state_dict().items()}
    check_state_dict(state_dict, expected, name)
    target = DTYPES[dtype] if dtype else None
    tensors = {
        k: (v.to(target) if target is not None and v.is_floating_point() else v).contiguous()
        for k, v in state_dict.items()
    }
    save_file(tensors, os.fspath(dst), metadata={"format": "pt", "source": name, "model": "latentsync_unet"})
    return len(tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentsync_core.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="latentsync_unet.pt (or any supported U-Net checkpoint)")
    parser.add_argument("dst", help="output .safetensors path")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast floating tensors (default: keep)")
    parser.add_argument("--config", default=None, help="U-Net config (.yaml/.json); default: LatentSync 1.5/1.6")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        count = convert_unet(args.src, args.dst, args.dtype, args.config)
    except LatentSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
