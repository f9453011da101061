"""LatentSync Lip Sync Video (nodes/video.py) with the stand-in for ComfyUI's VideoFromFile: same frames as
the command line, path input, errors, progress, cancel, and the guard for ComfyUI releases without VIDEO."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import os
import sys

import comfy.model_management as mm
import comfy.utils
import numpy as np
import pytest
import torch
from comfy_api.input_impl import VideoFromFile
from conftest import PACK_NAME, ROOT
from test_cli import FIX, TINY, _write_wav
from test_stream import make_face_clip

from latentsync_core import cli
from latentsync_core.audio import load_audio_file
from latentsync_core.video_io import VideoReader, probe_video


@pytest.fixture(scope="module")
def node_models(pack):
    from latentsync_core.audio import load_whisper
    from latentsync_core.vae import load_vae

    model_mod = sys.modules[f"{PACK_NAME}.nodes.model"]
    unet = sys.modules[f"{PACK_NAME}.latentsync_core.unet"].load_unet(
        FIX / "unet" / "config.json", FIX / "unet" / "latentsync_unet.pt")
    model = model_mod.LatentSyncModel(unet=unet, resolution=256, dtype=torch.float32, name="tiny")
    # the diffusers VAE itself (what the command line loads): the node samples the posterior with it
    vae = load_vae(FIX / "pipeline" / "vae_tiny_random.pt", FIX / "pipeline" / "vae_config.json").vae
    return model, vae, load_whisper(FIX / "audio" / "whisper_tiny_encoder.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("node")
    clip = make_face_clip(folder / "clip.mp4", 4)
    wav = folder / "speech.wav"
    _write_wav(wav, 0.28)  # 7 frames: the 4-frame clip ping-pongs
    waveform, rate = load_audio_file(wav)
    return clip, wav, {"waveform": waveform[None], "sample_rate": rate}


def run_node(pack, node_models, audio, **kw):
    model, vae, whisper = node_models
    kw = {"seed": 7, "steps": 1, "guidance": 1.0, **kw}
    return pack.NODE_CLASS_MAPPINGS["LatentSyncLipSyncVideo"]().lip_sync(audio, model, vae, whisper, **kw)


def decoded(path) -> np.ndarray:
    with VideoReader(path) as r:
        return r.read(0, r.num_frames)


def _record_sync_inputs(monkeypatch, module, log):
    """Spy on ``module.SamplingJob.run`` (the sampler, one call per segment): what each call gets (faces,
    the audio windows of the generated rows, the job's noise, the generator's state, settings and row
    plan) and returns."""
    original = module.SamplingJob.run

    def spy(self, faces, windows, index, generated):
        log.append({"faces": faces.clone(), "audio": windows(np.flatnonzero(generated)).clone(),
                    "noise": self.noise.clone(), "generator": self.generator.get_state(),
                    "settings": {"options": dataclasses.asdict(self.options), "index": np.array(index), "generated": np.array(generated),
                                 "vae_encode": self.vae_encode, "per_call": self.per_call, "total": self.total}})
        result = original(self, faces, windows, index, generated)
        log[-1]["out"] = result.faces.clone()
        return result

    monkeypatch.setattr(module.SamplingJob, "run", spy)


def _record_written_frames(monkeypatch, module, log):
    """Spy on ``module.VideoWriter.write``: a copy of the uint8 frames handed to the encoder."""
    original = module.VideoWriter.write

    def spy(self, frames):
        log.append(np.array(frames, copy=True).reshape(-1, *np.shape(frames)[-3:]))
        return original(self, frames)

    monkeypatch.setattr(module.VideoWriter, "write", spy)


@pytest.mark.usefixtures("landmarks_offline")
def test_node_runs_the_same_job_as_the_command_line(pack, node_models, inputs, tmp_path, monkeypatch):
    """Node and command line hand the sampler the same aligned faces, audio windows, noise, generator
    state and settings, segment for segment, get the same faces back, hand the encoder bit-identical
    frames, and write the same video format and length.

    The files themselves are compared through their frames only within H.264's loss: libx264 is not
    always byte-reproducible from run to run on identical input frames (its macroblock-tree rate control;
    on 2026-12-03, 5 of 20 encodes of the same 7 frames in one process differed, single-threaded too,
    and every one of 60 with ``no-mbtree``), which is what made this test flaky when it compared decoded
    frames. test_stream's test_stream_equals_one_sampler_run_over_the_whole_video covers the sampler."""
    clip, wav, audio = inputs
    node_calls, cli_calls = [], []
    _record_sync_inputs(monkeypatch, sys.modules[f"{PACK_NAME}.latentsync_core.pipeline"], node_calls)
    _record_sync_inputs(monkeypatch, sys.modules["latentsync_core.pipeline"], cli_calls)
    node_written, cli_written = [], []
    _record_written_frames(monkeypatch, sys.modules[f"{PACK_NAME}.latentsync_core.video_io"], node_written)
    _record_written_frames(monkeypatch, sys.modules["latentsync_core.video_io"], cli_written)
    comfy.utils.UPDATES.clear()
    out = run_node(pack, node_models, audio, video=VideoFromFile(str(clip)))
    video, report = out["result"]
    path = video.get_stream_source()
    assert out["ui"]["text"] == [report] and "face found in 4/4 frames" in report
    import folder_paths

    assert os.path.dirname(path) == os.path.join(folder_paths.get_temp_directory(), "latentsync")
    info = probe_video(path)
    assert (info.width, info.height, info.fps, info.num_frames, info.has_audio) == (320, 240, 25, 7, True)
    # one bar per stage, each counting up to its own total: finding faces (4 frames), then lip sync (1 chunk x
    # 1 step); a single bar over faces + output frames used to freeze part-way (issue 21)
    bars = [list(run) for _, run in itertools.groupby(comfy.utils.UPDATES, key=lambda u: u[1])]
    assert [run[-1] for run in bars] == [(4, 4), (1, 1)], comfy.utils.UPDATES
    assert all([d for d, _ in run] == sorted(d for d, _ in run) for run in bars)

    cli_out = tmp_path / "cli.mp4"
    code = cli.main(["--video", str(clip), "--audio", str(wav), "--out", str(cli_out), *TINY,
                     "--steps", "1", "--guidance", "1.0", "--seed", "7", "--no-download", "-q"])
    assert code == 0
    assert len(node_calls) == len(cli_calls) == 1
    for node_call, cli_call in zip(node_calls, cli_calls):
        for key in ("faces", "audio", "noise", "generator"):
            assert torch.equal(node_call[key], cli_call[key]), key
        a, b = node_call["settings"], cli_call["settings"]
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]) if isinstance(a[key], np.ndarray) else a[key] == b[key], key
        assert torch.equal(node_call["out"], cli_call["out"])  # the same faces from the sampler
    cli_info = probe_video(cli_out)
    assert (cli_info.width, cli_info.height, cli_info.fps, cli_info.num_frames) == (320, 240, 25, 7)
    node_frames, cli_frames = np.concatenate(node_written), np.concatenate(cli_written)
    assert node_frames.shape == (7, 240, 320, 3) and np.array_equal(node_frames, cli_frames)
    for written in (path, cli_out):  # each file holds those frames, up to H.264 4:2:0 (34.6 dB here)
        error = decoded(written).astype(np.float64) - node_frames
        assert 10 * np.log10(255**2 / np.mean(error**2)) > 30, written


@pytest.mark.usefixtures("landmarks_offline")
def test_path_input_and_input_errors(pack, node_models, inputs):
    clip, _, audio = inputs
    (video, _) = run_node(pack, node_models, audio, video_path=f'"{clip}"')["result"]
    assert probe_video(video.get_stream_source()).num_frames == 7
    with pytest.raises(pack.latentsync_core.LatentSyncError, match="either a VIDEO or a video_path"):
        run_node(pack, node_models, audio, video=VideoFromFile(str(clip)), video_path=str(clip))
    with pytest.raises(pack.latentsync_core.LatentSyncError, match="No video"):
        run_node(pack, node_models, audio)
    with pytest.raises(pack.latentsync_core.LatentSyncError, match="no such file"):
        run_node(pack, node_models, audio, video_path="/nonexistent/clip.mp4")
    with pytest.raises(pack.latentsync_core.LatentSyncError, match="no video track"):
        run_node(pack, node_models, audio, video=VideoFromFile(str(FIX / "audio" / "en.flac")))


@pytest.mark.usefixtures("landmarks_offline")
def test_in_memory_video_is_written_out_once_and_removed(pack, node_models, inputs):
    import io

    import folder_paths

    clip, _, audio = inputs
    (video, _) = run_node(pack, node_models, audio, video=VideoFromFile(io.BytesIO(clip.read_bytes())))["result"]
    assert probe_video(video.get_stream_source()).num_frames == 7
    folder = os.path.join(folder_paths.get_temp_directory(), "latentsync")
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # scratch input and partial files gone


@pytest.mark.usefixtures("landmarks_offline")
def test_cancel_then_a_normal_run(pack, node_models, inputs):
    import folder_paths

    clip, _, audio = inputs
    model = node_models[0]
    folder = os.path.join(folder_paths.get_temp_directory(), "latentsync")
    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    handle = model.unet.register_forward_hook(lambda *a: mm.interrupt_current_processing(True))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run_node(pack, node_models, audio, video=VideoFromFile(str(clip)))
    finally:
        handle.remove()
    assert set(os.listdir(folder)) == before  # nothing half-written
    (video, _) = run_node(pack, node_models, audio, video=VideoFromFile(str(clip)))["result"]
    assert probe_video(video.get_stream_source()).num_frames == 7


def test_skipped_with_one_log_line_on_comfyui_without_video(pack, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "comfy_api.input_impl", None)  # ImportError on import
    monkeypatch.setitem(sys.modules, "comfy_api.latest", None)
    name = f"{PACK_NAME}.nodes._video_without_comfy_api"
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "nodes", "video.py"))
    module = importlib.util.module_from_spec(spec)
    with caplog.at_level(logging.WARNING):
        spec.loader.exec_module(module)
    assert module.NODE_CLASSES == []
    assert [r for r in caplog.records if "Lip Sync Video skipped" in r.getMessage()]
