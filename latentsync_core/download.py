"""Model files: where each one comes from, where it goes, and fetching it from the Hugging Face Hub.

One table (:data:`MODEL_FILES`) names every file the pack uses: its Hub repository and path, the
ComfyUI models folder it belongs in and its name there. :func:`ensure_model_file` returns the local
path of a file, downloading it first when it is missing:

- the transfer goes to ``<name>.<etag>.partial`` beside the final file and is renamed only once it is
  complete (size, and SHA-256 for LFS files, checked), so a cancelled or broken download never leaves a
  partial file under the final name; the next call resumes it with an HTTP range request;
- ``progress(done_bytes, total_bytes)`` is called as bytes arrive (ComfyUI's progress bar); an exception
  raised by it (ComfyUI's Cancel) stops the download and keeps the partial file for resuming;
- offline (``HF_HUB_OFFLINE=1``) or without network it raises :class:`ModelMissingError` listing the exact
  files, URLs and folders for placing them by hand.

The Hub address honours ``HF_ENDPOINT`` (mirrors, tests). ``huggingface_hub`` does the HTTP (headers,
tokens, redirects, retries); it is imported only when a download is needed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .constants import (
    HF_REPO_V15,
    HF_REPO_V16,
    HF_REPO_VAE,
    MODEL_FOLDER,
    S3FD_FILENAME,
    SYNCNET_FILENAME,
    SYNCNET_V2_FILENAME,
    UNET_FILENAME,
    VGG16_FILENAME,
    VIDEOMAE_FILENAME,
    WHISPER_FILENAME,
)
from .errors import CheckpointError, ModelMissingError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes done, bytes total; 0 if unknown)

HUB_URL = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RETRIES = 3  # resumed attempts after a broken transfer that still made progress


@dataclass(frozen=True)
class ModelFile:
    """One downloadable file.

    repo_id / filename: where it is on the Hub. folder: the ComfyUI models folder name ("latentsync",
    "vae"). local_name: its path inside that folder ('/'-separated). size / licence: for messages and docs.
    """

    kind: str
    repo_id: str
    filename: str
    folder: str
    local_name: str
    description: str
    size: str
    licence: str

    def url(self, endpoint: str | None = None, revision: str = "main") -> str:
        base = (endpoint or os.environ.get("HF_ENDPOINT") or HUB_URL).rstrip("/")
        return f"{base}/{self.repo_id}/resolve/{revision}/{self.filename}"


MODEL_FILES: dict[str, ModelFile] = {
    f.kind: f
    for f in (
        ModelFile(
            "unet-1.5", HF_REPO_V15, UNET_FILENAME, MODEL_FOLDER, UNET_FILENAME,
            "LatentSync 1.5 U-Net (256 px faces)", "5.1 GB", "openrail++",
        ),
        ModelFile(
            "unet-1.6", HF_REPO_V16, UNET_FILENAME, MODEL_FOLDER, f"{HF_REPO_V16.split('/')[-1]}/{UNET_FILENAME}",
            "LatentSync 1.6 U-Net (512 px faces)", "5.1 GB", "openrail++",
        ),
        ModelFile(
            "whisper", HF_REPO_V15, WHISPER_FILENAME, MODEL_FOLDER, WHISPER_FILENAME,
            "Whisper tiny audio encoder (OpenAI checkpoint format)", "75 MB", "MIT",
        ),
        # training only (latentsync_core.train): the frozen networks that judge the generated faces
        ModelFile(
            "stable-syncnet", HF_REPO_V15, SYNCNET_FILENAME, MODEL_FOLDER, SYNCNET_FILENAME,
            "StableSyncNet (training: sync loss)", "1.6 GB", "openrail++",
        ),
        ModelFile(
            "videomae", HF_REPO_V15, VIDEOMAE_FILENAME, MODEL_FOLDER, VIDEOMAE_FILENAME,
            "VideoMAE v2 ViT-g fine-tuned on SSv2 (training: TREPA loss)", "4 GB", "see VideoMAE v2",
        ),
        ModelFile(
            "vgg16", HF_REPO_V15, VGG16_FILENAME, MODEL_FOLDER, VGG16_FILENAME,
            "torchvision ImageNet VGG16 (training: LPIPS loss)", "528 MB", "BSD-3-Clause",
        ),
        # the sync score (latentsync_core.sync_score): LSE-C / LSE-D as papers report them
        ModelFile(
            "syncnet-v2", HF_REPO_V15, SYNCNET_V2_FILENAME, MODEL_FOLDER, SYNCNET_V2_FILENAME,
            "SyncNet v2 (joonson/syncnet_python; sync score LSE-C / LSE-D)", "54 MB", "MIT",
        ),
        ModelFile(
            "s3fd", HF_REPO_V15, S3FD_FILENAME, MODEL_FOLDER, S3FD_FILENAME,
            "S3FD face detector (the official sync-score crops)", "86 MB", "see S3FD (sfzhang15/SFD)",
        ),
        ModelFile(
            "vae", HF_REPO_VAE, "diffusion_pytorch_model.safetensors", "vae", "sd-vae-ft-mse.safetensors",
            "Stable Diffusion VAE ft-MSE (load with ComfyUI's VAELoader)", "335 MB", "MIT",
        ),
    )
}  # fmt: skip


def model_file(kind: str) -> ModelFile:
    try:
        return MODEL_FILES[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODEL_FILES)}") from None


def find_model_file(kind: str, folders: Iterable[str]) -> str | None:
    """The first existing ``local_name`` of ``kind`` in ``folders`` (ComfyUI searches several), or None."""
    spec = model_file(kind)
    for folder in folders:
        path = os.path.join(folder, *spec.local_name.split("/"))
        if os.path.isfile(path):
            return path
    return None


def is_offline() -> bool:
    """True when the Hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def manual_instructions(kinds: Iterable[str], folders: Mapping[str, str] | str) -> str:
    """Lines telling a person which files to fetch by hand and where to put them.

    ``folders`` maps a ComfyUI folder name ("latentsync", "vae") to its directory, or is one directory
    used for every file.
    """
    lines = []
    for kind in kinds:
        spec = model_file(kind)
        folder = folders if isinstance(folders, str) else folders.get(spec.folder, f"models/{spec.folder}")
        lines += [
            f"  - {spec.description} ({spec.size}, licence {spec.licence})",
            f"      download: {spec.url()}",
            f"      save as:  {os.path.join(folder, *spec.local_name.split('/'))}",
        ]
    return "\n".join(lines)


def missing_error(kinds: Iterable[str], folders: Mapping[str, str] | str, reason: str) -> ModelMissingError:
    kinds = list(kinds)
    return ModelMissingError(
        f"LatentSync model file{'s' if len(kinds) > 1 else ''} missing and not downloaded ({reason}). "
        f"Download by hand and place as follows, then run again:\n{manual_instructions(kinds, folders)}"
    )


def ensure_model_file(
    kind: str,
    folder: str,
    *,
    search_folders: Iterable[str] = (),
    progress: Progress | None = None,
    endpoint: str | None = None,
    revision: str = "main",
) -> str:
    """Local path of the ``kind`` file; downloads it into ``folder`` when no folder has it.

    ``folder``: the directory the file belongs in (e.g. ComfyUI's ``models/latentsync``); it is searched
    first, then ``search_folders`` (extra_model_paths.yaml entries). Raises ModelMissingError when the
    file is absent and cannot be downloaded (offline, no network, not on the Hub).
    """
    spec = model_file(kind)
    found = find_model_file(kind, [folder, *search_folders])
    if found:
        return found
    dest = os.path.join(folder, *spec.local_name.split("/"))
    if is_offline():
        raise missing_error([kind], folder, "offline: HF_HUB_OFFLINE is set")
    log.info("downloading %s from %s to %s", spec.local_name, spec.url(endpoint, revision), dest)
    try:
        download_file(spec.repo_id, spec.filename, dest, progress=progress, endpoint=endpoint, revision=revision)
    except _DownloadFailed as exc:
        raise missing_error([kind], folder, str(exc)) from exc.__cause__
    return dest


class _DownloadFailed(Exception):
    """The Hub could not be reached or refused the file (turned into ModelMissingError)."""


class _CountingFile:
    """File wrapper that reports progress on every write (what huggingface_hub's http_get writes to)."""

    def __init__(self, f, total: int, progress: Progress | None):
        self.f, self.total, self.progress = f, total, progress
        self.callback_failed = False

    def write(self, data: bytes) -> int:
        n = self.f.write(data)
        if self.progress is not None:
            try:
                self.progress(self.f.tell(), self.total)
            except BaseException:
                self.callback_failed = True  # the caller asked to stop: keep the partial file
                raise
        return n

    def __getattr__(self, name):  # tell / seek / truncate / flush
        return getattr(self.f, name)


def download_file(
    repo_id: str,
    filename: str,
    dest: str,
    *,
    progress: Progress | None = None,
    endpoint: str | None = None,
    revision: str = "main",
) -> str:
    """Download one Hub file to ``dest`` through a resumable ``.partial`` file; returns ``dest``."""
    from huggingface_hub import file_download, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        meta = file_download.get_hf_file_metadata(url)
    except Exception as exc:  # network down, DNS, 404, 401: all mean "cannot fetch it now"
        raise _DownloadFailed(f"cannot reach {url}: {type(exc).__name__}: {exc}") from exc
    if not meta.etag:
        raise _DownloadFailed(f"{url} sent no ETag")
    etag = meta.etag.strip('"')
    total = int(meta.size or 0)

    folder, name = os.path.split(dest)
    os.makedirs(folder or ".", exist_ok=True)
    partial = os.path.join(folder, f"{name}.{re.sub(r'[^0-9A-Za-z]', '', etag)[:16]}.partial")
    for other in os.listdir(folder or "."):  # partial files of an older revision cannot be resumed
        if other.startswith(name + ".") and other.endswith(".partial") and os.path.join(folder, other) != partial:
            os.remove(os.path.join(folder, other))

    attempt = 0
    while True:
        done = os.path.getsize(partial) if os.path.exists(partial) else 0
        if total and done > total:  # not the file we expect: start over
            os.remove(partial)
            done = 0
        if total and done == total:
            break
        if done:
            log.info("resuming %s at %d of %d bytes", name, done, total)
        with open(partial, "ab") as f:
            out = _CountingFile(f, total, progress)
            try:
                file_download.http_get(
                    meta.location or url,
                    out,
                    resume_size=done,
                    headers=build_hf_headers(),
                    expected_size=total or None,
                )
                break
            except Exception as exc:
                if out.callback_failed:
                    raise
                f.flush()
                grew = os.path.getsize(partial) > done
                attempt += 1
                if not grew or attempt > _RETRIES:
                    raise _DownloadFailed(f"download of {url} broke off: {type(exc).__name__}: {exc}") from exc
                log.warning("download of %s broke off (%s); resuming", name, exc)

    size = os.path.getsize(partial)
    if total and size != total:
        raise _DownloadFailed(f"{url}: got {size} bytes, expected {total}")
    if _SHA256.match(etag):  # LFS files: the ETag is the content's SHA-256
        digest = _sha256(partial)
        if digest != etag:
            os.remove(partial)
            raise CheckpointError(f"download of {url} is corrupted (SHA-256 {digest}, expected {etag}); run again")
    os.replace(partial, dest)
    log.info("downloaded %s (%d bytes)", dest, size)
    return dest


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
