"""LatentSync Train LoRA (nodes/train.py) with the tiny golden models, run the way ComfyUI runs nodes (under
``torch.inference_mode()``): the LoRA lands in models/loras/latentsync/ and the Model Loader applies it;
queueing again continues the run; Cancel keeps the finished steps and the continued run equals an
uninterrupted one; bad input is refused before training."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from conftest import PACK_NAME
from safetensors.torch import load_file
from test_pipeline import StandInVae
from train_golden import UNET_CKPT, VAE_CONFIG, VAE_FILE

from latentsync_core.vae import load_vae

WIDGETS = dict(train_steps=2, learning_rate=1e-3, lora_rank=4, train_seed=7, save_every=1, sync_weight=0.0,
               lpips_weight=0.0, trepa_weight=0.0)


@pytest.fixture
def models(pack, comfy_base):
    unet_dir = comfy_base / "models" / "latentsync" / "tinytrain"
    unet_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(UNET_CKPT, unet_dir / "latentsync_unet.pt")
    shutil.copy(UNET_CKPT.parent / "config.json", unet_dir / "config.json")
    (model,) = pack.NODE_CLASS_MAPPINGS["LatentSyncModelLoader"]().load("tinytrain/latentsync_unet.pt", "256", "fp32")
    return model, StandInVae(load_vae(VAE_FILE, VAE_CONFIG).vae)


def _train(pack, models, dataset, name: str, **changes):
    node = pack.NODE_CLASS_MAPPINGS["LatentSyncTrainLoRA"]()
    with torch.inference_mode():  # as ComfyUI's executor
        return node.train(*models, str(dataset), name, **{**WIDGETS, **changes})


def _log_steps(comfy_base, name: str) -> list[int]:
    log = comfy_base / "output" / "latentsync" / "train" / name / "log.jsonl"
    return [json.loads(x)["step"] for x in log.read_text().splitlines()]


@pytest.mark.slow
def test_the_node_trains_a_lora_the_model_loader_applies(pack, models, dataset, comfy_base):
    out = _train(pack, models, dataset, "node_a")
    tuned_model, lora_name, curve = out["result"]
    assert lora_name == "latentsync/node_a.safetensors"
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3 and curve.max() > 0
    assert "step 2:" in out["ui"]["text"][0]
    published = comfy_base / "models" / "loras" / "latentsync" / "node_a.safetensors"
    run = comfy_base / "output" / "latentsync" / "train" / "node_a"
    a, b = load_file(published), load_file(run / "lora_0000002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log_steps(comfy_base, "node_a") == [1, 2]

    loader = pack.NODE_CLASS_MAPPINGS["LatentSyncModelLoader"]
    assert lora_name in loader.INPUT_TYPES()["optional"]["lora"][0]
    (plain,) = loader().load("tinytrain/latentsync_unet.pt", "256", "fp32")
    (tuned,) = loader().load("tinytrain/latentsync_unet.pt", "256", "fp32", lora=lora_name, lora_strength=1.0)
    p, t = dict(plain.unet.named_parameters()), dict(tuned.unet.named_parameters())
    assert any(not torch.equal(p[k], t[k]) for k in p)
    # the node's own model output: the same merge, on a copy (the input model is unchanged)
    m, given = dict(tuned_model.unet.named_parameters()), dict(models[0].unet.named_parameters())
    assert all(torch.equal(m[k], t[k]) for k in t) and all(torch.equal(given[k], p[k]) for k in p)

    # queued again with the same settings: nothing more to do; with more steps: it trains on
    again = _train(pack, models, dataset, "node_a")
    assert again["result"][1] == lora_name and _log_steps(comfy_base, "node_a") == [1, 2]
    _train(pack, models, dataset, "node_a", train_steps=3)
    assert _log_steps(comfy_base, "node_a") == [1, 2, 3]
    assert torch.equal(load_file(published)[next(iter(a))], load_file(run / "lora_0000003.safetensors")[next(iter(a))])
    with pytest.raises(Exception, match="other settings"):
        _train(pack, models, dataset, "node_a", learning_rate=2e-3)


@pytest.mark.slow
def test_cancel_keeps_the_finished_steps_and_the_run_continues_exactly(pack, models, dataset, comfy_base,
                                                                        monkeypatch):
    bridge = importlib.import_module(f"{PACK_NAME}.nodes.comfy_bridge")
    _train(pack, models, dataset, "whole", save_every=5)

    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    monkeypatch.setattr(bridge, "check_interrupted", cancel)
    with pytest.raises(Cancelled):
        _train(pack, models, dataset, "cut", save_every=5)
    assert _log_steps(comfy_base, "cut") == [1]
    assert (comfy_base / "output" / "latentsync" / "train" / "cut" / "lora_0000001.safetensors").is_file()
    assert (comfy_base / "models" / "loras" / "latentsync" / "cut.safetensors").is_file()  # published on Cancel
    monkeypatch.undo()
    _train(pack, models, dataset, "cut", save_every=5)
    loras = comfy_base / "models" / "loras" / "latentsync"
    a, b = load_file(loras / "whole.safetensors"), load_file(loras / "cut.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("dataset_arg", "name", "message"), [
    ("", "x", "dataset is empty"),
    ("no/such/folder", "x", "does not exist"),
    (None, "../x", "plain file name"),
    (None, "x.safetensors", "plain file name"),
])
def test_bad_input_is_refused_before_training(pack, models, dataset, comfy_base, dataset_arg, name, message):
    with pytest.raises(Exception, match=message):
        _train(pack, models, dataset if dataset_arg is None else dataset_arg, name)
    assert not (comfy_base / "output" / "latentsync" / "train" / name).exists()


def test_a_folder_of_clips_needs_the_whisper_input(pack, models, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    with pytest.raises(Exception, match="connect a LatentSync Whisper Loader"):
        _train(pack, models, tmp_path, "clips")
