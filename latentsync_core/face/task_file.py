"""``face_landmarker.task``: the model bundle of mediapipe's Tasks FaceLandmarker, found or fetched on first use.

Only needed when the installed mediapipe has no legacy face mesh (>= 0.10.30). The file is Google's
public model bundle (3.6 MB, SHA-256 :data:`FACE_LANDMARKER_SHA256`). :func:`resolve_task_file` finds it
(in this order):

1. ``<models_dir>/latentsync/face_landmarker.task`` (``models_dir`` argument, else env
   ``LATENTSYNC_MODELS``; the command line passes ``--models``),
2. each of ``folders`` (ComfyUI's ``models/latentsync`` and its extra_model_paths.yaml entries),
3. the Hugging-Face-style cache ``<HF_HOME>/latentsync/face_landmarker.task`` (``HF_HOME`` defaults to
   ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``),

and otherwise downloads it into the first of those places that applies (models folder, else ComfyUI
folder, else the cache). The transfer goes to a temporary file next to the target, is checked (zip
bundle with both models, SHA-256) and renamed only when complete, so an interrupted download never
leaves a partial file under the final name. ``HF_HUB_OFFLINE=1`` (or ``download=False``) means no
network attempt at all: the error then says where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable

from ..constants import (
    FACE_LANDMARKER_FILENAME,
    FACE_LANDMARKER_SHA256,
    FACE_LANDMARKER_URL,
    MODEL_FOLDER,
    MODELS_ENV,
)
from ..download import is_offline
from ..errors import CheckpointError, ModelMissingError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total or 0 if unknown)


def offline_message(folder: str) -> str:
    return (
        f"The face landmark model '{FACE_LANDMARKER_FILENAME}' is missing and could not be downloaded. "
        f"Download it from {FACE_LANDMARKER_URL} and put it in {folder} "
        f"(full path: {os.path.join(folder, FACE_LANDMARKER_FILENAME)}). It is needed because the installed "
        "mediapipe has no built-in face mesh (mediapipe >= 0.10.30); mediapipe 0.10.21 (numpy < 2, "
        "Python <= 3.12) works offline without it."
    )


TASK_MEMBERS = ("face_detector.tflite", "face_landmarks_detector.tflite")


def check_task_file(path: str) -> None:
    """Raise ``OSError`` unless ``path`` is a FaceLandmarker bundle (a zip holding both models)."""
    try:
        with zipfile.ZipFile(path) as bundle:
            names = set(bundle.namelist())
    except zipfile.BadZipFile as exc:
        raise OSError("the downloaded file is not a .task bundle (not a zip archive)") from exc
    missing = [name for name in TASK_MEMBERS if name not in names]
    if missing:
        raise OSError(f"the downloaded .task bundle lacks {', '.join(missing)}")


def cache_dir() -> str:
    """``<HF_HOME>/latentsync``: where the file goes when no models folder is known."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, MODEL_FOLDER)


def candidate_folders(models_dir: str | None = None, folders: Iterable[str] = ()) -> list[str]:
    """Folders searched for ``face_landmarker.task``, the download target first (see the module doc)."""
    models_dir = models_dir or os.environ.get(MODELS_ENV) or None
    out = [os.path.join(models_dir, MODEL_FOLDER)] if models_dir else []
    out += [str(f) for f in folders]
    out.append(cache_dir())
    return list(dict.fromkeys(out))  # keep order, drop repeats


def find_task_file(models_dir: str | None = None, folders: Iterable[str] = ()) -> str | None:
    """The first existing, non-empty ``face_landmarker.task`` in :func:`candidate_folders`, or None."""
    for folder in candidate_folders(models_dir, folders):
        path = os.path.join(folder, FACE_LANDMARKER_FILENAME)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return path
    return None


def resolve_task_file(
    models_dir: str | None = None,
    *,
    folders: Iterable[str] = (),
    download: bool = True,
    progress: Progress | None = None,
    url: str = FACE_LANDMARKER_URL,
    sha256: str | None = FACE_LANDMARKER_SHA256,
) -> str:
    """Path of ``face_landmarker.task``: found in the usual places, else downloaded (see the module doc).

    Raises ``ModelMissingError`` (URL + the exact path to put it at) when it is absent and cannot be
    downloaded: ``download=False``, ``HF_HUB_OFFLINE=1`` (no network attempt), or the download failed.
    """
    folders = list(folders)
    found = find_task_file(models_dir, folders)
    if found:
        return found
    target = candidate_folders(models_dir, folders)[0]
    if not download:
        raise ModelMissingError(f"{offline_message(target)} (downloads are turned off)")
    return ensure_task_file(target, progress=progress, url=url, sha256=sha256)


def _log_progress() -> Progress:
    """Default progress: a log line at every quarter of the download."""
    state = {"quarter": -1}

    def report(done: int, total: int) -> None:
        quarter = done * 4 // total if total else -1
        if quarter > state["quarter"]:
            state["quarter"] = quarter
            logger.info("face_landmarker.task: %d of %d bytes", done, total)

    return report


def ensure_task_file(
    folder: str,
    progress: Progress | None = None,
    url: str = FACE_LANDMARKER_URL,
    sha256: str | None = FACE_LANDMARKER_SHA256,
) -> str:
    """Path of ``face_landmarker.task`` in ``folder``, downloading it first if it is not there.

    ``sha256``: expected digest of the download (None: only the bundle check). Raises
    ``ModelMissingError`` (with the URL and the folder) when offline (``HF_HUB_OFFLINE``: no network
    attempt) or the download fails; ``CheckpointError`` when the bytes are not the expected file.
    """
    path = os.path.join(folder, FACE_LANDMARKER_FILENAME)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    if not url.startswith("https://"):
        raise ValueError(f"refusing a non-https model URL: {url}")
    if is_offline():
        raise ModelMissingError(f"{offline_message(folder)} (offline: HF_HUB_OFFLINE is set)")
    progress = progress or _log_progress()
    os.makedirs(folder, exist_ok=True)
    logger.info("downloading %s -> %s", url, path)
    fd, tmp = tempfile.mkstemp(prefix=FACE_LANDMARKER_FILENAME + ".", suffix=".part", dir=folder)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (https only)
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress(done, total)
        if total and done != total:
            raise OSError(f"incomplete download: {done} of {total} bytes")
        check_task_file(tmp)
        if sha256 and digest.hexdigest() != sha256:
            raise CheckpointError(
                f"the download of {url} is not the expected file (SHA-256 {digest.hexdigest()}, expected "
                f"{sha256}); run again, or put the file at {path} by hand"
            )
        os.replace(tmp, path)
    except OSError as exc:  # URLError, timeouts, disk errors
        raise ModelMissingError(f"{offline_message(folder)} ({exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
