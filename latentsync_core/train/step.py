"""One official LatentSync training step (``scripts/train_unet.py``), with every random draw injectable.

Data flow for a batch of ``B`` samples of ``F`` (16) frames at ``H`` (256) px:

1. VAE posterior draws of the gt, masked (gt × keep-mask) and reference pixels -> latents
   ``[B, 4, F, H/8, W/8]`` (× 0.18215), no gradient.
2. Mixed noise ε, timesteps t; noisy latents; the 13-channel U-Net input
   ``cat(noisy 4, nearest-downsampled keep-mask 1, masked-image latents 4, reference latents 4)``.
3. ε̂ = U-Net(input, t, audio embeds); recon loss = MSE(ε̂, ε).
4. One-step x0 from ε̂; the frozen VAE decodes it **with gradient** -> pixels ``[B*F, 3, H, W]``.
5. LPIPS on the lower half, TREPA (VideoMAE features of 224² frames), SyncNet cosine BCE on the lower
   half; total = recon·w + sync·w + lpips·w + trepa·w (the official order).
6. Backward, clip the trainable gradients' 2-norm at ``max_grad_norm``, AdamW, lr schedule.

:class:`Trainer` holds the models, optimiser and schedule; ``step(batch, draws)`` runs 1-6.
``forward``/``backward``/``optimizer_step`` are the same step in parts (tests read the gradients
before clipping). A non-finite loss or gradient raises :class:`TrainingDivergedError` before any weight
changes, so the last saved checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..constants import LATENT_CHANNELS, LATENT_SCALE, VAE_DOWNSCALE
from ..errors import InputMismatchError, LatentSyncError
from ..precision import auto_precision
from .config import TrainConfig
from .diffusion import add_noise, alphas_cumprod, mixed_noise, predict_x0, sample_timesteps
from .trainable import select_trainable

SYNCNET_MEL_SHAPE = (1, 80, 52)  # Wav2Lip-style mel window of 16 frames at 25 fps
AUDIO_EMBED_SHAPE = (50, 384)  # whisper-tiny rows per video frame
VAE_DRAWS = ("gt", "masked", "ref")


class TrainingDivergedError(LatentSyncError):
    """The loss or the gradient became NaN/Inf; no weight was changed by this step."""

    def __init__(self, step: int, what: str):
        super().__init__(
            f"Training diverged at step {step}: the {what} is not finite. No weight was updated by this step; "
            f"resume from the last checkpoint with a lower learning rate (or fp32/bf16 instead of fp16)."
        )
        self.step = step


@dataclasses.dataclass
class TrainBatch:
    """One batch as the official ``UNetDataset`` makes it (float32, CPU or device).

    gt_pixels, ref_pixels: ``[B, F, 3, H, W]`` in [-1, 1] (the reference window is another part of the
    same clip, not masked). keep_mask: ``[H, W]`` (or ``[B, F, 1, H, W]``), **1 = keep**, 0 = the mouth
    region to regenerate (the official ``fixed_mask``; note: ComfyUI MASKs use the opposite polarity).
    mel: ``[B, 1, 80, 52]`` SyncNet audio window. audio_embeds: ``[B, F, 50, 384]`` whisper rows per frame.
    """

    gt_pixels: torch.Tensor
    ref_pixels: torch.Tensor
    keep_mask: torch.Tensor
    mel: torch.Tensor | None
    audio_embeds: torch.Tensor | None


@dataclasses.dataclass
class StepDraws:
    """The step's random numbers; any left None is drawn from the trainer's generator.

    vae_eps: ``{"gt", "masked", "ref"} -> [B*F, 4, h, w]`` standard normal (posterior sample = mean + std·eps).
    noise: ``[B, 4, F, h, w]`` the (mixed) noise, also the regression target. timesteps: ``[B]`` int64.
    """

    vae_eps: dict[str, torch.Tensor] | None = None
    noise: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None


@dataclasses.dataclass
class LossTerms:
    """Everything one forward pass computed (tensors keep their graph until ``backward``)."""

    total: torch.Tensor
    recon: torch.Tensor
    sync: torch.Tensor
    lpips: torch.Tensor
    trepa: torch.Tensor
    pred_noise: torch.Tensor  # [B, 4, F, h, w]
    pred_latents: torch.Tensor  # [B, 4, F, h, w] one-step x0
    pred_pixels: torch.Tensor | None  # [B*F, 3, H, W] decoded x0 (not clamped)
    unet_input: torch.Tensor  # [B, 13, F, h, w]
    noise: torch.Tensor
    timesteps: torch.Tensor
    gt_latents: torch.Tensor
    extras: dict[str, torch.Tensor]  # lpips_per_image [B*F], sync_sims [B], sync embeds, sync_loss_per_sample

    def values(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "recon", "sync", "lpips", "trepa")}


@dataclasses.dataclass
class StepResult:
    step: int  # the global step after this update (1 after the first)
    losses: dict[str, float]
    grad_norm: float  # 2-norm of the trainable gradients before clipping
    lr: float
    skipped: bool = False  # fp16: the GradScaler skipped a step with inf/NaN gradients (official behaviour)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: the pack's one precision rule (:func:`latentsync_core.precision.auto_precision`)."""
    return auto_precision(device) if precision == "auto" else precision


_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _distributed(world_size: int | None) -> tuple[int, int]:
    """(rank, world size) of this process: the process group's when one is initialised, else (0, 1);
    an explicit ``world_size`` only scales the learning rate (``scale_lr``) of a single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, world_size or 1


class Trainer:
    """The official stage-1/2 training loop's state and step.

    Args:
        unet: a :class:`~latentsync_core.unet.UNet3DConditionModel` (fp32 weights; trainable ones stay fp32).
        vae: a diffusers ``AutoencoderKL`` (or our ``DiffusersVae`` wrapper); frozen.
        config: a :class:`TrainConfig` (official values by default).
        syncnet / lpips / trepa_net: the frozen judges the config's loss weights need.
        trainable: parameters to optimise; default: the config's ``trainable_modules`` rule.
        generator: source of the draws a caller does not pin (CPU generator; saved in checkpoints).
    """

    def __init__(self, unet: nn.Module, vae: Any, config: TrainConfig, *, syncnet: nn.Module | None = None,
                 lpips: nn.Module | None = None, trepa_net: nn.Module | None = None,
                 trainable: list[nn.Parameter] | None = None, device: torch.device | str | None = None,
                 world_size: int | None = None, generator: torch.Generator | None = None):
        config.validate()
        self.config = config
        self.unet = unet
        self.vae = getattr(vae, "vae", vae)
        self.device = torch.device(device) if device is not None else next(unet.parameters()).device
        self.precision = resolve_precision(config.precision, self.device)
        self._check_judges(syncnet, lpips, trepa_net)
        self.syncnet, self.lpips, self.trepa_net = syncnet, lpips, trepa_net
        if trainable is None:
            trainable = select_trainable(unet, config.trainable_modules if config.use_motion_module else None)
        if not trainable:
            raise LatentSyncError("No trainable parameters.")
        self.trainable = trainable
        self.alphas_cumprod = alphas_cumprod()
        self.rank, self.world_size = _distributed(world_size)
        # official: each process seeds with seed + rank, so ranks draw different noise
        self.generator = generator or torch.Generator().manual_seed(config.seed + self.rank)
        self._prepare_models()
        self.model = self._wrap_ddp()
        lr = config.lr * self.world_size if config.scale_lr else config.lr
        self.optimizer = torch.optim.AdamW(trainable, lr=lr, betas=config.adam_betas, eps=config.adam_eps,
                                           weight_decay=config.weight_decay)
        from diffusers.optimization import get_scheduler  # diffusers is a dependency; the official scheduler table

        self.lr_scheduler = get_scheduler(config.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=config.lr_warmup_steps,
                                          num_training_steps=config.max_train_steps)
        use_scaler = self.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None
        self.global_step = 0

    # ---- set-up -------------------------------------------------------------------------------
    def _wrap_ddp(self) -> nn.Module:
        """Under ``torchrun`` (an initialised process group of more than one process) the U-Net runs inside
        DistributedDataParallel: gradients are averaged over the ranks in the backward pass, so every rank
        clips and steps the same gradient and the weights stay identical. One process: the U-Net itself."""
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return self.unet
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.unet, device_ids=ids, output_device=ids[0] if ids else None)

    def _check_judges(self, syncnet, lpips, trepa_net) -> None:
        missing = [name for name, needed, have in (
            ("a StableSyncNet (sync loss)", self.config.uses_syncnet, syncnet),
            ("LPIPS (perceptual loss)", self.config.uses_lpips, lpips),
            ("the VideoMAE feature net (TREPA loss)", self.config.uses_trepa, trepa_net),
        ) if needed and have is None]
        if missing:
            raise LatentSyncError(f"This training config needs {', '.join(missing)}; load it or set its loss weight to 0.")

    def _prepare_models(self) -> None:
        cfg = self.config
        self.unet.enable_gradient_checkpointing(cfg.gradient_checkpointing)
        self.unet.train()
        self.vae.requires_grad_(False).eval()
        if cfg.uses_decoded_pixels:
            self.vae.enable_gradient_checkpointing()  # official: always, when pixels are supervised
        half = _HALF.get(self.precision)
        if self.precision == "bf16":
            # frozen U-Net weights in bf16 (autocast computes in bf16 anyway): halves the base model's memory,
            # the whole U-Net for LoRA; trainable weights and AdamW state stay fp32. fp16 keeps the official
            # fp32 U-Net, whose GradScaler path expects it.
            trainable = {id(p) for p in self.trainable}
            for p in self.unet.parameters():
                if id(p) not in trainable and p.dtype == torch.float32:
                    p.data = p.data.to(half)
        for judge in (self.vae, self.syncnet, self.trepa_net):
            if judge is not None and half is not None:
                judge.to(dtype=half)  # official: frozen nets in fp16 in mixed precision
        for judge in (self.syncnet, self.lpips, self.trepa_net):
            if judge is not None:
                judge.requires_grad_(False).eval()

    @property
    def frozen_dtype(self) -> torch.dtype:
        return _HALF.get(self.precision, torch.float32)

    def _autocast(self):
        half = _HALF.get(self.precision)
        if half is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=half)

    # ---- checks -------------------------------------------------------------------------------
    def check_batch(self, batch: TrainBatch) -> None:
        """Clear errors before any heavy work."""
        cfg = self.config
        gt = batch.gt_pixels
        if gt.dim() != 5 or gt.shape[2] != 3:
            raise InputMismatchError(f"gt_pixels must be [B, F, 3, H, W], got {tuple(gt.shape)}.")
        b, f, _, h, w = gt.shape
        if f != cfg.num_frames:
            raise InputMismatchError(
                f"A training sample holds {f} frames; LatentSync trains on windows of {cfg.num_frames} frames "
                f"(the SyncNet and VideoMAE see exactly {cfg.num_frames}). Use clips of at least {cfg.num_frames} frames."
            )
        if h != w or h % VAE_DOWNSCALE:
            raise InputMismatchError(f"Faces must be square with a side divisible by 8, got {h}x{w}.")
        if tuple(batch.ref_pixels.shape) != tuple(gt.shape):
            raise InputMismatchError(f"ref_pixels {tuple(batch.ref_pixels.shape)} must match gt_pixels {tuple(gt.shape)}.")
        if batch.audio_embeds is not None and tuple(batch.audio_embeds.shape) != (b, f, *AUDIO_EMBED_SHAPE):
            raise InputMismatchError(
                f"audio_embeds must be [B, F, 50, 384] = {[b, f, *AUDIO_EMBED_SHAPE]}, got {list(batch.audio_embeds.shape)}."
            )
        if cfg.uses_syncnet and (batch.mel is None or tuple(batch.mel.shape) != (b, *SYNCNET_MEL_SHAPE)):
            got = None if batch.mel is None else list(batch.mel.shape)
            raise InputMismatchError(f"The sync loss needs mel [B, 1, 80, 52] = {[b, *SYNCNET_MEL_SHAPE]}, got {got}.")

    # ---- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        """pixels ``[N, 3, H, W]`` in [-1, 1] -> posterior sample × 0.18215, ``[N, 4, H/8, W/8]`` float32."""
        # contiguous: torch's CPU GroupNorm on channels-last input (what an NHWC -> NCHW permute gives)
        # computes the variance in one pass and lost 4e-3 on the reference data (2.9e-6 contiguous)
        pixels = pixels.to(self.device, self.frozen_dtype).contiguous()
        moments = self._per_frames(lambda x: torch.cat(self._posterior(x), 1), pixels)  # chunks: peak memory only
        mean, std = moments.chunk(2, dim=1)
        if eps is None:
            eps = torch.randn(mean.shape, generator=self.generator)  # one draw for all frames, chunked or not
        sample = mean + std * eps.to(self.device, mean.dtype)
        return sample.float() * LATENT_SCALE

    def _posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        return posterior.mean, posterior.std

    def forward(self, batch: TrainBatch, draws: StepDraws | None = None) -> LossTerms:
        """Steps 1-5: the losses of one batch, with their graph."""
        self.check_batch(batch)
        cfg, dev, draws = self.config, self.device, draws or StepDraws()
        b, f, _, h, w = batch.gt_pixels.shape
        frames = lambda x: x.to(dev, torch.float32).reshape(b * f, *x.shape[2:])  # noqa: E731  "b f c h w -> (b f) c h w"
        videos = lambda x: x.reshape(b, f, *x.shape[1:]).transpose(1, 2)  # noqa: E731  "(b f) c h w -> b c f h w"
        gt = frames(batch.gt_pixels)
        mask = batch.keep_mask.to(dev, torch.float32)
        mask = mask.expand(b, f, 1, h, w).reshape(b * f, 1, h, w) if mask.dim() == 2 else frames(mask)
        eps = draws.vae_eps or {}
        gt_latents = videos(self.encode(gt, eps.get("gt")))
        masked_latents = videos(self.encode(gt * mask, eps.get("masked")))
        ref_latents = videos(self.encode(frames(batch.ref_pixels), eps.get("ref")))
        latent_mask = videos(F.interpolate(mask, size=h // VAE_DOWNSCALE))  # nearest, as the official default

        noise = draws.noise
        if noise is None:
            noise = mixed_noise(tuple(gt_latents.shape), cfg.mixed_noise_alpha if cfg.use_mixed_noise else None,
                                self.generator)
        timesteps = draws.timesteps if draws.timesteps is not None else sample_timesteps(b, self.generator)
        noise, timesteps = noise.to(dev, torch.float32), timesteps.to(dev, torch.int64)
        noisy = add_noise(self.alphas_cumprod, gt_latents, noise, timesteps)
        unet_input = torch.cat([noisy, latent_mask, masked_latents, ref_latents], dim=1)
        audio = None if batch.audio_embeds is None else batch.audio_embeds.to(dev, torch.float32)
        with self._autocast():
            pred_noise = self.model(unet_input, timesteps, audio)
        return self._losses(batch, gt, unet_input, noisy, noise, timesteps, gt_latents, pred_noise)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample

    def _per_frames(self, fn, *frames: torch.Tensor) -> torch.Tensor:
        """``fn`` over ``[N, ...]`` frame batches, ``config.frame_chunk`` frames per call, each call
        checkpointed while gradients are recorded: the backward pass recomputes one chunk at a time, so the
        VAE decoder's and LPIPS' full-resolution activations are held for one chunk instead of all ``B*F``
        frames. Both act on each frame alone, so the result is the same; 0 = all frames in one call."""
        chunk, n = self.config.frame_chunk, frames[0].shape[0]
        if chunk <= 0 or chunk >= n:
            return fn(*frames)
        outs = []
        for start in range(0, n, chunk):
            parts = [x[start:start + chunk] for x in frames]
            if torch.is_grad_enabled():
                outs.append(checkpoint(fn, *parts, use_reentrant=False))
            else:
                outs.append(fn(*parts))
        return torch.cat(outs)

    def _losses(self, batch, gt, unet_input, noisy, noise, timesteps, gt_latents, pred_noise) -> LossTerms:
        cfg = self.config
        b, f, _, h, _ = batch.gt_pixels.shape
        zero = pred_noise.new_zeros((), dtype=torch.float32)
        recon = F.mse_loss(pred_noise.float(), noise.float()) if cfg.recon_loss_weight != 0 else zero
        pred_latents = predict_x0(self.alphas_cumprod, pred_noise, timesteps, noisy)
        lpips = sync = trepa = zero
        pixels, extras = None, {}
        if cfg.uses_decoded_pixels:
            latents = pred_latents.transpose(1, 2).reshape(b * f, LATENT_CHANNELS, *pred_latents.shape[3:])
            pixels = self._per_frames(self._decode, (latents / LATENT_SCALE).to(self.frozen_dtype))
            lower = slice(h // 2, None)
            if cfg.uses_lpips:
                per_image = self._per_frames(self.lpips, pixels[:, :, lower].float(), gt[:, :, lower].float()).reshape(-1)
                extras["lpips_per_image"] = per_image
                lpips = per_image.mean()
            if cfg.uses_trepa:
                from .trepa import trepa_feature_loss, trepa_features

                as_video = lambda x: x.reshape(b, f, *x.shape[1:]).transpose(1, 2)  # noqa: E731  "(b f) c h w -> b c f h w"
                fake = trepa_features(self.trepa_net, as_video(pixels))
                real = trepa_features(self.trepa_net, as_video(gt))
                extras.update(trepa_feats_fake=fake, trepa_feats_real=real)
                trepa = trepa_feature_loss(fake.float(), real.float())
            if cfg.uses_syncnet:
                from .syncnet import cosine_loss

                visual = pixels.reshape(b, f * pixels.shape[1], *pixels.shape[2:])[:, :, lower]  # "(b f) c h w -> b (f c) h w"
                vision, audio = self.syncnet(visual, batch.mel.to(self.device, pixels.dtype))
                per_sample = cosine_loss(vision.float(), audio.float(), torch.ones((b, 1), device=self.device))
                extras.update(sync_vision_embeds=vision, sync_audio_embeds=audio, sync_loss_per_sample=per_sample,
                              sync_sims=F.cosine_similarity(vision.float(), audio.float()))
                sync = per_sample.mean()
        total = (recon * cfg.recon_loss_weight + sync * cfg.sync_loss_weight + lpips * cfg.perceptual_loss_weight
                 + trepa * cfg.trepa_loss_weight)
        return LossTerms(total=total, recon=recon, sync=sync, lpips=lpips, trepa=trepa, pred_noise=pred_noise,
                         pred_latents=pred_latents, pred_pixels=pixels, unet_input=unet_input, noise=noise,
                         timesteps=timesteps, gt_latents=gt_latents, extras=extras)

    def backward(self, terms: LossTerms) -> None:
        """Zero the gradients and back-propagate the total (scaled by the GradScaler in fp16)."""
        if not torch.isfinite(terms.total.detach()):
            raise TrainingDivergedError(self.global_step + 1, f"loss ({terms.values()})")
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(terms.total) if self.scaler is not None else terms.total).backward()

    def optimizer_step(self) -> tuple[float, bool]:
        """Clip (after unscaling), AdamW, lr schedule; returns (gradient norm before clipping, skipped)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm))
        skipped = False
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips the update when a gradient is inf/NaN
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        else:
            if not math.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDivergedError(self.global_step + 1, "gradient norm")
            self.optimizer.step()
        self.lr_scheduler.step()
        self.global_step += 1
        return norm, skipped

    def step(self, batch: TrainBatch, draws: StepDraws | None = None) -> StepResult:
        """One full optimisation step."""
        lr = self.optimizer.param_groups[0]["lr"]
        terms = self.forward(batch, draws)
        self.backward(terms)
        norm, skipped = self.optimizer_step()
        return StepResult(step=self.global_step, losses=terms.values(), grad_norm=norm, lr=lr, skipped=skipped)
