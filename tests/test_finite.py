"""check_finite (issue 11): a NaN/Inf stage output stops with an error naming the stage and the fix."""

from __future__ import annotations

import pytest
import torch

from latentsync_core.errors import LatentSyncError
from latentsync_core.finite import NonFiniteError, check_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_passes_through(dtype):
    x = torch.randn(2, 4, 3, 8, 8).to(dtype)
    assert check_finite(x, "unet") is x
    ints = torch.arange(5)
    assert check_finite(ints, "vae_decode") is ints  # not floating: nothing to check


@pytest.mark.parametrize(
    "stage, names, fix",
    [("unet", "U-Net", "bf16 or fp32"), ("vae_encode", "VAE encode", "VAE in fp32"), ("vae_decode", "VAE decode", "VAE in fp32")],
)
def test_nan_and_inf_name_the_stage_and_the_fix(stage, names, fix):
    x = torch.zeros(1, 4, 16, 8, 8, dtype=torch.float16)
    x[0, 1, 3, 2, 2] = float("nan")
    x[0, 2, 5] = float("inf")
    with pytest.raises(NonFiniteError) as err:
        check_finite(x, stage, where="frames 16-31")
    message = str(err.value)
    assert isinstance(err.value, LatentSyncError)
    assert names in message and fix in message and "frames 16-31" in message and "float16" in message
    assert "65 NaN/Inf" in message and "(1 NaN)" in message
    assert "\n" not in message


def test_unknown_stage():
    with pytest.raises(ValueError, match="stage"):
        check_finite(torch.zeros(1), "whisper")
