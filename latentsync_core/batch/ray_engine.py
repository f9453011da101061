"""The Ray engine: one actor per GPU (or ``--workers`` CPU actors) holds the loaded models and takes rows from
a queue (``ray.util.ActorPool``). Ray is optional (``pip install .[ray]``) and imported only here.

Local mode (no ``--address``) starts Ray on this machine, bound to 127.0.0.1. With ``--address auto`` or
``HOST:PORT`` it joins a cluster started with ``ray start``: every node needs this package at the same path
(or installed), the model files, and the inputs and OUT_DIR on a shared filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import LatentSyncError
from .worker import Worker

INSTALL_HINT = "pip install 'ray>=2.9' (or the pack's extra: pip install -e '.[ray]')"
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ray():
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:
        raise LatentSyncError(f"--engine ray needs Ray ({exc}). Install it with: {INSTALL_HINT}") from exc
    return ray, ActorPool


class _Actor(Worker):
    """A :class:`Worker` that can be told to stop while it runs a row (the actor serves two calls at once)."""

    def request_stop(self) -> None:
        self.stop = True


def run_ray(args, jobs: list, out_dir: str, workers: int, address: str | None,
            on_result: Callable[[dict], None]) -> None:
    ray, ActorPool = _ray()
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    import torch

    # Ray would set OMP_NUM_THREADS=1 in a 1-CPU actor; torch then picks other CPU kernels than a command-line
    # run does, and outputs differ in the last bit. The driver's thread count keeps them bit-identical.
    threads = os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())
    runtime_env = {"env_vars": {"PYTHONPATH": path, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3",
                                "OMP_NUM_THREADS": threads}}
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, 1) + 1, include_dashboard=False, runtime_env=runtime_env,
                     _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = max(1, min(workers or gpus or 1, len(jobs)))
        actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_concurrency=2)(_Actor)
        device = "auto" if gpus else "cpu"
        actors = [actor_cls.remote(args, device, f"ray{i}") for i in range(count)]
        pool = ActorPool(actors)
        try:
            for line in pool.map_unordered(lambda actor, job: actor.run.remote(job[0], job[1], out_dir), jobs):
                on_result(line)
        except KeyboardInterrupt:
            ray.get([a.request_stop.remote() for a in actors], timeout=10)
            while pool.has_next():  # the rows in flight stop between U-Net calls and write nothing
                try:
                    on_result(pool.get_next_unordered(timeout=60))
                except Exception:  # noqa: BLE001 (stopping: a lost row is only reported missing)
                    break
            raise
        except ray.exceptions.RayActorError as exc:
            raise LatentSyncError(f"a Ray worker died: {exc}") from exc
    finally:
        if started_here:
            ray.shutdown()
