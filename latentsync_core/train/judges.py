"""The frozen networks a training config needs, found (or downloaded) in the models folder.

``load_judges(config, folder)`` returns :class:`Judges` with the StableSyncNet, LPIPS and the VideoMAE
feature net that the config's loss weights use (None for the others). Files are looked up in ``folder``
(ComfyUI's ``models/latentsync``) and ``search_folders`` under the names of the official ``checkpoints/``
folder (``stable_syncnet.pt``, ``auxiliary/vgg16-397923af.pth``,
``auxiliary/vit_g_hybrid_pt_1200e_ssv2_ft.pth``), downloaded from the LatentSync 1.5 repository when
missing; offline, :class:`ModelMissingError` lists each URL and the path to save it as. Gradient
checkpointing is on in the SyncNet and VideoMAE, as the official script hard-codes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import torch
from torch import nn

from ..download import ensure_model_file, find_model_file, is_offline, missing_error
from .config import SYNCNET_CONFIG, TrainConfig


@dataclasses.dataclass
class Judges:
    syncnet: nn.Module | None = None
    lpips: nn.Module | None = None
    trepa_net: nn.Module | None = None


def needed_files(config: TrainConfig) -> list[str]:
    """The model-file kinds (``download.MODEL_FILES``) this config needs."""
    return [kind for kind, needed in (("stable-syncnet", config.uses_syncnet), ("vgg16", config.uses_lpips),
                                      ("videomae", config.uses_trepa)) if needed]


def resolve_files(config: TrainConfig, folder: str, search_folders: Iterable[str] = (), download: bool = True,
                  progress=None) -> dict[str, str]:
    """kind -> local path; all missing files are named in one error before anything downloads when offline."""
    kinds = needed_files(config)
    folders = [folder, *search_folders]
    missing = [k for k in kinds if find_model_file(k, folders) is None]
    if missing and (not download or is_offline()):
        raise missing_error(missing, folder, "offline: HF_HUB_OFFLINE is set" if download else "download is off")
    return {k: ensure_model_file(k, folder, search_folders=search_folders, progress=progress) for k in kinds}


def load_judges(config: TrainConfig, folder: str | os.PathLike, search_folders: Iterable[str] = (), *,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, download: bool = True,
                progress=None) -> Judges:
    """Load the frozen judges of ``config`` (see the module docstring). LPIPS always stays fp32 (the
    official step feeds it ``.float()`` pixels); ``dtype`` applies to the SyncNet and VideoMAE."""
    from .lpips import load_lpips
    from .syncnet import load_stable_syncnet
    from .videomae import load_videomae

    paths = resolve_files(config, os.fspath(folder), search_folders, download, progress)
    judges = Judges()
    if "stable-syncnet" in paths:
        judges.syncnet = load_stable_syncnet(paths["stable-syncnet"], SYNCNET_CONFIG, device, dtype,
                                             gradient_checkpointing=True)
    if "vgg16" in paths:
        judges.lpips = load_lpips(paths["vgg16"], device=device)
    if "videomae" in paths:
        judges.trepa_net = load_videomae(paths["videomae"], None, device, dtype, gradient_checkpointing=True)
    return judges
