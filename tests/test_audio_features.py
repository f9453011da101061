"""Audio features: parity with the official LatentSync code (golden subsets in tests/fixtures/audio),
the seam-free mode, per-frame windows, and the whisper loader's formats and errors."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core import constants
from latentsync_core.audio import (
    audio_features,
    embed_audio,
    frame_audio_chunks,
    load_audio_file,
    load_whisper,
    log_mel,
    num_frames_for_duration,
)
from latentsync_core.errors import AudioError, CheckpointError, ModelMissingError

AUDIO = FIXTURES / "audio"
WHISPER = AUDIO / "whisper_tiny_encoder.pt"
CLIPS = ("en", "cmn", "long")
WIDTH_STRIDE = 24  # the fixtures keep every 24th feature channel where they keep all steps


def tolerance(clip: str) -> float:
    return 5e-3 if clip == "long" else 1e-3  # long's golden features are stored as float16


@pytest.fixture(scope="module")
def whisper():
    return load_whisper(WHISPER)


@pytest.fixture(scope="module")
def golden():
    return {clip: dict(np.load(AUDIO / f"{clip}.npz")) for clip in CLIPS}


@pytest.fixture(scope="module")
def pcm():
    return {clip: load_audio_file(AUDIO / f"{clip}.flac")[0][0] for clip in CLIPS}


@pytest.fixture(scope="module")
def features(whisper, pcm):
    """Our features of each clip, both modes (computed once: long takes a few seconds)."""
    out = {}
    for clip in CLIPS:
        official = audio_features(whisper, pcm[clip], constants.SAMPLE_RATE, mode="official")
        seamless = official if clip != "long" else audio_features(whisper, pcm[clip], constants.SAMPLE_RATE)
        out[clip] = {"official": official, "seamless": seamless}
    return out


# --- parity with the official code ---------------------------------------------------------------

@pytest.mark.parametrize("clip", CLIPS)
def test_decoded_samples_equal_official_loader(clip, pcm, golden):
    g = golden[clip]
    assert pcm[clip].dtype == torch.float32
    assert len(pcm[clip]) == int(g["pcm_len"])
    samples = pcm[clip].numpy()
    np.testing.assert_array_equal(samples[::97], g["pcm_probe"])  # says where a difference is
    assert hashlib.sha256(np.ascontiguousarray(samples).tobytes()).hexdigest() == str(g["pcm_sha256"])  # every sample


@pytest.mark.parametrize("clip", CLIPS)
def test_log_mel_equals_official(clip, pcm, golden):
    g = golden[clip]
    mel = log_mel(pcm[clip])
    assert tuple(mel.shape) == tuple(g["log_mel_shape"])
    err = (mel[:, g["log_mel_cols"]] - torch.from_numpy(g["log_mel_sub"].astype(np.float32))).abs().max()
    assert err <= (1e-3 if clip == "long" else 1e-4), err  # long: float16 storage (step 1e-3 near 1.5)


@pytest.mark.parametrize("clip", CLIPS)
def test_features_equal_official(clip, features, golden):
    g = golden[clip]
    ours = features[clip]["official"]
    assert tuple(ours.shape) == tuple(g["features_shape"])
    assert ours.dtype == torch.float32
    at_steps = torch.from_numpy(g["features_at_steps"].astype(np.float32))
    thin = torch.from_numpy(g["features_thin"].astype(np.float32))
    assert (ours[g["feature_steps"]] - at_steps).abs().max() <= tolerance(clip)
    assert (ours[:, :, ::WIDTH_STRIDE] - thin).abs().max() <= tolerance(clip)


@pytest.mark.parametrize("clip", CLIPS)
@pytest.mark.parametrize("fps", [25, 30])
def test_frame_chunks_equal_official(clip, fps, features, golden):
    g = golden[clip]
    index, count = g[f"chunks_fps{fps}_index"], int(g[f"chunks_fps{fps}_count"])
    chunks = frame_audio_chunks(features[clip]["official"], count, fps=fps)
    assert tuple(chunks.shape) == (count, constants.AUDIO_TOKENS_PER_FRAME, constants.AUDIO_EMBED_DIM)
    expected = torch.from_numpy(g[f"chunks_fps{fps}_thin"])
    assert (chunks[index][:, :, ::WIDTH_STRIDE] - expected).abs().max() <= 1e-3


# --- seam-free mode ------------------------------------------------------------------------------

@pytest.mark.parametrize("clip", ["en", "cmn"])
def test_seamless_is_official_up_to_30s(clip, whisper, pcm, features):
    seamless = audio_features(whisper, pcm[clip], constants.SAMPLE_RATE)  # the default mode
    assert torch.equal(seamless, features[clip]["official"])


def jump_ratios(f: torch.Tensor) -> torch.Tensor:
    jumps = (f[1:] - f[:-1]).flatten(1).norm(dim=1)
    return jumps / jumps.median()


def test_seamless_has_no_jump_at_30s_on_long_clip(features):
    official, seamless = features["long"]["official"], features["long"]["seamless"]
    assert seamless.shape == official.shape
    seam = constants.WHISPER_WINDOW_SECONDS * constants.WHISPER_STEPS_PER_SECOND - 1  # step 1499 -> 1500
    r_off, r_seam = jump_ratios(official), jump_ratios(seamless)
    # the official windows leave a jump ~5x the clip's median step-to-step change at 30 s ...
    assert r_off[seam] > 3.0
    assert int(r_off.argmax()) == seam
    # ... the default mode changes there no more than ordinary speech does, hand-over included
    assert r_seam[seam] < 1.5
    assert r_seam[1000:1750].max() < 2.0
    # before the first hand-over both modes are the same window
    fade_start = 1250 - constants.WHISPER_SEAMLESS_CROSSFADE_SECONDS * constants.WHISPER_STEPS_PER_SECOND // 2
    assert torch.equal(seamless[:fade_start], official[:fade_start])
    assert not torch.equal(seamless[1500:], official[1500:])


def test_unknown_mode_is_an_error(whisper):
    with pytest.raises(AudioError, match="mode"):
        audio_features(whisper, torch.zeros(16000), 16000, mode="fast")


# --- per-frame windows and the length rule -------------------------------------------------------

@pytest.mark.parametrize("fps", [24.0, 25.0, 29.97, 30.0, 60.0])
def test_frame_chunk_index_rule(fps):
    steps = 37
    feats = torch.arange(steps, dtype=torch.float32)[:, None, None].expand(steps, 5, 384).clone()
    feats += torch.arange(5, dtype=torch.float32)[None, :, None] / 10  # layer id in the fraction
    n = 25
    chunks = frame_audio_chunks(feats, n, fps=fps)
    assert chunks.shape == (n, 50, 384)
    for i in range(n):
        center = int(i * 50 / fps)  # the official formula
        want = [min(max(c, 0), steps - 1) + layer / 10 for c in range(center - 4, center + 6) for layer in range(5)]
        assert torch.allclose(chunks[i, :, 0], torch.tensor(want)), i


def test_frame_chunks_count_is_what_caller_asks():
    feats = torch.randn(10, 5, 384)
    assert frame_audio_chunks(feats, 0).shape == (0, 50, 384)
    assert frame_audio_chunks(feats, 100).shape == (100, 50, 384)  # past the end: clamped to the last step
    with pytest.raises(AudioError):
        frame_audio_chunks(feats, 3, fps=0)
    with pytest.raises(AudioError):
        frame_audio_chunks(torch.zeros(0, 5, 384), 3)


def test_num_frames_for_duration():
    assert num_frames_for_duration(3.2, 25) == 80
    assert num_frames_for_duration(79774 / 16000, 25) == 125  # en.wav: 4.986 s
    assert num_frames_for_duration(1 / 3, 30) == 10
    assert num_frames_for_duration(0.02, 25) == 1  # half a frame rounds up
    assert num_frames_for_duration(0.0, 25) == 0
    with pytest.raises(AudioError):
        num_frames_for_duration(1.0, 0)


def test_embed_audio_builds_frame_audio(whisper, pcm, features):
    fa = embed_audio(whisper, pcm["en"], constants.SAMPLE_RATE, fps=30.0)
    n = num_frames_for_duration(len(pcm["en"]) / constants.SAMPLE_RATE, 30.0)
    assert fa.num_frames == n and fa.fps == 30.0 and fa.sample_rate == 16000
    assert fa.waveform.shape == (1, len(pcm["en"])) and fa.waveform.dtype == torch.float32
    assert torch.equal(fa.windows(), frame_audio_chunks(features["en"]["official"], n, fps=30.0))


# --- the whisper encoder and its files -----------------------------------------------------------

def test_stacked_states_are_block_outputs_without_final_norm(whisper):
    mel = torch.randn(1, 80, whisper.window_frames) * 0.3
    stacked = whisper(mel)
    assert stacked.shape == (1, 1500, 5, 384)
    last = whisper.encoder(mel).last_hidden_state  # transformers applies the final layer norm
    assert not torch.allclose(stacked[:, :, -1], last, atol=1e-2)
    assert torch.allclose(whisper.encoder.layer_norm(stacked[:, :, -1]), last, atol=1e-5)
    # the first state is the input embedding: conv stem + positional embedding
    conv = torch.nn.functional.gelu(whisper.encoder.conv2(torch.nn.functional.gelu(whisper.encoder.conv1(mel))))
    assert torch.allclose(stacked[0, :, 0], conv[0].T + whisper.encoder.embed_positions.weight, atol=1e-5)


def test_loads_full_official_file_with_decoder(tmp_path, whisper):
    """The released tiny.pt holds the text decoder too; dims come from the file (here: a shrunk decoder)."""
    ck = torch.load(WHISPER, weights_only=True)
    state = dict(ck["model_state_dict"])
    state["decoder.token_embedding.weight"] = torch.randn(64, 64).half()
    state["decoder.positional_embedding"] = torch.randn(448, 64).half()
    state["decoder.blocks.0.attn.query.weight"] = torch.randn(64, 64).half()
    dims = dict(ck["dims"])
    path = tmp_path / "tiny.pt"
    torch.save({"dims": dims, "model_state_dict": state}, path)
    loaded = load_whisper(path)
    assert loaded.dtype == torch.float32
    mel = torch.randn(1, 80, 3000) * 0.3
    assert torch.equal(loaded(mel), whisper(mel))
    assert not any("decoder" in k for k in loaded.state_dict())


def test_loads_hugging_face_folder(tmp_path):
    """A Hugging Face whisper folder (config.json + model.safetensors) gives transformers' own states."""
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
        encoder_ffn_dim=1536, decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=3,
    )
    model = WhisperModel(config).eval()
    model.save_pretrained(tmp_path / "whisper-tiny")
    assert (tmp_path / "whisper-tiny" / "config.json").is_file()
    loaded = load_whisper(tmp_path / "whisper-tiny")
    mel = torch.randn(1, 80, 3000) * 0.3
    with torch.no_grad():
        ref = model.encoder(mel, output_hidden_states=True)
        ours = loaded(mel)
    assert torch.allclose(model.encoder.layer_norm(ours[:, :, -1]), ref.last_hidden_state, atol=1e-4)
    for i in range(4):  # the embedding and the first three block outputs, as transformers reports them
        assert torch.allclose(ours[:, :, i], ref.hidden_states[i], atol=1e-4)
    # the .safetensors file alone (config.json beside it) works too
    assert torch.equal(load_whisper(tmp_path / "whisper-tiny" / "model.safetensors")(mel), ours)


def test_dtype_and_device_arguments():
    half = load_whisper(WHISPER, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    feats = audio_features(half, torch.randn(8000) * 0.1, 16000)
    assert feats.dtype == torch.float32 and feats.shape == (25, 5, 384) and torch.isfinite(feats).all()


def test_unet_file_is_rejected_with_what_it_is(tmp_path):
    unet = {
        "conv_in.weight": torch.zeros(320, 13, 3, 3),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 384),
        "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": torch.zeros(320, 320),
    }
    path = tmp_path / "latentsync_unet.pt"
    torch.save({"state_dict": unet, "global_step": 0}, path)
    with pytest.raises(CheckpointError, match="not a whisper model.*LatentSync U-Net"):
        load_whisper(path)
    from safetensors.torch import save_file

    save_file(unet, tmp_path / "unet.safetensors")
    with pytest.raises(CheckpointError, match="not a whisper model.*LatentSync U-Net"):
        load_whisper(tmp_path / "unet.safetensors")


def test_missing_and_broken_whisper_files(tmp_path):
    with pytest.raises(ModelMissingError):
        load_whisper(tmp_path / "nope.pt")
    broken = tmp_path / "tiny.pt"
    broken.write_bytes(WHISPER.read_bytes()[:100_000])  # an interrupted download
    with pytest.raises(CheckpointError):
        load_whisper(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder"):
        load_whisper(tmp_path / "empty")


def test_wrong_whisper_size_is_rejected(tmp_path):
    ck = torch.load(WHISPER, weights_only=True)
    state = {k: v for k, v in ck["model_state_dict"].items() if not k.startswith("encoder.blocks.3.")}
    dims = dict(ck["dims"], n_audio_layer=3)
    torch.save({"dims": dims, "model_state_dict": state}, tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="whisper tiny"):
        load_whisper(tmp_path / "small.pt")
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 384}))  # ignored for .pt files


# --- waveform checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("wave", [torch.zeros(0), torch.zeros(1, 0), torch.zeros(1, 2, 0)])
def test_empty_audio_is_an_error(whisper, wave):
    with pytest.raises(AudioError, match="empty"):
        audio_features(whisper, wave, 16000)


def test_too_short_audio_is_an_error(whisper):
    with pytest.raises(AudioError, match="too short"):
        audio_features(whisper, torch.zeros(100), 16000)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_inf_samples_are_an_error(whisper, bad):
    wave = torch.zeros(1, 16000)
    wave[0, 1234] = bad
    with pytest.raises(AudioError, match="NaN or infinite"):
        audio_features(whisper, wave, 16000)


def test_silence_is_valid(whisper):
    feats = audio_features(whisper, torch.zeros(2, 32000), 16000)
    assert feats.shape == (100, 5, 384) and torch.isfinite(feats).all()
    assert torch.equal(log_mel(torch.zeros(16000)), torch.full((80, 100), -1.5))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_and_stereo(whisper, pcm, rate):
    """8-48 kHz stereo is valid: down-mixed, resampled to 16 kHz, same length rule."""
    from latentsync_core.audio import resample

    mono16 = pcm["en"][: 2 * 16000]
    other = resample(mono16[None], 16000, rate)[0]
    stereo = torch.stack([other, 0.5 * other])  # channel mean = 0.75 x
    feats = audio_features(whisper, stereo, rate)
    assert feats.shape == (100, 5, 384) and torch.isfinite(feats).all()
    # the log-mel of the round trip matches the original's below the 8 kHz band edge
    ref = log_mel(0.75 * mono16)
    back = log_mel(resample(stereo.mean(0, keepdim=True), rate, 16000)[0])
    n = min(ref.shape[1], back.shape[1])
    bands = 72 if rate > 8000 else 60  # 8 kHz audio holds nothing above 4 kHz
    assert (ref[:bands, 5 : n - 5] - back[:bands, 5 : n - 5]).abs().mean() < 0.05


@pytest.mark.parametrize("rate_in,rate_out", [(48000, 16000), (44100, 16000), (8000, 16000)])
def test_resampler_is_band_limited_not_interpolation(rate_in, rate_out):
    from latentsync_core.audio import resample

    seconds = 1.0
    t_in = torch.arange(int(rate_in * seconds), dtype=torch.float64) / rate_in
    t_out = torch.arange(int(rate_out * seconds), dtype=torch.float64) / rate_out
    tone = lambda t: 0.5 * torch.sin(2 * math.pi * 1000 * t) + 0.25 * torch.sin(2 * math.pi * 3100 * t)  # noqa: E731
    out = resample(tone(t_in).float()[None], rate_in, rate_out)[0]
    assert abs(len(out) - len(t_out)) <= 2
    n = min(len(out), len(t_out))
    err = (out[200 : n - 200].double() - tone(t_out[200 : n - 200])).abs().max()
    assert err < 2e-3, err  # linear interpolation is off by ~5e-2 on the 3.1 kHz tone at 8 kHz


@pytest.mark.parametrize("seconds", [30.02, 35.0, 50.0, 95.5, 600.0])
def test_seamless_window_weights(seconds):
    """Every step is a convex mix of windows that contain it, with >= 4 s of context inside them."""
    from latentsync_core.audio.features import _window_shares, _window_starts

    steps, ctx = int(seconds * 50), 1500
    starts = _window_starts(2 * steps, 2 * ctx, "seamless")
    assert starts[0] == 0 and starts[-1] + 2 * ctx >= 2 * steps and len(starts) == math.ceil((seconds - 30) / 20) + 1
    assert _window_starts(2 * steps, 2 * ctx, "official") == list(range(0, 2 * steps, 2 * ctx))
    w = np.zeros((len(starts), steps))
    for k, (index, share) in enumerate(_window_shares(starts, steps, ctx, overlapping=True)):
        w[k, index] = share
    assert w.shape == (len(starts), steps)
    assert np.allclose(w.sum(0), 1.0) and (w >= 0).all()
    t = np.arange(steps)
    for k, s in enumerate(np.asarray(starts) // 2):
        used = t[w[k] > 0]
        assert used.min() >= s and used.max() < s + ctx  # only steps inside the window
        left = used - s if k > 0 else np.full_like(used, 10**6)
        right = s + ctx - 1 - used if s + ctx < steps else np.full_like(used, 10**6)
        assert np.minimum(left, right).min() >= 4 * 50
    assert (w.max(0) == 1.0).mean() > 0.9  # cross-fades cover only 2 s per 20 s
