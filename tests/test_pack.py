"""The pack as ComfyUI loads it: registration, node schemas, model folder, import hygiene."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import pytest
from conftest import PACK_NAME, ROOT

EXPECTED_NODES = {
    "LatentSyncLoadAudio",
    "LatentSyncWhisperLoader",
    "LatentSyncWhisperEmbedding",
    "LatentSyncFaceCropAlign",
    "LatentSyncPasteBack",
    "LatentSyncModelLoader",
    "LatentSyncSampler",
    "LatentSyncLipSyncVideo",
    "LatentSyncFacePreview",
    "LatentSyncSyncScore",
    "LatentSyncTrainLoRA",
}

# ComfyUI's built-in socket types plus this pack's own
KNOWN_TYPES = {
    "IMAGE", "MASK", "AUDIO", "INT", "FLOAT", "STRING", "BOOLEAN", "VAE", "COMBO", "VIDEO",
    "LATENTSYNC_MODEL", "LATENTSYNC_WHISPER", "LATENTSYNC_AUDIO", "LATENTSYNC_FACES",
}


def test_registers_exactly_the_expected_nodes(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == EXPECTED_NODES
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == EXPECTED_NODES
    assert pack.WEB_DIRECTORY == "./js"
    assert "LatentSyncNode" not in pack.NODE_CLASS_MAPPINGS  # the id other packs clashed on


@pytest.mark.parametrize("node_id", sorted(EXPECTED_NODES))
def test_node_schema(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("LatentSync")
    display = pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    assert display.startswith("LatentSync ") and len(display) > len("LatentSync ")
    assert cls.CATEGORY.startswith("LatentSync/")
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.DESCRIPTION.strip()

    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    assert spec.get("required"), "every node takes at least one input"
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            assert isinstance(kind, (list, str)), (name, kind)
            if isinstance(kind, str):
                assert kind in KNOWN_TYPES or kind == "*", (name, kind)
            options = entry[1] if len(entry) > 1 else {}
            assert options.get("tooltip", "").strip(), f"{node_id}.{name} has no tooltip"

    returns = cls.RETURN_TYPES
    assert isinstance(returns, tuple) and returns
    assert all(r in KNOWN_TYPES for r in returns), returns
    names = getattr(cls, "RETURN_NAMES", returns)
    assert len(names) == len(returns)
    tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None)
    assert tooltips is not None and len(tooltips) == len(returns)


def test_model_folder_registered(pack):
    import folder_paths

    paths, exts = folder_paths.folder_names_and_paths["latentsync"]
    assert os.path.join(folder_paths.models_dir, "latentsync") == paths[0]
    assert {".pt", ".safetensors"} <= set(exts)


def test_import_has_no_global_side_effects(pack):
    """Loading the pack must not touch the environment or pip-install anything."""
    env_before = dict(os.environ)
    spec = importlib.util.spec_from_file_location(
        PACK_NAME + "-again", os.path.join(ROOT, "__init__.py"), submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    assert dict(os.environ) == env_before
    assert set(module.NODE_CLASS_MAPPINGS) == EXPECTED_NODES


def test_missing_dependency_logs_one_line_and_registers_nothing(monkeypatch, caplog):
    """A missing package (here: torch, which every stage imports) yields one error line with the
    install command, and no nodes; the import itself does not raise."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    name = PACK_NAME + "-nodeps"
    monkeypatch.setattr(builtins, "__import__", fake_import)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "__init__.py"), submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with caplog.at_level(logging.ERROR):
            spec.loader.exec_module(module)
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
    assert module.NODE_CLASS_MAPPINGS == {}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "'torch'" in message and "pip install -r" in message and "requirements.txt" in message
