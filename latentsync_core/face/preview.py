"""Face diagnostics: draw what the alignment saw onto a frame, so a user sees at once why a clip looks wrong.

Drawn (OpenCV, anti-aliased): the 68 landmarks (green dots), the three alignment points (eyebrow centres
and nose centre, :func:`~.geometry.three_points`: red rings), the crop outline (the crop rectangle warped
back into the frame: yellow) and the regenerated-mouth outline (the fixed mask's 0-area warped back:
cyan). Frames without a face get a red "no face" label. ``max_size`` downscales first (cheap previews of
large videos); everything is drawn at the preview's scale.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ..constants import RESOLUTION, crop_size
from .geometry import three_points
from .paste import fixed_mask

LANDMARK_COLOR = (0, 255, 0)
POINT_COLOR = (255, 0, 0)
CROP_COLOR = (255, 255, 0)
MOUTH_COLOR = (0, 255, 255)


@functools.lru_cache(maxsize=4)
def mouth_outline(resolution: int = RESOLUTION) -> tuple[np.ndarray, ...]:
    """Contours of the regenerated mouth region in crop pixels: float64 ``[K, 2]`` (x, y) arrays.

    The fixed mask's 0-area at ``resolution`` square, scaled to the crop size as the face is resized."""
    region = (fixed_mask(resolution) < 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    w, h = crop_size(resolution)
    scale = np.array([w / resolution, h / resolution])
    # pixel-centre coordinates (OpenCV's resize/warp convention): face pixel x is crop x (x + 0.5) * sx - 0.5
    return tuple((c.reshape(-1, 2).astype(np.float64) + 0.5) * scale - 0.5 for c in contours)


def _to_frame(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Crop pixels ``[K, 2]`` -> frame pixels through the inverse of ``affine`` (image -> crop)."""
    inverse = cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))
    return points @ inverse[:, :2].T + inverse[:, 2]


def preview_size(frame_hw: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """(H, W) of the preview of a ``frame_hw`` frame: the frame's size, or scaled so its longer side is
    ``max_size`` (never enlarged)."""
    h, w = frame_hw
    if not max_size or max(h, w) <= max_size:
        return h, w
    s = max_size / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def draw_preview(
    frame: np.ndarray,
    landmarks68: np.ndarray | None,
    affine: np.ndarray | None,
    resolution: int = RESOLUTION,
    *,
    max_size: int | None = None,
) -> np.ndarray:
    """The frame with the alignment drawn on it.

    frame: uint8 ``[H, W, 3]`` RGB; landmarks68: ``[68, 2]`` image pixels (x, y); affine: ``[2, 3]``
    image -> crop (as in a ``FaceTrack``; NaN or None = no face); resolution: aligned-face size (256 /
    512); max_size: longer side of the result (downscaled with area averaging; None = full size).
    Returns a new uint8 ``[h, w, 3]`` array (the input is not modified).
    """
    frame = np.asarray(frame)
    h, w = preview_size(frame.shape[:2], max_size)
    scale = np.array([w / frame.shape[1], h / frame.shape[0]])
    out = (
        cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != frame.shape[:2] else frame.copy()
    )
    out = np.ascontiguousarray(out[..., :3], dtype=np.uint8)
    unit = max(1, round(max(h, w) / 400))  # line width that stays visible on large frames
    found = affine is not None and np.isfinite(affine).all()
    if not found:
        cv2.putText(out, "no face", (4 * unit, 16 * unit), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit, (255, 0, 0), unit, cv2.LINE_AA)
        return out

    def pts(p: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(p, dtype=np.float64) * scale).astype(np.int32)

    cw, ch = crop_size(resolution)
    corners = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float64) - 0.5  # pixel edges
    cv2.polylines(out, [pts(_to_frame(corners, affine))], True, CROP_COLOR, unit, cv2.LINE_AA)
    for contour in mouth_outline(resolution):
        cv2.polylines(out, [pts(_to_frame(contour, affine))], True, MOUTH_COLOR, unit, cv2.LINE_AA)
    if landmarks68 is not None and np.isfinite(landmarks68).all():
        for x, y in pts(three_points(np.asarray(landmarks68, dtype=np.float64))):
            cv2.circle(out, (int(x), int(y)), 3 * unit, POINT_COLOR, unit, cv2.LINE_AA)
        for x, y in pts(landmarks68):  # last: every landmark stays visible
            cv2.circle(out, (int(x), int(y)), unit, LANDMARK_COLOR, -1, cv2.LINE_AA)
    return out


def draw_previews(frames, track, *, max_size: int | None = 512) -> np.ndarray:
    """:func:`draw_preview` for every entry of a ``FaceTrack``: entry i is drawn on
    ``frames[track.frame_index[i]]``. frames: a sequence of uint8 ``[H, W, 3]`` (indexable).
    Returns uint8 ``[len(track), h, w, 3]`` (``h, w`` = :func:`preview_size`)."""
    h, w = preview_size(tuple(track.frame_size), max_size)
    out = np.empty((len(track), h, w, 3), dtype=np.uint8)
    for i in range(len(track)):
        frame = np.asarray(frames[int(track.frame_index[i])])
        out[i] = draw_preview(frame, track.landmarks[i], track.affines[i], track.resolution, max_size=max_size)
    return out
