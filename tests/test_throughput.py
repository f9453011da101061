"""Exact speed-ups and the opt-in sampler: DeepCache without recomputation, chunk batching, dpmpp_2m,
the U-Net input built once, the compiled U-Net (tiny golden models, 64 px faces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from torch.utils.flop_counter import FlopCounterMode

import latentsync_core.pipeline as pipeline_mod
from latentsync_core import LatentSyncError
from latentsync_core.deepcache import DeepCache
from latentsync_core.pipeline import LipSyncPipeline
from latentsync_core.sampling import chunk_activation_bytes, group_chunks, resolve_chunk_batch
from latentsync_core.unet import UNet3DConditionModel, load_config, load_unet
from latentsync_core.vae import load_vae

PIPE = FIXTURES / "pipeline"
UNET = FIXTURES / "unet"


@pytest.fixture(scope="module")
def unet():
    return load_unet(UNET / "config.json", UNET / "latentsync_unet.pt")


@pytest.fixture(scope="module")
def unet64():
    """The golden tiny U-Net in float64: batched and one-at-a-time calls then agree to the last bit
    (in float32 the CPU kernels round differently per batch size; the random tiny model amplifies that
    to ~5e-5 after two steps, see benchmarks/RESULTS.md)."""
    return load_unet(UNET / "config.json", UNET / "latentsync_unet.pt", dtype=torch.float64)


@pytest.fixture(scope="module")
def vae():
    return load_vae(PIPE / "vae_tiny_random.pt", PIPE / "vae_config.json")


@pytest.fixture(scope="module")
def small():
    """4 faces at 64 px (8x8 latents) and 37 audio windows: 2 full chunks and a short one of 5."""
    faces = np.load(PIPE / "golden_pipeline.npz")["faces"][:4]
    faces = torch.nn.functional.interpolate(torch.from_numpy(faces).permute(0, 3, 1, 2).float(),
                                            size=(64, 64), mode="area").permute(0, 2, 3, 1) / 255
    audio = torch.randn(37, 50, 384, generator=torch.Generator().manual_seed(1))
    return faces, audio


def run(unet, vae, small, frames=37, **kw):
    faces, audio = small
    kw.setdefault("steps", 2)
    kw.setdefault("seed", 11)
    return LipSyncPipeline(unet, vae).sync_faces(faces, audio[:frames], return_latents=True, **kw)


class LegacyDeepCache(DeepCache):
    """DeepCache as it was: the motion modules of skipped layers run again on their cached inputs."""

    def _targets(self):
        return ((m, key) for m, key in super()._targets() if key[1] != "motion")


def count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda m, i, o: calls.append(1))


# --- DeepCache ------------------------------------------------------------------------------------
def test_deepcache_caches_motion_modules_with_identical_output(unet, vae, small, monkeypatch):
    kw = {"frames": 20, "steps": 4, "deepcache": 3, "guidance": 1.5}
    motion = unet.up_blocks[3].motion_modules[0]
    calls, handle = count_calls(motion.temporal_transformer)  # runs only when not served from the cache
    try:
        new = run(unet, vae, small, **kw)
        new_calls = len(calls)
        monkeypatch.setattr(pipeline_mod, "DeepCache", LegacyDeepCache)
        old = run(unet, vae, small, **kw)
        old_calls = len(calls) - new_calls
    finally:
        handle.remove()
    assert torch.equal(new.faces, old.faces)
    for a, b in zip(new.final_latents, old.final_latents):
        assert torch.equal(a, b)
    # 2 chunks x 4 steps; full passes at steps 0 and 3 only run the motion module now
    assert old_calls == 8 and new_calls == 4
    assert "forward" not in motion.__dict__  # unwrapped after the run


def cached_step_flops(model, cache_cls, frames=16, hw=8):
    """FLOP of one U-Net call at a cached step (B=2, meta device)."""
    sample = torch.zeros(2, 13, frames, hw, hw, device="meta")
    audio = torch.zeros(2 * frames, 50, 384, device="meta")
    cache = cache_cls(model, 3)
    with torch.no_grad(), cache.active():
        cache.step = 0
        model(sample, 10, audio)
        cache.step = 1
        with FlopCounterMode(display=False) as counter:
            model(sample, 10, audio)
    return counter.get_total_flops()


def test_deepcache_cached_step_needs_fewer_flops():
    with torch.device("meta"):
        model = UNet3DConditionModel(load_config(UNET / "config.json"))
    new, old = cached_step_flops(model, DeepCache), cached_step_flops(model, LegacyDeepCache)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        x = torch.zeros(32, 32, 8, 8, device="meta")  # up_blocks[3] runs at 8x8 with 32 channels here
        for m in model.up_blocks[3].motion_modules[:2]:
            m(x, 16)
    assert new == old - counter.get_total_flops()
    assert new < old


# --- chunk batching -------------------------------------------------------------------------------
def test_group_chunks_and_resolve():
    assert group_chunks([16, 16, 16, 5], 2) == [[0, 1], [2], [3]]
    assert group_chunks([16, 16, 16, 16], 3) == [[0, 1, 2], [3]]
    assert group_chunks([5], 4) == [[0]]
    cpu = torch.device("cpu")
    assert resolve_chunk_batch("auto", cpu, 1, 10) == 1
    assert resolve_chunk_batch(0, cpu, 1, 10) == 1
    assert resolve_chunk_batch(4, cpu, 1, 10) == 4
    assert resolve_chunk_batch(4, cpu, 1, 2) == 2
    for bad in (-1, "two", 1.5j):
        with pytest.raises(LatentSyncError, match="chunk_batch"):
            resolve_chunk_batch(bad, cpu, 1, 10)
    assert chunk_activation_bytes(320, 32, torch.bfloat16, cfg=True) == 2 * chunk_activation_bytes(
        320, 32, torch.bfloat16, cfg=False)


def test_auto_chunk_batch_from_free_memory(monkeypatch):
    import latentsync_core.sampling as sampling

    monkeypatch.setattr(sampling, "free_device_bytes", lambda device: 10_000)
    assert resolve_chunk_batch("auto", torch.device("cuda"), 1000, 20) == int(10_000 * sampling.AUTO_MEMORY_SHARE // 1000)
    assert resolve_chunk_batch("auto", torch.device("cuda"), 100_000, 20) == 1  # never below one chunk
    assert resolve_chunk_batch("auto", torch.device("cuda"), 1, 100) == sampling.MAX_CHUNK_BATCH


@pytest.fixture(scope="module")
def one_at_a_time(unet64, vae, small):
    """Posterior samples from the generator, CFG, 37 frames (2 chunks of 16 and one of 5)."""
    return run(unet64, vae, small, chunk_batch=1, guidance=1.5)


def test_chunk_batching_equals_one_chunk_at_a_time(unet64, vae, small, one_at_a_time, per_call=2):
    unet = unet64
    batches, progress, interrupts = [], [], []
    handle = unet.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    try:
        res = run(unet, vae, small, chunk_batch=per_call, guidance=1.5,
                  progress=lambda d, t: progress.append((d, t)), check_interrupt=lambda: interrupts.append(1))
    finally:
        handle.remove()
    groups = group_chunks([16, 16, 5], per_call)
    assert batches == [2 * len(g) for g in groups for _ in range(2)]  # CFG doubles each call
    assert len(interrupts) == len(batches)  # checked before every U-Net call
    assert progress[-1] == (6, 6) and all(b > a for (a, _), (b, _) in zip(progress, progress[1:]))
    assert len(res.final_latents) == 3
    for a, b in zip(res.final_latents, one_at_a_time.final_latents):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5
    assert (res.faces.float() - one_at_a_time.faces.float()).abs().max() <= 1e-5


def test_chunk_batching_float32_close(unet, vae, small):
    """In float32 the batched call differs only by kernel rounding (relative to the latents' scale)."""
    one, two = run(unet, vae, small, frames=32, chunk_batch=1), run(unet, vae, small, frames=32, chunk_batch=2)
    for a, b in zip(one.final_latents, two.final_latents):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max() * 10


def test_chunk_batching_with_deepcache_and_no_cfg(unet64, vae, small):
    kw = {"frames": 32, "deepcache": 2, "steps": 3, "guidance": 1.0}
    one, two = run(unet64, vae, small, chunk_batch=1, **kw), run(unet64, vae, small, chunk_batch=2, **kw)
    for a, b in zip(one.final_latents, two.final_latents):
        assert (a - b).abs().max() <= 1e-5


def test_short_chunk_statistics_differ_from_batched_padding(unet64):
    """Why the short chunk runs alone: a 5-frame chunk's GroupNorm statistics are not those of its frames
    padded into a 16-frame batch item, while batch items never mix."""
    unet = unet64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 16, 8, 8, generator=g, dtype=torch.float64)
    audio = torch.randn(32, 50, 384, generator=g, dtype=torch.float64)
    with torch.no_grad():
        both = unet(x, 500, audio)
        first = unet(x[:1], 500, audio[:16])
        short = unet(x[:1, :, :5], 500, audio[:5])
    assert (both[:1] - first).abs().max() <= 1e-10
    assert (short - first[:, :, :5]).abs().max() > 1e-3


# --- dpmpp_2m -------------------------------------------------------------------------------------
def test_dpmpp_2m_runs_deterministic_and_resets_per_chunk(unet, unet64, vae, small):
    faces, audio = small
    noise = torch.randn(1, 4, 32, 8, 8, generator=torch.Generator().manual_seed(2))
    index = np.asarray([0, 1, 2, 3, 3, 2, 1, 0] * 4)  # explicit, so the second chunk can run alone
    kw = {"steps": 3, "sampler": "dpmpp_2m", "vae_encode": "mean", "return_latents": True}  # 3: a 2nd-order step

    def sync(unet, rows=slice(0, 32), **extra):
        return LipSyncPipeline(unet, vae).sync_faces(faces, audio[rows], source_index=index[rows],
                                                     initial_latents=noise[:, :, rows], **{**kw, **extra})

    a = sync(unet, chunk_batch=1)
    # chunk 2 alone, with its faces, audio and noise: the same result as after chunk 1
    alone, again = sync(unet, slice(16, 32)), sync(unet, slice(16, 32))
    assert torch.equal(alone.faces, again.faces)  # deterministic
    assert torch.equal(a.faces[16:], alone.faces)
    ddim = sync(unet, slice(16, 32), sampler="ddim")
    assert not torch.equal(alone.faces, ddim.faces)
    batched, single = sync(unet64, chunk_batch=2), sync(unet64, chunk_batch=1)
    for x, y in zip(batched.final_latents, single.final_latents):
        assert (x - y).abs().max() <= 1e-5
    with pytest.raises(LatentSyncError, match="sampler"):
        run(unet, vae, small, frames=4, sampler="euler")


# --- torch.compile --------------------------------------------------------------------------------
@pytest.mark.slow
def test_compiled_unet_matches_eager_and_compiles_once(unet, vae, small):
    """Graph capture, guards and the eager fallbacks (backend aot_eager: the same graph as inductor gets,
    without the C++ code generation that takes many minutes on this 2-core machine)."""
    from torch._dynamo.utils import counters

    from latentsync_core.sampling import compile_unet

    torch._dynamo.reset()
    compiled = compile_unet(unet, backend="aot_eager")
    eager = run(unet, vae, small, chunk_batch=1)  # chunks of 16, 16 and 5 frames
    first = run(compiled, vae, small, frames=16, chunk_batch=1)  # compiles the 16-frame call
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    res = run(compiled, vae, small, chunk_batch=1)  # more chunks and a short one: nothing new to compile
    assert counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(res.final_latents, eager.final_latents):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert torch.equal(res.final_latents[0], first.final_latents[0])
    assert torch.equal(res.final_latents[2], eager.final_latents[2])  # the short chunk ran eagerly
    assert "forward" not in unet.__dict__


@pytest.mark.slow
def test_compiled_chunk_group_norm_keeps_eager_accuracy():
    """Inductor's CPU group_norm loses precision on groups whose mean is large next to their spread
    (constant groups worst, as in the random tiny model); chunk_group_norm centres the groups when
    compiled. Compiled (inductor) must stay as close to float64 as eager float32 is."""
    from torch import nn

    from latentsync_core.unet.resnet import chunk_group_norm

    g = torch.Generator().manual_seed(0)
    norm = nn.GroupNorm(4, 8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(8, generator=g) + 0.5)
        norm.bias.copy_(torch.rand(8, generator=g))
    x = torch.randn(32, 8, 4, 4, generator=g) * 0.01  # [B*F, C, H, W]: 2 chunks of 16 frames
    x[:, 0:2] = 0.37  # a constant group
    x[:, 2:4] += 1.0  # a group with a large mean
    norm64 = nn.GroupNorm(4, 8, eps=1e-5).double()
    norm64.load_state_dict({k: v.double() for k, v in norm.state_dict().items()})
    with torch.no_grad():
        ref = chunk_group_norm(norm64, x.double(), 16)
        eager = chunk_group_norm(norm, x, 16)
        torch._dynamo.reset()
        compiled = torch.compile(lambda v: chunk_group_norm(norm, v, 16), dynamic=False)(x)
    eager_err = (eager.double() - ref).abs().max().item()
    compiled_err = (compiled.double() - ref).abs().max().item()
    assert eager_err < 1e-5
    assert compiled_err <= 4 * eager_err + 1e-6, (compiled_err, eager_err)
