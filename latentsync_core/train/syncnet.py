"""StableSyncNet: the frozen lip-sync judge of LatentSync training (official ``stable_syncnet.py``, 1.5).

Two convolutional encoders map a 16-frame mouth window and its mel window to unit vectors; their cosine
similarity is the "in sync" probability (> 0.5 = in sync) and ``-log`` of it is the sync loss.

- visual: ``[B, 3*16, H/2, W]`` pixels in [-1, 1], the lower half of the 256² face, channels frame-major
  (channel = 3*frame + colour, ``"b f c h w -> b (f c) h w"``) -> ``[B, D]``;
- audio: ``[B, 1, 80, 52]`` mel (the Wav2Lip-style melspectrogram of the 16 frames) -> ``[B, D]``.

State-dict keys are the official ones (``visual_encoder.down_blocks.N...``, attention blocks counted in
``down_blocks`` right after their ResNet), so the released ``stable_syncnet.pt``
(``{"state_dict": ..., "global_step": ...}``) loads strictly. The layout comes from the ``model:`` section
of a syncnet yaml (official ``configs/syncnet/syncnet_16_pixel_attn.yaml`` = :data:`SYNCNET_16_PIXEL_ATTN`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..checkpoints import as_state_dict, guess_model_kind, read_checkpoint, state_dict_problems, strip_prefixes
from ..errors import CheckpointError, InputMismatchError, LatentSyncError
from ..unet.attention import FeedForward  # diffusers' geglu FeedForward: keys ff.net.0.proj, ff.net.2
from .config import read_config_file

logger = logging.getLogger(__name__)

GROUPS = 32  # GroupNorm groups everywhere (official default norm_num_groups)
NORM_EPS = 1e-6  # GroupNorm eps (the LayerNorms of the attention blocks keep torch's 1e-5)
ATTENTION_HEADS = 8  # official AttentionBlock2D: heads=8, dim_head = width // 8

# configs/syncnet/syncnet_16_pixel_attn.yaml, ``model:`` (the released stable_syncnet.pt; 401,306,080 parameters)
SYNCNET_16_PIXEL_ATTN: dict[str, Any] = {
    "audio_encoder": {  # input (1, 80, 52)
        "in_channels": 1,
        "block_out_channels": [32, 64, 128, 256, 512, 1024, 2048],
        "downsample_factors": [[2, 1], 2, 2, 1, 2, 2, [2, 3]],
        "attn_blocks": [0, 0, 0, 1, 1, 0, 0],
        "dropout": 0.0,
    },
    "visual_encoder": {  # input (48, 128, 256)
        "in_channels": 48,
        "block_out_channels": [64, 128, 256, 256, 512, 1024, 2048, 2048],
        "downsample_factors": [[1, 2], 2, 2, 2, 2, 2, 2, 2],
        "attn_blocks": [0, 0, 0, 0, 1, 1, 0, 0],
        "dropout": 0.0,
    },
}
ENCODER_KEYS = ("in_channels", "block_out_channels", "downsample_factors", "attn_blocks")


# ----------------------------------------------------------------------------------------------- config


def normalize_syncnet_config(config: Mapping[str, Any], source: str = "SyncNet config") -> dict[str, Any]:
    """Check a ``model:`` section (``{"audio_encoder": {...}, "visual_encoder": {...}}``) and return a
    plain-dict copy (``dropout`` defaults to 0). Raises :class:`LatentSyncError` naming ``source``."""
    if not isinstance(config, Mapping):
        raise LatentSyncError(f"{source}: expected a mapping with audio_encoder and visual_encoder.")
    out: dict[str, Any] = {}
    for enc in ("audio_encoder", "visual_encoder"):
        section = config.get(enc)
        if not isinstance(section, Mapping):
            raise LatentSyncError(f"{source}: no '{enc}' section (a SyncNet yaml has model.audio_encoder/visual_encoder).")
        missing = [k for k in ENCODER_KEYS if k not in section]
        if missing:
            raise LatentSyncError(f"{source}: {enc} lacks {', '.join(missing)}.")
        widths = [int(w) for w in section["block_out_channels"]]
        factors = [f if isinstance(f, int) else [int(x) for x in f] for f in section["downsample_factors"]]
        attn = [int(a) for a in section["attn_blocks"]]
        if not widths or len(factors) != len(widths) or len(attn) != len(widths):
            raise LatentSyncError(
                f"{source}: {enc} block_out_channels, downsample_factors and attn_blocks must have the same "
                f"length (got {len(widths)}, {len(factors)}, {len(attn)})."
            )
        bad = [w for w in widths if w % GROUPS or w % ATTENTION_HEADS]
        if bad:
            raise LatentSyncError(f"{source}: {enc} widths must be multiples of {GROUPS} (GroupNorm); got {bad}.")
        if any(isinstance(f, list) and len(f) != 2 for f in factors):
            raise LatentSyncError(f"{source}: {enc} downsample factors are ints or [h, w] pairs; got {factors}.")
        out[enc] = {
            "in_channels": int(section["in_channels"]),
            "block_out_channels": widths,
            "downsample_factors": factors,
            "attn_blocks": attn,
            "dropout": float(section.get("dropout", 0.0) or 0.0),
        }
    return out


def syncnet_config_from_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model:`` section of an official-format SyncNet yaml (or a yaml that is only that section)."""
    path = os.fspath(path)
    data = read_config_file(path, "SyncNet config")
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    return normalize_syncnet_config(data, os.path.basename(path))


def _resolve_config(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if config is None:
        return copy.deepcopy(SYNCNET_16_PIXEL_ATTN)
    if isinstance(config, (str, os.PathLike)):
        return syncnet_config_from_yaml(config)
    if isinstance(config.get("model"), Mapping):  # a whole yaml loaded as a dict
        config = config["model"]
    return normalize_syncnet_config(config)


def _stride_and_pad(factor: int | list[int] | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]] | None:
    """Stride and F.pad amounts (left, right, top, bottom) of the downsample conv; None for factor 1.

    The 3x3 conv has no padding of its own: it pads one pixel on the right and bottom (so an even size
    halves exactly), and on both sides of an axis that is not strided (so that axis keeps its size)."""
    if isinstance(factor, int):
        return None if factor == 1 else ((factor, factor), (0, 1, 0, 1))
    sh, sw = int(factor[0]), int(factor[1])
    if sh == 1:
        pad = (0, 1, 1, 1)
    elif sw == 1:
        pad = (1, 1, 0, 1)
    else:
        pad = (0, 1, 0, 1)
    return (sh, sw), pad


# ----------------------------------------------------------------------------------------------- layers


class SyncAttention(nn.Module):
    """Self-attention of the official ``latentsync/models/attention.py`` ``Attention`` as SyncNet builds it:
    q/k/v **with** bias, ``heads`` heads of ``dim // heads``, scale ``head_dim**-0.5`` (SDPA's default).
    ``[N, L, dim] -> [N, L, dim]``."""

    def __init__(self, dim: int, heads: int = ATTENTION_HEADS, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(x)), self._split(self.to_v(x))
        out = F.scaled_dot_product_attention(q, k, v)
        n, _, length, _ = out.shape
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(n, length, -1)))


class AttentionBlock2D(nn.Module):
    """GroupNorm + 1x1 conv in, a pre-LayerNorm transformer layer (attention, geglu feed-forward) over the
    ``h*w`` positions, 1x1 conv out, residual. ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)
        self.norm2 = nn.LayerNorm(channels)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels)  # dropout inside it is 0 in every official config
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.conv_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.attn = SyncAttention(channels, ATTENTION_HEADS, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)  # [N, h*w, C]
        tokens = self.attn(self.norm2(tokens)) + tokens
        tokens = self.ff(self.norm3(tokens)) + tokens
        return self.conv_out(tokens.transpose(1, 2).reshape(n, c, h, w)) + x


class ResnetBlock2D(nn.Module):
    """Pre-activation ResNet (GroupNorm, SiLU, 3x3 conv, twice; 1x1 shortcut when the width changes), then
    the strided 3x3 ``downsample_conv`` after asymmetric zero padding (see :func:`_stride_and_pad`)."""

    def __init__(self, in_channels: int, out_channels: int, downsample_factor, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, out_channels, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.act_fn = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        down = _stride_and_pad(downsample_factor)
        if down is None:
            self.downsample_conv, self.pad = None, None
        else:
            stride, self.pad = down
            self.downsample_conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act_fn(self.norm1(x)))
        h = self.conv2(self.dropout(self.act_fn(self.norm2(h))))
        h = h + (x if self.conv_shortcut is None else self.conv_shortcut(x))
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class DownEncoder2D(nn.Module):
    """``conv_in``, the ResNet (+ attention) stages in one ``down_blocks`` list, ``norm_out`` + ReLU.

    ``[B, in_channels, H, W] -> [B, width, 1, 1]`` for the input size the config is made for (non-negative:
    the ReLU comes last, so cosine similarities of the normalised outputs lie in [0, 1])."""

    def __init__(self, cfg: Mapping[str, Any], gradient_checkpointing: bool = False):
        super().__init__()
        widths = cfg["block_out_channels"]
        self.factors = list(cfg["downsample_factors"])
        self.gradient_checkpointing = gradient_checkpointing
        self.conv_in = nn.Conv2d(cfg["in_channels"], widths[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = widths[0]
        for width, factor, attn in zip(widths, self.factors, cfg["attn_blocks"]):
            self.down_blocks.append(ResnetBlock2D(previous, width, factor, cfg["dropout"]))
            if attn == 1:
                self.down_blocks.append(AttentionBlock2D(width, cfg["dropout"]))
            previous = width
        self.norm_out = nn.GroupNorm(GROUPS, widths[-1], eps=NORM_EPS)
        self.act_fn_out = nn.ReLU()

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size after the encoder for an ``height x width`` input (0 where a conv would fail)."""
        for factor in self.factors:
            down = _stride_and_pad(factor)
            if down is None:
                continue
            (sh, sw), (left, right, top, bottom) = down
            height = max((height + top + bottom - 3) // sh + 1, 0) if height > 0 else 0
            width = max((width + left + right - 3) // sw + 1, 0) if width > 0 else 0
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                # official: every down block checkpointed (non-reentrant); recompute only, same values
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.act_fn_out(self.norm_out(x))


class StableSyncNet(nn.Module):
    """The official StableSyncNet. ``forward(frames, mel) -> (vision [B, D], audio [B, D])``, L2-normalised.

    ``frames``: ``[B, visual in_channels, H, W]`` (16_pixel_attn: ``[B, 48, 128, 256]``, the lower half of
    256² faces in [-1, 1], channel = 3*frame + colour); ``mel``: ``[B, 1, 80, 52]``. Inputs are cast to the
    weights' dtype. The model starts in eval mode; :func:`load_stable_syncnet` also freezes it.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, gradient_checkpointing: bool = False):
        super().__init__()
        self.config = _resolve_config(config)
        self.audio_encoder = DownEncoder2D(self.config["audio_encoder"], gradient_checkpointing)
        self.visual_encoder = DownEncoder2D(self.config["visual_encoder"], gradient_checkpointing)
        self.eval()

    @property
    def gradient_checkpointing(self) -> bool:
        return self.visual_encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.audio_encoder.gradient_checkpointing = self.visual_encoder.gradient_checkpointing = bool(value)

    @property
    def embed_dim(self) -> int:
        return self.config["visual_encoder"]["block_out_channels"][-1]

    def _check_input(self, x: torch.Tensor, encoder: DownEncoder2D, what: str, example: str) -> None:
        channels = encoder.conv_in.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise InputMismatchError(
                f"SyncNet {what} input must be [B, {channels}, H, W] ({example}); got {list(x.shape)}."
            )
        if encoder.output_size(x.shape[2], x.shape[3]) != (1, 1):
            raise InputMismatchError(
                f"SyncNet {what} input {list(x.shape)} does not reduce to one 1x1 embedding with this config "
                f"(it gives {encoder.output_size(x.shape[2], x.shape[3])}); expected {example}."
            )

    def encode_visual(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, D, 1, 1]``: the visual encoder output (after norm_out + ReLU, not normalised)."""
        self._check_input(frames, self.visual_encoder, "visual", "16_pixel_attn: [B, 48, 128, 256]")
        return self.visual_encoder(frames.to(self.visual_encoder.conv_in.weight.dtype))

    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 80, 52] -> [B, D, 1, 1]``: the audio encoder output (not normalised)."""
        self._check_input(mel, self.audio_encoder, "audio (mel)", "[B, 1, 80, 52]")
        return self.audio_encoder(mel.to(self.audio_encoder.conv_in.weight.dtype))

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if frames.shape[0] != mel.shape[0]:
            raise InputMismatchError(f"SyncNet: {frames.shape[0]} frame windows but {mel.shape[0]} mel windows.")
        vision = self.encode_visual(frames).flatten(1)
        audio = self.encode_audio(mel).flatten(1)
        return F.normalize(vision, p=2, dim=1), F.normalize(audio, p=2, dim=1)


def cosine_loss(vision: torch.Tensor, audio: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Official ``util.cosine_loss``: binary cross-entropy of the cosine similarity against ``y``.

    ``vision``, ``audio``: ``[B, D]``; ``y``: ``[B, 1]`` or ``[B]``, 1 = in sync, 0 = not. Returns ``[B]``:
    ``-log(sim)`` for y = 1, ``-log(1 - sim)`` for y = 0, logs clamped at -100 (torch ``BCELoss``). The
    embeddings come out of a ReLU, so the similarity is in [0, 1] up to rounding; it is clamped there
    because ``cosine_similarity`` of (nearly) equal vectors can return 1 + 1 ulp, on which BCE raises (the
    official code would stop the run). Inside [0, 1] values and gradients are the official ones."""
    sims = F.cosine_similarity(vision, audio).clamp(0, 1)
    target = y.to(device=sims.device, dtype=sims.dtype).reshape(-1, 1)
    if target.shape[0] != sims.shape[0]:
        raise InputMismatchError(f"cosine_loss: {sims.shape[0]} similarities but {target.shape[0]} targets.")
    return F.binary_cross_entropy(sims.unsqueeze(1), target, reduction="none").squeeze(1)


# ----------------------------------------------------------------------------------------------- loading


def describe_state_dict(state_dict: Mapping[str, Any]) -> str:
    """What a state dict looks like (for error messages), knowing the training judges too."""
    keys = list(state_dict)
    if any(k.endswith("attn.q_bias") for k in keys) and any(k.startswith("patch_embed.") for k in keys):
        return "a VideoMAE v2 ViT (the TREPA feature net)"
    if any(k.startswith("net.slice") or k.startswith("lin0.") for k in keys):
        return "an LPIPS network"
    return guess_model_kind(state_dict)


def check_state_dict(
    state_dict: Mapping[str, Any], expected: Mapping[str, Any], name: str, model: str, hint: str = ""
) -> None:
    """Raise :class:`CheckpointError` (naming the file ``name``) unless ``state_dict`` has exactly the
    ``expected`` keys with the expected shapes. ``model`` names what was asked for; ``hint`` is appended."""
    problems = state_dict_problems(state_dict, expected)
    if not problems:
        return
    raise CheckpointError(
        f"{name} is not a {model} checkpoint for this config; it looks like {describe_state_dict(state_dict)}. "
        f"Tensors: {'; '.join(problems)}.{' ' + hint if hint else ''}"
    )


def read_state_dict(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, display name)`` from a file (containers unwrapped, ``module.`` prefix removed) or a
    mapping. Raises :class:`ModelMissingError` for a missing file (naming its path)."""
    if isinstance(checkpoint, Mapping):
        name, obj = "the given state dict", checkpoint
    else:
        name, obj = os.path.basename(os.fspath(checkpoint)), read_checkpoint(checkpoint)
    return strip_prefixes(as_state_dict(obj, name), prefixes=("module.",)), name


def assign_frozen(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    from_file: bool,
) -> nn.Module:
    """Give a meta-built ``model`` the (already checked) ``state_dict`` tensors on ``device`` in ``dtype``
    (one move per tensor, no transient second copy), then freeze it: eval mode, ``requires_grad`` off."""
    if device.type == "meta":
        tensors = {k: torch.empty(v.shape, dtype=dtype, device=device) for k, v in state_dict.items()}
    else:
        tensors = {k: v.to(device=device, dtype=dtype) for k, v in state_dict.items()}
        if from_file:  # a tensor that did not move still maps the file: copy it so the model does not pin it
            tensors = {k: t.clone() if t is state_dict[k] else t for k, t in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.to(device=device)  # non-persistent buffers built outside the checkpoint
    return model.eval().requires_grad_(False)


def load_stable_syncnet(
    path: str | os.PathLike | Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> StableSyncNet:
    """Load ``stable_syncnet.pt`` (or a state dict) strictly into a frozen :class:`StableSyncNet`.

    ``config``: the ``model:`` section as a dict, a syncnet yaml path, or None for
    :data:`SYNCNET_16_PIXEL_ATTN`. ``device="meta"`` checks keys and shapes without reading values.
    Raises :class:`ModelMissingError` (missing file) or :class:`CheckpointError` (unreadable, or not a
    SyncNet of this layout, e.g. a U-Net or VideoMAE file)."""
    cfg = _resolve_config(config)
    return load_frozen(
        lambda: StableSyncNet(cfg, gradient_checkpointing=gradient_checkpointing), path, device, dtype,
        "StableSyncNet", "Select the LatentSync stable_syncnet.pt with the syncnet config it was trained with "
        "(LatentSync 1.5/1.6: configs/syncnet/syncnet_16_pixel_attn.yaml).",
    )


def load_frozen(build, path: str | os.PathLike | Mapping[str, torch.Tensor], device: str | torch.device,
                dtype: torch.dtype, model_name: str, hint: str) -> nn.Module:
    """``build()`` on the meta device, the file's tensors checked strictly against it (CheckpointError naming the
    file, with ``hint``), then assigned on ``device`` in ``dtype``; returned frozen. Shared by the judges."""
    device = torch.device(device)
    with torch.device("meta"):
        model = build()
    state_dict, name = read_state_dict(path)
    check_state_dict(state_dict, {k: v.shape for k, v in model.state_dict().items()}, name, model_name, hint)
    model = assign_frozen(model, state_dict, device, dtype, from_file=not isinstance(path, Mapping))
    logger.info("Loaded %s from %s (%s, %s)", model_name, name, device, dtype)
    return model
