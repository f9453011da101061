"""ResNet block, down- and up-sampling, in the frame-major layout ``[B*F, C, H, W]``.

Trap kept from the official code: a ResNet's GroupNorm is a plain ``nn.GroupNorm`` applied to the 5-D
``[B, C, F, H, W]`` tensor, so its statistics span *all frames of the chunk*, not each frame
(:func:`chunk_group_norm`). A 5-frame chunk therefore normalises differently from the same 5 frames
inside a 16-frame chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def chunk_group_norm(norm: nn.GroupNorm, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """GroupNorm over ``[B, C, F, H, W]`` (statistics per sample and group, across all frames) for an
    input in frame-major layout ``[B*F, C, H, W]``; returns the same layout."""
    bf, c, h, w = x.shape
    b = bf // num_frames
    video = x.view(b, num_frames, c, h, w).transpose(1, 2)  # [B, C, F, H, W] view
    if torch.compiler.is_compiling():
        # Inductor's CPU group_norm loses precision where a group's mean is large next to its spread
        # (measured: 50x eager's error, constant groups worst). GroupNorm is shift-invariant per group,
        # so centring first gives the same norm with eager's accuracy; eager code is left as it was.
        groups = video.reshape(b, norm.num_groups, -1)
        video = (groups - groups.mean(-1, keepdim=True)).view(b, c, num_frames, h, w)
    out = F.group_norm(video, norm.num_groups, norm.weight, norm.bias, norm.eps)
    result = torch.empty_like(x)  # keeps x's memory format (channels-last stays channels-last)
    result.view(b, num_frames, c, h, w).copy_(out.transpose(1, 2))
    return result


class ResnetBlock3D(nn.Module):
    """norm1 (chunk-wide) -> SiLU -> conv1 -> + time embedding -> norm2 (chunk-wide) -> SiLU -> conv2,
    plus the (1x1-projected when channels change) input, divided by ``output_scale_factor``.

    ``forward(x [B*F, Cin, H, W], temb [B, T], num_frames) -> [B*F, Cout, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.conv1(F.silu(chunk_group_norm(self.norm1, x, num_frames)))
        bf, c, height, width = h.shape
        t = self.time_emb_proj(F.silu(temb))  # [B, Cout]: the same for every frame of a sample
        h = (h.view(bf // num_frames, num_frames, c, height, width) + t[:, None, :, None, None]).view(bf, c, height, width)
        h = self.conv2(F.silu(chunk_group_norm(self.norm2, h, num_frames)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample3D(nn.Module):
    """3x3 conv with stride 2, per frame."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def needs_float32_interpolate(x: torch.Tensor) -> bool:
    """``F.interpolate`` in float32 for this tensor: bf16 (no nearest kernels on some torch builds) and
    any non-float32 input on Apple MPS (fp16 upsampling there gives black frames, upstream LatentSync #48)."""
    return x.dtype == torch.bfloat16 or (x.device.type == "mps" and x.dtype != torch.float32)


class Upsample3D(nn.Module):
    """Nearest 2x (or to ``size``) upsampling per frame, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        dtype = x.dtype
        if needs_float32_interpolate(x):
            x = x.float()
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else F.interpolate(x, size=size, mode="nearest")
        return self.conv(x.to(dtype))
