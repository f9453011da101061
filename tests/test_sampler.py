"""LatentSync Model Loader and Sampler nodes as ComfyUI runs them (stand-in ComfyUI VAE, tiny models)."""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FIXTURES, PACK_NAME, load_pack
from test_pipeline import StandInVae

from latentsync_core.pipeline import LipSyncPipeline
from latentsync_core.types import FaceTrack, FrameAudio
from latentsync_core.vae import load_vae

load_pack()
_errors = importlib.import_module(f"{PACK_NAME}.latentsync_core.errors")
model_mod = importlib.import_module(f"{PACK_NAME}.nodes.model")
import comfy.model_management as mm  # noqa: E402  (the stand-in installed by conftest)
import comfy.utils  # noqa: E402

PIPE = FIXTURES / "pipeline"
UNET = FIXTURES / "unet"
TINY = "tiny/latentsync_unet.pt"


@pytest.fixture(scope="module")
def unet_file(pack):
    import folder_paths

    folder = os.path.join(folder_paths.models_dir, "latentsync", "tiny")
    os.makedirs(folder, exist_ok=True)
    shutil.copy(UNET / "latentsync_unet.pt", os.path.join(folder, "latentsync_unet.pt"))
    shutil.copy(UNET / "config.json", os.path.join(folder, "config.json"))
    return TINY


@pytest.fixture(scope="module")
def nodes(pack):
    m = pack.NODE_CLASS_MAPPINGS
    return m["LatentSyncModelLoader"], m["LatentSyncSampler"]


@pytest.fixture(scope="module")
def model(nodes, unet_file):
    (model,) = nodes[0]().load(unet_file, "auto", "auto")
    return model


@pytest.fixture(scope="module")
def diffusers_vae():
    return load_vae(PIPE / "vae_tiny_random.pt", PIPE / "vae_config.json")


@pytest.fixture(scope="module")
def comfy_vae(diffusers_vae):
    return StandInVae(diffusers_vae.vae)


@pytest.fixture(scope="module")
def small_model(model):
    """The loaded tiny U-Net declared for 64 px faces (8x8 latents): the node logic at a fraction of the cost."""
    return model_mod.LatentSyncModel(unet=model.unet, resolution=64, dtype=model.dtype, name="tiny-64")


@pytest.fixture(scope="module")
def inputs():
    """4 aligned 64 px faces (IMAGE), their track, and 6 frames of audio (the video gets ping-ponged)."""
    faces = torch.from_numpy(np.load(PIPE / "golden_pipeline.npz")["faces"][:4]).float().permute(0, 3, 1, 2)
    faces = torch.nn.functional.interpolate(faces, size=(64, 64), mode="area").permute(0, 2, 3, 1) / 255
    track = FaceTrack(affines=np.tile(np.eye(2, 3), (4, 1, 1)), found=np.ones(4, bool),
                      landmarks=np.zeros((4, 68, 2), np.float32), frame_size=(480, 640), crop_size=(52, 70),
                      resolution=64)
    audio = FrameAudio.from_windows(torch.randn(6, 50, 384, generator=torch.Generator().manual_seed(3)))
    return faces, track, audio


def sample(nodes, model, vae, inputs, **kw):
    faces, track, audio = inputs
    kw = {"seed": 7, "steps": 2, "guidance": 1.5, "deepcache": "off", **kw}
    return nodes[1]().sample(model, vae, kw.pop("faces", faces), kw.pop("track", track), kw.pop("audio", audio), **kw)["result"]


# --- Model Loader ---------------------------------------------------------------------------------
def test_loader_lists_and_loads(nodes, model, unet_file):
    files = nodes[0].INPUT_TYPES()["required"]["unet_name"][0]
    assert unet_file in files
    assert model.resolution == 256 and model.dtype == torch.float32 and model.version == "1.5"
    assert next(model.unet.parameters()).device == mm.unet_offload_device()
    (forced,) = nodes[0]().load(unet_file, "512", "fp16")
    assert forced.resolution == 512 and next(forced.unet.parameters()).dtype == torch.float16


def test_loader_missing_file(nodes):
    with pytest.raises(_errors.ModelMissingError, match="models/latentsync"):
        nodes[0]().load("nope/latentsync_unet.pt")


def test_guess_resolution(tmp_path):
    guess = model_mod.guess_resolution
    assert guess("latentsync_unet.pt") == 256
    assert guess("LatentSync-1.6/latentsync_unet.pt") == 512
    assert guess("latentsync_1_6.safetensors") == 512
    assert guess("unet_512.pt") == 512
    assert guess("v1.5/unet_2560.pt") == 256
    from safetensors.torch import save_file

    path = tmp_path / "custom.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"resolution": "512"})
    assert guess("custom.safetensors", str(path)) == 512

    # a 1.6 U-Net converted to a name that says nothing: the converter's metadata keeps it at 512 px
    from latentsync_core.convert import convert_unet

    src = tmp_path / "LatentSync-1.6" / "latentsync_unet.pt"
    src.parent.mkdir()
    shutil.copy(FIXTURES / "unet" / "latentsync_unet.pt", src)
    converted = tmp_path / "my_lipsync_model.safetensors"
    convert_unet(src, converted, config=FIXTURES / "unet" / "config.json")
    assert guess(converted.name, str(converted)) == 512


def test_sidecar_config_only_for_its_file(tmp_path):
    """A stray config.json in the top models folder must not apply to the released U-Net; a sidecar
    named after the file, or config.json in the file's own sub-folder, does."""
    top = tmp_path / "latentsync"
    (top / "custom").mkdir(parents=True)
    released = top / "latentsync_unet.pt"
    released.write_bytes(b"x")
    (top / "config.json").write_text("{}")
    assert model_mod.sidecar_config(str(released), roots=[str(top)]) is None
    (top / "latentsync_unet.yaml").write_text("model: {}")
    assert model_mod.sidecar_config(str(released), roots=[str(top)]) == str(top / "latentsync_unet.yaml")
    inner = top / "custom" / "unet.safetensors"
    inner.write_bytes(b"x")
    (top / "custom" / "config.json").write_text("{}")
    assert model_mod.sidecar_config(str(inner), roots=[str(top)]) == str(top / "custom" / "config.json")
    (top / "custom" / "unet.json").write_text("{}")
    assert model_mod.sidecar_config(str(inner), roots=[str(top)]) == str(top / "custom" / "unet.json")


def test_pick_dtype(monkeypatch):
    bridge = model_mod.bridge
    assert model_mod.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert model_mod.pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    gpu = torch.device("cuda")
    monkeypatch.setattr(bridge, "is_device_cpu", lambda d: False)
    monkeypatch.setattr(bridge, "should_use_bf16", lambda d, model_params=0: True)
    assert model_mod.pick_dtype("auto", gpu) == torch.bfloat16
    monkeypatch.setattr(bridge, "should_use_bf16", lambda d, model_params=0: False)
    monkeypatch.setattr(bridge, "should_use_fp16", lambda d, model_params=0: True)
    assert model_mod.pick_dtype("auto", gpu) == torch.float16
    monkeypatch.setattr(bridge, "should_use_fp16", lambda d, model_params=0: False)
    assert model_mod.pick_dtype("auto", gpu) == torch.float32


# --- Sampler ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_run(nodes, small_model, comfy_vae, inputs):
    comfy.utils.UPDATES.clear()
    out, track = sample(nodes, small_model, comfy_vae, inputs)
    return out, track, list(comfy.utils.UPDATES)


def test_sampler_output_length_progress_and_core_equality(small_model, diffusers_vae, inputs, first_run):
    out, track, updates = first_run
    assert out.shape == (6, 64, 64, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert track.frame_index.tolist() == [0, 1, 2, 3, 3, 2] and len(track) == 6
    assert updates == [(1, 2), (2, 2)]  # 1 chunk x 2 steps
    faces, _, audio = inputs
    core = LipSyncPipeline(small_model.unet, diffusers_vae).sync_faces(faces, audio.windows(), steps=2, seed=7, vae_encode="mean")
    assert (core.faces.float() - out).abs().max() < 2e-3  # unclamped, as the core (and the official code)


def test_sampler_rejects_bad_input(nodes, small_model, comfy_vae, inputs):
    faces, track, _ = inputs
    big = model_mod.LatentSyncModel(unet=small_model.unet, resolution=512, dtype=torch.float32, name="LatentSync-1.6")
    with pytest.raises(_errors.InputMismatchError, match="1.6 model for 512 px faces"):
        sample(nodes, big, comfy_vae, inputs)
    with pytest.raises(_errors.InputMismatchError, match="faces are 256 px: set Face Crop & Align's resolution to 512"):
        big.check_faces(256)
    with pytest.raises(_errors.FaceError, match="No face"):
        sample(nodes, small_model, comfy_vae, inputs, track=replace(track, found=np.zeros(4, bool)))
    with pytest.raises(_errors.LatentSyncError, match="steps"):
        sample(nodes, small_model, comfy_vae, inputs, steps=0)
    with pytest.raises(_errors.LatentSyncError, match="guidance"):
        sample(nodes, small_model, comfy_vae, inputs, guidance=0.9)
    with pytest.raises(_errors.InputMismatchError, match="face track"):
        sample(nodes, small_model, comfy_vae, inputs, faces=faces[:3])


def test_sampler_interrupt_then_normal_run(nodes, small_model, comfy_vae, inputs, first_run):
    """Cancel during the first U-Net call: the run stops at the next check; the next run is normal."""
    calls = []

    def cancel(module, args, output):
        calls.append(1)
        mm.interrupt_current_processing(True)

    handle = small_model.unet.register_forward_hook(cancel)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            sample(nodes, small_model, comfy_vae, inputs, steps=4, deepcache="2")
    finally:
        handle.remove()
    assert len(calls) == 1
    assert "forward" not in small_model.unet.mid_block.__dict__  # DeepCache unwrapped
    assert next(small_model.unet.parameters()).device == mm.unet_offload_device()
    again, _ = sample(nodes, small_model, comfy_vae, inputs)
    assert torch.equal(again, first_run[0])


def test_sampler_deepcache_skips_deep_blocks(nodes, small_model, comfy_vae, inputs, first_run):
    ran = []
    handle = small_model.unet.mid_block.resnets[0].register_forward_hook(lambda m, i, o: ran.append(1))
    try:
        cached, _ = sample(nodes, small_model, comfy_vae, inputs, deepcache="2")
    finally:
        handle.remove()
    assert len(ran) == 1  # step 0 runs in full, step 1 reuses the deep features
    assert cached.shape == first_run[0].shape and not torch.equal(cached, first_run[0])


# --- ComfyUI model management ----------------------------------------------------------------------
def test_model_management_keeps_the_unet_loaded_between_runs_and_free_releases_it(
    nodes, small_model, comfy_vae, inputs, first_run, monkeypatch
):
    """The U-Net goes through ComfyUI's ModelPatcher + load_models_gpu: the first Sampler run loads it,
    the second moves no weights (it stays loaded), and ComfyUI's unload_all_models (/free) releases it."""
    fresh = model_mod.LatentSyncModel(unet=small_model.unet, resolution=64, dtype=small_model.dtype, name="tiny-64")
    moves = []
    real_apply = torch.nn.Module._apply

    def counting_apply(module, fn, *args, **kw):
        if fresh.patcher is not None and module is fresh.patcher.model:  # whole-model moves of this patcher
            moves.append(1)
        return real_apply(module, fn, *args, **kw)

    monkeypatch.setattr(torch.nn.Module, "_apply", counting_apply)
    out1, _ = sample(nodes, fresh, comfy_vae, inputs)
    assert len(moves) == 1  # loaded once
    patcher = fresh.patcher
    assert patcher in mm.loaded_models() and patcher.loaded_size() == patcher.model_size() > 0
    out2, _ = sample(nodes, fresh, comfy_vae, inputs)
    assert len(moves) == 1  # second run: no weights moved
    assert fresh.patcher is patcher and torch.equal(out1, out2) and torch.equal(out1, first_run[0])
    mm.unload_all_models()  # what ComfyUI's /free {"unload_models": true} calls
    assert patcher not in mm.loaded_models() and patcher.loaded_size() == 0
    assert len(moves) == 2 and patcher.current_loaded_device() == mm.unet_offload_device()


def test_model_patcher_wraps_the_unet_for_comfyui(small_model):
    """ModelPatcher sets ``model.device`` (the U-Net's own is a read-only property): the holder takes it."""
    fresh = model_mod.LatentSyncModel(unet=small_model.unet, resolution=64, dtype=small_model.dtype, name="x")
    patcher = fresh.model_patcher()
    assert isinstance(patcher.model, model_mod.UNetHolder) and patcher.model.unet is small_model.unet
    assert patcher.model_dtype() == small_model.dtype
    assert patcher.model_size() == sum(p.numel() * p.element_size() for p in small_model.unet.parameters())
    assert fresh.model_patcher() is patcher  # one per model
    with fresh.on_compute_device() as unet:
        assert unet is small_model.unet
    # a model dropped from ComfyUI's cache leaves the loaded list (ComfyUI: a finalizer on the loaded model)
    import gc

    count = len(mm.current_loaded_models)
    del fresh, patcher, unet
    gc.collect()
    assert len(mm.current_loaded_models) == count - 1
    mm.unload_all_models()
    assert mm.current_loaded_models == []


def test_sampler_chunk_batch_and_sampler_inputs(nodes, small_model, comfy_vae, inputs, first_run, monkeypatch):
    optional = nodes[1].INPUT_TYPES()["optional"]
    assert optional["chunk_batch"][1]["default"] == 0  # auto
    assert optional["sampler"][0][0] == "ddim" and optional["sampler"][1]["default"] == "ddim"
    assert "not the official" in optional["sampler"][1]["tooltip"].lower()
    seen = {}
    pack_job = importlib.import_module(f"{PACK_NAME}.latentsync_core.pipeline").SamplingJob
    original = pack_job.__init__

    def spy(self, pipeline, resolution, options, **kwargs):  # the options the node's sampling job runs with
        seen.update(vars(options))
        return original(self, pipeline, resolution, options, **kwargs)

    monkeypatch.setattr(pack_job, "__init__", spy)
    batched, _ = sample(nodes, small_model, comfy_vae, inputs, chunk_batch=3)
    assert seen["chunk_batch"] == 3 and seen["sampler"] == "ddim"
    assert torch.equal(batched, first_run[0])  # one chunk here: the same call
    fast, _ = sample(nodes, small_model, comfy_vae, inputs, sampler="dpmpp_2m")
    assert seen["sampler"] == "dpmpp_2m" and not torch.equal(fast, first_run[0])


def test_loader_compile_option(nodes, unet_file):
    assert nodes[0].INPUT_TYPES()["optional"]["compile"][1]["default"] == "off"
    (compiled,) = nodes[0]().load(unet_file, "auto", "auto", compile="torch.compile")
    assert hasattr(compiled.unet, "_orig_mod") and compiled.unet._orig_mod.down_blocks is not None
    (plain,) = nodes[0]().load(unet_file, "auto", "auto")
    assert not hasattr(plain.unet, "_orig_mod")


def test_sampler_returns_the_pipeline_output_without_a_copy(nodes, small_model, comfy_vae, inputs, monkeypatch):
    """The IMAGE path adds no float copy of the whole output: the faces the sampling job fills are the IMAGE."""
    results = []
    pack_job = importlib.import_module(f"{PACK_NAME}.latentsync_core.pipeline").SamplingJob
    original = pack_job.run

    def spy(self, *args, **kwargs):
        results.append(original(self, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(pack_job, "run", spy)
    out, _ = sample(nodes, small_model, comfy_vae, inputs)
    assert results[0].faces.dtype == torch.float32 and out.data_ptr() == results[0].faces.data_ptr()


def test_sampler_keeps_the_input_face_in_a_1s_silence(nodes, small_model, comfy_vae, inputs):
    """silence = keep original on 2.6 s of audio with a 1 s digital-silence gap (0.8-1.8 s): the frames
    whose window lies inside the gap are bit-identical to the input face, the others are sampled."""
    silence_mod = importlib.import_module(f"{PACK_NAME}.latentsync_core.audio.silence")
    faces, track, _ = inputs
    n = 65  # 2.6 s at 25 fps
    wave = torch.randn(1, 16000 * 26 // 10, generator=torch.Generator().manual_seed(4)) * 0.3
    wave[:, 16000 * 8 // 10 : 16000 * 18 // 10] = 0
    windows = torch.randn(n, 50, 384, generator=torch.Generator().manual_seed(5))
    audio = FrameAudio.from_windows(windows, fps=25.0, waveform=wave)
    node = nodes[1]()
    args = {"seed": 7, "steps": 1, "guidance": 1.0, "deepcache": "off"}
    res = node.sample(small_model, comfy_vae, faces, track, audio, silence="keep original", **args)
    out, out_track = res["result"]
    silent = silence_mod.silent_frames(wave, n, 25.0)
    rows = np.flatnonzero(silent)
    assert 19 <= len(rows) <= 22 and rows.tolist() == list(range(rows[0], rows[-1] + 1))
    assert 20 <= rows[0] <= 23 and 42 <= rows[-1] <= 45  # inside the gap (frames 20-45)
    inputs_out = faces[torch.from_numpy(out_track.frame_index)]  # the Sampler's IMAGE is float32
    torch.testing.assert_close(out[silent], inputs_out[silent], rtol=0, atol=0)
    changed = (out != inputs_out).flatten(1).any(1).numpy()
    assert changed[~silent].all()  # every other frame went through the model
    assert f"{n - len(rows)} of {n} frames lip-synced; {len(rows)} silent frames kept" in res["ui"]["text"][0]
    # official default: every frame is synced
    synced, _ = sample(nodes, small_model, comfy_vae, inputs, audio=audio, **{k: v for k, v in args.items()})
    assert (synced != inputs_out).flatten(1).any(1).all()
    with pytest.raises(_errors.AudioError, match="waveform"):
        node.sample(small_model, comfy_vae, faces, track, FrameAudio.from_windows(windows, fps=25.0),
                    silence="keep original", **args)
