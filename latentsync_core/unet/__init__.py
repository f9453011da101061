"""The LatentSync 3-D U-Net: config, modules and strict checkpoint loading.

``load_unet(config, checkpoint, device, dtype)`` is the entry point; ``UNet3DConditionModel`` the module.
"""

from .config import MotionModuleConfig, UNetConfig, load_config
from .loading import build_unet, check_state_dict, load_unet, read_unet_state_dict
from .model import UNet3DConditionModel

__all__ = [
    "MotionModuleConfig",
    "UNet3DConditionModel",
    "UNetConfig",
    "build_unet",
    "check_state_dict",
    "load_config",
    "load_unet",
    "read_unet_state_dict",
]
