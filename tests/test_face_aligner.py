"""FaceAligner behaviour the official code lacks: gaps, several faces, odd sizes, no face at all.

A scripted landmark backend replays the golden mediapipe mesh (moved/scaled per frame), so these tests
exercise the aligner's logic without depending on a detector.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES

from latentsync_core.errors import FaceError
from latentsync_core.face import FaceAligner, paste_back, select_face
from latentsync_core.face.gaps import bridge_gaps, format_ranges, runs
from latentsync_core.face.landmarks import to_68

pytestmark = pytest.mark.face


@pytest.fixture(scope="module")
def mesh():
    """The golden 468-point mesh of frame 0 (pixels of a 480x640 frame; face about 110 px wide)."""
    return np.load(FIXTURES / "face" / "geometry.npz")["landmarks478"][0].astype(np.float64)


class ScriptedBackend:
    """Returns ``script[i]`` (a list of meshes) for the i-th call."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def detect(self, frame):
        faces = self.script[self.calls]
        self.calls += 1
        return [f.copy() for f in faces]

    def close(self):
        pass


def blank(n, h=480, w=640):
    return np.full((n, h, w, 3), 90, dtype=np.uint8)


def test_runs_and_format():
    mask = np.array([1, 1, 0, 1, 0, 0, 0, 1], bool)
    assert runs(mask) == [(0, 1), (3, 3), (7, 7)]
    assert runs(~mask) == [(2, 2), (4, 6)]
    assert format_ranges(runs(mask)) == "0-1, 3, 7"
    assert runs(np.zeros(0, bool)) == []


def test_bridge_gaps_interpolates_short_and_keeps_long():
    n = 12
    lm = np.arange(n, dtype=np.float64)[:, None, None] * np.ones((1, 3, 2))
    found = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0], bool)
    out, found2, bridged = bridge_gaps(np.where(found[:, None, None], lm, np.nan), found, max_gap=3)
    np.testing.assert_array_equal(bridged, [1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(found2, found | bridged)
    np.testing.assert_allclose(out[3:5, 0, 0], [3.0, 4.0])  # linear between frames 2 and 5
    assert out[0, 0, 0] == 1.0 and out[11, 0, 0] == 10.0  # ends hold the nearest detection
    assert np.isnan(out[6:10]).all()  # a 4-frame gap > 3 stays missing
    _, found0, bridged0 = bridge_gaps(lm, found, max_gap=0)
    assert not bridged0.any() and (found0 == found).all()


def test_gaps_in_a_clip(mesh):
    script = [[mesh]] * 3 + [[]] * 2 + [[mesh + 4]] * 3 + [[]] * 7 + [[mesh]]
    result = FaceAligner(256, backend=ScriptedBackend(script)).align(blank(len(script)))
    assert result.found.tolist() == [True] * 8 + [False] * 7 + [True]
    assert result.bridged.tolist() == [False] * 3 + [True] * 2 + [False] * 11
    assert result.missing == [(8, 14)]
    assert np.isnan(result.affines[8:15]).all() and np.isfinite(result.affines[:8]).all()
    assert (result.faces[8:15] == 127).all()  # grey placeholders
    text = result.summary()
    assert "face found in 7/16 frames" in text and "2 bridged (frames 3-4)" in text
    assert "NO FACE in 7 frames" in text and "8-14" in text
    track = result.track
    assert not track.found[8:15].any() and track.found[:8].all()
    # the untouched frames pass through paste-back
    out = paste_back(blank(16), 255 - result.faces, track.affines, track.found)
    np.testing.assert_array_equal(out[8:15], blank(7))
    assert (out[0] != 90).any()


def test_sink_receives_every_face_and_nothing_is_kept(mesh):
    script = [[mesh]] * 2 + [[]] * 7 + [[mesh + 4]]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (len(script), 480, 640, 3), dtype=np.uint8)
    kept = FaceAligner(256, backend=ScriptedBackend(script), workers=2).align(frames)
    got = {}
    sunk = FaceAligner(256, backend=ScriptedBackend(script), workers=2).align(
        frames, sink=lambda i, face: got.__setitem__(i, face.copy()))
    assert sunk.faces is None and sorted(got) == list(range(len(script)))
    np.testing.assert_array_equal(np.stack([got[i] for i in range(len(script))]), kept.faces)
    np.testing.assert_array_equal(sunk.affines, kept.affines)


def test_bridged_frame_is_between_its_neighbours(mesh):
    script = [[mesh], [], [mesh + 10]]
    result = FaceAligner(256, backend=ScriptedBackend(script), max_gap=5).align(blank(3))
    t = result.affines[:, :, 2]
    assert result.bridged.tolist() == [False, True, False]
    assert t[2, 0] < t[1, 0] < t[0, 0]  # moving right: the crop offset moves left, the bridged one between


def test_no_face_anywhere_is_a_clear_error(mesh):
    with pytest.raises(FaceError, match="No face found in any of the 4 frames"):
        FaceAligner(256, backend=ScriptedBackend([[]] * 4)).align(blank(4))
    with pytest.raises(FaceError, match="face #2"):
        FaceAligner(256, face=2, backend=ScriptedBackend([[mesh, mesh + 200]] * 2)).align(blank(2))


def test_face_selection(mesh):
    small_left = (mesh - mesh.mean(0)) * 0.5 + [120, 240]
    big_right = mesh + [200, 0]
    faces = [big_right, small_left]
    assert select_face(faces, "largest") is big_right
    assert select_face(faces, 0) is small_left
    assert select_face(faces, 1) is big_right
    assert select_face(faces, 2) is None and select_face([], "largest") is None
    for choice, expected in (("largest", big_right), (0, small_left)):
        result = FaceAligner(256, face=choice, backend=ScriptedBackend([faces])).align(blank(1, 480, 900))
        np.testing.assert_allclose(result.landmarks[0], to_68(expected))


def test_one_frame_video_any_aspect_and_face_at_the_border(mesh):
    # a still image, portrait 9:16, face pushed half out of the left edge
    frame = np.random.default_rng(1).integers(0, 256, (1, 1280, 360, 3), dtype=np.uint8)
    moved = mesh - [250, -300]
    result = FaceAligner(256, backend=ScriptedBackend([[moved]])).align(frame)
    assert result.found.tolist() == [True] and result.faces.shape == (1, 256, 256, 3)
    assert (result.faces[0, :, :20] == 127).all()  # outside the frame: the official grey border
    out = paste_back(frame, result.faces, result.affines)
    assert out.shape == frame.shape


def test_progress_and_interrupt(mesh):
    seen = []
    FaceAligner(256, backend=ScriptedBackend([[mesh]] * 3)).align(blank(3), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done == 2:
            raise Stop

    backend = ScriptedBackend([[mesh]] * 5)
    with pytest.raises(Stop):
        FaceAligner(256, backend=backend).align(blank(5), progress=interrupt)
    assert backend.calls == 2  # stopped right away, not at the end


def test_frames_are_read_one_at_a_time(mesh):
    """A lazy frame sequence works (what the node passes: no uint8 copy of the whole video)."""

    class Lazy:
        def __init__(self, n):
            self.n, self.reads = n, 0

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            self.reads += 1
            return np.full((240, 320, 3), i, dtype=np.uint8)

    frames = Lazy(4)
    result = FaceAligner(256, backend=ScriptedBackend([[mesh / 2]] * 4)).align(frames)
    assert result.found.all() and frames.reads == 8  # two passes, one frame each time


def test_bad_arguments():
    with pytest.raises(ValueError):
        FaceAligner(300)
    with pytest.raises(ValueError):
        FaceAligner(256, face=-1)
    with pytest.raises(ValueError):
        FaceAligner(256, backend=ScriptedBackend([[]])).align(np.zeros((1, 8, 8), np.uint8))


def test_detection_threads_use_one_backend_each_and_keep_the_order(mesh, monkeypatch):
    """workers > 1: one landmark model per thread, never shared between two threads at once, results in
    frame order, every model closed; a backend passed in stays on one thread."""
    import threading
    import time

    from latentsync_core.face import aligner as aligner_module

    opened = []

    class Guarded:
        name = "guarded"

        def __init__(self, *args, **kwargs):
            self.lock, self.threads, self.closed = threading.Lock(), set(), False
            opened.append(self)

        def detect(self, frame):
            assert self.lock.acquire(blocking=False), "one landmark model used by two threads at once"
            try:
                self.threads.add(threading.get_ident())
                time.sleep(0.002)
                return [mesh + float(frame[0, 0, 0])]  # each frame's own mesh
            finally:
                self.lock.release()

        def close(self):
            self.closed = True

    monkeypatch.setattr(aligner_module, "open_backend", Guarded)
    frames = [np.full((480, 640, 3), v, dtype=np.uint8) for v in range(23)]
    aligner = FaceAligner(256, workers=3)
    landmarks, found = aligner.detect(frames)
    assert found.all() and len(opened) == 3
    expected = np.stack([to_68(mesh + v) for v in range(23)])
    assert np.array_equal(landmarks, expected)
    assert len(set().union(*(b.threads for b in opened))) > 1  # really ran on several threads
    aligner.close()
    assert all(b.closed for b in opened)

    scripted = ScriptedBackend([[mesh]] * 5)
    FaceAligner(256, backend=scripted, workers=3).detect(frames[:5])
    assert scripted.calls == 5
