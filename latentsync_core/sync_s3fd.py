"""The official face path of the sync score: S3FD detection and the official face tracks.

joonson's ``run_pipeline.py`` (as ``syncnet-python``'s ``SyncNetPipeline``): S3FD on every frame at scale
0.25 with confidence 0.9; detections linked into a track while the next one is at most 25 frames later
and overlaps the last by IoU > 0.5; tracks of more than 50 frames whose mean box side exceeds 100 px are
kept, their boxes linearly interpolated over the frames between detections. The network (``S3FDNet``) and
its detection wrapper come from ``syncnet-python`` (loaded by path, as in :mod:`latentsync_core.sync_score`);
the weights are ``auxiliary/sfd_face.pth``.

Not reproduced: the official pipeline first cuts the video into scenes (PySceneDetect) and tracks within
each; here the whole video is one scene. Its crops also pass through an XVID-encoded ``.avi`` before the
evaluation reads them back; here they go straight to the evaluation's own JPEG round trip.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .checkpoints import as_state_dict, guess_model_kind, read_checkpoint, state_dict_problems
from .errors import CheckpointError, LatentSyncError
from .sync_score import INSTALL_HINT, _syncnet_python_module

DETECT_SCALE = 0.25  # facedet_scale: frames are shrunk to a quarter for detection
DETECT_CONFIDENCE = 0.9
TRACK_MAX_GAP = 25  # num_failed_det: frames a track may go without a detection
TRACK_MIN_IOU = 0.5
TRACK_MIN_FRAMES = 50  # min_track: a track needs more frames than this
TRACK_MIN_FACE = 100  # min_face_size: px, the mean of the larger box side over the track


def _s3fd_module():
    try:
        return _syncnet_python_module("detectors/s3fd")
    except ImportError as exc:
        raise LatentSyncError(
            f"The official sync-score crops need the syncnet-python package ({exc}). Install it with: {INSTALL_HINT}"
        ) from exc


def load_s3fd(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The S3FD detector (``syncnet-python``'s ``S3FD`` around ``S3FDNet``) with the weights of
    ``sfd_face.pth`` (read safely; keys and shapes checked: :class:`CheckpointError` names the file)."""
    module = _s3fd_module()
    name = os.path.basename(os.fspath(path))
    state = as_state_dict(read_checkpoint(path), name)
    net = module.S3FDNet(device=str(device))
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    problems = state_dict_problems(state, expected)
    if problems:
        raise CheckpointError(f"{name} is not an S3FD face detector: {'; '.join(problems)}. "
                              f"It looks like {guess_model_kind(state)}.")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.S3FD(net.requires_grad_(False), device=str(device))


def detect(detector, frames_rgb: np.ndarray) -> list[np.ndarray]:
    """Per frame, float64 ``[k, 5]`` boxes ``(x0, y0, x1, y1, confidence)`` in frame pixels. The official
    pipeline reads its JPEG frames with OpenCV (BGR) and converts them to RGB for S3FD: RGB in."""
    return [np.asarray(detector.detect_faces(frame, conf_th=DETECT_CONFIDENCE, scales=[DETECT_SCALE]),
                       dtype=np.float64).reshape(-1, 5) for frame in frames_rgb]


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-8)


def face_tracks(detections: list[np.ndarray]) -> list[tuple[int, int, np.ndarray]]:
    """The official tracks: ``(first frame, end frame (exclusive), boxes float64 [end - first, 4])``.

    As the official ``track_shot``, pass after pass: a pass starts a track with the first remaining
    detection, then in each later frame takes the remaining detections, in order, while each is at most 25
    frames after the track's last one and overlaps it by IoU > 0.5 (stopping at the first that does not);
    taken detections are removed (with the official loop's quirk: removing from the list being iterated
    skips the next face of that frame)."""
    left = [[tuple(float(v) for v in box[:4]) for box in frame] for frame in detections]
    tracks = []
    while True:
        frames: list[int] = []
        boxes: list[tuple] = []
        for i, faces in enumerate(left):
            for box in faces:
                if not boxes:
                    frames.append(i)
                    boxes.append(box)
                    faces.remove(box)
                elif i - frames[-1] <= TRACK_MAX_GAP and _iou(box, boxes[-1]) > TRACK_MIN_IOU:
                    frames.append(i)
                    boxes.append(box)
                    faces.remove(box)
                    continue
                else:
                    break
        if not boxes:
            return tracks
        if len(frames) > TRACK_MIN_FRAMES:
            every = np.arange(frames[0], frames[-1] + 1)
            known = np.asarray(boxes)
            filled = np.stack([np.interp(every, frames, known[:, c]) for c in range(4)], axis=1)
            side = max(np.mean(filled[:, 2] - filled[:, 0]), np.mean(filled[:, 3] - filled[:, 1]))
            if side > TRACK_MIN_FACE:
                tracks.append((int(every[0]), int(every[-1]) + 1, filled))


def use_s3fd(crops: str, weights_present: bool) -> bool:
    """Whether the ``crops`` option (:data:`latentsync_core.options.SCORE_CROPS`) means the official S3FD crops:
    ``s3fd`` always (its weights are fetched when missing), ``landmarks`` never, ``auto`` when the weights are
    already there."""
    return crops == "s3fd" or (crops == "auto" and weights_present)
