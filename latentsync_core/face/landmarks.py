"""Face landmark backends: mediapipe's face mesh, whichever flavour the installed mediapipe offers.

Both backends return, for every face in an RGB frame, the face-mesh points in image pixels
(``[K, 2]`` float64, K = 468 or 478; the first 468 are the same mesh topology), truncated to whole
pixels as the official code does (``int(x * width)``). The alignment only uses the 68 points of
``MESH_TO_68``.

- ``LegacyFaceMesh``: ``mediapipe.solutions.face_mesh`` (mediapipe <= 0.10.21 ships its models inside the
  wheel: works offline). Static-image mode, no iris refinement: exactly what the official code ran.
- ``TasksFaceLandmarker``: ``mediapipe.tasks`` ``FaceLandmarker`` (every mediapipe >= 0.10.x; the only
  option from 0.10.30 on, which runs with numpy 2 / Python 3.13). Needs ``face_landmarker.task``
  (found or fetched by ``task_file.resolve_task_file``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..errors import LatentSyncError

logger = logging.getLogger(__name__)

# mediapipe face-mesh index of each of the 68 points of the classic (face_alignment / dlib) layout:
# jaw 0-16, eyebrows 17-26, nose 27-35, eyes 36-47, mouth 48-67. The official table; it reproduces
# the golden landmarks68 from landmarks478 exactly (each index is the unique match).
MESH_TO_68 = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip
MESH_POINTS = 468  # the shared topology of both backends (Tasks adds 10 iris points)


class LandmarkBackend(Protocol):
    """Finds faces in one frame. ``detect`` returns one ``[K, 2]`` float64 pixel array per face."""

    name: str

    def detect(self, frame: np.ndarray) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def to_pixels(points, width: int, height: int) -> np.ndarray:
    """Normalised (x, y) landmark objects or an ``[K, 2+]`` array -> ``[K, 2]`` float64 pixels.

    Truncates toward zero like the official ``int(landmark.x * width)``.
    """
    if isinstance(points, np.ndarray):
        xy = points[:, :2].astype(np.float64)
    else:
        xy = np.array([(p.x, p.y) for p in points], dtype=np.float64)
    return np.trunc(xy * np.array([width, height], dtype=np.float64))


def to_68(mesh: np.ndarray) -> np.ndarray:
    """``[K >= 468, 2]`` face-mesh points -> ``[68, 2]`` in the classic layout."""
    return mesh[list(MESH_TO_68)]


def legacy_face_mesh_available() -> bool:
    """True when the installed mediapipe still has ``solutions.face_mesh`` (<= 0.10.21)."""
    try:
        from mediapipe.python.solutions import face_mesh  # noqa: F401
    except Exception:  # ImportError, or a broken install (protobuf/numpy mismatch)
        return False
    return True


def tasks_available() -> bool:
    """True when the installed mediapipe has the Tasks API (``mediapipe.tasks.python.vision``)."""
    try:
        from mediapipe.tasks.python import vision  # noqa: F401
    except Exception:
        return False
    return True


class LegacyFaceMesh:
    """mediapipe ``solutions.face_mesh.FaceMesh`` in static-image mode (the official CPU detector)."""

    name = "mediapipe face_mesh (legacy)"

    def __init__(self, max_faces: int = 4, min_detection_confidence: float = 0.5):
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=max_faces,
            refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
        )

    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        height, width = frame.shape[:2]
        result = self._mesh.process(np.ascontiguousarray(frame))
        faces = result.multi_face_landmarks or []
        return [to_pixels(face.landmark, width, height) for face in faces]

    def close(self) -> None:
        self._mesh.close()


def faces_from_tasks_result(result, width: int, height: int) -> list[np.ndarray]:
    """Adapter: a Tasks ``FaceLandmarkerResult`` -> one ``[478, 2]`` pixel array per face."""
    return [to_pixels(face, width, height) for face in (result.face_landmarks or [])]


class TasksFaceLandmarker:
    """mediapipe Tasks ``FaceLandmarker`` (IMAGE mode) on a ``face_landmarker.task`` bundle.

    Returns the iris-refined 478-point mesh; its 68 mapped points sit ~1 px from the legacy mesh's.
    """

    name = "mediapipe tasks FaceLandmarker"

    def __init__(self, model_path: str, max_faces: int = 4, min_detection_confidence: float = 0.5):
        from mediapipe.tasks.python import BaseOptions, vision

        self.model_path = str(model_path)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=max_faces,
            min_face_detection_confidence=min_detection_confidence,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def detect(self, frame: np.ndarray) -> list[np.ndarray]:
        import mediapipe as mp

        height, width = frame.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        return faces_from_tasks_result(self._landmarker.detect(image), width, height)

    def close(self) -> None:
        self._landmarker.close()


def open_backend(
    max_faces: int = 4,
    task_path: str | None = None,
    prefer: str = "auto",
    *,
    models_dir: str | None = None,
    folders: Sequence[str] = (),
    download: bool = True,
) -> LandmarkBackend:
    """The best backend available: legacy face mesh if installed, else Tasks on ``face_landmarker.task``.

    prefer: ``"auto"``, ``"legacy"`` or ``"tasks"``. For the Tasks backend ``task_path`` is used when
    given, else the file is found or downloaded by ``task_file.resolve_task_file(models_dir, folders=...)``
    (``<models_dir>/latentsync/``, env ``LATENTSYNC_MODELS``, ``folders``, the cache; ``HF_HUB_OFFLINE``
    and ``download=False`` forbid the download and raise ``ModelMissingError`` with URL and path).
    """
    if prefer not in ("auto", "legacy", "tasks"):
        raise ValueError(f"unknown landmark backend {prefer!r}")
    if prefer != "tasks" and legacy_face_mesh_available():
        return LegacyFaceMesh(max_faces)
    if prefer == "legacy":
        raise ImportError("mediapipe.solutions.face_mesh is not available (mediapipe > 0.10.21 removed it)")
    if not tasks_available():
        raise LatentSyncError(
            "Face detection needs the Python package 'mediapipe', which is missing or broken. Install it into "
            "ComfyUI's Python: python -m pip install mediapipe"
        )
    if task_path is None:
        from .task_file import resolve_task_file

        task_path = resolve_task_file(models_dir, folders=folders, download=download)
    logger.info("face landmarks: using the mediapipe Tasks FaceLandmarker (%s)", task_path)
    return TasksFaceLandmarker(task_path, max_faces)
