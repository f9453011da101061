"""The LatentSync denoising loop: aligned faces + per-frame audio windows -> lip-synced faces.

Same semantics as the official ``LipsyncPipeline.__call__`` (release 1.5): per 16-frame chunk the faces
are normalised to [-1, 1]; masked face = face x mask (mask 1 = keep, 0 = mouth to regenerate);
masked faces, then the unmasked faces (the reference), are VAE-encoded (posterior sampled with the
run's generator, or its mean) and scaled by 0.18215; the mask is nearest-downsampled to the latent
size; the U-Net sees ``[latents | mask | masked latents | reference latents]``; DDIM with
classifier-free guidance (all-zero audio is the unconditional half, first in the batch); the decoded
faces keep the original pixels outside the mask. One noise frame ``[1,4,1,h,w]`` drawn first from the
generator is repeated over every frame of the video.

Differences from the official code that do not change the result in float32: latents stay float32
between scheduler steps (the U-Net runs in the model dtype), decoded faces (in 0..1 units, NOT
clamped: paste-back resizes first and clamps after, as the official restore) move to the host as
float16 after each chunk (device memory stays flat in video length), frames
without a face skip the model and come back unchanged, and the video is matched to the audio length
by :func:`latentsync_core.length.ping_pong_indices`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .constants import (
    AUDIO_EMBED_DIM,
    AUDIO_TOKENS_PER_FRAME,
    CHUNK_FRAMES,
    DDIM_SCHEDULER_CONFIG,
    DEFAULT_GUIDANCE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    LATENT_CHANNELS,
    RESOLUTION,
    VAE_DOWNSCALE,
)
from .deepcache import DeepCache
from .errors import FaceError, InputMismatchError, LatentSyncError
from .face.paste import fixed_mask
from .finite import check_finite
from .length import ping_pong_indices
from .sampling import SAMPLERS, chunk_activation_bytes, group_chunks, make_scheduler, resolve_chunk_batch
from .types import FrameAudio
from .vae import VAE_ENCODE_MODES, LatentVae, as_latent_vae

log = logging.getLogger(__name__)

def faces_to_pixels(faces: torch.Tensor) -> torch.Tensor:
    """Faces ``[F,H,W,3]`` (uint8 0..255 or float 0..1) -> float32 ``[F,3,H,W]`` in [-1, 1] (official
    ``normalize(image / 255.0)``)."""
    x = faces.float() / 255.0 if faces.dtype == torch.uint8 else faces.float()
    return ((x - 0.5) / 0.5).permute(0, 3, 1, 2)


@dataclass
class SyncResult:
    """faces: ``out_dtype`` (float16 by default) ``[N,res,res,3]`` on the CPU, 0..1 units but not clamped (the decoder can overshoot), index-aligned with the (length-matched)
    input; synced: bool ``[N]`` which of them went through the model; final_latents: per chunk
    ``[1,4,F,h,w]`` float32 (CPU), only when asked for."""

    faces: torch.Tensor
    synced: np.ndarray
    final_latents: list[torch.Tensor] = field(default_factory=list)


class LipSyncPipeline:
    """LatentSync inference on aligned faces (``sync_faces``) or on whole frames + audio (``__call__``).

    unet:   a module with ``forward(sample [B,13,F,h,w], timestep, encoder_hidden_states [B*F,50,384])
            -> [B,4,F,h,w]`` (``latentsync_core.load_unet``); its device and dtype are the run's.
    vae:    a diffusers ``AutoencoderKL``, ComfyUI's ``VAE`` or a :mod:`latentsync_core.vae` adapter.
    whisper / aligner: only needed by ``__call__`` (``load_whisper``, ``FaceAligner``).
    """

    def __init__(self, unet: torch.nn.Module, vae, whisper=None, scheduler_config: dict | None = None,
                 aligner=None, resolution: int = RESOLUTION):
        self.unet = unet  # may be compiled (compile_unet); self.eager_unet is the plain module
        self.eager_unet = getattr(unet, "_orig_mod", unet)
        self.resolution = resolution  # face size of the aligner __call__ builds (256: 1.5, 512: 1.6)
        param = next(unet.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.vae: LatentVae = as_latent_vae(vae, self.device)
        self.whisper = whisper
        self.aligner = aligner
        self.scheduler_config = dict(scheduler_config or DDIM_SCHEDULER_CONFIG)

    # -- helpers ------------------------------------------------------------------------------------
    def make_scheduler(self, steps: int, sampler: str = "ddim"):
        """A fresh scheduler (``ddim``: official; ``dpmpp_2m``: opt-in), timesteps on the CPU."""
        return make_scheduler(sampler, self.scheduler_config, steps)

    def draw_noise(self, generator: torch.Generator, resolution: int, steps: int = DEFAULT_STEPS,
                   sampler: str = "ddim") -> torch.Tensor:
        """The run's one noise frame float32 ``[1,4,1,h,w]`` (repeated over every frame), drawn from
        ``generator`` before anything else, as the official code does."""
        latent_hw = resolution // VAE_DOWNSCALE
        noise = torch.randn((1, LATENT_CHANNELS, 1, latent_hw, latent_hw), generator=generator, dtype=torch.float32)
        return noise * self.make_scheduler(steps, sampler).init_noise_sigma

    def _unet(self, sample, t, audio, compiled: bool = True):
        out = (self.unet if compiled else self.eager_unet)(sample, t, encoder_hidden_states=audio)
        return getattr(out, "sample", out)

    # -- the loop -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sync_faces(
        self,
        faces: torch.Tensor,
        audio_chunks: torch.Tensor | FrameAudio,
        *,
        source_index: Sequence[int] | np.ndarray | None = None,
        found: Sequence[bool] | np.ndarray | None = None,
        skip: Sequence[bool] | np.ndarray | None = None,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        seed: int = DEFAULT_SEED,
        generator: torch.Generator | None = None,
        initial_latents: torch.Tensor | None = None,
        vae_encode: str = "sample",
        deepcache: int = 0,
        chunk_batch: int | str = "auto",
        sampler: str = "ddim",
        latent_overrides: Sequence[dict] | None = None,
        return_latents: bool = False,
        out_dtype: torch.dtype = torch.float16,
        progress: Callable[[int, int], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> SyncResult:
        """Lip-sync aligned faces to per-frame audio windows.

        faces:          ``[V,res,res,3]`` uint8 or float 0..1 (host or device): the aligned faces.
        audio_chunks:   a ``FrameAudio`` (windows cut per chunk) or float ``[N,50,384]``: one audio window
                        per OUTPUT frame.
        source_index:   int ``[N]``: which face each output frame uses (default: the length rule,
                        :func:`ping_pong_indices`); faces are gathered per chunk, never all at once.
        found:          bool ``[V]`` per input face; False = no face: not sent through the model, the
                        output is the input face.
        skip:           optional bool ``[N]`` per OUTPUT frame; True = not sent through the model, the
                        output is the input face (e.g. silent frames: ``audio.silent_frames``).
        steps/guidance: DDIM steps (>= 1) and CFG scale (>= 1; 1 = no unconditional pass).
        seed/generator: the run's randomness (a CPU generator; noise is identical on every device).
        initial_latents: ``[1,4,1,h,w]`` (repeated) or ``[1,4,N',h,w]`` with N' >= number of synced
                        frames: replaces the drawn noise (nothing is drawn for it then, so the
                        generator goes straight to the VAE posterior samples).
        vae_encode:     "sample" (official: posterior sample with the generator) or "mean".
        deepcache:      0/1 = off, 2..5 = DeepCache interval (full U-Net pass every n-th step).
        chunk_batch:    16-frame chunks per U-Net call (int >= 1; "auto"/0: from free CUDA memory, 1 on
                        the CPU). Exact: each chunk keeps its own GroupNorm statistics, noise and
                        schedule; chunks of unequal length (the short last one) run in separate calls.
        sampler:        "ddim" (official) or "dpmpp_2m" (opt-in, faster, NOT the official result); a
                        fresh scheduler for every U-Net batch of chunks.
        latent_overrides: per chunk, optional ``masked_image_latents`` / ``ref_latents`` ``[1,4,F,h,w]``
                        replacing the VAE encodings (reproducing a reference run exactly).
        out_dtype:      dtype of the returned faces (float16: half the host memory; float32: what a
                        ComfyUI IMAGE holds, so the node returns it without another copy).
        progress:       called with (done, total) after every U-Net step; total = chunks x steps and
                        done counts chunk-steps (a call on k chunks advances it by k).
        check_interrupt: called before every U-Net call; raise from it to stop (nothing is left
                        changed: the U-Net is unwrapped and the next run starts clean).
        """
        steps, guidance, deepcache = int(steps), float(guidance), int(deepcache or 0)
        if steps < 1:
            raise LatentSyncError(f"steps must be at least 1 (got {steps}); 20 is the official setting.")
        if not guidance >= 1.0:
            raise LatentSyncError(f"guidance must be at least 1.0 (got {guidance}); 1.5 is the official setting.")
        if sampler not in SAMPLERS:
            raise LatentSyncError(f"sampler must be one of {SAMPLERS}, not {sampler!r}.")
        if vae_encode not in VAE_ENCODE_MODES:
            raise LatentSyncError(f"vae_encode must be one of {VAE_ENCODE_MODES}, not {vae_encode!r}.")
        if vae_encode == "sample" and not self.vae.can_sample:
            vae_encode = "mean"
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
            raise InputMismatchError(f"Aligned faces must be [N,res,res,3] square images, got {tuple(faces.shape)}.")
        resolution = int(faces.shape[1])
        if resolution % VAE_DOWNSCALE:
            raise InputMismatchError(f"Face resolution {resolution} is not a multiple of {VAE_DOWNSCALE}.")
        windows = _audio_windows(audio_chunks)
        num_out = int(audio_chunks.num_frames if hasattr(audio_chunks, "num_frames") else len(audio_chunks))
        index = (ping_pong_indices(len(faces), num_out) if source_index is None
                 else np.asarray(source_index, dtype=np.int64))
        if len(index) != num_out or (num_out and (index.min() < 0 or index.max() >= len(faces))):
            raise InputMismatchError(f"source_index must hold {num_out} indices into {len(faces)} faces.")
        found_in = np.ones(len(faces), bool) if found is None else np.asarray(found, dtype=bool)
        if len(found_in) != len(faces):
            raise InputMismatchError(f"found has {len(found_in)} entries for {len(faces)} faces.")
        synced = found_in[index]
        if not synced.any():
            raise FaceError("No face was found in any frame: use a video where a face is visible.")
        if skip is not None:
            skip = np.asarray(skip, dtype=bool)
            if skip.shape != (num_out,):
                raise InputMismatchError(f"skip must hold {num_out} flags (one per output frame), got {skip.shape}.")
            synced &= ~skip
        todo = np.flatnonzero(synced)  # output frames that go through the model

        generator = generator if generator is not None else torch.Generator("cpu").manual_seed(int(seed))
        latent_hw = resolution // VAE_DOWNSCALE
        do_cfg = guidance > 1.0
        if initial_latents is not None:
            # given noise is not drawn again: a run split into segments that share one generator (the
            # streaming job) then draws exactly what one run over the whole video draws
            noise = initial_latents.float()
        else:
            noise = self.draw_noise(generator, resolution, steps, sampler)
        # [res,res] float32, 1 = keep. The official code multiplies float32 pixels by a float64 mask and
        # casts back; the mask's values are float32 numbers (256 px: 0/1; 512 px: k/255 in float32), so
        # the float64 product of two float32 numbers is exact and rounds to the same float32 as the
        # correctly rounded float32 product: bit-identical, and devices without float64 (MPS) work.
        mask = torch.tensor(fixed_mask(resolution), dtype=torch.float32).to(self.device)
        cache = DeepCache(self.eager_unet, deepcache)
        if cache.enabled and not hasattr(self.eager_unet, "down_blocks"):
            raise LatentSyncError("DeepCache needs the LatentSync U-Net (down_blocks/up_blocks); turn it off.")

        out = torch.empty((num_out, resolution, resolution, 3), dtype=out_dtype)
        copy_idx = np.flatnonzero(~synced)
        if len(copy_idx):
            out[torch.from_numpy(copy_idx)] = _faces01(faces[torch.from_numpy(index[copy_idx])]).to(out_dtype).cpu()

        chunk_rows = [todo[i:i + CHUNK_FRAMES] for i in range(0, len(todo), CHUNK_FRAMES)]
        if not chunk_rows:  # every face frame skipped (silence): nothing goes through the model
            return SyncResult(faces=out, synced=synced, final_latents=[])
        total = len(chunk_rows) * steps
        per_chunk = chunk_activation_bytes(_base_channels(self.eager_unet), latent_hw, self.dtype, do_cfg)
        per_call = resolve_chunk_batch(chunk_batch, self.device, per_chunk * (2 if cache.enabled else 1),
                                       len(chunk_rows))
        finals = []
        done = 0
        with cache.active():
            for group in group_chunks([len(r) for r in chunk_rows], per_call):
                # per chunk, in chunk order: faces, mask, VAE encodes (masked then reference: the
                # generator's draws are those of one chunk at a time) and the chunk's noise
                prepared = [self._prepare_chunk(c, chunk_rows[c], faces, index, mask, noise, latent_hw,
                                                vae_encode, generator, latent_overrides, len(chunk_rows))
                            for c in group]
                latents = torch.cat([p.latents for p in prepared])  # [k,4,n,h,w]
                cond = torch.cat([p.cond for p in prepared]).to(self.dtype)  # [k,9,n,h,w]
                audio = torch.cat([windows(p.rows) for p in prepared])  # [k*n,50,384]
                audio = audio.to(self.device, self.dtype)
                k = len(prepared)
                # a compiled U-Net sees one shape per run: full chunks, the usual batch, no DeepCache
                compiled = not cache.enabled and k == per_call and len(prepared[0].rows) == CHUNK_FRAMES
                if do_cfg:  # unconditional (all-zero audio) half first
                    audio = torch.cat([torch.zeros_like(audio), audio])
                    cond = torch.cat([cond, cond])
                # the U-Net input is built once; each step only writes the latents into channels 0..3
                model_in = torch.cat([torch.empty_like(cond[:, :LATENT_CHANNELS]), cond], dim=1)
                del cond
                scheduler = self.make_scheduler(steps, sampler)  # fresh: no sampler state crosses calls
                step_t = [int(t) for t in scheduler.timesteps]  # host ints for the scheduler, no syncs
                unet_t = scheduler.timesteps.to(self.device)  # device copies for the U-Net
                for j, t in enumerate(step_t):
                    if check_interrupt is not None:
                        check_interrupt()
                    cache.step = j
                    scaled = scheduler.scale_model_input(latents, t).to(self.dtype)
                    model_in[:k, :LATENT_CHANNELS] = scaled
                    if do_cfg:
                        model_in[k:, :LATENT_CHANNELS] = scaled
                    pred = self._unet(model_in, unet_t[j], audio, compiled).float()
                    if do_cfg:
                        uncond, audio_pred = pred.chunk(2)
                        pred = uncond + guidance * (audio_pred - uncond)
                    latents = scheduler.step(pred, t, latents).prev_sample
                    done += k
                    if progress is not None:
                        progress(done, total)
                del model_in, audio, pred

                for i, p in enumerate(prepared):
                    chunk_latents = check_finite(latents[i:i + 1], "unet", p.where)
                    if return_latents:
                        finals.append(chunk_latents.cpu())
                    decoded = check_finite(self.vae.decode(chunk_latents[0].permute(1, 0, 2, 3)),  # [n,3,res,res]
                                           "vae_decode", p.where)
                    keep = mask  # official: decoded * (1 - mask) + original * mask
                    merged = decoded * (1 - keep) + p.pixels * keep
                    merged = (merged / 2 + 0.5).permute(0, 2, 3, 1)  # unclamped: paste-back resizes, then clamps
                    out[torch.from_numpy(p.rows)] = merged.to(out_dtype).cpu()
                    del decoded, merged
                del latents, prepared

        return SyncResult(faces=out, synced=synced, final_latents=finals)

    def _prepare_chunk(self, c, rows, faces, index, mask, noise, latent_hw, vae_encode, generator,
                       latent_overrides, num_chunks=1) -> _Chunk:
        """One chunk's pixels, conditioning ``[1,9,n,h,w]`` (mask | masked latents | reference latents)
        and initial latents ``[1,4,n,h,w]``; the VAE encodes draw from ``generator`` masked then ref."""
        n = len(rows)
        resolution = int(faces.shape[1])
        chunk_faces = faces[torch.from_numpy(index[rows]).to(faces.device)].to(self.device)
        pixels = faces_to_pixels(chunk_faces)  # float32 [n,3,res,res] in [-1,1]
        masked = pixels * mask  # = official float32 x float64 mask, cast back (see sync_faces)
        mask1 = mask.expand(n, 1, resolution, resolution)
        mask_lat = F.interpolate(mask1, size=(latent_hw, latent_hw))  # nearest
        mask_lat = mask_lat.permute(1, 0, 2, 3).unsqueeze(0).float()  # [1,1,n,h,w]

        where = _where(c, num_chunks, rows)
        override = latent_overrides[c] if latent_overrides is not None else {}
        masked_lat = override.get("masked_image_latents")
        if masked_lat is None:
            masked_lat = _to_5d(check_finite(self.vae.encode(masked, vae_encode, generator), "vae_encode", where))
        ref_lat = override.get("ref_latents")
        if ref_lat is None:
            ref_lat = _to_5d(check_finite(self.vae.encode(pixels, vae_encode, generator), "vae_encode", where))
        masked_lat = masked_lat.to(self.device, torch.float32)
        ref_lat = ref_lat.to(self.device, torch.float32)

        start = int(c * CHUNK_FRAMES)
        if noise.shape[2] == 1:
            latents = noise.expand(-1, -1, n, -1, -1).to(self.device).clone()
        else:
            latents = noise[:, :, start:start + n].to(self.device).clone()
        cond = torch.cat([mask_lat, masked_lat, ref_lat], dim=1)
        return _Chunk(rows=rows, pixels=pixels, cond=cond, latents=latents, where=where)

    # -- the whole job ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, frames: np.ndarray, waveform: torch.Tensor, sample_rate: int, fps: float = 25.0,
                 **kwargs) -> np.ndarray:
        """Frames uint8 ``[V,H,W,3]`` RGB + audio -> lip-synced frames uint8 ``[N,H,W,3]``, N from the audio.

        Needs ``whisper`` (and builds a ``FaceAligner`` at ``resolution`` if no aligner was given);
        keyword arguments go to :meth:`sync_faces`.
        """
        from .audio import embed_audio
        from .face import FaceAligner, paste_back

        if self.whisper is None:
            raise LatentSyncError("LipSyncPipeline needs a whisper encoder (load_whisper) to run on audio.")
        chunks = embed_audio(self.whisper, waveform, sample_rate, fps=fps)
        aligner = self.aligner or FaceAligner(self.resolution)
        try:
            aligned = aligner.align(np.asarray(frames))
        finally:
            if self.aligner is None:
                aligner.close()
        index = ping_pong_indices(len(frames), chunks.num_frames)
        result = self.sync_faces(torch.from_numpy(np.asarray(aligned.faces)), chunks, source_index=index,
                                 found=aligned.found, **kwargs)
        return paste_back(np.asarray(frames)[index], result.faces.float().numpy(),
                          np.asarray(aligned.affines)[index], result.synced)


def _audio_windows(audio) -> Callable[[np.ndarray], torch.Tensor]:
    """``rows -> [len(rows),50,384]`` for a ``FrameAudio`` or a ``[N,50,384]`` window tensor (validated)."""
    if callable(getattr(audio, "windows", None)):  # a FrameAudio (duck-typed: the pack may be imported twice)
        return audio.windows
    audio = torch.as_tensor(audio)
    if audio.ndim != 3 or tuple(audio.shape[1:]) != (AUDIO_TOKENS_PER_FRAME, AUDIO_EMBED_DIM):
        raise InputMismatchError(
            f"Audio windows must be [N,{AUDIO_TOKENS_PER_FRAME},{AUDIO_EMBED_DIM}], got {tuple(audio.shape)}."
        )
    return lambda rows: audio[torch.from_numpy(np.asarray(rows, dtype=np.int64))]


@dataclass
class _Chunk:
    """One chunk ready for the U-Net: output rows, pixels ``[n,3,res,res]`` in [-1,1], conditioning
    ``[1,9,n,h,w]`` float32 and initial latents ``[1,4,n,h,w]`` float32 (all on the run's device)."""

    rows: np.ndarray
    pixels: torch.Tensor
    cond: torch.Tensor
    latents: torch.Tensor
    where: str = ""  # "chunk c/C, output frames a-b" for error messages


def _where(c: int, num_chunks: int, rows: np.ndarray) -> str:
    """``"chunk c+1/C, output frames a-b"``: chunk ``c`` holding output ``rows`` (for error messages)."""
    return f"chunk {c + 1}/{num_chunks}, output frames {int(rows[0])}-{int(rows[-1])}"


def _base_channels(unet: torch.nn.Module) -> int:
    """Width of the U-Net's first block (320 for LatentSync); 320 when the module does not say."""
    config = getattr(unet, "config", None)
    channels = getattr(config, "block_out_channels", None)
    return int(channels[0]) if channels else 320


def _faces01(faces: torch.Tensor) -> torch.Tensor:
    return faces.float() / 255.0 if faces.dtype == torch.uint8 else faces.float()


def _to_5d(latents: torch.Tensor) -> torch.Tensor:
    """``[F,4,h,w]`` -> ``[1,4,F,h,w]``."""
    return latents.permute(1, 0, 2, 3).unsqueeze(0)
