"""A fine-tuning run: steps over a prepared dataset, logs, checkpoints, LoRA files, exact resume.

``RUN_DIR`` gets ``log.jsonl`` (a line per step: losses, gradient norm, learning rate, seconds), ``loss.png``
(the loss curve, redrawn at every save), ``checkpoint-<step>/`` (trainable weights, optimiser, random states
and the data sampler's state: a resumed run takes exactly the steps an uninterrupted one would) and, for a
LoRA run, ``lora_<step>.safetensors`` (what the Model Loader and ``--lora`` apply). ``run.json`` records the
options; a second run into the same RUN_DIR is refused unless it resumes. Many processes (torchrun): the data
split, rank 0's files and the logged mean losses are described in :mod:`latentsync_core.train.distributed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable

import numpy as np

from ..errors import LatentSyncError
from ..safe_output import atomic_path

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
LOG_FILE = "log.jsonl"
LOSS_PLOT = "loss.png"


def _as_state(value):
    """``random.getstate()`` after a JSON-like round trip (lists) -> the tuples ``setstate`` wants."""
    return tuple(_as_state(v) for v in value) if isinstance(value, (list, tuple)) else value


def start_run(run_dir: str, options: dict, resume: bool, defaults: dict | None = None) -> None:
    """Refuse a second run into ``run_dir`` unless resuming with the same options; record them. An option the
    run's ``run.json`` lacks (added since it started) counts as its value in ``defaults``."""
    from .checkpoint import latest_checkpoint

    path = os.path.join(run_dir, RUN_FILE)
    saved = latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if os.path.isfile(path) and saved is not None:
        if not resume:
            raise LatentSyncError(f"{run_dir} already holds a training run: --resume to continue it, or choose "
                                  "another RUN_DIR.")
        with open(path, encoding="utf-8") as fh:
            before = json.load(fh)
        old = {**(defaults or {}), **before}
        changed = {k: (old.get(k), v) for k, v in options.items() if k not in ("train_steps",) and old.get(k) != v}
        if changed:
            raise LatentSyncError(f"{run_dir} holds a run started with other settings (was, now): {changed}. "
                                  "Continue it with its settings, or train into another folder.")
    elif resume:
        raise LatentSyncError(f"--resume: {run_dir} has no checkpoint to resume.")
    elif os.path.isfile(os.path.join(run_dir, LOG_FILE)):  # a run stopped before its first save: start afresh
        os.remove(os.path.join(run_dir, LOG_FILE))
    os.makedirs(run_dir, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(options, fh, indent=1)


def read_jsonl(path: str) -> list[dict]:
    """The rows of a run's JSONL file (``log.jsonl``, ``validation.jsonl``); none yet: []."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def trim_jsonl(path: str, step: int) -> list[dict]:
    """The rows of a run's JSONL file up to ``step``; later rows (from steps after the checkpoint a run resumes
    from: they are done again) are dropped from the file, atomically."""
    rows = read_jsonl(path)
    kept = [r for r in rows if r["step"] <= step]
    if len(kept) != len(rows):
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)
    return kept


def plot_losses(run_dir: str) -> str | None:
    """``RUN_DIR/loss.png`` from ``log.jsonl`` (total loss per step); None when nothing is logged yet."""

    from ..plot import BLUE, line_chart, write_png

    rows = read_jsonl(os.path.join(run_dir, LOG_FILE))
    if not rows:
        return None
    losses = np.array([r["losses"]["total"] for r in rows], dtype=np.float64)
    image = line_chart(losses, (768, 300), BLUE, f"total loss, step {rows[-1]['step']}", "step",
                       float(rows[0]["step"]), 1.0, zero=False)
    return write_png(os.path.join(run_dir, LOSS_PLOT), image)


def train_loop(trainer, dataset, run_dir: str, steps: int, save_every: int, seed: int, keep_mask, *,
               resume: bool = False, save_lora_meta: dict | None = None,
               progress: Callable[[int, int, dict], None] | None = None,
               validate: Callable[[object, int], object] | None = None) -> dict:
    """Run ``trainer`` to ``steps`` global steps on samples drawn from ``dataset``; returns the last losses.

    Checkpoints every ``save_every`` steps, at the end and when stopped (Ctrl-C, or an exception raised by
    ``progress`` such as ComfyUI's Cancel; then re-raised; one process only: under many, the last checkpoint
    stands); ``save_lora_meta`` (a dict: metadata) also writes ``lora_<step>.safetensors`` at each save.
    ``validate(trainer, steps)`` (:class:`~latentsync_core.train.validation.Validator`) is called before the
    first step and after every step's save; it decides itself whether the step is due. Many processes (a
    process group of more than one): each step draws ``batch_size * world_size`` samples and this rank trains
    on its slice ``[rank * batch_size, (rank + 1) * batch_size)``; rank 0 alone writes, and ``log.jsonl``'s
    losses are the mean over the ranks (the global batch's); see :mod:`latentsync_core.train.distributed`."""
    from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from .distributed import mean_over_ranks, rank, world_size

    rng = random.Random(seed)  # noqa: S311 (data sampling, as the official loader's random module)
    if resume:
        extra = load_checkpoint(trainer, latest_checkpoint(run_dir))
        rng.setstate(_as_state(extra["data_rng"]))
        log.info("resumed at step %d", trainer.global_step)
    batch_size, main, world = trainer.config.batch_size, rank() == 0, world_size()
    mine = slice(rank() * batch_size, (rank() + 1) * batch_size)  # this rank's part of the global batch
    last: dict = {}

    saved = {"step": trainer.global_step}

    def save_unsaved() -> None:  # one process only: a lone rank must not start the save collective
        if world == 1 and last and last["step"] == trainer.global_step != saved["step"]:
            log.warning("stopped: saving step %d", trainer.global_step)
            save()

    def save() -> None:
        saved["step"] = trainer.global_step
        save_checkpoint(trainer, run_dir, extra={"data_rng": rng.getstate()})  # every rank: a collective
        if not main:
            return
        if save_lora_meta is not None:
            from .lora import save_lora

            save_lora(os.path.join(run_dir, f"lora_{trainer.global_step:07d}.safetensors"), trainer.unet,
                      {**save_lora_meta, "steps": trainer.global_step})
        plot_losses(run_dir)

    if resume and main:  # steps logged after the checkpoint (a crash between saves) are taken again
        trim_jsonl(os.path.join(run_dir, LOG_FILE), trainer.global_step)
    logging_here = open(os.path.join(run_dir, LOG_FILE), "a", encoding="utf-8") if main else None
    with logging_here or contextlib.nullcontext() as log_fh:
        try:
            if validate is not None:
                validate(trainer, steps)
            while trainer.global_step < steps:
                t0 = time.perf_counter()
                picks = [dataset.draw(rng) for _ in range(batch_size * world)][mine]
                result = trainer.step(dataset.batch(picks, keep_mask))
                losses = mean_over_ranks({k: float(v) for k, v in result.losses.items()}, trainer.device)
                last = {"step": result.step, "losses": losses, "grad_norm": float(result.grad_norm),
                        "lr": float(result.lr), "seconds": round(time.perf_counter() - t0, 3)}
                if log_fh is not None:
                    log_fh.write(json.dumps(last) + "\n")
                    log_fh.flush()
                if result.step % save_every == 0 or result.step == steps:
                    save()
                if validate is not None:
                    validate(trainer, steps)
                if progress is not None:
                    try:
                        progress(result.step, steps, last)
                    except BaseException:  # a stop raised by the caller (ComfyUI's Cancel): keep this step
                        save_unsaved()
                        raise
        except KeyboardInterrupt:
            save_unsaved()
            raise
    return last
