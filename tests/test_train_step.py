"""The training step's behaviour beyond parity: presets, trainable sets (full size, meta device), exact
resume, divergence, bad input, atomic checkpoints, LoRA training, precisions, missing judge files.

Fast: a recon-only config on 64 px faces (8x8 latents) unless a test needs more.
"""

from __future__ import annotations

import os

import pytest
import torch
from train_golden import GOLDEN, UNET_CKPT, VAE_CONFIG, VAE_FILE, meta

from latentsync_core.errors import InputMismatchError, LatentSyncError, ModelMissingError
from latentsync_core.train import checkpoint as ckpt
from latentsync_core.train.config import CONFIG_DIR, load_train_config
from latentsync_core.train.models import load_training_unet
from latentsync_core.train.step import StepDraws, TrainBatch, Trainer, TrainingDivergedError
from latentsync_core.train.trainable import count_parameters, select_trainable
from latentsync_core.unet import build_unet
from latentsync_core.vae import load_vae

TINY_YAML = GOLDEN / "stage2_tiny.yaml"


def recon_config(**overrides):
    base = dict(use_syncnet=False, perceptual_loss_weight=0.0, trepa_loss_weight=0.0, precision="fp32",
                gradient_checkpointing=False, lr=1e-3, batch_size=2)
    base.update(overrides)
    return load_train_config(TINY_YAML, **base)


def make_trainer(config=None, trainable=None, **kw):
    unet = load_training_unet(TINY_YAML, UNET_CKPT)
    params = select_trainable(unet, trainable) if trainable is not None else None
    return Trainer(unet, load_vae(VAE_FILE, VAE_CONFIG), config or recon_config(), trainable=params, **kw)


def make_batch(seed: int, frames: int = 16, size: int = 64, b: int = 2) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    pixels = lambda: torch.rand((b, frames, 3, size, size), generator=g) * 2 - 1  # noqa: E731
    mask = torch.ones(size, size)
    mask[size // 2:] = 0
    return TrainBatch(pixels(), pixels(), mask, torch.randn((b, 1, 80, 52), generator=g),
                      torch.randn((b, frames, 50, 384), generator=g))


def trained(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if p.requires_grad}


# ---- presets and trainable sets ----------------------------------------------------------------------
def test_presets_are_the_official_configs():
    s2, eff, s1 = (load_train_config(n) for n in ("stage2", "stage2_efficient", "stage1"))
    assert s2.trainable_modules == ("motion_modules.", "attentions.") and s2.trepa_loss_weight == 10
    assert (s2.recon_loss_weight, s2.sync_loss_weight, s2.perceptual_loss_weight) == (1, 0.05, 0.1)
    assert s2.lr == 1e-5 and isinstance(s2.lr, float)  # "1e-5" in the yaml: a string to PyYAML
    assert s2.precision == "fp16" and s2.gradient_checkpointing and s2.max_grad_norm == 1.0
    assert eff.trainable_modules == ("motion_modules.", "attn2.") and eff.trepa_loss_weight == 0
    assert not s1.use_motion_module and not s1.uses_decoded_pixels and not s1.uses_syncnet
    with pytest.raises(LatentSyncError, match="precision"):
        s2.replace(precision="fp8")
    from latentsync_core.train.step import resolve_precision

    assert resolve_precision(s2.replace(precision="auto").precision, torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("bf16_ok, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda_prefers_bf16(monkeypatch, bf16_ok, expected):
    from latentsync_core.train.step import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("preset", ["stage2", "stage2_efficient"])
def test_full_size_trainable_sets_match_the_official_counts(preset):
    expected = meta()["trainable"][preset]["full_size"]
    unet = build_unet(os.path.join(CONFIG_DIR, f"{preset}.yaml"), "meta")
    params = select_trainable(unet, preset)
    assert len(params) == expected["tensors"]
    assert count_parameters(params) == expected["parameters"]
    assert count_parameters(unet.parameters()) == expected["all_parameters"]
    assert all(not p.requires_grad for p in unet.parameters() if all(p is not q for q in params))


def test_stage1_trains_every_parameter_and_lora_only_adapters():
    unet = build_unet(os.path.join(CONFIG_DIR, "stage1.yaml"), "meta")
    assert not any("motion_modules" in n for n, _ in unet.named_parameters())
    assert count_parameters(select_trainable(unet, "stage1")) == count_parameters(unet.parameters())
    tiny = load_training_unet(TINY_YAML, UNET_CKPT)
    lora = select_trainable(tiny, "lora", rank=4)
    assert lora and all("lora_" in n for n, p in tiny.named_parameters() if p.requires_grad)
    with pytest.raises(LatentSyncError, match="Unknown trainable set"):
        select_trainable(tiny, "stage3")


def test_stage2_efficient_drops_down_block_motion_modules_with_a_log(caplog):
    unet = load_training_unet(GOLDEN / "stage2_efficient_tiny.yaml", UNET_CKPT)
    assert "not part of this model config" in caplog.text
    assert all(m is None for block in unet.down_blocks for m in block.motion_modules)


# ---- the step's contract -----------------------------------------------------------------------------
def test_a_step_updates_only_the_trainable_set_and_reports_losses():
    trainer = make_trainer()
    frozen = {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if not p.requires_grad}
    before = trained(trainer)
    result = trainer.step(make_batch(0))
    assert result.step == 1 and result.grad_norm > 0 and result.losses["recon"] > 0
    assert result.losses["total"] == pytest.approx(result.losses["recon"])
    assert any(not torch.equal(before[n], p) for n, p in trained(trainer).items())
    assert all(torch.equal(frozen[n], p) for n, p in trainer.unet.named_parameters() if not p.requires_grad)


def test_resume_after_step_one_equals_two_uninterrupted_steps(tmp_path):
    config = recon_config(lr_scheduler="constant_with_warmup", lr_warmup_steps=3)
    batches = [make_batch(1), make_batch(2)]
    straight = make_trainer(config)
    straight.step(batches[0])
    saved = ckpt.save_checkpoint(straight, tmp_path, extra={"epoch": 0, "position": 1})
    straight.step(batches[1])  # draws (VAE eps, noise, timesteps) come from the trainer's generator

    resumed = make_trainer(config, generator=torch.Generator().manual_seed(999))
    assert ckpt.load_checkpoint(resumed, saved) == {"epoch": 0, "position": 1}
    assert resumed.global_step == 1
    resumed.step(batches[1])
    assert resumed.global_step == straight.global_step == 2
    for name, value in trained(straight).items():
        torch.testing.assert_close(trained(resumed)[name], value, rtol=1e-6, atol=1e-9, msg=name)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_resume_without_the_draw_state_would_differ(tmp_path):
    """The resume test can fail: a trainer that skips restoring the generator takes another step."""
    config = recon_config()
    a = make_trainer(config)
    a.step(make_batch(1))
    saved = ckpt.save_checkpoint(a, tmp_path)
    a.step(make_batch(2))
    b = make_trainer(config, generator=torch.Generator().manual_seed(5))
    ckpt.load_checkpoint(b, saved)
    b.generator.manual_seed(5)  # lose the draw state
    b.step(make_batch(2))
    assert any(not torch.allclose(trained(a)[n], p) for n, p in trained(b).items())


def test_nan_loss_stops_with_the_step_number_and_keeps_the_last_checkpoint(tmp_path):
    trainer = make_trainer()
    trainer.step(make_batch(0))
    good = ckpt.save_checkpoint(trainer, tmp_path)
    before = trained(trainer)
    with torch.no_grad():
        trainer.unet.conv_in.weight[0, 0, 0, 0] = float("nan")  # a frozen weight: the loss becomes NaN
    with pytest.raises(TrainingDivergedError, match="step 2") as info:
        trainer.step(make_batch(1))
    assert info.value.step == 2 and trainer.global_step == 1
    assert all(torch.equal(before[n], p) for n, p in trained(trainer).items())
    assert ckpt.latest_checkpoint(tmp_path) == good
    fresh = make_trainer()
    ckpt.load_checkpoint(fresh, good)
    assert all(torch.equal(before[n], p) for n, p in trained(fresh).items())


def test_infinite_gradient_stops_before_the_update():
    trainer = make_trainer()
    before = trained(trainer)
    terms = trainer.forward(make_batch(0))
    trainer.backward(terms)
    trainer.trainable[0].grad[..., 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match="gradient norm"):
        trainer.optimizer_step()
    assert all(torch.equal(before[n], p) for n, p in trained(trainer).items())


def test_bad_batches_are_refused_before_any_work():
    trainer = make_trainer()
    with pytest.raises(InputMismatchError, match="holds 8 frames.*16"):
        trainer.forward(make_batch(0, frames=8))
    batch = make_batch(0)
    batch.audio_embeds = batch.audio_embeds[:, :, :10]
    with pytest.raises(InputMismatchError, match="audio_embeds"):
        trainer.forward(batch)
    with pytest.raises(InputMismatchError, match="square"):
        trainer.forward(TrainBatch(torch.zeros(2, 16, 3, 64, 60), torch.zeros(2, 16, 3, 64, 60),
                                   torch.ones(64, 60), None, None))


def test_a_config_without_its_judges_is_refused():
    with pytest.raises(LatentSyncError, match="StableSyncNet.*LPIPS.*VideoMAE"):
        make_trainer(load_train_config(TINY_YAML, precision="fp32"))


def test_pinned_draws_make_the_step_deterministic():
    batch = make_batch(3)
    b, f = batch.gt_pixels.shape[:2]
    draws = StepDraws(vae_eps={k: torch.randn(b * f, 4, 8, 8) for k in ("gt", "masked", "ref")},
                      noise=torch.randn(b, 4, f, 8, 8), timesteps=torch.tensor([10, 900]))
    one = make_trainer(generator=torch.Generator().manual_seed(1)).forward(batch, draws)
    two = make_trainer(generator=torch.Generator().manual_seed(2)).forward(batch, draws)
    assert torch.equal(one.unet_input, two.unet_input) and torch.equal(one.pred_noise, two.pred_noise)
    assert not torch.equal(make_trainer().forward(batch).unet_input, one.unet_input)


# ---- checkpoints --------------------------------------------------------------------------------------
def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer()
    trainer.step(make_batch(0))
    first = ckpt.save_checkpoint(trainer, tmp_path)
    trainer.step(make_batch(1))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(trainer, tmp_path)
    assert os.listdir(tmp_path) == [os.path.basename(first)]
    assert ckpt.latest_checkpoint(tmp_path) == first
    monkeypatch.undo()
    resaved = ckpt.save_checkpoint(trainer, tmp_path)  # the same step saved again replaces it whole
    assert ckpt.save_checkpoint(trainer, tmp_path) == resaved
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]


def test_a_checkpoint_of_another_trainable_set_is_refused(tmp_path):
    trainer = make_trainer()
    saved = ckpt.save_checkpoint(trainer, tmp_path)
    other = make_trainer(trainable="stage2_efficient")
    with pytest.raises(Exception, match="does not fit this training run"):
        ckpt.load_checkpoint(other, saved)


# ---- LoRA and precisions ------------------------------------------------------------------------------
def test_lora_training_step_and_its_file_reproduce_the_trained_model(tmp_path):
    from latentsync_core.train.lora import apply_lora, remove_lora, save_lora

    trainer = make_trainer(recon_config(gradient_checkpointing=True, lr=1e-2), trainable="lora")
    base = {n: p.detach().clone() for n, p in trainer.unet.named_parameters() if not p.requires_grad}
    for seed in range(2):
        trainer.step(make_batch(seed))
    assert all(torch.equal(base[n], p) for n, p in trainer.unet.named_parameters() if not p.requires_grad)
    path = save_lora(tmp_path / "me.safetensors", trainer.unet, {"resolution": 256, "steps": 2, "dataset_size": 2})
    x, t, audio = torch.randn(1, 13, 16, 8, 8), torch.tensor([500]), torch.randn(1, 16, 50, 384)
    trainer.unet.eval()
    with torch.no_grad():
        want = trainer.unet(x, t, audio)
        fresh = load_training_unet(TINY_YAML, UNET_CKPT)
        plain = fresh(x, t, audio)
        apply_lora(fresh, path, strength=1.0, merge=False)
        hooked = fresh(x, t, audio)
        remove_lora(fresh)
        apply_lora(fresh, path, strength=1.0, merge=True)
        merged = fresh(x, t, audio)
    moved = float((plain - want).abs().max())
    assert moved > 0.05  # training moved the output
    torch.testing.assert_close(hooked, want, rtol=1e-6, atol=1e-6)
    # merging rounds W + ΔW once in fp32; the random tiny U-Net amplifies that to ~1e-4 (fp64: 2e-4 away too)
    assert float((merged - want).abs().max()) < 0.01 * moved


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_keep_fp32_trainable_weights(precision):
    trainer = make_trainer(recon_config(precision=precision))
    result = trainer.step(make_batch(0))
    assert all(p.dtype == torch.float32 for p in trainer.trainable)
    frozen = {p.dtype for p in trainer.unet.parameters() if not p.requires_grad}
    assert frozen == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
    assert torch.isfinite(torch.tensor(result.losses["total"]))
    assert (trainer.scaler is not None) == (precision == "fp16")


def test_missing_judge_files_are_named_with_urls_before_any_download(tmp_path, monkeypatch):
    from latentsync_core.train.judges import load_judges

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelMissingError) as info:
        load_judges(load_train_config("stage2"), tmp_path)
    text = str(info.value)
    for name in ("stable_syncnet.pt", "auxiliary/vgg16-397923af.pth", "auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth"):
        assert os.path.join(str(tmp_path), *name.split("/")) in text
        assert f"ByteDance/LatentSync-1.5/resolve/main/{name}" in text
    # stage2_efficient (TREPA off) does not ask for the VideoMAE
    with pytest.raises(ModelMissingError) as info:
        load_judges(load_train_config("stage2_efficient"), tmp_path)
    assert "vit_g" not in str(info.value)


def test_decoding_in_checkpointed_frame_chunks_changes_nothing():
    """frame_chunk (VAE decode + LPIPS per chunk of frames, recomputed in the backward pass) is a memory
    option only: losses and gradients equal decoding all B*F frames at once (the official way)."""
    from train_golden import golden_lpips

    batch = make_batch(4)
    b, f = batch.gt_pixels.shape[:2]
    g = torch.Generator().manual_seed(4)
    draws = StepDraws(vae_eps={k: torch.randn(b * f, 4, 8, 8, generator=g) for k in ("gt", "masked", "ref")},
                      noise=torch.randn(b, 4, f, 8, 8, generator=g), timesteps=torch.tensor([100, 700]))
    results = []
    for chunk in (0, 5):  # 32 frames: chunks of 5 leave a short last one
        config = recon_config(perceptual_loss_weight=0.1, frame_chunk=chunk)
        trainer = make_trainer(config, lpips=golden_lpips())
        terms = trainer.forward(batch, draws)
        trainer.backward(terms)
        results.append((terms.values(), {n: p.grad.clone() for n, p in trainer.unet.named_parameters() if p.grad is not None}))
    (losses0, grads0), (losses5, grads5) = results
    assert losses0["lpips"] > 0 and losses5 == pytest.approx(losses0, rel=1e-6)
    worst = max(float((grads5[n] - g0).norm() / g0.norm()) for n, g0 in grads0.items() if float(g0.norm()) > 1e-6)
    assert worst <= 2e-3  # fp32 summation order only (the parity tests' per-tensor bound)
