"""Lip-sync scores as papers report them: LSE-C, LSE-D and the audio-video offset (official SyncNet evaluation).

The computation of LatentSync 1.5's ``eval/syncnet/syncnet_eval.py`` (``SyncNetEval.evaluate``, adapted from
joonson/syncnet_python) and the crop aggregation of ``eval/eval_sync_conf.py``, on arrays instead of folders:

1. frames (25 fps face crops) -> the official JPEG round trip (:func:`jpeg_round_trip`: evaluate writes every
   frame with ffmpeg's default MJPEG settings and reads it back with ``cv2.imread``, so the network sees JPEG
   pixels in **BGR** order) -> ``cv2.resize`` to 224x224 (INTER_LINEAR);
2. audio -> 16 kHz int16 -> MFCC (``python_speech_features.mfcc`` defaults, on the unscaled int16 values);
3. the ``S`` network (joonson's ``syncnet_v2``) embeds every 5-frame window and its 20 MFCC steps (0.2 s);
4. distances between each video window and the audio windows shifted by -15..+15 frames, averaged over the
   clip: LSE-D is the smallest mean distance, LSE-C the median minus that minimum, the offset ``15 - argmin``.

The network class and ``calc_pdist`` come from PyPI ``syncnet-python==0.2.3`` (MIT, a maintained refactor of
joonson's code); MFCC from ``python_speech_features``. Neither is a dependency of the pack: both are imported
only when a score is computed (optional extra ``sync``; ``syncnet-python`` itself must be installed with
``--no-deps`` because its metadata pulls torchvision and pandas, see :data:`INSTALL_HINT`).

With the real ``syncnet_v2.model`` weights, good lip sync scores LSE-C roughly 7-9 in published results; the
numbers are comparable with papers only when the crops are made as the official pipeline makes them (S3FD
detection, tracking, crop scale 0.4). Frames are assumed to be 25 fps, as in the official evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from statistics import fmean
from typing import Any

import numpy as np
import torch

from .checkpoints import as_state_dict, guess_model_kind, read_checkpoint, state_dict_problems
from .errors import AudioError, CheckpointError, FaceError, InputMismatchError, LatentSyncError

SAMPLE_RATE = 16000  # Hz: the rate evaluate extracts the audio at
FPS = 25  # frames per second the evaluation assumes (640 audio samples per video frame)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
FACE_SIZE = 224  # evaluate resizes every frame to 224x224
WINDOW_FRAMES = 5  # video frames per SyncNet window
MFCC_PER_FRAME = 4  # MFCC steps (10 ms) per video frame
MFCC_WINDOW = 20  # MFCC steps per SyncNet window (0.2 s)
VSHIFT = 15  # offsets searched: -15..+15 frames (evaluate's default)
BATCH_SIZE = 20  # windows per forward pass (evaluate's default)
MEDFILT_KERNEL = 9  # the per-frame confidence is median-filtered over 9 windows
MIN_SECONDS = 1.0  # shorter audio is refused (too few windows for a meaningful median)
SILENCE_DBFS = -60.0  # audio whose overall RMS is below this is refused as silent
MJPEG_BIT_RATE = 200_000  # ffmpeg's default target bit rate (no -q:v): its MJPEG rate control sets the quality

INSTALL_HINT = "pip install python_speech_features scipy && pip install --no-deps syncnet-python==0.2.3"
_SYNCNET_MODULES = "_latentsync_syncnet_python"  # our private names for the two files we load


# ----------------------------------------------------------------------------------------------------------
# Optional packages (imported when a score is computed, never at import time)


def _syncnet_python():
    """``(S, calc_pdist)`` from syncnet-python. Its package ``__init__`` imports its whole video pipeline
    (scenedetect 0.6, ffmpeg-python); the two files used here import only torch, numpy, cv2, scipy and
    python_speech_features, so they are loaded by path, without running that ``__init__``."""
    try:
        model = _syncnet_python_module("SyncNetModel")
        instance = _syncnet_python_module("SyncNetInstance")
    except ImportError as exc:
        raise LatentSyncError(
            f"The sync score needs the syncnet-python package and its imports ({exc}). Install them with: {INSTALL_HINT}"
        ) from exc
    return model.S, instance.calc_pdist


def _syncnet_python_module(name: str):
    """One file (``name.py``) or sub-package (``name/__init__.py``, e.g. ``detectors/s3fd``) of the
    syncnet-python package, loaded by path under a private name."""
    import importlib.util
    import sys

    key = f"{_SYNCNET_MODULES}_{name.replace('/', '_')}"
    if key in sys.modules:
        return sys.modules[key]
    package = importlib.util.find_spec("syncnet_python")  # locates the package; does not run its __init__
    root = list(package.submodule_search_locations)[0] if package else None
    path = os.path.join(root, *name.split("/")) if root else None
    if path is not None and os.path.isdir(path):  # a sub-package: its relative imports resolve inside it
        spec = importlib.util.spec_from_file_location(key, os.path.join(path, "__init__.py"),
                                                      submodule_search_locations=[path])
    elif path is not None and os.path.isfile(path + ".py"):
        spec = importlib.util.spec_from_file_location(key, path + ".py")
    else:
        raise ImportError("No module named 'syncnet_python'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for loaded in [k for k in sys.modules if k == key or k.startswith(key + ".")]:
            del sys.modules[loaded]
        raise
    return module


def _mfcc_function():
    try:
        from python_speech_features import mfcc
    except ImportError as exc:
        raise LatentSyncError(f"The sync score needs python_speech_features ({exc}). Install it with: {INSTALL_HINT}") from exc
    return mfcc


def _medfilt():
    try:
        from scipy.signal import medfilt
    except ImportError as exc:
        raise LatentSyncError(f"The sync score needs scipy ({exc}). Install it with: {INSTALL_HINT}") from exc
    return medfilt


# ----------------------------------------------------------------------------------------------------------
# The network


def load_syncnet_v2(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The ``S`` network (joonson's ``syncnet_v2``, 1024-d embeddings) from ``syncnet_v2.model``.

    The file is a plain state dict (``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``, ``netfclip.*``), read
    safely (weights only). Keys and shapes must match exactly (BatchNorm's ``num_batches_tracked`` may be
    absent); otherwise :class:`CheckpointError` names the file. Returns the model in eval mode, float32, on
    ``device``, without gradients. Raises :class:`ModelMissingError` when the file does not exist.
    """
    S, _ = _syncnet_python()
    name = os.path.basename(os.fspath(path))
    state = as_state_dict(read_checkpoint(path), name)
    model = S(num_layers_in_fc_layers=1024)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = state_dict_problems(state, expected, optional=lambda key: key.endswith("num_batches_tracked"))
    if problems:
        raise CheckpointError(
            f"{name} is not a syncnet_v2 model (SyncNet S with 1024-d embeddings): {'; '.join(problems)}. "
            f"It looks like {guess_model_kind(state)}."
        )
    full = {k: state[k].float() if state[k].is_floating_point() else state[k] for k in state}
    for key, value in model.state_dict().items():
        full.setdefault(key, value)  # num_batches_tracked (unused in eval mode)
    model.load_state_dict(full, strict=True)
    return model.eval().requires_grad_(False).to(device)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------------------
# Inputs: frames and audio as evaluate sees them


def _uint8_frames(frames: Any, name: str = "frames") -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` from uint8 arrays/tensors or floats in [0, 1] (ComfyUI IMAGE)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputMismatchError(f"{name}: expected [frames, height, width, 3], got shape {frames.shape}.")
    if len(frames) == 0:
        raise FaceError(f"{name}: no frames to score (no face crops were given).")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        return np.clip(np.rint(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    raise InputMismatchError(f"{name}: expected uint8 pixels or floats in [0, 1], got {frames.dtype}.")


def pcm16(pcm: Any) -> np.ndarray:
    """int16 ``[L]`` samples as ffmpeg's ``pcm_s16le`` writes them.

    int16 input is returned unchanged; float input (``[-1, 1]``, numpy or torch, ``[L]`` or ``[1, L]``) is
    scaled by 32768, rounded to nearest-even and clipped, as ffmpeg converts float to s16."""
    if isinstance(pcm, torch.Tensor):
        pcm = pcm.detach().cpu().numpy()
    pcm = np.asarray(pcm)
    if pcm.ndim == 2 and pcm.shape[0] == 1:
        pcm = pcm[0]
    if pcm.ndim != 1:
        raise AudioError(f"sync score: expected mono audio [samples], got shape {pcm.shape}.")
    if pcm.dtype == np.int16:
        return pcm
    if not np.issubdtype(pcm.dtype, np.floating):
        raise AudioError(f"sync score: expected int16 or float samples, got {pcm.dtype}.")
    if not np.isfinite(pcm).all():
        raise AudioError("sync score: the audio contains NaN or infinite samples.")
    return np.clip(np.rint(pcm.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def check_audio(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Raise :class:`AudioError` for audio shorter than 1 s or silent (overall RMS under -60 dBFS)."""
    seconds = len(pcm) / sample_rate
    if seconds < MIN_SECONDS:
        raise AudioError(
            f"The audio is too short to score lip sync: {seconds:.2f} s (at least {MIN_SECONDS:g} s is needed)."
        )
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64))))) / 32768.0
    level = 20.0 * math.log10(rms) if rms > 0 else -math.inf
    if level < SILENCE_DBFS:
        raise AudioError(
            f"The audio is silent ({level:.0f} dBFS overall, below {SILENCE_DBFS:g}): lip sync cannot be scored "
            "without speech."
        )


def mfcc(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float64 ``[13, M]``: ``python_speech_features.mfcc`` with its defaults (25 ms frames, 10 ms step,
    rectangular window, pre-emphasis 0.97, 26 filters, lifter 22, c0 = log energy) on the **unscaled**
    int16 values, ``M = 1 + ceil((L - 400) / 160)``; as evaluate computes it."""
    return np.ascontiguousarray(_mfcc_function()(pcm, sample_rate).T)


def num_windows(num_frames: int, num_samples: int) -> int:
    """Windows evaluate scores: ``min(frames, samples // 640) - 5`` (one fewer than would fit)."""
    return min(int(num_frames), int(num_samples) // SAMPLES_PER_FRAME) - WINDOW_FRAMES


# -- the JPEG round trip ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rgb2yuv_coefficients() -> tuple[int, ...]:
    """libswscale's RGB -> limited-range YUV coefficients (``fill_rgb2yuv_table``, BT.601, 15-bit)."""

    def rdiv(a: int, b: int) -> int:  # C's ROUNDED_DIV (rounds half away from zero)
        q = (abs(a) + (b >> 1)) // b
        return q if a >= 0 else -q

    one = 1 << 16
    vr, ub, ug, vg = 104597, 132201, -25675, -53279  # ff_yuv2rgb_coeffs for BT.601 (the default matrix)
    cy = one * 255 // 219
    w, v = rdiv(one * one * ug, ub), rdiv(one * one * vg, vr)
    z = one * one - w - v
    c_y, c_u, c_v = rdiv(cy * z, one), rdiv(ub * z, one), rdiv(vr * z, one)
    s = 1 << 15
    return (
        -rdiv(s * v, c_y), rdiv(s * one * one, c_y), -rdiv(s * w, c_y),
        rdiv(s * v, c_u), -rdiv(s * one * one, c_u), rdiv(s * (z + w), c_u),
        rdiv(s * (v + z), c_v), -rdiv(s * one * one, c_v), rdiv(s * w, c_v),
    )  # fmt: skip


def _rgb_to_yuvj444(frame: np.ndarray) -> list[np.ndarray]:
    """uint8 RGB ``[H, W, 3]`` -> full-range Y, Cb, Cr planes (uint8 ``[H, W]``), computed as the ffmpeg that
    made the reference converts an RGB video for its MJPEG encoder (libswscale 6, C path): RGB -> 14-bit
    limited-range YUV, range expansion, rounding. A current libswscale (PyAV's) truncates chroma instead:
    its JPEGs decode 0.5-1 grey level off (measured in tests/test_sync_score_parity.py)."""
    ry, gy, by, ru, gu, bu, rv, gv, bv = _rgb2yuv_coefficients()
    r, g, b = (frame[..., i].astype(np.int64) for i in range(3))
    y14 = (256 * (ry * r + gy * g + by * b) + (32 << 22) + (1 << 16)) >> 17
    u14 = (256 * (ru * r + gu * g + bu * b) + (256 << 22) + (1 << 16)) >> 17
    v14 = (256 * (rv * r + gv * g + bv * b) + (256 << 22) + (1 << 16)) >> 17
    y15 = (np.minimum(2 * y14, 30189) * 19077 - 39057361) >> 14  # limited -> full range (15-bit)
    u15 = (np.minimum(2 * u14, 30775) * 4663 - 9289992) >> 12
    v15 = (np.minimum(2 * v14, 30775) * 4663 - 9289992) >> 12
    return [np.clip((p + 64) >> 7, 0, 255).astype(np.uint8) for p in (y15, u15, v15)]


def _yuv_frame(planes: Sequence[np.ndarray], pix_fmt: str):
    import av

    height, width = planes[0].shape
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane, data in zip(frame.planes, planes):
        buffer = np.zeros((plane.height, plane.line_size), np.uint8)
        buffer[:, : plane.width] = data[: plane.height, : plane.width]
        plane.update(buffer.tobytes())
    return frame


def _subsample_420(plane: np.ndarray) -> np.ndarray:
    """2x2 mean (rounded) of a chroma plane, edge-replicated for odd sizes."""
    h, w = plane.shape
    p = np.pad(plane.astype(np.int32), ((0, h % 2), (0, w % 2)), mode="edge")
    s = p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


def encode_mjpeg(frames_rgb: Any, subsampling: str = "444") -> list[bytes]:
    """The JPEG files ``ffmpeg -i VIDEO -f image2 %06d.jpg`` writes (ffmpeg's default MJPEG settings), made
    with PyAV: one encoder over the whole clip (its rate control targets 200 kb/s at 25 fps, so a frame's
    quality depends on the frames before it), single-threaded (slice threads change the Huffman tables).

    frames_rgb: uint8 ``[T, H, W, 3]`` RGB (or floats in [0, 1]). subsampling: ``"444"`` (what ffmpeg picks
    for an RGB or lossless source, as in the reference) or ``"420"`` (what it picks for yuv420p sources such
    as H.264/MPEG-4 files; chroma here is a 2x2 mean, an approximation). Returns T JPEG files as bytes.
    """
    import av

    frames = _uint8_frames(frames_rgb)
    if subsampling not in ("444", "420"):
        raise ValueError(f"subsampling must be '444' or '420', not {subsampling!r}")
    pix_fmt = "yuvj444p" if subsampling == "444" else "yuvj420p"
    height, width = frames.shape[1:3]
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    codec.time_base, codec.framerate = Fraction(1, FPS), Fraction(FPS)
    codec.bit_rate = MJPEG_BIT_RATE
    codec.thread_count = 1
    out: list[bytes] = []
    for t, frame in enumerate(frames):
        planes = _rgb_to_yuvj444(frame)
        if subsampling == "420":
            planes = [planes[0], _subsample_420(planes[1]), _subsample_420(planes[2])]
        yuv = _yuv_frame(planes, pix_fmt)
        yuv.pts = t
        out.extend(bytes(p) for p in codec.encode(yuv))
    out.extend(bytes(p) for p in codec.encode(None))
    if len(out) != len(frames):
        raise LatentSyncError(f"MJPEG encoding returned {len(out)} images for {len(frames)} frames.")
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    """uint8 BGR ``[H, W, 3]``: ``cv2.imread``'s decoding of one JPEG file (OpenCV's libjpeg)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise LatentSyncError("OpenCV could not decode a JPEG image.")
    return image


def jpeg_round_trip(frames_rgb: Any, subsampling: str = "444") -> np.ndarray:
    """uint8 **BGR** ``[T, H, W, 3]``: the frames after the official JPEG round trip (ffmpeg MJPEG, then
    ``cv2.imread``); see :func:`encode_mjpeg`."""
    return np.stack([decode_jpeg(data) for data in encode_mjpeg(frames_rgb, subsampling)])


def fed_frames(frames_rgb: Any, jpeg: bool = True, subsampling: str = "444") -> np.ndarray:
    """uint8 BGR ``[T, 224, 224, 3]``: what evaluate feeds the network. RGB frames of any size -> JPEG round
    trip (unless ``jpeg=False``) -> ``cv2.resize`` to 224x224 (INTER_LINEAR; a copy for 224x224 input)."""
    import cv2

    frames = _uint8_frames(frames_rgb)
    bgr = jpeg_round_trip(frames, subsampling) if jpeg else np.ascontiguousarray(frames[..., ::-1])
    if bgr.shape[1:3] == (FACE_SIZE, FACE_SIZE):
        return bgr
    return np.stack([cv2.resize(f, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR) for f in bgr])


# ----------------------------------------------------------------------------------------------------------
# Features and scores


@torch.no_grad()
def video_features(
    model: torch.nn.Module, frames_bgr: np.ndarray, windows: int | Sequence[int], batch_size: int = BATCH_SIZE
) -> torch.Tensor:
    """float32 ``[N, 1024]`` (CPU): ``forward_lip`` of frames ``v..v+4`` for each window start v.

    frames_bgr: uint8 ``[T, 224, 224, 3]`` **BGR**, raw 0..255 (no normalisation), as fed (:func:`fed_frames`);
    the network gets ``[B, 3, 5, 224, 224]`` with channel 0 = blue. windows: the number of windows N (starts
    0..N-1, as evaluate) or the start frames themselves. Batched ``batch_size`` windows at a time (evaluate: 20).
    """
    frames_bgr = np.asarray(frames_bgr)
    if frames_bgr.ndim != 4 or frames_bgr.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise InputMismatchError(f"SyncNet needs frames [T, 224, 224, 3], got shape {frames_bgr.shape}.")
    starts = list(range(windows)) if isinstance(windows, int) else [int(v) for v in windows]
    if starts and (min(starts) < 0 or max(starts) + WINDOW_FRAMES > len(frames_bgr)):
        raise InputMismatchError(f"Windows up to frame {max(starts) + WINDOW_FRAMES - 1} need more than {len(frames_bgr)} frames.")
    device = _model_device(model)
    out = []
    for first in range(0, len(starts), batch_size):
        batch = np.stack([frames_bgr[v : v + WINDOW_FRAMES] for v in starts[first : first + batch_size]])
        # contiguous [B, 3, 5, 224, 224] as evaluate builds it (a channels-last layout picks other conv kernels)
        batch = torch.from_numpy(batch).to(device).permute(0, 4, 1, 2, 3).float().contiguous()
        out.append(model.forward_lip(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1024)


@torch.no_grad()
def audio_features(model: torch.nn.Module, mfcc_13xm: np.ndarray, windows: int, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """float32 ``[windows, 1024]`` (CPU): ``forward_aud`` of ``mfcc[:, 4v : 4v + 20]`` (as ``[B, 1, 13, 20]``,
    float32) for each window v."""
    cc = torch.from_numpy(np.asarray(mfcc_13xm, dtype=np.float64)).float()
    if cc.ndim != 2 or cc.shape[0] != 13:
        raise InputMismatchError(f"SyncNet needs MFCC [13, steps], got shape {tuple(cc.shape)}.")
    needed = MFCC_PER_FRAME * (windows - 1) + MFCC_WINDOW
    if windows > 0 and cc.shape[1] < needed:
        raise InputMismatchError(f"{windows} windows need {needed} MFCC steps, got {cc.shape[1]}.")
    device = _model_device(model)
    cc = cc.to(device)
    out = []
    for start in range(0, windows, batch_size):
        stop = min(windows, start + batch_size)
        batch = torch.stack([cc[None, :, MFCC_PER_FRAME * v : MFCC_PER_FRAME * v + MFCC_WINDOW] for v in range(start, stop)])
        out.append(model.forward_aud(batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1024)


def sync_features(model: torch.nn.Module, frames_bgr: np.ndarray, pcm: Any, batch_size: int = BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(video_feats, audio_feats)``, float32 ``[N, 1024]`` each, N = :func:`num_windows`.

    frames_bgr: uint8 ``[T, 224, 224, 3]`` BGR as fed (:func:`fed_frames`); pcm: 16 kHz mono, int16 or float
    in [-1, 1] (:func:`pcm16`). Audio shorter than 1 s or silent raises :class:`AudioError`."""
    samples = pcm16(pcm)
    check_audio(samples)
    windows = num_windows(len(frames_bgr), len(samples))
    if windows <= 0:
        raise InputMismatchError(
            f"{len(frames_bgr)} frames are too few to score lip sync (at least {WINDOW_FRAMES + 1} are needed)."
        )
    return (
        video_features(model, frames_bgr, windows, batch_size),
        audio_features(model, mfcc(samples), windows, batch_size),
    )


@dataclasses.dataclass(frozen=True)
class SyncScore:
    """One clip's scores (``evaluate``'s numbers plus what it computes and drops).

    offset:         audio-video offset in frames at 25 fps: ``vshift - argmin``; +s means the sound comes s
                    frames early (audio advanced), 0 is in sync.
    lse_c:          LSE-C (SyncNet confidence) = median - min of ``mean_dists``; higher is better.
    lse_d:          LSE-D = min of ``mean_dists``; lower is better.
    mean_dists:     float32 ``[2 vshift + 1]``: mean distance per offset; index k is offset ``vshift - k``
                    of the audio relative to the video (column k of ``dists`` pairs window i with audio
                    window ``i + k - vshift``).
    dists:          float32 ``[N, 2 vshift + 1]`` per-window distances (zero audio features beyond the ends).
    per_frame_conf: float32 ``[N]``: ``medfilt(median - dists[:, argmin], 9)``, the confidence over time
                    (window i covers frames i..i+4).
    median:         ``torch.median`` of ``mean_dists`` (the lower middle value).
    min_index:      argmin of ``mean_dists``.
    """

    offset: int
    lse_c: float
    lse_d: float
    mean_dists: np.ndarray
    dists: np.ndarray
    per_frame_conf: np.ndarray
    median: float
    min_index: int
    vshift: int = VSHIFT

    @property
    def num_windows(self) -> int:
        return int(self.dists.shape[0])

    @property
    def offset_ms(self) -> float:
        return self.offset * 1000.0 / FPS


def distances(video_feats: torch.Tensor, audio_feats: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """float32 ``[N, 2 vshift + 1]``: syncnet-python's ``calc_pdist`` (the official one): ``‖v_i - a_{i+k-vshift}
    + 1e-6‖₂`` with ``vshift`` zero rows padded on each side of the audio features."""
    _, calc_pdist = _syncnet_python()
    if video_feats.shape != audio_feats.shape or video_feats.ndim != 2 or len(video_feats) == 0:
        raise InputMismatchError(
            f"video and audio features must both be [N > 0, dim], got {tuple(video_feats.shape)} and "
            f"{tuple(audio_feats.shape)}."
        )
    return torch.stack(calc_pdist(video_feats.float().cpu(), audio_feats.float().cpu(), vshift=vshift))


def score_features(video_feats: torch.Tensor, audio_feats: torch.Tensor, vshift: int = VSHIFT) -> SyncScore:
    """:class:`SyncScore` from the window features, as evaluate computes it."""
    dists = distances(video_feats, audio_feats, vshift)  # [N, 2 vshift + 1]
    mean_dists = dists.t().contiguous().mean(1)  # evaluate: torch.mean(torch.stack(dists, 1), 1)
    min_dist, min_index = torch.min(mean_dists, 0)
    median = torch.median(mean_dists)
    framewise = (median - dists[:, int(min_index)]).numpy()
    return SyncScore(
        offset=int(vshift - int(min_index)),
        lse_c=float(median - min_dist),
        lse_d=float(min_dist),
        mean_dists=mean_dists.numpy(),
        dists=dists.numpy(),
        per_frame_conf=np.asarray(_medfilt()(framewise, kernel_size=MEDFILT_KERNEL), dtype=np.float32),
        median=float(median),
        min_index=int(min_index),
        vshift=int(vshift),
    )


def score_clip(
    model: torch.nn.Module,
    frames: Any,
    pcm: Any,
    rate: int = SAMPLE_RATE,
    vshift: int = VSHIFT,
    jpeg: bool = True,
    subsampling: str = "444",
    batch_size: int = BATCH_SIZE,
) -> SyncScore:
    """Score one face-crop clip as the official evaluation does.

    frames: the crops at 25 fps, **RGB** uint8 ``[T, H, W, 3]`` (or floats in [0, 1]), any size (resized to
    224 after the JPEG round trip, as evaluate does). pcm: the clip's audio, mono ``[L]`` int16 or float in
    [-1, 1]; ``rate`` != 16000 is resampled with libswresample (``ffmpeg -ar 16000``). Frames and audio of
    different lengths are scored over the shorter one (evaluate's ``min_length``). ``jpeg=False`` skips the
    JPEG round trip (the numbers are then not the official ones). Raises :class:`FaceError` for no frames,
    :class:`AudioError` for audio shorter than 1 s or silent.
    """
    samples = _audio_16k(pcm, rate)
    check_audio(samples)  # before the JPEG work
    video_feats, audio_feats = sync_features(model, fed_frames(frames, jpeg, subsampling), samples, batch_size)
    return score_features(video_feats, audio_feats, vshift)


def _audio_16k(pcm: Any, rate: int) -> np.ndarray:
    """int16 mono 16 kHz samples. Mono 16 kHz input is used as is; other rates or several channels go through
    the pack's libswresample path (channels averaged; ffmpeg's ``-ac 1`` downmix may differ slightly)."""
    arr = pcm.detach().cpu().numpy() if isinstance(pcm, torch.Tensor) else np.asarray(pcm)
    if int(rate) == SAMPLE_RATE and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[0] == 1)):
        return pcm16(arr)
    from .audio.io import to_whisper_input

    wave = arr.astype(np.float32) / 32768.0 if arr.dtype == np.int16 else arr
    return pcm16(to_whisper_input(wave, int(rate)).numpy())


@dataclasses.dataclass(frozen=True)
class AggregateScore:
    """Scores over several face crops of one video (``eval_sync_conf.syncnet_eval``).

    offset: ``int(fmean(offsets))`` (truncates toward zero, as the official code does); lse_c: mean LSE-C;
    lse_d: mean LSE-D (the official aggregation drops it; given for completeness)."""

    offset: int
    lse_c: float
    lse_d: float


def aggregate(scores: Sequence[SyncScore]) -> AggregateScore:
    """The official aggregation over the crops of one video. No crops raises :class:`FaceError`."""
    if not scores:
        raise FaceError("No face crops to score: no face was detected in the video.")
    return AggregateScore(
        offset=int(fmean(s.offset for s in scores)),
        lse_c=fmean(s.lse_c for s in scores),
        lse_d=fmean(s.lse_d for s in scores),
    )
