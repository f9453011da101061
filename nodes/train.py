"""Training node: LatentSync Train LoRA (a prepared dataset, or a folder of clips) -> a LoRA in models/loras/latentsync/.

The run lives in ``output/latentsync/train/<lora_name>/`` (log.jsonl, loss.png, checkpoints: see
:mod:`latentsync_core.train.run`); the newest LoRA is copied to ``models/loras/latentsync/<lora_name>.safetensors``
after every save, where the Model Loader lists it. Queueing the node again with the same settings continues the
run from its last checkpoint (Cancel saves one), and with more steps trains on to them.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil

import numpy as np
import torch

from ..latentsync_core.errors import InputMismatchError, LatentSyncError
from ..latentsync_core.options import TrainOptions, from_widgets, node_inputs
from ..latentsync_core.safe_output import atomic_path
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_MODEL, MODEL_INPUT, VAE_INPUT, WHISPER_INPUT

logger = logging.getLogger(__name__)

WIDGETS = ("train_steps", "learning_rate", "lora_rank", "train_seed", "save_every")
OPTIONAL_WIDGETS = ("train_batch_size", "sync_weight", "lpips_weight", "trepa_weight")
RUNS_FOLDER = os.path.join("latentsync", "train")  # under ComfyUI's output folder
DATASETS_FOLDER = os.path.join("latentsync", "datasets")  # clips prepared on the fly
TRAIN_RESOLUTION = 256  # the presets are LatentSync 1.5's official training configs (256 px faces)
MEMORY_FACTOR = 4  # device memory asked for, in multiples of the fp32 U-Net (weights, activations, adapters)


def _dataset_folder(path: str) -> str:
    path = os.path.expanduser(path.strip())
    if not path:
        raise LatentSyncError("dataset is empty: give a folder (a prepared dataset, or a folder of clips).")
    if not os.path.isabs(path):
        path = os.path.join(bridge.input_directory(), path)
    if not os.path.isdir(path):
        raise LatentSyncError(f"dataset folder {path} does not exist (a relative path is inside ComfyUI's input "
                              "folder).")
    return path


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or os.path.basename(name) != name or name.startswith(".") or name.endswith(".safetensors"):
        raise LatentSyncError(f"lora_name {name!r}: use a plain file name without folders or extension, e.g. "
                              "my_face.")
    return name


def _prepared(folder: str, whisper, progress) -> str:
    """``folder`` if it is a prepared dataset; else its clips prepared (resumably) into the output folder."""
    from ..latentsync_core.face import FaceAligner
    from ..latentsync_core.train.dataset import MANIFEST
    from ..latentsync_core.train.prepare import prepare, sources
    from .face import task_path

    if os.path.isfile(os.path.join(folder, MANIFEST)):
        return folder
    sources(folder)  # no clip: a clear message now
    if whisper is None:
        raise LatentSyncError(f"{folder} holds clips, not a prepared dataset: connect a LatentSync Whisper Loader to "
                              "this node's whisper input to prepare them (or run `python -m latentsync_core prepare`).")
    target = os.path.join(bridge.output_directory(), DATASETS_FOLDER, os.path.basename(os.path.normpath(folder)))
    aligner = FaceAligner(TRAIN_RESOLUTION, task_path=task_path())
    try:
        counts = prepare(folder, target, whisper, aligner, progress=progress)
    finally:
        aligner.close()
    logger.info("LatentSync: prepared %s into %s: %s", folder, target, counts)
    return target


def _start_weights(model) -> dict[str, torch.Tensor]:
    """The connected U-Net's weights as fp32 normal tensors (ComfyUI runs nodes under inference_mode; training
    needs tensors autograd may save). A half-precision model gives its rounded weights: the presets train the
    frozen base in bf16 on GPUs anyway."""
    unet = getattr(model.unet, "_orig_mod", model.unet)  # a compiled U-Net's own module
    if model.dtype != torch.float32:
        logger.info("LatentSync Train LoRA: starting from the %s weights of %s", model.dtype, model.name)
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in unet.state_dict().items()}


def _loss_image(path: str | None) -> torch.Tensor:
    """``loss.png`` as an IMAGE ``[1,H,W,3]`` 0..1 (a black square before any step was logged)."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR) if path else None
    if image is None:
        return torch.zeros((1, 64, 64, 3))
    return torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).float().div(255.0)[None]


class LatentSyncTrainLoRA:
    NODE_ID = "LatentSyncTrainLoRA"
    DISPLAY_NAME = "LatentSync Train LoRA"
    CATEGORY = f"{CATEGORY}/train"
    FUNCTION = "train"
    OUTPUT_NODE = True  # trains even when nothing is connected to its outputs
    DESCRIPTION = (
        "Fine-tunes a LoRA on your own footage (the official stage-2 losses, adapters on the attention layers) and "
        "saves it to models/loras/latentsync/<lora_name>.safetensors for the Model Loader's lora input. The run "
        "(log, loss curve, checkpoints) is in output/latentsync/train/<lora_name>/: queue again with the same "
        "settings to continue it after Cancel, or with more steps to train on."
    )
    RETURN_TYPES = (LATENTSYNC_MODEL, "STRING", "IMAGE")
    RETURN_NAMES = ("model", "lora_name", "loss_curve")
    OUTPUT_TOOLTIPS = ("The connected model with the trained LoRA merged (strength 1; a copy, the input model is "
                       "unchanged): connect it to the Sampler or Lip Sync Video to try the result.",
                       "The LoRA's name as the Model Loader lists it (latentsync/<lora_name>.safetensors).",
                       "The loss over the steps so far.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_INPUT[0], {"tooltip": "The LatentSync 1.5 U-Net to adapt (Model Loader; its weights, "
                                                      "including a LoRA merged there, are the starting point)."}),
                "vae": VAE_INPUT,
                "dataset": ("STRING", {"default": "", "tooltip": (
                    "A folder: a dataset made by `python -m latentsync_core prepare`, or a folder of talking-face "
                    "clips (each with its own audio track or a same-named audio file), prepared here into "
                    "output/latentsync/datasets/. A relative path is inside ComfyUI's input folder.")}),
                "lora_name": ("STRING", {"default": "my_face", "tooltip": (
                    "Name of the LoRA file and of the run folder; the same name continues that run.")}),
                **node_inputs(*WIDGETS),
            },
            "optional": {
                "whisper": (WHISPER_INPUT[0], {"tooltip": "Needed only when dataset is a folder of clips to prepare."}),
                **node_inputs(*OPTIONAL_WIDGETS),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, vae, dataset: str, lora_name: str, whisper=None, unique_id=None, **widgets):
        options = TrainOptions(**from_widgets(widgets, WIDGETS + OPTIONAL_WIDGETS))  # checked before any work
        name = _check_name(lora_name)
        if model.resolution != TRAIN_RESOLUTION:
            raise InputMismatchError(f"{model.name} is a {model.resolution} px model; training covers LatentSync 1.5 "
                                     f"({TRAIN_RESOLUTION} px faces).")
        progress = bridge.stage_progress(unique_id, {"sources": "preparing clips", "train": "training"})
        # ComfyUI runs nodes under torch.inference_mode(): training needs autograd
        with torch.inference_mode(False), torch.enable_grad():
            folder = _prepared(_dataset_folder(dataset), whisper, progress)
            result = self._run(model, vae, folder, name, options, progress, unique_id)
        return {"ui": {"text": [self._summary(result)]},
                "result": (_with_lora(model, result["lora_file"]), f"{bridge.LORA_SUBFOLDER}/{name}.safetensors",
                           _loss_image(result.get("plot")))}

    @staticmethod
    def _run(model, vae, folder: str, name: str, options: TrainOptions, progress, unique_id) -> dict:
        from ..latentsync_core.train.checkpoint import latest_checkpoint
        from ..latentsync_core.train.fine_tune import fine_tune, lora_files
        from ..latentsync_core.train.run import RUN_FILE, plot_losses
        from ..latentsync_core.vae import trainable_vae

        run_dir = os.path.join(bridge.output_directory(), RUNS_FOLDER, name)
        resume = os.path.isfile(os.path.join(run_dir, RUN_FILE)) and latest_checkpoint(run_dir) is not None
        device = bridge.compute_device()
        size = sum(p.numel() for p in model.unet.parameters()) * 4
        bridge.free_memory(size * MEMORY_FACTOR, device)  # ComfyUI unloads other models to make room
        target = os.path.join(bridge.lora_folder(), f"{name}.safetensors")
        copied = {"file": None}

        def step(done: int, total: int, line: dict) -> None:
            progress("train", done, total)
            losses = ", ".join(f"{k} {v:.4f}" for k, v in line["losses"].items())
            bridge.progress_text(f"step {done}/{total}: {losses}", unique_id)
            newest = lora_files(run_dir)
            if newest and newest[-1] != copied["file"]:  # a save just happened: publish it
                _publish(newest[-1], target)
                copied["file"] = newest[-1]
            bridge.check_interrupted()  # Cancel: the loop saves a checkpoint, queue again to continue

        folders = bridge.model_folders()
        try:
            result = fine_tune(folder, run_dir, options, unet=_start_weights(model), unet_config=model.unet.config,
                               vae=trainable_vae(vae, device), models_dir=folders[0],
                               search_folders=folders[1:], device=device, resume=resume, progress=step)
        except BaseException:  # Cancel: the step saved on the way out is published too
            newest = lora_files(run_dir)
            if newest and newest[-1] != copied["file"]:
                _publish(newest[-1], target)
            raise
        if result.get("lora"):
            _publish(result["lora"], target)
        result["plot"] = plot_losses(run_dir)
        result["lora_file"] = target
        return result

    @staticmethod
    def _summary(result: dict) -> str:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in result.get("losses", {}).items())
        return (f"step {result.get('step', '?')}: {losses or 'already trained to this step count'}\n"
                f"LoRA: {result['lora_file']}\nrun: {result['run_dir']}")


def _with_lora(model, path: str):
    """A copy of ``model`` with the LoRA at ``path`` merged at strength 1 (the input stays as ComfyUI cached it)."""
    from ..latentsync_core.train.lora import apply_lora
    from .model import LatentSyncModel

    unet = copy.deepcopy(getattr(model.unet, "_orig_mod", model.unet))
    applied = apply_lora(unet, path, 1.0, keep_backup=False, expect={"resolution": model.resolution})
    logger.info("LatentSync: %s merged into a copy of %s (%d layers)", os.path.basename(path), model.name,
                len(applied.modules))
    return LatentSyncModel(unet=unet, resolution=model.resolution, dtype=model.dtype,
                           name=f"{model.name} + {os.path.basename(path)}")


def _publish(source: str, target: str) -> None:
    """Copy the run's newest LoRA to ``models/loras/latentsync/`` (atomic: the Model Loader never sees half a file)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    logger.info("LatentSync: LoRA %s -> %s", os.path.basename(source), target)


NODE_CLASSES: list[type] = [LatentSyncTrainLoRA]
