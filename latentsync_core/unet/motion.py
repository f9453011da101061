"""Temporal (motion) modules: AnimateDiff's "Vanilla" temporal transformer, as LatentSync ships it.

Each spatial position attends over the frames of its chunk. Per frame GroupNorm (eps 1e-6), a linear
``proj_in``, one block of two temporal self-attentions (each adds the sinusoidal position encoding, a
``pos_encoder.pe`` buffer of length 24 stored in the checkpoint, to its *normalised input*) and a GEGLU
feed-forward, a linear ``proj_out`` (zero-initialised in training) and a residual.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputMismatchError
from .attention import SPATIAL_NORM_EPS, Attention, FeedForward
from .config import MotionModuleConfig

MOTION_NORM_GROUPS = 32  # the official code never passes norm_num_groups to the motion modules


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding buffer ``pe [1, max_len, dim]`` (sin on even, cos on odd channels)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(dim, max_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise InputMismatchError(
                f"The temporal layers handle at most {self.pe.shape[1]} frames per chunk, got {frames}."
            )
        return x + self.pe[:, :frames].to(x.dtype)


def sinusoid_table(dim: int, max_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The official table, computed in float32: ``[1, max_len, dim]``."""
    position = torch.arange(max_len, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim, device=device)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


class TemporalAttention(Attention):
    """Self-attention across frames; input ``[B*H*W, F, dim]`` (position encoding added first)."""

    def __init__(self, dim: int, heads: int, head_dim: int, position_encoding: bool, max_len: int):
        super().__init__(dim, heads, head_dim)
        self.pos_encoder = PositionalEncoding(dim, max_len) if position_encoding else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        return super().forward(x)


class TemporalTransformerBlock(nn.Module):
    """Temporal self-attentions (``attention_blocks.i`` with LayerNorm ``norms.i``) then the
    feed-forward (``ff``, ``ff_norm``), each pre-normalised with a residual; tokens ``[B*H*W, F, dim]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, cfg: MotionModuleConfig):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalAttention(dim, heads, head_dim, cfg.temporal_position_encoding,
                              cfg.temporal_position_encoding_max_len)
            for _ in cfg.attention_block_types
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in cfg.attention_block_types)
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    """``forward(x [B*F, C, H, W], num_frames) -> [B*F, C, H, W]``.

    The official code moves tokens between ``(b f) s c`` and ``(b s) f c`` inside every attention;
    LayerNorm and the feed-forward act per token, so doing it once around the blocks is the same math.
    """

    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        heads = cfg.num_attention_heads
        inner = heads * (channels // heads // cfg.temporal_attention_dim_div)
        self.norm = nn.GroupNorm(MOTION_NORM_GROUPS, channels, eps=SPATIAL_NORM_EPS)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(inner, heads, inner // heads, cfg) for _ in range(cfg.num_transformer_block)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // num_frames
        # [B*F, C, H, W] -> [B, H, W, F, C] -> tokens [B*H*W, F, C]
        tokens = self.norm(x).view(b, num_frames, c, h, w).permute(0, 3, 4, 1, 2)
        # reshape alone can return a strided view here, which turns every Linear into a slow batched matmul
        tokens = tokens.reshape(b * h * w, num_frames, c).contiguous()
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)
        out = tokens.view(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return out + x


class VanillaTemporalModule(nn.Module):
    """Wrapper holding ``temporal_transformer`` (the official key prefix ``motion_modules.N.``)."""

    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(channels, cfg)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, num_frames)
