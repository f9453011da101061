"""The U-Net configuration: the ``model`` section of the official ``configs/unet/stage2.yaml``.

:func:`load_config` accepts a dict, a JSON file (a diffusers-style ``config.json`` works too) or a YAML
file (either the whole official training config, whose ``model`` section is used, or the section
alone). Keys the official constructor knows but LatentSync never changes are accepted when they hold
the value this implementation supports; anything else raises :class:`CheckpointError` with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from ..constants import AUDIO_EMBED_DIM, LATENT_CHANNELS, MAX_TEMPORAL_FRAMES, UNET_IN_CHANNELS
from ..errors import CheckpointError

logger = logging.getLogger(__name__)

CROSS_ATTN_DOWN = "CrossAttnDownBlock3D"
PLAIN_DOWN = "DownBlock3D"
CROSS_ATTN_UP = "CrossAttnUpBlock3D"
PLAIN_UP = "UpBlock3D"
MID_BLOCK = "UNetMidBlock3DCrossAttn"


@dataclasses.dataclass(frozen=True)
class MotionModuleConfig:
    """``motion_module_kwargs``: the AnimateDiff-style temporal transformer in each block."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = MAX_TEMPORAL_FRAMES
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True
    cross_frame_attention_mode: None = None


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """LatentSync U-Net hyper-parameters; defaults are the released 1.5/1.6 model (stage2.yaml)."""

    in_channels: int = UNET_IN_CHANNELS
    out_channels: int = LATENT_CHANNELS
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, CROSS_ATTN_DOWN, PLAIN_DOWN)
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP, CROSS_ATTN_UP)
    mid_block_type: str = MID_BLOCK
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8  # the official name; it is the number of heads
    cross_attention_dim: int = AUDIO_EMBED_DIM
    add_audio_layer: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    center_input_sample: bool = False
    sample_size: int | None = 64
    resnet_time_scale_shift: str = "default"
    use_inflated_groupnorm: bool = False
    use_linear_projection: bool = False
    upcast_attention: bool = False
    only_cross_attention: bool = False
    dual_cross_attention: bool = False
    class_embed_type: None = None
    num_class_embeds: None = None
    use_motion_module: bool = True
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str = "Vanilla"
    motion_module_kwargs: MotionModuleConfig = dataclasses.field(default_factory=MotionModuleConfig)

    def heads(self) -> tuple[int, ...]:
        """Attention heads of each down block (``attention_head_dim`` in the official config)."""
        h = self.attention_head_dim
        return tuple(h) if isinstance(h, (tuple, list)) else (h,) * len(self.block_out_channels)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no dataclasses), e.g. to store next to converted weights."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# Values this implementation supports for options the official constructor exposes.
_FIXED = {
    "act_fn": ("silu",),
    "resnet_time_scale_shift": ("default",),
    "use_linear_projection": (False,),
    "upcast_attention": (False,),  # upcasting is moot: SDPA accumulates in fp32
    "only_cross_attention": (False,),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "mid_block_type": (MID_BLOCK,),
    "motion_module_type": ("Vanilla",),
}


def _tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def config_from_dict(data: Mapping[str, Any]) -> UNetConfig:
    """Build a :class:`UNetConfig` from the official keys; unknown keys are logged and ignored."""
    data = dict(data)
    if isinstance(data.get("model"), Mapping) and "block_out_channels" not in data:
        data = dict(data["model"])  # a whole training config (stage2.yaml)
    names = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(k for k in data if k not in names and not k.startswith("_"))
    if unknown:
        logger.warning("Ignoring U-Net config keys this implementation does not use: %s", ", ".join(unknown))
    kwargs = {k: _tuple(v) for k, v in data.items() if k in names}
    mm = dict(kwargs.pop("motion_module_kwargs", None) or {})
    mm_names = {f.name for f in dataclasses.fields(MotionModuleConfig)}
    bad_mm = sorted(set(mm) - mm_names)
    if bad_mm:
        raise CheckpointError(f"Unsupported motion_module_kwargs in the U-Net config: {', '.join(bad_mm)}.")
    motion = MotionModuleConfig(**{k: _tuple(v) for k, v in mm.items()})
    if "norm_eps" in kwargs:
        kwargs["norm_eps"] = float(kwargs["norm_eps"])  # YAML 1.1 reads "1e-5" as a string
    cfg = UNetConfig(**kwargs, motion_module_kwargs=motion)
    _validate(cfg)
    return cfg


def _validate(cfg: UNetConfig) -> None:
    for key, allowed in _FIXED.items():
        if getattr(cfg, key) not in allowed:
            raise CheckpointError(
                f"U-Net config option {key}={getattr(cfg, key)!r} is not supported (LatentSync uses {allowed[0]!r})."
            )
    n = len(cfg.block_out_channels)
    if len(cfg.down_block_types) != n or len(cfg.up_block_types) != n or len(cfg.heads()) != n:
        raise CheckpointError("U-Net config: block_out_channels, down/up_block_types and heads differ in length.")
    for t in cfg.down_block_types:
        if t not in (CROSS_ATTN_DOWN, PLAIN_DOWN):
            raise CheckpointError(f"U-Net config: unknown down block type {t!r}.")
    for t in cfg.up_block_types:
        if t not in (CROSS_ATTN_UP, PLAIN_UP):
            raise CheckpointError(f"U-Net config: unknown up block type {t!r}.")
    mm = cfg.motion_module_kwargs
    if cfg.use_motion_module and any(b != "Temporal_Self" for b in mm.attention_block_types):
        raise CheckpointError("U-Net config: only 'Temporal_Self' motion-module attention is supported.")
    if mm.cross_frame_attention_mode is not None:
        raise CheckpointError("U-Net config: cross_frame_attention_mode is not supported.")


def load_config(config: UNetConfig | Mapping[str, Any] | str | os.PathLike | None) -> UNetConfig:
    """A :class:`UNetConfig` from a config object, a dict, or a ``.json`` / ``.yaml`` file path;
    ``None`` is the released LatentSync 1.5/1.6 model."""
    if config is None:
        return UNetConfig()
    if isinstance(config, UNetConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise CheckpointError(f"U-Net config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    import yaml

    try:
        data = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{os.path.basename(path)} is not a readable U-Net config: {exc}") from exc
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{os.path.basename(path)} does not hold a U-Net config mapping.")
    return config_from_dict(data)
