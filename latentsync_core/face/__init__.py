"""Face detection, alignment and paste-back (the official LatentSync 1.5 geometry).

``FaceAligner(resolution).align(frames)`` -> ``AlignmentResult`` (faces, affines, landmarks, found,
track: the ``FaceTrack``); ``paste_back(frames, faces, affines)`` puts generated faces back;
``paste_back_track`` does the same from a ``FaceTrack`` (following its ``frame_index``).
"""

from .aligner import AlignmentResult, FaceAligner, select_face
from .landmarks import MESH_TO_68, LegacyFaceMesh, TasksFaceLandmarker, open_backend
from .paste import fixed_mask, iter_patches, paste_back, paste_back_track
from .preview import draw_preview, draw_previews
from .task_file import ensure_task_file, resolve_task_file

__all__ = [
    "AlignmentResult",
    "FaceAligner",
    "MESH_TO_68",
    "draw_preview",
    "draw_previews",
    "LegacyFaceMesh",
    "TasksFaceLandmarker",
    "ensure_task_file",
    "fixed_mask",
    "iter_patches",
    "open_backend",
    "paste_back",
    "paste_back_track",
    "resolve_task_file",
    "select_face",
]
