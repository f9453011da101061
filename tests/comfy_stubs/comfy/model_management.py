"""Test stand-in for ``comfy.model_management`` on a CPU-only machine (same names and semantics as
ComfyUI's for the calls this pack makes)."""

import torch


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


def free_memory(memory_required, device, keep_loaded=()):
    return []


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False):
    return None


def soft_empty_cache(force=False):
    return None


def unload_all_models():
    return None
