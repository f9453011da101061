"""Face nodes: LatentSync Face Crop & Align, LatentSync Paste Back (adapters over latentsync_core.face)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..latentsync_core.errors import InputMismatchError
from ..latentsync_core.face import FaceAligner, fixed_mask, iter_patches
from ..latentsync_core.face.landmarks import legacy_face_mesh_available, tasks_available
from ..latentsync_core.face.preview import draw_previews
from ..latentsync_core.face.task_file import resolve_task_file
from ..latentsync_core.options import FaceOptions, PasteOptions, from_widgets, node_inputs
from ..latentsync_core.types import FaceTrack
from . import comfy_bridge as bridge
from .types import CATEGORY, LATENTSYNC_FACES

logger = logging.getLogger(__name__)

BATCH = 8  # frames converted to uint8 at a time (never a second copy of the whole video)


class _Uint8Frames:
    """A ComfyUI IMAGE ``[N, H, W, 3]`` float 0..1 seen as uint8 RGB frames, converted one at a time."""

    def __init__(self, images: torch.Tensor, index: np.ndarray | None = None):
        self.images = images
        self.index = np.arange(len(images)) if index is None else index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        frame = self.images[int(self.index[i])]
        return (frame[..., :3].float() * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def task_path() -> str | None:
    """``face_landmarker.task`` for mediapipe releases without the legacy face mesh (fetched once).

    Same resolution as the library (``resolve_task_file``): ComfyUI's ``models/latentsync`` folders
    (extra_model_paths.yaml included; downloads go to the first), then the cache; ``HF_HUB_OFFLINE=1``
    means no network attempt.
    """
    if legacy_face_mesh_available() or not tasks_available():
        return None  # no file needed, or no mediapipe at all (the aligner then says how to install it)
    bar = bridge.progress_bar(100)
    return resolve_task_file(
        folders=bridge.model_folders(),
        progress=lambda done, total: bar.update_absolute(done * 100 // max(total, 1), 100),
    )


class LatentSyncFaceCropAlign:
    NODE_ID = "LatentSyncFaceCropAlign"
    DISPLAY_NAME = "LatentSync Face Crop & Align"
    CATEGORY = f"{CATEGORY}/face"
    FUNCTION = "align"
    DESCRIPTION = (
        "Finds the face in every frame (mediapipe face mesh) and cuts it out aligned exactly as LatentSync "
        "was trained (official landmark smoothing, similarity transform, Lanczos warp). Short runs of frames "
        "without a face are bridged from their neighbours; longer runs are passed through untouched by "
        "Paste Back and listed in the node's text."
    )
    RETURN_TYPES = ("IMAGE", "MASK", LATENTSYNC_FACES)
    RETURN_NAMES = ("faces", "mouth_mask", "face_track")
    OUTPUT_TOOLTIPS = (
        "Aligned faces [N, res, res, 3] (flat grey where no face was found).",
        "The fixed mouth mask [1, res, res]: 1 = the region LatentSync regenerates (same for every frame).",
        "Where each face came from (affines, found flags, frame indices): feed it to the sampler and Paste Back.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Video frames (any size); one face per frame is aligned."}),
                **node_inputs("face", "max_gap", "resolution"),
            }
        }  # fmt: skip

    def align(self, images, face=None, face_index=None, max_gap_frames=None, resolution=None):
        widgets = {"face": face, "face_index": face_index, "max_gap_frames": max_gap_frames, "resolution": resolution}
        options = FaceOptions(**from_widgets(widgets, ("face", "max_gap", "resolution")))
        resolution = options.resolution
        frames = _Uint8Frames(images)
        aligner = FaceAligner(resolution, face=options.face, max_gap=options.max_gap, task_path=task_path())
        # the float IMAGE output is filled face by face: no second (uint8) copy of all faces
        faces = torch.empty((len(frames), int(resolution), int(resolution), 3), dtype=torch.float32)

        # written through numpy from the warp threads: ComfyUI runs nodes under torch.inference_mode(),
        # which is thread-local, so a torch in-place write from a worker thread would be refused
        out = faces.numpy()

        def store(i: int, face: np.ndarray) -> None:
            np.divide(face, np.float32(255.0), out=out[i], dtype=np.float32)

        try:
            result = aligner.align(frames, progress=bridge.progress_callback(2 * len(frames)), sink=store)
        finally:
            aligner.close()
        mouth = torch.from_numpy(1.0 - np.clip(fixed_mask(int(resolution)), 0.0, 1.0))[None].float()
        summary = result.summary()
        logger.info("LatentSync Face Crop & Align: %s", summary)
        return {"ui": {"text": [summary]}, "result": (faces, mouth, result.track)}


class LatentSyncPasteBack:
    NODE_ID = "LatentSyncPasteBack"
    DISPLAY_NAME = "LatentSync Paste Back"
    CATEGORY = f"{CATEGORY}/face"
    FUNCTION = "paste"
    DESCRIPTION = (
        "Puts the generated faces back into the original frames with the official soft-edged blend (or, with "
        "blend = mouth, only the regenerated mouth). Only the region around each face changes; frames without a face pass through untouched. Output frame i "
        "is the original frame the face track maps face i to (the sampler may have looped or cut the video)."
    )
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("images", "blend_mask")
    OUTPUT_TOOLTIPS = (
        "Full frames with the new mouth, one per generated face.",
        "The blend weight actually used [N, H, W] in 0..1 (1 = the generated face, 0 = the input frame).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The original video frames (the ones given to Face Crop & Align)."}),
                "faces": ("IMAGE", {"tooltip": "Generated faces from the LatentSync Sampler [N, res, res, 3], or the same faces after a face restorer / upscaler (any square size: resampled to the crop)."}),
                "face_track": (LATENTSYNC_FACES, {"tooltip": "The face track from the sampler (or from Face Crop & Align when the lengths match)."}),
                **node_inputs("paste", "blend", "mask_grow", "feather"),
            },
            "optional": {
                "protect_mask": ("MASK", {"tooltip": "Optional frame-space mask [N,H,W] or [1,H,W], 1 = may change, 0 = keep the input (protect a hand or a microphone). Multiplied into the blend."}),
            },
        }  # fmt: skip

    def paste(self, images, faces, face_track: FaceTrack, method=None, blend=None, mask_grow=None, feather=None,
              protect_mask=None):
        widgets = {"method": method, "blend": blend, "mask_grow": mask_grow, "feather": feather}
        options = PasteOptions(**from_widgets(widgets, ("paste", "blend", "mask_grow", "feather")))
        _check_inputs(images, faces, face_track)
        protect = _protect_mask(protect_mask, images)
        device = bridge.compute_device()
        fast = options.paste == "fast" or (options.paste == "auto" and torch.device(device).type != "cpu")
        n = len(face_track)
        out = torch.empty((n, *images.shape[1:3], 3), dtype=torch.float32)
        weights = torch.zeros((n, *images.shape[1:3]), dtype=torch.float32)
        originals = _Uint8Frames(images, face_track.frame_index)
        progress = bridge.progress_callback(n)
        for start in range(0, n, BATCH):
            stop = min(n, start + BATCH)
            for i in range(start, stop):
                out[i] = images[int(face_track.frame_index[i])][..., :3]
            patches = iter_patches(
                _Slice(originals, start, stop),
                faces[start:stop, ..., :3].float().cpu().numpy(),  # float, unclamped: resized, then clamped
                face_track.affines[start:stop],
                face_track.found[start:stop],
                fast=fast,
                device=device,
                batch_size=BATCH,
                blend=options.blend,
                mask_grow=options.mask_grow,
                feather=options.feather,
                mask=None if protect is None else (protect if len(protect) == 1 else protect[face_track.frame_index[start:stop]]),
                resolution=face_track.resolution,
                with_mask=True,
            )
            for i, patch, (y0, y1, x0, x1), weight in patches:
                out[start + i, y0:y1, x0:x1] = torch.from_numpy(patch).float().div_(255.0)
                weights[start + i, y0:y1, x0:x1] = torch.from_numpy(weight)
            progress(stop, n)
        return (out, weights)


def _protect_mask(mask, images) -> torch.Tensor | None:
    """A ComfyUI MASK ``[N,H,W]`` / ``[1,H,W]`` / ``[H,W]`` (frame space) -> float CPU ``[N or 1, H, W]``."""
    if mask is None:
        return None
    mask = mask.detach().float().cpu()
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[0] not in (1, len(images)) or tuple(mask.shape[1:]) != tuple(images.shape[1:3]):
        raise InputMismatchError(
            f"protect_mask is {list(mask.shape)} but the images are {len(images)} x {images.shape[1]} x "
            f"{images.shape[2]}: give one mask per input frame or one mask [1,H,W] for all."
        )
    return mask


class _Slice:
    """frames[start:stop] of a lazily converted frame sequence."""

    def __init__(self, frames, start: int, stop: int):
        self.frames, self.start, self.stop = frames, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frames[self.start + int(i)]


def _check_track(images, track, fields=("affines", "found", "frame_index", "frame_size")) -> None:
    """The face track comes from Face Crop & Align (or the sampler) and fits the connected frames."""
    if not all(hasattr(track, name) for name in fields):
        raise InputMismatchError("face_track must come from LatentSync Face Crop & Align (or the LatentSync Sampler)")
    if tuple(images.shape[1:3]) != tuple(track.frame_size):
        raise InputMismatchError(
            f"the images are {images.shape[2]}x{images.shape[1]} but the faces were aligned on "
            f"{track.frame_size[1]}x{track.frame_size[0]} frames: connect the same video to both nodes."
        )
    if len(track) and int(np.max(track.frame_index)) >= len(images):
        raise InputMismatchError(
            f"the face track refers to frame {int(np.max(track.frame_index))} but only {len(images)} images "
            "are connected: connect the same video that went into Face Crop & Align."
        )


def _check_inputs(images, faces, track) -> None:
    _check_track(images, track, ("affines", "found", "frame_index", "frame_size", "resolution"))
    if len(faces) != len(track):
        raise InputMismatchError(
            f"{len(faces)} generated faces but the face track has {len(track)} entries: connect the face track "
            "that the sampler outputs (it matches the generated length)."
        )
    if faces.ndim != 4 or faces.shape[1] != faces.shape[2]:
        raise InputMismatchError(
            f"the faces are {list(faces.shape)}: connect square faces [N, s, s, 3] (the sampler's output, "
            "or the same faces after an upscaler / face restorer)."
        )


class LatentSyncFacePreview:
    NODE_ID = "LatentSyncFacePreview"
    DISPLAY_NAME = "LatentSync Face Preview"
    CATEGORY = f"{CATEGORY}/face"
    FUNCTION = "preview"
    DESCRIPTION = (
        "Diagnostics: draws on every frame the 68 face landmarks, the three alignment points, the outline of "
        "the aligned crop and the outline of the regenerated mouth, so you see at once why a clip looks wrong "
        "(a wrong face picked, a crop that jitters, a mouth region off the lips). Only runs when connected."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    OUTPUT_TOOLTIPS = ("One annotated frame per face-track entry (downscaled to max_size): connect Preview Image.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames given to Face Crop & Align."}),
                "face_track": (LATENTSYNC_FACES, {"tooltip": "The face track from Face Crop & Align (or the sampler's, to follow its looped order)."}),
                "max_size": ("INT", {"default": 512, "min": 0, "max": 8192, "step": 64, "tooltip": "Longest side of the preview frames in pixels (smaller = cheaper); 0 = full size."}),
            }
        }  # fmt: skip

    def preview(self, images, face_track: FaceTrack, max_size=512):
        _check_track(images, face_track, ("affines", "landmarks", "frame_index", "frame_size"))
        out = draw_previews(_Uint8Frames(images), face_track, max_size=int(max_size) or None)
        return (torch.from_numpy(out).float().div_(255.0),)


NODE_CLASSES: list[type] = [LatentSyncFaceCropAlign, LatentSyncPasteBack, LatentSyncFacePreview]
