"""Paste generated faces back into the original frames (the official restore, done only where it matters).

Per frame, as the official release does: the generated face (``[res, res, 3]``) is resized to the crop
size (bilinear, antialiased, truncated to uint8), warped back into the frame with Lanczos, and blended
with a soft mask: the crop rectangle warped back (bilinear), eroded by 2 px, eroded again by
``sqrt(area) // 20 * 2`` and Gaussian-blurred with a ``sqrt(area) // 20 * 2 + 1`` kernel.

The official code does this on the whole frame; everything outside the warped crop is zero there, so
here it runs only inside the crop's bounding box (plus a margin that keeps erosion and blur borders
identical). Pixels outside that box are never touched: they are bit-identical to the input.

Two paths: ``restore_frame`` (OpenCV, the reference: matches the golden data within 1 grey level) and
``restore_batch_torch`` (torch + kornia, batched, on any device: bilinear warps instead of Lanczos,
within 1 grey level on average; the fast path for GPUs).
"""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..constants import RESOLUTION, crop_size
from ..types import FaceTrack
from .threads import default_workers, ordered_map

MASK_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "mask.png")
_UINT8_TO_SIGNED = (torch.arange(256, dtype=torch.float32) / 255.0 * 2.0 - 1.0).numpy()  # uint8 -> [-1, 1]
WINDOW_MARGIN = 3  # px around the warped crop: the soft mask is 0 there, so borders do not matter


@functools.lru_cache(maxsize=4)
def fixed_mask(resolution: int = RESOLUTION) -> np.ndarray:
    """The official fixed mouth mask at ``resolution``: float32 ``[res, res]``, 1 = keep, 0 = regenerate.

    ``mask.png`` Lanczos-resized and divided by 255, as the official ``load_fixed_mask``.
    """
    image = cv2.imread(MASK_PATH, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"the package file {MASK_PATH} is missing: reinstall ComfyUI-LatentSync")
    mask = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4) / 255.0
    mask = mask.astype(np.float32)
    mask.setflags(write=False)
    return mask


def faces_to_crop(faces, size: tuple[int, int]) -> np.ndarray:
    """Generated faces -> crop-sized uint8, the official way (bilinear antialiased resize of the
    [-1, 1] face, then ``(x / 2 + 0.5).clamp(0, 1) * 255`` truncated).

    faces: ``[N, res, res, 3]`` uint8 (0..255) or float (0..1), numpy or torch. size: (w, h).
    Returns uint8 ``[N, h, w, 3]``.
    """
    # element-wise steps in numpy (much faster than torch's on a busy CPU), float32 as the official
    # torch code: the same IEEE operations in the same order, so the same truncated result
    if isinstance(faces, torch.Tensor):
        faces = faces.detach().cpu().numpy()
    if faces.dtype == np.uint8:
        signed = _UINT8_TO_SIGNED[faces]  # u / 255 * 2 - 1
    else:
        signed = faces.astype(np.float32) * np.float32(2.0) - np.float32(1.0)
    t = torch.from_numpy(np.ascontiguousarray(signed.transpose(0, 3, 1, 2)))
    t = F.interpolate(t, size=(size[1], size[0]), mode="bilinear", antialias=True, align_corners=False)
    out = t.numpy().transpose(0, 2, 3, 1) / np.float32(2.0)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    out *= np.float32(255.0)
    return out.astype(np.uint8)


def crop_window(affine: np.ndarray, size: tuple[int, int], frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the frame region the warped-back crop can touch (clipped to the frame)."""
    w, h = size
    inverse = cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))
    corners = np.array([[-1, -1, 1], [w, -1, 1], [w, h, 1], [-1, h, 1]], dtype=np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(0)).astype(int) - WINDOW_MARGIN
    x1, y1 = np.ceil(corners.max(0)).astype(int) + WINDOW_MARGIN + 1
    height, width = frame_hw
    return max(0, y0), min(height, y1), max(0, x0), min(width, x1)


def _shifted(affine: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """image -> crop affine for a window whose top-left corner is (x0, y0) in the image."""
    shifted = np.asarray(affine, dtype=np.float64).copy()
    shifted[:, 2] += shifted[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shifted


_AB_BITS, _INTER_BITS = 10, 5  # OpenCV warpAffine's fixed-point precision (coordinates, table)
_INTER_TAB = 1 << _INTER_BITS


def warp_window(src: np.ndarray, to_src: np.ndarray, box: tuple[int, int, int, int], interpolation: int) -> np.ndarray:
    """``cv2.warpAffine`` restricted to the destination window ``box = (y0, y1, x0, x1)``, bit-identical
    to the same window of the full-frame warp (zero border).

    to_src: ``[2, 3]`` destination -> source matrix (what warpAffine uses after inverting its input).
    warpAffine rounds the source coordinates to 1/32 px in fixed point from the *absolute* destination
    coordinates; warping a shifted matrix would round differently (up to 2 grey levels after Lanczos).
    So the fixed-point maps are rebuilt here exactly as warpAffine builds them and handed to ``remap``.
    """
    y0, y1, x0, x1 = box
    m = np.asarray(to_src, dtype=np.float64).ravel()
    scale = 1 << _AB_BITS
    xs, ys = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
    round_delta = scale // _INTER_TAB // 2
    x_row = np.rint(m[0] * xs * scale).astype(np.int64)
    y_row = np.rint(m[3] * xs * scale).astype(np.int64)
    x_col = np.rint((m[1] * ys + m[2]) * scale).astype(np.int64) + round_delta
    y_col = np.rint((m[4] * ys + m[5]) * scale).astype(np.int64) + round_delta
    shift = _AB_BITS - _INTER_BITS
    x = (x_col[:, None] + x_row[None, :]) >> shift
    y = (y_col[:, None] + y_row[None, :]) >> shift
    big = np.iinfo(np.int16).max  # remap's integer map is int16; far-outside points just read the border
    whole = np.stack([np.clip(x >> _INTER_BITS, -big, big), np.clip(y >> _INTER_BITS, -big, big)], axis=-1)
    frac = ((y & (_INTER_TAB - 1)) * _INTER_TAB + (x & (_INTER_TAB - 1))).astype(np.uint16)
    return cv2.remap(src, whole.astype(np.int16), frac, interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _blur_size(area: float) -> int:
    return int(area**0.5) // 20  # the official "w_edge"


def restore_frame(frame: np.ndarray, crop_face: np.ndarray, affine: np.ndarray):
    """Reference (OpenCV) restore of one frame, computed only in the crop's window.

    frame: uint8 ``[H, W, 3]``; crop_face: uint8 ``[h, w, 3]`` (crop size); affine: ``[2, 3]`` image -> crop.
    Returns (patch uint8 ``[y1-y0, x1-x0, 3]``, (y0, y1, x0, x1)); the result frame is ``frame`` with
    ``frame[y0:y1, x0:x1] = patch``. The window may be empty when the crop lies outside the frame.
    """
    h, w = crop_face.shape[:2]
    y0, y1, x0, x1 = crop_window(affine, (w, h), frame.shape[:2])
    if y1 <= y0 or x1 <= x0:
        return frame[y0:y0, x0:x0].copy(), (y0, y0, x0, x0)
    to_crop = cv2.invertAffineTransform(cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64)))
    back = warp_window(crop_face, to_crop, (y0, y1, x0, x1), cv2.INTER_LANCZOS4)
    mask = warp_window(np.ones((h, w), dtype=np.float32), to_crop, (y0, y1, x0, x1), cv2.INTER_LINEAR)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = _blur_size(float(mask.sum()))
    center = cv2.erode(mask, np.ones((edge * 2, edge * 2), np.uint8)) if edge > 0 else mask
    soft = cv2.GaussianBlur(center, (edge * 2 + 1, edge * 2 + 1), 0)[:, :, None]
    region = frame[y0:y1, x0:x1]
    patch = soft * (mask[:, :, None] * back) + (1 - soft) * region
    return patch.astype(np.uint8), (y0, y1, x0, x1)


def _gaussian_kernel1d(size: int, device, dtype) -> torch.Tensor:
    """OpenCV's kernel for ``GaussianBlur(ksize=size, sigma=0)``."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def restore_batch_torch(frames: torch.Tensor, crop_faces: torch.Tensor, affines: np.ndarray):
    """Fast path: restore a batch of frames with torch/kornia on the frames' device.

    frames: uint8 ``[B, H, W, 3]``; crop_faces: uint8 ``[B, h, w, 3]`` (same device); affines: ``[B, 2, 3]``.
    Returns a list of (patch uint8 tensor, (y0, y1, x0, x1)) per frame. Warps are batched over a window
    shared by the batch (bilinear, not Lanczos); the per-frame erosion and blur run on the device.
    """
    import kornia

    device = frames.device
    b, h_img, w_img = frames.shape[:3]
    h, w = crop_faces.shape[1:3]
    boxes = [crop_window(a, (w, h), (h_img, w_img)) for a in affines]
    win_h = max(1, max(y1 - y0 for y0, y1, _, _ in boxes))
    win_w = max(1, max(x1 - x0 for _, _, x0, x1 in boxes))
    # one window size for the batch: keep each frame's window inside the frame
    origins = [(min(y0, max(0, h_img - win_h)), min(x0, max(0, w_img - win_w))) for y0, _, x0, _ in boxes]
    win_h, win_w = min(win_h, h_img), min(win_w, w_img)
    to_crop = np.stack([_shifted(a, ox, oy) for a, (oy, ox) in zip(affines, origins)])
    from_crop = kornia.geometry.transform.invert_affine_transform(torch.as_tensor(to_crop, device=device).float())
    face = crop_faces.permute(0, 3, 1, 2).float()
    back = kornia.geometry.transform.warp_affine(face, from_crop, (win_h, win_w), mode="bilinear", padding_mode="zeros")
    ones = torch.ones((b, 1, h, w), device=device)
    mask = kornia.geometry.transform.warp_affine(ones, from_crop, (win_h, win_w), mode="bilinear", padding_mode="zeros")
    mask = -F.max_pool2d(F.pad(-mask, (1, 0, 1, 0), value=-1.0), 2, stride=1)  # 2x2 erosion, cv2's anchor
    results = []
    for i, (oy, ox) in enumerate(origins):
        m = mask[i : i + 1]
        edge = _blur_size(float(m.sum()))
        if edge > 0:
            k = edge * 2  # even kernel: OpenCV's anchor is at k // 2
            center = -F.max_pool2d(F.pad(-m, (k // 2, k - 1 - k // 2, k // 2, k - 1 - k // 2), value=-1.0), k, stride=1)
            g = _gaussian_kernel1d(k + 1, device, m.dtype)
            soft = F.conv2d(F.pad(center, (edge, edge, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
            soft = F.conv2d(F.pad(soft, (0, 0, edge, edge), mode="reflect"), g.view(1, 1, -1, 1))
        else:
            soft = m
        region = frames[i, oy : oy + win_h, ox : ox + win_w].permute(2, 0, 1).float()
        patch = soft[0] * (m[0] * back[i]) + (1 - soft[0]) * region
        patch = patch.clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        results.append((patch, (oy, oy + win_h, ox, ox + win_w)))
    return results


def iter_patches(
    frames: np.ndarray,
    faces,
    affines: np.ndarray,
    found: np.ndarray | None = None,
    *,
    fast: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    workers: int | None = None,
):
    """Yield ``(i, patch, (y0, y1, x0, x1))`` for every frame that gets a face: the restored frame i is
    ``frames[i]`` with ``[y0:y1, x0:x1] = patch`` (uint8 numpy). Arguments as ``paste_back``; frames
    marked not-found (or with NaN affines) yield nothing."""
    affines = np.asarray(affines, dtype=np.float64)
    n = len(frames)
    if not (len(faces) == n == len(affines)):
        raise ValueError(f"paste_back: {n} frames, {len(faces)} faces and {len(affines)} affines must match")
    ok = np.isfinite(affines).all(axis=(1, 2))
    if found is not None:
        ok &= np.asarray(found, dtype=bool)
    size = crop_size(int(faces.shape[1]))
    workers = default_workers() if workers is None else workers
    todo = np.flatnonzero(ok)
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        crops = faces_to_crop(faces[idx], size)
        batch = np.stack([np.asarray(frames[i]) for i in idx])
        if fast:
            tensors = restore_batch_torch(
                torch.from_numpy(batch).to(device), torch.from_numpy(crops).to(device), affines[idx]
            )
            results = [(patch.cpu().numpy(), box) for patch, box in tensors]
        else:
            results = ordered_map(_restore_args, list(zip(batch, crops, affines[idx])), workers)
        for i, (patch, box) in zip(idx, results):
            yield int(i), patch, box


def _restore_args(args) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    return restore_frame(*args)


def paste_back(
    frames: np.ndarray,
    faces,
    affines: np.ndarray,
    found: np.ndarray | None = None,
    *,
    fast: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    workers: int | None = None,
) -> np.ndarray:
    """Put generated faces back into their frames.

    frames: uint8 ``[N, H, W, 3]`` RGB originals; faces: ``[N, res, res, 3]`` generated faces (uint8, or
    float 0..1); affines: ``[N, 2, 3]`` image -> crop (as ``FaceAligner`` made them, for the crop size of
    ``res``); found: optional bool ``[N]``: frames marked False (or with NaN affines) pass through.
    fast: use the batched torch/kornia path on ``device``; workers: threads of the reference path.
    Returns uint8 ``[N, H, W, 3]`` (a new array; pixels outside each warped crop's window are copies of
    the input).
    """
    out = np.array(frames, dtype=np.uint8, copy=True)
    for i, patch, (y0, y1, x0, x1) in iter_patches(
        frames, faces, affines, found, fast=fast, device=device, batch_size=batch_size, workers=workers
    ):
        out[i, y0:y1, x0:x1] = patch
    return out


def paste_back_track(frames, faces, track: FaceTrack, **kwargs) -> np.ndarray:
    """``paste_back`` driven by a ``FaceTrack``: output frame i is ``frames[track.frame_index[i]]`` with
    ``faces[i]`` pasted in (the sampler may have looped or cut the video). Returns uint8 ``[len(track), H, W, 3]``."""
    if len(faces) != len(track):
        raise ValueError(f"{len(faces)} faces for a face track of {len(track)} frames")
    originals = np.asarray(frames)[track.frame_index]
    return paste_back(originals, faces, track.affines, track.found, **kwargs)
