"""The LatentSync 3-D U-Net (``UNet3DConditionModel``), SD-1.5 layout with audio cross-attention and
temporal layers. State-dict keys and shapes equal the official ``latentsync_unet.pt``.

Internally every activation is frame-major ``[B*F, C, H, W]``: convolutions, spatial transformers and
upsampling act per frame without the reshuffles the official code does around each layer; only the
ResNet GroupNorms (statistics over the whole chunk) and the motion modules look across frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputMismatchError
from .blocks import DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D
from .config import CROSS_ATTN_DOWN, CROSS_ATTN_UP, UNetConfig, load_config
from .resnet import chunk_group_norm

MAX_PERIOD = 10000  # sinusoidal timestep embedding


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """diffusers' ``get_timestep_embedding``: ``[B] -> [B, dim]`` float32 (cos first when flipped)."""
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], -1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2`` (key names of diffusers' ``TimestepEmbedding``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet3DConditionModel(nn.Module):
    """``forward(sample [B, 13, F, H, W], timestep (scalar or [B]), encoder_hidden_states [B*F, 50, 384])
    -> noise prediction [B, 4, F, H, W]`` in the model's dtype.

    ``encoder_hidden_states`` rows are ordered sample-major (row ``b*F + f`` is frame ``f`` of sample
    ``b``), as the official pipeline builds them; ``[B, F, 50, 384]`` is accepted too. ``F`` is at most
    24 (the position-encoding length); LatentSync runs 16-frame chunks.
    """

    def __init__(self, config: UNetConfig | dict | None = None):
        super().__init__()
        cfg = load_config(config)
        self.config = cfg
        ch = list(cfg.block_out_channels)
        heads = cfg.heads()
        temb_dim = ch[0] * 4
        groups, eps = cfg.norm_num_groups, cfg.norm_eps
        common = dict(temb_channels=temb_dim, groups=groups, eps=eps, context_dim=cfg.cross_attention_dim,
                      add_audio_layer=cfg.add_audio_layer)
        motion = cfg.motion_module_kwargs if cfg.use_motion_module else None

        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            use_motion = 2**i in cfg.motion_module_resolutions and not cfg.motion_module_decoder_only
            prev, out = out, ch[i]
            self.down_blocks.append(DownBlock3D(
                prev, out, cfg.layers_per_block, add_downsample=i < len(ch) - 1,
                downsample_padding=cfg.downsample_padding, motion=motion if use_motion else None,
                cross_attention=kind == CROSS_ATTN_DOWN, heads=heads[i], **common))

        self.mid_block = UNetMidBlock3DCrossAttn(
            ch[-1], heads=heads[-1], motion=motion if cfg.motion_module_mid_block else None,
            output_scale_factor=cfg.mid_block_scale_factor, **common)

        self.up_blocks = nn.ModuleList()
        rev, rev_heads = ch[::-1], heads[::-1]
        out = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            use_motion = 2 ** (len(ch) - 1 - i) in cfg.motion_module_resolutions
            prev, out = out, rev[i]
            self.up_blocks.append(UpBlock3D(
                rev[min(i + 1, len(ch) - 1)], prev, out, cfg.layers_per_block + 1,
                add_upsample=i < len(ch) - 1, motion=motion if use_motion else None,
                cross_attention=kind == CROSS_ATTN_UP, heads=rev_heads[i], **common))

        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, kernel_size=3, padding=1)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block layer's activations in the backward pass instead of keeping them (training;
        the official ``enable_gradient_checkpointing``). Same results and gradients, less memory."""
        for block in self.modules():
            if hasattr(block, "gradient_checkpointing"):
                block.gradient_checkpointing = enabled

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def channels_last(self) -> bool:
        """True after ``model.to(memory_format=torch.channels_last)``: activations then follow."""
        w = self.conv_in.weight
        return not w.is_meta and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
        if sample.dim() != 5 or sample.shape[1] != self.config.in_channels:
            raise InputMismatchError(
                f"U-Net input must be [B, {self.config.in_channels}, F, H, W], got {tuple(sample.shape)}."
            )
        b, _, frames, height, width = sample.shape
        context = encoder_hidden_states
        if context is not None:
            if context.dim() == 4:
                context = context.reshape(-1, *context.shape[2:])
            if context.shape[0] != b * frames:
                raise InputMismatchError(
                    f"encoder_hidden_states has {context.shape[0]} rows; the sample needs B*F = {b * frames}."
                )
            context = context.to(self.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        temb = self.time_embedding(timestep_embedding(
            t, self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift).to(self.dtype))

        # [B, C, F, H, W] -> frame-major [B*F, C, H, W]
        x = sample.to(self.dtype).transpose(1, 2).reshape(b * frames, -1, height, width)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, context, frames)
            skips.extend(block_skips)

        x = self.mid_block(x, temb, context, frames)

        # sizes not divisible by 2**num_upsamplers: upsample to the matching skip's size explicitly
        factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = height % factor != 0 or width % factor != 0
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            size = tuple(skips[-1].shape[2:]) if forward_size and i < len(self.up_blocks) - 1 else None
            x = block(x, block_skips, temb, context, frames, upsample_size=size)

        x = self.conv_out(F.silu(chunk_group_norm(self.conv_norm_out, x, frames)))
        return x.view(b, frames, -1, height, width).transpose(1, 2).contiguous()
