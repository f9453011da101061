"""Attention layers: multi-head attention over ``scaled_dot_product_attention``, the GEGLU feed-forward,
and the per-frame spatial transformer with audio cross-attention (``attentions.N`` in the state dict).

Key names follow the official checkpoint (``to_q``/``to_k``/``to_v``/``to_out.0``, ``ff.net.0.proj``,
``ff.net.2``, ``norm1..3``, ``attn1``/``attn2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPATIAL_NORM_EPS = 1e-6  # GroupNorm eps of the spatial and temporal transformers (the ResNets use norm_eps)
FF_MULT = 4  # feed-forward inner width = 4 x dim


class Attention(nn.Module):
    """Multi-head attention without q/k/v bias; scale ``head_dim**-0.5`` (SDPA's default).

    ``forward(x [N, L, dim], context [N, S, context_dim] | None) -> [N, L, dim]``; ``context=None`` is
    self-attention. SDPA picks the fused (flash / memory-efficient) kernel where the device has one.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Identity()])  # ".0": the official key name

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        n, _, length, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(n, length, -1))


class GEGLU(nn.Module):
    """``proj`` to twice the width, then ``value * gelu(gate)`` (exact erf GELU, as diffusers)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """diffusers' ``FeedForward(dim, activation_fn="geglu")``: ``net.0`` GEGLU, ``net.2`` the output linear."""

    def __init__(self, dim: int, mult: int = FF_MULT):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, audio cross-attention (only with ``add_audio_layer``), feed-forward; pre-LayerNorm
    and residual around each. Tokens ``[B*F, H*W, dim]``, audio context ``[B*F, 50, 384]``."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        if add_audio_layer:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, heads, head_dim, context_dim=context_dim)
        else:
            self.norm2 = self.attn2 = None
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and context is not None:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """The official ``Transformer3DModel``: each frame on its own (GroupNorm statistics per frame),
    1x1-conv projections in and out, one :class:`BasicTransformerBlock`, residual.

    ``forward(x [B*F, C, H, W], context [B*F, S, D]) -> [B*F, C, H, W]``.
    """

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int, add_audio_layer: bool):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=SPATIAL_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, context_dim, add_audio_layer)]
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(n, h * w, c).contiguous()
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = self.proj_out(tokens.view(n, h, w, c).permute(0, 3, 1, 2))
        return out + x
