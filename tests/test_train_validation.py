"""``train --validate-every N`` (latentsync_core/train/validation.py): the dataset's last segment is held out
of the draws, rendered with the current weights at step 0, every N steps and at the end (clips beside the
ground truth, validation.jsonl, SyncNet score when there is one), a resumed run continues the schedule, and
validation changes nothing in training: the LoRA equals the one of a run without it."""

from __future__ import annotations

import json
import logging
import random
import shutil

import av
import pytest
import torch
from safetensors.torch import load_file
from test_train_command import _argv
from train_golden import FIX, build_trainer

from latentsync_core import cli
from latentsync_core.train import validation
from latentsync_core.train.dataset import MANIFEST, TrainDataset


@pytest.fixture
def fast(monkeypatch):
    """One sampler step without guidance: the clips stay cheap on the CPU."""
    monkeypatch.setattr(validation, "SAMPLER_STEPS", 1)
    monkeypatch.setattr(validation, "GUIDANCE", 1.0)


def _with_held_out(dataset, folder):
    """``dataset`` plus a third segment (clip0's faces, en.flac as its source): the one validation holds out,
    so training draws from exactly the two segments a run without validation draws from."""
    shutil.copytree(dataset, folder)
    line = {"name": "held", "frames": 48, "file": "segments/clip0.npz", "resolution": 256,
            "source": str(FIX / "audio" / "en.flac"), "first_frame": 0, "fps": 25}
    with open(folder / MANIFEST, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    return folder


def test_validation_renders_holds_out_resumes_and_changes_nothing(dataset, tmp_path, monkeypatch, fast):
    off = tmp_path / "off"
    assert cli.main(_argv(dataset, off, 2)) == 0

    drawn: list[str] = []
    monkeypatch.setattr(TrainDataset, "draw", _recording(drawn))
    data3, on = _with_held_out(dataset, tmp_path / "data3"), tmp_path / "on"
    val = ["--validate-every", "1", "--validate-frames", "16"]
    assert cli.main(_argv(data3, on, 1, *val)) == 0
    assert cli.main(_argv(data3, on, 2, "--resume", *val)) == 0
    assert drawn and "held" not in drawn

    rows = validation.read_validation(str(on))
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["segment"] == "held" and r["held_out"] and r["frames"] == 16 for r in rows)
    assert "sync" not in rows[0]  # --sync-weight 0: no SyncNet in the run
    for r in rows:
        with av.open(str(on / r["video"])) as video:
            v = video.streams.video[0]
            assert (v.width, v.height) == (512, 256) and video.streams.audio  # generated | gt, en.flac's audio
    a, b = load_file(off / "lora_0000002.safetensors"), load_file(on / "lora_0000002.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _recording(drawn: list):
    draw = TrainDataset.draw

    def recorded(self, rng):
        pick = draw(self, rng)
        drawn.append(self.segments[pick[0]].name)
        return pick

    return recorded


def test_the_held_out_segment_is_never_drawn(dataset, tmp_path, caplog):
    data = TrainDataset(str(dataset))
    names = [s.name for s in data.segments]
    segment, held = data.hold_out()
    assert held and segment.name == names[-1] and len(data) == len(names) - 1
    rng = random.Random(0)
    assert {data.segments[data.draw(rng)[0]].name for _ in range(200)} == set(names[:-1])

    one = tmp_path / "one"
    one.mkdir()
    shutil.copytree(dataset / "segments", one / "segments")
    (one / MANIFEST).write_text((dataset / MANIFEST).read_text().splitlines()[0] + "\n")
    data = TrainDataset(str(one))
    segment, held = data.hold_out()
    assert not held and len(data) == 1 and data.segments[0] == segment
    with caplog.at_level(logging.WARNING):
        validation.Validator(str(tmp_path / "run"), str(one), segment, held, 1, 16, 0)
    assert "not held out" in caplog.text


def test_a_validation_scores_with_the_syncnet_and_leaves_the_trainer_as_it_was(dataset, tmp_path, fast):
    trainer = build_trainer("stage2_efficient")
    data = TrainDataset(str(dataset))
    segment, held = data.hold_out()
    run = tmp_path / "run"
    run.mkdir()
    validator = validation.Validator(str(run), str(dataset), segment, held, 5, 40, 1247)
    assert validator.frames == 32  # whole chunks
    gen, torch_state, py_state = trainer.generator.get_state(), torch.get_rng_state(), random.getstate()
    line = validator(trainer, 10)
    assert line["step"] == 0 and -1 <= line["sync"] <= 1 and -1 <= line["sync_gt"] <= 1
    assert validator(trainer, 10) is None  # done already
    assert torch.equal(trainer.generator.get_state(), gen) and torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state and trainer.unet.training
    assert (run / "validation" / "step_0000000.mp4").stat().st_size > 0
    trainer.global_step = 3
    assert validator(trainer, 10) is None  # not due
    trainer.global_step = 10
    assert validator(trainer, 10)["step"] == 10  # the last step
    assert [r["step"] for r in validation.read_validation(str(run))] == [0, 10]
    assert (run / "validation.png").stat().st_size > 1000


def test_a_bad_validate_value_is_a_usage_error(dataset, tmp_path, capsys):
    assert cli.main([*_argv(dataset, tmp_path / "r", 1), "--validate-every", "-1"]) == 2
    assert "--validate-every" in capsys.readouterr().err
    assert cli.main([*_argv(dataset, tmp_path / "r", 1), "--validate-frames", "8"]) == 2


def test_a_run_started_before_validation_existed_resumes(tmp_path):
    """run.json without the validate options (an older run) resumes with validation off, not on."""
    import dataclasses

    from latentsync_core.errors import LatentSyncError
    from latentsync_core.options import TrainOptions
    from latentsync_core.train.checkpoint import STATE_FILE, WEIGHTS_FILE, checkpoint_name
    from latentsync_core.train.run import RUN_FILE, start_run

    defaults = dataclasses.asdict(TrainOptions())
    old = {k: v for k, v in defaults.items() if not k.startswith("validate_")}
    (tmp_path / RUN_FILE).write_text(json.dumps(old))
    saved = tmp_path / checkpoint_name(1)  # the run got as far as one save (files: their names only matter here)
    saved.mkdir()
    (saved / STATE_FILE).write_bytes(b"")
    (saved / WEIGHTS_FILE).write_bytes(b"")
    start_run(str(tmp_path), defaults, True, defaults)
    with pytest.raises(LatentSyncError, match="validate_every"):
        start_run(str(tmp_path), {**defaults, "validate_every": 5}, True, defaults)
