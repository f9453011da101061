"""Model node: LatentSync Model Loader (the U-Net from ``models/latentsync/``) -> LATENTSYNC_MODEL."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch

from ..latentsync_core import precision
from ..latentsync_core.checkpoints import guess_unet_resolution
from ..latentsync_core.download import MODEL_FILES, ensure_model_file
from ..latentsync_core.errors import InputMismatchError, ModelMissingError
from ..latentsync_core.options import from_widgets, node_inputs
from ..latentsync_core.sampling import compile_unet
from ..latentsync_core.unet import load_unet
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_MODEL

logger = logging.getLogger(__name__)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "latentsync_core", "configs")
CONFIGS = {256: "stage2.yaml", 512: "stage2_512.yaml"}  # the official U-Net configs per face size
ACTIVATION_SLACK = 1.5  # device memory asked for beyond the weights (activations of a 16-frame chunk)
# the released U-Nets, listed even when absent: choosing one downloads it from the Hugging Face Hub
DOWNLOADABLE = {MODEL_FILES[kind].local_name: kind for kind in ("unet-1.5", "unet-1.6")}


class UNetHolder(torch.nn.Module):
    """What ComfyUI's ``ModelPatcher`` wraps: the U-Net plus the plain ``device`` attribute ModelPatcher
    sets on the model it manages (the U-Net's own ``device`` is a read-only property)."""

    def __init__(self, unet: torch.nn.Module, device):
        super().__init__()
        self.unet = unet
        self.device = device

    def get_dtype(self) -> torch.dtype:  # ModelPatcher.model_dtype()
        return next(self.unet.parameters()).dtype


def _same_device(a, b) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@dataclass
class LatentSyncModel:
    """What flows through a LATENTSYNC_MODEL socket: the U-Net, the face size it was trained for, and its
    dtype. ComfyUI's memory manager owns its placement: :meth:`on_compute_device` loads it through a
    ``ModelPatcher`` with ``load_models_gpu``, so it stays on the GPU between runs while memory allows
    and is evicted (or released by ``/free``, "Unload models") when other models need the room."""

    unet: torch.nn.Module
    resolution: int
    dtype: torch.dtype
    name: str
    patcher: object = field(default=None, init=False, repr=False, compare=False)

    @property
    def version(self) -> str:
        return "1.6" if self.resolution == 512 else "1.5"

    def check_faces(self, resolution: int) -> None:
        if resolution != self.resolution:
            raise InputMismatchError(
                f"{self.name} is a LatentSync {self.version} model for {self.resolution} px faces, but the faces are "
                f"{resolution} px: set Face Crop & Align's resolution to {self.resolution} (or load the matching model)."
            )

    def model_patcher(self, device=None):
        """The ``ModelPatcher`` that ComfyUI's memory manager tracks (one per model, made on first use)."""
        device = bridge.compute_device() if device is None else device
        if self.patcher is None or not _same_device(self.patcher.load_device, device):
            offload = bridge.offload_device()
            holder = UNetHolder(self.unet, next(self.unet.parameters()).device)
            size = sum(p.numel() * p.element_size() for p in self.unet.parameters())
            self.patcher = bridge.model_patcher(holder, device, offload, size=size)
        return self.patcher

    @contextlib.contextmanager
    def on_compute_device(self):
        """The U-Net on ComfyUI's compute device for a run: loaded by ``load_models_gpu`` (a complete load,
        freeing room for the activations too); it stays there afterwards until ComfyUI evicts it.

        Plain torch layers cannot run partially loaded (ComfyUI's lowvram streaming needs comfy.ops
        layers), so ``force_full_load``; under ``--novram`` ComfyUI still loads nothing, and then the
        U-Net is moved for this run only and back to the offload device afterwards.
        """
        device = bridge.compute_device()
        patcher = self.model_patcher(device)
        size = patcher.model_size()
        bridge.load_models_gpu([patcher], memory_required=int(size * (ACTIVATION_SLACK - 1)), force_full_load=True)
        stray = any(not _same_device(p.device, device) for p in self.unet.parameters())
        if stray:
            logger.info("LatentSync: ComfyUI did not load the U-Net on %s (novram?); moving it for this run", device)
            self.unet.to(device)
        try:
            yield self.unet
        finally:
            if stray:
                self.unet.to(patcher.offload_device)
                bridge.soft_empty_cache()


def guess_resolution(name: str, path: str | None = None) -> int:
    """Face size of a U-Net file: safetensors metadata ``resolution`` if present, else its name
    (``1.6`` or ``512`` in the file or folder name means 512), else 256 (LatentSync 1.5)."""
    return guess_unet_resolution(name, path)


def sidecar_config(path: str, roots=()) -> str | None:
    """A model config shipped with the weights, for U-Nets that are not the released layout:
    ``<name>.yaml|.json`` next to the file, or ``config.json`` in the file's own sub-folder (a
    diffusers-style folder). A ``config.json`` lying in a top models folder (``roots``, e.g.
    ``models/latentsync``) belongs to no particular file and is ignored. None: the official configs apply."""
    stem = os.path.splitext(path)[0]
    candidates = [stem + ".yaml", stem + ".json"]
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if all(folder != os.path.realpath(os.path.abspath(root)) for root in roots):
        candidates.append(os.path.join(folder, "config.json"))
    return next((c for c in candidates if os.path.isfile(c)), None)


def pick_dtype(choice: str, device) -> torch.dtype:
    """The core's one precision rule (the command line's too); ComfyUI's model management says whether the
    GPU runs bf16 / fp16 well (it honours ComfyUI's --force-fp16 / --force-fp32)."""
    if choice == "auto" and bridge.is_device_cpu(device):
        device = "cpu"
    return precision.pick_dtype(choice, device, bf16=bridge.should_use_bf16(device) if choice == "auto" else None,
                                fp16=bridge.should_use_fp16(device) if choice == "auto" else None)


class LatentSyncModelLoader:
    NODE_ID = "LatentSyncModelLoader"
    DISPLAY_NAME = "LatentSync Model Loader"
    CATEGORY = f"{CATEGORY}/model"
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads the LatentSync U-Net (latentsync_unet.pt of LatentSync 1.5 or 1.6) from models/latentsync/. "
        "ComfyUI's model management places it: loaded on the GPU for the sampler, kept there between runs "
        "while memory allows, unloaded when other models need the room."
    )
    RETURN_TYPES = (LATENTSYNC_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The LatentSync U-Net with its face resolution and dtype: connect it to LatentSync Sampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = bridge.model_files()
        files += [name for name in DOWNLOADABLE if name not in files]
        return {
            "required": {
                "unet_name": (files, {"tooltip": "U-Net file in models/latentsync/ (1.5: latentsync_unet.pt, 256 px; "
                                                 "1.6: LatentSync-1.6/latentsync_unet.pt, 512 px)."}),
                "resolution": (["auto", "256", "512"], {
                    "default": "auto",
                    "tooltip": "Face size the model was trained for. auto: from the file (1.6 / 512 in its name or "
                               "metadata = 512, else 256). Must match Face Crop & Align's resolution."}),
                **node_inputs("dtype"),
            },
            "optional": {
                **node_inputs("compile"),
                "lora": (["none", *bridge.lora_files()], {
                    "default": "none",
                    "tooltip": "A LoRA from models/loras/latentsync/ (made by `python -m latentsync_core train --preset "
                               "lora`), merged into this U-Net; none = the released model. A LoRA trained for "
                               "another face size is refused."}),
                **node_inputs("lora_strength"),
            },
        }

    def load(self, unet_name: str, resolution: str = "auto", dtype: str | None = None, compile: str | None = None,
             lora: str = "none", lora_strength: float | None = None):
        path = bridge.model_path(unet_name)
        if path is None and unet_name in DOWNLOADABLE:
            folders = bridge.model_folders()
            path = ensure_model_file(
                DOWNLOADABLE[unet_name], folders[0], search_folders=folders[1:], progress=bridge.progress_callback()
            )
        if path is None:
            raise ModelMissingError(
                f"U-Net file '{unet_name}' is not in models/latentsync/. Download latentsync_unet.pt from "
                "ByteDance/LatentSync-1.5 (or 1.6) into ComfyUI/models/latentsync/."
            )
        res = guess_resolution(unet_name, path) if resolution == "auto" else int(resolution)
        options = from_widgets({"dtype": dtype, "compile": compile}, ("dtype", "compile"))
        torch_dtype = pick_dtype(options["dtype"], bridge.compute_device())
        config = sidecar_config(path, roots=bridge.model_folders()) or os.path.join(CONFIG_DIR, CONFIGS[res])
        unet = load_unet(config, path, device=bridge.offload_device(), dtype=torch_dtype)
        if lora and lora != "none":
            _apply_lora(unet, lora, lora_strength, res)
        if options["compile"]:
            unet = compile_unet(unet)
        logger.info("LatentSync U-Net %s: %d px faces, %s, compile %s", unet_name, res, torch_dtype, options["compile"])
        return (LatentSyncModel(unet=unet, resolution=res, dtype=torch_dtype, name=unet_name),)


def _apply_lora(unet, name: str, strength, resolution: int) -> None:
    """Merge the LoRA ``name`` (models/loras/latentsync/) into the freshly loaded ``unet``."""
    from ..latentsync_core.train.lora import apply_lora

    path = bridge.lora_path(name)
    if path is None:
        raise ModelMissingError(f"LoRA file '{name}' is not in models/loras/.")
    strength = from_widgets({"lora_strength": strength}, ("lora_strength",))["lora_strength"]
    applied = apply_lora(unet, path, strength, keep_backup=False, expect={"resolution": resolution})
    logger.info("LatentSync LoRA %s merged at strength %s (%d layers)", name, strength, len(applied.modules))


NODE_CLASSES: list[type] = [LatentSyncModelLoader]
