"""One fine-tuning run from a prepared dataset: what the ``train`` command and the Train LoRA node both call.

:func:`fine_tune` builds the run (the preset's official config with the options applied, the U-Net to train in
fp32, its trainable set, the frozen judges the loss weights need, the VAE) and runs
:func:`~latentsync_core.train.run.train_loop` into ``run_dir``. Callers differ only in where the weights come
from (files for the command line; the graph's loaded U-Net and ComfyUI's VAE for the node) and how progress is
shown.

Under torchrun (a process group of more than one, e.g. joined by the ``train`` command with
:func:`latentsync_core.train.distributed.process_group`) the run is data-parallel: see
:mod:`latentsync_core.train.distributed` for the data split, which rank writes and how errors reach every rank.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..errors import LatentSyncError
from ..options import TrainOptions
from .config import TrainConfig

# the official training config behind each preset: its losses and trainable set (lora: stage2_efficient's
# losses, adapters only)
PRESET_CONFIGS = {"lora": "stage2_efficient", "stage2_efficient": "stage2_efficient", "stage2": "stage2"}
# the U-Net each preset trains: a LoRA adapts the model inference runs (configs/unet/stage2.yaml, motion modules
# in every block), so it is trained on that one; stage2_efficient keeps the official efficient stage's U-Net
# (motion modules in the decoder only)
PRESET_UNETS = {"lora": "stage2", "stage2_efficient": "stage2_efficient", "stage2": "stage2"}


def config_name(options: TrainOptions, config_file: str | None = None) -> str:
    """The official config (or ``config_file``) a run of ``options`` starts from."""
    return config_file or PRESET_CONFIGS[options.train_preset]


def train_config(options: TrainOptions, config_file: str | None = None) -> TrainConfig:
    """The run's config: the preset's (or ``config_file``'s) with ``options`` applied (a None weight keeps the
    config's)."""
    from .config import load_train_config

    o = options
    overrides: dict[str, Any] = dict(lr=o.learning_rate, batch_size=o.train_batch_size, seed=o.train_seed,
                                     precision=o.precision, max_train_steps=o.train_steps,
                                     save_ckpt_steps=o.save_every)
    if o.sync_weight is not None:
        overrides.update(sync_loss_weight=o.sync_weight, use_syncnet=o.sync_weight > 0)
    if o.lpips_weight is not None:
        overrides["perceptual_loss_weight"] = o.lpips_weight
    if o.trepa_weight is not None:
        overrides["trepa_loss_weight"] = o.trepa_weight
    return load_train_config(config_name(options, config_file), **overrides)


def lora_files(run_dir: str) -> list[str]:
    """The run's LoRA files, oldest step first."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(os.path.join(run_dir, n) for n in os.listdir(run_dir)
                  if n.startswith("lora_") and n.endswith(".safetensors"))


def fine_tune(dataset_dir: str, run_dir: str, options: TrainOptions, *,
              unet: str | os.PathLike | Mapping[str, torch.Tensor] | None, vae: Any, models_dir: str,
              search_folders: Iterable[str] = (), config_file: str | None = None, unet_config: Any = None,
              device: str | torch.device = "cpu", download: bool = True, resume: bool = False,
              progress: Callable[[int, int, dict], None] | None = None) -> dict:
    """Train ``options.train_steps`` steps on DATASET_DIR into RUN_DIR (see :mod:`latentsync_core.train.run`).

    Args:
        unet: the weights to start from: a U-Net file, a state dict (e.g. of the graph's loaded model; cast to
            fp32) or None (random, for tests).
        unet_config: the U-Net's architecture (a :class:`~latentsync_core.unet.UNetConfig`, e.g. the graph's
            loaded model's); default: ``config_file``'s, else the preset's (:data:`PRESET_UNETS`).
        vae: a diffusers ``AutoencoderKL`` or ``DiffusersVae`` (frozen; ComfyUI's VAE: see
            :func:`latentsync_core.vae.trainable_vae`).
        models_dir / search_folders / download: where the judges (StableSyncNet, VGG16, VideoMAE) are found or
            downloaded to; only those the loss weights use are loaded.
        progress: ``(step, total, log line)`` after every step; it may raise to stop (a checkpoint is saved).

    ``options.validate_every`` > 0 holds the dataset's last segment out of training and renders it with the
    current weights (:mod:`latentsync_core.train.validation`: ``RUN_DIR/validation/``, ``validation.jsonl``).
    Many processes: every rank calls it with its own ``device``; rank 0 checks RUN_DIR and writes, the logged
    losses are the mean over the ranks.

    Returns the last log line (``step``, ``losses``, ...) with ``run_dir`` and ``lora`` (the newest LoRA file,
    None for the stage-2 presets).
    """
    from ..face.paste import fixed_mask
    from .dataset import TrainDataset
    from .distributed import barrier, main_first, on_main
    from .judges import load_judges
    from .models import load_training_unet
    from .run import start_run, train_loop
    from .step import Trainer
    from .trainable import select_trainable
    from .validation import make_validator

    config = train_config(options, config_file)
    dataset = TrainDataset(dataset_dir)
    if dataset.resolution != config.resolution:
        raise LatentSyncError(f"the dataset's faces are {dataset.resolution} px, the training config's resolution is "
                              f"{config.resolution}: prepare the data at {config.resolution} or pick the other config.")
    validate = make_validator(dataset, dataset_dir, run_dir, options)  # holds its segment out of the draws
    name = config_name(options, config_file)
    on_main(lambda: start_run(run_dir, {**dataclasses.asdict(options), "config": name}, resume,
                              dataclasses.asdict(TrainOptions())))  # rank 0 decides, every rank gets its answer
    model = load_training_unet(unet_config or config_file or PRESET_UNETS[options.train_preset], unet, device=device)
    lora = options.train_preset == "lora"
    with torch.random.fork_rng(devices=[]):  # LoRA's random init from the run's seed: runs are reproducible
        torch.manual_seed(options.train_seed)
        trainable = (select_trainable(model, "lora", rank=options.lora_rank) if lora
                     else select_trainable(model, options.train_preset))
    with main_first():  # rank 0 downloads what is missing, the others then find it
        judges = load_judges(config, models_dir, search_folders, device=device, download=download)
    trainer = Trainer(model, vae, config, device=device, trainable=trainable, syncnet=judges.syncnet,
                      lpips=judges.lpips, trepa_net=judges.trepa_net)
    keep = torch.tensor(fixed_mask(config.resolution), dtype=torch.float32)
    meta = {"resolution": config.resolution, "dataset_segments": len(dataset), "preset": options.train_preset} if lora else None
    last = train_loop(trainer, dataset, run_dir, options.train_steps, options.save_every, options.train_seed, keep,
                      resume=resume, save_lora_meta=meta, progress=progress, validate=validate)
    barrier()  # rank 0's last files are written before any rank reports them
    files = lora_files(run_dir)
    return {"run_dir": run_dir, "lora": files[-1] if lora and files else None, **last}
