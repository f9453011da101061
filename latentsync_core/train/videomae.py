"""VideoMAE v2 ViT: the frozen feature net of the TREPA loss (official
``latentsync/trepa/third_party/VideoMAEv2/videomaev2_finetune.py`` ``VisionTransformer``, as
``load_videomae_model`` builds it: ``vit_giant_patch14_224``, 174 SSv2 classes, mean pooling).

``forward_features(video [B, 3, T, 224, 224] in [0, 1]) -> [B, embed_dim]``: tubelet patches (2 frames x
14 x 14) through a Conv3d, plus a fixed sine-cosine position table (not in the state dict), ``depth``
pre-LayerNorm transformer blocks, the mean over tokens, ``fc_norm``. The classifier ``head`` is kept only
so the released ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (``{"model": ...}`` or ``{"module": ...}``) loads
strictly. Drop-path (0.3 in the official build) and dropout act only in training mode; this net is always
frozen in eval mode, so they are left out.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..errors import InputMismatchError, LatentSyncError
from .config import read_config_file
from .syncnet import load_frozen

POSITION_BASE = 10000.0  # sinusoid table: angle = position / 10000^(2*(j//2)/dim)


@dataclasses.dataclass(frozen=True)
class VideoMAEConfig:
    """Architecture of the VideoMAE v2 ``VisionTransformer`` (defaults: ViT-g as TREPA uses it)."""

    img_size: int = 224
    patch_size: int = 14
    in_chans: int = 3
    num_frames: int = 16  # official all_frames
    tubelet_size: int = 2
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11  # hidden = int(dim * ratio): 6144 for ViT-g
    qkv_bias: bool = True  # as q_bias / v_bias (k has none)
    norm_eps: float = 1e-6
    num_classes: int = 174

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (time, height, width): 8 x 16 x 16 = 2048 tokens for ViT-g."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "VideoMAE config") -> VideoMAEConfig:
        """From our field names or the official constructor arguments (``all_frames``, ``norm_layer``
        ``"LayerNorm(eps=1e-6)"``, ...). Variants the TREPA net does not use (learnable position
        embedding, cosine attention, layer scale, class-token pooling) are refused."""
        data = dict(data)
        refused = {
            "use_learnable_pos_emb": lambda v: bool(v),
            "cos_attn": lambda v: bool(v),
            "init_values": lambda v: bool(v and float(v) > 0),
            "use_mean_pooling": lambda v: not v,
        }
        for key, bad in refused.items():
            if key in data and bad(data[key]):
                raise LatentSyncError(f"{source}: {key}={data[key]!r} is not supported (the TREPA ViT does not use it).")
        if "all_frames" in data:
            data["num_frames"] = data.pop("all_frames")
        norm = data.pop("norm_layer", None)
        if isinstance(norm, str):
            found = re.search(r"eps\s*=\s*([0-9.eE+-]+)", norm)
            if found:
                data["norm_eps"] = float(found.group(1))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        config = cls(**kwargs)
        config.validate(source)
        return config

    def validate(self, source: str = "VideoMAE config") -> None:
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            problems.append(f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if problems:
            raise LatentSyncError(f"{source}: {'; '.join(problems)}.")


VIT_G_CONFIG = VideoMAEConfig()  # vit_giant_patch14_224 for TREPA: 526 tensors, 1,011,855,918 parameters


def videomae_config(config: VideoMAEConfig | Mapping[str, Any] | str | os.PathLike | None) -> VideoMAEConfig:
    """A :class:`VideoMAEConfig` from itself, a dict, a ``.json`` path, or None (ViT-g)."""
    if config is None:
        return VIT_G_CONFIG
    if isinstance(config, VideoMAEConfig):
        config.validate()
        return config
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        return VideoMAEConfig.from_dict(read_config_file(path, "VideoMAE config"), os.path.basename(path))
    return VideoMAEConfig.from_dict(config)


def sinusoid_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """``[1, num_positions, dim]`` float32: sin at even, cos at odd channels of
    ``position / 10000^(2*(j//2)/dim)`` (computed in float64 like the official numpy table)."""
    position = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64, device="cpu") // 2) / dim
    angle = position / torch.pow(torch.tensor(POSITION_BASE, dtype=torch.float64, device="cpu"), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).unsqueeze(0)


class PatchEmbed(nn.Module):
    """Conv3d over ``tubelet x patch x patch`` cubes: ``[B, 3, T, H, W] -> [B, T/2 * H/14 * W/14, dim]``."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` matrix; q and v have biases (``q_bias``,
    ``v_bias``), k none. Scale ``head_dim**-0.5`` (SDPA's default, as official). ``[B, N, dim] -> same``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (no layer scale: ``init_values`` 0)."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoMAE(nn.Module):
    """The VideoMAE v2 ``VisionTransformer`` (mean pooling + ``fc_norm``); see the module docstring."""

    def __init__(self, config: VideoMAEConfig | Mapping[str, Any] | None = None, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = cfg = videomae_config(config)
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = PatchEmbed(cfg)
        # fixed table, not a parameter and not in the file (official: a plain tensor attribute)
        self.register_buffer("pos_embed", sinusoid_position_table(cfg.num_patches, cfg.embed_dim), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.eval()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def position_table(self, frames: int) -> torch.Tensor:
        """``[1, tokens, dim]`` for ``frames`` input frames: the table itself for the configured count,
        else (as official) trilinearly stretched along time with the ``+0.1`` trick of the original code."""
        t_grid, h_grid, w_grid = self.config.grid
        t0 = frames // self.config.tubelet_size
        if t0 == t_grid:
            return self.pos_embed
        dim = self.pos_embed.shape[-1]
        table = self.pos_embed.permute(0, 2, 1).reshape(1, dim, t_grid, h_grid, w_grid)
        table = F.interpolate(table, scale_factor=((t0 + 0.1) / t_grid, 1, 1), mode="trilinear")
        return table.reshape(1, dim, -1).permute(0, 2, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        ok = (
            x.ndim == 5
            and x.shape[1] == cfg.in_chans
            and tuple(x.shape[3:]) == (cfg.img_size, cfg.img_size)
            and x.shape[2] >= cfg.tubelet_size
            and x.shape[2] % cfg.tubelet_size == 0
        )
        if not ok:
            raise InputMismatchError(
                f"VideoMAE input must be [B, {cfg.in_chans}, T, {cfg.img_size}, {cfg.img_size}] with T a multiple of "
                f"{cfg.tubelet_size} (TREPA: T = {cfg.num_frames}), pixels in [0, 1]; got {list(x.shape)}."
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, 224, 224]`` in [0, 1] -> ``[B, embed_dim]`` (mean-pooled tokens after ``fc_norm``)."""
        self._check_input(x)
        frames = x.shape[2]
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype))
        x = x + self.position_table(frames).to(dtype=x.dtype, device=x.device)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.fc_norm(x.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` (not used by TREPA)."""
        return self.head(self.forward_features(x))


def load_videomae(
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    config: VideoMAEConfig | Mapping[str, Any] | str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> VideoMAE:
    """Load ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (or a state dict) strictly into a frozen :class:`VideoMAE`.

    ``config``: None for ViT-g, a :class:`VideoMAEConfig`, a dict or a ``.json`` path. ``device="meta"``
    checks keys and shapes only. Raises :class:`ModelMissingError` (missing file) or
    :class:`CheckpointError` (unreadable, or not this ViT, e.g. a SyncNet or U-Net file)."""
    cfg = videomae_config(config)
    return load_frozen(
        lambda: VideoMAE(cfg, gradient_checkpointing=gradient_checkpointing), path, device, dtype,
        "VideoMAE v2 ViT", "TREPA needs vit_g_hybrid_pt_1200e_ssv2_ft.pth (VideoMAE v2 ViT-g fine-tuned on SSv2).",
    )
