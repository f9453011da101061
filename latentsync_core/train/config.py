"""Training settings read from the official LatentSync training configs (``configs/unet/stage*.yaml``).

:func:`load_train_config` takes a shipped preset name (``stage1``, ``stage2``, ``stage2_efficient``; the
official 1.5 files, unmodified, in ``latentsync_core/configs/train/``) or a path to an official-format
yaml, and returns a frozen :class:`TrainConfig` with the values the official ``scripts/train_unet.py``
reads. Fields the official script does not read but a trainer needs (AdamW's betas/eps/weight decay, which
the script leaves at torch's defaults; the precision) carry those defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import LatentSyncError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "train")
PRESETS = ("stage1", "stage2", "stage2_efficient")
SYNCNET_CONFIG = os.path.join(CONFIG_DIR, "syncnet_16_pixel_attn.yaml")
# fp16 = the official mixed precision (autocast + GradScaler); auto = bf16 on CUDA where supported (else fp16),
# fp32 on the CPU (step.resolve_precision)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")

# torch.optim.AdamW defaults: the official script passes only lr, so these are what it trains with.
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What one training step and its optimiser need (official key names in the comments)."""

    trainable_modules: tuple[str, ...] = ("motion_modules.", "attentions.")  # run.trainable_modules
    use_motion_module: bool = True  # model.use_motion_module: False trains every U-Net parameter (stage 1)
    pixel_space_supervise: bool = True  # run.pixel_space_supervise: decode x0 for LPIPS / TREPA / SyncNet
    use_syncnet: bool = True  # run.use_syncnet
    recon_loss_weight: float = 1.0
    sync_loss_weight: float = 0.05
    perceptual_loss_weight: float = 0.1
    trepa_loss_weight: float = 10.0
    use_mixed_noise: bool = True
    mixed_noise_alpha: float = 1.0
    num_frames: int = 16  # data.num_frames
    resolution: int = 256  # data.resolution
    batch_size: int = 4  # data.batch_size (also the length of the SyncNet loss target)
    lr: float = 1e-5  # optimizer.lr
    scale_lr: bool = False  # optimizer.scale_lr: lr x world size
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_betas: tuple[float, float] = ADAMW_BETAS
    adam_eps: float = ADAMW_EPS
    weight_decay: float = ADAMW_WEIGHT_DECAY
    gradient_checkpointing: bool = True  # run.enable_gradient_checkpointing (U-Net)
    # frames per VAE-encode / checkpointed VAE-decode / LPIPS call (ours, not official; same result):
    # 0 = all B*F at once. The decoder's 256² activations of 16 frames are ~8 GB in fp32; 4 frames, a quarter.
    frame_chunk: int = 4
    precision: str = "fp16"  # run.mixed_precision_training true -> fp16; false -> fp32
    seed: int = 1247
    max_train_steps: int = 10_000_000
    save_ckpt_steps: int = 10_000

    @property
    def uses_decoded_pixels(self) -> bool:
        """The VAE decodes predicted x0 (LPIPS, TREPA or the SyncNet loss on pixels need it)."""
        return self.pixel_space_supervise and (
            self.perceptual_loss_weight != 0 or self.trepa_loss_weight != 0 or self.uses_syncnet
        )

    @property
    def uses_syncnet(self) -> bool:
        return self.use_syncnet

    @property
    def uses_lpips(self) -> bool:
        return self.pixel_space_supervise and self.perceptual_loss_weight != 0

    @property
    def uses_trepa(self) -> bool:
        return self.pixel_space_supervise and self.trepa_loss_weight != 0

    def replace(self, **changes: Any) -> TrainConfig:
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise LatentSyncError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}.")
        if self.num_frames < 1 or self.batch_size < 1 or self.resolution % 8:
            raise LatentSyncError(
                f"num_frames and batch_size must be >= 1 and resolution a multiple of 8 "
                f"(got {self.num_frames}, {self.batch_size}, {self.resolution})."
            )
        if self.frame_chunk < 0:
            raise LatentSyncError(f"frame_chunk must be >= 0 (0 = all frames at once), not {self.frame_chunk}.")
        if not self.lr > 0 or not self.max_grad_norm > 0:
            raise LatentSyncError(f"lr and max_grad_norm must be > 0 (got {self.lr}, {self.max_grad_norm}).")
        if self.use_syncnet and not self.pixel_space_supervise:
            # the official script then feeds latents to a latent-space SyncNet; only the pixel one is built here
            raise LatentSyncError("use_syncnet needs pixel_space_supervise (the latent-space SyncNet is not supported).")


def _float(value: Any) -> float:
    # PyYAML reads "1e-5" (no dot) as a string; OmegaConf, which the official script uses, as a float
    return float(value)


def read_config_file(path: str | os.PathLike, what: str) -> Any:
    """The contents of a ``.json`` or YAML config file; :class:`LatentSyncError` naming ``what`` and the path
    when it is missing or unreadable. Shared by the training, SyncNet and VideoMAE configs."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f) if path.lower().endswith(".json") else yaml.safe_load(f)
    except FileNotFoundError:
        raise LatentSyncError(f"{what} not found: {path}") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # json's errors are ValueErrors
        raise LatentSyncError(f"{what} {path} could not be read ({exc}).") from None


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    data = read_config_file(path, "Training config")
    if not isinstance(data, Mapping) or "run" not in data:
        raise LatentSyncError(f"{path} is not a LatentSync training config (no 'run' section).")
    return dict(data)


def preset_path(name_or_path: str | os.PathLike) -> str:
    """The yaml of a preset name, or the path itself."""
    if str(name_or_path) in PRESETS:
        return os.path.join(CONFIG_DIR, f"{name_or_path}.yaml")
    return os.fspath(name_or_path)


def config_from_mapping(data: Mapping[str, Any]) -> TrainConfig:
    """Fields from an official config dict (sections ``data``, ``ckpt``, ``run``, ``optimizer``, ``model``)."""
    run, opt = data.get("run", {}), data.get("optimizer", {})
    dat, model, ckpt = data.get("data", {}), data.get("model", {}), data.get("ckpt", {})
    cfg = TrainConfig(
        trainable_modules=tuple(run.get("trainable_modules") or ()),
        use_motion_module=bool(model.get("use_motion_module", True)),
        pixel_space_supervise=bool(run.get("pixel_space_supervise", True)),
        use_syncnet=bool(run.get("use_syncnet", True)) and bool(model.get("add_audio_layer", True)),
        recon_loss_weight=_float(run.get("recon_loss_weight", 1)),
        sync_loss_weight=_float(run.get("sync_loss_weight", 0)),
        perceptual_loss_weight=_float(run.get("perceptual_loss_weight", 0)),
        trepa_loss_weight=_float(run.get("trepa_loss_weight", 0)),
        use_mixed_noise=bool(run.get("use_mixed_noise", True)),
        mixed_noise_alpha=_float(run.get("mixed_noise_alpha", 1)),
        num_frames=int(dat.get("num_frames", 16)),
        resolution=int(dat.get("resolution", 256)),
        batch_size=int(dat.get("batch_size", 1)),
        lr=_float(opt.get("lr", 1e-5)),
        scale_lr=bool(opt.get("scale_lr", False)),
        max_grad_norm=_float(opt.get("max_grad_norm", 1.0)),
        lr_scheduler=str(opt.get("lr_scheduler", "constant")),
        lr_warmup_steps=int(opt.get("lr_warmup_steps", 0)),
        gradient_checkpointing=bool(run.get("enable_gradient_checkpointing", False)),
        precision="fp16" if run.get("mixed_precision_training", False) else "fp32",
        seed=int(run.get("seed", 1247)),
        max_train_steps=int(run.get("max_train_steps", 10_000_000)),
        save_ckpt_steps=int(ckpt.get("save_ckpt_steps", 10_000)),
    )
    cfg.validate()
    return cfg


def load_train_config(name_or_path: str | os.PathLike = "stage2", **overrides: Any) -> TrainConfig:
    """A preset (``stage1`` / ``stage2`` / ``stage2_efficient``) or an official yaml, then ``overrides``."""
    cfg = config_from_mapping(read_yaml(preset_path(name_or_path)))
    return cfg.replace(**overrides) if overrides else cfg


def unet_config_path(name_or_path: str | os.PathLike) -> str:
    """The yaml whose ``model`` section builds the U-Net for this preset (``unet.load_config`` reads it)."""
    return preset_path(name_or_path)
