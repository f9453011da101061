"""``FaceAligner``: frames -> aligned faces + the ``FaceTrack`` that puts them back."""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..constants import FACE_BORDER_VALUE, MAX_FACE_GAP, RESOLUTION, SUPPORTED_RESOLUTIONS, crop_size
from ..errors import FaceError
from ..options import FaceOptions
from ..types import FaceTrack
from .gaps import bridge_gaps, format_ranges, runs
from .geometry import track_affines, warp_face
from .landmarks import MESH_POINTS, LandmarkBackend, open_backend, to_68
from .threads import default_workers, ordered_map

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (steps done, total steps); may raise to interrupt


@dataclass
class AlignmentResult:
    """What ``FaceAligner.align`` returns.

    faces:     uint8 ``[N, res, res, 3]`` aligned faces (flat grey 127 where no face was found); None
               when they went to a ``sink`` instead.
    affines:   float64 ``[N, 2, 3]`` image -> crop (NaN where not found).
    landmarks: float64 ``[N, 68, 2]`` smoothed landmarks in image pixels (NaN where not found).
    found:     bool ``[N]`` (True also for bridged frames).
    bridged:   bool ``[N]``: frames without a detection, filled from their neighbours.
    track:     the ``FaceTrack`` (LATENTSYNC_FACES) for the sampler and paste-back.
    """

    faces: np.ndarray
    affines: np.ndarray
    landmarks: np.ndarray
    found: np.ndarray
    bridged: np.ndarray
    track: FaceTrack
    backend: str = ""
    missing: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the node's UI text: counts and frame ranges of bridged and missing frames."""
        return face_summary(self.found, self.bridged, self.missing)


def face_summary(found: np.ndarray, bridged: np.ndarray, missing: list[tuple[int, int]]) -> str:
    """The face report line: ``found`` bool ``[N]`` (bridged frames included), ``bridged`` bool ``[N]``,
    ``missing`` the (first, last) frame runs left without a face."""
    n = len(found)
    text = f"face found in {int(found.sum() - bridged.sum())}/{n} frames"
    if bridged.any():
        text += f"; {int(bridged.sum())} bridged (frames {format_ranges(runs(bridged))})"
    if missing:
        count = sum(b - a + 1 for a, b in missing)
        text += f"; NO FACE in {count} frames, left untouched: {format_ranges(missing)}"
    return text


def no_face_message(num_frames: int, face: str | int) -> str:
    """The error text when no frame has the selected face (names the index when one was asked for)."""
    if face == "largest":
        return (f"No face found in any of the {num_frames} frames. Use a video with a clearly visible, reasonably "
                "frontal face.")
    return (f"No face found in any of the {num_frames} frames at face #{face} (counting from the left, from 0). "
            "Pick a face index that exists, or 'largest'.")


def select_face(faces: list[np.ndarray], selection: str | int) -> np.ndarray | None:
    """Pick one face: ``"largest"`` (bounding-box area of the mesh) or the n-th from the left (0-based)."""
    if not faces:
        return None
    if selection == "largest":
        return max(faces, key=lambda f: np.ptp(f[:, 0]) * np.ptp(f[:, 1]))
    n = int(selection)
    ordered = sorted(faces, key=lambda f: float(f[:MESH_POINTS, 0].mean()))
    return ordered[n] if 0 <= n < len(ordered) else None


class FaceAligner:
    """Detects, smooths and aligns the face of every frame like the official LatentSync 1.5 code.

    resolution: 256 (LatentSync 1.5) or 512 (1.6). face: ``"largest"`` or the index from the left.
    max_gap: runs of up to this many frames without a face are bridged; longer runs are not-found.
    backend: a ``LandmarkBackend`` (default: the legacy face mesh when installed, else the Tasks
    FaceLandmarker on ``task_path``; without one, ``face_landmarker.task`` is looked up in
    ``<models_dir>/latentsync/`` (``models_dir``, else env ``LATENTSYNC_MODELS``), ``task_folders``
    and the cache, and downloaded when ``download`` is True and ``HF_HUB_OFFLINE`` is not set; see
    ``task_file.resolve_task_file``). workers: threads for detection and the warps (mediapipe and
    OpenCV release the GIL). Detection runs one landmark model per thread (they are not thread-safe);
    static-image mode makes every frame independent, so the landmarks equal a one-thread run bit for
    bit. A ``backend`` passed in is a single instance: detection then runs on one thread.
    """

    def __init__(
        self,
        resolution: int = RESOLUTION,
        *,
        face: str | int = FaceOptions().face,
        max_gap: int = MAX_FACE_GAP,
        backend: LandmarkBackend | None = None,
        task_path: str | None = None,
        models_dir: str | None = None,
        task_folders: Sequence[str] = (),
        download: bool = True,
        workers: int | None = None,
    ):
        if resolution not in SUPPORTED_RESOLUTIONS:
            raise ValueError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
        if face != "largest" and (not isinstance(face, int) or face < 0):
            raise ValueError(f"face must be 'largest' or an index >= 0, got {face!r}")
        self.resolution = resolution
        self.face = face
        self.max_gap = max_gap
        self.task_path = task_path
        self.models_dir = models_dir
        self.task_folders = list(task_folders)
        self.download = download
        self.workers = default_workers() if workers is None else workers
        self._backend = backend
        self._own_backends = backend is None
        self._extra_backends: list[LandmarkBackend] = []  # detection threads 2.. (own backends only)

    def _open_backend(self) -> LandmarkBackend:
        max_faces = 4 if self.face == "largest" else max(4, int(self.face) + 1)
        return open_backend(
            max_faces, self.task_path, models_dir=self.models_dir, folders=self.task_folders, download=self.download,
        )  # fmt: skip

    @property
    def backend(self) -> LandmarkBackend:
        if self._backend is None:
            self._backend = self._open_backend()
            if self.task_path is None and hasattr(self._backend, "model_path"):
                self.task_path = self._backend.model_path  # resolved once; the other threads' copies reuse it
        return self._backend

    def _backends(self, count: int) -> list[LandmarkBackend]:
        """``count`` landmark models for as many detection threads (fewer for a backend passed in)."""
        first = self.backend
        if not self._own_backends:
            return [first]
        while len(self._extra_backends) < count - 1:
            self._extra_backends.append(self._open_backend())
        return [first, *self._extra_backends[: count - 1]]

    def close(self) -> None:
        for backend in [self._backend, *self._extra_backends] if self._own_backends else []:
            if backend is not None:
                backend.close()
        self._extra_backends = []
        if self._own_backends:
            self._backend = None

    def detect(self, frames: Sequence[np.ndarray], progress: Progress | None = None, total: int | None = None):
        """Raw 68-point landmarks per frame: (``[N, 68, 2]`` float64, NaN where none; found bool ``[N]``)."""
        n = len(frames)
        landmarks = np.full((n, 68, 2), np.nan)
        found = np.zeros(n, dtype=bool)
        idle: queue.SimpleQueue[LandmarkBackend] = queue.SimpleQueue()
        backends = self._backends(max(1, min(self.workers, n)))
        for backend in backends:
            idle.put(backend)

        def detect_one(i: int) -> np.ndarray | None:
            backend = idle.get()  # ordered_map runs at most len(backends) calls at once: never waits
            try:
                return select_face(backend.detect(_rgb_uint8(frames[i])), self.face)
            finally:
                idle.put(backend)

        for i, mesh in enumerate(ordered_map(detect_one, range(n), len(backends))):
            if mesh is not None:
                landmarks[i], found[i] = to_68(mesh), True
            if progress is not None:
                progress(i + 1, total or n)
        return landmarks, found

    def track(self, landmarks68: np.ndarray, found) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw landmarks of a whole clip -> (smoothed landmarks float64 ``[N, 68, 2]``, affines float64
        ``[N, 2, 3]`` (NaN where no face), found bool ``[N]`` (bridged frames included), bridged bool ``[N]``):
        gaps of up to ``max_gap`` frames bridged, then the official smoothing and similarity transforms.
        Raises :class:`FaceError` when no frame has the face."""
        found = np.asarray(found, dtype=bool)
        if not found.any():
            raise FaceError(no_face_message(len(found), self.face))
        landmarks, found, bridged = bridge_gaps(landmarks68, found, self.max_gap)
        smoothed, affines = track_affines(landmarks, found, self.resolution)
        return smoothed, affines, found, bridged

    def warp(self, frame: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """One frame uint8 ``[H, W, 3]`` -> its aligned face uint8 ``[res, res, 3]`` (official Lanczos warp)."""
        return warp_face(frame, affine, self.resolution)

    def build(
        self,
        frames: Sequence[np.ndarray],
        landmarks68: np.ndarray,
        found: np.ndarray,
        progress: Progress | None = None,
        step0: int = 0,
        total: int | None = None,
        sink: Callable[[int, np.ndarray], None] | None = None,
    ) -> AlignmentResult:
        """Bridge gaps, smooth, transform and warp: raw landmarks -> ``AlignmentResult``.

        sink: when given, each aligned face (uint8 ``[res, res, 3]``) is handed to ``sink(i, face)``
        (from worker threads, one call per frame) instead of being collected: the result's ``faces`` is
        then None, so a caller that stores faces in its own format holds no second copy of them.
        """
        n = len(frames)
        if n == 0:
            raise FaceError("no frames to align: the image batch is empty")
        smoothed, affines, found, bridged = self.track(landmarks68, found)
        first = _rgb_uint8(frames[0])
        frame_size = first.shape[:2]
        res = self.resolution
        faces = None if sink is not None else np.full((n, res, res, 3), FACE_BORDER_VALUE, dtype=np.uint8)
        grey = np.full((res, res, 3), FACE_BORDER_VALUE, dtype=np.uint8)

        def warp(i: int) -> None:
            frame = first if i == 0 else _rgb_uint8(frames[i])
            if frame.shape[:2] != frame_size:
                raise FaceError(
                    f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, frame 0 is {frame_size[1]}x{frame_size[0]}"
                )
            face = self.warp(frame, affines[i]) if found[i] else None
            if sink is not None:
                sink(i, grey if face is None else face)
            elif face is not None:
                faces[i] = face

        for i, _ in enumerate(ordered_map(warp, range(n), self.workers)):
            if progress is not None:
                progress(step0 + i + 1, total or n)
        track = FaceTrack(
            affines=affines,
            found=found.copy(),
            landmarks=smoothed.astype(np.float32),
            frame_size=(int(frame_size[0]), int(frame_size[1])),
            crop_size=crop_size(res),
            resolution=res,
        )
        missing = runs(~found)
        result = AlignmentResult(
            faces, affines, smoothed, found, bridged, track, getattr(self._backend, "name", ""), missing
        )
        if missing or bridged.any():
            logger.warning("LatentSync face alignment: %s", result.summary())
        return result

    def align(
        self,
        frames: Sequence[np.ndarray],
        progress: Progress | None = None,
        sink: Callable[[int, np.ndarray], None] | None = None,
    ) -> AlignmentResult:
        """frames: uint8 ``[N, H, W, 3]`` RGB (or any sequence of such frames) -> ``AlignmentResult``.

        Works frame by frame (two passes: detection, then warping): no copy of the whole video.
        ``progress(done, total)`` is called after every frame of each pass (total = 2N); ``sink``: see
        :meth:`build`.
        """
        total = 2 * len(frames)
        landmarks, found = self.detect(frames, progress, total)
        return self.build(frames, landmarks, found, progress, len(frames), total, sink=sink)


def _rgb_uint8(frame) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB frame, got {frame.dtype} {frame.shape}")
    return frame
