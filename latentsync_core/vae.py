"""The VAE behind one small interface, so the pipeline runs with either a diffusers ``AutoencoderKL``
(use without ComfyUI) or ComfyUI's own ``VAE`` object (core VAELoader with ``sd-vae-ft-mse``).

Both adapters speak the pipeline's language: pixels ``[B,3,H,W]`` in [-1, 1] and latents ``[B,4,h,w]``
already multiplied by ``LATENT_SCALE`` (the official code sets ``scaling_factor`` 0.18215 and
``shift_factor`` 0 on the VAE).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Protocol

import torch

from .checkpoints import as_state_dict, read_checkpoint
from .constants import LATENT_SCALE
from .errors import CheckpointError, LatentSyncError
from .options import VAE_ENCODE_MODES as _OPTION_MODES

VAE_ENCODE_MODES = tuple(m for m in _OPTION_MODES if m != "auto")  # what encode() takes ("auto" is resolved before)
# keys of the original Stable Diffusion (LDM) layout: vae-ft-mse-840000-ema-pruned, full SD checkpoints
_LDM_VAE_KEY = re.compile(r"^(first_stage_model\.|vae\.)?(encoder|decoder)\.(down|up|mid)\.")
SD_VAE_CONFIG = {
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4, "sample_size": 256, "scaling_factor": LATENT_SCALE,
}  # fmt: skip  (the sd-vae-ft-mse layout)


class LatentVae(Protocol):
    """What the pipeline needs from a VAE."""

    can_sample: bool

    def encode(self, pixels: torch.Tensor, mode: str = "sample", generator: torch.Generator | None = None) -> torch.Tensor:
        """pixels float ``[B,3,H,W]`` in [-1, 1] -> scaled latents float32 ``[B,4,H/8,W/8]`` (compute device)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents ``[B,4,h,w]`` -> pixels float32 ``[B,3,8h,8w]``, nominally [-1, 1] (compute device)."""
        ...


class DiffusersVae:
    """A diffusers ``AutoencoderKL`` as the official pipeline uses it.

    ``encode(mode="sample")`` draws from the posterior with ``generator`` (the official behaviour);
    ``mode="mean"`` takes the posterior mean (what ComfyUI's VAE returns).
    """

    can_sample = True

    def __init__(self, vae: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.vae = vae.eval()
        params = next(vae.parameters())
        self.device = torch.device(device) if device is not None else params.device
        self.dtype = dtype or params.dtype
        if params.device != self.device:
            self.vae.to(self.device)
        if params.dtype != self.dtype:
            self.vae.to(dtype=self.dtype)

    @torch.no_grad()
    def encode(self, pixels, mode="sample", generator=None):
        if mode not in VAE_ENCODE_MODES:
            raise LatentSyncError(f"vae_encode must be one of {VAE_ENCODE_MODES}, not {mode!r}.")
        # contiguous: the pipeline's NHWC -> NCHW pixels are channels-last, and torch's CPU GroupNorm on
        # channels-last input takes a one-pass variance (measured: latents 8e-4 off fp64; contiguous 5e-6)
        posterior = self.vae.encode(pixels.to(self.device, self.dtype).contiguous()).latent_dist
        latents = posterior.sample(generator=generator) if mode == "sample" else posterior.mean
        return latents.float() * LATENT_SCALE

    @torch.no_grad()
    def decode(self, latents):
        return self.vae.decode((latents / LATENT_SCALE).to(self.device, self.dtype).contiguous()).sample.float()


class ComfyVae:
    """ComfyUI's ``comfy.sd.VAE``: ``encode(pixels [B,H,W,3] 0..1)`` returns the unscaled posterior mean
    ``[B,4,h,w]``; ``decode(latents)`` returns ``[B,H,W,3]`` clamped to 0..1 (this adapter asks for the
    unclamped decode, see :meth:`decode`). Device placement and batching are ComfyUI's own; results are
    moved to ``device``."""

    can_sample = False  # ComfyUI's encode only exposes the posterior mean

    def __init__(self, vae: Any, device: torch.device | str = "cpu"):
        self.vae = vae
        self.device = torch.device(device)

    @torch.no_grad()
    def encode(self, pixels, mode="mean", generator=None):
        if mode != "mean":
            raise LatentSyncError("ComfyUI's VAE only returns the posterior mean: use vae_encode='mean' with it.")
        images = ((pixels.float() + 1.0) / 2.0).movedim(1, -1)
        latents = self.vae.encode(images)
        return latents.to(self.device, torch.float32) * LATENT_SCALE

    @torch.no_grad()
    def decode(self, latents):
        """``[B,4,h,w]`` scaled latents -> ``[B,3,H,W]`` in [-1, 1] units, NOT clamped (the decoder can
        overshoot): the official pipeline blends and resizes the unclamped decode and clamps only after
        paste-back. ComfyUI's ``VAE.decode`` clamps in its ``process_output`` (an instance attribute,
        ``clamp((x + 1) / 2, 0, 1)`` for image VAEs); it is swapped for the unclamped map during this call
        (ComfyUI's batching, tiling fallback and memory management stay as they are)."""
        clamped = getattr(self.vae, "process_output", None)
        if clamped is not None:
            self.vae.process_output = _unclamped_output
        try:
            images = self.vae.decode((latents / LATENT_SCALE).float())
        finally:
            if clamped is not None:
                self.vae.process_output = clamped
        return images.to(self.device, torch.float32).movedim(-1, 1) * 2.0 - 1.0


def _unclamped_output(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI's image ``process_output`` without its clamp: [-1, 1] units -> 0..1 units."""
    return (image + 1.0) / 2.0


def as_latent_vae(vae: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LatentVae:
    """Wrap ``vae`` in the adapter that fits it (adapters pass through unchanged)."""
    if isinstance(vae, (DiffusersVae, ComfyVae)):
        return vae
    if hasattr(vae, "config") and hasattr(vae, "encoder"):  # diffusers AutoencoderKL
        return DiffusersVae(vae, device, dtype)
    if hasattr(vae, "first_stage_model") or (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
        return ComfyVae(vae, device or "cpu")
    raise LatentSyncError(f"Not a VAE: {type(vae).__name__}. Connect ComfyUI's VAE (Load VAE with sd-vae-ft-mse).")


def load_vae(path: str | os.PathLike, config: str | os.PathLike | dict | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> DiffusersVae:
    """Load a diffusers ``AutoencoderKL`` from disk (no network).

    ``path``: a diffusers folder (``config.json`` + weights, e.g. ``stabilityai/sd-vae-ft-mse``), or a
    weights file (``.safetensors``/``.pt``) together with ``config`` (a dict or a ``config.json`` path;
    the sd-vae-ft-mse layout when omitted). The file may use diffusers key names
    (``diffusion_pytorch_model.safetensors``) or the original Stable Diffusion layout
    (``vae-ft-mse-840000-ema-pruned.safetensors``, what ComfyUI's Load VAE takes; ``first_stage_model.``
    prefix allowed), which is converted with diffusers' own single-file converter.
    """
    from diffusers import AutoencoderKL

    path = os.fspath(path)
    if os.path.isdir(path):
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        return DiffusersVae(vae, device, dtype)
    if not os.path.isfile(path):
        raise CheckpointError(f"VAE not found: {path}")
    state = as_state_dict(read_checkpoint(path), "VAE")
    vae = _vae_from_state(state, read_vae_config(config),
                          f"{os.path.basename(path)} is not a VAE for this config (sd-vae-ft-mse unless a config is given)")
    return DiffusersVae(vae, device, dtype)


def _vae_from_state(state: dict[str, torch.Tensor], config: dict, what: str):
    """A diffusers ``AutoencoderKL`` of ``config`` with ``state`` (diffusers or LDM key layout) loaded."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"The VAE config is not an AutoencoderKL config ({exc}).") from exc
    if any(_LDM_VAE_KEY.match(k) for k in state):
        state = ldm_to_diffusers_vae(state, config)
    try:
        missing, unexpected = vae.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc)[:200])
        raise CheckpointError(f"{what}: {first}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{what}: {len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:3]}."
        )
    return vae


def trainable_vae(vae: Any, device: torch.device | str = "cpu") -> DiffusersVae:
    """A frozen fp32 diffusers copy of ``vae`` for training (its decoder must carry gradients to the pixel
    losses, which ComfyUI's VAE object does not expose): a diffusers ``AutoencoderKL`` / :class:`DiffusersVae`
    is used as is; ComfyUI's ``VAE`` (its ``first_stage_model`` holds the Stable Diffusion layout) is
    converted. Works under ComfyUI's ``inference_mode`` (the weights are cloned into normal tensors)."""
    if isinstance(vae, DiffusersVae):
        return vae
    if hasattr(vae, "config") and hasattr(vae, "encoder"):
        return DiffusersVae(vae, device, torch.float32)
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        raise LatentSyncError(f"Not a VAE: {type(vae).__name__}. Connect ComfyUI's VAE (Load VAE with sd-vae-ft-mse).")
    # a diffusers model inside (stand-ins, wrappers) keeps its own config; ComfyUI's own is the SD layout
    config = dict(model.config) if hasattr(model, "config") and hasattr(model, "encoder") else read_vae_config(None)
    with torch.inference_mode(False):
        state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
        converted = _vae_from_state(state, config, "the connected VAE is not sd-vae-ft-mse's layout")
    return DiffusersVae(converted, device, torch.float32)


def read_vae_config(config: str | os.PathLike | dict | None) -> dict:
    """The AutoencoderKL config: a dict as is, a ``config.json`` path read (clear :class:`CheckpointError`
    when missing, empty or not a JSON object), or the sd-vae-ft-mse layout for None."""
    if config is None:
        return dict(SD_VAE_CONFIG)
    if isinstance(config, dict):
        return config
    name = os.fspath(config)
    if not os.path.isfile(name):
        raise CheckpointError(f"VAE config not found: {name} (give the config.json of the VAE, or leave it out "
                              "for sd-vae-ft-mse).")
    try:
        with open(name, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        what = "is empty" if os.path.getsize(name) == 0 else f"is not valid JSON ({exc})"
        raise CheckpointError(f"VAE config {name} {what}: give the config.json of a diffusers AutoencoderKL.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"VAE config {name} is not a JSON object: give the config.json of an AutoencoderKL.")
    return data


def ldm_to_diffusers_vae(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Original Stable Diffusion VAE keys (``encoder.down.0.block.0.conv1.weight``, optionally under
    ``first_stage_model.``) -> diffusers ``AutoencoderKL`` keys, with diffusers' own converter (the one
    ``from_single_file`` uses)."""
    try:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    except ImportError:  # older diffusers
        try:
            from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_vae_checkpoint
        except ImportError as exc:
            raise CheckpointError(
                "This VAE file uses the original Stable Diffusion layout, and this diffusers has no converter for it: "
                "update diffusers (pip install -U diffusers) or use the diffusers file of sd-vae-ft-mse."
            ) from exc
    if not any(k.startswith(("first_stage_model.", "vae.")) for k in state):
        state = {f"first_stage_model.{k}": v for k, v in state.items()}  # older converters need the prefix
    return convert_ldm_vae_checkpoint(state, config)
