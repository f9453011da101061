"""Test stand-in for ``comfy.model_management`` on a CPU-only machine (same names and semantics as
ComfyUI's for the calls this pack makes). The loaded-model list (``current_loaded_models`` of
``LoadedModel`` holding weak references to ModelPatchers, ``load_models_gpu``, ``free_memory``,
``unload_all_models``) follows ComfyUI's comfy/model_management.py without the VRAM heuristics: the
devices here are CPUs, which ComfyUI loads completely."""

import weakref
from enum import Enum

import torch


class VRAMState(Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


vram_state = VRAMState.NORMAL_VRAM
current_loaded_models = []


class InterruptProcessingException(Exception):
    pass


_interrupted = False


def interrupt_current_processing(value=True):
    global _interrupted
    _interrupted = value


def processing_interrupted():
    return _interrupted


def throw_exception_if_processing_interrupted():
    global _interrupted
    if _interrupted:
        _interrupted = False
        raise InterruptProcessingException()


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def intermediate_device():
    return torch.device("cpu")


def vae_device():
    return torch.device("cpu")


def vae_offload_device():
    return torch.device("cpu")


def text_encoder_device():
    return torch.device("cpu")


def is_device_cpu(device):
    return torch.device(device).type == "cpu"


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False):
    return False


def get_free_memory(dev=None, torch_free_too=False):
    return (8 << 30, 8 << 30) if torch_free_too else 8 << 30


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:
    def __init__(self, model):
        self._model = weakref.ref(model)
        self.device = model.load_device
        self.real_model = None
        self.currently_used = True
        self.model_finalizer = None

    @property
    def model(self):
        return self._model()

    def model_memory(self):
        return self.model.model_size()

    def model_loaded_memory(self):
        return self.model.loaded_size()

    def model_offloaded_memory(self):
        return self.model.model_size() - self.model.loaded_size()

    def model_memory_required(self, device):
        if device == self.model.current_loaded_device():
            return self.model_offloaded_memory()
        return self.model_memory()

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        self.model.model_patches_to(self.device)
        use_more_vram = lowvram_model_memory or 1e32
        self.model.partially_load(self.device, use_more_vram, force_patch_weights=force_patch_weights)
        real_model = self.model.model
        self.real_model = weakref.ref(real_model)
        self.model_finalizer = weakref.finalize(real_model, cleanup_models)
        return real_model

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        if memory_to_free is not None and memory_to_free < self.model.loaded_size():
            if self.model.partially_unload(self.model.offload_device, memory_to_free) >= memory_to_free:
                return False
        self.model.detach(unpatch_weights)
        self.model_finalizer.detach()
        self.model_finalizer = None
        self.real_model = None
        return True

    def __eq__(self, other):
        return self.model is other.model

    def is_dead(self):
        return self.real_model is not None and self.real_model() is not None and self.model is None


def cleanup_models():
    """Drop the entries whose model is gone (ComfyUI calls this from a finalizer on the loaded model)."""
    for i in range(len(current_loaded_models) - 1, -1, -1):
        real = current_loaded_models[i].real_model
        if real is None or real() is None:
            current_loaded_models.pop(i)


def free_memory(memory_required, device, keep_loaded=()):
    cleanup_models()
    unloaded = []
    for i in range(len(current_loaded_models) - 1, -1, -1):
        loaded = current_loaded_models[i]
        if loaded.device == device and loaded not in keep_loaded and not loaded.is_dead():
            if get_free_memory(device) > memory_required:
                break
            if loaded.model_unload(memory_required - get_free_memory(device)):
                unloaded.append(current_loaded_models.pop(i))
    return unloaded


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
    to_load = []
    for x in models:
        loaded = LoadedModel(x)
        if loaded in current_loaded_models:
            loaded = current_loaded_models[current_loaded_models.index(loaded)]
            loaded.currently_used = True
        to_load.append(loaded)
    for loaded in to_load:
        if loaded in current_loaded_models:  # ComfyUI pops every entry the patcher is_clone of
            current_loaded_models.remove(loaded)
        loaded.model_load(0, force_patch_weights)  # CPU devices (and force_full_load): a complete load
        current_loaded_models.insert(0, loaded)


def loaded_models(only_currently_used=False):
    return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]


def soft_empty_cache(force=False):
    return None


def unload_all_models():
    free_memory(1e30, get_torch_device())
