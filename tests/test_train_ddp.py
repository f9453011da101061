"""Many processes (DistributedDataParallel, gloo on the CPU): two ranks taking one sample each for two
steps end with identical weights, equal to one process taking both samples as one batch of 2 (same draws)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train_step import make_trainer, recon_config, trained
from train_golden import train_batch

from latentsync_core.train.step import StepDraws, TrainBatch

STEPS = 2


def _batch(step: int) -> TrainBatch:
    return train_batch(step + 1)  # the official reference's two batches: real faces and audio, B = 2, 256 px


def _draws(step: int) -> StepDraws:
    g = torch.Generator().manual_seed(100 + step)
    frames = 16
    return StepDraws(vae_eps={k: torch.randn(2 * frames, 4, 32, 32, generator=g) for k in ("gt", "masked", "ref")},
                     noise=torch.randn(2, 4, frames, 32, 32, generator=g),
                     timesteps=torch.randint(0, 1000, (2,), generator=g))


def _sample(batch: TrainBatch, draws: StepDraws, i: int) -> tuple[TrainBatch, StepDraws]:
    frames = batch.gt_pixels.shape[1]
    rows = slice(i * frames, (i + 1) * frames)
    one = TrainBatch(batch.gt_pixels[i:i + 1], batch.ref_pixels[i:i + 1], batch.keep_mask, batch.mel[i:i + 1],
                     batch.audio_embeds[i:i + 1])
    return one, StepDraws({k: v[rows] for k, v in draws.vae_eps.items()}, draws.noise[i:i + 1], draws.timesteps[i:i + 1])


def _config():
    return recon_config(gradient_checkpointing=True, lr=1e-5, batch_size=1)  # the official lr


def _rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        trainer = make_trainer(_config())
        assert (trainer.rank, trainer.world_size) == (rank, 2)
        torch.save(_steps(trainer, lambda step: _sample(_batch(step), _draws(step), rank)),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _steps(trainer, inputs) -> dict:
    """Run the steps; keep each step's gradient (after DDP's average) and the final weights."""
    out = {}
    for step in range(STEPS):
        terms = trainer.forward(*inputs(step))
        trainer.backward(terms)
        out[f"grads{step}"] = {n: p.grad.clone() for n, p in trainer.unet.named_parameters() if p.grad is not None}
        trainer.optimizer_step()
    out["weights"] = trained(trainer)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_with_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = _steps(make_trainer(_config().replace(batch_size=2)), lambda step: (_batch(step), _draws(step)))
    for name, value in single["weights"].items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name  # the ranks stay identical
    for step in range(STEPS):
        grads = single[f"grads{step}"]
        assert set(ranks[0][f"grads{step}"]) == set(grads)
        for name, grad in grads.items():
            if float(grad.norm()) > 1e-6:
                err = float((ranks[0][f"grads{step}"][name] - grad).norm() / grad.norm())
                assert err <= 1e-4, (step, name, err)  # measured 1.3e-5 (summation order)
    # AdamW moves every element by about lr; where the gradient is rounding noise its sign is noise too
    # (README of the training reference), so weights are compared where both steps' gradients are real
    for name, value in single["weights"].items():
        real = (single["grads0"][name].abs() > 1e-6) & (single["grads1"][name].abs() > 1e-6)
        torch.testing.assert_close(ranks[0]["weights"][name][real], value[real], rtol=0, atol=1e-5, msg=name)


# ---------------------------------------------------------------------- the train command under torchrun
# The command's own noise comes from each rank's generator (seeded seed + rank, as the official trainer), so a
# two-rank run cannot equal one process with --batch-size 2 through the command: the test above covers that
# equality with pinned draws. Here: the ranks stay identical, they split the single process's samples, rank 0
# alone writes, and --resume under two ranks continues exactly.


def _spy(path: str):
    """``train_loop`` that also saves the trainable weights this process ends with and the samples it took."""
    from latentsync_core.train import run
    from latentsync_core.train.checkpoint import trainable_state

    real = run.train_loop

    def train_loop(trainer, dataset, *args, **kwargs):
        picks, batch = [], dataset.batch
        dataset.batch = lambda p, keep: picks.append([list(x) for x in p]) or batch(p, keep)
        last = real(trainer, dataset, *args, **kwargs)
        torch.save({"weights": trainable_state(trainer), "picks": picks}, path)
        return last

    return run, real, train_loop


def _command_rank(rank: int, port: int, argv: list[str], out_dir: str) -> None:
    from latentsync_core import cli

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    run, _, spy = _spy(os.path.join(out_dir, f"rank{rank}.pt"))
    run.train_loop = spy
    assert cli.main(argv) == 0


@pytest.fixture(scope="module")
def two_ranks(dataset, tmp_path_factory):
    """The command in two gloo ranks (as torchrun starts it), 2 steps; and one process with --batch-size 2."""
    from test_train_command import _argv

    from latentsync_core import cli

    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_command_rank, args=(_free_port(), _argv(dataset, out / "two", 2), str(out)), nprocs=2, join=True)
    run, real, spy = _spy(str(out / "single.pt"))
    run.train_loop = spy
    try:
        assert cli.main(_argv(dataset, out / "single", 2, "--batch-size", "2")) == 0
    finally:
        run.train_loop = real
    return out


@pytest.mark.slow
def test_the_command_in_two_ranks(two_ranks):
    import json

    from safetensors.torch import load_file

    ranks = [torch.load(two_ranks / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = torch.load(two_ranks / "single.pt", weights_only=True)
    saved = load_file(two_ranks / "two" / "checkpoint-0000002" / "trainable.safetensors")
    assert saved.keys() == ranks[1]["weights"].keys()
    for name, value in saved.items():  # every rank holds what rank 0 saved
        assert torch.equal(ranks[0]["weights"][name], value) and torch.equal(ranks[1]["weights"][name], value), name
    # the data rule: each rank takes its slice of the samples one process with the whole batch draws
    assert [len(p) for p in ranks[0]["picks"]] == [1, 1] and [len(p) for p in single["picks"]] == [2, 2]
    for step in range(2):
        assert ranks[0]["picks"][step] + ranks[1]["picks"][step] == single["picks"][step]
    assert ranks[0]["picks"] != ranks[1]["picks"]
    # rank 0 alone wrote: the files of a single run, one log line per step
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert names(two_ranks / "two") == names(two_ranks / "single")
    log = [json.loads(x) for x in (two_ranks / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]


@pytest.mark.slow
def test_torchrun_resume_in_two_ranks(dataset, two_ranks, tmp_path):
    """The real launcher: 1 step in two ranks, then --resume to 2 equals the uninterrupted two-rank run; a second
    run into the folder is refused on every rank (no rank left waiting)."""
    import subprocess
    import sys

    from safetensors.torch import load_file
    from test_train_command import _argv

    def torchrun(*argv: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "latentsync_core", *argv]
        return subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              capture_output=True, text=True, timeout=600)

    part = tmp_path / "part"
    first = torchrun(*_argv(dataset, part, 1, "--device", "cpu"))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(*_argv(dataset, part, 2, "--device", "cpu", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(two_ranks / "two" / "lora_0000002.safetensors"), load_file(part / "lora_0000002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    refused = torchrun(*_argv(dataset, part, 3, "--device", "cpu"))
    assert refused.returncode != 0 and refused.stderr.count("already holds a training run") >= 2, refused.stderr[-3000:]
