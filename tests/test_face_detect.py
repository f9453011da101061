"""Landmark backends: real detection with the offline backend, the Tasks adapter, the .task download."""

from __future__ import annotations

import io
import os
import urllib.error
import zipfile
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import FIXTURES

from latentsync_core.constants import FACE_LANDMARKER_FILENAME, FACE_LANDMARKER_URL
from latentsync_core.errors import LatentSyncError, ModelMissingError
from latentsync_core.face import FaceAligner, open_backend
from latentsync_core.face import task_file as task_file_module
from latentsync_core.face.landmarks import (
    MESH_POINTS,
    faces_from_tasks_result,
    legacy_face_mesh_available,
    to_68,
)
from latentsync_core.face.task_file import ensure_task_file

FACE = FIXTURES / "face"
DETECT_FRAMES = (0, 15)


def load_frame(i):
    return cv2.cvtColor(cv2.imread(str(FACE / f"detect_{i}.png")), cv2.COLOR_BGR2RGB)


@pytest.mark.skipif(not legacy_face_mesh_available(), reason="needs mediapipe <= 0.10.21 (offline face mesh)")
def test_real_detection_on_golden_frames():
    frames = np.stack([load_frame(i) for i in DETECT_FRAMES])
    aligner = FaceAligner(256)
    try:
        landmarks, found = aligner.detect(frames)
        assert "legacy" in aligner.backend.name
    finally:
        aligner.close()
    assert found.all()
    for lm, i in zip(landmarks, DETECT_FRAMES):
        golden = np.load(FACE / f"detect_{i}_landmarks68.npy")
        assert np.linalg.norm(lm - golden, axis=-1).mean() <= 2.0


@pytest.mark.skipif(not legacy_face_mesh_available(), reason="needs mediapipe <= 0.10.21 (offline face mesh)")
def test_real_detection_finds_nothing_in_a_blank_frame():
    backend = open_backend(prefer="legacy")
    try:
        assert backend.detect(np.full((240, 320, 3), 128, np.uint8)) == []
        faces = backend.detect(load_frame(0))
        assert len(faces) == 1 and faces[0].shape == (MESH_POINTS, 2)
    finally:
        backend.close()


def recorded_tasks_result(mesh_pixels, width, height):
    """A FaceLandmarkerResult as mediapipe Tasks returns it: per face 478 NormalizedLandmark(x, y, z)."""
    iris = np.repeat(mesh_pixels[:1], 10, axis=0)  # 10 extra iris points after the 468 mesh points
    points = np.concatenate([mesh_pixels, iris]) + 0.5  # pixel centres, then normalised
    landmarks = [SimpleNamespace(x=x / width, y=y / height, z=0.0) for x, y in points]
    return SimpleNamespace(face_landmarks=[landmarks], face_blendshapes=[], facial_transformation_matrixes=[])


def test_tasks_adapter_on_recorded_output():
    mesh = np.load(FACE / "geometry.npz")["landmarks478"][0].astype(np.float64)
    faces = faces_from_tasks_result(recorded_tasks_result(mesh, 640, 480), 640, 480)
    assert len(faces) == 1 and faces[0].shape == (478, 2)
    np.testing.assert_array_equal(faces[0][:MESH_POINTS], mesh)  # truncated like int(x * width)
    np.testing.assert_array_equal(to_68(faces[0]), np.load(FACE / "detect_0_landmarks68.npy"))
    assert faces_from_tasks_result(SimpleNamespace(face_landmarks=[]), 640, 480) == []


def test_open_backend_choices(monkeypatch):
    with pytest.raises(ValueError):
        open_backend(prefer="nope")
    monkeypatch.setattr("latentsync_core.face.landmarks.legacy_face_mesh_available", lambda: False)
    with pytest.raises(ValueError, match="face_landmarker.task"):
        open_backend(prefer="auto")
    with pytest.raises(ImportError):
        open_backend(prefer="legacy")
    monkeypatch.setattr("latentsync_core.face.landmarks.tasks_available", lambda: False)
    with pytest.raises(LatentSyncError, match="pip install mediapipe"):
        open_backend(prefer="auto", task_path="x.task")


class FakeResponse(io.BytesIO):
    def __init__(self, data, length=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data) if length is None else length)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fake_bundle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:  # .task files are stored zips
        for name in ("face_detector.tflite", "face_landmarks_detector.tflite"):
            bundle.writestr(name, os.urandom(100_000))
    return buffer.getvalue()


def test_task_file_download(tmp_path, monkeypatch):
    payload = fake_bundle()
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(task_file_module.urllib.request, "urlopen", fake_urlopen)
    progress = []
    path = ensure_task_file(str(tmp_path / "latentsync"), progress=lambda d, t: progress.append((d, t)))
    assert path == str(tmp_path / "latentsync" / FACE_LANDMARKER_FILENAME)
    assert open(path, "rb").read() == payload and urls == [FACE_LANDMARKER_URL]
    assert progress[-1] == (len(payload), len(payload)) and len(progress) > 1
    assert os.listdir(tmp_path / "latentsync") == [FACE_LANDMARKER_FILENAME]
    # present: no second download
    assert ensure_task_file(str(tmp_path / "latentsync")) == path and len(urls) == 1


@pytest.mark.parametrize("failure", ["offline", "truncated", "not a bundle"])
def test_task_file_offline_message_and_no_partial_file(tmp_path, monkeypatch, failure):
    def fake_urlopen(url, timeout):
        if failure == "offline":
            raise urllib.error.URLError("no network")
        if failure == "not a bundle":  # e.g. a captive portal's HTML page
            return FakeResponse(b"<html>sign in</html>")
        return FakeResponse(fake_bundle()[:5000], length=len(fake_bundle()))

    monkeypatch.setattr(task_file_module.urllib.request, "urlopen", fake_urlopen)
    folder = tmp_path / "models" / "latentsync"
    with pytest.raises(ModelMissingError) as err:
        ensure_task_file(str(folder))
    message = str(err.value)
    assert FACE_LANDMARKER_URL in message and str(folder) in message
    assert os.listdir(folder) == []  # never a partial file, not even a temporary one
