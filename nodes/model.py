"""Model node: LatentSync Model Loader (the U-Net from ``models/latentsync/``) -> LATENTSYNC_MODEL."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass

import torch

from ..latentsync_core.constants import RESOLUTION, SUPPORTED_RESOLUTIONS
from ..latentsync_core.download import MODEL_FILES, ensure_model_file
from ..latentsync_core.errors import InputMismatchError, ModelMissingError
from ..latentsync_core.sampling import compile_unet
from ..latentsync_core.unet import load_unet
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_MODEL

logger = logging.getLogger(__name__)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "latentsync_core", "configs")
CONFIGS = {256: "stage2.yaml", 512: "stage2_512.yaml"}  # the official U-Net configs per face size
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ACTIVATION_SLACK = 1.5  # device memory asked for beyond the weights (activations of a 16-frame chunk)
# the released U-Nets, listed even when absent: choosing one downloads it from the Hugging Face Hub
DOWNLOADABLE = {MODEL_FILES[kind].local_name: kind for kind in ("unet-1.5", "unet-1.6")}


@dataclass
class LatentSyncModel:
    """What flows through a LATENTSYNC_MODEL socket: the U-Net (kept on the offload device between
    runs), the face size it was trained for, and its dtype."""

    unet: torch.nn.Module
    resolution: int
    dtype: torch.dtype
    name: str

    @property
    def version(self) -> str:
        return "1.6" if self.resolution == 512 else "1.5"

    def check_faces(self, resolution: int) -> None:
        if resolution != self.resolution:
            raise InputMismatchError(
                f"{self.name} is a LatentSync {self.version} model for {self.resolution} px faces, but the faces are "
                f"{resolution} px: set Face Crop & Align's resolution to {self.resolution} (or load the matching model)."
            )

    @contextlib.contextmanager
    def on_compute_device(self):
        """Move the U-Net to ComfyUI's compute device for a run (freeing room first) and always back to
        the offload device afterwards, so other models get the memory between runs."""
        device = bridge.compute_device()
        offload = bridge.offload_device()
        size = sum(p.numel() * p.element_size() for p in self.unet.parameters())
        if not bridge.is_device_cpu(device):
            bridge.free_memory(int(size * ACTIVATION_SLACK), device)
        try:
            self.unet.to(device)
            yield self.unet
        finally:
            self.unet.to(offload)
            bridge.soft_empty_cache()


def guess_resolution(name: str, path: str | None = None) -> int:
    """Face size of a U-Net file: safetensors metadata ``resolution`` if present, else its name
    (``1.6`` or ``512`` in the file or folder name means 512), else 256 (LatentSync 1.5)."""
    if path and path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        with contextlib.suppress(Exception), safe_open(path, framework="pt") as fh:
            value = (fh.metadata() or {}).get("resolution")
            if value and int(value) in SUPPORTED_RESOLUTIONS:
                return int(value)
    if re.search(r"(^|[^0-9])(1[._]6|512)([^0-9]|$)", name.replace("\\", "/")):
        return 512
    return RESOLUTION


def sidecar_config(path: str) -> str | None:
    """A model config shipped next to the weights (``<name>.yaml|.json`` or ``config.json``) for U-Nets
    that are not the released layout; None for the released files (the official configs apply)."""
    stem = os.path.splitext(path)[0]
    for candidate in (stem + ".yaml", stem + ".json", os.path.join(os.path.dirname(path), "config.json")):
        if os.path.isfile(candidate):
            return candidate
    return None


def pick_dtype(choice: str, device) -> torch.dtype:
    """``auto``: bf16 or fp16 where ComfyUI says the GPU runs them well, fp32 on the CPU."""
    if choice != "auto":
        return DTYPES[choice]
    if bridge.is_device_cpu(device):
        return torch.float32
    if bridge.should_use_bf16(device):
        return torch.bfloat16
    if bridge.should_use_fp16(device):
        return torch.float16
    return torch.float32


class LatentSyncModelLoader:
    NODE_ID = "LatentSyncModelLoader"
    DISPLAY_NAME = "LatentSync Model Loader"
    CATEGORY = f"{CATEGORY}/model"
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads the LatentSync U-Net (latentsync_unet.pt of LatentSync 1.5 or 1.6) from models/latentsync/. "
        "The model stays on ComfyUI's offload device and moves to the GPU only while the sampler runs."
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
                "dtype": (["auto", "fp16", "bf16", "fp32"], {
                    "default": "auto",
                    "tooltip": "Weight precision. auto: bf16 or fp16 on GPUs that support them, fp32 on the CPU."}),
            },
            "optional": {
                "compile": (["off", "torch.compile"], {
                    "default": "off",
                    "tooltip": "torch.compile the U-Net: the same result, faster sampling after a one-time "
                               "compile of a minute or more (needs a working Triton/C++ compiler; DeepCache "
                               "and the short last chunk run uncompiled)."}),
            },
        }

    def load(self, unet_name: str, resolution: str = "auto", dtype: str = "auto", compile: str = "off"):
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
        torch_dtype = pick_dtype(dtype, bridge.compute_device())
        config = sidecar_config(path) or os.path.join(CONFIG_DIR, CONFIGS[res])
        unet = load_unet(config, path, device=bridge.offload_device(), dtype=torch_dtype)
        if compile == "torch.compile":
            unet = compile_unet(unet)
        logger.info("LatentSync U-Net %s: %d px faces, %s, compile %s", unet_name, res, torch_dtype, compile)
        return (LatentSyncModel(unet=unet, resolution=res, dtype=torch_dtype, name=unet_name),)


NODE_CLASSES: list[type] = [LatentSyncModelLoader]
