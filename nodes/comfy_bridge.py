"""The only place the nodes touch ComfyUI's own modules.

ComfyUI provides ``folder_paths``, ``comfy.utils``, ``comfy.model_management`` and
``comfy.model_patcher``; the tests provide stand-ins for them (``tests/comfy_stubs``) when ComfyUI is
not importable.
"""

from __future__ import annotations

import os

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..latentsync_core.constants import MODEL_FOLDER, WHISPER_SUBFOLDER

MODEL_EXTENSIONS = {".pt", ".pth", ".safetensors", ".task", ".model"}  # .model: syncnet_v2


def register_model_folder() -> None:
    """Register ``models/latentsync/`` (and any extra_model_paths.yaml entries) with ComfyUI."""
    default = os.path.join(folder_paths.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[MODEL_FOLDER]
        if default not in paths:
            paths.insert(0, default)
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, set(exts) | MODEL_EXTENSIONS)
    else:
        folder_paths.folder_names_and_paths[MODEL_FOLDER] = ([default], set(MODEL_EXTENSIONS))


def model_folders() -> list[str]:
    """Every folder ComfyUI searches for LatentSync models (the default one first)."""
    return list(folder_paths.get_folder_paths(MODEL_FOLDER))


def model_files(subfolder: str | None = None, suffixes: tuple[str, ...] = (".pt", ".pth", ".safetensors")) -> list[str]:
    """Model files (relative names, '/'-separated) under ``models/latentsync/``.

    ``subfolder="whisper"`` lists only files in ``whisper/``; ``None`` lists the files outside it.
    """
    names = []
    for name in folder_paths.get_filename_list(MODEL_FOLDER):
        norm = name.replace(os.sep, "/")
        in_whisper = norm.startswith(WHISPER_SUBFOLDER + "/")
        if (subfolder == WHISPER_SUBFOLDER) != in_whisper or not norm.lower().endswith(suffixes):
            continue
        names.append(norm)
    return sorted(names)


def model_path(name: str) -> str | None:
    """Absolute path of a file listed by :func:`model_files`, or None if it is not on disk."""
    return folder_paths.get_full_path(MODEL_FOLDER, name)


LORA_SUBFOLDER = "latentsync"  # LatentSync LoRAs live in models/loras/latentsync/ (not image-model LoRAs)


def lora_files() -> list[str]:
    """LoRA files under ``models/loras/latentsync/`` ('/'-separated names as ComfyUI lists them)."""
    if "loras" not in folder_paths.folder_names_and_paths:
        return []
    names = (n.replace(os.sep, "/") for n in folder_paths.get_filename_list("loras"))
    return sorted(n for n in names if n.startswith(LORA_SUBFOLDER + "/") and n.lower().endswith(".safetensors"))


def lora_path(name: str) -> str | None:
    """Absolute path of a file listed by :func:`lora_files`, or None."""
    return folder_paths.get_full_path("loras", name) if "loras" in folder_paths.folder_names_and_paths else None


def lora_folder() -> str:
    """Where new LatentSync LoRAs are saved: ``models/loras/latentsync/`` in ComfyUI's first loras folder."""
    folders = folder_paths.get_folder_paths("loras") if "loras" in folder_paths.folder_names_and_paths else []
    root = folders[0] if folders else os.path.join(folder_paths.models_dir, "loras")
    return os.path.join(root, LORA_SUBFOLDER)


def input_directory() -> str:
    return folder_paths.get_input_directory()


def output_directory() -> str:
    return folder_paths.get_output_directory()


def input_files(suffixes: tuple[str, ...]) -> list[str]:
    """Files directly in ComfyUI's input folder whose names end with one of ``suffixes`` (any case)."""
    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    return sorted(n for n in names if n.lower().endswith(suffixes))


def input_path(name: str) -> str:
    """Absolute path of an input-folder file name as upload widgets give it (``"x.wav"``, ``"x.wav [output]"``)."""
    return folder_paths.get_annotated_filepath(name)


def input_exists(name: str) -> bool:
    return bool(folder_paths.exists_annotated_filepath(name))


def progress_bar(total: int):
    """ComfyUI's progress bar (shown on the running node)."""
    return comfy.utils.ProgressBar(total)


def progress_callback(total: int | None = None):
    """A ``(done, total)`` callback for latentsync_core loops: drives ComfyUI's progress bar (``total``,
    else the total the loop reports) and raises ComfyUI's interrupt exception on Cancel."""
    bar = progress_bar(total or 1)

    def update(done: int, reported_total: int) -> None:
        bar.update_absolute(done, total or reported_total)
        check_interrupted()

    return update


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
    model_management.throw_exception_if_processing_interrupted()


def compute_device():
    return model_management.get_torch_device()


def offload_device():
    return model_management.unet_offload_device()


def intermediate_device():
    return model_management.intermediate_device()


def soft_empty_cache() -> None:
    model_management.soft_empty_cache()


def is_device_cpu(device) -> bool:
    return model_management.is_device_cpu(device)


def should_use_bf16(device, model_params: int = 0) -> bool:
    return bool(model_management.should_use_bf16(device, model_params=model_params))


def should_use_fp16(device, model_params: int = 0) -> bool:
    return bool(model_management.should_use_fp16(device, model_params=model_params))


def free_memory(num_bytes: int, device) -> None:
    """Ask ComfyUI to unload its own models until ``num_bytes`` are free on ``device``."""
    model_management.free_memory(num_bytes, device)


def temp_directory() -> str:
    """ComfyUI's temp folder (emptied when the server starts, never between prompts)."""
    return folder_paths.get_temp_directory()


def video_from_file_class():
    """ComfyUI's file-backed ``VideoFromFile`` (the core VIDEO type, ComfyUI >= 0.3.31), or None on
    releases without it."""
    try:
        from comfy_api.input_impl import VideoFromFile  # 0.3.31 on (a re-export since 0.3.48)
    except ImportError:
        try:
            from comfy_api.latest import InputImpl  # should the old re-export ever go
        except ImportError:
            return None
        return getattr(InputImpl, "VideoFromFile", None)
    return VideoFromFile


def progress_text(text: str, node_id: str | None) -> None:
    """Show ``text`` on the running node while it works (ComfyUI's progress text; silently skipped on
    releases or stand-ins without it)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # noqa: S110 (purely cosmetic: an old server without progress text, or no server)
        pass


def stage_progress(node_id: str | None, names: dict[str, str]):
    """``progress(stage, done, total)`` for a job of stages: a fresh bar per stage (each has its own total)
    with the stage's name (``names``) as the node's progress text."""
    state = {"stage": None, "bar": None}

    def progress(stage: str, done: int, total: int) -> None:
        if stage != state["stage"]:
            state["stage"], state["bar"] = stage, progress_bar(max(total, 1))
            progress_text(names.get(stage, stage), node_id)
        state["bar"].update_absolute(done, total)

    return progress


def model_patcher(module, load_device, offload_device, size: int = 0):
    """ComfyUI's ``ModelPatcher`` around ``module`` (which must allow setting ``module.device``)."""
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device, size=size)


def load_models_gpu(patchers, memory_required: int = 0, force_full_load: bool = False) -> None:
    """Let ComfyUI's memory manager load ``patchers`` on their load device (evicting other models as
    needed; a model already loaded stays and nothing moves)."""
    model_management.load_models_gpu(list(patchers), memory_required=memory_required, force_full_load=force_full_load)
