"""latentsync_core.download against a stand-in Hugging Face Hub on 127.0.0.1 (HF_ENDPOINT).

The stand-in answers HEAD/GET on /{repo}/resolve/{rev}/{file} with the headers huggingface_hub reads
(ETag = SHA-256 as for LFS files, X-Repo-Commit, Content-Length) and honours Range requests.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latentsync_core import download
from latentsync_core.errors import ModelMissingError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # several 512 KB chunks (see the hub fixture)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
COMMIT = "a" * 40


class Hub:
    def __init__(self):
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.files = {
            "/ByteDance/LatentSync-1.5/resolve/main/whisper/tiny.pt": PAYLOAD,
            "/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt": PAYLOAD,
        }
        self.cut_first_get_at: int | None = None  # drop the connection mid-body once

    def handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args):
                pass

            def _head(self, body: bytes, start: int):
                if start:
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", f'"{SHA}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def _lookup(self):
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                body = hub.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                return body

            def do_HEAD(self):
                body = self._lookup()
                if body is not None:
                    self._head(body, 0)

            def do_GET(self):
                body = self._lookup()
                if body is None:
                    return
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self._head(body, start)
                if hub.cut_first_get_at is not None:
                    cut, hub.cut_first_get_at = hub.cut_first_get_at, None
                    self.wfile.write(body[start:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body[start:])

        return Handler


@pytest.fixture
def hub(monkeypatch):
    state = Hub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 512 * 1024)  # several writes per file
    yield state
    watchdog.cancel()
    server.shutdown()
    server.server_close()


def _partials(folder):
    return [p for p in folder.rglob("*.partial")]


def test_download_with_progress_into_models_folder(hub, tmp_path):
    seen = []
    path = download.ensure_model_file("whisper", str(tmp_path), progress=lambda d, t: seen.append((d, t)))
    assert path == str(tmp_path / "whisper" / "tiny.pt")
    assert (tmp_path / "whisper" / "tiny.pt").read_bytes() == PAYLOAD
    assert seen and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(b >= a for (a, _), (b, _) in zip(seen, seen[1:]))
    assert not _partials(tmp_path)
    n = len(hub.requests)
    # present now: no network at all on the next call
    assert download.ensure_model_file("whisper", str(tmp_path)) == path
    assert len(hub.requests) == n


def test_found_in_extra_folder_without_download(hub, tmp_path):
    extra = tmp_path / "extra"
    (extra / "whisper").mkdir(parents=True)
    (extra / "whisper" / "tiny.pt").write_bytes(b"x")
    got = download.ensure_model_file("whisper", str(tmp_path / "main"), search_folders=[str(extra)])
    assert got == str(extra / "whisper" / "tiny.pt")
    assert hub.requests == []


def test_cancel_leaves_only_partial_then_resumes(hub, tmp_path):
    final = tmp_path / "latentsync_unet.pt"

    class Cancelled(Exception):
        pass

    def cancel_after_first_write(done, total):
        raise Cancelled()

    with pytest.raises(Cancelled):
        download.ensure_model_file("unet-1.5", str(tmp_path), progress=cancel_after_first_write)
    assert not final.exists()  # never a partial file under the final name
    (partial,) = _partials(tmp_path)
    kept = partial.stat().st_size
    assert 0 < kept < len(PAYLOAD)
    assert partial.name.startswith("latentsync_unet.pt.") and partial.suffix == ".partial"

    hub.requests.clear()
    assert download.ensure_model_file("unet-1.5", str(tmp_path)) == str(final)
    assert final.read_bytes() == PAYLOAD
    gets = [r for r in hub.requests if r[0] == "GET"]
    assert gets == [("GET", "/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt", f"bytes={kept}-")]
    assert not _partials(tmp_path)


def test_broken_connection_is_resumed(hub, tmp_path):
    hub.cut_first_get_at = 1_000_000
    path = download.ensure_model_file("unet-1.5", str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD
    ranges = [r[2] for r in hub.requests if r[0] == "GET"]
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")


def test_corrupted_download_is_rejected(hub, tmp_path):
    hub.files["/ByteDance/LatentSync-1.5/resolve/main/latentsync_unet.pt"] = bytes(len(PAYLOAD))  # wrong content
    with pytest.raises(download.CheckpointError, match="corrupted"):
        download.ensure_model_file("unet-1.5", str(tmp_path))
    assert not (tmp_path / "latentsync_unet.pt").exists()
    assert not _partials(tmp_path)


def test_offline_lists_files_urls_and_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(ModelMissingError) as info:
        download.ensure_model_file("unet-1.6", str(tmp_path))
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg
    assert "https://huggingface.co/ByteDance/LatentSync-1.6/resolve/main/latentsync_unet.pt" in msg
    assert str(tmp_path / "LatentSync-1.6" / "latentsync_unet.pt") in msg
    assert not any(tmp_path.iterdir())


def test_unreachable_or_missing_on_hub_is_model_missing(hub, monkeypatch, tmp_path):
    del hub.files["/ByteDance/LatentSync-1.5/resolve/main/whisper/tiny.pt"]
    with pytest.raises(ModelMissingError, match=r"whisper.tiny\.pt"):
        download.ensure_model_file("whisper", str(tmp_path))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelMissingError, match="cannot reach"):
        download.ensure_model_file("whisper", str(tmp_path))
    assert not _partials(tmp_path)


def test_model_table_and_manual_message():
    assert set(download.MODEL_FILES) == {"unet-1.5", "unet-1.6", "whisper", "vae", "stable-syncnet", "videomae", "vgg16",
                                         "syncnet-v2", "s3fd"}
    vgg = download.model_file("vgg16")  # training files keep the official checkpoints/ layout
    assert vgg.local_name == "auxiliary/vgg16-397923af.pth" and vgg.folder == "latentsync"
    for kind, name in (("syncnet-v2", "auxiliary/syncnet_v2.model"), ("s3fd", "auxiliary/sfd_face.pth")):
        spec = download.model_file(kind)  # the sync score's files, where the official eval finds them
        assert spec.local_name == spec.filename == name and spec.repo_id == "ByteDance/LatentSync-1.5"
    vae = download.model_file("vae")
    assert vae.folder == "vae" and vae.repo_id == "stabilityai/sd-vae-ft-mse"
    text = download.manual_instructions(
        ["vae", "whisper"], {"vae": "/c/models/vae", "latentsync": "/c/models/latentsync"}
    )
    assert "/c/models/vae/sd-vae-ft-mse.safetensors" in text
    assert "/c/models/latentsync/whisper/tiny.pt" in text
    assert "stabilityai/sd-vae-ft-mse/resolve/main/diffusion_pytorch_model.safetensors" in text
    with pytest.raises(ValueError, match="unknown model kind"):
        download.model_file("unet-2.0")


def test_model_loader_offers_and_fetches_released_unets(pack, monkeypatch, comfy_base):
    """The Model Loader lists both released U-Nets and, offline, says exactly what to download where."""
    loader = pack.NODE_CLASS_MAPPINGS["LatentSyncModelLoader"]
    names = loader.INPUT_TYPES()["required"]["unet_name"][0]
    assert "latentsync_unet.pt" in names and "LatentSync-1.6/latentsync_unet.pt" in names
    assert names.index("latentsync_unet.pt") < names.index("LatentSync-1.6/latentsync_unet.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    errors = sys.modules[f"{pack.__name__}.latentsync_core.errors"]  # the pack's own copy of the module
    with pytest.raises(errors.ModelMissingError) as info:
        loader().load("LatentSync-1.6/latentsync_unet.pt")
    msg = str(info.value)
    assert "https://huggingface.co/ByteDance/LatentSync-1.6/resolve/main/latentsync_unet.pt" in msg
    assert str(comfy_base / "models" / "latentsync" / "LatentSync-1.6" / "latentsync_unet.pt") in msg
