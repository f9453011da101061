"""Alignment geometry of the official LatentSync 1.5 release (OpenCV path).

68 landmarks -> temporal smoothing -> 3 points -> similarity transform onto the crop template (with
translation-bias smoothing) -> Lanczos warp into the 210x280 crop (grey border) -> Lanczos resize to
``resolution`` square. Reproduces the golden affines to 1e-12 and the golden faces bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..constants import (
    AFFINE_BIAS_SMOOTHING,
    FACE_BORDER_VALUE,
    LANDMARK_SMOOTHING,
    RESOLUTION,
    crop_size,
    crop_template,
)


class LandmarkSmoother:
    """The official per-point exponential smoothing; state carries from frame to frame.

    Each point moves toward the new detection with weight ``1 - exp(-d^2 / (face_width * alpha))``:
    small jitter is damped, real motion passes.
    """

    def __init__(self, alpha: float = LANDMARK_SMOOTHING):
        self.alpha = alpha
        self.last: np.ndarray | None = None

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """``[68, 2]`` pixels -> smoothed ``[68, 2]`` float64."""
        points = np.asarray(points, dtype=np.float64)
        if self.last is not None:
            width = points[:, 0].max() - points[:, 0].min()
            dist2 = ((points - self.last) ** 2).sum(axis=1, keepdims=True)
            w = np.exp(-dist2 / (width * self.alpha))
            points = self.last * w + points * (1.0 - w)
        self.last = points.copy()
        return points


def three_points(lm68: np.ndarray) -> np.ndarray:
    """``[68, 2]`` -> ``[3, 2]``: left eyebrow centre, right eyebrow centre, nose centre."""
    return np.stack([lm68[17:22].mean(0), lm68[22:27].mean(0), lm68[27:36].mean(0)])


class SimilarityTransform:
    """Least-squares similarity (rotation, uniform scale, translation) of 3 points onto the template,
    plus the official smoothing of the nose-point residual ("bias"): 0.2 previous + 0.8 current."""

    def __init__(self, resolution: int = RESOLUTION, bias_smoothing: float = AFFINE_BIAS_SMOOTHING):
        self.template = np.asarray(crop_template(resolution), dtype=np.float64)
        self.bias_smoothing = bias_smoothing
        self.bias: np.ndarray | None = None

    def __call__(self, points3: np.ndarray) -> np.ndarray:
        """``[3, 2]`` image points -> ``[2, 3]`` float64 affine, image -> crop."""
        src = np.asarray(points3, dtype=np.float64)
        dst = self.template
        c1, c2 = src.mean(0), dst.mean(0)
        s1, s2 = (src - c1).std(), (dst - c2).std()
        n1, n2 = (src - c1) / s1, (dst - c2) / s2
        u, _, vt = np.linalg.svd(n1.T @ n2)
        rot = (u @ vt).T
        scale = s2 / s1
        matrix = np.concatenate([scale * rot, (c2 - scale * rot @ c1)[:, None]], axis=1)
        bias = n2[2] - n1[2]
        if self.bias is not None:
            bias = self.bias * self.bias_smoothing + bias * (1.0 - self.bias_smoothing)
        self.bias = bias
        matrix[:, 2] += bias
        return matrix


def warp_face(frame: np.ndarray, affine: np.ndarray, resolution: int = RESOLUTION) -> np.ndarray:
    """Cut the aligned face: ``[H, W, 3]`` uint8 + ``[2, 3]`` affine -> ``[res, res, 3]`` uint8."""
    crop = cv2.warpAffine(
        frame,
        affine,
        crop_size(resolution),
        flags=cv2.INTER_LANCZOS4,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(FACE_BORDER_VALUE,) * 3,
    )
    return cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)


def track_affines(landmarks68: np.ndarray, found: np.ndarray, resolution: int = RESOLUTION):
    """Smoothed landmarks and affines for a whole clip.

    landmarks68: ``[N, 68, 2]`` pixels (ignored where ``found`` is False); found: bool ``[N]``.
    Returns (smoothed ``[N, 68, 2]`` float64, NaN where not found; affines ``[N, 2, 3]`` float64,
    NaN where not found). Frames without a face leave the smoothing state untouched.
    """
    smoother, transform = LandmarkSmoother(), SimilarityTransform(resolution)
    smoothed = np.full(landmarks68.shape, np.nan, dtype=np.float64)
    affines = np.full((len(found), 2, 3), np.nan, dtype=np.float64)
    for i in np.flatnonzero(found):
        smoothed[i] = smoother(landmarks68[i])
        affines[i] = transform(three_points(smoothed[i]))
    return smoothed, affines
