"""Paste-back blend modes on the golden clip: what each mode changes outside the regenerated mouth.

    python benchmarks/blend.py [--golden /work/shared/golden/face] [--fast]

Clip: the 16 golden frames (480x640) with the official affines. Stand-in "generated" faces (no real
model here):
  own      the aligned face itself (a perfect generator: any change is resampling loss),
  soft     the aligned face Gaussian-blurred (sigma 1 px: roughly the softness of a VAE round trip),
  inverted 255 - the aligned face (every crop pixel changes: an upper bound of what is touched).
For each stand-in and blend mode: pixels of the frame changed, and over the *non-mouth face area* (the
pixels the official face blend touches minus the regenerated mouth region, dilated 1 px) the number of
changed pixels, the max abs difference and the PSNR against the input (inf = bit-identical).
"""

from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from latentsync_core.constants import crop_size  # noqa: E402
from latentsync_core.face import fixed_mask, paste_back  # noqa: E402


def mouth_region(affine: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    w, h = crop_size(256)
    mouth = cv2.resize(1.0 - fixed_mask(256), (w, h), interpolation=cv2.INTER_LINEAR)
    warped = cv2.warpAffine(mouth, affine, frame_hw[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return cv2.dilate((warped >= 0.5).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", default="/work/shared/golden/face")
    parser.add_argument("--fast", action="store_true", help="the torch/kornia path instead of the OpenCV reference")
    args = parser.parse_args()
    g = np.load(os.path.join(args.golden, "face_clip.npz"))
    frames, affines, faces = g["frames"], g["affines"], g["faces"]
    soft = np.stack([cv2.GaussianBlur(f, (0, 0), 1.0) for f in faces])
    stand_ins = {"own": faces, "soft": soft, "inverted": 255 - faces}
    _, face_weights = paste_back(frames, faces, affines, return_mask=True, fast=args.fast)
    mouth = np.stack([mouth_region(a, frames.shape[1:3]) for a in affines])
    non_mouth = (face_weights > 0) & ~mouth
    print(f"{len(frames)} frames {frames.shape[2]}x{frames.shape[1]}, {'fast' if args.fast else 'reference'} path; "
          f"non-mouth face area {non_mouth.sum() / len(frames):.0f} px/frame, mouth {mouth.sum() / len(frames):.0f} px/frame")  # fmt: skip
    print("| stand-in | blend | px changed / frame | non-mouth face: px changed / frame | max abs | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for name, generated in stand_ins.items():
        for blend in ("face", "mouth"):
            out = paste_back(frames, generated, affines, blend=blend, fast=args.fast)
            diff = (out != frames).any(-1)
            region_out, region_in = out[non_mouth], frames[non_mouth]
            max_abs = int(np.abs(region_out.astype(int) - region_in).max())
            print(f"| {name} | {blend} | {diff.sum() / len(frames):.0f} | {(diff & non_mouth).sum() / len(frames):.0f} "
                  f"| {max_abs} | {psnr(region_out, region_in):.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
