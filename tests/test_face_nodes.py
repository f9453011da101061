"""The two face nodes as ComfyUI runs them (IMAGE float tensors, UI text, progress, interruption)."""

from __future__ import annotations

import importlib

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core.face.landmarks import legacy_face_mesh_available

pytestmark = pytest.mark.face


@pytest.fixture
def detector(request, tmp_path):
    """A real landmark backend for the node: the legacy mesh when installed, else the Tasks backend with
    the test .task in an extra models/latentsync folder (as extra_model_paths.yaml would add one)."""
    import folder_paths

    if legacy_face_mesh_available():
        yield "legacy"
        return
    task = request.getfixturevalue("task_file")
    folder = tmp_path / "extra_models" / "latentsync"
    folder.mkdir(parents=True)
    (folder / "face_landmarker.task").symlink_to(task)
    paths = folder_paths.folder_names_and_paths["latentsync"][0]
    paths.append(str(folder))
    try:
        yield "tasks"
    finally:
        paths.remove(str(folder))


def core(pack, module):
    """A module of latentsync_core as the pack imported it (its classes differ from top-level ones)."""
    return importlib.import_module(f"{pack.__name__}.latentsync_core.{module}")


def golden_frame(i):
    return cv2.cvtColor(cv2.imread(str(FIXTURES / "face" / f"detect_{i}.png")), cv2.COLOR_BGR2RGB)


@pytest.fixture
def video(detector, clip):
    return clip


@pytest.fixture(scope="module")
def clip():
    """IMAGE [6, 480, 640, 3]: face, face, blank, face, blank x2 (a 1-frame gap and a 2-frame tail)."""
    face0, face15 = golden_frame(0), golden_frame(15)
    blank = np.full_like(face0, 30)
    frames = np.stack([face0, face15, blank, face0, blank, blank])
    return torch.from_numpy(frames).float() / 255.0


def run_align(pack, images, **kw):
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncFaceCropAlign"]()
    args = {"face": "largest", "face_index": 0, "max_gap_frames": 1, "resolution": 256} | kw
    return node.align(images, **args)


def test_crop_align_node(pack, video):
    import comfy.utils

    comfy.utils.UPDATES.clear()
    out = run_align(pack, video)
    faces, mask, track = out["result"]
    assert faces.shape == (6, 256, 256, 3) and faces.dtype == torch.float32
    assert 0.0 <= faces.min() and faces.max() <= 1.0
    assert mask.shape == (1, 256, 256) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask[0, 200, 128] == 1.0 and mask[0, 40, 128] == 0.0  # 1 = mouth region that is regenerated
    assert isinstance(track, core(pack, "types").FaceTrack) and track.frame_size == (480, 640)
    assert track.found.tolist() == [True, True, True, True, False, False]
    (text,) = out["ui"]["text"]
    assert "1 bridged (frames 2)" in text and "NO FACE in 2 frames" in text and "4-5" in text
    assert comfy.utils.UPDATES[-1] == (12, 12)  # two passes over 6 frames


def test_crop_align_under_inference_mode_with_worker_threads(pack, video, detector, request, monkeypatch):
    """ComfyUI runs every node under torch.inference_mode() (thread-local): the faces the warp threads
    produce must still reach the IMAGE output, identical to a plain run."""
    aligner_mod = core(pack, "face.aligner")
    monkeypatch.setattr(aligner_mod, "default_workers", lambda: 3)
    plain = run_align(pack, video)["result"][0]
    with torch.inference_mode():
        faces = run_align(pack, video)["result"][0]
    assert torch.equal(faces, plain)
    # The library alone, on the node's backend (the test .task, never a download, on the Tasks backend).
    task = request.getfixturevalue("task_file") if detector == "tasks" else None
    aligner = core(pack, "face").FaceAligner(256, max_gap=1, task_path=task, download=False)
    expected = torch.from_numpy(aligner.align(video.mul(255).round().byte().numpy()).faces)
    assert torch.equal(plain, expected.float() / 255.0)


def test_paste_back_node_loops_and_keeps_untouched_frames_bit_identical(pack, video):
    _, _, track = run_align(pack, video)["result"]
    faces = torch.rand((len(track), 256, 256, 3))
    looped = track.take([0, 1, 2, 3, 4, 5, 4, 3])  # the sampler ping-ponged the video
    faces_looped = faces[[0, 1, 2, 3, 4, 5, 4, 3]]
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncPasteBack"]()
    out, weights = node.paste(video, faces_looped, looped, "reference (OpenCV)")
    assert out.shape == (8, 480, 640, 3)
    torch.testing.assert_close(out[4], video[4], rtol=0, atol=0)  # no face: untouched
    torch.testing.assert_close(out[6], video[4], rtol=0, atol=0)
    changed = (out[0] != video[0]).any(-1)
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert 0 < len(ys) < 0.2 * 480 * 640  # only around the face
    torch.testing.assert_close(out[7], out[3], rtol=0, atol=0)  # same frame, same face
    fast, _ = node.paste(video, faces_looped, looped, "fast (torch/kornia)")
    assert (fast - out).abs().mean() * 255 < 1.0
    auto, _ = node.paste(video, faces_looped, looped, "auto")  # CPU here: the reference path
    torch.testing.assert_close(auto, out, rtol=0, atol=0)


def test_paste_back_node_blend_mask_output_and_options(pack, video):
    _, _, track = run_align(pack, video)["result"]
    faces = torch.rand((len(track), 256, 256, 3))
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncPasteBack"]()
    face, face_w = node.paste(video, faces, track, "reference (OpenCV)")
    assert face_w.shape == (6, 480, 640) and face_w.dtype == torch.float32
    assert 0.0 <= face_w.min() and face_w.max() <= 1.0
    assert (face_w[4] == 0).all() and (face_w[0] > 0).any()  # no face: nothing blended
    changed = (face != video).any(-1)
    assert not changed[face_w == 0].any()  # weight 0 -> the input pixel
    # mouth: only the mouth region changes (a strict subset of the face blend), the rest is the input
    mouth, mouth_w = node.paste(video, faces, track, "reference (OpenCV)", blend="mouth")
    assert not (mouth != video).any(-1)[mouth_w == 0].any()
    assert 0 < (mouth_w > 0).sum() < 0.5 * (face_w > 0).sum()
    assert not ((mouth_w > 0) & (face_w == 0)).any()
    # shrinking the region and a hard edge change the weights as asked
    _, shrunk = node.paste(video, faces, track, "reference (OpenCV)", mask_grow=-10, feather=0)
    def soft(w):
        return ((w > 0) & (w < 1)).sum()

    assert (shrunk > 0).sum() < (face_w > 0).sum() and soft(shrunk) < 0.2 * soft(face_w)  # only the warp's edge
    # protect_mask: a [1,H,W] mask of zeros on the left half keeps those pixels exactly the input
    protect = torch.ones((1, 480, 640))
    protect[:, :, :320] = 0
    kept, kept_w = node.paste(video, faces, track, "reference (OpenCV)", protect_mask=protect)
    assert (kept_w[:, :, :320] == 0).all() and (kept_w[:, :, 320:] > 0).any()
    torch.testing.assert_close(kept[:, :, :320], video[:, :, :320], rtol=0, atol=0)
    with pytest.raises(core(pack, "errors").InputMismatchError, match="protect_mask"):
        node.paste(video, faces, track, protect_mask=torch.ones((2, 480, 640)))


def test_paste_back_node_accepts_upscaled_faces(pack, video):
    """A face upscaled 4x (nearest) pastes back within 1 grey level of the original-size paste."""
    _, _, track = run_align(pack, video)["result"]
    faces = torch.rand((len(track), 256, 256, 3))
    big = faces.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncPasteBack"]()
    small, _ = node.paste(video, faces, track, "reference (OpenCV)")
    large, _ = node.paste(video, big, track, "reference (OpenCV)")
    assert (large - small).abs().max() * 255 <= 1.0 + 1e-4


def test_paste_back_node_input_errors(pack, video):
    InputMismatchError = core(pack, "errors").InputMismatchError
    _, _, track = run_align(pack, video)["result"]
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncPasteBack"]()
    faces = torch.rand((len(track), 256, 256, 3))
    with pytest.raises(InputMismatchError, match="face track has 6"):
        node.paste(video, faces[:5], track)
    with pytest.raises(InputMismatchError, match="aligned on 640x480"):
        node.paste(video[:, :240], faces, track)
    with pytest.raises(InputMismatchError, match="only 3 images"):
        node.paste(video[:3], faces, track)
    with pytest.raises(InputMismatchError, match="square faces"):
        node.paste(video, torch.rand((6, 512, 384, 3)), track)
    with pytest.raises(InputMismatchError):
        node.paste(video, faces, "not a track")


def test_crop_align_interrupt(pack, video):
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run_align(pack, video)
    assert not mm.processing_interrupted()


def test_crop_align_face_index_and_no_face(pack, video):
    FaceError = core(pack, "errors").FaceError

    out = run_align(pack, video[:1], face="index from left", face_index=0)
    assert out["result"][2].found.tolist() == [True]
    with pytest.raises(FaceError, match="face #1"):
        run_align(pack, video[:1], face="index from left", face_index=1)
    with pytest.raises(FaceError, match="No face found"):
        run_align(pack, video[4:])


def test_task_file_lookup_for_new_mediapipe(pack, monkeypatch, comfy_base):
    """mediapipe >= 0.10.30 (no legacy face mesh): the node finds or fetches models/latentsync/face_landmarker.task."""
    import urllib.error

    face_nodes = importlib.import_module(f"{pack.__name__}.nodes.face")
    task_file = core(pack, "face.task_file")
    folder = comfy_base / "models" / "latentsync"
    monkeypatch.setattr(face_nodes, "legacy_face_mesh_available", lambda: False)
    monkeypatch.setattr(face_nodes, "tasks_available", lambda: True)

    def offline(url, timeout):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(task_file.urllib.request, "urlopen", offline)
    with pytest.raises(core(pack, "errors").ModelMissingError, match="face_landmarker.task") as err:
        face_nodes.task_path()
    assert str(folder) in str(err.value) and "storage.googleapis.com" in str(err.value)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "face_landmarker.task").write_bytes(b"bundle")
    try:
        assert face_nodes.task_path() == str(folder / "face_landmarker.task")  # present: no download
    finally:
        (folder / "face_landmarker.task").unlink()
    monkeypatch.setattr(face_nodes, "legacy_face_mesh_available", lambda: True)
    assert face_nodes.task_path() is None  # legacy face mesh: no file needed


def test_face_preview_node(pack, video):
    _, _, track = run_align(pack, video)["result"]
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncFacePreview"]()
    (small,) = node.preview(video, track, 320)
    assert small.shape == (6, 240, 320, 3) and small.dtype == torch.float32
    (full,) = node.preview(video, track, 0)
    assert full.shape == (6, 480, 640, 3)
    drawn = (full != video).any(-1)
    assert drawn[0].any() and drawn[3].any()  # face frames: landmarks and outlines drawn
    assert drawn[4, :100].any() and not drawn[4, 100:].any()  # no face: only the label, top left
    assert drawn[0, 100:].sum() > drawn[4].sum()  # landmarks and outlines below the label area
    looped = track.take([5, 0])
    (both,) = node.preview(video, looped, 0)
    torch.testing.assert_close(both[1], full[0], rtol=0, atol=0)  # follows the track's frame index
    with pytest.raises(core(pack, "errors").InputMismatchError, match="only 3 images"):
        node.preview(video[:3], track, 512)
