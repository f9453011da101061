"""The whisper-tiny audio encoder LatentSync conditions on, built on ``transformers``' ``WhisperEncoder``.

Reads OpenAI's checkpoint format (``whisper/tiny.pt``: ``{"dims", "model_state_dict"}``, fp16) and Hugging
Face whisper models (a folder with ``config.json`` + ``model.safetensors``, or the ``.safetensors`` file
itself). Only the encoder's tensors are kept; the text decoder is never materialised.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from ..checkpoints import as_state_dict, guess_model_kind, read_checkpoint, strip_prefixes
from ..constants import AUDIO_EMBED_DIM, WHISPER_FILENAME, WHISPER_LAYERS
from ..errors import CheckpointError

WHISPER_HEAD_WIDTH = 64  # every whisper size uses 64-wide attention heads (tiny: 384 / 6)

# OpenAI name fragment -> transformers name fragment (encoder only)
_OPENAI_TO_HF = (
    (r"^positional_embedding$", "embed_positions.weight"),
    (r"^blocks\.(\d+)\.attn\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"^blocks\.(\d+)\.attn\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"^blocks\.(\d+)\.attn\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"^blocks\.(\d+)\.attn\.out\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.attn_ln\.", r"layers.\1.self_attn_layer_norm."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2."),
    (r"^blocks\.(\d+)\.mlp_ln\.", r"layers.\1.final_layer_norm."),
    (r"^ln_post\.", "layer_norm."),
)


class WhisperAudioEncoder(nn.Module):
    """Whisper's audio encoder returning the hidden states LatentSync uses (``LATENTSYNC_WHISPER``).

    ``forward(mel [B, n_mels, window_frames]) -> [B, n_ctx, 5, width]``: the input embedding (after the
    positional embedding) and every block's output, stacked; the final layer norm is not applied.
    For whisper tiny: ``[B, 80, 3000] -> [B, 1500, 5, 384]``.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    @property
    def n_ctx(self) -> int:
        """Encoder steps per window (1500 = 30 s at 50 steps/s)."""
        return int(self.encoder.config.max_source_positions)

    @property
    def window_frames(self) -> int:
        """Mel frames per window (3000 = 30 s): the encoder only accepts exactly this many."""
        return self.n_ctx * self.encoder.conv1.stride[0] * self.encoder.conv2.stride[0]

    @property
    def width(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv1.weight.dtype

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        states: list[torch.Tensor] = []
        layers = self.encoder.layers

        def keep_input(_module, args, kwargs):
            states.append(args[0] if args else kwargs["hidden_states"])

        def keep_output(_module, _args, output):
            states.append(output[0] if isinstance(output, tuple) else output)

        hooks = [layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
        hooks += [layer.register_forward_hook(keep_output) for layer in layers]
        try:
            self.encoder(mel.to(device=self.device, dtype=self.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(states, dim=2)


def load_whisper(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> WhisperAudioEncoder:
    """Load a whisper audio encoder.

    Args:
        checkpoint: OpenAI ``tiny.pt`` (``{"dims", "model_state_dict"}``; dims are read from the file), a
            Hugging Face whisper folder (``config.json`` + ``model.safetensors``/``pytorch_model.bin``),
            or such a ``.safetensors`` file (its ``config.json`` beside it, else dims from the shapes).
        device, dtype: where and in which precision the encoder runs (fp32 is what the official code
            computes in; the checkpoint's own fp16 weights are up-cast).

    Returns:
        :class:`WhisperAudioEncoder` in eval mode without gradients.

    Raises:
        ModelMissingError: the path does not exist.
        CheckpointError: unreadable, or not a whisper model (the message says what it looks like).
    """
    path = os.fspath(checkpoint)
    state, dims = _read_whisper_file(path)
    name = os.path.basename(path.rstrip("/\\")) or path
    encoder_state = _encoder_state(state, name)
    config = _encoder_config(encoder_state, dims, name)

    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        encoder = WhisperEncoder(WhisperConfig(**config))
    try:
        encoder.load_state_dict(encoder_state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{name}: the whisper encoder weights do not fit its own dimensions ({exc}).") from exc
    model = WhisperAudioEncoder(encoder).to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def _read_whisper_file(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, dims or HF config or None) from any of the supported layouts."""
    if os.path.isdir(path):
        for weights in ("model.safetensors", "pytorch_model.bin", os.path.basename(WHISPER_FILENAME)):
            if os.path.isfile(os.path.join(path, weights)):
                return _read_whisper_file(os.path.join(path, weights))
        raise CheckpointError(f"{path} is a folder without model.safetensors, pytorch_model.bin or tiny.pt in it.")
    config = None
    config_path = os.path.join(os.path.dirname(path), "config.json")
    if not path.lower().endswith(".pt") and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    if path.lower().endswith(".safetensors"):
        return _read_safetensors_encoder(path), config
    obj = read_checkpoint(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("dims"), Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        return dict(obj["model_state_dict"]), dict(obj["dims"])
    return as_state_dict(obj, os.path.basename(path)), config


def _read_safetensors_encoder(path: str) -> dict[str, torch.Tensor]:
    """Only the encoder tensors of a (possibly full) whisper ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        return read_checkpoint(path)  # raises ModelMissingError with the usual message
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            has_decoder = any("decoder." in k for k in keys)
            wanted = [k for k in keys if "encoder." in k or not has_decoder]
            if not any(k.endswith("conv1.weight") for k in wanted):  # not whisper: describe it
                return {k: f.get_slice(k) for k in keys}  # shapes only, enough for the message
            return {k: f.get_tensor(k) for k in wanted}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{os.path.basename(path)} is not a readable .safetensors file ({exc}).") from exc


def _encoder_state(state: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Encoder tensors under ``transformers``' ``WhisperEncoder`` names (``conv1.weight``, ``layers.0...``)."""
    state = strip_prefixes(dict(state), prefixes=("module.", "model."))
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder and "conv1.weight" in state:
        encoder = dict(state)  # a bare encoder state dict
    if "conv1.weight" not in encoder or not (
        any(k.startswith("blocks.") for k in encoder) or any(k.startswith("layers.") for k in encoder)
    ):
        raise CheckpointError(
            f"{name} is not a whisper model: it looks like {guess_model_kind(state)}. The whisper loader "
            f"needs whisper tiny ({WHISPER_FILENAME} from the LatentSync release) in models/latentsync/whisper/."
        )
    mapped = {}
    for key, value in encoder.items():
        for pattern, replacement in _OPENAI_TO_HF:
            key = re.sub(pattern, replacement, key)
        mapped[key] = value
    return mapped


def _encoder_config(state: Mapping[str, torch.Tensor], dims: Mapping | None, name: str) -> dict:
    """``WhisperConfig`` keyword arguments for the encoder, from OpenAI dims, a HF config, or the shapes."""
    conv1 = state["conv1.weight"]
    width, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    n_layers = len({int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))})
    n_ctx = int(state["embed_positions.weight"].shape[0]) if "embed_positions.weight" in state else 1500
    heads = width // WHISPER_HEAD_WIDTH
    dims = dims or {}
    if "n_audio_state" in dims:  # OpenAI
        found = (dims["n_mels"], dims["n_audio_state"], dims["n_audio_layer"], dims["n_audio_ctx"])
        heads = int(dims["n_audio_head"])
    elif "d_model" in dims:  # Hugging Face config.json
        found = (dims["num_mel_bins"], dims["d_model"], dims["encoder_layers"], dims["max_source_positions"])
        heads = int(dims["encoder_attention_heads"])
    else:
        found = (n_mels, width, n_layers, n_ctx)
    if tuple(int(x) for x in found) != (n_mels, width, n_layers, n_ctx):
        raise CheckpointError(
            f"{name}: its stated dimensions (mels, width, layers, ctx) = {tuple(found)} do not match its tensors "
            f"{(n_mels, width, n_layers, n_ctx)}; the file is damaged or mixes two models."
        )
    if n_layers + 1 != WHISPER_LAYERS or width != AUDIO_EMBED_DIM or width % heads:
        raise CheckpointError(
            f"{name} is a whisper encoder with {n_layers} layers and width {width}; LatentSync needs whisper "
            f"tiny (4 layers, width 384), whose {WHISPER_LAYERS} hidden states the U-Net was trained on."
        )
    return {
        "num_mel_bins": n_mels,
        "d_model": width,
        "encoder_layers": n_layers,
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": int(state["layers.0.fc1.weight"].shape[0]),
        "max_source_positions": n_ctx,
    }
