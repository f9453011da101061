"""Many processes: ``torchrun --nproc_per_node=N -m latentsync_core train DATASET_DIR RUN_DIR ...``.

torchrun starts N copies of the command with ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set. :func:`process_group` then joins them (NCCL on CUDA, each rank pinned to
``cuda:LOCAL_RANK``; gloo on the CPU), and :class:`~latentsync_core.train.step.Trainer` wraps the U-Net in
DistributedDataParallel: the ranks' gradients are averaged, so every rank takes the same step and holds the
same weights. A plain single process (no ``WORLD_SIZE`` > 1) is untouched: every helper here is then a no-op.

The rules of a run of N processes (see :func:`~latentsync_core.train.run.train_loop`):

- data: every rank draws ``batch_size * N`` samples from the same seeded ``random.Random(seed)`` and trains on
  its own slice ``[rank * batch_size, (rank + 1) * batch_size)``: the ranks see different samples, together
  exactly those one process with a batch of ``batch_size * N`` would draw, and the sampler's state (saved in
  checkpoints) is the same on every rank. The effective batch is ``batch_size * N``; the learning rate is
  multiplied by N only when the config's ``scale_lr`` says so. Each rank's noise comes from its own generator
  (seeded ``seed + rank``, as the official trainer).
- files: rank 0 alone writes ``run.json``, ``log.jsonl``, ``loss.png``, checkpoints and LoRA files; the
  logged losses are the mean over the ranks (the global batch's). Every rank resumes from the same
  checkpoint, each with its own saved random states.
- failures: the decisions that may refuse a run (``start_run``) are taken by rank 0 and sent to all, so
  every rank stops with the same error; the group's collectives time out after :data:`TIMEOUT` rather
  than wait forever for a rank that died (torchrun also stops the others when one fails).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch

from ..errors import LatentSyncError

TIMEOUT = timedelta(minutes=10)  # the longest any rank waits in a collective (a slow save on rank 0 included)


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank in the process group (0 without one)."""
    return torch.distributed.get_rank() if _initialised() else 0


def launched_rank() -> int:
    """torchrun's ``RANK`` for this process (0 for a plain one), before and after the process group."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    """The number of processes training together (1 without a process group)."""
    return torch.distributed.get_world_size() if _initialised() else 1


def is_main() -> bool:
    """Whether this process writes the run's files and prints (rank 0; always true for one process)."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process on
    a machine); otherwise ``device`` unchanged."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    local = int(os.environ["LOCAL_RANK"])
    if local >= torch.cuda.device_count():
        raise LatentSyncError(f"LOCAL_RANK {local}, but only {torch.cuda.device_count()} CUDA device(s) are "
                              "visible: start at most that many processes per machine (--nproc_per_node).")
    return torch.device("cuda", local)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Under torchrun: join the process group for the block and yield this rank's device (``cuda:LOCAL_RANK``
    on GPUs: NCCL; the CPU: gloo); the group is destroyed when the block ends, on errors too. One process
    (or a group someone else initialised): ``device`` unchanged, nothing done."""
    if not launched() or _initialised():
        yield device
        return
    if device.type == "cuda":
        device = rank_device(device)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise LatentSyncError(f"Training in several processes needs CUDA GPUs or the CPU, not {device.type}.")
    torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield device
    finally:
        torch.distributed.destroy_process_group()


def on_main(fn: Callable[[], Any]) -> None:
    """``fn()`` on rank 0 only (e.g. a check that writes); when it fails, every rank raises (rank 0 its own
    error, the others a :class:`LatentSyncError` with its message), so none waits for a rank that stopped."""
    if world_size() == 1:
        fn()
        return
    failure: BaseException | None = None
    if is_main():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 (sent to the other ranks, then raised here)
            failure = exc
    box = [None if failure is None else str(failure) or type(failure).__name__]
    torch.distributed.broadcast_object_list(box)
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise LatentSyncError(box[0])


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. downloads into a shared folder), the other ranks after it."""
    if world_size() > 1 and not is_main():
        torch.distributed.barrier()
    try:
        yield
    finally:
        if world_size() > 1 and is_main():
            torch.distributed.barrier()


def barrier() -> None:
    """Wait for every rank (nothing for one process)."""
    if world_size() > 1:
        torch.distributed.barrier()


def all_ranks(value: Any) -> list:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` for one process."""
    if world_size() == 1:
        return [value]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out


def mean_over_ranks(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """The mean of each value over the ranks (e.g. the losses of the global batch); unchanged for one process.
    ``device``: where the reduced tensor lives (this rank's GPU under NCCL)."""
    if world_size() == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(values, (t / world_size()).tolist()))
