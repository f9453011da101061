"""``python -m latentsync_core train`` (latentsync_core/train/commands.py, run.py): a LoRA run on a prepared
dataset with the tiny golden models writes its log, loss curve, checkpoints and LoRA files; --resume takes
exactly the steps an uninterrupted run takes; a second run into the same folder is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_golden import GOLDEN, UNET_CKPT, VAE_CONFIG, VAE_FILE, build_dataset

from latentsync_core import cli
from latentsync_core.train.lora import apply_lora, load_lora
from latentsync_core.train.models import load_training_unet


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dataset")
    build_dataset(folder)
    return folder


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
    assert cli.main(_argv(dataset, part, 2, "--resume")) == 0
    a, b = load_file(whole / "lora_0000002.safetensors"), load_file(part / "lora_0000002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["step"] for x in (part / "log.jsonl").read_text().splitlines()] == [1, 2]

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
    assert "--resume with other options" in capsys.readouterr().err


def test_usage_errors_before_any_model(dataset, tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "none"), str(tmp_path / "run")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    assert cli.main([*_argv(dataset, tmp_path / "r", 1), "--rank", "0"]) == 2
    assert "--rank 0: use 1" in capsys.readouterr().err
    assert cli.main([*_argv(dataset, tmp_path / "r2", 1), "--resume"]) == 1
    assert "has no checkpoint to resume" in capsys.readouterr().err
