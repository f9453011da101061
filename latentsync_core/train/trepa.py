"""TREPA (temporal representation alignment): the distance between VideoMAE v2 features of the generated
and the real 16-frame face videos (official ``latentsync/trepa/loss.py``, release 1.5).

Per video ``[B, 3, F, H, W]`` in [-1, 1] (the decoded 256² faces): every frame resized to the net's
224² with **bilinear** interpolation (align_corners False, no antialias), then mapped to [0, 1] and clamped
**after** the resize (bilinear never overshoots its inputs, but the decoded pixels themselves may leave
[-1, 1]), then ``forward_features`` -> ``[B, D]``. The loss is the mean squared difference of the
L2-normalised feature vectors of fake and real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputMismatchError
from .videomae import VideoMAE


def trepa_inputs(videos: torch.Tensor, size: int = 224) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> ``[B, 3, F, size, size]`` in [0, 1]: what the feature net sees."""
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise InputMismatchError(f"TREPA videos must be [B, 3, F, H, W] in [-1, 1]; got {list(videos.shape)}.")
    b, c, f, h, w = videos.shape
    frames = videos.transpose(1, 2).reshape(b * f, c, h, w)  # "b c f h w -> (b f) c h w"
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    resized = frames.reshape(b, f, c, size, size).transpose(1, 2)
    return (resized / 2 + 0.5).clamp(0, 1)


def trepa_features(model: VideoMAE, videos: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> VideoMAE features ``[B, D]`` (not normalised). The videos are
    cast to the model's dtype first (the official run feeds fp16 pixels to the fp16 net)."""
    if videos.ndim != 5:
        raise InputMismatchError(f"TREPA videos must be [B, 3, F, H, W] in [-1, 1]; got {list(videos.shape)}.")
    videos = videos.to(model.patch_embed.proj.weight.dtype)
    return model.forward_features(trepa_inputs(videos, model.config.img_size))


def trepa_feature_loss(feats_fake: torch.Tensor, feats_real: torch.Tensor) -> torch.Tensor:
    """Scalar: ``mse(normalize(fake), normalize(real))`` over ``[B, D]`` (mean over B*D elements)."""
    return F.mse_loss(F.normalize(feats_fake, p=2, dim=1), F.normalize(feats_real, p=2, dim=1))


def trepa_loss(model: VideoMAE, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """The TREPA loss (scalar) of generated ``fake`` against ``real`` videos, both ``[B, 3, F, H, W]`` in
    [-1, 1]. The gradient flows to ``fake`` only when it requires grad; the net is frozen."""
    if fake.shape != real.shape:
        raise InputMismatchError(f"TREPA: fake {list(fake.shape)} and real {list(real.shape)} videos differ in shape.")
    return trepa_feature_loss(trepa_features(model, fake), trepa_features(model, real))
