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
by :func:`latentsync_core.timing.ping_pong_indices`.
"""

from __future__ import annotations

import logging
import math
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
    DEFAULT_STEPS,
    LATENT_CHANNELS,
    RESOLUTION,
    VAE_DOWNSCALE,
)
from .deepcache import DeepCache
from .errors import FaceError, InputMismatchError, LatentSyncError
from .face.paste import fixed_mask
from .finite import check_finite
from .options import MAX_CHUNK_BATCH, SamplingOptions
from .sampling import chunk_activation_bytes, group_chunks, make_scheduler, resolve_chunk_batch
from .timing import ping_pong_indices
from .types import FrameAudio
from .vae import LatentVae, as_latent_vae

log = logging.getLogger(__name__)
_DEFAULTS = SamplingOptions()  # the option table's defaults (official settings)

def faces_to_pixels(faces: torch.Tensor) -> torch.Tensor:
    """Faces ``[F,H,W,3]`` (uint8 0..255 or float 0..1) -> float32 ``[F,3,H,W]`` in [-1, 1] (official
    ``normalize(image / 255.0)``)."""
    x = faces.float() / 255.0 if faces.dtype == torch.uint8 else faces.float()
    return ((x - 0.5) / 0.5).permute(0, 3, 1, 2)


@dataclass
class SyncResult:
    """faces: ``out_dtype`` (float16 by default) ``[N,res,res,3]`` on the CPU, 0..1 units but not clamped (the decoder can overshoot), index-aligned with the (length-matched)
    input; generated: bool ``[N]`` which of them went through the model (the others are the input face); final_latents: per chunk
    ``[1,4,F,h,w]`` float32 (CPU), only when asked for."""

    faces: torch.Tensor
    generated: np.ndarray
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
    def make_scheduler(self, steps: int, sampler: str = _DEFAULTS.sampler):
        """A fresh scheduler (``ddim``: official; ``dpmpp_2m``: opt-in), timesteps on the CPU."""
        return make_scheduler(sampler, self.scheduler_config, steps)

    def draw_noise(self, generator: torch.Generator, resolution: int, steps: int = DEFAULT_STEPS,
                   sampler: str = _DEFAULTS.sampler) -> torch.Tensor:
        """The run's one noise frame float32 ``[1,4,1,h,w]`` (repeated over every frame), drawn from
        ``generator`` before anything else, as the official code does."""
        latent_hw = resolution // VAE_DOWNSCALE
        noise = torch.randn((1, LATENT_CHANNELS, 1, latent_hw, latent_hw), generator=generator, dtype=torch.float32)
        return noise * self.make_scheduler(steps, sampler).init_noise_sigma

    def _unet(self, sample, t, audio, compiled: bool = True):
        out = (self.unet if compiled else self.eager_unet)(sample, t, encoder_hidden_states=audio)
        return getattr(out, "sample", out)

    # -- the loop -----------------------------------------------------------------------------------
    def job(self, resolution: int, options: SamplingOptions | None = None, **kwargs) -> SamplingJob:
        """A :class:`SamplingJob` of this pipeline for faces of ``resolution`` px (keywords: see there)."""
        return SamplingJob(self, resolution, options or SamplingOptions(), **kwargs)

    @torch.no_grad()
    def sync_faces(
        self,
        faces: torch.Tensor,
        audio_windows: torch.Tensor | FrameAudio,
        *,
        source_index: Sequence[int] | np.ndarray | None = None,
        found: Sequence[bool] | np.ndarray | None = None,
        skip: Sequence[bool] | np.ndarray | None = None,
        steps: int = _DEFAULTS.steps,
        guidance: float = _DEFAULTS.guidance,
        seed: int = _DEFAULTS.seed,
        generator: torch.Generator | None = None,
        initial_latents: torch.Tensor | None = None,
        vae_encode: str = _DEFAULTS.vae_encode,
        deepcache: int = _DEFAULTS.deepcache,
        chunk_batch: int | str = _DEFAULTS.chunk_batch,
        sampler: str = _DEFAULTS.sampler,
        latent_overrides: Sequence[dict] | None = None,
        return_latents: bool = False,
        out_dtype: torch.dtype = torch.float16,
        progress: Callable[[int, int], None] | None = None,
        check_interrupt: Callable[[], None] | None = None,
    ) -> SyncResult:
        """Lip-sync aligned faces to per-frame audio windows: one whole-clip :class:`SamplingJob` run.

        faces:          ``[V,res,res,3]`` uint8 or float 0..1 (host or device): the aligned faces.
        audio_windows:   a ``FrameAudio`` (windows cut per chunk) or float ``[N,50,384]``: one audio window
                        per OUTPUT frame.
        source_index:   int ``[N]``: which face each output frame uses (default: the length rule,
                        :func:`ping_pong_indices`); faces are gathered per chunk, never all at once.
        found:          bool ``[V]`` per input face; False = no face: not sent through the model, the
                        output is the input face.
        skip:           optional bool ``[N]`` per OUTPUT frame; True = not sent through the model, the
                        output is the input face (e.g. silent frames: ``audio.silent_frames``).
        steps, guidance, seed, vae_encode, deepcache, chunk_batch, sampler: the sampling options
                        (:data:`latentsync_core.options.SAMPLING`: ranges, defaults and meaning).
        generator:      the run's randomness (a CPU generator; default: one seeded with ``seed``).
        initial_latents, latent_overrides, return_latents, out_dtype, progress, check_interrupt: see
                        :class:`SamplingJob`.
        """
        options = SamplingOptions(steps=steps, guidance=guidance, seed=seed, vae_encode=vae_encode,
                                  deepcache=deepcache, chunk_batch=chunk_batch, sampler=sampler)
        resolution = check_faces(faces)
        num_out = int(audio_windows.num_frames if hasattr(audio_windows, "num_frames") else len(audio_windows))
        index, generated = plan_frames(len(faces), num_out, source_index, found, skip)
        job = SamplingJob(self, resolution, options, generator=generator, initial_latents=initial_latents,
                          planned_frames=int(generated.sum()), latent_overrides=latent_overrides,
                          return_latents=return_latents, out_dtype=out_dtype, progress=progress,
                          check_interrupt=check_interrupt)
        return job.run(faces, _audio_windows(audio_windows), index, generated)

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
                          np.asarray(aligned.affines)[index], result.generated)



def check_faces(faces: torch.Tensor) -> int:
    """The resolution of aligned faces ``[N,res,res,3]``; :class:`InputMismatchError` for anything else."""
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
        raise InputMismatchError(f"Aligned faces must be [N,res,res,3] square images, got {tuple(faces.shape)}.")
    resolution = int(faces.shape[1])
    if resolution % VAE_DOWNSCALE:
        raise InputMismatchError(f"Face resolution {resolution} is not a multiple of {VAE_DOWNSCALE}.")
    return resolution


def plan_frames(num_faces: int, num_out: int, source_index=None, found=None, skip=None) -> tuple[np.ndarray, np.ndarray]:
    """Which face each output frame shows and which output frames the model regenerates.

    Returns (index int64 ``[N]``: face per output frame, default :func:`ping_pong_indices`; generated
    bool ``[N]``: the face was found and the frame is not skipped). Raises when nothing would be generated
    because no face was found anywhere, or when the arrays do not fit together.
    """
    index = (ping_pong_indices(num_faces, num_out) if source_index is None
             else np.asarray(source_index, dtype=np.int64))
    if len(index) != num_out or (num_out and (index.min() < 0 or index.max() >= num_faces)):
        raise InputMismatchError(f"source_index must hold {num_out} indices into {num_faces} faces.")
    found_in = np.ones(num_faces, bool) if found is None else np.asarray(found, dtype=bool)
    if len(found_in) != num_faces:
        raise InputMismatchError(f"found has {len(found_in)} entries for {num_faces} faces.")
    generated = found_in[index]
    if not generated.any():
        raise FaceError("No face was found in any frame: use a video where a face is visible.")
    if skip is not None:
        skip = np.asarray(skip, dtype=bool)
        if skip.shape != (num_out,):
            raise InputMismatchError(f"skip must hold {num_out} flags (one per output frame), got {skip.shape}.")
        generated &= ~skip
    return index, generated


class SamplingJob:
    """One sampling job, set up once and run on one or many parts of a clip (:meth:`run`).

    Made once: the checked options, the generator and the one noise frame drawn first from it, the mouth
    mask, DeepCache, the chunk batching and the progress total. A clip sampled in parts (the streaming
    job's segments, each holding whole 16-frame chunks of the frames that go through the model) thus
    gives exactly what one run over the whole clip gives.

    pipeline:        the :class:`LipSyncPipeline` (U-Net, VAE, device, dtype).
    resolution:      face size (256 / 512).
    options:         :class:`~latentsync_core.options.SamplingOptions`.
    generator:       the run's randomness (a CPU generator; noise is identical on every device); default:
                     one seeded with ``options.seed``.
    initial_latents: ``[1,4,1,h,w]`` (repeated) or ``[1,4,N',h,w]`` with N' >= the generated frames:
                     replaces the drawn noise (nothing is drawn for it then, so the generator goes straight
                     to the VAE posterior samples).
    planned_frames:  how many frames all runs together regenerate: progress total = chunks x steps.
    latent_overrides: per chunk, optional ``masked_image_latents`` / ``ref_latents`` ``[1,4,F,h,w]``
                     replacing the VAE encodings (reproducing a reference run exactly).
    return_latents:  keep every chunk's final latents ``[1,4,F,h,w]`` (CPU) in the result.
    out_dtype:       dtype of the returned faces (float16: half the host memory; float32: what a ComfyUI
                     IMAGE holds).
    progress:        called with (done, total) after every U-Net step, counted in chunk-steps over the
                     whole job (a call on k chunks advances it by k).
    check_interrupt: called before every U-Net call; raise from it to stop (nothing is left changed).
    """

    def __init__(self, pipeline: LipSyncPipeline, resolution: int, options: SamplingOptions, *,
                 generator: torch.Generator | None = None, initial_latents: torch.Tensor | None = None,
                 planned_frames: int = 0, latent_overrides: Sequence[dict] | None = None,
                 return_latents: bool = False, out_dtype: torch.dtype = torch.float16,
                 progress: Callable[[int, int], None] | None = None,
                 check_interrupt: Callable[[], None] | None = None):
        self.pipe, self.options, self.resolution = pipeline, options, int(resolution)
        if self.resolution % VAE_DOWNSCALE:
            raise InputMismatchError(f"Face resolution {resolution} is not a multiple of {VAE_DOWNSCALE}.")
        self.vae_encode = "sample" if options.vae_encode != "mean" and pipeline.vae.can_sample else "mean"
        self.cache = DeepCache(pipeline.eager_unet, options.deepcache)
        if self.cache.enabled and not hasattr(pipeline.eager_unet, "down_blocks"):
            raise LatentSyncError("DeepCache needs the LatentSync U-Net (down_blocks/up_blocks); turn it off.")
        self.generator = generator if generator is not None else torch.Generator("cpu").manual_seed(int(options.seed))
        if initial_latents is not None:
            # given noise is not drawn again: a job run in segments then draws exactly what one run draws
            self.noise = initial_latents.float()
        else:
            self.noise = pipeline.draw_noise(self.generator, self.resolution, options.steps, options.sampler)
        # [res,res] float32, 1 = keep. The official code multiplies float32 pixels by a float64 mask and
        # casts back; the mask's values are float32 numbers (256 px: 0/1; 512 px: k/255 in float32), so
        # the float64 product of two float32 numbers is exact and rounds to the same float32 as the
        # correctly rounded float32 product: bit-identical, and devices without float64 (MPS) work.
        self.mask = torch.tensor(fixed_mask(self.resolution), dtype=torch.float32).to(pipeline.device)
        self.latent_hw = self.resolution // VAE_DOWNSCALE
        self.do_cfg = options.guidance > 1.0
        per_chunk = chunk_activation_bytes(_base_channels(pipeline.eager_unet), self.latent_hw, pipeline.dtype,
                                           self.do_cfg) * (2 if self.cache.enabled else 1)
        self.per_call = resolve_chunk_batch(options.chunk_batch, pipeline.device, per_chunk, MAX_CHUNK_BATCH)
        self.total = math.ceil(int(planned_frames) / CHUNK_FRAMES) * options.steps
        self.done = 0  # chunk-steps so far (progress)
        self.chunks_done = 0  # chunks so far: where the next chunk's noise starts (multi-frame noise)
        self.latent_overrides, self.return_latents = latent_overrides, return_latents
        self.out_dtype, self.progress, self.check_interrupt = out_dtype, progress, check_interrupt

    @torch.no_grad()
    def run(self, faces: torch.Tensor, windows: Callable[[np.ndarray], torch.Tensor], index: np.ndarray,
            generated: np.ndarray) -> SyncResult:
        """Sample one part of the clip.

        faces: ``[V,res,res,3]`` uint8 or float 0..1; windows: ``rows -> [n,50,384]`` audio windows of
        output rows; index: int ``[N]`` face per output row; generated: bool ``[N]`` rows that go through
        the model (in whole chunks of 16 except at the end of the job). Returns the ``N`` faces.
        """
        if check_faces(faces) != self.resolution:
            raise InputMismatchError(f"faces are {faces.shape[1]} px, the job was made for {self.resolution} px.")
        out = torch.empty((len(index), self.resolution, self.resolution, 3), dtype=self.out_dtype)
        copy_idx = np.flatnonzero(~generated)
        if len(copy_idx):
            out[torch.from_numpy(copy_idx)] = _faces01(faces[torch.from_numpy(index[copy_idx])]).to(self.out_dtype).cpu()
        todo = np.flatnonzero(generated)  # output rows that go through the model
        chunk_rows = [todo[i:i + CHUNK_FRAMES] for i in range(0, len(todo), CHUNK_FRAMES)]
        finals: list[torch.Tensor] = []
        per_call = max(1, min(self.per_call, len(chunk_rows)))
        with self.cache.active():
            for group in group_chunks([len(r) for r in chunk_rows], per_call):
                # per chunk, in chunk order: faces, mask, VAE encodes (masked then reference: the
                # generator's draws are those of one chunk at a time) and the chunk's noise
                prepared = [self._prepare_chunk(c, chunk_rows[c], faces, index, len(chunk_rows)) for c in group]
                latents = self._denoise(prepared, windows, compiled=len(prepared) == per_call)
                for i, p in enumerate(prepared):
                    out[torch.from_numpy(p.rows)] = self._decode(latents[i:i + 1], p, finals)
                del latents, prepared
        self.chunks_done += len(chunk_rows)
        return SyncResult(faces=out, generated=generated, final_latents=finals)

    def _denoise(self, prepared: list[_Chunk], windows, compiled: bool) -> torch.Tensor:
        """The scheduler loop for k chunks of equal length in one U-Net batch: final latents ``[k,4,n,h,w]``."""
        pipe, options, k = self.pipe, self.options, len(prepared)
        latents = torch.cat([p.latents for p in prepared])  # [k,4,n,h,w]
        cond = torch.cat([p.cond for p in prepared]).to(pipe.dtype)  # [k,9,n,h,w]
        audio = torch.cat([windows(p.rows) for p in prepared]).to(pipe.device, pipe.dtype)  # [k*n,50,384]
        # a compiled U-Net sees one shape per run: full chunks, the usual batch, no DeepCache
        compiled = compiled and not self.cache.enabled and len(prepared[0].rows) == CHUNK_FRAMES
        if self.do_cfg:  # unconditional (all-zero audio) half first
            audio = torch.cat([torch.zeros_like(audio), audio])
            cond = torch.cat([cond, cond])
        # the U-Net input is built once; each step only writes the latents into channels 0..3
        model_in = torch.cat([torch.empty_like(cond[:, :LATENT_CHANNELS]), cond], dim=1)
        del cond
        scheduler = pipe.make_scheduler(options.steps, options.sampler)  # fresh: no sampler state crosses calls
        step_t = [int(t) for t in scheduler.timesteps]  # host ints for the scheduler, no syncs
        unet_t = scheduler.timesteps.to(pipe.device)  # device copies for the U-Net
        for j, t in enumerate(step_t):
            if self.check_interrupt is not None:
                self.check_interrupt()
            self.cache.step = j
            scaled = scheduler.scale_model_input(latents, t).to(pipe.dtype)
            model_in[:k, :LATENT_CHANNELS] = scaled
            if self.do_cfg:
                model_in[k:, :LATENT_CHANNELS] = scaled
            pred = pipe._unet(model_in, unet_t[j], audio, compiled).float()
            if self.do_cfg:
                uncond, audio_pred = pred.chunk(2)
                pred = uncond + options.guidance * (audio_pred - uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
            self.done += k
            if self.progress is not None:
                self.progress(self.done, self.total)
        return latents

    def _decode(self, latents: torch.Tensor, p: _Chunk, finals: list) -> torch.Tensor:
        """One chunk's final latents ``[1,4,n,h,w]`` -> faces ``[n,res,res,3]`` (out dtype, CPU, 0..1 units,
        unclamped: paste-back resizes, then clamps, as the official restore)."""
        latents = check_finite(latents, "unet", p.where)
        if self.return_latents:
            finals.append(latents.cpu())
        decoded = check_finite(self.pipe.vae.decode(latents[0].permute(1, 0, 2, 3)), "vae_decode", p.where)
        keep = self.mask  # official: decoded * (1 - mask) + original * mask
        merged = decoded * (1 - keep) + p.pixels * keep  # [n,3,res,res]
        return (merged / 2 + 0.5).permute(0, 2, 3, 1).to(self.out_dtype).cpu()

    def _prepare_chunk(self, c: int, rows: np.ndarray, faces: torch.Tensor, index: np.ndarray,
                       num_chunks: int) -> _Chunk:
        """One chunk's pixels, conditioning ``[1,9,n,h,w]`` (mask | masked latents | reference latents)
        and initial latents ``[1,4,n,h,w]``; the VAE encodes draw from the generator masked then ref."""
        pipe, n, res, mask = self.pipe, len(rows), self.resolution, self.mask
        chunk_faces = faces[torch.from_numpy(index[rows]).to(faces.device)].to(pipe.device)
        pixels = faces_to_pixels(chunk_faces)  # float32 [n,3,res,res] in [-1,1]
        masked = pixels * mask  # = official float32 x float64 mask, cast back (see __init__)
        mask_lat = F.interpolate(mask.expand(n, 1, res, res), size=(self.latent_hw, self.latent_hw))  # nearest
        mask_lat = mask_lat.permute(1, 0, 2, 3).unsqueeze(0).float()  # [1,1,n,h,w]

        where = _where(c, num_chunks, rows)
        c_job = self.chunks_done + c  # the chunk's place in the whole job
        override = self.latent_overrides[c_job] if self.latent_overrides is not None else {}
        encoded = []
        for key, image in (("masked_image_latents", masked), ("ref_latents", pixels)):
            lat = override.get(key)
            if lat is None:
                lat = _to_5d(check_finite(pipe.vae.encode(image, self.vae_encode, self.generator), "vae_encode", where))
            encoded.append(lat.to(pipe.device, torch.float32))

        start = c_job * CHUNK_FRAMES
        if self.noise.shape[2] == 1:
            latents = self.noise.expand(-1, -1, n, -1, -1).to(pipe.device).clone()
        else:
            latents = self.noise[:, :, start:start + n].to(pipe.device).clone()
        cond = torch.cat([mask_lat, *encoded], dim=1)
        return _Chunk(rows=rows, pixels=pixels, cond=cond, latents=latents, where=where)

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
