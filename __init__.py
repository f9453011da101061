"""ComfyUI-LatentSync: LatentSync 1.5/1.6 lip sync as ComfyUI nodes. Registration only."""

import logging
import os
import sys

WEB_DIRECTORY = "./js"

# import name -> pip distribution, for the one log line shown when a dependency is missing
_PIP_NAMES = {"cv2": "opencv-contrib-python", "av": "av", "yaml": "pyyaml", "mediapipe": "mediapipe"}

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_model_folder

    register_model_folder()
except ImportError as exc:  # a missing dependency must not break ComfyUI: log once, register nothing
    _missing = (getattr(exc, "name", None) or "").split(".")[0] or str(exc)
    _requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
    logging.getLogger(__name__).error(
        "[ComfyUI-LatentSync] nodes not loaded: Python package '%s' is missing or broken (%s). Install with: "
        '"%s" -m pip install -r "%s"',
        _PIP_NAMES.get(_missing, _missing),
        exc,
        sys.executable,
        _requirements,
    )
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
