"""Exceptions with messages meant for the person running the graph.

Every error a user can cause (bad input, wrong or missing file) is a ``LatentSyncError``; the message
says what went wrong and what to do. ComfyUI shows the message as the node's error.
"""


class LatentSyncError(Exception):
    """Base class: a problem with the user's input, files or settings (not a bug)."""


class CheckpointError(LatentSyncError):
    """A model file is missing, unreadable, truncated, or not the model that was asked for."""


class ModelMissingError(CheckpointError):
    """A model file is not on disk and could not be downloaded (offline, no network)."""


class AudioError(LatentSyncError):
    """Audio that cannot be used: empty, not audio, no audio track, NaN/Inf samples."""


class FaceError(LatentSyncError):
    """No usable face (none anywhere in the clip, or the selected face does not exist)."""


class InputMismatchError(LatentSyncError):
    """Inputs that do not fit together (resolution of model vs faces, frame counts...)."""
