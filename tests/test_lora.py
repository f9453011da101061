"""LoRA for the LatentSync U-Net (latentsync_core.train.lora) on the tiny random fixture U-Net, CPU.

peft training layers, kohya-style files (keys, metadata, atomic writes, clear errors) and inference
(merged / hooked, strength, removal) agree with each other and with the peft-wrapped model.
"""

import copy
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from latentsync_core.errors import CheckpointError, InputMismatchError, LatentSyncError, ModelMissingError
from latentsync_core.train import lora as L
from latentsync_core.unet import load_unet

UNET = Path(__file__).parent / "fixtures" / "unet"
PROJ = ("to_q", "to_k", "to_v", "to_out.0")
MATCH_TOL = 1e-5  # merged float32 weights vs peft's separate low-rank branch (float32 rounding only)
EXPECT = {"latentsync_version": "1.5", "resolution": 256}
META = {"resolution": 256, "steps": 7, "dataset_size": 3}
KOHYA_KEY = re.compile(r"^lora_unet_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


@pytest.fixture(scope="module")
def base_unet():
    return load_unet(UNET / "config.json", UNET / "latentsync_unet.pt")


@pytest.fixture()
def unet(base_unet):
    return copy.deepcopy(base_unet)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 13, 4, 16, 16, generator=g)  # B=1, F=4, 16x16 latents
    audio = torch.randn(4, 50, 384, generator=g)  # [B*F, 50, 384]
    return sample, torch.tensor([500]), audio


@pytest.fixture(scope="module")
def small_inputs(inputs):
    """F=2 frames at 8x8 latents, for the slower runs (backward, bf16 on the CPU)."""
    sample, t, audio = inputs
    return sample[:, :, :2, :8, :8].contiguous(), t, audio[:2]


def run(model, inputs):
    with torch.no_grad():
        return model(*inputs)


@pytest.fixture(scope="module")
def base_out(base_unet, inputs):
    return run(base_unet, inputs)


def spatial_names(model):
    """Spatial transformer attention projections, selected without the module's regexes."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".attentions." in n
            and ".transformer_blocks." in n and (".attn1." in n or ".attn2." in n) and n.endswith(PROJ)]


def temporal_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".motion_modules." in n
            and ".attention_blocks." in n and n.endswith(PROJ)]


def randomize_up(model, seed=1, std=0.05):
    """Non-zero lora_B (as after training) so the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def trained(base_unet, inputs):
    """A peft-wrapped U-Net (attention+motion, rank 4, alpha 8) with non-zero adapters, its output and its
    state dict."""
    model = L.add_lora(copy.deepcopy(base_unet), rank=4, alpha=8, targets="attention+motion")
    randomize_up(model)
    return model, run(model, inputs), L.lora_state_dict(model)


# --- training layers ---------------------------------------------------------------------------------


def test_target_table_selects_the_attention_projections(base_unet):
    spatial, temporal = spatial_names(base_unet), temporal_names(base_unet)
    # tiny config: 3 cross-attn down blocks x 2 + mid 1 + 3 cross-attn up blocks x 3 = 16 spatial
    # transformers x 8 projections; motion modules in all 4 down (x2) and 4 up (x3) blocks = 20 x 2 x 4
    assert len(spatial) == 16 * 8 and len(temporal) == 20 * 2 * 4
    assert L.target_module_names(base_unet, "attention") == spatial
    assert sorted(L.target_module_names(base_unet, "attention+motion")) == sorted(spatial + temporal)
    assert any(n.startswith("mid_block.") for n in spatial) and any(".attn2.to_k" in n for n in spatial)
    with pytest.raises(LatentSyncError, match="Unknown LoRA targets"):
        L.target_module_names(base_unet, "everything")


@pytest.mark.parametrize("targets", ["attention", "attention+motion"])
def test_fresh_lora_is_an_exact_no_op_and_only_adapters_train(unet, inputs, base_out, targets):
    rank = 4
    expected_modules = spatial_names(unet) + (temporal_names(unet) if targets == "attention+motion" else [])
    shapes = {n: (m.in_features, m.out_features) for n, m in unet.named_modules() if n in expected_modules}
    base_keys = set(unet.state_dict())
    L.add_lora(unet, rank=rank, targets=targets, dropout=0.1)
    unet.eval()
    assert torch.equal(run(unet, inputs), base_out)  # lora_B = 0: exactly the base output

    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    params = L.lora_parameters(unet)
    assert [id(p) for p in params] == [id(p) for n, p in unet.named_parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == sum(rank * (i + o) for i, o in shapes.values())
    assert all(p.dtype == torch.float32 for p in params)
    assert {n for n, p in unet.named_parameters() if ".lora_B." in n and p.abs().max() == 0} == {
        n for n in trainable if ".lora_B." in n
    }
    adapted = {n for n, m in unet.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(expected_modules)
    assert next(iter(unet.get_submodule(expected_modules[0]).lora_dropout.values())).p == 0.1
    # the plain U-Net keys are still there (under .base_layer) and come back with base_state_dict
    assert set(L.base_state_dict(unet)) == base_keys
    with pytest.raises(LatentSyncError, match="already has LoRA"):
        L.add_lora(unet)


def test_one_optimizer_step_changes_the_output_and_only_the_adapters(unet, small_inputs):
    base_out = run(unet, small_inputs)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    L.add_lora(unet, rank=2, targets="attention")
    opt = torch.optim.AdamW(L.lora_parameters(unet), lr=1e-2)
    unet.train()
    loss = unet(*small_inputs).square().mean()
    loss.backward()
    opt.step()
    unet.eval()
    out = run(unet, small_inputs)
    assert (out - base_out).abs().max() > 1e-4
    after = L.base_state_dict(unet)
    assert all(torch.equal(after[k], before[k]) for k in before)  # the base did not move
    assert all(p.grad is None for n, p in unet.named_parameters() if ".lora_" not in n)


def test_adapters_kept_in_float32_on_a_bf16_base(unet, small_inputs):
    unet.to(torch.bfloat16)
    L.add_lora(unet, rank=2)
    assert all(p.dtype == torch.float32 for p in L.lora_parameters(unet))
    randomize_up(unet)
    sample, t, audio = small_inputs
    out = run(unet, (sample.bfloat16(), t, audio.bfloat16()))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --- files -------------------------------------------------------------------------------------------


def test_keys_follow_the_kohya_pattern_and_metadata_round_trips(trained, base_unet, tmp_path):
    model, _, sd = trained
    path = L.save_lora(tmp_path / "mouth.safetensors", model, META)
    loaded, meta = L.load_lora(path)
    modules = dict(base_unet.named_modules())
    names = {L.kohya_key(n): n for n in modules}
    assert set(loaded) == set(sd) and len(loaded) == 3 * (16 * 8 + 20 * 2 * 4)
    for key, value in loaded.items():
        assert KOHYA_KEY.match(key), key
        assert torch.equal(value, sd[key])
        module = modules[names[key.split(".")[0]]]
        if key.endswith("lora_down.weight"):
            assert value.shape == (4, module.in_features)
        elif key.endswith("lora_up.weight"):
            assert value.shape == (module.out_features, 4)
        else:
            assert value.ndim == 0 and float(value) == 8.0
    assert meta == {
        "latentsync_version": "1.5", "resolution": "256", "steps": "7", "dataset_size": "3", "rank": "4",
        "alpha": "8", "targets": "attention+motion", "trainable_set": "lora", "ss_network_dim": "4",
        "ss_network_alpha": "8",
    }
    with safe_open(path, framework="pt") as fh:  # what other tools read
        assert fh.metadata()["ss_network_alpha"] == "8"
    with pytest.raises(LatentSyncError, match="resolution"):
        L.save_lora(tmp_path / "x.safetensors", model, {"steps": 1})
    with pytest.raises(LatentSyncError, match="safetensors"):
        L.save_lora(tmp_path / "x.pt", model, META)


def test_saving_is_atomic(trained, tmp_path, monkeypatch):
    model, _, _ = trained
    path = tmp_path / "lora.safetensors"
    L.save_lora(path, model, META)
    original = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        L.save_lora(path, model, {**META, "steps": 8})
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]  # no partial file left


def test_files_that_are_not_latentsync_loras_are_refused(trained, base_unet, tmp_path):
    _, _, sd = trained
    unet_file = tmp_path / "unet.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in base_unet.state_dict().items()}, unet_file)
    with pytest.raises(CheckpointError, match=r"unet\.safetensors is not a LoRA.*LatentSync U-Net"):
        L.load_lora(unet_file)
    no_meta = tmp_path / "image_lora.safetensors"
    safetensors.torch.save_file(sd, no_meta)
    with pytest.raises(CheckpointError, match=r"image_lora\.safetensors .*no latentsync_version"):
        L.load_lora(no_meta)
    meta = {"latentsync_version": "1.5", "resolution": "256"}
    half = tmp_path / "half.safetensors"
    safetensors.torch.save_file({k: v for k, v in sd.items() if not k.endswith("lora_up.weight")}, half, meta)
    with pytest.raises(CheckpointError, match=r"half\.safetensors: lora_unet_\w+ has no lora_up"):
        L.load_lora(half)
    mixed = tmp_path / "mixed.safetensors"
    safetensors.torch.save_file({**sd, "lora_te_text_model.lora_down.weight": torch.zeros(2, 3)}, mixed, meta)
    with pytest.raises(CheckpointError, match=r"mixed\.safetensors has 1 keys .*lora_te_text_model"):
        L.load_lora(mixed)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not safetensors" * 8)
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        L.load_lora(garbage)
    with pytest.raises(CheckpointError, match=r"lora\.pt: .*\.safetensors only"):
        L.load_lora(tmp_path / "lora.pt")
    with pytest.raises(ModelMissingError, match="missing.safetensors"):
        L.load_lora(tmp_path / "missing.safetensors")


def test_lora_for_another_model_is_refused(trained, unet):
    _, _, sd = trained
    key = next(k for k in sd if k.endswith("lora_down.weight"))
    stranger = {**sd, "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 8),
                "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(8, 4)}
    with pytest.raises(CheckpointError, match=r"style\.safetensors: 1 of .*lora_unet_input_blocks_1_1_proj_in"):
        L.apply_lora(unet, stranger, name="style.safetensors")
    wide = {**sd, key: torch.zeros(4, sd[key].shape[1] + 1)}
    with pytest.raises(CheckpointError, match="another model size"):
        L.apply_lora(unet, wide)
    assert L.applied_loras(unet) == []  # nothing was half applied


def test_version_or_resolution_mismatch_is_a_clear_error(trained, unet, base_out, inputs, tmp_path):
    model, _, sd = trained
    path = L.save_lora(tmp_path / "hd.safetensors", model, {"latentsync_version": "1.6", "resolution": 512})
    with pytest.raises(InputMismatchError) as err:
        L.apply_lora(unet, path, expect=EXPECT)
    message = str(err.value)
    assert "hd.safetensors" in message
    assert "trained for LatentSync 1.6 at 512 px; the loaded U-Net is LatentSync 1.5 at 256 px" in message
    assert isinstance(err.value, LatentSyncError)
    with pytest.raises(InputMismatchError, match="LatentSync 1.5 at 512 px"):
        L.apply_lora(unet, sd, metadata={"latentsync_version": "1.5", "resolution": "512"}, expect=EXPECT)
    assert torch.equal(run(unet, inputs), base_out)  # refused before touching anything
    L.apply_lora(unet, path, expect={"latentsync_version": "1.6", "resolution": 512})  # a match is accepted


# --- inference ---------------------------------------------------------------------------------------


def test_saved_lora_merged_into_a_fresh_unet_equals_the_peft_model(trained, unet, inputs, tmp_path):
    model, peft_out, _ = trained
    path = L.save_lora(tmp_path / "lora.safetensors", model, META)
    keys = set(unet.state_dict())
    applied = L.apply_lora(unet, path, expect=EXPECT)
    assert applied.merged and len(applied.modules) == 16 * 8 + 20 * 2 * 4
    assert set(unet.state_dict()) == keys
    merged_out = run(unet, inputs)
    assert (merged_out - peft_out).abs().max() <= MATCH_TOL
    assert (peft_out - run(copy.deepcopy(model).requires_grad_(False), inputs)).abs().max() == 0  # deterministic


def test_hooked_equals_merged_and_remove_restores_the_base(trained, unet, inputs, base_out):
    _, peft_out, sd = trained
    keys = set(unet.state_dict())
    L.apply_lora(unet, sd, merge=False)
    hooked = run(unet, inputs)
    assert set(unet.state_dict()) == keys  # factors are non-persistent buffers
    assert (hooked - peft_out).abs().max() <= MATCH_TOL
    assert L.remove_lora(unet) == 16 * 8 + 20 * 2 * 4
    assert torch.equal(run(unet, inputs), base_out)
    assert not any("lora" in n for n, _ in unet.named_buffers()) and L.applied_loras(unet) == []

    L.apply_lora(unet, sd, merge=True)
    merged = run(unet, inputs)
    assert (hooked - merged).abs().max() <= MATCH_TOL
    L.remove_lora(unet)
    assert torch.equal(run(unet, inputs), base_out)  # weights restored bit for bit from the backup
    assert L.remove_lora(unet) == 0


@pytest.mark.parametrize("merge", [True, False])
def test_strength_scales_the_update(trained, base_unet, unet, inputs, base_out, merge):
    _, full_out, sd = trained
    L.apply_lora(unet, sd, strength=0.0, merge=merge)
    assert torch.equal(run(unet, inputs), base_out)
    L.remove_lora(unet)
    L.apply_lora(unet, sd, strength=0.5, merge=merge)
    half = run(unet, inputs)
    assert 0 < (half - base_out).abs().max() < (full_out - base_out).abs().max()
    L.remove_lora(unet)
    # for a small update the output moves linearly: strength 0.01 goes half as far as 0.02
    L.apply_lora(unet, sd, strength=0.01, merge=merge)
    small = run(unet, inputs) - base_out
    L.remove_lora(unet)
    L.apply_lora(unet, sd, strength=0.02, merge=merge)
    double = run(unet, inputs) - base_out
    assert (small - double / 2).abs().max() < 0.05 * double.abs().max()
    L.remove_lora(unet)
    if merge:  # the merged weight delta is exactly linear in strength
        name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
        w0 = base_unet.get_submodule(name).weight
        L.apply_lora(unet, sd, strength=0.5)
        w_half = unet.get_submodule(name).weight.clone()
        L.remove_lora(unet)
        L.apply_lora(unet, sd, strength=1.0)
        w_full = unet.get_submodule(name).weight
        assert (w_half - w0).abs().max() > 0
        assert ((w_half - w0) - 0.5 * (w_full - w0)).abs().max() <= 1e-6


def test_stacked_loras_and_merge_in_the_weight_dtype(trained, base_unet, unet):
    _, _, sd = trained
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v"
    key = L.kohya_key(name)
    delta = sd[key + ".lora_up.weight"] @ sd[key + ".lora_down.weight"] * (float(sd[key + ".alpha"]) / 4)
    unet.to(torch.bfloat16)
    w0 = unet.get_submodule(name).weight.clone()
    L.apply_lora(unet, sd, strength=1.0)
    w = unet.get_submodule(name).weight
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, (w0.float() + delta).to(torch.bfloat16))  # float32 math, one rounding
    L.apply_lora(unet, sd, strength=-1.0, merge=False)  # a second LoRA on top
    assert len(L.applied_loras(unet)) == 2
    L.remove_lora(unet)
    assert torch.equal(unet.get_submodule(name).weight, w0)


def test_merge_without_backup_cannot_be_removed(trained, unet):
    _, _, sd = trained
    L.apply_lora(unet, sd, keep_backup=False)
    with pytest.raises(LatentSyncError, match="reload the U-Net"):
        L.remove_lora(unet)


def test_merge_trained_lora_gives_a_plain_unet(trained, base_unet, inputs):
    model, peft_out, _ = trained
    merged = L.merge_trained_lora(copy.deepcopy(model))
    assert set(merged.state_dict()) == set(base_unet.state_dict())
    assert not hasattr(merged, "peft_config") and not any(p.requires_grad for p in merged.parameters())
    assert (run(merged, inputs) - peft_out).abs().max() <= MATCH_TOL
    fresh = copy.deepcopy(base_unet)
    fresh.load_state_dict(merged.state_dict(), strict=True)  # loads as a full checkpoint
    assert torch.equal(run(fresh, inputs), run(merged, inputs))
    with pytest.raises(LatentSyncError, match="no LoRA adapters"):
        L.lora_state_dict(merged)
