"""Convert a LatentSync U-Net checkpoint to ``.safetensors``.

    python -m latentsync_core.convert latentsync_unet.pt latentsync_unet.safetensors [--dtype fp16]
        [--resolution 256|512]

The file is read safely (``weights_only``), checked key by key against the U-Net config (the released
1.5/1.6 layout unless ``--config`` names another), optionally cast, and written with safetensors, which
loads faster and can never hold code. The face size (``resolution`` metadata: 256 for 1.5, 512 for
1.6) comes from ``--resolution`` or, when omitted, the source's name (``1.6``/``512`` in it: 512), so
the converted file loads with the right face size whatever it is called. The output is written to a
temporary name and renamed when complete: a failed conversion never leaves a broken file behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .checkpoints import guess_unet_resolution
from .constants import SUPPORTED_RESOLUTIONS
from .errors import LatentSyncError
from .precision import DTYPES
from .safe_output import atomic_path, check_output_path

logger = logging.getLogger(__name__)


def convert_unet(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: str | None = None, config=None, resolution: int | None = None
) -> int:
    """Write the U-Net state dict of ``src`` to ``dst`` (``.safetensors``); returns the tensor count.

    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``None`` to keep the file's dtypes. ``resolution``:
    the face size stored as metadata (None: from ``src``'s name or metadata). Raises
    :class:`CheckpointError` if ``src`` is not a U-Net for ``config`` (default: the released layout) and
    :class:`LatentSyncError` if ``dst`` cannot be written (checked before reading ``src``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from .unet import build_unet, check_state_dict, read_unet_state_dict
    from .unet.config import UNetConfig

    out = check_output_path(dst, inputs=(src,), allowed_suffixes=(".safetensors",), what="output")
    if resolution is None:
        resolution = guess_unet_resolution(os.fspath(src), src)
    if int(resolution) not in SUPPORTED_RESOLUTIONS:
        raise LatentSyncError(f"resolution {resolution}: use one of {SUPPORTED_RESOLUTIONS}.")
    state_dict, name = read_unet_state_dict(src)
    expected = {k: v.shape for k, v in build_unet(config or UNetConfig()).state_dict().items()}
    check_state_dict(state_dict, expected, name)
    target = DTYPES[dtype] if dtype else None
    tensors = {
        k: (v.to(target) if target is not None and v.is_floating_point() else v).contiguous()
        for k, v in state_dict.items()
    }
    metadata = {"format": "pt", "source": name, "model": "latentsync_unet", "resolution": str(int(resolution))}
    try:
        with atomic_path(out) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    except (OSError, SafetensorError) as exc:
        raise LatentSyncError(f"cannot write {os.fspath(dst)}: {exc}") from exc
    logger.info("%s: %d tensors, %d px faces", out, len(tensors), resolution)
    return len(tensors)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 done, 1 unreadable or wrong source, 2 unusable arguments (output path)."""
    parser = argparse.ArgumentParser(prog="python -m latentsync_core.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="latentsync_unet.pt (or any supported U-Net checkpoint)")
    parser.add_argument("dst", help="output .safetensors path")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast floating tensors (default: keep)")
    parser.add_argument("--config", default=None, help="U-Net config (.yaml/.json); default: LatentSync 1.5/1.6")
    parser.add_argument(
        "--resolution",
        type=int,
        choices=SUPPORTED_RESOLUTIONS,
        default=None,
        help="face size stored in the file (256: LatentSync 1.5, 512: 1.6); default: from the source's name",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_output_path(args.dst, inputs=(args.src,), allowed_suffixes=(".safetensors",), what="output")
    except LatentSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        count = convert_unet(args.src, args.dst, args.dtype, args.config, args.resolution)
    except LatentSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
