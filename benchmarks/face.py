"""Face stage speed: detect + align, and paste-back, at 480p / 720p / 1080p.

    python benchmarks/face.py [--frames 24] [--device cuda]

Frames: the golden astronaut portrait scaled to fill each frame height, shifted by a few pixels per
frame (so the detector works every frame). Paste-back is timed three ways: the official full-frame
OpenCV restore (re-implemented here only as the baseline), our windowed reference path (identical
output), and the batched torch/kornia fast path (on --device; CPU by default).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from latentsync_core.constants import crop_size  # noqa: E402
from latentsync_core.face import FaceAligner, paste_back  # noqa: E402
from latentsync_core.face.paste import faces_to_crop  # noqa: E402

SIZES = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}


def make_frames(n: int, height: int, width: int) -> np.ndarray:
    src = cv2.cvtColor(cv2.imread(os.path.join(ROOT, "tests", "fixtures", "face", "detect_0.png")), cv2.COLOR_BGR2RGB)
    scale = height / src.shape[0]
    portrait = cv2.resize(src, (int(src.shape[1] * scale), height), interpolation=cv2.INTER_AREA)
    frames = np.full((n, height, width, 3), 40, dtype=np.uint8)
    x0 = (width - portrait.shape[1]) // 2
    for i in range(n):
        dx = x0 + (i % 5) * 2
        frames[i, :, dx : dx + portrait.shape[1]] = portrait[:, : width - dx]
    return frames


def official_restore(frame, face, affine):
    """The official full-frame restore (release state), as the baseline to beat."""
    h, w = frame.shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    back = cv2.warpAffine(face, inverse, (w, h), flags=cv2.INTER_LANCZOS4)
    mask = cv2.warpAffine(np.ones(face.shape[:2], np.float32), inverse, (w, h))
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
    edge = int(mask.sum() ** 0.5) // 20
    center = cv2.erode(mask, np.ones((edge * 2, edge * 2), np.uint8))
    soft = cv2.GaussianBlur(center, (edge * 2 + 1, edge * 2 + 1), 0)[:, :, None]
    return (soft * (mask[:, :, None] * back) + (1 - soft) * frame).astype(np.uint8)


def fps(fn, n: int, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    n = args.frames
    print(f"{n} frames per run, best of 2; torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"{'size':>6} | {'detect+align':>12} | {'paste official':>14} | {'paste ours':>10} | {'paste fast':>10}")
    for name in args.sizes:
        frames = make_frames(n, *SIZES[name])
        aligner = FaceAligner(256)
        result = aligner.align(frames[:2])  # warm up the detector
        align_fps = fps(lambda f=frames, a=aligner: a.align(f), n)
        result = aligner.align(frames)
        aligner.close()
        assert result.found.all(), f"{name}: face not found in every frame"
        generated = 255 - result.faces
        crops = faces_to_crop(generated, crop_size(256))

        def official(f=frames, c=crops, a=result.affines):
            return [official_restore(f[i], c[i], a[i]) for i in range(len(f))]

        ours = paste_back(frames, generated, result.affines)
        assert np.array_equal(ours, np.stack(official())), "windowed paste-back must equal the full-frame one"
        official_fps = fps(official, n)
        ours_fps = fps(lambda f=frames, g=generated, a=result.affines: paste_back(f, g, a), n)
        fast_fps = fps(
            lambda f=frames, g=generated, a=result.affines: paste_back(f, g, a, fast=True, device=args.device), n
        )
        print(
            f"{name:>6} | {align_fps:>8.1f} fps | {official_fps:>10.1f} fps | {ours_fps:>6.1f} fps | {fast_fps:>6.1f} fps"
        )


if __name__ == "__main__":
    main()
