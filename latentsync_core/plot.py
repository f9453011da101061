"""Small line charts drawn with OpenCV (no plotting library): uint8 RGB images a ComfyUI IMAGE shows."""

from __future__ import annotations

import cv2
import numpy as np

WHITE, GREY, BLUE, RED, BLACK = (255, 255, 255), (200, 200, 200), (40, 90, 200), (210, 50, 40), (20, 20, 20)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def line_chart(values: np.ndarray, size: tuple[int, int], color, title: str, x_label: str, x0: float, dx: float,
               mark: int | None = None, zero: bool = True) -> np.ndarray:
    """One line chart of ``values`` (NaN = gap) in a ``(width, height)`` panel, axes labelled; ``zero``: the
    value range reaches 0."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 46, 10, 26, 30
    cv2.putText(img, title, (left, 17), _FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), GREY, 1)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return img
    lo, hi = float(finite.min()), float(finite.max())
    if zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    hi = hi if hi > lo else lo + 1.0
    xs = left + (np.arange(len(values)) / max(len(values) - 1, 1)) * (w - right - left)
    ys = (h - bottom) - (values - lo) / (hi - lo) * (h - bottom - top)
    if lo < 0 < hi:  # the zero line
        y0 = int((h - bottom) - (0 - lo) / (hi - lo) * (h - bottom - top))
        cv2.line(img, (left, y0), (w - right, y0), GREY, 1)
    ok = np.isfinite(ys)
    for i in range(len(values) - 1):
        if ok[i] and ok[i + 1]:
            cv2.line(img, (int(xs[i]), int(ys[i])), (int(xs[i + 1]), int(ys[i + 1])), color, 2, cv2.LINE_AA)
    if mark is not None and ok[mark]:
        cv2.circle(img, (int(xs[mark]), int(ys[mark])), 5, RED, -1, cv2.LINE_AA)
    for v, y in ((hi, top), (lo, h - bottom)):
        cv2.putText(img, f"{v:.1f}", (2, int(y) + 4), _FONT, 0.35, BLACK, 1, cv2.LINE_AA)
    for frac in (0.0, 0.5, 1.0):
        x = left + frac * (w - right - left)
        label = f"{x0 + frac * (len(values) - 1) * dx:g}"
        cv2.putText(img, label, (int(x) - 8, h - bottom + 13), _FONT, 0.35, BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, x_label, (w // 2 - 40, h - 4), _FONT, 0.38, BLACK, 1, cv2.LINE_AA)
    return img


def write_png(path: str, image: np.ndarray) -> str:
    """Write an RGB uint8 ``[H, W, 3]`` image as a PNG, atomically (a reader never sees half a file)."""
    from .safe_output import atomic_path

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data.tobytes())
    return path
