"""LPIPS-VGG v0.1 (latentsync_core.train.lpips) against the official training step's recorded LPIPS values.

The golden folder (``LATENTSYNC_GOLDEN_TRAIN``, default tests/fixtures/train; see its README, "LPIPS internals
of step 1") holds the random VGG trunk the official run used (``lpips_vgg16_random.npz``) and, for step 1, the
per-layer values of all 32 pairs and the internals of the first pair. The trunk is written as a
torchvision-layout ``vgg16-397923af.pth`` look-alike and loaded through ``load_lpips`` (the real path); the
linear layers come from the shipped asset. Every input and expected value is read from the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latentsync_core.checkpoints import read_checkpoint
from latentsync_core.errors import CheckpointError, ModelMissingError
from latentsync_core.train.lpips import (
    ASSET_LIN,
    LAYER_CHANNELS,
    LPIPS,
    VGG_CONV_INDICES,
    load_lpips,
    lpips_from_state_dict,
    normalize_channels,
)

GOLDEN = Path(os.environ.get("LATENTSYNC_GOLDEN_TRAIN") or Path(__file__).parent / "fixtures" / "train")

# README "Expected parity" tolerances
PER_LAYER_REL = 1e-5
PER_IMAGE_REL = 1e-5
DIFF_MEAN_RELL2 = 1e-4
STATS_REL = 1e-4


def _rel(a, g) -> float:
    a, g = np.asarray(a, np.float64), np.asarray(g, np.float64)
    return float(np.max(np.abs(a - g) / np.abs(g)))


def _rel_l2(a, g) -> float:
    a, g = np.asarray(a, np.float64), np.asarray(g, np.float64)
    return float(np.linalg.norm(a - g) / np.linalg.norm(g))


def _stats(t: torch.Tensor) -> np.ndarray:
    """mean, std (unbiased), min, max, sum of squares over all elements, float64 (the folder's 5-tuple)."""
    x = t.detach().double().flatten()
    return np.array([x.mean(), x.std(), x.min(), x.max(), (x * x).sum()])


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN / "lpips_vgg16_random.npz") as z:
        weights = {k: z[k] for k in z.files}
    with np.load(GOLDEN / "step_stage2.npz") as z:
        step = {k: z[k] for k in z.files if k.startswith(("lpips_", "pred_pixels_frame"))}
    with np.load(GOLDEN / "batch.npz") as z:
        batch = {k: z[k] for k in ("faces", "gt_face_index")}
    return weights, step, batch


def _trunk(weights) -> dict[str, torch.Tensor]:
    """torchvision-layout ``features.{i}.*`` tensors from the npz (weight = float32(ternary) * scale)."""
    sd = {}
    for i in VGG_CONV_INDICES:
        sd[f"features.{i}.weight"] = torch.from_numpy(weights[f"{i}.weight_ternary"].astype(np.float32) * weights[f"{i}.weight_scale"])
        sd[f"features.{i}.bias"] = torch.from_numpy(weights[f"{i}.bias"].copy())
    return sd


def _lins(weights) -> dict[str, torch.Tensor]:
    return {f"lin{k}.model.1.weight": torch.from_numpy(weights[f"lin.lin{k}.model.1.weight"].copy()) for k in range(5)}


@pytest.fixture(scope="module")
def vgg_file(golden, tmp_path_factory):
    """The npz trunk as torchvision's ``vgg16-397923af.pth`` lays it out (plus a classifier key, ignored)."""
    sd = _trunk(golden[0])
    sd["classifier.0.weight"] = torch.zeros(8, 16)
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def model(vgg_file) -> LPIPS:
    return load_lpips(vgg_file)


def _pair(golden, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair ``n`` (= b*F + f) of step 1: the stored predicted frame and its gt face, lower halves ``[3,h,W]``."""
    _, step, batch = golden
    stored = list(step["pred_pixels_frame_index"])
    pred = torch.from_numpy(step["pred_pixels_frames"][stored.index(n)])
    frames = batch["gt_face_index"].shape[1]
    face = batch["faces"][batch["gt_face_index"][n // frames, n % frames]]
    gt = ((torch.from_numpy(face).permute(2, 0, 1).float() / 255.0) - 0.5) / 0.5
    half = pred.shape[-2] // 2
    return pred[:, half:, :], gt[:, half:, :]


@pytest.fixture(scope="module")
def pairs(golden):
    """The two stored predicted frames with their gt: ``(rows n, in0 [2,3,h,W], in1 [2,3,h,W])``."""
    rows = [int(n) for n in golden[1]["pred_pixels_frame_index"]]
    assert rows[0] == 0  # the README's "first pair"
    preds, gts = zip(*(_pair(golden, n) for n in rows))
    return rows, torch.stack(preds), torch.stack(gts)


@pytest.fixture(scope="module")
def computed(model, pairs):
    rows, in0, in1 = pairs
    with torch.no_grad():
        return {
            "per_layer": model.per_layer(in0, in1),
            "per_image": model(in0, in1),
            "diffs": model.diffs(in0[:1], in1[:1]),
            "taps": [model.taps(in0[:1]), model.taps(in1[:1])],
            "scaled": [model.scale_input(in0[:1]), model.scale_input(in1[:1])],
        }


def test_loads_frozen_with_the_shipped_linear_layers(golden, model):
    # the asset is a copy of the lpips package's v0.1 weights, which the golden npz also carries unchanged
    asset = read_checkpoint(ASSET_LIN)
    lins = _lins(golden[0])
    assert sorted(asset) == sorted(lins)
    for k in range(5):
        key = f"lin{k}.model.1.weight"
        np.testing.assert_array_equal(asset[key].numpy(), lins[key].numpy())
        np.testing.assert_array_equal(model.lins[k].weight.numpy(), lins[key].numpy())
        assert model.lins[k].weight.shape == (1, LAYER_CHANNELS[k], 1, 1)
    trunk = _trunk(golden[0])
    for key, value in trunk.items():
        np.testing.assert_array_equal(model.state_dict()[key].numpy(), value.numpy())
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_first_pair_matches_the_official_step(golden, pairs, computed):
    _, step, _ = golden
    got = computed["per_layer"][0].numpy()
    assert got.shape == (5,)
    assert _rel(got, step["lpips_per_layer"][0]) <= PER_LAYER_REL
    assert _rel(computed["per_image"][0], step["lpips_per_image"][0]) <= PER_IMAGE_REL
    for k, diff in enumerate(computed["diffs"]):
        mean = diff[0].mean(dim=(1, 2)).numpy()
        assert mean.shape == (LAYER_CHANNELS[k],)
        assert _rel_l2(mean, step[f"lpips_pair0/diff_channel_mean/{k}"]) <= DIFF_MEAN_RELL2, k


def test_first_pair_internals(golden, computed):
    _, step, _ = golden
    tap_stats = step["lpips_pair0/tap_stats"]  # [2 images, 5 taps, 5]
    scaled_stats = step["lpips_pair0/scaled_input_stats"]  # [2 images, 3 channels, 5]
    h, w = computed["scaled"][0].shape[-2:]
    for i in range(2):
        for k, tap in enumerate(computed["taps"][i]):
            assert tap.shape == (1, LAYER_CHANNELS[k], h >> k, w >> k)
            s = _stats(tap)
            assert _rel(s[:2], tap_stats[i, k, :2]) <= STATS_REL, (i, k)
        for c in range(3):
            s = _stats(computed["scaled"][i][0, c])
            assert _rel(s[:4], scaled_stats[i, c, :4]) <= STATS_REL, (i, c)


def test_second_stored_pair_matches(golden, pairs, computed):
    rows, _, _ = pairs
    _, step, _ = golden
    n = rows[1]
    assert _rel(computed["per_layer"][1], step["lpips_per_layer"][n]) <= PER_LAYER_REL
    assert _rel(computed["per_image"][1], step["lpips_per_image"][n]) <= PER_IMAGE_REL
    # the two pairs differ (the check is not passing on one repeated value)
    assert _rel(step["lpips_per_layer"][n], step["lpips_per_layer"][0]) > 10 * PER_LAYER_REL


def test_per_image_is_the_ordered_sum_of_layers(computed):
    layers = computed["per_layer"]
    total = ((((layers[:, 0] + layers[:, 1]) + layers[:, 2]) + layers[:, 3]) + layers[:, 4])
    torch.testing.assert_close(computed["per_image"], total, rtol=0, atol=0)


def test_gradient_flows_and_matches_float64(golden, model, pairs):
    _, in0, in1 = pairs
    x0 = in0[:1].clone().requires_grad_(True)
    x1 = in1[:1].clone().requires_grad_(True)
    model(x0, x1).sum().backward()
    g32 = x0.grad
    assert torch.isfinite(g32).all() and g32.abs().max() > 0
    assert torch.isfinite(x1.grad).all() and x1.grad.abs().max() > 0

    sd = {**_trunk(golden[0]), **_lins(golden[0])}
    model64 = lpips_from_state_dict(sd, dtype=torch.float64)
    y0 = in0[:1].double().requires_grad_(True)
    model64(y0, in1[:1].double()).sum().backward()
    g64 = y0.grad
    assert _rel_l2(g32.numpy(), g64.numpy()) <= 1e-3

    # finite differences in float64 on a crop (cheap), at the entries with the largest gradient
    c0 = in0[:1, :, :32, :48].double().requires_grad_(True)
    c1 = in1[:1, :, :32, :48].double()
    model64(c0, c1).sum().backward()
    grad = c0.grad.flatten()
    eps = 1e-6
    for idx in torch.topk(grad.abs(), 3).indices.tolist():
        plus, minus = c0.detach().clone(), c0.detach().clone()
        plus.view(-1)[idx] += eps
        minus.view(-1)[idx] -= eps
        with torch.no_grad():
            fd = (model64(plus, c1) - model64(minus, c1)).item() / (2 * eps)
        assert abs(fd - grad[idx].item()) <= 1e-5 * abs(grad[idx].item()), (idx, fd, grad[idx].item())


def test_identical_inputs_give_zero(model, pairs):
    _, in0, _ = pairs
    x = in0[:, :, :32, :64]
    with torch.no_grad():
        assert torch.equal(model.per_layer(x, x.clone()), torch.zeros(2, 5))
        assert torch.equal(model(x, x.clone()), torch.zeros(2))
        assert (model(x, torch.flip(x, dims=[-1])) > 0).all()


def test_normalize_channels_is_unit_length():
    f = torch.rand(2, 7, 3, 5) + 0.1
    n = normalize_channels(f)
    torch.testing.assert_close(n.pow(2).sum(dim=1), torch.ones(2, 3, 5))


def test_lin_path_accepts_lpips_pth_layout(golden, vgg_file, tmp_path, model):
    lin = tmp_path / "vgg.pth"  # the lpips package's own file is a plain {lin{k}.model.1.weight: tensor} dict
    torch.save(_lins(golden[0]), lin)
    other = load_lpips(vgg_file, lin_path=lin)
    for a, b in zip(other.lins, model.lins):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_missing_files_are_named(vgg_file, tmp_path):
    missing = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(ModelMissingError, match=str(missing)):
        load_lpips(missing)
    missing_lin = tmp_path / "lin.safetensors"
    with pytest.raises(ModelMissingError, match=str(missing_lin)):
        load_lpips(vgg_file, lin_path=missing_lin)


def test_wrong_vgg_shape_is_refused(golden, tmp_path):
    sd = _trunk(golden[0])
    sd["features.10.weight"] = torch.zeros(256, 64, 3, 3)  # conv 10 takes 128 channels
    path = tmp_path / "my_vgg16.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"my_vgg16\.pth.*features\.10\.weight"):
        load_lpips(path)


def test_not_a_vgg16_is_refused(golden, tmp_path):
    sd = _trunk(golden[0])
    del sd["features.28.weight"], sd["features.28.bias"]
    path = tmp_path / "vgg13.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"vgg13\.pth.*missing.*features\.28\.weight"):
        load_lpips(path)


def test_wrong_lin_shape_is_refused(golden, vgg_file, tmp_path):
    lins = _lins(golden[0])
    lins["lin2.model.1.weight"] = torch.ones(1, 128, 1, 1)
    path = tmp_path / "alex_lins.safetensors"
    save_file(lins, str(path))
    with pytest.raises(CheckpointError, match=r"alex_lins\.safetensors.*lin2\.model\.1\.weight"):
        load_lpips(vgg_file, lin_path=path)
