"""Loading the U-Net to train.

The official script resumes with ``strict=False``: starting ``stage2_efficient`` (motion modules in the
decoder only) from a full stage-2 checkpoint silently drops the down-block motion modules. Here that is
allowed only for tensors the chosen config has no place for, and it is logged with a count; a tensor the
model needs and the file lacks is still an error.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..unet import build_unet, load_unet, read_unet_state_dict

log = logging.getLogger(__name__)


def load_training_unet(config: Any, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None,
                       device: str | torch.device = "cpu") -> torch.nn.Module:
    """The U-Net of ``config`` (a preset yaml path, dict or :class:`UNetConfig`) with fp32 weights from
    ``checkpoint``; tensors the config does not use are dropped with a log line. Returned frozen, eval."""
    if checkpoint is None:
        return load_unet(config, None, device, torch.float32)
    state, name = read_unet_state_dict(checkpoint)
    expected = build_unet(config, "meta", torch.float32).state_dict()
    unused = [k for k in state if k not in expected]
    if unused:
        log.warning("%s: %d tensors are not part of this model config and are not loaded (e.g. %s)",
                    name, len(unused), unused[0])
        state = {k: v for k, v in state.items() if k in expected}
    return load_unet(config, state, device, torch.float32)
