"""Low-rank adapters (LoRA) for the LatentSync U-Net: training with ``peft``, kohya-style files, inference.

Training: :func:`add_lora` freezes the U-Net and injects peft ``lora.Linear`` layers into the attention
projections chosen by a target set (:data:`LORA_TARGETS`). peft's ``inject_adapter_in_model`` is used (not
``get_peft_model``), so the model stays our ``UNet3DConditionModel`` with its ``forward`` and module paths;
only an adapted Linear ``X`` gains children ``X.base_layer`` / ``X.lora_A.default`` / ``X.lora_B.default``
(:func:`base_state_dict` gives the plain U-Net keys back).

Files: :func:`save_lora` writes a ``.safetensors`` with kohya/ComfyUI keys, per adapted Linear at module
path ``p`` (dots -> underscores)::

    lora_unet_<p>.lora_down.weight   [r, in_features]
    lora_unet_<p>.lora_up.weight     [out_features, r]
    lora_unet_<p>.alpha              scalar; the update is  W += strength * alpha / r * up @ down

and string metadata (``latentsync_version``, ``resolution``, ``rank``, ``alpha``, ``targets``,
``trainable_set``, ``steps``, ``dataset_size``, ``ss_network_dim``, ``ss_network_alpha``).

Inference: :func:`apply_lora` maps those keys back onto a plain U-Net (``named_modules``) and either merges
the update into the Linear weights (no cost per step) or adds it with forward hooks; :func:`remove_lora`
undoes either (merged weights are restored from a CPU backup, exactly).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import MAX_NAMED, SAFETENSORS_SUFFIX, guess_model_kind, read_checkpoint
from ..errors import CheckpointError, InputMismatchError, LatentSyncError
from ..safe_output import atomic_path

logger = logging.getLogger(__name__)

_PROJ = r"(?:to_q|to_k|to_v|to_out\.0)"
_SPATIAL = rf"(?:.+\.)?attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.{_PROJ}"
_TEMPORAL = rf"(?:.+\.)?motion_modules\.\d+\.temporal_transformer\.transformer_blocks\.\d+\.attention_blocks\.\d+\.{_PROJ}"

# target set -> full-match patterns over the U-Net's ``named_modules()`` names (nn.Linear modules only)
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "attention": (_SPATIAL,),  # spatial self- (attn1) and audio cross-attention (attn2) q/k/v/out
    "attention+motion": (_SPATIAL, _TEMPORAL),  # plus the motion modules' temporal self-attentions
}

KOHYA_PREFIX = "lora_unet_"
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
ADAPTER = "default"  # peft's adapter name
BASE_LAYER = ".base_layer"  # peft's child holding the original Linear
PEFT_WRAPPER_PREFIX = "base_model.model."  # module paths under get_peft_model's PeftModel
BASE_VERSION = "1.5"
_STATE_ATTR = "_latentsync_lora"  # on the U-Net: what apply_lora changed (for remove_lora)


# --- targets and training --------------------------------------------------------------------------


def target_module_names(unet: nn.Module, targets: str = "attention") -> list[str]:
    """Names of the ``nn.Linear`` modules a target set adapts, in ``named_modules`` order."""
    if targets not in LORA_TARGETS:
        raise LatentSyncError(f"Unknown LoRA targets {targets!r}; known: {', '.join(LORA_TARGETS)}.")
    pattern = re.compile("|".join(f"(?:{p})" for p in LORA_TARGETS[targets]))
    return [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]


def _lora_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA layers by module path (a ``PeftModel`` wrapper prefix removed)."""
    from peft.tuners.lora import LoraLayer

    return {_strip_wrapper(n): m for n, m in unet.named_modules() if isinstance(m, LoraLayer)}


def _strip_wrapper(name: str) -> str:
    return name[len(PEFT_WRAPPER_PREFIX):] if name.startswith(PEFT_WRAPPER_PREFIX) else name


def add_lora(
    unet: nn.Module,
    rank: int = 16,
    alpha: float | None = None,
    targets: str = "attention",
    dropout: float = 0.0,
    lora_dtype: torch.dtype | None = torch.float32,
) -> nn.Module:
    """Freeze ``unet`` and inject trainable LoRA adapters into the ``targets`` projections (in place).

    ``alpha`` defaults to ``rank`` (update scale ``alpha / rank`` = 1). peft's default init: ``lora_A``
    Kaiming-uniform, ``lora_B`` zero, so the output is unchanged until the first update. ``lora_dtype``:
    the adapters' dtype (float32 by default, also under a fp16/bf16 base: tiny updates vanish in half
    precision; peft casts activations to it and the result back); ``None`` keeps the base's dtype.
    Afterwards only :func:`lora_parameters` have ``requires_grad``. Returns ``unet``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if _lora_layers(unet):
        raise LatentSyncError("This U-Net already has LoRA adapters; merge (merge_trained_lora) or reload it first.")
    if int(rank) != rank or rank < 1:
        raise LatentSyncError(f"LoRA rank must be a positive integer, got {rank!r}.")
    names = target_module_names(unet, targets)
    if not names:
        raise LatentSyncError(f"The U-Net has no {targets!r} projections to adapt.")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=rank if alpha is None else alpha,
        target_modules=names,  # full paths: exact matches, never a suffix of another module
        lora_dropout=dropout,
        init_lora_weights=True,
        bias="none",
    )
    unet.requires_grad_(False)
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    params = lora_parameters(unet)
    for p in params:
        if lora_dtype is not None:
            p.data = p.data.to(lora_dtype)
        p.requires_grad_(True)
    logger.info("LoRA rank %d on %d %s projections: %d trainable parameters", rank, len(names), targets,
                sum(p.numel() for p in params))
    return unet


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (``lora_A`` / ``lora_B``), in ``named_parameters`` order (the optimiser's)."""
    return [p for n, p in unet.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def base_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The U-Net's own weights under their plain keys (``X.base_layer.weight`` -> ``X.weight``; adapters
    left out): loads into a fresh U-Net. The adapters are not folded in (see :func:`merge_trained_lora`)."""
    out = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key:
            continue
        out[_strip_wrapper(key).replace(BASE_LAYER + ".", ".")] = value
    return out


def _peft_factors(name: str, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(down [r, in], up [out, r], alpha)`` of one peft layer, alpha chosen so ``alpha / r`` is peft's scale."""
    if ADAPTER not in layer.lora_A:
        raise LatentSyncError(f"{name}: no LoRA adapter named {ADAPTER!r} (found {list(layer.lora_A)}).")
    if getattr(layer, "use_dora", {}).get(ADAPTER, False):
        raise LatentSyncError(f"{name}: DoRA adapters cannot be saved as a kohya LoRA.")
    down = layer.lora_A[ADAPTER].weight
    up = layer.lora_B[ADAPTER].weight
    rank = down.shape[0]
    scale = float(layer.scaling[ADAPTER])
    alpha = float(layer.lora_alpha[ADAPTER])
    if abs(alpha / rank - scale) > 1e-12 * max(1.0, abs(scale)):  # rsLoRA or a rescaled adapter
        alpha = scale * rank
    return down, up, alpha


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The trained adapters as a kohya-style state dict (CPU, contiguous, the adapters' dtype; ``alpha``
    a float32 scalar). See the module docstring for the keys."""
    layers = _lora_layers(unet)
    if not layers:
        raise LatentSyncError("The U-Net has no LoRA adapters (add_lora was not called).")
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        down, up, alpha = _peft_factors(name, layer)
        key = kohya_key(name)
        out[key + DOWN] = down.detach().to("cpu").contiguous()
        out[key + UP] = up.detach().to("cpu").contiguous()
        out[key + ALPHA] = torch.tensor(alpha, dtype=torch.float32)
    return out


def kohya_key(module_name: str) -> str:
    """``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``."""
    return KOHYA_PREFIX + module_name.replace(".", "_")


def merge_trained_lora(unet: nn.Module) -> nn.Module:
    """Fold the trained peft adapters into the base Linear weights and put the plain Linears back (in
    place): afterwards ``unet.state_dict()`` has exactly the original keys, e.g. to export a full
    checkpoint. Same float32 math as a merged :func:`apply_lora` at strength 1. Returns ``unet``, frozen."""
    layers = _lora_layers(unet)
    if not layers:
        raise LatentSyncError("The U-Net has no LoRA adapters (add_lora was not called).")
    for name, layer in layers.items():
        down, up, alpha = _peft_factors(name, layer)
        base = layer.get_base_layer()
        _merge_into(base.weight, down, up, alpha / down.shape[0])
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, base)  # "0" works in a ModuleList
    if hasattr(unet, "peft_config"):
        del unet.peft_config
    return unet.requires_grad_(False)


def _merge_into(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
    """``weight += scale * up @ down`` in place, computed in float32 and rounded once to the weight's dtype."""
    with torch.no_grad():
        delta = (up.detach().to(weight.device, torch.float32) * scale) @ down.detach().to(weight.device, torch.float32)
        weight.copy_((weight.float() + delta).to(weight.dtype))


# --- files -----------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """Metadata string: integral floats without ``.0`` (``16``, not ``16.0``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _targets_of(names: list[str], unet: nn.Module) -> str:
    """The target set whose projections are exactly the adapted module paths ``names``, or ``"custom"``."""
    paths = [path for path, _ in _linear_table(unet).values()]
    for targets, patterns in LORA_TARGETS.items():
        pattern = re.compile("|".join(f"(?:{p})" for p in patterns))
        if {n for n in paths if pattern.fullmatch(n)} == set(names):
            return targets
    return "custom"


def save_lora(path: str | os.PathLike, unet: nn.Module, metadata: Mapping[str, Any]) -> str:
    """Write the adapters to ``path`` (``.safetensors``) atomically: a failed write leaves an earlier file
    untouched. ``metadata`` must give ``resolution`` (256 or 512) and should give ``steps`` and
    ``dataset_size``; ``latentsync_version`` defaults to ``"1.5"``. ``rank``, ``alpha``, ``targets``,
    ``trainable_set`` and the kohya ``ss_network_dim`` / ``ss_network_alpha`` come from the model. All values
    are stored as strings. Returns the absolute path written."""
    import safetensors.torch

    path = os.path.abspath(os.fspath(path))
    if not path.lower().endswith(SAFETENSORS_SUFFIX):
        raise LatentSyncError(f"LoRA files are saved as .safetensors; got {path}.")
    if "resolution" not in metadata:
        raise LatentSyncError("save_lora: metadata needs the training 'resolution' (256 or 512).")
    sd = lora_state_dict(unet)
    layers = _lora_layers(unet)
    ranks = {int(sd[kohya_key(n) + DOWN].shape[0]) for n in layers}
    alphas = {float(sd[kohya_key(n) + ALPHA]) for n in layers}
    rank = ranks.pop() if len(ranks) == 1 else max(ranks)
    alpha = alphas.pop() if len(alphas) == 1 else max(alphas)
    meta = {"latentsync_version": BASE_VERSION}
    meta.update({str(k): _fmt(v) for k, v in metadata.items()})
    meta.update({
        "rank": _fmt(rank),
        "alpha": _fmt(alpha),
        "targets": _targets_of(list(layers), unet),
        "trainable_set": "lora",
        "ss_network_dim": _fmt(rank),
        "ss_network_alpha": _fmt(alpha),
    })
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(sd, tmp, metadata=meta)
    logger.info("Saved LoRA (%d modules, rank %s) to %s", len(layers), meta["rank"], path)
    return path


@dataclass(frozen=True)
class _Factors:
    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    alpha: float


def _parse(sd: Mapping[str, torch.Tensor], name: str) -> dict[str, _Factors]:
    """Group kohya keys by module (``lora_unet_...`` -> factors); CheckpointError for anything else."""
    if not sd:
        raise CheckpointError(f"{name} holds no tensors: it is not a LatentSync LoRA.")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for key, value in sd.items():
        suffix = next((s for s in (DOWN, UP, ALPHA) if key.endswith(s)), None)
        if not key.startswith(KOHYA_PREFIX) or suffix is None:
            foreign.append(key)
            continue
        groups.setdefault(key[: -len(suffix)], {})[suffix] = value
    if foreign and len(foreign) == len(sd):
        raise CheckpointError(
            f"{name} is not a LoRA (no {KOHYA_PREFIX}*.lora_down/lora_up keys); it looks like {guess_model_kind(sd)}."
        )
    if foreign:
        raise CheckpointError(
            f"{name} has {len(foreign)} keys that are not LatentSync U-Net LoRA keys "
            f"(e.g. {', '.join(foreign[:MAX_NAMED])}); expected {KOHYA_PREFIX}<module>{DOWN} / {UP} / {ALPHA}."
        )
    out = {}
    for module, parts in groups.items():
        if DOWN not in parts or UP not in parts:
            lacking = DOWN if DOWN not in parts else UP
            raise CheckpointError(f"{name}: {module} has no {lacking[1:]} tensor.")
        down, up = parts[DOWN], parts[UP]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise CheckpointError(
                f"{name}: {module} has malformed factors (lora_down {list(down.shape)}, lora_up {list(up.shape)}; "
                "expected [r, in] and [out, r])."
            )
        rank = down.shape[0]
        if ALPHA in parts:
            if parts[ALPHA].numel() != 1:
                raise CheckpointError(f"{name}: {module}.alpha must be a scalar, got shape {list(parts[ALPHA].shape)}.")
            alpha = float(parts[ALPHA].reshape(()).float())
        else:
            alpha = float(rank)  # kohya's convention: no alpha means scale 1
        out[module] = _Factors(down, up, alpha)
    return out


def load_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of a LatentSync LoRA ``.safetensors`` (tensors on CPU, file dtype).

    Raises :class:`ModelMissingError` for a missing file and :class:`CheckpointError` (naming the file) for
    another format, an unreadable file, malformed keys, or a LoRA without LatentSync metadata."""
    from safetensors import safe_open

    path = os.fspath(path)
    name = os.path.basename(path)
    if not path.lower().endswith(SAFETENSORS_SUFFIX):
        raise CheckpointError(f"{name}: LoRA files are read from .safetensors only (not pickled .pt/.ckpt).")
    sd = read_checkpoint(path)  # ModelMissingError / CheckpointError for a missing or unreadable file
    with safe_open(path, framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
    _parse(sd, name)
    if "latentsync_version" not in metadata:
        raise CheckpointError(
            f"{name} is a LoRA without LatentSync metadata (no latentsync_version): it was not trained for the "
            "LatentSync U-Net (image-model LoRAs do not fit it)."
        )
    return sd, metadata


# --- inference -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraApplied:
    """What :func:`apply_lora` did: the module paths it changed, merged or hooked, at which strength."""

    modules: tuple[str, ...]
    merged: bool
    strength: float


@dataclass
class _AppliedState:
    backups: dict[str, torch.Tensor] = field(default_factory=dict)  # module path -> original weight (CPU)
    unrestorable: list[str] = field(default_factory=list)  # merged without a backup
    hooks: list[Any] = field(default_factory=list)  # (hook handle, module, buffer names)
    applied: list[LoraApplied] = field(default_factory=list)


def _linear_table(unet: nn.Module) -> dict[str, tuple[str, nn.Linear]]:
    """kohya key -> (module path, Linear); under peft the original Linear is ``X.base_layer``, keyed as ``X``."""
    table = {}
    for n, m in unet.named_modules():
        if isinstance(m, nn.Linear) and ".lora_" not in n:
            path = _strip_wrapper(n)
            path = path[: -len(BASE_LAYER)] if path.endswith(BASE_LAYER) else path
            table[kohya_key(path)] = (path, m)
    return table


def _describe(info: Mapping[str, Any]) -> str:
    version = f"LatentSync {info['latentsync_version']}" if "latentsync_version" in info else "a LatentSync U-Net"
    return f"{version} at {info.get('resolution', '?')} px"


def check_lora_metadata(metadata: Mapping[str, Any] | None, expect: Mapping[str, Any] | None, name: str) -> None:
    """Raise :class:`InputMismatchError` when the LoRA's ``latentsync_version`` / ``resolution`` differ
    from ``expect`` (keys missing on either side are not checked)."""
    if not metadata or not expect:
        return
    keys = [k for k in ("latentsync_version", "resolution") if k in expect and k in metadata]
    if all(_fmt(metadata[k]).strip() == _fmt(expect[k]).strip() for k in keys):
        return
    raise InputMismatchError(
        f"{name}: this LoRA was trained for {_describe(metadata)}; the loaded U-Net is {_describe(expect)}. "
        "Use a LoRA trained for this model (or load the U-Net it was trained on)."
    )


def apply_lora(
    unet: nn.Module,
    lora: Mapping[str, torch.Tensor] | str | os.PathLike,
    strength: float = 1.0,
    merge: bool = True,
    metadata: Mapping[str, Any] | None = None,
    expect: Mapping[str, Any] | None = None,
    keep_backup: bool = True,
    name: str | None = None,
) -> LoraApplied:
    """Add a LoRA to a plain U-Net for inference: ``W' = W + strength * alpha / r * up @ down``.

    Args:
        lora: a kohya-style state dict (:func:`lora_state_dict`, :func:`load_lora`) or a ``.safetensors``
            path (then its metadata is read too).
        strength: the update's multiplier (0 = no change, 1 = as trained; negative and >1 are allowed).
        merge: True adds the update into the Linear weights in place (computed in float32, stored in the
            weight's dtype and device; no cost per step); False adds ``x @ down.T @ up.T`` with forward
            hooks (factors are non-persistent buffers, so they move with ``unet.to(...)`` and stay out of
            ``state_dict``).
        metadata / expect: the LoRA's metadata and what the U-Net is, e.g.
            ``{"latentsync_version": "1.5", "resolution": 256}``: a mismatch raises InputMismatchError.
        keep_backup: with ``merge``, keep a CPU copy of each changed weight so :func:`remove_lora` restores
            it exactly (costs the changed weights' size in RAM).

    Several LoRAs stack; :func:`remove_lora` takes all of them off. Raises :class:`CheckpointError` when
    keys name no Linear of this U-Net or shapes differ.
    """
    if isinstance(lora, str | os.PathLike):
        name = name or os.path.basename(os.fspath(lora))
        sd, file_metadata = load_lora(lora)
        metadata = file_metadata if metadata is None else metadata
    else:
        sd = dict(lora)
    name = name or "the LoRA"
    check_lora_metadata(metadata, expect, name)
    factors = _parse(sd, name)
    table = _linear_table(unet)
    unknown = [k for k in factors if k not in table]
    if unknown:
        raise CheckpointError(
            f"{name}: {len(unknown)} of its {len(factors)} modules are not in this U-Net "
            f"(e.g. {', '.join(unknown[:MAX_NAMED])}); it was made for another model."
        )
    for key, f in factors.items():
        _, module = table[key]
        if f.down.shape[1] != module.in_features or f.up.shape[0] != module.out_features:
            raise CheckpointError(
                f"{name}: {key} is {f.up.shape[0]}x{f.down.shape[1]} (out x in) but the U-Net's layer is "
                f"{module.out_features}x{module.in_features}; it was made for another model size."
            )
    state = getattr(unet, _STATE_ATTR, None) or _AppliedState()
    strength = float(strength)
    touched = []
    for key, f in factors.items():
        path, module = table[key]
        weight = module.weight
        scale = strength * f.alpha / f.down.shape[0]
        if merge:
            if keep_backup and path not in state.backups:
                state.backups[path] = weight.detach().to("cpu", copy=True)
            elif not keep_backup:
                state.unrestorable.append(path)
            _merge_into(weight, f.down, f.up, scale)
        else:
            # scale folded into the small factor in float32, then both stored in the weight's dtype
            up = (f.up.to(weight.device, torch.float32) * scale).to(weight.dtype)
            state.hooks.append(_hook(module, f.down.to(weight.device, weight.dtype), up, len(state.hooks)))
        touched.append(path)
    applied = LoraApplied(tuple(touched), bool(merge), strength)
    state.applied.append(applied)
    object.__setattr__(unet, _STATE_ATTR, state)  # a plain attribute: not a submodule, not in state_dict
    logger.info("Applied %s to %d modules (%s, strength %g)", name, len(touched), "merged" if merge else "hooked",
                strength)
    return applied


def _hook(module: nn.Linear, down: torch.Tensor, up: torch.Tensor, index: int):
    """Register the factors as non-persistent buffers and a forward hook adding ``x @ down.T @ up.T``."""
    names = (f"lora_down_{index}", f"lora_up_{index}")
    module.register_buffer(names[0], down, persistent=False)
    module.register_buffer(names[1], up, persistent=False)

    def add_update(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        d, u = getattr(mod, names[0]), getattr(mod, names[1])
        return output + F.linear(F.linear(x, d.to(x.dtype)), u.to(x.dtype))

    return module.register_forward_hook(add_update), module, names


def applied_loras(unet: nn.Module) -> list[LoraApplied]:
    """The LoRAs :func:`apply_lora` added and :func:`remove_lora` has not removed, in order."""
    state = getattr(unet, _STATE_ATTR, None)
    return list(state.applied) if state else []


def remove_lora(unet: nn.Module) -> int:
    """Take every applied LoRA off ``unet``: remove the hooks and buffers, restore merged weights from their
    backups. Returns the number of modules restored or unhooked. Raises :class:`LatentSyncError` when a
    LoRA was merged with ``keep_backup=False`` (reload the U-Net instead)."""
    state = getattr(unet, _STATE_ATTR, None)
    if state is None:
        return 0
    if state.unrestorable:
        raise LatentSyncError(
            f"A LoRA was merged into {len(state.unrestorable)} layers without a backup; reload the U-Net to remove it."
        )
    count = 0
    for handle, module, names in reversed(state.hooks):
        handle.remove()
        for buffer in names:
            delattr(module, buffer)
        count += 1
    table = {path: module for path, module in _linear_table(unet).values()}
    with torch.no_grad():
        for path, original in state.backups.items():
            table[path].weight.copy_(original)
            count += 1
    object.__delattr__(unet, _STATE_ATTR)
    return count
