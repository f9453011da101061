"""``python -m latentsync_core train`` (latentsync_core/train/commands.py, run.py): a LoRA run on a prepared
dataset with the tiny golden models writes its log, loss curve, checkpoints and LoRA files; --resume takes
exactly the steps an uninterrupted run takes; a second run into the same folder is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_golden import GOLDEN, UNET_CKPT, VAE_CONFIG, VAE_FILE

from latentsync_core import cli
from latentsync_core.train.lora import apply_lora, load_lora
from latentsync_core.train.models import load_training_unet


def _argv(dataset, run, steps: int, *extra: str) -> list[str]:
    return ["train", str(dataset), str(run), "--config", str(GOLDEN / "stage2_tiny.yaml"), "--unet", str(UNET_CKPT),
            "--vae", str(VAE_FILE), "--vae-config", str(VAE_CONFIG), "--preset", "lora", "--rank", "4",
            "--steps", str(steps), "--save-every", "1", "--sync-weight", "0", "--lpips-weight", "0",
            "--trepa-weight", "0", "--precision", "fp32", "--lr", "1e-3", "--no-download", "-q", *extra]


def test_lora_run_writes_everything_and_resumes_exactly(dataset, tmp_path, capsys):
    whole = tmp_path / "whole"
    assert cli.main(_argv(dataset, whole, 2)) == 0
    assert "step 2:" in capsys.readouterr().out
    log = [json.loads(x) for x in (whole / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["losses"]["total"] > 0 for r in log)
    assert (whole / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in whole.glob("lora_*.safetensors")) == ["lora_0000001.safetensors",
                                                                        "lora_0000002.safetensors"]
    _, meta = load_lora(whole / "lora_0000002.safetensors")
    assert meta["resolution"] == "256" and meta["steps"] == "2"

    # 1 step, then --resume to 2: the same weights as the uninterrupted run
    part = tmp_path / "part"
    assert cli.main(_argv(dataset, part, 1)) == 0
    with open(part / "log.jsonl", "a") as fh:  # a crash after logging step 2, before saving it
        fh.write(json.dumps({"step": 2, "losses": {"total": 9.0}}) + "\n")
    assert cli.main(_argv(dataset, part, 2, "--resume")) == 0
    a, b = load_file(whole / "lora_0000002.safetensors"), load_file(part / "lora_0000002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(x) for x in (part / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and logged[1]["losses"]["total"] != 9.0  # the step taken again

    # the LoRA changes the model it is applied to
    unet = load_training_unet(GOLDEN / "stage2_tiny.yaml", UNET_CKPT)
    before = {n: p.clone() for n, p in unet.named_parameters()}
    apply_lora(unet, whole / "lora_0000002.safetensors", strength=1.0)
    assert any(not torch.equal(before[n], p) for n, p in unet.named_parameters())


def test_a_second_run_into_the_same_folder_is_refused(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_argv(dataset, run, 1)) == 0
    capsys.readouterr()
    assert cli.main(_argv(dataset, run, 2)) == 1
    assert "already holds a training run: --resume" in capsys.readouterr().err
    assert cli.main(_argv(dataset, run, 2, "--resume", "--lr", "1e-4")) == 1
    assert "holds a run started with other settings" in capsys.readouterr().err


def test_usage_errors_before_any_model(dataset, tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "none"), str(tmp_path / "run")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    assert cli.main([*_argv(dataset, tmp_path / "r", 1), "--rank", "0"]) == 2
    assert "--rank 0: use 1" in capsys.readouterr().err
    assert cli.main([*_argv(dataset, tmp_path / "r2", 1), "--resume"]) == 1
    assert "has no checkpoint to resume" in capsys.readouterr().err


@pytest.mark.usefixtures("landmarks_offline")
def test_the_command_line_applies_a_trained_lora(dataset, tmp_path, capsys):
    """--lora: the trained file changes the lip-synced frames; strength 0 leaves them as without it; a LoRA
    trained for another face size is refused with a clear message; a missing file is a usage error."""
    from test_cli import TINY, _write_wav
    from test_stream import make_face_clip

    from latentsync_core.train.lora import save_lora
    from latentsync_core.video_io import VideoReader

    run = tmp_path / "run"
    assert cli.main(_argv(dataset, run, 1)) == 0
    lora = run / "lora_0000001.safetensors"
    clip = make_face_clip(tmp_path / "c.mp4", 4)
    _write_wav(tmp_path / "s.wav", 0.16)
    base = ["--video", str(clip), "--audio", str(tmp_path / "s.wav"), *TINY, "--steps", "1", "--guidance", "1.0",
            "--no-download", "-q", "--crf", "0"]

    def frames(name: str, *extra: str):
        out = tmp_path / f"{name}.mp4"
        assert cli.main([*base, "--out", str(out), *extra]) == 0
        with VideoReader(out) as r:
            return r.read(0, r.num_frames)

    plain, with_lora = frames("plain"), frames("lora", "--lora", str(lora))
    assert not np.array_equal(plain, with_lora)
    assert np.array_equal(plain, frames("zero", "--lora", str(lora), "--lora-strength", "0"))

    unet = load_training_unet(GOLDEN / "stage2_tiny.yaml", UNET_CKPT)
    from latentsync_core.train.trainable import select_trainable

    select_trainable(unet, "lora", rank=4)
    other = save_lora(tmp_path / "other.safetensors", unet, {"resolution": 512})
    capsys.readouterr()
    assert cli.main([*base, "--out", str(tmp_path / "x.mp4"), "--lora", other]) == 1
    assert "trained for" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    assert cli.main([*base, "--out", str(tmp_path / "y.mp4"), "--lora", str(tmp_path / "none.safetensors")]) == 2
    assert "--lora" in capsys.readouterr().err


def test_the_model_loader_merges_a_lora_from_models_loras(dataset, tmp_path, pack, comfy_base):
    """Model Loader's ``lora`` (models/loras/latentsync/) merges the trained LoRA into its U-Net: the weights
    change, strength 0 changes nothing, and a LoRA for another face size is refused."""
    import shutil

    from latentsync_core.train.lora import save_lora
    from latentsync_core.train.trainable import select_trainable

    run = tmp_path / "run"
    assert cli.main(_argv(dataset, run, 1)) == 0
    unet_dir = comfy_base / "models" / "latentsync" / "tinylora"
    unet_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(UNET_CKPT, unet_dir / "latentsync_unet.pt")
    shutil.copy(UNET_CKPT.parent / "config.json", unet_dir / "config.json")
    loras = comfy_base / "models" / "loras" / "latentsync"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "lora_0000001.safetensors", loras / "me.safetensors")
    other = load_training_unet(GOLDEN / "stage2_tiny.yaml", UNET_CKPT)
    select_trainable(other, "lora", rank=4)
    save_lora(loras / "big.safetensors", other, {"resolution": 512})

    loader = pack.NODE_CLASS_MAPPINGS["LatentSyncModelLoader"]
    choices = loader.INPUT_TYPES()["optional"]["lora"][0]
    assert choices[0] == "none" and {"latentsync/me.safetensors", "latentsync/big.safetensors"} <= set(choices)
    name = "tinylora/latentsync_unet.pt"
    (plain,) = loader().load(name, "256", "fp32")
    (tuned,) = loader().load(name, "256", "fp32", lora="latentsync/me.safetensors", lora_strength=1.0)
    (zero,) = loader().load(name, "256", "fp32", lora="latentsync/me.safetensors", lora_strength=0.0)
    a, b, c = (dict(m.unet.named_parameters()) for m in (plain, tuned, zero))
    assert any(not torch.equal(a[k], b[k]) for k in a) and all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(Exception, match="trained for LatentSync 1.5 at 512 px; the loaded U-Net is a LatentSync U-Net at 256"):
        loader().load(name, "256", "fp32", lora="latentsync/big.safetensors")  # the pack's own InputMismatchError
