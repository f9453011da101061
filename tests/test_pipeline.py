"""LipSyncPipeline: parity with the official pipeline on the golden tiny models, and its rules
(length, faces without a face, CFG, DeepCache, VAE adapters, errors, determinism, interruption)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from latentsync_core import FaceError, InputMismatchError, LatentSyncError
from latentsync_core.audio import frame_audio_chunks
from latentsync_core.face import fixed_mask
from latentsync_core.finite import NonFiniteError
from latentsync_core.pipeline import LipSyncPipeline
from latentsync_core.timing import ping_pong_indices
from latentsync_core.unet import load_unet
from latentsync_core.vae import ComfyVae, DiffusersVae, load_vae

PIPE = FIXTURES / "pipeline"
UNET = FIXTURES / "unet"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(PIPE / "golden_pipeline.npz"))


@pytest.fixture(scope="module")
def unet():
    return load_unet(UNET / "config.json", UNET / "latentsync_unet.pt")


@pytest.fixture(scope="module")
def vae():
    return load_vae(PIPE / "vae_tiny_random.pt", PIPE / "vae_config.json")


@pytest.fixture(scope="module")
def chunks(golden):
    return frame_audio_chunks(torch.from_numpy(golden["features"]), 32, fps=25.0)


@pytest.fixture(scope="module")
def golden_run(golden, unet, vae, chunks):
    """The golden case: 16 faces then the same reversed, injected noise / masked / reference latents."""
    pipe = LipSyncPipeline(unet, vae)
    faces = torch.from_numpy(golden["faces"])
    index = np.concatenate([np.arange(16), np.arange(16)[::-1]])
    overrides = [
        {"masked_image_latents": torch.from_numpy(golden["masked_image_latents"][c][None]),
         "ref_latents": torch.from_numpy(golden["ref_latents"][c][None])}
        for c in range(2)
    ]
    unet_inputs = []  # channel 4 of every U-Net input: the mask latents the pipeline built
    handle = unet.register_forward_pre_hook(lambda m, args: unet_inputs.append(args[0][:, 4].clone()))
    try:
        result = pipe.sync_faces(faces, chunks, source_index=index, steps=3, guidance=1.5,
                                 initial_latents=torch.from_numpy(golden["initial_noise"]),
                                 latent_overrides=overrides, return_latents=True)
    finally:
        handle.remove()
    result.unet_mask_inputs = unet_inputs
    return result


class StandInVae:
    """ComfyUI's VAE object as the core VAELoader returns it: encode(pixels [B,H,W,3] 0..1) -> unscaled
    posterior mean [B,4,h,w]; decode(latents) -> [B,H,W,3] clamped to 0..1."""

    def __init__(self, diffusers_vae):
        self.first_stage_model = diffusers_vae
        # as comfy.sd.VAE.__init__: instance attributes, used by encode/decode (and their tiled fallbacks)
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def encode(self, pixels):
        return self.first_stage_model.encode(self.process_input(pixels.movedim(-1, 1))).latent_dist.mean

    def decode(self, latents):
        return self.process_output(self.first_stage_model.decode(latents).sample).movedim(1, -1)


# --- parity ---------------------------------------------------------------------------------------
def test_audio_windows_match_golden(golden, chunks):
    assert torch.allclose(chunks[:8].half().float(), torch.from_numpy(golden["chunks_fps25_first8"]).float(), atol=2e-3)


def test_mask_matches_golden(golden, golden_run):
    """The mask latents the pipeline feeds the U-Net (channel 4 of its input, every call, both CFG halves,
    every frame) equal the official downsampled mask."""
    expected = torch.from_numpy(golden["mask_latents"])
    assert len(golden_run.unet_mask_inputs) == 2 * 3  # 2 chunks x 3 steps
    for mask_in in golden_run.unet_mask_inputs:  # [2 (CFG), 16 frames, 32, 32]
        assert mask_in.shape == (2, 16, 32, 32)
        assert torch.equal(mask_in, expected.expand_as(mask_in))


@pytest.mark.parametrize("resolution", [256, 512])
def test_float32_mask_product_is_the_official_float64_one(resolution):
    """The official code multiplies float32 pixels by a float64 mask; the pipeline uses float32 (MPS has no
    float64). The mask's values are float32 numbers, so both give the same bits (the 512 mask is not binary)."""
    mask = fixed_mask(resolution)
    assert mask.dtype == np.float32 and (resolution == 256) == (len(np.unique(mask)) == 2)
    pixels = torch.rand((3, 3, resolution, resolution), generator=torch.Generator().manual_seed(1)) * 2 - 1
    pixels[0, 0, 250:254, 120:124] = torch.tensor([1e-38, -3e-39, 65504.0, 1.0 - 2**-24])[:, None]  # tiny/denormal/edge values
    official = (pixels.double() * torch.tensor(mask, dtype=torch.float64)).float()
    assert torch.equal(pixels * torch.from_numpy(mask), official)


def test_no_float64_tensor_in_a_run(unet, vae, small):
    """Device-agnostic: nothing in sync_faces creates a float64 tensor (MPS cannot hold one)."""
    from torch.overrides import TorchFunctionMode

    class Float64Spy(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    self.seen.append(getattr(func, "__name__", str(func)))
            return out

    faces, audio = small
    pipe = LipSyncPipeline(unet, vae)
    with Float64Spy() as spy:
        pipe.sync_faces(faces[:2], audio[:2], steps=1, guidance=1.5, seed=3)
    assert spy.seen == []


def test_generator_draws_in_official_order(golden, unet, vae, chunks):
    """With the official seed, the noise frame is drawn first and the first chunk's VAE posterior samples
    (masked faces, then references) equal the official ones: the generator is used in the same order."""
    encoded = []

    class Spy:
        can_sample = True

        def encode(self, pixels, mode, generator):
            encoded.append(vae.encode(pixels, mode, generator))
            return encoded[-1]

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    pipe = LipSyncPipeline(unet, vae)
    pipe.vae = Spy()
    with pytest.raises(Stop):  # stops before the first U-Net call
        pipe.sync_faces(torch.from_numpy(golden["faces"]), chunks[:16], seed=1247, check_interrupt=stop)
    masked, ref = (e.permute(1, 0, 2, 3) for e in encoded)
    # 1.7e-6 measured; 8e-4 before the VAE adapter made channels-last pixels contiguous (CPU GroupNorm)
    assert (masked - torch.from_numpy(golden["masked_image_latents"][0])).abs().max() < 1e-4
    assert (ref - torch.from_numpy(golden["ref_latents"][0])).abs().max() < 1e-4


def test_final_latents_match_official(golden, golden_run):
    assert len(golden_run.final_latents) == 2
    for c, latents in enumerate(golden_run.final_latents):
        err = (latents[0] - torch.from_numpy(golden["final_latents"][c])).abs().max().item()
        assert err <= 1e-4, f"chunk {c}: max abs {err}"


def test_decoded_faces_match_official(golden, golden_run):
    y0, y1, x0, x1 = golden["synced_box"]
    ours = golden_run.faces[torch.from_numpy(golden["synced_frames"])].float()[:, y0:y1, x0:x1].clamp(0, 1)
    ref = (torch.from_numpy(golden["synced_faces"]).float().permute(0, 2, 3, 1) / 2 + 0.5).clamp(0, 1)
    err = (ours - ref).abs().amax(-1) * 255
    # frames 16.. were aligned by the official run with its smoothing state carried on from frame 15, so
    # their faces differ slightly from faces 15..0 outside the mask; the regenerated mouth must match
    mouth = torch.tensor(fixed_mask(256))[y0:y1, x0:x1] < 0.5
    assert err[0].max() <= 1.0
    assert err[:, mouth].max() <= 1.0
    assert golden_run.generated.all()


def test_output_frames_match_official(golden, golden_run):
    """Decoded faces pasted back with the face stage reproduce the official output within 2 grey levels
    (frames of the first chunk, whose faces and affines the fixture holds)."""
    from latentsync_core import paste_back

    y0, y1, x0, x1 = golden["out_box"]
    # the fixture holds the changed box only; the rest of the frame does not reach the output box
    frames = np.zeros((len(golden["frames_crop"]), 480, 640, 3), np.uint8)
    frames[:, y0:y1, x0:x1] = golden["frames_crop"]
    affines = golden["affines"]
    faces = golden_run.faces[torch.from_numpy(golden["check_frames"])].float().numpy()  # unclamped, as official
    out = paste_back(frames, faces, affines)[:, y0:y1, x0:x1]
    diff = np.abs(out.astype(int) - golden["out_crop"].astype(int))
    assert diff.max() <= 2, f"max {diff.max()} grey levels, mean {diff.mean():.3f}"


# --- rules ----------------------------------------------------------------------------------------
def test_ping_pong_indices():
    assert ping_pong_indices(3, 2).tolist() == [0, 1]
    assert ping_pong_indices(3, 8).tolist() == [0, 1, 2, 2, 1, 0, 0, 1]
    assert ping_pong_indices(1, 3).tolist() == [0, 0, 0]
    with pytest.raises(InputMismatchError):
        ping_pong_indices(0, 5)


@pytest.fixture(scope="module")
def small(golden):
    """4 faces downsized to 64 px (8x8 latents) and 24 audio windows: fast cases for the rules."""
    faces = torch.nn.functional.interpolate(torch.from_numpy(golden["faces"][:4]).permute(0, 3, 1, 2).float(),
                                            size=(64, 64), mode="area").permute(0, 2, 3, 1) / 255
    audio = torch.randn(24, 50, 384, generator=torch.Generator().manual_seed(0))
    return faces, audio


def run_small(unet, vae, small, frames=24, **kw):
    faces, audio = small
    kw.setdefault("steps", 2)
    return LipSyncPipeline(unet, vae).sync_faces(faces, audio[:frames], **kw)


FOUND = np.array([True, False, True, True])


@pytest.fixture(scope="module")
def reference_run(unet, vae, small):
    """seed 5, 2 steps, guidance 1.5, face 1 missing; records progress and U-Net batch sizes."""
    seen, batches = [], []
    handle = unet.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    try:
        res = run_small(unet, vae, small, seed=5, found=FOUND, progress=lambda d, t: seen.append((d, t)))
    finally:
        handle.remove()
    return res, seen, batches


def test_length_rule_pass_through_progress_and_cfg_batch(small, reference_run):
    res, seen, batches = reference_run
    faces = small[0]
    index = ping_pong_indices(4, 24)  # 0 1 2 3 3 2 1 0 0 1 ...
    assert res.faces.shape == (24, 64, 64, 3) and res.faces.dtype == torch.float16
    assert res.generated.tolist() == FOUND[index].tolist()
    for i in np.flatnonzero(~res.generated):  # no face: not sent through the model, returned unchanged
        assert torch.equal(res.faces[i], faces[index[i]].half())
    mask = torch.tensor(fixed_mask(64))
    keep, mouth = (mask - 1).abs() < 1e-6, mask.abs() < 1e-6
    for i in np.flatnonzero(res.generated):  # outside the mask: the input face; inside: regenerated
        assert (res.faces[i].float()[keep] - faces[index[i]][keep]).abs().max() < 2e-3
        assert (res.faces[i].float()[mouth] - faces[index[i]][mouth]).abs().mean() > 0.02
    assert int(res.generated.sum()) == 18  # -> chunks of 16 and 2 frames
    chunks = 2
    assert seen == [(k + 1, chunks * 2) for k in range(chunks * 2)]  # progress: chunk x step
    assert batches == [2] * (chunks * 2)  # CFG: unconditional and audio halves in one batch


def test_same_seed_same_frames(unet, vae, small, reference_run):
    again = run_small(unet, vae, small, seed=5, found=FOUND)
    other = run_small(unet, vae, small, frames=4, seed=6, found=FOUND)
    assert torch.equal(again.faces, reference_run[0].faces)
    assert not torch.equal(other.faces, reference_run[0].faces[:4])
    with pytest.raises(FaceError, match="No face"):
        run_small(unet, vae, small, found=np.zeros(4, bool))


def test_vae_sample_vs_mean_and_comfy_vae(unet, vae, small):
    """ComfyUI's VAE (posterior mean, decode without ComfyUI's clamp) equals the diffusers VAE in mean mode; guidance 1
    runs one U-Net batch; the posterior sample differs."""
    batches = []
    handle = unet.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    try:
        kw = {"frames": 4, "steps": 1, "guidance": 1.0}
        mean = run_small(unet, vae, small, vae_encode="mean", **kw)
        comfy = run_small(unet, StandInVae(vae.vae), small, vae_encode="sample", **kw)  # falls back to the mean
        sample = run_small(unet, vae, small, vae_encode="sample", **kw)
    finally:
        handle.remove()
    assert batches == [1, 1, 1]
    # ComfyVae asks ComfyUI's VAE for the unclamped decode (as the official blend uses): equal everywhere
    assert (mean.faces.float() - comfy.faces.float()).abs().max() < 2e-3
    assert mean.faces.float().min() < 0 or mean.faces.float().max() > 1  # the tiny VAE overshoots: it matters
    stand_in = StandInVae(vae.vae)
    clamped = stand_in.process_output
    ComfyVae(stand_in).decode(torch.zeros(1, 4, 8, 8))
    assert stand_in.process_output is clamped  # ComfyUI's VAE is left as it was
    assert not torch.equal(mean.faces, sample.faces)
    with pytest.raises(LatentSyncError):
        ComfyVae(StandInVae(vae.vae)).encode(torch.zeros(1, 3, 64, 64), "sample")
    assert isinstance(vae, DiffusersVae)


def test_deepcache_interval_one_equals_off_and_caching_runs(unet, vae, small):
    kw = {"frames": 4, "steps": 3, "guidance": 1.0}
    off = run_small(unet, vae, small, deepcache=0, **kw)
    one = run_small(unet, vae, small, deepcache=1, **kw)
    assert torch.equal(off.faces, one.faces)
    ran = []  # the mid block's inner layers run only in full passes
    handle = unet.mid_block.resnets[0].register_forward_hook(lambda m, i, o: ran.append(1))
    try:
        cached = run_small(unet, vae, small, deepcache=2, **kw)
    finally:
        handle.remove()
    assert len(ran) == 2  # steps 0 and 2 of 3
    assert not torch.equal(cached.faces, off.faces)
    assert (cached.faces.float() - off.faces.float()).abs().mean() < 0.1
    assert "forward" not in unet.mid_block.__dict__  # unwrapped after the run


def test_bad_settings_raise(unet, vae, small):
    with pytest.raises(LatentSyncError, match="steps"):
        run_small(unet, vae, small, steps=0)
    with pytest.raises(LatentSyncError, match="guidance"):
        run_small(unet, vae, small, guidance=0.5)
    with pytest.raises(InputMismatchError):
        LipSyncPipeline(unet, vae).sync_faces(small[0], torch.zeros(4, 10, 384))


def test_interrupt_leaves_nothing_behind(unet, vae, small, reference_run):
    class Stop(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_small(unet, vae, small, frames=4, steps=3, deepcache=2, check_interrupt=interrupt)
    assert "forward" not in unet.mid_block.__dict__
    again = run_small(unet, vae, small, seed=5, found=FOUND)
    assert torch.equal(again.faces, reference_run[0].faces)


def _nan_vae(vae, stage):
    bad = copy.copy(vae)
    real = getattr(vae, stage)
    setattr(bad, stage, lambda *args, **kwargs: real(*args, **kwargs) * float("nan"))
    return bad


@pytest.mark.parametrize("stage, name", [("encode", "VAE encode"), ("decode", "VAE decode")])
def test_nan_from_the_vae_stops_with_a_clear_error(unet, vae, small, stage, name):
    with pytest.raises(NonFiniteError, match=f"{name} produced .*NaN.*VAE in fp32") as err:
        run_small(unet, _nan_vae(vae, stage), small, frames=4)
    assert "chunk 1/1" in str(err.value)


def test_nan_from_the_unet_stops_with_a_clear_error(unet, vae, small):
    handle = unet.register_forward_hook(lambda module, args, out: out * float("nan"))
    try:
        with pytest.raises(NonFiniteError, match="U-Net produced .*bf16 or fp32"):
            run_small(unet, vae, small, frames=4)
    finally:
        handle.remove()
    assert run_small(unet, vae, small, frames=4).faces.isfinite().all()


def test_skipped_frames_come_back_as_the_input_face(unet, vae, small, reference_run):
    """skip (e.g. silence): those output frames are the input face; the others are the same as when
    the skipped frames were missing faces (the same frames go through the model in the same chunks)."""
    faces = small[0]
    index = ping_pong_indices(4, 24)
    skip = ~FOUND[index]  # the frames of face 1, as a skip mask instead of found=False
    res = run_small(unet, vae, small, seed=5, skip=skip)
    ref = reference_run[0]
    assert res.generated.tolist() == ref.generated.tolist()
    torch.testing.assert_close(res.faces, ref.faces, rtol=0, atol=0)
    torch.testing.assert_close(res.faces[skip].float(), faces[index[skip]].half().float(), rtol=0, atol=0)
    everything = run_small(unet, vae, small, frames=4, skip=np.ones(4, bool))  # all skipped: no model call
    assert not everything.generated.any()
    torch.testing.assert_close(everything.faces.float(), faces.half().float(), rtol=0, atol=0)
    with pytest.raises(InputMismatchError, match="skip must hold 4"):
        run_small(unet, vae, small, frames=4, skip=np.ones(3, bool))
