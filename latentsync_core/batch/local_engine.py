"""The local engine: one worker per visible GPU (or ``--workers`` on the CPU), as threads of this process.
No extra package; each worker loads its own models once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

from .worker import Worker


def local_devices(device: str) -> list[str]:
    """The devices to spread workers over: every visible GPU for ``auto`` on a CUDA machine, else ``device``."""
    if device == "auto" and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device]


def run_local(args, jobs: list, out_dir: str, workers: int, on_result: Callable[[dict], None]) -> None:
    """Run ``jobs`` (``(row, key)``) on ``workers`` threads (0: one per device); ``on_result(line)`` is called
    from the worker threads, one call at a time. Ctrl-C stops every worker between U-Net calls (the rows in
    flight write nothing) and re-raises."""
    devices = local_devices(args.device)
    count = max(1, min(workers or len(devices), len(jobs)))
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    lock, loading, started, errors = threading.Lock(), threading.Lock(), [], []

    finished = [threading.Event() for _ in range(count)]

    def serve(i: int) -> None:
        try:
            _serve(i)
        finally:
            finished[i].set()

    def _serve(i: int) -> None:
        try:
            with loading:  # one at a time: lazy imports (diffusers) are not thread-safe, and memory peaks once
                worker = Worker(args, devices[i % len(devices)], name=f"local{i}")
        except BaseException as exc:  # noqa: BLE001 (a worker that cannot load its models ends the batch)
            errors.append(exc)
            return
        started.append(worker)
        while not worker.stop:
            try:
                row, key = todo.get_nowait()
            except queue.Empty:
                return
            line = worker.run(row, key, out_dir)
            with lock:
                on_result(line)

    threads = [threading.Thread(target=serve, args=(i,), name=f"latentsync-batch-{i}", daemon=True)
               for i in range(count)]
    for t in threads:
        t.start()
    # waits on events, not Thread.join: a join interrupted by Ctrl-C can mark a running thread as ended
    # (CPython's _wait_for_tstate_lock), and the report would then close under a worker still writing to it
    try:
        for event in finished:
            while not event.wait(0.2):
                pass
    except KeyboardInterrupt:
        for worker in started:
            worker.stop = True
        for event in finished:
            event.wait()
        raise
    if errors:
        raise errors[0]
