"""load_vae: diffusers and original Stable Diffusion key layouts, and clear errors for bad configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentsync_core.errors import CheckpointError
from latentsync_core.vae import load_vae

CONFIG = Path(__file__).resolve().parent / "fixtures" / "pipeline" / "vae_config.json"


def diffusers_to_ldm(state: dict[str, torch.Tensor], num_up: int) -> dict[str, torch.Tensor]:
    """The original (LDM / CompVis) key layout of a diffusers AutoencoderKL state dict, written out by
    hand from the two code bases (independent of diffusers' converter, which load_vae uses)."""
    out = {}
    for key, value in state.items():
        k = key
        k = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", k)
        k = re.sub(r"\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r".down.\1.block.\2.", k)
        k = re.sub(r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample.", k)
        k = re.sub(r"\.up_blocks\.(\d+)\.", lambda m: f".up_blocks_{num_up - 1 - int(m.group(1))}.", k)
        k = re.sub(r"\.up_blocks_(\d+)\.resnets\.(\d+)\.", r".up.\1.block.\2.", k)
        k = re.sub(r"\.up_blocks_(\d+)\.upsamplers\.0\.", r".up.\1.upsample.", k)
        k = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", k)
        k = k.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid_block.attentions.0." in k:
            k = k.replace(".mid_block.attentions.0.", ".mid.attn_1.")
            for new, old in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
                k = k.replace(f".{new}.", f".{old}.")
            if value.ndim == 2:  # linear in diffusers, 1x1 conv in the original code
                value = value[:, :, None, None]
        out[k] = value.clone()
    return out


@pytest.fixture(scope="module")
def reference():
    from diffusers import AutoencoderKL

    config = json.loads(CONFIG.read_text())
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up of any two tensors shows
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae, config


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_original_sd_layout_loads_like_the_diffusers_file(tmp_path, reference, prefix):
    vae, config = reference
    ldm = diffusers_to_ldm(vae.state_dict(), len(config["up_block_types"]))
    assert "encoder.down.0.block.0.conv1.weight" in ldm and "decoder.mid.attn_1.q.weight" in ldm
    path = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in ldm.items()}, str(path))
    loaded = load_vae(path, CONFIG)
    for k, v in vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[k], v), k
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    g = torch.Generator().manual_seed(3)
    expect = vae.encode(x).latent_dist.sample(generator=g) * 0.18215
    assert torch.allclose(loaded.encode(x, generator=torch.Generator().manual_seed(3)), expect, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(expect), vae.decode(expect / 0.18215).sample, atol=1e-6)


def test_wrong_file_still_named(tmp_path, reference):
    path = tmp_path / "notavae.safetensors"
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="notavae.safetensors is not a VAE for this config"):
        load_vae(path, CONFIG)


@pytest.mark.parametrize(
    "content, expected",
    [(None, "VAE config not found"), ("", "is empty"), ("{not json", "is not valid JSON"), ("[1, 2]", "not a JSON object")],
)
def test_bad_vae_config_is_one_clear_error(tmp_path, reference, content, expected):
    weights = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in reference[0].state_dict().items()}, str(weights))
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    with pytest.raises(CheckpointError, match=expected) as err:
        load_vae(weights, config)
    assert "\n" not in str(err.value)
