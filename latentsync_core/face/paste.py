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

Options (keyword-only; the defaults are the official restore, bit for bit): ``blend="mouth"`` blends only
the regenerated mouth region (the fixed mask's 0-area, warped to the frame) with its own soft edge, so
every other pixel, the rest of the face included, is the input's; ``mask_grow`` / ``feather`` shape the
blend region and its soft edge; ``mask`` (frame space, 1 = may change) protects regions; the blend weight
actually used can be returned (``return_mask`` / ``with_mask``); faces of any square size are accepted
(``resolution`` = the aligned-face size the affines belong to).
"""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CROP_BOX, CROP_SCALE, RESOLUTION, crop_size
from ..errors import InputMismatchError
from ..options import BLEND_MODES, PasteOptions
from ..types import FaceTrack
from .threads import default_workers, ordered_map

_PASTE = PasteOptions()  # the option table's defaults (official blend)

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


def faces_to_resolution(faces, resolution: int):
    """Square faces of any size -> ``resolution`` square (area averaging; e.g. 1024 after an upscaler).

    faces: ``[N, s, s, 3]`` uint8 or float, numpy or torch; returned unchanged when ``s == resolution``,
    else as numpy of the same dtype. Area averaging undoes an integer nearest-neighbour upscale exactly,
    so an upscaled but otherwise unchanged face pastes back like the original; the crop the face is
    then resized to (210x280 at 256) is barely larger than ``resolution``, so little detail is lost.
    """
    if int(faces.shape[1]) == resolution:
        return faces
    if isinstance(faces, torch.Tensor):
        faces = faces.detach().cpu().numpy()
    if faces.dtype not in (np.uint8, np.float32):
        faces = faces.astype(np.float32)
    interpolation = cv2.INTER_AREA if faces.shape[1] > resolution else cv2.INTER_LINEAR
    return np.stack([cv2.resize(np.asarray(f), (resolution, resolution), interpolation=interpolation) for f in faces])


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


def check_blend_options(blend: str, mask_grow: int, feather: int | None) -> None:
    """Raise ``InputMismatchError`` for an unknown blend mode or a negative feather."""
    if blend not in BLEND_MODES:
        raise InputMismatchError(f"unknown paste-back blend {blend!r}: use one of {', '.join(BLEND_MODES)}")
    if feather is not None and int(feather) < 0:
        raise InputMismatchError(f"feather must be 0 or more pixels (None = the official blur), got {feather}")
    if int(mask_grow) != mask_grow:
        raise InputMismatchError(f"mask_grow must be a whole number of pixels, got {mask_grow}")


def resolution_of_crop(crop_hw: tuple[int, int]) -> int:
    """The aligned-face resolution whose crop is ``crop_hw = (h, w)``: 256 for (280, 210), 512 for (560, 420)."""
    return int(round(crop_hw[0] * 256 / (CROP_BOX[1] * CROP_SCALE)))


@functools.lru_cache(maxsize=8)
def mouth_crop_mask(resolution: int, crop_wh: tuple[int, int]) -> np.ndarray:
    """The regenerated mouth region (the fixed mask's 0-area) in crop space: float32 ``[h, w]``, 1 = mouth.

    The mask at ``resolution`` square is resized to the crop size ``(w, h)`` (bilinear) exactly as the
    generated face is (anisotropic), so it covers the same pixels of the crop."""
    mouth = 1.0 - fixed_mask(resolution)
    out = cv2.resize(mouth, crop_wh, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out.setflags(write=False)
    return out


def _square(k: int) -> np.ndarray:
    return np.ones((k, k), np.uint8)


def _blend_weights_cv(mask: np.ndarray, mouth: np.ndarray | None, mask_grow: int, feather: int | None) -> np.ndarray:
    """Soft blend weight float32 ``[h, w]`` in a window (OpenCV).

    mask: the warped-back crop rectangle (bilinear, eroded 2x2): where the crop has pixels.
    mouth: the warped-back binary mouth region (``blend="mouth"``) or None (``blend="face"``: the crop).
    The blend region is grown (dilated) or shrunk (eroded) by ``mask_grow`` px with a square kernel,
    never beyond the crop; then eroded by ``feather`` px and Gaussian-blurred with a ``2 * feather + 1``
    kernel (the official soft edge; feather None = the official ``sqrt(area) // 20``). In mouth mode the
    weight is cut to 0 outside the (grown) region, so nothing outside it changes.
    """
    region = mask if mouth is None else np.minimum(mouth, mask)
    g = int(mask_grow)
    if g > 0 and mouth is not None:  # (face mode: the crop edge is the limit, growing cannot pass it)
        region = np.minimum(cv2.dilate(region, _square(2 * g + 1)), mask)
    elif g < 0:
        region = cv2.erode(region, _square(-2 * g + 1))
    edge = _blur_size(float(mask.sum())) if feather is None else int(feather)
    center = cv2.erode(region, _square(edge * 2)) if edge > 0 else region
    soft = cv2.GaussianBlur(center, (edge * 2 + 1, edge * 2 + 1), 0) if edge > 0 else center
    if mouth is not None:
        soft = np.where(region > 0, soft, np.float32(0.0)).astype(np.float32)
    return soft


def restore_frame(
    frame: np.ndarray,
    crop_face: np.ndarray,
    affine: np.ndarray,
    *,
    blend: str = _PASTE.blend,
    mask_grow: int = _PASTE.mask_grow,
    feather: int | None = _PASTE.feather,
    allow: np.ndarray | None = None,
    resolution: int | None = None,
    return_mask: bool = False,
):
    """Reference (OpenCV) restore of one frame, computed only in the crop's window.

    frame: uint8 ``[H, W, 3]``; crop_face: uint8 ``[h, w, 3]`` (crop size); affine: ``[2, 3]`` image -> crop.
    blend: ``"face"`` (official: the whole crop, soft crop edge) or ``"mouth"`` (only the regenerated
    mouth region, the fixed mask's 0-area warped to the frame, with its own soft edge; every other pixel
    stays bit-identical). mask_grow: px to grow (+) or shrink (-) the blend region; feather: px of the
    soft edge (None = official ``sqrt(area) // 20``). allow: optional float ``[H, W]`` frame-space mask
    in [0, 1] (1 = may change) multiplied into the blend weight. resolution: aligned-face size the crop
    belongs to (default: inferred from the crop size).
    Returns (patch uint8 ``[y1-y0, x1-x0, 3]``, (y0, y1, x0, x1)), plus the blend weight float32
    ``[y1-y0, x1-x0]`` in [0, 1] when ``return_mask``; the result frame is ``frame`` with
    ``frame[y0:y1, x0:x1] = patch``. The window may be empty when the crop lies outside the frame.
    With the defaults this is exactly the official restore.
    """
    h, w = crop_face.shape[:2]
    y0, y1, x0, x1 = crop_window(affine, (w, h), frame.shape[:2])
    if y1 <= y0 or x1 <= x0:
        empty = (frame[y0:y0, x0:x0].copy(), (y0, y0, x0, x0))
        return (*empty, np.zeros((0, 0), np.float32)) if return_mask else empty
    box = (y0, y1, x0, x1)
    to_crop = cv2.invertAffineTransform(cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64)))
    back = warp_window(crop_face, to_crop, box, cv2.INTER_LANCZOS4)
    mask = warp_window(np.ones((h, w), dtype=np.float32), to_crop, box, cv2.INTER_LINEAR)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    mouth = None
    if blend == "mouth":
        res = resolution or resolution_of_crop((h, w))
        mouth = warp_window(mouth_crop_mask(res, (w, h)), to_crop, box, cv2.INTER_LINEAR)
        mouth = (mouth >= 0.5).astype(np.float32)
    soft = _blend_weights_cv(mask, mouth, mask_grow, feather)
    if allow is not None:
        soft = soft * np.asarray(allow[y0:y1, x0:x1], dtype=np.float32)
    region = frame[y0:y1, x0:x1]
    weight = soft[:, :, None]
    patch = (weight * (mask[:, :, None] * back) + (1 - weight) * region).astype(np.uint8)
    return (patch, box, soft.astype(np.float32)) if return_mask else (patch, box)


def _gaussian_kernel1d(size: int, device, dtype) -> torch.Tensor:
    """OpenCV's kernel for ``GaussianBlur(ksize=size, sigma=0)``."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _erode_t(m: torch.Tensor, k: int) -> torch.Tensor:
    """``cv2.erode`` with a ``k x k`` square (anchor ``k // 2``, border never erodes): ``[1, 1, h, w]``."""
    return -F.max_pool2d(F.pad(-m, (k // 2, k - 1 - k // 2, k // 2, k - 1 - k // 2), value=-1.0), k, stride=1)


def _dilate_t(m: torch.Tensor, k: int) -> torch.Tensor:
    """``cv2.dilate`` with a ``k x k`` square (k odd) of a mask in [0, 1]: ``[1, 1, h, w]``."""
    return F.max_pool2d(F.pad(m, (k // 2,) * 4, value=0.0), k, stride=1)


def _blend_weights_torch(mask: torch.Tensor, mouth: torch.Tensor | None, mask_grow: int, feather: int | None) -> torch.Tensor:
    """``_blend_weights_cv`` in torch: ``[1, 1, h, w]`` in, ``[1, 1, h, w]`` out."""
    region = mask if mouth is None else torch.minimum(mouth, mask)
    g = int(mask_grow)
    if g > 0 and mouth is not None:
        region = torch.minimum(_dilate_t(region, 2 * g + 1), mask)
    elif g < 0:
        region = _erode_t(region, -2 * g + 1)
    edge = _blur_size(float(mask.sum())) if feather is None else int(feather)
    if edge > 0:
        center = _erode_t(region, edge * 2)
        g1 = _gaussian_kernel1d(edge * 2 + 1, mask.device, mask.dtype)
        soft = F.conv2d(_reflect(center, (edge, edge, 0, 0)), g1.view(1, 1, 1, -1))
        soft = F.conv2d(_reflect(soft, (0, 0, edge, edge)), g1.view(1, 1, -1, 1))
    else:
        soft = region
    if mouth is not None:
        soft = torch.where(region > 0, soft, torch.zeros_like(soft))
    return soft


def _reflect(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """OpenCV's BORDER_REFLECT_101 padding (torch's "reflect"; replicate when the window is too small)."""
    if max(pad[0], pad[1]) < x.shape[-1] and max(pad[2], pad[3]) < x.shape[-2]:
        return F.pad(x, pad, mode="reflect")
    return F.pad(x, pad, mode="replicate")


def restore_batch_torch(
    frames: torch.Tensor,
    crop_faces: torch.Tensor,
    affines: np.ndarray,
    *,
    blend: str = _PASTE.blend,
    mask_grow: int = _PASTE.mask_grow,
    feather: int | None = _PASTE.feather,
    allow: torch.Tensor | None = None,
    resolution: int | None = None,
    return_mask: bool = False,
):
    """Fast path: restore a batch of frames with torch/kornia on the frames' device.

    frames: uint8 ``[B, H, W, 3]``; crop_faces: uint8 ``[B, h, w, 3]`` (same device); affines: ``[B, 2, 3]``.
    blend, mask_grow, feather, resolution: as :func:`restore_frame`; allow: optional float ``[B, H, W]``
    (1 = may change). Returns a list of (patch uint8 tensor, (y0, y1, x0, x1)) per frame, plus the blend
    weight float ``[y1-y0, x1-x0]`` when ``return_mask``. Warps are batched over a window shared by the
    batch (bilinear, not Lanczos); the per-frame erosion and blur run on the device.
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
    mask = _erode_t(mask, 2)  # 2x2 erosion, cv2's anchor
    mouth = None
    if blend == "mouth":
        res = resolution or resolution_of_crop((h, w))
        crop_mouth = torch.from_numpy(np.array(mouth_crop_mask(res, (w, h)))).to(device)
        crop_mouth = crop_mouth.expand(b, 1, h, w)
        mouth = kornia.geometry.transform.warp_affine(crop_mouth, from_crop, (win_h, win_w), mode="bilinear", padding_mode="zeros")
        mouth = (mouth >= 0.5).float()
    results = []
    for i, (oy, ox) in enumerate(origins):
        m = mask[i : i + 1]
        soft = _blend_weights_torch(m, None if mouth is None else mouth[i : i + 1], mask_grow, feather)[0]
        if allow is not None:
            soft = soft * allow[i, oy : oy + win_h, ox : ox + win_w].to(device=device, dtype=soft.dtype)[None]
        region = frames[i, oy : oy + win_h, ox : ox + win_w].permute(2, 0, 1).float()
        patch = soft * (m[0] * back[i]) + (1 - soft) * region
        patch = patch.clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        box = (oy, oy + win_h, ox, ox + win_w)
        results.append((patch, box, soft[0]) if return_mask else (patch, box))
    return results


def _allow_masks(mask, n: int, frame_hw: tuple[int, int]):
    """Validate a frame-space protect mask: ``[N, H, W]`` or ``[1, H, W]`` (or ``[H, W]``) -> float32
    numpy ``[N or 1, H, W]`` in [0, 1], or None."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().float().numpy()
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] not in (1, n) or tuple(mask.shape[1:]) != tuple(frame_hw):
        raise InputMismatchError(
            f"the paste-back mask is {list(mask.shape)} but the frames are {n} x {frame_hw[0]} x {frame_hw[1]}: "
            f"give one mask per frame [{n},{frame_hw[0]},{frame_hw[1]}] or one for all [1,{frame_hw[0]},{frame_hw[1]}]"
        )
    if not np.isfinite(mask).all():
        raise InputMismatchError("the paste-back mask contains NaN/Inf values")
    return np.clip(mask, 0.0, 1.0)


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
    blend: str = _PASTE.blend,
    mask_grow: int = _PASTE.mask_grow,
    feather: int | None = _PASTE.feather,
    mask=None,
    resolution: int | None = None,
    with_mask: bool = False,
):
    """Yield ``(i, patch, (y0, y1, x0, x1))`` for every frame that gets a face: the restored frame i is
    ``frames[i]`` with ``[y0:y1, x0:x1] = patch`` (uint8 numpy). Arguments as ``paste_back``; frames
    marked not-found (or with NaN affines) yield nothing. With ``with_mask`` each item has a fourth
    element: the blend weight float32 ``[y1-y0, x1-x0]`` in [0, 1] used in that window (0 elsewhere)."""
    affines = np.asarray(affines, dtype=np.float64)
    n = len(frames)
    if not (len(faces) == n == len(affines)):
        raise ValueError(f"paste_back: {n} frames, {len(faces)} faces and {len(affines)} affines must match")
    check_blend_options(blend, mask_grow, feather)
    if len(faces) and faces.shape[1] != faces.shape[2]:
        raise InputMismatchError(f"generated faces must be square, got {faces.shape[2]}x{faces.shape[1]}")
    ok = np.isfinite(affines).all(axis=(1, 2))
    if found is not None:
        ok &= np.asarray(found, dtype=bool)
    todo = np.flatnonzero(ok)
    if not len(todo):
        return
    frame_hw = tuple(np.asarray(frames[int(todo[0])]).shape[:2])
    allow = _allow_masks(mask, n, frame_hw)
    resolution = int(resolution) if resolution else int(faces.shape[1])
    size = crop_size(resolution)
    workers = default_workers() if workers is None else workers
    options = {"blend": blend, "mask_grow": int(mask_grow), "feather": feather, "resolution": resolution, "return_mask": True}
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        crops = faces_to_crop(faces_to_resolution(faces[idx], resolution), size)
        batch = np.stack([np.asarray(frames[i]) for i in idx])
        allows = [None if allow is None else allow[i if len(allow) > 1 else 0] for i in idx]
        if fast:
            allow_t = None if allow is None else torch.from_numpy(np.stack(allows)).to(device)
            tensors = restore_batch_torch(
                torch.from_numpy(batch).to(device), torch.from_numpy(crops).to(device), affines[idx], allow=allow_t, **options
            )
            results = [(patch.cpu().numpy(), box, soft.float().cpu().numpy()) for patch, box, soft in tensors]
        else:
            jobs = [(frame, crop, affine, a, options) for frame, crop, affine, a in zip(batch, crops, affines[idx], allows)]
            results = ordered_map(_restore_args, jobs, workers)
        for i, (patch, box, soft) in zip(idx, results):
            yield (int(i), patch, box, soft) if with_mask else (int(i), patch, box)


def _restore_args(args):
    frame, crop, affine, allow, options = args
    return restore_frame(frame, crop, affine, allow=allow, **options)


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
    blend: str = _PASTE.blend,
    mask_grow: int = _PASTE.mask_grow,
    feather: int | None = _PASTE.feather,
    mask=None,
    resolution: int | None = None,
    return_mask: bool = False,
):
    """Put generated faces back into their frames.

    frames: uint8 ``[N, H, W, 3]`` RGB originals; faces: ``[N, s, s, 3]`` generated faces (uint8, or
    float 0..1) of any square size ``s`` (e.g. 1024 after an upscaler: resampled to the crop size);
    affines: ``[N, 2, 3]`` image -> crop (as ``FaceAligner`` made them, for the crop size of
    ``resolution``); found: optional bool ``[N]``: frames marked False (or with NaN affines) pass through.
    fast: use the batched torch/kornia path on ``device``; workers: threads of the reference path.
    blend: ``"face"`` (official: the whole crop with its soft edge) or ``"mouth"`` (only the regenerated
    mouth region, with its own soft edge; every other pixel of the frame stays bit-identical).
    mask_grow: px to grow (+) / shrink (-) the blend region (face mode: the crop edge is the limit, so
    only shrinking has an effect). feather: px of the soft edge (None = the official ``sqrt(area)//20``).
    mask: optional frame-space float ``[N, H, W]`` or ``[1, H, W]`` in [0, 1], 1 = may change,
    multiplied into the blend weight (protect a hand or a microphone). resolution: the aligned-face size
    the affines were made for (default: the faces' size; give it when the faces were upscaled).
    Returns uint8 ``[N, H, W, 3]`` (a new array; pixels outside each warped crop's window are copies of
    the input); with ``return_mask`` a pair (frames, blend weights float32 ``[N, H, W]`` in [0, 1]).
    The defaults are the official restore.
    """
    out = np.array(frames, dtype=np.uint8, copy=True)
    weights = np.zeros(out.shape[:3], dtype=np.float32) if return_mask else None
    for i, patch, (y0, y1, x0, x1), soft in iter_patches(
        frames, faces, affines, found, fast=fast, device=device, batch_size=batch_size, workers=workers,
        blend=blend, mask_grow=mask_grow, feather=feather, mask=mask, resolution=resolution, with_mask=True,
    ):  # fmt: skip
        out[i, y0:y1, x0:x1] = patch
        if weights is not None:
            weights[i, y0:y1, x0:x1] = soft
    return (out, weights) if return_mask else out


def paste_back_track(frames, faces, track: FaceTrack, **kwargs):
    """``paste_back`` driven by a ``FaceTrack``: output frame i is ``frames[track.frame_index[i]]`` with
    ``faces[i]`` pasted in (the sampler may have looped or cut the video). Returns uint8 ``[len(track), H, W, 3]``
    (and the blend weights with ``return_mask=True``). A ``mask`` is per *source* frame (``[len(frames), H, W]``,
    followed through ``frame_index`` like the frames) or ``[1, H, W]``; ``resolution`` defaults to the track's."""
    if len(faces) != len(track):
        raise ValueError(f"{len(faces)} faces for a face track of {len(track)} frames")
    frames = np.asarray(frames)
    originals = frames[track.frame_index]
    mask = kwargs.pop("mask", None)
    if mask is not None:
        mask = _allow_masks(mask, len(frames), frames.shape[1:3])
        if len(mask) > 1:
            mask = mask[track.frame_index]
    kwargs.setdefault("resolution", track.resolution)
    return paste_back(originals, faces, track.affines, track.found, mask=mask, **kwargs)
