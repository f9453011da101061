"""The frozen training judges against the official reference data (tests/fixtures/train, README there):
StableSyncNet (sync loss) and the VideoMAE v2 ViT behind TREPA, on tiny random weights; the full-size
layouts against the manifests of the released files (built on the meta device, no memory).

Every input and expected value comes from the folder in ``LATENTSYNC_GOLDEN_TRAIN`` (default: the copy in
tests/fixtures/train), so the tests run unchanged on a folder made with another seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.checkpoint

from latentsync_core.errors import CheckpointError, InputMismatchError, LatentSyncError, ModelMissingError
from latentsync_core.train.syncnet import (
    SYNCNET_16_PIXEL_ATTN,
    ResnetBlock2D,
    StableSyncNet,
    cosine_loss,
    load_stable_syncnet,
    syncnet_config_from_yaml,
)
from latentsync_core.train.trepa import trepa_feature_loss, trepa_features, trepa_inputs, trepa_loss
from latentsync_core.train.videomae import VIT_G_CONFIG, VideoMAE, VideoMAEConfig, load_videomae, videomae_config

GOLDEN = Path(os.environ.get("LATENTSYNC_GOLDEN_TRAIN") or Path(__file__).parent / "fixtures" / "train")
SHIPPED_SYNCNET_YAML = Path(__file__).parent.parent / "latentsync_core" / "configs" / "train" / "syncnet_16_pixel_attn.yaml"

# README "Expected parity" tolerances
EMBED_REL_L2 = 1e-4  # sync embeddings / trepa features
SYNC_LOSS_REL = 1e-4  # sync, trepa loss (and the per-sample sims / losses)
STATS_REL = 1e-5  # stats of the pixel inputs (only rounding of the preprocessing)


# ----------------------------------------------------------------------------------------------- helpers


def golden(name: str) -> Path:
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"golden file missing: {path}")
    return path


def rel_l2(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def assert_rel(actual, expected, tol: float, what: str) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-12)
    assert err.max() <= tol, f"{what}: max relative error {err.max():.3g} > {tol} ({actual} vs {expected})"


def stats(x: torch.Tensor) -> np.ndarray:
    """The README's 5-tuple per leading index: mean, unbiased std, min, max, sum of squares (float64)."""
    flat = x.detach().double().flatten(1)
    return torch.stack(
        [flat.mean(1), flat.std(1), flat.min(1).values, flat.max(1).values, (flat * flat).sum(1)], dim=1
    ).numpy()


def assert_stats(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    # mean/std/sum of squares relative; min/max are exact pixel levels (relative to the value range)
    for col, label in enumerate(("mean", "std", "min", "max", "sumsq")):
        scale = np.maximum(np.abs(expected[:, col]), 1e-3 if label in ("min", "max", "mean") else 1e-12)
        err = np.abs(actual[:, col] - expected[:, col]) / scale
        assert err.max() <= STATS_REL, f"{what} {label}: {actual[:, col]} vs {expected[:, col]}"


@pytest.fixture(scope="module")
def batch():
    return np.load(golden("batch.npz"))


@pytest.fixture(scope="module")
def step():
    return np.load(golden("step_stage2.npz"))


@pytest.fixture(scope="module")
def meta():
    return json.loads(golden("meta.json").read_text())


def pixels(batch, face_index: np.ndarray) -> torch.Tensor:
    """``[..., 3, 256, 256]`` float32 in [-1, 1] for the faces ``face_index`` (the dataset's normalisation)."""
    faces = torch.from_numpy(batch["faces"][np.asarray(face_index)])  # [..., 256, 256, 3] uint8
    return (((faces.float() / 255.0) - 0.5) / 0.5).movedim(-1, -3)


def windows(batch, names) -> torch.Tensor:
    """``[B, 16, 3, 256, 256]``: the gt / reference windows named gt0, gt1, ref0, ref1."""
    index = {"gt": batch["gt_face_index"], "ref": batch["ref_face_index"]}
    return torch.stack([pixels(batch, index[str(n)[:-1]][int(str(n)[-1])]) for n in names])


def syncnet_visual_input(frames: torch.Tensor) -> torch.Tensor:
    """``[B, F, 3, H, W] -> [B, F*3, H/2, W]``: frame-major channels, lower half (as train_unet.py)."""
    b, f, c, h, w = frames.shape
    return frames.reshape(b, f * c, h, w)[:, :, h // 2 :, :]


@pytest.fixture(scope="module")
def syncnet_config():
    return syncnet_config_from_yaml(golden("syncnet_tiny.yaml"))


@pytest.fixture(scope="module")
def syncnet(syncnet_config):
    return load_stable_syncnet(golden("syncnet_tiny_random.pt"), syncnet_config)


@pytest.fixture(scope="module")
def videomae():
    return load_videomae(golden("videomae_tiny_random.pt"), golden("videomae_tiny_config.json"))


class CountingCheckpoint:
    """Stands in for ``torch.utils.checkpoint.checkpoint`` and counts the calls (same behaviour)."""

    def __init__(self, original):
        self.original, self.calls, self.reentrant = original, 0, []

    def __call__(self, fn, *args, **kwargs):
        self.calls += 1
        self.reentrant.append(kwargs.get("use_reentrant"))
        return self.original(fn, *args, **kwargs)


# ----------------------------------------------------------------------------------------------- SyncNet


def test_syncnet_forward_matches_official(syncnet, batch):
    ref = np.load(golden("syncnet_forward.npz"))
    x = syncnet_visual_input(windows(batch, ref["frames_source"]))
    assert_stats(stats(x), ref["visual_input_stats"], "visual input stats")
    mel = torch.from_numpy(ref["mel"])
    seen = {}
    hooks = [
        encoder.register_forward_hook(lambda module, args, out, name=name: seen.__setitem__(name, out))
        for name, encoder in (("visual", syncnet.visual_encoder), ("audio", syncnet.audio_encoder))
    ]
    try:
        with torch.no_grad():
            vision, audio = syncnet(x, mel)
    finally:
        for hook in hooks:
            hook.remove()
    visual_out, audio_out = seen["visual"], seen["audio"]
    assert visual_out.shape == ref["visual_encoder_out"].shape and vision.shape == ref["vision_embeds"].shape
    for name, value in [
        ("visual_encoder_out", visual_out),
        ("audio_encoder_out", audio_out),
        ("vision_embeds", vision),
        ("audio_embeds", audio),
    ]:
        err = rel_l2(value.numpy(), ref[name])
        assert err <= EMBED_REL_L2, f"{name}: relL2 {err:.3g}"
    np.testing.assert_allclose(vision.norm(dim=1).numpy(), 1.0, rtol=1e-6)

    sims = torch.nn.functional.cosine_similarity(vision, audio)
    assert_rel(sims.numpy(), ref["sims"], SYNC_LOSS_REL, "sims")
    losses = cosine_loss(vision, audio, torch.from_numpy(ref["y"]))
    assert losses.shape == (len(ref["y"]),)
    assert_rel(losses.numpy(), ref["loss_per_sample"], SYNC_LOSS_REL, "loss_per_sample")
    assert_rel(losses.mean().item(), ref["loss"], SYNC_LOSS_REL, "loss")
    clear = np.abs(ref["sims"] - 0.5) > 1e-4  # the accuracy rule, where rounding cannot flip it
    np.testing.assert_array_equal((sims.numpy() > 0.5)[clear], ref["pred_in_sync"][clear])


def test_sync_loss_of_the_training_step(syncnet, batch, step, meta):
    """The step's SyncNet audio branch on the batch mel, and its loss from the stored embeddings."""
    with torch.no_grad():
        audio = torch.nn.functional.normalize(syncnet.encode_audio(torch.from_numpy(batch["mel"])).flatten(1), dim=1)
    assert rel_l2(audio.numpy(), step["sync_audio_embeds"]) <= EMBED_REL_L2
    vision, audio = torch.from_numpy(step["sync_vision_embeds"]), torch.from_numpy(step["sync_audio_embeds"])
    ones = torch.ones(vision.shape[0], 1)
    losses = cosine_loss(vision, audio, ones)
    assert_rel(torch.nn.functional.cosine_similarity(vision, audio).numpy(), step["sync_sims"], SYNC_LOSS_REL, "sims")
    assert_rel(losses.numpy(), step["sync_loss_per_sample"], SYNC_LOSS_REL, "sync_loss_per_sample")
    assert_rel(losses.mean().item(), meta["losses"]["stage2"]["sync"], SYNC_LOSS_REL, "sync loss")


def test_cosine_loss_is_bce_of_the_similarity():
    vision = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    audio = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])  # [B] works as well as [B, 1]
    loss = cosine_loss(vision, audio, y)
    expected = [-np.log(0.6), -np.log(0.4), 100.0, 100.0]  # log clamped at -100 (sim 1 with y 0; sim 0 with y 1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
    with pytest.raises(InputMismatchError):
        cosine_loss(vision, audio, torch.ones(3, 1))


def test_cosine_loss_of_equal_embeddings_does_not_raise():
    """cosine_similarity(v, v) can be 1 + 1 ulp, which BCE refuses; the loss clamps the similarity."""
    torch.manual_seed(0)
    vision = torch.nn.functional.normalize(torch.rand(256, 2048), dim=1)
    audio = vision * 1.0000001
    loss = cosine_loss(vision, audio, torch.ones(256, 1))
    assert torch.isfinite(loss).all() and loss.abs().max() < 1e-6


def test_syncnet_gradient_checkpointing_same_values_and_gradients(syncnet_config, batch, monkeypatch):
    plain = load_stable_syncnet(golden("syncnet_tiny_random.pt"), syncnet_config)
    ckpt = load_stable_syncnet(golden("syncnet_tiny_random.pt"), syncnet_config, gradient_checkpointing=True)
    x0 = syncnet_visual_input(windows(batch, ["gt0"]))
    mel0 = torch.from_numpy(batch["mel"][:1])

    def run(model):
        x, mel = x0.clone().requires_grad_(True), mel0.clone().requires_grad_(True)
        vision, audio = model(x, mel)
        loss = cosine_loss(vision, audio, torch.ones(1, 1)).sum() + (vision * torch.linspace(0, 1, vision.shape[1])).sum()
        loss.backward()
        return vision.detach(), audio.detach(), x.grad, mel.grad

    counter = CountingCheckpoint(torch.utils.checkpoint.checkpoint)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counter)
    expected = run(plain)
    assert counter.calls == 0
    got = run(ckpt)
    blocks = len(ckpt.visual_encoder.down_blocks) + len(ckpt.audio_encoder.down_blocks)
    assert counter.calls == blocks and set(counter.reentrant) == {False}
    for a, b, what in zip(got, expected, ("vision", "audio", "d/dframes", "d/dmel")):
        assert b.abs().max() > 0, what
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 * b.abs().max().item(), msg=what)
    assert all(p.grad is None for p in ckpt.parameters())  # frozen: only the inputs get gradients


def test_syncnet_padding_before_the_strided_convs():
    """The asymmetric pads: ``[1, 2]`` keeps the height (pads top and bottom), ``[2, 1]`` the width, ``2``
    and ``[2, 3]`` pad right/bottom only; the visual input 128x256 and the mel 80x52 end at 1x1."""
    with torch.device("meta"):
        model = StableSyncNet(SYNCNET_16_PIXEL_ATTN)
    visual = [b for b in model.visual_encoder.down_blocks if isinstance(b, ResnetBlock2D)]
    audio = [b for b in model.audio_encoder.down_blocks if isinstance(b, ResnetBlock2D)]
    assert visual[0].pad == (0, 1, 1, 1) and visual[0].downsample_conv.stride == (1, 2)
    assert visual[1].pad == (0, 1, 0, 1) and visual[1].downsample_conv.stride == (2, 2)
    assert audio[0].pad == (1, 1, 0, 1) and audio[0].downsample_conv.stride == (2, 1)
    assert audio[3].downsample_conv is None  # factor 1
    assert audio[-1].pad == (0, 1, 0, 1) and audio[-1].downsample_conv.stride == (2, 3)
    assert all(b.downsample_conv.padding == (0, 0) for b in visual + audio if b.downsample_conv is not None)
    assert model.visual_encoder.output_size(128, 256) == (1, 1)
    assert model.audio_encoder.output_size(80, 52) == (1, 1)
    assert model.visual_encoder.output_size(256, 256) != (1, 1)
    # the pads on a real tensor: [1, 2] keeps 128 rows and halves 256 columns
    block = ResnetBlock2D(32, 32, [1, 2])
    assert block(torch.zeros(1, 32, 128, 256)).shape == (1, 32, 128, 128)
    block = ResnetBlock2D(32, 32, [2, 1])
    assert block(torch.zeros(1, 32, 80, 52)).shape == (1, 32, 40, 52)


# ----------------------------------------------------------------------------------------------- TREPA


@pytest.mark.parametrize("prefix", ["", "step2/"])
def test_trepa_real_features_match_official(videomae, batch, step, prefix):
    real = pixels(batch, batch[f"{prefix}gt_face_index"]).transpose(1, 2)  # [B, 3, F, 256, 256]
    if not prefix:  # the 224² model inputs of the real videos (call 1 of trepa_input_stats)
        assert_stats(stats(trepa_inputs(real)), step["trepa_input_stats"][1], "trepa real input stats")
    with torch.no_grad():
        feats = trepa_features(videomae, real)
    expected = step[f"{prefix}trepa_feats_real"]
    assert feats.shape == expected.shape
    err = rel_l2(feats.numpy(), expected)
    assert err <= EMBED_REL_L2, f"{prefix}trepa_feats_real: relL2 {err:.3g}"


@pytest.mark.parametrize("prefix", ["", "step2/"])
def test_trepa_loss_from_the_stored_features(step, meta, prefix):
    loss = trepa_feature_loss(torch.from_numpy(step[f"{prefix}trepa_feats_fake"]), torch.from_numpy(step[f"{prefix}trepa_feats_real"]))
    logged = (meta["step2"] if prefix else meta)["losses"]["stage2"]["trepa"]
    assert_rel(loss.item(), logged, SYNC_LOSS_REL, f"{prefix}trepa loss")


def test_trepa_inputs_resize_bilinear_then_clamp():
    """Bilinear 256->224 (official 1.5; not bicubic), x/2 + 0.5, and the clamp only after the resize."""
    torch.manual_seed(2)
    video = torch.rand(2, 3, 4, 256, 256) * 6 - 3  # far outside [-1, 1], as decoded pixels can be
    frames = video.transpose(1, 2).reshape(8, 3, 256, 256)

    def resized(x, mode):
        out = torch.nn.functional.interpolate(x, size=(224, 224), mode=mode, align_corners=False)
        return out.reshape(2, 4, 3, 224, 224).transpose(1, 2)

    expected = (resized(frames, "bilinear") / 2 + 0.5).clamp(0, 1)
    clamp_first = resized((frames / 2 + 0.5).clamp(0, 1), "bilinear")
    bicubic = (resized(frames, "bicubic") / 2 + 0.5).clamp(0, 1)
    out = trepa_inputs(video)
    assert out.shape == (2, 3, 4, 224, 224)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert (out - clamp_first).abs().max() > 0.1 and (out - bicubic).abs().max() > 0.1


def test_trepa_loss_gradient_reaches_the_fake_video(videomae):
    torch.manual_seed(0)
    real = torch.rand(1, 3, 16, 32, 32) * 2 - 1
    assert trepa_loss(videomae, real, real).item() == 0.0
    fake = (real + 0.3 * torch.randn_like(real)).clamp(-1, 1).requires_grad_(True)
    loss = trepa_loss(videomae, fake, real)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(fake.grad).all() and fake.grad.abs().max() > 0
    assert all(p.grad is None for p in videomae.parameters())


def test_videomae_gradient_checkpointing_same_values_and_gradients(monkeypatch):
    cfg = golden("videomae_tiny_config.json")
    plain = load_videomae(golden("videomae_tiny_random.pt"), cfg)
    ckpt = load_videomae(golden("videomae_tiny_random.pt"), cfg, gradient_checkpointing=True)
    torch.manual_seed(1)
    video0 = torch.rand(1, 3, 16, 64, 64) * 2 - 1

    def run(model):
        video = video0.clone().requires_grad_(True)
        feats = trepa_features(model, video)
        (feats * torch.linspace(-1, 1, feats.shape[1])).sum().backward()
        return feats.detach(), video.grad

    counter = CountingCheckpoint(torch.utils.checkpoint.checkpoint)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counter)
    expected = run(plain)
    assert counter.calls == 0
    got = run(ckpt)
    assert counter.calls == ckpt.config.depth and set(counter.reentrant) == {False}
    for a, b, what in zip(got, expected, ("features", "d/dvideo")):
        assert b.abs().max() > 0, what
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7 * b.abs().max().item(), msg=what)


def test_videomae_position_table_is_the_official_sinusoid(videomae):
    """The fixed table of ``get_sinusoid_encoding_table(tokens, dim)`` (numpy float64, then float32)."""
    tokens, dim = videomae.config.num_patches, videomae.config.embed_dim
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(tokens)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    table = videomae.pos_embed
    assert table.shape == (1, tokens, dim) and table.dtype == torch.float32
    np.testing.assert_allclose(table[0].numpy(), angles.astype(np.float32), rtol=0, atol=2e-7)
    assert "pos_embed" not in videomae.state_dict()  # not a checkpoint tensor


def test_videomae_other_frame_counts_stretch_the_position_table(videomae):
    """Official ``interpolate_pos_encoding``: 8 frames -> 4 time steps of tokens."""
    table = videomae.position_table(8)
    t, h, w = videomae.config.grid
    assert table.shape == (1, t // 2 * h * w, videomae.config.embed_dim)
    assert torch.equal(videomae.position_table(videomae.config.num_frames), videomae.pos_embed)
    with torch.no_grad():
        assert videomae.forward_features(torch.rand(1, 3, 8, 224, 224)).shape == (1, videomae.config.embed_dim)


# ----------------------------------------------------------------------------------------------- full size


def manifest(name: str) -> dict:
    return json.loads(golden(name).read_text())


def test_full_size_syncnet_matches_the_released_layout():
    data = manifest("syncnet_manifest_16_pixel_attn.json")
    assert data["config"] == SYNCNET_16_PIXEL_ATTN
    with torch.device("meta"):
        model = StableSyncNet(SYNCNET_16_PIXEL_ATTN)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == data["tensors"]
    assert len(shapes) == data["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == data["num_parameters"]
    assert [model.embed_dim] == data["tensors"]["visual_encoder.norm_out.weight"]


def test_shipped_syncnet_yaml_is_the_full_size_config():
    if not SHIPPED_SYNCNET_YAML.exists():
        pytest.skip("latentsync_core/configs/train/syncnet_16_pixel_attn.yaml not shipped")
    assert syncnet_config_from_yaml(SHIPPED_SYNCNET_YAML) == SYNCNET_16_PIXEL_ATTN


def test_full_size_videomae_matches_the_released_layout():
    data = manifest("videomae_manifest_vit_g.json")
    with torch.device("meta"):
        model = VideoMAE(VIT_G_CONFIG)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == data["tensors"]
    assert len(shapes) == data["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == data["num_parameters"]
    assert model.pos_embed.shape == (1, model.config.num_patches, data["tensors"]["fc_norm.weight"][0])


def meta_tensors(shapes: dict, dtype=torch.float16) -> dict:
    return {k: torch.empty(v, dtype=dtype, device="meta") for k, v in shapes.items()}


def test_loaders_accept_exactly_the_released_keys():
    sync_shapes = manifest("syncnet_manifest_16_pixel_attn.json")["tensors"]
    model = load_stable_syncnet({"state_dict": meta_tensors(sync_shapes), "global_step": 0}, device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    assert not model.training

    vmae_shapes = manifest("videomae_manifest_vit_g.json")["tensors"]
    for wrapper in ("model", "module"):
        vmae = load_videomae({wrapper: meta_tensors(vmae_shapes)}, device="meta")
        assert all(p.is_meta and not p.requires_grad for p in vmae.parameters()) and not vmae.training

    # one tensor short, one too many, one of another shape: each refused, naming the key
    short = meta_tensors(sync_shapes)
    short.pop("visual_encoder.down_blocks.5.attn.to_q.bias")
    with pytest.raises(CheckpointError, match="to_q.bias"):
        load_stable_syncnet(short, device="meta")
    extra = {**meta_tensors(vmae_shapes), "pos_embed": torch.empty(1, 2048, 1408, device="meta")}
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_videomae(extra, device="meta")
    wrong = meta_tensors(vmae_shapes)
    wrong["head.weight"] = torch.empty(400, 1408, device="meta")  # a Kinetics-400 head
    with pytest.raises(CheckpointError, match="head.weight"):
        load_videomae(wrong, device="meta")


# ----------------------------------------------------------------------------------------------- loading


def test_loaded_judges_are_frozen_with_the_file_values(syncnet, videomae):
    for model, file in ((syncnet, "syncnet_tiny_random.pt"), (videomae, "videomae_tiny_random.pt")):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        raw = torch.load(golden(file), weights_only=True)
        raw = raw.get("state_dict") or raw.get("model") or raw.get("module")
        state = model.state_dict()
        assert set(state) == set(raw)
        for key, value in raw.items():
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], value.float()), key


def test_missing_file_names_the_path(tmp_path, syncnet_config):
    missing = tmp_path / "nowhere" / "stable_syncnet.pt"
    with pytest.raises(ModelMissingError, match="stable_syncnet.pt") as info:
        load_stable_syncnet(missing, syncnet_config)
    assert str(missing) in str(info.value)
    missing = tmp_path / "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
    with pytest.raises(ModelMissingError) as info:
        load_videomae(missing)
    assert str(missing) in str(info.value)


def test_wrong_files_are_refused_naming_them(tmp_path, syncnet_config):
    other = tmp_path / "other_model.pt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}}, other)
    with pytest.raises(CheckpointError, match="other_model.pt"):
        load_stable_syncnet(other, syncnet_config)
    with pytest.raises(CheckpointError, match="other_model.pt"):
        load_videomae(other, golden("videomae_tiny_config.json"))
    # each judge's file given to the other loader says what it is
    with pytest.raises(CheckpointError, match="videomae_tiny_random.pt.*VideoMAE"):
        load_stable_syncnet(golden("videomae_tiny_random.pt"), syncnet_config)
    with pytest.raises(CheckpointError, match="syncnet_tiny_random.pt.*SyncNet"):
        load_videomae(golden("syncnet_tiny_random.pt"), golden("videomae_tiny_config.json"))
    # the right file with the wrong (full-size) config: shapes differ
    with pytest.raises(CheckpointError, match="different shape"):
        load_stable_syncnet(golden("syncnet_tiny_random.pt"))
    with pytest.raises(CheckpointError, match="syncnet_tiny_random.pt"):
        load_stable_syncnet(golden("syncnet_tiny_random.pt"), None, device="meta")


def test_bad_inputs_are_refused_clearly(syncnet, videomae):
    good_mel = torch.zeros(1, 1, 80, 52)
    with pytest.raises(InputMismatchError, match=r"\[B, 48, H, W\]"):
        syncnet(torch.zeros(1, 45, 128, 256), good_mel)  # 15 frames
    with pytest.raises(InputMismatchError, match="1x1"):
        syncnet(torch.zeros(1, 48, 256, 256), good_mel)  # the whole face, not the lower half
    with pytest.raises(InputMismatchError, match="mel"):
        syncnet(torch.zeros(1, 48, 128, 256), torch.zeros(1, 1, 80, 16))
    with pytest.raises(InputMismatchError, match="windows"):
        syncnet(torch.zeros(2, 48, 128, 256), good_mel)
    with pytest.raises(InputMismatchError, match="224"):
        videomae.forward_features(torch.zeros(1, 3, 16, 256, 256))
    with pytest.raises(InputMismatchError, match="multiple of 2"):
        videomae.forward_features(torch.zeros(1, 3, 15, 224, 224))
    with pytest.raises(InputMismatchError, match=r"\[B, 3, F, H, W\]"):
        trepa_features(videomae, torch.zeros(16, 3, 256, 256))
    with pytest.raises(InputMismatchError, match="differ"):
        trepa_loss(videomae, torch.zeros(1, 3, 16, 32, 32), torch.zeros(1, 3, 8, 32, 32))


def test_bad_configs_are_refused(tmp_path):
    bad = tmp_path / "syncnet.yaml"
    bad.write_text("model:\n  audio_encoder:\n    in_channels: 1\n")
    with pytest.raises(LatentSyncError, match="syncnet.yaml"):
        syncnet_config_from_yaml(bad)
    with pytest.raises(LatentSyncError, match="not found"):
        syncnet_config_from_yaml(tmp_path / "absent.yaml")
    with pytest.raises(LatentSyncError, match="cos_attn"):
        videomae_config({"cos_attn": True})
    data = json.loads(golden("videomae_tiny_config.json").read_text())
    cfg = VideoMAEConfig.from_dict(data)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_frames) == (
        data["embed_dim"], data["depth"], data["num_heads"], data["all_frames"]
    )
    assert cfg.norm_eps == 1e-6 and cfg.mlp_hidden == int(data["embed_dim"] * data["mlp_ratio"])
