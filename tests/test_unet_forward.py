"""U-Net forward behaviour beyond fp32 parity: reduced precision, channels-last, timestep forms,
batch independence (CFG halves), odd sizes and input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync_core.errors import InputMismatchError
from latentsync_core.unet import load_unet

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "unet"
CONFIG, CKPT = FIXTURES / "config.json", FIXTURES / "latentsync_unet.pt"
FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def io_cases():
    with np.load(FIXTURES / "io.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def unet():
    return load_unet(CONFIG, CKPT)


def run(model, sample, timestep, ehs):
    with torch.no_grad():
        return model(sample, timestep, ehs)


@pytest.mark.parametrize(("dtype", "max_abs"), [(torch.bfloat16, 0.2), (torch.float16, 0.03)])
def test_reduced_precision_forward(io_cases, dtype, max_abs):
    """bf16 (the GPU default) and fp16 run end to end and stay close to the fp32 reference."""
    model = load_unet(CONFIG, CKPT, dtype=dtype)
    sample, t, ehs, ref = (io_cases[f"f5_t251_{k}"] for k in ("sample", "timestep", "ehs", "out"))
    out = run(model, sample.to(dtype), t, ehs.to(dtype))
    assert out.dtype == dtype and out.shape == ref.shape
    err = (out.float() - ref).abs()
    assert torch.isfinite(out).all()
    assert err.max().item() < max_abs and err.mean().item() < max_abs / 5
    assert torch.corrcoef(torch.stack([out.float().flatten(), ref.flatten()]))[0, 1] > 0.999


def test_channels_last_matches(io_cases):
    model = load_unet(CONFIG, CKPT).to(memory_format=torch.channels_last)
    assert model.channels_last
    out = run(model, *(io_cases[f"b2_t501_{k}"] for k in ("sample", "timestep", "ehs")))
    assert (out - io_cases["b2_t501_out"]).abs().max().item() <= FP32_TOL


def test_timestep_forms(unet, io_cases):
    sample, ehs, ref = (io_cases[f"f5_t251_{k}"] for k in ("sample", "ehs", "out"))
    for t in (251.0, torch.tensor([251]), torch.tensor([251.0], dtype=torch.float64)):  # 0-d: parity tests
        assert (run(unet, sample, t, ehs) - ref).abs().max().item() <= FP32_TOL, t
    # [B,F,S,D] audio is accepted as well as [B*F,S,D]
    assert (run(unet, sample, 251, ehs.unsqueeze(0)) - ref).abs().max().item() <= FP32_TOL


def test_batch_rows_are_independent_and_per_sample_timesteps(unet, io_cases):
    """The CFG batch (unconditional half first) is two independent samples: GroupNorm statistics and
    attention never mix them, and each row takes its own timestep."""
    sample, ehs, ref = (io_cases[f"b2_t501_{k}"] for k in ("sample", "ehs", "out"))
    frames = sample.shape[2]
    out = run(unet, sample, torch.tensor([501, 1]), ehs)
    assert (out[:1] - ref[:1]).abs().max().item() <= FP32_TOL  # row 0 as in the t=501 batch
    assert (out[1:] - ref[1:]).abs().max().item() > 1e-2  # row 1 at t=1 differs from t=501
    single = run(unet, sample[1:], 1, ehs[frames:])
    assert (out[1:] - single).abs().max().item() <= FP32_TOL


def test_unconditional_row_is_the_model_on_zero_audio(unet, io_cases):
    """CFG's unconditional half: row 0 of the golden b2 batch is the U-Net on all-zero audio. Our forward
    on that row alone with zero audio gives the golden output, and real audio changes it (the audio
    cross-attention is live, so zero audio is a real "no audio" condition, not a no-op)."""
    sample, ehs, ref = (io_cases[f"b2_t501_{k}"] for k in ("sample", "ehs", "out"))
    frames = sample.shape[2]
    zero = torch.zeros_like(ehs[:frames])
    assert (run(unet, sample[:1], 501, zero) - ref[:1]).abs().max().item() <= FP32_TOL
    with_audio = run(unet, sample[:1], 501, ehs[frames:])
    assert (with_audio - ref[:1]).abs().max().item() > 1e-2


def test_upsampling_runs_in_float32_on_mps(monkeypatch):
    """Apple MPS: half-precision nearest upsampling gives black frames (upstream #48), so Upsample3D
    interpolates in float32 there and returns the input dtype (fake device: the predicate says MPS)."""
    from latentsync_core.unet import resnet

    seen = []
    real = resnet.F.interpolate
    monkeypatch.setattr(resnet.F, "interpolate", lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))
    layer = resnet.Upsample3D(4).to(torch.float16)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float16)
    assert resnet.needs_float32_interpolate(x) is False  # CPU fp16: unchanged
    layer(x)
    assert seen == [torch.float16]
    from types import SimpleNamespace

    mps = SimpleNamespace(type="mps")
    assert resnet.needs_float32_interpolate(SimpleNamespace(dtype=torch.float16, device=mps))
    assert resnet.needs_float32_interpolate(SimpleNamespace(dtype=torch.bfloat16, device=mps))
    assert not resnet.needs_float32_interpolate(SimpleNamespace(dtype=torch.float32, device=mps))
    # the layer on a (simulated) MPS tensor: float32 interpolation, result in the layer's dtype
    monkeypatch.setattr(resnet, "needs_float32_interpolate", lambda t: t.dtype != torch.float32)
    seen.clear()
    out = layer(x)
    assert seen == [torch.float32] and out.dtype == torch.float16 and out.shape == (2, 4, 6, 10)
def test_chunk_wide_resnet_norm(unet, io_cases):
    """ResNet GroupNorm statistics span the chunk: the first 5 frames of a 16-frame chunk do not give the
    output of the same 5 frames alone (the golden f5 case pins the 5-frame result)."""
    sample, ehs = io_cases["b1_t951_sample"][:, :, :5, :16, :16], io_cases["b1_t951_ehs"][:5]
    alone = run(unet, sample, 951, ehs)
    in_chunk = run(unet, torch.cat([sample, sample.flip(2)], dim=2), 951, torch.cat([ehs, ehs.flip(0)]))[:, :, :5]
    assert (alone - in_chunk).abs().max().item() > 1e-3


def test_size_not_divisible_by_8(unet):
    torch.manual_seed(0)
    sample = torch.randn(1, 13, 3, 12, 20)
    out = run(unet, sample, 500, torch.randn(3, 50, 384))
    assert out.shape == (1, 4, 3, 12, 20) and torch.isfinite(out).all()


def test_input_errors(unet):
    with pytest.raises(InputMismatchError, match="B\\*F"):
        run(unet, torch.zeros(1, 13, 4, 8, 8), 1, torch.zeros(5, 50, 384))
    with pytest.raises(InputMismatchError, match="13"):
        run(unet, torch.zeros(1, 4, 4, 8, 8), 1, torch.zeros(4, 50, 384))
    with pytest.raises(InputMismatchError, match="at most 24 frames"):
        run(unet, torch.zeros(1, 13, 25, 8, 8), 1, torch.zeros(25, 50, 384))


def test_compiles_as_one_graph(unet, io_cases):
    """torch.compile traces the whole forward without graph breaks (fullgraph) and keeps parity.
    The eager backend keeps this cheap; inductor was checked by hand (4e-6 on this case)."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(unet, backend="eager", fullgraph=True)
    sample, t, ehs, ref = (io_cases[f"f5_t251_{k}"] for k in ("sample", "timestep", "ehs", "out"))
    assert (run(compiled, sample, t, ehs) - ref).abs().max().item() <= FP32_TOL
