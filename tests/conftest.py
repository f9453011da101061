"""Shared test setup.

- ComfyUI's ``folder_paths`` / ``comfy.utils`` / ``comfy.model_management`` come from
  ``tests/comfy_stubs`` when ComfyUI itself is not importable (CI has no ComfyUI).
- ``pack`` imports this repository exactly as ComfyUI does: by file path, as a package whose name
  contains a hyphen, so relative imports and registration are tested as they run in ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PACK_NAME = "ComfyUI-LatentSync"

try:  # a real ComfyUI on the path wins
    import comfy.model_management  # noqa: F401
    import folder_paths  # noqa: F401

    USING_STUBS = False
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "comfy_stubs"))
    for _name in [m for m in sys.modules if m == "comfy" or m.startswith("comfy.") or m == "folder_paths"]:
        del sys.modules[_name]
    import folder_paths

    folder_paths.set_base(tempfile.mkdtemp(prefix="latentsync-comfy-"))
    USING_STUBS = True


def load_pack():
    """Import the repository as ComfyUI's custom-node loader does (``nodes.load_custom_node``)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, os.path.join(ROOT, "__init__.py"), submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture(scope="session")
def comfy_base() -> Path:
    """ComfyUI's base folder as the stand-in ``folder_paths`` sees it (models/, input/, output/)."""
    import folder_paths

    return Path(folder_paths.base_path)
