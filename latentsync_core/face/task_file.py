"""``face_landmarker.task``: the model bundle of mediapipe's Tasks FaceLandmarker, fetched on first use.

Only needed when the installed mediapipe has no legacy face mesh (>= 0.10.30). The file is Google's
public model bundle (about 3.6 MB); it goes to ``<models>/latentsync/face_landmarker.task``. It is
downloaded into a temporary file next to the target and renamed when complete, so an interrupted
download never leaves a partial file under the final name.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable

from ..constants import FACE_LANDMARKER_FILENAME, FACE_LANDMARKER_URL
from ..errors import ModelMissingError

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


def ensure_task_file(folder: str, progress: Progress | None = None, url: str = FACE_LANDMARKER_URL) -> str:
    """Path of ``face_landmarker.task`` in ``folder``, downloading it first if it is not there.

    Raises ``ModelMissingError`` (with the URL and the folder) when the download fails.
    """
    path = os.path.join(folder, FACE_LANDMARKER_FILENAME)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    if not url.startswith("https://"):
        raise ValueError(f"refusing a non-https model URL: {url}")
    os.makedirs(folder, exist_ok=True)
    logger.info("downloading %s -> %s", url, path)
    fd, tmp = tempfile.mkstemp(prefix=FACE_LANDMARKER_FILENAME + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (https only)
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 16):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if total and done != total:
            raise OSError(f"incomplete download: {done} of {total} bytes")
        check_task_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # URLError, timeouts, disk errors
        raise ModelMissingError(f"{offline_message(folder)} ({exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
