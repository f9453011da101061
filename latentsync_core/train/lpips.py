"""LPIPS perceptual distance, as ``lpips.LPIPS(net="vgg")`` (lpips 0.1.4, version "0.1") computes it,
without torchvision or the lpips package. It is the perceptual loss of LatentSync's stage-2 training
(``scripts/train_unet.py``: the lower half of decoded and ground-truth faces, inputs in [-1, 1]).

Per image pair:

1. scaling layer per colour channel: ``(x - shift[c]) / scale[c]`` (ImageNet statistics in [-1, 1] units);
2. VGG16 ``features[0:30]`` (torchvision layout: 13 convs 3x3 pad 1 + ReLU, max-pool 2x2 at indices 4, 9,
   16, 23), taps after the ReLUs at indices 3, 8, 15, 22, 29 (relu1_2 ... relu5_3); each image separately;
3. unit-normalise each tap over channels per pixel: ``f / (sqrt(sum_c f^2) + 1e-10)``;
4. ``diff_k = (f0_k - f1_k)^2``;
5. ``lin_k``: a 1x1 conv ``C_k -> 1`` without bias (lpips' dropout in front of it is off in eval mode);
6. spatial mean, then the sum over k = 0..4 in that order.

Weights: the trunk is torchvision's ImageNet VGG16 (``vgg16-397923af.pth``; only ``features.*`` is used),
the five linear layers are lpips' own v0.1 weights, shipped as ``assets/lpips_vgg_v0.1.safetensors``
(BSD-2-Clause, see NOTICE) under the lpips file's keys ``lin{k}.model.1.weight``, so lpips'
``weights/v0.1/vgg.pth`` loads as well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import as_state_dict, guess_model_kind, read_checkpoint, state_dict_problems
from ..errors import CheckpointError

# torchvision's VGG16 configuration "D" up to relu5_3 (its final pool, index 30, is not used by LPIPS)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_POOL_INDICES = (4, 9, 16, 23)
TAP_INDICES = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LAYER_CHANNELS = (64, 128, 256, 512, 512)
# lpips' ScalingLayer constants (float32 buffers made from these decimals)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10  # added to the channel norm, not inside the square root (lpips.normalize_tensor)

ASSET_LIN = Path(__file__).resolve().parent.parent / "assets" / "lpips_vgg_v0.1.safetensors"
LIN_KEY = "lin{k}.model.1.weight"  # lpips' own key for the k-th linear layer


def _vgg16_trunk() -> nn.Sequential:
    """``torchvision.models.vgg16().features[0:30]`` with the same module indices (so the state-dict keys
    are torchvision's ``features.{i}.weight``). ReLUs are not in-place: the loss is differentiated."""
    layers: list[nn.Module] = []
    channels = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = v
    return nn.Sequential(*layers)


def expected_vgg_shapes() -> dict[str, tuple[int, ...]]:
    """``{"features.{i}.weight": (out, in, 3, 3), "features.{i}.bias": (out,)}`` for the 13 convs."""
    shapes: dict[str, tuple[int, ...]] = {}
    channels = 3
    convs = [v for v in _VGG16_CFG if v != "M"]
    for index, out in zip(VGG_CONV_INDICES, convs):
        shapes[f"features.{index}.weight"] = (out, channels, 3, 3)
        shapes[f"features.{index}.bias"] = (out,)
        channels = out
    return shapes


def expected_lin_shapes() -> dict[str, tuple[int, ...]]:
    """``{"lin{k}.model.1.weight": (1, C_k, 1, 1)}`` for k = 0..4."""
    return {LIN_KEY.format(k=k): (1, c, 1, 1) for k, c in enumerate(LAYER_CHANNELS)}


def normalize_channels(feat: torch.Tensor) -> torch.Tensor:
    """``[N,C,h,w]`` -> unit length over C per pixel: ``f / (sqrt(sum_c f^2) + 1e-10)``."""
    return feat / (torch.sqrt(torch.sum(feat**2, dim=1, keepdim=True)) + NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1. ``forward(in0, in1)``: ``[N,3,H,W]`` pairs in [-1, 1] (no [0, 1] conversion) ->
    ``[N]`` distances (>= 0, 0 for identical images). Gradients flow into both inputs; the weights are
    frozen (``requires_grad`` False, eval mode; there is no layer whose behaviour depends on the mode).

    Debugging views of the same computation: :meth:`scale_input` (step 1), :meth:`taps` (step 2),
    :meth:`diffs` (steps 3-4), :meth:`per_layer` (``[N,5]``, steps 5-6 before the sum).
    Build it with :func:`load_lpips` (files) or :func:`lpips_from_state_dict` (tensors).
    """

    def __init__(self):
        super().__init__()
        self.features = _vgg16_trunk()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LAYER_CHANNELS)
        # constants, not weights: kept out of the state dict
        self.register_buffer("shift", torch.tensor(SHIFT, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.lins[0].weight.dtype

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,3,H,W]`` in [-1, 1] (cast to the model's dtype) -> the VGG input ``(x - shift) / scale``."""
        return (x.to(self.dtype) - self.shift) / self.scale

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[N,3,H,W]`` in [-1, 1] -> the five VGG taps before normalisation: ``[N,C_k,H/2^k,W/2^k]``,
        C = 64, 128, 256, 512, 512 (H and W multiples of 16)."""
        h = self.scale_input(x)
        out = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in TAP_INDICES:
                out.append(h)
        return out

    def diffs(self, in0: torch.Tensor, in1: torch.Tensor) -> list[torch.Tensor]:
        """The five ``(norm(f0_k) - norm(f1_k))^2`` maps ``[N,C_k,h_k,w_k]`` (the inputs of ``lin_k``)."""
        if in0.shape != in1.shape or in0.ndim != 4 or in0.shape[1] != 3:
            raise ValueError(f"LPIPS wants two [N,3,H,W] tensors of the same shape, got {tuple(in0.shape)} and {tuple(in1.shape)}")
        # each image through the net separately, as lpips does
        return [(normalize_channels(f0) - normalize_channels(f1)) ** 2 for f0, f1 in zip(self.taps(in0), self.taps(in1))]

    def per_layer(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """``[N,5]``: ``mean_hw(lin_k(diff_k))`` per image and layer (what lpips sums)."""
        cols = [lin(d).mean(dim=(2, 3)) for lin, d in zip(self.lins, self.diffs(in0, in1))]  # each [N,1]
        return torch.cat(cols, dim=1)

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """``[N]`` distances: the per-layer values summed left to right, k = 0..4 (lpips' order)."""
        layers = self.per_layer(in0, in1)
        total = layers[:, 0]
        for k in range(1, layers.shape[1]):
            total = total + layers[:, k]
        return total


def _check(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], name: str, what: str) -> None:
    """CheckpointError naming ``name`` unless every expected key is there with its shape (others are ignored)."""
    problems = state_dict_problems(state_dict, expected, extra_ok=True)
    if problems:
        looks = f" It looks like {guess_model_kind(state_dict)}." if any(k not in state_dict for k in expected) else ""
        raise CheckpointError(f"{name} is not {what}: {'; '.join(problems)}.{looks}")
    for k in expected:
        t = state_dict[k]
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name} is not {what}: {k} is not finite floating-point data.")


_VGG_WHAT = "torchvision's ImageNet VGG16 (vgg16-397923af.pth)"
_LIN_WHAT = "the LPIPS-VGG v0.1 linear layers (lpips weights/v0.1/vgg.pth)"


def lpips_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    name: str = "the given state dict",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LPIPS:
    """LPIPS from tensors: ``features.{i}.weight/bias`` (torchvision's VGG16 keys, the 13 conv indices) and
    ``lin{k}.model.1.weight`` ``[1,C_k,1,1]`` (lpips' keys); other keys are ignored. Shapes are checked
    (:class:`CheckpointError` naming ``name``)."""
    vgg = expected_vgg_shapes()
    lin = expected_lin_shapes()
    _check(state_dict, vgg, name, _VGG_WHAT)
    _check(state_dict, lin, name, _LIN_WHAT)
    return _build({k: state_dict[k] for k in vgg}, {k: state_dict[k] for k in lin}, device, dtype)


def _build(vgg: Mapping[str, torch.Tensor], lin: Mapping[str, torch.Tensor], device, dtype) -> LPIPS:
    own = dict(vgg)
    own.update({f"lins.{k}.weight": lin[LIN_KEY.format(k=k)] for k in range(len(LAYER_CHANNELS))})
    with torch.device("meta"):
        model = LPIPS()
    tensors = {k: v.detach().to(device=device, dtype=dtype) for k, v in own.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    # buffers are not in the state dict: made again on the target device (float32 decimals, then cast)
    model.shift = torch.tensor(SHIFT, dtype=torch.float32, device=device).view(1, 3, 1, 1).to(dtype)
    model.scale = torch.tensor(SCALE, dtype=torch.float32, device=device).view(1, 3, 1, 1).to(dtype)
    return model.eval().requires_grad_(False)


def _read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    name = os.path.basename(os.fspath(path))
    return as_state_dict(read_checkpoint(path), name), name


def load_lpips(
    vgg_path: str | os.PathLike,
    lin_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LPIPS:
    """LPIPS-VGG v0.1 from files, frozen and in eval mode.

    ``vgg_path``: torchvision's ``vgg16-397923af.pth`` (a plain state dict; only ``features.*`` of the
    13 convs is taken, ``classifier.*`` is ignored). ``lin_path``: the linear layers, by default the
    shipped ``assets/lpips_vgg_v0.1.safetensors``; lpips' own ``weights/v0.1/vgg.pth`` works too.
    Raises :class:`ModelMissingError` for a missing file and :class:`CheckpointError` (naming the file)
    for one that is unreadable or has missing keys or wrong shapes.
    """
    vgg_sd, vgg_name = _read(vgg_path)
    _check(vgg_sd, expected_vgg_shapes(), vgg_name, _VGG_WHAT)
    lin_sd, lin_name = _read(ASSET_LIN if lin_path is None else lin_path)
    _check(lin_sd, expected_lin_shapes(), lin_name, _LIN_WHAT)
    return _build(
        {k: vgg_sd[k] for k in expected_vgg_shapes()}, {k: lin_sd[k] for k in expected_lin_shapes()}, device, dtype
    )
