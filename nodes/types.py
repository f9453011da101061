"""ComfyUI socket type names of this pack (one place, so nodes and workflows agree)."""

LATENTSYNC_MODEL = "LATENTSYNC_MODEL"  # nodes.model.LatentSyncModel: U-Net + resolution + devices
LATENTSYNC_WHISPER = "LATENTSYNC_WHISPER"  # the whisper-tiny encoder (latentsync_core.audio)
LATENTSYNC_AUDIO = "LATENTSYNC_AUDIO"  # latentsync_core.FrameAudio: per-frame audio windows
LATENTSYNC_FACES = "LATENTSYNC_FACES"  # latentsync_core.FaceTrack: affines, found flags, frame index

CATEGORY = "LatentSync"  # nodes use f"{CATEGORY}/<stage>"
