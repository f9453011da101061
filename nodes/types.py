"""ComfyUI socket type names of this pack (one place, so nodes and workflows agree)."""

LATENTSYNC_MODEL = "LATENTSYNC_MODEL"  # nodes.model.LatentSyncModel: U-Net + resolution + devices
LATENTSYNC_WHISPER = "LATENTSYNC_WHISPER"  # the whisper-tiny encoder (latentsync_core.audio)
LATENTSYNC_AUDIO = "LATENTSYNC_AUDIO"  # latentsync_core.FrameAudio: per-frame audio windows
LATENTSYNC_FACES = "LATENTSYNC_FACES"  # latentsync_core.FaceTrack: affines, found flags, frame index

CATEGORY = "LatentSync"  # nodes use f"{CATEGORY}/<stage>"

# Inputs that several nodes take, as one spec each (the V3 schema's idea of reusable typed inputs, in V1 form)
MODEL_INPUT = (LATENTSYNC_MODEL, {"tooltip": "From LatentSync Model Loader."})
VAE_INPUT = ("VAE", {"tooltip": "Stable Diffusion VAE from ComfyUI's Load VAE: sd-vae-ft-mse "
                                "(vae-ft-mse-840000-ema-pruned.safetensors), as LatentSync was trained."})
WHISPER_INPUT = (LATENTSYNC_WHISPER, {"tooltip": "From LatentSync Whisper Loader."})
