"""Video inputs of the nodes: a core VIDEO (file-backed or in memory) or a path, as one file to read."""

from __future__ import annotations

import os
import shutil
import uuid

from ..latentsync_core.errors import LatentSyncError
from . import comfy_bridge as bridge


def video_source(video, video_path: str, folder: str) -> tuple[str, str | None]:
    """The video file to read and, when it had to be written out first, that scratch file (to remove)."""
    path = (video_path or "").strip().strip('"')
    if video is not None and path:
        raise LatentSyncError("Connect either a VIDEO or a video_path, not both.")
    if path:
        if not os.path.isfile(path) and bridge.input_exists(path):
            path = bridge.input_path(path)
        if not os.path.isfile(path):
            raise LatentSyncError(f"video_path: no such file: {video_path}")
        return path, None
    if video is None:
        raise LatentSyncError("No video: connect a VIDEO (core Load Video) or set video_path.")
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if isinstance(source, str) and os.path.isfile(source):
        return source, None
    # an in-memory video (built from frames, or from an API node): write it out once to read it in ranges
    os.makedirs(folder, exist_ok=True)
    scratch = os.path.join(folder, f".input_{uuid.uuid4().hex[:12]}.mp4")
    if hasattr(source, "read"):
        with open(scratch, "wb") as fh:
            shutil.copyfileobj(source, fh)
    elif hasattr(video, "save_to"):
        video.save_to(scratch)
    else:
        raise LatentSyncError(f"Not a video: {type(video).__name__}. Connect core Load Video's VIDEO.")
    return scratch, scratch


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
