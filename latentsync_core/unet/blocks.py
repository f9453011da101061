"""Down, mid and up blocks of the 3-D U-Net (``down_blocks.N``, ``mid_block``, ``up_blocks.N``).

One class per direction covers both official variants (``CrossAttn*Block3D`` has ``attentions``;
``*Block3D`` has none). Every layer is a ResNet, then the spatial transformer (if any), then the motion
module (if any). Tensors are frame-major ``[B*F, C, H, W]``; ``temb`` is ``[B, 4*C0]``; ``context`` is
the audio ``[B*F, 50, 384]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialTransformer
from .config import MotionModuleConfig
from .motion import VanillaTemporalModule
from .resnet import Downsample3D, ResnetBlock3D, Upsample3D


class _Checkpointed(nn.Module):
    """``gradient_checkpointing``: while gradients are recorded, each layer (ResNet + transformer + motion
    module) keeps only its input and recomputes its activations in the backward pass (training memory);
    results and gradients are the same. Off by default; inference never records gradients."""

    gradient_checkpointing = False

    def _run(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


class _LayerStack(_Checkpointed):
    """Shared construction/forward of ``resnets`` / ``attentions`` / ``motion_modules`` layer lists."""

    def _build_layers(self, in_channels: list[int], out_channels: int, temb_channels: int, groups: int,
                      eps: float, heads: int, context_dim: int, add_audio_layer: bool, cross_attention: bool,
                      motion: MotionModuleConfig | None, output_scale_factor: float = 1.0) -> None:
        self.resnets = nn.ModuleList(
            ResnetBlock3D(c, out_channels, temb_channels, groups, eps, output_scale_factor) for c in in_channels
        )
        if cross_attention:
            self.attentions = nn.ModuleList(
                SpatialTransformer(out_channels, heads, groups, context_dim, add_audio_layer) for _ in in_channels
            )
        else:
            self.attentions = None
        # None entries keep the official indices (motion_modules.N) and register nothing
        self.motion_modules = nn.ModuleList(
            VanillaTemporalModule(out_channels, motion) if motion is not None else None for _ in in_channels
        )

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None,
               num_frames: int) -> torch.Tensor:
        x = self.resnets[i](x, temb, num_frames)
        if self.attentions is not None:
            x = self.attentions[i](x, context)
        if self.motion_modules[i] is not None:
            x = self.motion_modules[i](x, num_frames)
        return x


class DownBlock3D(_LayerStack):
    """``forward -> (x, skips)``: each layer's output, then the downsampled one, are skip connections."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, add_downsample: bool,
                 downsample_padding: int, motion: MotionModuleConfig | None, cross_attention: bool, **layer_kwargs):
        super().__init__()
        ins = [in_channels] + [out_channels] * (num_layers - 1)
        self._build_layers(ins, out_channels, motion=motion, cross_attention=cross_attention, **layer_kwargs)
        self.downsamplers = (
            nn.ModuleList([Downsample3D(out_channels, downsample_padding)]) if add_downsample else None
        )

    def forward(self, x, temb, context, num_frames):
        skips = []
        for i in range(len(self.resnets)):
            x = self._run(self._layer, i, x, temb, context, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock3D(_LayerStack):
    """Each layer concatenates the latest skip connection on channels first; upsamples at the end."""

    def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, num_layers: int,
                 add_upsample: bool, motion: MotionModuleConfig | None, cross_attention: bool, **layer_kwargs):
        super().__init__()
        ins = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            ins.append((prev_output_channels if i == 0 else out_channels) + skip)
        self._build_layers(ins, out_channels, motion=motion, cross_attention=cross_attention, **layer_kwargs)
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels)]) if add_upsample else None

    def forward(self, x, skips, temb, context, num_frames, upsample_size=None):
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._run(self._layer, i, x, temb, context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(_Checkpointed):
    """ResNet, then (spatial transformer, optional motion module, ResNet)."""

    def __init__(self, channels: int, temb_channels: int, groups: int, eps: float, heads: int, context_dim: int,
                 add_audio_layer: bool, motion: MotionModuleConfig | None, output_scale_factor: float):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(channels, channels, temb_channels, groups, eps, output_scale_factor) for _ in range(2)
        )
        self.attentions = nn.ModuleList([SpatialTransformer(channels, heads, groups, context_dim, add_audio_layer)])
        self.motion_modules = nn.ModuleList([VanillaTemporalModule(channels, motion) if motion is not None else None])

    def forward(self, x, temb, context, num_frames):
        return self._run(self._forward, x, temb, context, num_frames)

    def _forward(self, x, temb, context, num_frames):
        x = self.resnets[0](x, temb, num_frames)
        x = self.attentions[0](x, context)
        if self.motion_modules[0] is not None:
            x = self.motion_modules[0](x, num_frames)
        return self.resnets[1](x, temb, num_frames)
