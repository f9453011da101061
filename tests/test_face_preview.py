"""Face diagnostics drawing (issue 11): landmarks, alignment points, crop and mouth outlines land where
the geometry says, and nothing is drawn far from them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import FIXTURES

from latentsync_core.constants import crop_size
from latentsync_core.face import fixed_mask
from latentsync_core.face.geometry import three_points
from latentsync_core.face.preview import draw_preview, draw_previews, mouth_outline
from latentsync_core.types import FaceTrack


@pytest.fixture(scope="module")
def face():
    g = np.load(FIXTURES / "face" / "geometry.npz")
    frame = np.full((*g["frame_shape"][:2], 3), 60, np.uint8)
    return frame, g["smoothed68"][0], g["affines"][0]


def near(changed: np.ndarray, xy, radius: int) -> bool:
    x, y = int(round(xy[0])), int(round(xy[1]))
    return bool(changed[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1].any())


def test_draws_where_the_geometry_is(face):
    frame, lm, affine = face
    before = frame.copy()
    out = draw_preview(frame, lm, affine, 256)
    np.testing.assert_array_equal(frame, before)  # input untouched
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = (out != frame).any(-1)
    green = (out[..., 1] > 150) & (out[..., 0] < 100)
    for p in lm:  # every landmark has a dot (green) on it
        assert near(green, p, 1)
    red = (out[..., 0] > 150) & (out[..., 1] < 100) & (out[..., 2] < 100)
    for p in three_points(lm):  # a red ring of radius 3 around each alignment point
        assert near(red, p + [3, 0], 1) or near(red, p - [3, 0], 1)
    inverse = cv2.invertAffineTransform(affine)
    w, h = crop_size(256)
    for cx, cy in [(0, 0), (w, 0), (w, h), (0, h), (w / 2, 0), (0, h / 2)]:  # the crop outline
        assert near(changed, inverse @ [cx, cy, 1], 1)
    # the mouth outline: the border of the fixed mask's 0-area, warped back
    region = (fixed_mask(256) < 0.5).astype(np.uint8)
    border = np.argwhere(region - cv2.erode(region, np.ones((3, 3), np.uint8)))  # (y, x) face pixels
    for y, x in border[:: len(border) // 20]:
        crop_xy = ((x + 0.5) * w / 256 - 0.5, (y + 0.5) * h / 256 - 0.5)
        assert near(changed, inverse @ [*crop_xy, 1], 2)
    # far from the face nothing is drawn
    corners = np.round(cv2.transform(np.array([[[0, 0], [w, 0], [w, h], [0, h]]], np.float64), inverse)[0])
    x0, y0 = corners.min(0).astype(int) - 5
    x1, y1 = corners.max(0).astype(int) + 5
    outside = np.ones_like(changed)
    outside[max(0, y0) : y1, max(0, x0) : x1] = False
    assert outside.sum() > 0.5 * outside.size and not changed[outside].any()
    assert all(len(c) >= 3 for c in mouth_outline(256))


def test_no_face_and_downscale(face):
    frame, lm, affine = face
    none = draw_preview(frame, None, np.full((2, 3), np.nan), 256)
    assert (none != frame).any() and not (none[100:] != frame[100:]).any()  # only the label, top left
    small = draw_preview(frame, lm, affine, 256, max_size=320)
    assert small.shape == (240, 320, 3)
    changed = (small != 60).any(-1)
    for p in three_points(lm) * 0.5:
        assert near(changed, p, 3)
    assert not changed[:, :100].any() and not changed[110:].any() and not changed[:, 180:].any()


def test_draw_previews_follows_the_track(face):
    frame, lm, affine = face
    frames = np.stack([frame, np.full_like(frame, 200)])
    track = FaceTrack(
        np.stack([affine, np.full((2, 3), np.nan)]),
        np.array([True, False]),
        np.stack([lm, np.full_like(lm, np.nan)]).astype(np.float32),
        frame.shape[:2],
        crop_size(256),
    ).take([1, 0, 1])
    out = draw_previews(frames, track, max_size=None)
    assert out.shape == (3, *frame.shape)
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], draw_preview(frames[1], None, None))  # frame 1 (200): no face, label only
    assert (out[0] == 200).mean() > 0.99
    np.testing.assert_array_equal(out[1], draw_preview(frames[0], lm.astype(np.float32), affine))  # frame 0 drawn
    assert draw_previews(frames, track, max_size=320).shape == (3, 240, 320, 3)
