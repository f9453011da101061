"""Training checkpoints: the trainable weights plus everything an exact resume needs.

``save_checkpoint(trainer, run_dir)`` writes ``run_dir/checkpoint-<step>/`` holding

- ``trainable.safetensors``: the trainable parameters by their U-Net names (adapters included for LoRA);
- ``state.pt``: AdamW moments, lr schedule, GradScaler, the global step and every random state (the
  trainer's draw generator, torch's CPU/CUDA generators, Python's and NumPy's) — plain tensors, numbers
  and lists only, so it loads with ``weights_only=True``.

The folder is written under a temporary name and renamed when complete, so an interrupted save never
replaces or damages an earlier checkpoint. ``load_checkpoint(trainer, path)`` restores all of it: a resumed
run then takes the same steps as one that was never interrupted (given the same batches).

Many processes (:mod:`latentsync_core.train.distributed`): every rank calls ``save_checkpoint``; their random
states are gathered into ``state.pt`` (``rng_ranks``) and rank 0 alone writes. Every rank loads the same
checkpoint and takes back its own random states.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from ..checkpoints import read_checkpoint
from ..errors import CheckpointError, ModelMissingError
from .distributed import all_ranks, is_main, rank, world_size

log = logging.getLogger(__name__)

WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.pt"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def trainable_state(trainer) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (fp32, CPU, contiguous)."""
    wanted = {id(p) for p in trainer.trainable}
    return {name: p.detach().float().cpu().contiguous() for name, p in trainer.unet.named_parameters()
            if id(p) in wanted}


def _rng_state(trainer) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "generator": trainer.generator.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(trainer, state: dict[str, Any]) -> None:
    trainer.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_cpu"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def save_checkpoint(trainer, run_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> str:
    """Write ``run_dir/checkpoint-<global step>/`` atomically and return its path.

    ``extra``: small JSON-like values to keep (e.g. the data sampler's epoch and position). Many processes:
    every rank calls it (a collective: their random states are gathered); rank 0 alone writes.
    """
    from safetensors.torch import save_file

    rngs = all_ranks(_rng_state(trainer))
    final = os.path.join(os.fspath(run_dir), checkpoint_name(trainer.global_step))
    if not is_main():
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    partial = f"{final}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        save_file(trainable_state(trainer), os.path.join(partial, WEIGHTS_FILE),
                  metadata={"global_step": str(trainer.global_step)})
        state = {
            "global_step": trainer.global_step,
            "optimizer": trainer.optimizer.state_dict(),
            "lr_scheduler": trainer.lr_scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
            "rng": rngs[0],
            "extra": extra or {},
        }
        if len(rngs) > 1:
            state["rng_ranks"] = rngs  # rank r's generators, for an exact resume of each rank
        torch.save(state, os.path.join(partial, STATE_FILE))
        if os.path.exists(final):  # the same step saved again: swap, never leave the step without a copy
            old = f"{final}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints in ``run_dir`` as (step, path), oldest first (partial folders are ignored)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        match = _CHECKPOINT_DIR.match(name)
        path = os.path.join(run_dir, name)
        if match and os.path.isfile(os.path.join(path, STATE_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_checkpoint(trainer, path: str | os.PathLike) -> dict[str, Any]:
    """Restore weights, optimiser, schedule, scaler, step and random states from a checkpoint folder;
    returns its ``extra`` dict. Raises :class:`CheckpointError` when it does not fit this trainer."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    weights, state_file = os.path.join(path, WEIGHTS_FILE), os.path.join(path, STATE_FILE)
    for f in (weights, state_file):
        if not os.path.isfile(f):
            raise ModelMissingError(f"Training checkpoint file missing: {f}")
    tensors = load_file(weights)
    expected = trainable_state(trainer)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights} does not fit this training run (another trainable set, LoRA rank or model?): "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} with another shape (e.g. {wrong[:3]})."
        )
    params = dict(trainer.unet.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    state = read_checkpoint(state_file)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.global_step = int(state["global_step"])
    _restore_rank_rng(trainer, state, path)
    return dict(state.get("extra") or {})


def _restore_rank_rng(trainer, state: dict[str, Any], path: str) -> None:
    """This rank's saved random states (rank 0's: ``rng``; all ranks': ``rng_ranks``). Another number of
    processes than saved the checkpoint: the ranks without saved states keep their fresh ones (warned)."""
    saved = state.get("rng_ranks") or [state["rng"]]
    this, world = rank(), world_size()
    if len(saved) != world and this == 0:
        log.warning("%s was saved by %d process(es), this run has %d: the run goes on from it, but not exactly as "
                    "it would have without the interruption", path, len(saved), world)
    if this < len(saved):
        _set_rng_state(trainer, saved[this])
