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
