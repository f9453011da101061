"""Test stand-in for ``comfy.model_patcher.ModelPatcher``: the loading/unloading half of ComfyUI's class
(same constructor, attribute names and semantics, read from ComfyUI's comfy/model_patcher.py), without
weight patches, hooks or LoRA. Modules without ``comfy_cast_weights`` (plain torch layers) are moved
whole; in a partial (lowvram) load they are loaded only while they fit, as in ComfyUI."""

import uuid

import comfy.model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if not hasattr(self.model, "device"):
            self.model.device = offload_device
        elif self.model.device is None:
            self.model.device = offload_device
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.patches_uuid = uuid.uuid4()
        self.parent = None
        for name, value in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                            ("model_lowvram", False), ("current_weight_patches_uuid", None)):  # fmt: skip
            if not hasattr(self.model, name):
                setattr(self.model, name, value)

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = comfy.model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self):
        return self.model.lowvram_patch_counter

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size, self.weight_inplace_update)
        n.patches_uuid = self.patches_uuid
        n.parent = self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def model_patches_models(self):
        return []

    def model_patches_to(self, device):
        return None

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def _load_list(self):
        loading = []
        for n, m in self.model.named_modules():
            params = [name for name, _ in m.named_parameters(recurse=False)]
            if any(name not in params for name, _ in m.named_parameters(recurse=True)):
                continue  # not a leaf holding all its parameters
            if hasattr(m, "comfy_cast_weights") or params:
                loading.append((comfy.model_management.module_size(m), n, m, params))
        return loading

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        mem_counter = 0
        lowvram_counter = 0
        load_completely = []
        for module_mem, n, m, params in sorted(self._load_list(), key=lambda x: x[0], reverse=True):
            if not full_load and hasattr(m, "comfy_cast_weights") and mem_counter + module_mem >= lowvram_model_memory:
                lowvram_counter += 1
                continue
            if full_load or mem_counter + module_mem < lowvram_model_memory:
                mem_counter += module_mem
                load_completely.append(m)
        for m in load_completely:
            m.to(device_to)
        if lowvram_counter > 0:
            self.model.model_lowvram = True
        else:
            self.model.model_lowvram = False
            if full_load:
                self.model.to(device_to)
                mem_counter = self.model_size()
        self.model.device = device_to
        self.model.model_loaded_weight_memory = mem_counter
        self.model.current_weight_patches_uuid = self.patches_uuid

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if load_weights:
            self.load(device_to, lowvram_model_memory, force_patch_weights, full_load=lowvram_model_memory == 0)
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            self.model.model_lowvram = False
            self.model.lowvram_patch_counter = 0
            self.model.current_weight_patches_uuid = None
            self.backup.clear()
            if device_to is not None:
                self.model.to(device_to)
                self.model.device = device_to
            self.model.model_loaded_weight_memory = 0

    def partially_unload(self, device_to, memory_to_free=0):
        return 0  # plain torch layers cannot be partially unloaded (ComfyUI: only comfy.ops layers)

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        if not self.model.model_lowvram and self.model.model_loaded_weight_memory > 0:
            return 0  # already fully loaded: nothing moves
        current_used = self.model.model_loaded_weight_memory
        full_load = current_used + extra_memory > self.model_size()
        self.load(device_to, lowvram_model_memory=current_used + extra_memory, full_load=full_load)
        return self.model.model_loaded_weight_memory - current_used

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model

    def current_loaded_device(self):
        return self.model.device
