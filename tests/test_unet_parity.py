"""U-Net parity with the official implementation (golden data from the release code, random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import latentsync_core
from latentsync_core.unet import UNet3DConditionModel, load_unet

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "unet"
CASES = ["b1_t951", "b2_t501", "b2_t1", "f5_t251"]
TOLERANCE = 1e-4  # golden README: expected max abs for a correct re-implementation (fp32, CPU)


@pytest.fixture(scope="module")
def tiny_unet():
    return load_unet(FIXTURES / "config.json", FIXTURES / "latentsync_unet.pt")


@pytest.fixture(scope="module")
def io_cases():
    with np.load(FIXTURES / "io.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(tiny_unet, io_cases, case):
    sample, timestep = io_cases[f"{case}_sample"], io_cases[f"{case}_timestep"]
    with torch.no_grad():
        out = tiny_unet(sample, timestep, io_cases[f"{case}_ehs"])
    expected = io_cases[f"{case}_out"]
    assert isinstance(out, torch.Tensor) and out.shape == expected.shape == (sample.shape[0], 4, *sample.shape[2:])
    assert (out - expected).abs().max().item() <= TOLERANCE


def test_public_names_resolve():
    assert latentsync_core.load_unet is load_unet
    assert latentsync_core.UNet3DConditionModel is UNet3DConditionModel


def test_full_config_matches_manifest_on_meta():
    manifest = json.loads((FIXTURES / "unet_manifest_stage2.json").read_text())
    model = load_unet(FIXTURES / "stage2.yaml", None, device="meta")  # the official training YAML as is
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == manifest["num_tensors"] == 1246
    assert shapes == manifest["tensors"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] == 1_267_099_844
    assert sum(b.numel() for b in model.buffers()) == manifest["num_buffer_elements"]
    assert all(p.is_meta for p in model.parameters())
    # the manifest's own config section builds the same model
    assert {k: list(v.shape) for k, v in load_unet(manifest["config"], None, "meta").state_dict().items()} == shapes
