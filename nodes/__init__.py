"""ComfyUI adapters: one module per pipeline stage; this table builds both node mappings.

Each stage module lists its node classes in ``NODE_CLASSES``; every class carries a stable ``NODE_ID``
(prefixed ``LatentSync``: saved workflows refer to it) and a ``DISPLAY_NAME``.
"""

from . import audio, face, model, sampler, sync_score, train, video
from .comfy_bridge import register_model_folder

_STAGES = (audio, face, model, sampler, video, sync_score, train)


def _build_mappings():
    classes, names = {}, {}
    for stage in _STAGES:
        for cls in stage.NODE_CLASSES:
            if cls.NODE_ID in classes:
                raise RuntimeError(f"duplicate node id {cls.NODE_ID}")
            classes[cls.NODE_ID] = cls
            names[cls.NODE_ID] = cls.DISPLAY_NAME
    return classes, names


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = _build_mappings()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_model_folder"]
