"""Face geometry and paste-back against the official release (golden data, tests/fixtures/face)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core.constants import crop_size
from latentsync_core.face import FaceAligner, fixed_mask, paste_back, paste_back_track
from latentsync_core.face.landmarks import MESH_TO_68, to_68
from latentsync_core.face.paste import crop_window, restore_frame
from latentsync_core.types import FaceTrack

pytestmark = pytest.mark.face


@pytest.fixture(scope="module")
def golden():
    g = dict(np.load(FIXTURES / "face" / "geometry.npz"))
    y0, y1, x0, x1 = g["box"]
    canvas = np.zeros((len(g["frame_ids"]), *g["frame_shape"]), dtype=np.uint8)
    canvas[:, y0:y1, x0:x1] = g["frames"]  # nothing outside the box is ever read by the warps
    g["canvas"] = canvas
    return g


@pytest.fixture(scope="module")
def aligned(golden):
    """The official geometry run on the golden mediapipe landmarks of all 16 frames."""
    lm68 = np.stack([to_68(m.astype(np.float64)) for m in golden["landmarks478"]])
    frames = np.zeros((16, *golden["frame_shape"]), dtype=np.uint8)
    frames[golden["frame_ids"]] = golden["canvas"]
    return FaceAligner(256).build(frames, lm68, np.ones(16, dtype=bool))


def test_index_table_is_the_official_68_point_layout():
    assert len(MESH_TO_68) == 68 and len(set(MESH_TO_68)) == 68
    assert max(MESH_TO_68) < 468  # only mesh points both backends share


def test_smoothing_and_affines_match_official(golden, aligned):
    assert np.abs(aligned.landmarks - golden["smoothed68"]).max() <= 1e-6
    assert np.abs(aligned.affines - golden["affines"]).max() <= 1e-6
    track = aligned.track
    assert isinstance(track, FaceTrack) and track.crop_size == (210, 280) and track.frame_size == (480, 640)
    np.testing.assert_array_equal(track.frame_index, np.arange(16))


def test_faces_match_official(golden, aligned):
    faces = aligned.faces[golden["frame_ids"]]
    assert faces.shape == (4, 256, 256, 3) and faces.dtype == np.uint8
    assert np.abs(faces.astype(int) - golden["faces"]).max() <= 1


def test_fixed_mask():
    mask = fixed_mask(256)
    assert mask.shape == (256, 256) and set(np.unique(mask)) == {0.0, 1.0}
    assert mask[:90].min() == 1.0 and mask[200, 128] == 0.0  # keeps eyes and forehead, regenerates the mouth
    assert fixed_mask(512).shape == (512, 512)


def test_paste_back_matches_official_and_leaves_the_rest_bit_identical(golden):
    frames = golden["canvas"]
    affines = golden["affines"][golden["frame_ids"]]
    generated = 255 - golden["faces"]  # the golden stand-in for a generated face
    out = paste_back(frames, generated, affines)
    y0, y1, x0, x1 = golden["restored_box"]
    assert np.abs(out[:, y0:y1, x0:x1].astype(int) - golden["restored_crop"]).max() <= 1
    outside = out.copy()
    outside[:, y0:y1, x0:x1] = frames[:, y0:y1, x0:x1]
    np.testing.assert_array_equal(outside, frames)


def test_public_names_and_serial_path_agree(golden, aligned):
    import latentsync_core

    frames = golden["canvas"]
    affines = golden["affines"][golden["frame_ids"]]
    threaded = latentsync_core.paste_back(frames, 255 - golden["faces"], affines)
    np.testing.assert_array_equal(paste_back(frames, 255 - golden["faces"], affines, workers=1), threaded)
    assert latentsync_core.FaceAligner is FaceAligner
    lm68 = np.stack([to_68(m.astype(np.float64)) for m in golden["landmarks478"][:4]])
    serial = FaceAligner(256, workers=1).build(frames, lm68, np.ones(4, bool))
    threaded = FaceAligner(256, workers=3).build(frames, lm68, np.ones(4, bool))
    np.testing.assert_array_equal(serial.faces, threaded.faces)


def test_fast_path_close_to_reference(golden):
    frames = golden["canvas"]
    affines = golden["affines"][golden["frame_ids"]]
    generated = 255 - golden["faces"]
    ref = paste_back(frames, generated, affines).astype(np.float64)
    fast = paste_back(frames, generated, affines, fast=True, device="cpu").astype(np.float64)
    assert np.abs(fast - ref).mean() < 1.0
    y0, y1, x0, x1 = golden["restored_box"]
    assert np.abs(fast - ref)[:, y0:y1, x0:x1].mean() < 1.0
    changed = np.abs(fast - frames).sum(-1) > 0
    ys, xs = np.nonzero(changed.any(0))
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1


def test_float_faces_and_not_found_frames(golden):
    frames = golden["canvas"][:2]
    affines = golden["affines"][golden["frame_ids"][:2]].copy()
    faces_u8 = 255 - golden["faces"][:2]
    faces_f = torch.from_numpy(faces_u8).float() / 255.0
    np.testing.assert_array_equal(paste_back(frames, faces_f, affines), paste_back(frames, faces_u8, affines))
    out = paste_back(frames, faces_u8, affines, found=np.array([False, True]))
    np.testing.assert_array_equal(out[0], frames[0])  # not found: passes through
    assert (out[1] != frames[1]).any()
    affines[1] = np.nan  # a NaN affine (not-found entry of a FaceTrack) also passes through
    np.testing.assert_array_equal(paste_back(frames, faces_u8, affines)[1], frames[1])


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    "frame_hw, shift",
    [((300, 200), (0, 0)), ((720, 1280), (-180, -80)), ((480, 640), (400, 0)), ((480, 640), (-300, -120))],
)
def test_paste_back_any_size_and_border_only_touches_the_crop(golden, frame_hw, shift, fast):
    """Portrait, 720p, and faces half outside the frame: no crash, changes only inside the crop window."""
    rng = np.random.default_rng(0)
    h, w = frame_hw
    frames = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    affine = golden["affines"][:1].copy()
    affine[0, :, 2] += affine[0, :, :2] @ np.array(shift, dtype=np.float64)  # move the face by -shift px
    faces = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    out = paste_back(frames, faces, affine, fast=fast)
    y0, y1, x0, x1 = crop_window(affine[0], crop_size(256), (h, w))
    outside = out.copy()
    outside[:, y0:y1, x0:x1] = frames[:, y0:y1, x0:x1]
    np.testing.assert_array_equal(outside, frames)
    if y1 > y0 and x1 > x0 and not fast:
        patch, box = restore_frame(frames[0], np.zeros((280, 210, 3), np.uint8), affine[0])
        assert box == (y0, y1, x0, x1) and patch.shape == (y1 - y0, x1 - x0, 3)


def test_paste_back_track_follows_frame_index(golden):
    frames = golden["canvas"][:2]
    affines = golden["affines"][golden["frame_ids"][:2]]
    track = FaceTrack(affines, np.ones(2, bool), np.zeros((2, 68, 2), np.float32), (480, 640), (210, 280))
    looped = track.take([0, 1, 1, 0, 0])
    faces = (255 - golden["faces"])[[0, 1, 1, 0, 0]]
    out = paste_back_track(frames, faces, looped)
    assert out.shape == (5, 480, 640, 3)
    direct = paste_back(frames, faces[:2], affines)
    np.testing.assert_array_equal(out[3], direct[0])
    np.testing.assert_array_equal(out[2], direct[1])
    with pytest.raises(ValueError):
        paste_back_track(frames, faces[:4], looped)


def test_resolution_512_geometry(golden):
    lm68 = to_68(golden["landmarks478"][0].astype(np.float64))[None]
    result = FaceAligner(512).build(golden["canvas"][:1], lm68, np.ones(1, bool))
    assert result.faces.shape == (1, 512, 512, 3) and result.track.crop_size == (420, 560)
    # the 512 template is the 256 one scaled by 2: same face, twice the pixels (the official bias term
    # is in normalised units, not pixels, so the translation differs by a fraction of a pixel)
    np.testing.assert_allclose(result.affines[0, :, :2], 2 * golden["affines"][0, :, :2], atol=1e-9)
    np.testing.assert_allclose(result.affines[0, :, 2], 2 * golden["affines"][0, :, 2], atol=1.0)
    out = paste_back(golden["canvas"][:1], result.faces, result.affines)
    assert np.abs(out.astype(int) - golden["canvas"][:1]).mean() < 1.0  # own face back in: nearly invisible
