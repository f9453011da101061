"""Paste-back options (issue 11): blend face/mouth, mask_grow, feather, protect mask, blend-mask output,
faces of any square size. The defaults are the official restore (tests/test_face_geometry.py checks
them against the golden data); these tests check each option against an independent computation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core.constants import crop_size
from latentsync_core.errors import InputMismatchError
from latentsync_core.face import fixed_mask, paste_back, paste_back_track
from latentsync_core.face.paste import restore_frame
from latentsync_core.types import FaceTrack


@pytest.fixture(scope="module")
def clip():
    g = dict(np.load(FIXTURES / "face" / "geometry.npz"))
    y0, y1, x0, x1 = g["box"]
    frames = np.zeros((len(g["frame_ids"]), *g["frame_shape"]), dtype=np.uint8)
    frames[:, y0:y1, x0:x1] = g["frames"]
    return frames, g["affines"][g["frame_ids"]], 255 - g["faces"]  # inverted faces: every crop pixel changes


def mouth_region(affine: np.ndarray, frame_hw: tuple[int, int], resolution: int = 256) -> np.ndarray:
    """Independently: the fixed mask's 0-area resized to the crop and warped to the full frame, bool [H, W]."""
    w, h = crop_size(resolution)
    mouth = cv2.resize(1.0 - fixed_mask(resolution), (w, h), interpolation=cv2.INTER_LINEAR)
    warped = cv2.warpAffine(mouth, affine, frame_hw[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return warped >= 0.5


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


def test_explicit_defaults_are_the_official_restore(clip):
    frames, affines, faces = clip
    official = paste_back(frames, faces, affines)
    out, weights = paste_back(frames, faces, affines, blend="face", mask_grow=0, feather=None, return_mask=True)
    np.testing.assert_array_equal(out, official)
    assert weights.shape == frames.shape[:3] and weights.dtype == np.float32
    assert weights.min() == 0.0 and weights.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(weights == 0, ~changed(out, frames) & (weights == 0))  # no change where weight 0
    edge = int((weights[0] > 0).sum() ** 0.5) // 20  # the official blur size is what feather=None means
    assert edge > 2
    np.testing.assert_array_equal(paste_back(frames, faces, affines, feather=edge), official)


@pytest.mark.parametrize("fast", [False, True])
def test_mouth_blend_changes_only_the_mouth(clip, fast):
    frames, affines, faces = clip
    out, weights = paste_back(frames, faces, affines, blend="mouth", fast=fast, return_mask=True)
    face = paste_back(frames, faces, affines, fast=fast)
    for i in range(len(frames)):
        region = mouth_region(affines[i], frames.shape[1:3])
        # everything outside the regenerated mouth, the rest of the face included, is bit-identical
        outside = ~cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # 1 px: warp rounding
        np.testing.assert_array_equal(out[i][outside], frames[i][outside])
        assert not (weights[i][outside] > 0).any()
        assert changed(face[i], frames[i])[outside].sum() > 5_000  # the face blend does change it
        # the mouth itself comes from the generated face (the interior: weight 1, same pixels as face blend)
        inner = cv2.erode(region.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)
        assert inner.sum() > 1000
        assert (weights[i][inner] > 0.999).all()
        assert np.abs(out[i][inner].astype(int) - face[i][inner]).max() <= 1
        assert changed(out[i], frames[i]).sum() > 0.5 * region.sum()


def test_mouth_blend_fast_path_close_to_reference(clip):
    frames, affines, faces = clip
    ref, w_ref = paste_back(frames, faces, affines, blend="mouth", return_mask=True)
    fast, w_fast = paste_back(frames, faces, affines, blend="mouth", fast=True, return_mask=True)
    assert np.abs(fast.astype(float) - ref).mean() < 1.0
    assert np.abs(w_fast - w_ref).mean() < 0.01


@pytest.mark.parametrize("fast", [False, True])
def test_feather_sets_the_soft_edge(clip, fast):
    frames, affines, faces = clip
    _, hard = paste_back(frames[:1], faces[:1], affines[:1], blend="mouth", feather=0, fast=fast, return_mask=True)
    assert ((hard == 0) | (hard > 0.999)).all()  # no feather: a hard-edged region
    _, soft4 = paste_back(frames[:1], faces[:1], affines[:1], blend="mouth", feather=4, fast=fast, return_mask=True)
    _, soft12 = paste_back(frames[:1], faces[:1], affines[:1], blend="mouth", feather=12, fast=fast, return_mask=True)
    full = [(m > 0.999).sum() for m in (hard, soft4, soft12)]
    partial = [((m > 0.001) & (m < 0.999)).sum() for m in (hard, soft4, soft12)]
    assert full[0] > full[1] > full[2] and partial[0] == 0 < partial[1] < partial[2]
    assert ((soft12 > 0) <= (hard > 0)).all()  # the feather stays inside the region
    with pytest.raises(InputMismatchError, match="feather"):
        paste_back(frames[:1], faces[:1], affines[:1], feather=-1)


@pytest.mark.parametrize("fast", [False, True])
def test_mask_grow(clip, fast):
    frames, affines, faces = clip
    one = (frames[:1], faces[:1], affines[:1])
    base = paste_back(*one, blend="mouth", feather=0, fast=fast, return_mask=True)[1][0] > 0
    grown = paste_back(*one, blend="mouth", feather=0, mask_grow=6, fast=fast, return_mask=True)[1][0] > 0
    shrunk = paste_back(*one, blend="mouth", feather=0, mask_grow=-6, fast=fast, return_mask=True)[1][0] > 0
    crop = paste_back(*one, feather=0, fast=fast, return_mask=True)[1][0] > 0  # where the crop has pixels
    assert (cv2.dilate(base.astype(np.uint8), np.ones((13, 13), np.uint8)) > crop).any()  # the cap matters here
    np.testing.assert_array_equal(grown, (cv2.dilate(base.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0) & crop)
    np.testing.assert_array_equal(shrunk, cv2.erode(base.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0)
    # face mode: the crop edge is the limit, growing is a no-op; shrinking moves the blend inwards
    np.testing.assert_array_equal(paste_back(*one, mask_grow=5, fast=fast), paste_back(*one, fast=fast))
    w0 = paste_back(*one, fast=fast, return_mask=True)[1]
    w1 = paste_back(*one, mask_grow=-8, fast=fast, return_mask=True)[1]
    assert (w1 > 0).sum() < (w0 > 0).sum() and (w1 <= w0 + 1e-6).all()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("blend", ["face", "mouth"])
def test_protect_mask(clip, fast, blend):
    frames, affines, faces = clip
    n, h, w = frames.shape[:3]
    mask = np.ones((1, h, w), np.float32)
    ys, xs = np.nonzero(changed(paste_back(frames, faces, affines, blend=blend), frames).any(0))
    mid = (xs.min() + xs.max()) // 2
    mask[:, :, :mid] = 0.0  # protect the left half of the face
    mask[:, :, mid + 20 :] = 0.5  # and half-protect the far right
    out, weights = paste_back(frames, faces, affines, blend=blend, mask=mask, fast=fast, return_mask=True)
    np.testing.assert_array_equal(out[:, :, :mid], frames[:, :, :mid])
    assert changed(out, frames)[:, :, mid:].any()
    _, free = paste_back(frames, faces, affines, blend=blend, fast=fast, return_mask=True)
    np.testing.assert_allclose(weights, free * mask, atol=1e-6)
    per_frame = paste_back(frames, faces, affines, blend=blend, mask=np.repeat(mask, n, 0), fast=fast)
    np.testing.assert_array_equal(per_frame, out)
    np.testing.assert_array_equal(paste_back(frames, faces, affines, mask=torch.from_numpy(mask), blend=blend, fast=fast), out)


def test_protect_mask_errors(clip):
    frames, affines, faces = clip
    with pytest.raises(InputMismatchError, match="mask"):
        paste_back(frames, faces, affines, mask=np.ones((2, *frames.shape[1:3]), np.float32))
    with pytest.raises(InputMismatchError, match="mask"):
        paste_back(frames, faces, affines, mask=np.ones((1, 10, 10), np.float32))
    with pytest.raises(InputMismatchError, match="blend"):
        paste_back(frames, faces, affines, blend="lips")


def test_paste_back_track_mask_follows_frame_index(clip):
    frames, affines, faces = clip
    track = FaceTrack(affines, np.ones(4, bool), np.zeros((4, 68, 2), np.float32), frames.shape[1:3], (210, 280))
    looped = track.take([2, 0, 2])
    mask = np.ones((4, *frames.shape[1:3]), np.float32)
    mask[2] = 0.0  # source frame 2 fully protected
    out = paste_back_track(frames, faces[[2, 0, 2]], looped, mask=mask, blend="mouth")
    np.testing.assert_array_equal(out[0], frames[2])
    np.testing.assert_array_equal(out[2], frames[2])
    assert changed(out[1], frames[0]).any()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("blend", ["face", "mouth"])
def test_upscaled_faces_paste_like_the_original(clip, fast, blend):
    """A face upscaled 4x (nearest) pastes back within 1 grey level of the original-size paste."""
    frames, affines, faces = clip
    big = faces.repeat(4, axis=1).repeat(4, axis=2)
    assert big.shape[1:3] == (1024, 1024)
    original = paste_back(frames, faces, affines, blend=blend, fast=fast)
    up = paste_back(frames, big, affines, resolution=256, blend=blend, fast=fast)
    assert np.abs(up.astype(int) - original).max() <= 1
    as_float = torch.from_numpy(big).float() / 255.0  # ComfyUI IMAGE values
    up_f = paste_back(frames, as_float, affines, resolution=256, blend=blend, fast=fast)
    assert np.abs(up_f.astype(int) - original).max() <= 1
    track = FaceTrack(affines, np.ones(4, bool), np.zeros((4, 68, 2), np.float32), frames.shape[1:3], (210, 280))
    np.testing.assert_array_equal(paste_back_track(frames, big, track, blend=blend, fast=fast), up)
    with pytest.raises(InputMismatchError, match="square"):
        paste_back(frames, big[:, :, :512], affines, resolution=256)


def test_restore_frame_returns_the_weight_it_used(clip):
    frames, affines, faces = clip
    crop = cv2.resize(faces[0], crop_size(256), interpolation=cv2.INTER_LINEAR)
    patch, box, weight = restore_frame(frames[0], crop, affines[0], blend="mouth", return_mask=True)
    y0, y1, x0, x1 = box
    assert weight.shape == (y1 - y0, x1 - x0) and patch.shape == (y1 - y0, x1 - x0, 3)
    keep = weight == 0
    np.testing.assert_array_equal(patch[keep], frames[0, y0:y1, x0:x1][keep])
    plain = restore_frame(frames[0], crop, affines[0], blend="mouth")
    assert len(plain) == 2 and plain[1] == box
    np.testing.assert_array_equal(plain[0], patch)
