"""The training step equals the official ``scripts/train_unet.py`` (two steps of stage2, one of
stage2 without gradient checkpointing, one of stage2_efficient), on the reference folder
``$LATENTSYNC_GOLDEN_TRAIN`` (default ``tests/fixtures/train``). Tolerances: the folder's README table.

Each run is computed once per module (a full-size-layout step on 2 CPU cores takes tens of seconds) and
the tests below check its parts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_golden import GOLDEN, build_trainer, max_abs, meta, npz, rel, rel_l2, step_draws, t, train_batch

pytestmark = pytest.mark.slow

LOSS_TOL = {"recon": 1e-5, "lpips": 1e-5, "total": 1e-5, "sync": 1e-4, "trepa": 1e-4}
GRAD_TOL, NORM_TOL, DELTA_TOL = 2e-3, 1e-3, 2e-7
DLOSS_TOL = {"trepa": 1e-4, "sync": 2e-3, "lpips": 2e-2}
TINY = 1e-6  # below this a gradient (or its norm) is rounding noise (README)


def _grads(trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in trainer.unet.named_parameters() if p.grad is not None}


def _params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if p.requires_grad}


def _run(run: str, steps: int, gradient_checkpointing: bool | None = None, dloss: bool = False) -> dict:
    """Run the reference steps; record what the tests compare."""
    trainer = build_trainer(run, gradient_checkpointing=gradient_checkpointing)
    out = {"trainer": trainer, "steps": []}
    for step in range(1, steps + 1):
        draws = step_draws(step)
        if draws.vae_eps is None:  # step 2 stores no posterior: pin eps so that our posterior gives the stored latents
            draws.vae_eps = _eps_for_stored_latents(trainer, step)
        before = _params(trainer)
        terms = trainer.forward(train_batch(step), draws)
        rec = {"terms": terms, "losses": terms.values()}
        if dloss:
            for name in DLOSS_TOL:
                rec[f"dloss/{name}"] = torch.autograd.grad(getattr(terms, name), terms.pred_noise, retain_graph=True)[0]
        trainer.backward(terms)
        rec["grads"] = _grads(trainer)
        rec["grad_norm"], _ = trainer.optimizer_step()
        after = _params(trainer)
        rec["delta"] = {n: after[n] - before[n] for n in after}
        rec["adam"] = {n: trainer.optimizer.state[p] for n, p in trainer.unet.named_parameters() if p in trainer.optimizer.state}
        rec["adam"] = {n: {k: v.clone() for k, v in s.items()} for n, s in rec["adam"].items()}
        out["steps"].append(rec)
    return out


def _eps_for_stored_latents(trainer, step):
    from latentsync_core.constants import LATENT_SCALE

    s, batch = npz("step_stage2.npz"), train_batch(step)
    ui = s[f"step{step}/unet_input"]
    b, f = batch.gt_pixels.shape[:2]
    gt = batch.gt_pixels.reshape(b * f, *batch.gt_pixels.shape[2:])
    pixels = {"gt": gt, "masked": gt * batch.keep_mask, "ref": batch.ref_pixels.reshape(b * f, *batch.ref_pixels.shape[2:])}
    stored = {"gt": ui[:, 0:4], "masked": ui[:, 5:9], "ref": ui[:, 9:13]}
    eps = {}
    for key, px in pixels.items():
        with torch.no_grad():
            post = trainer.vae.encode(px.contiguous()).latent_dist
        latents = t(stored[key]).transpose(1, 2).reshape(b * f, 4, *stored[key].shape[3:])
        if key == "gt":  # channel 0:4 holds the noisy latents: invert add_noise with the stored noise
            from latentsync_core.train.diffusion import alphas_cumprod

            a = alphas_cumprod()[t(s[f"step{step}/timesteps"])].repeat_interleave(f)[:, None, None, None]
            noise = t(s[f"step{step}/noise"]).transpose(1, 2).reshape(b * f, 4, *stored[key].shape[3:])
            latents = (latents - (1 - a) ** 0.5 * noise) / a**0.5
        eps[key] = (latents / LATENT_SCALE - post.mean) / post.std
    return eps


@pytest.fixture(scope="module")
def stage2():
    return _run("stage2", 2, dloss=True)


@pytest.fixture(scope="module")
def stage2_no_ckpt():
    return _run("stage2", 1, gradient_checkpointing=False)


@pytest.fixture(scope="module")
def efficient():
    return _run("stage2_efficient", 1)


def _check_losses(values: dict, expected: dict):
    assert rel(values["total"], expected["total_logged"]) <= LOSS_TOL["total"]
    for name in ("recon", "lpips", "sync", "trepa"):
        if expected[name] == 0:
            assert values[name] == 0
        else:
            assert rel(values[name], expected[name]) <= LOSS_TOL[name], name


def _check_grads(rec: dict, ref: dict, pre: str, norms: dict[str, float]):
    names = [k[len(pre) + 5:] for k in ref if k.startswith(pre + "grad/")]
    assert names
    for name in names:
        assert rel_l2(rec["grads"][name], ref[f"{pre}grad/{name}"]) <= GRAD_TOL, name
    checked = 0
    for name, norm in norms.items():
        if norm > TINY:
            got = float(rec["grads"][name].double().norm())
            assert abs(got - norm) <= GRAD_TOL * norm, name
            checked += 1
    assert checked > len(norms) // 2
    assert len(rec["grads"]) == len(norms)  # exactly the official trainable set received gradients


def _check_deltas(rec: dict, ref: dict, pre: str, grad_masks: list[np.ndarray] | None = None):
    for key in (k for k in ref if k.startswith(pre + "param_delta/")):
        name = key[len(pre) + len("param_delta/"):]
        grads = grad_masks or [ref[f"{pre}grad/{name}"]]
        where = np.zeros(ref[key].shape, bool)
        for g in grads:
            where |= np.abs(g) > TINY
        assert where.any()
        got = rec["delta"][name].double().numpy()
        assert np.abs(got[where] - ref[key][where]).max() <= DELTA_TOL, name


# ---- step 1 of stage2 -------------------------------------------------------------------------
def test_step1_inputs_and_prediction(stage2):
    s, terms = npz("step_stage2.npz"), stage2["steps"][0]["terms"]
    assert max_abs(terms.unet_input, s["unet_input"]) <= 1e-4
    assert max_abs(terms.gt_latents, s["gt_latents"]) <= 1e-4
    assert torch.equal(terms.timesteps.cpu(), t(s["timesteps"]))
    assert max_abs(terms.pred_noise, s["pred_noise"]) <= 1e-4
    assert max_abs(terms.pred_latents, s["pred_latents"]) <= 1e-4
    assert max_abs(stage2["trainer"].alphas_cumprod, s["alphas_cumprod"]) <= 1e-7


def test_step1_decoded_pixels(stage2):
    s, terms = npz("step_stage2.npz"), stage2["steps"][0]["terms"]
    pixels = terms.pred_pixels.detach()
    assert max_abs(pixels[t(s["pred_pixels_frame_index"])], s["pred_pixels_frames"]) <= 1e-4
    flat = pixels.double().flatten(1)
    stats = torch.stack([flat.mean(1), flat.std(1), flat.min(1).values, flat.max(1).values, (flat**2).sum(1)], 1)
    assert rel_l2(stats[:, :4], s["pred_pixels_stats"][:, :4]) <= 1e-5
    assert rel_l2(stats[:, 4], s["pred_pixels_stats"][:, 4]) <= 1e-5


def test_step1_losses_and_judges(stage2):
    s, rec = npz("step_stage2.npz"), stage2["steps"][0]
    _check_losses(rec["losses"], meta()["losses"]["stage2"])
    extras = rec["terms"].extras
    assert rel_l2(extras["lpips_per_image"], s["lpips_per_image"]) <= 1e-5
    assert rel_l2(extras["sync_vision_embeds"], s["sync_vision_embeds"]) <= 1e-4
    assert rel_l2(extras["sync_audio_embeds"], s["sync_audio_embeds"]) <= 1e-4
    assert rel_l2(extras["sync_sims"], s["sync_sims"]) <= 1e-4
    assert rel_l2(extras["sync_loss_per_sample"], s["sync_loss_per_sample"]) <= 1e-4
    assert rel_l2(extras["trepa_feats_fake"], s["trepa_feats_fake"]) <= 1e-4
    assert rel_l2(extras["trepa_feats_real"], s["trepa_feats_real"]) <= 1e-4


def test_step1_per_term_gradients_wrt_predicted_noise(stage2):
    s, rec = npz("step_stage2.npz"), stage2["steps"][0]
    for name, tol in DLOSS_TOL.items():
        assert rel_l2(rec[f"dloss/{name}"], s[f"dloss_dpred_noise/{name}"]) <= tol, name
    # recon: 2(ε̂ − ε)/N, exact up to rounding
    terms = rec["terms"]
    expected = 2 * (terms.pred_noise.detach() - terms.noise) / terms.noise.numel()
    grad = torch.autograd.grad(torch.nn.functional.mse_loss(terms.pred_noise, terms.noise), terms.pred_noise)[0]
    assert rel_l2(grad, expected) <= 1e-6


def test_step1_parameter_gradients_clip_and_update(stage2):
    s, rec = npz("step_stage2.npz"), stage2["steps"][0]
    norms = json.loads((GOLDEN / "trainable_params.json").read_text())
    _check_grads(rec, s, "", norms["grad_norm_stage2"])
    assert rel(rec["grad_norm"], s["grad_total_norm"]) <= NORM_TOL
    _check_deltas(rec, s, "")


def test_adamw_state_after_step1(stage2):
    s, rec = npz("step_stage2.npz"), stage2["steps"][0]
    names = [k[len("adam/exp_avg/"):] for k in s if k.startswith("adam/exp_avg/")]
    assert names
    for name in names:
        state = rec["adam"][name]
        assert rel_l2(state["exp_avg"], s[f"adam/exp_avg/{name}"]) <= 2e-3, name
        assert rel_l2(state["exp_avg_sq"], s[f"adam/exp_avg_sq/{name}"]) <= 4e-3, name
        assert float(state["step"]) == float(s["adam/step"])


# ---- step 2: weights and moments from step 1 enter ----------------------------------------------
def test_step2(stage2):
    s, rec = npz("step_stage2.npz"), stage2["steps"][1]
    terms = rec["terms"]
    assert max_abs(terms.unet_input, s["step2/unet_input"]) <= 1e-4
    assert max_abs(terms.pred_noise, s["step2/pred_noise"]) <= 1e-4
    _check_losses(rec["losses"], meta()["step2"]["losses"]["stage2"])
    assert rel_l2(terms.extras["lpips_per_image"], s["step2/lpips_per_image"]) <= 1e-5
    for key in ("sync_sims", "sync_loss_per_sample", "trepa_feats_fake", "trepa_feats_real"):
        assert rel_l2(terms.extras[key], s[f"step2/{key}"]) <= 1e-4, key
    norms = json.loads((GOLDEN / "trainable_params.json").read_text())
    _check_grads(rec, s, "step2/", norms["grad_norm_stage2_step2"])
    assert rel(rec["grad_norm"], s["step2/grad_total_norm"]) <= NORM_TOL
    names = [k[len("step2/param_delta/"):] for k in s if k.startswith("step2/param_delta/")]
    for name in names:  # where the gradient of step 1 or of step 2 is above rounding noise
        where = (np.abs(s[f"grad/{name}"]) > TINY) | (np.abs(s[f"step2/grad/{name}"]) > TINY)
        got = rec["delta"][name].double().numpy()
        assert np.abs(got[where] - s[f"step2/param_delta/{name}"][where]).max() <= DELTA_TOL, name


# ---- gradient checkpointing off, stage2_efficient ------------------------------------------------
def test_gradient_checkpointing_off_equals_reference_and_on(stage2, stage2_no_ckpt):
    s, on, off = npz("step_stage2.npz"), stage2["steps"][0], stage2_no_ckpt["steps"][0]
    assert not any(getattr(m, "gradient_checkpointing", False) for m in stage2_no_ckpt["trainer"].unet.modules())
    _check_losses(off["losses"], meta()["gradient_checkpointing_comparison"]["losses_nockpt"])
    norms = json.loads((GOLDEN / "trainable_params.json").read_text())
    _check_grads(off, s, "", norms["grad_norm_stage2"])
    assert off["losses"] == pytest.approx(on["losses"], rel=1e-6)
    for name, grad in on["grads"].items():
        assert rel_l2(off["grads"][name], grad.numpy()) <= 1e-5 or float(grad.norm()) <= TINY, name


def test_stage2_efficient(efficient):
    s, rec = npz("step_stage2_efficient.npz"), efficient["steps"][0]
    trainer = efficient["trainer"]
    assert all(not any(m is not None for m in block.motion_modules) for block in trainer.unet.down_blocks)
    assert max_abs(rec["terms"].pred_noise, s["pred_noise"]) <= 1e-4
    _check_losses(rec["losses"], meta()["losses"]["stage2_efficient"])
    assert trainer.trepa_net is None and rec["losses"]["trepa"] == 0
    assert rel_l2(rec["terms"].extras["lpips_per_image"], s["lpips_per_image"]) <= 1e-5
    assert rel_l2(rec["terms"].extras["sync_sims"], s["sync_sims"]) <= 1e-4
    norms = json.loads((GOLDEN / "trainable_params.json").read_text())
    _check_grads(rec, s, "", norms["grad_norm_stage2_efficient"])
    assert rel(rec["grad_norm"], s["grad_total_norm"]) <= NORM_TOL
    _check_deltas(rec, s, "")
