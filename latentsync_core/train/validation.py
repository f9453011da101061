"""Validation during a fine-tuning run (``--validate-every N``): is training still helping?

The dataset's last segment (manifest order) is held out of the draws (:meth:`TrainDataset.hold_out`; a
one-segment dataset keeps it, with a warning). At step 0 of a fresh run (the baseline), every N steps and at
the last step, :class:`Validator` lip-syncs the segment's first ``validate_frames`` frames to their own audio
with the current weights (the inference sampler: official DDIM 20 steps, guidance 1.5, the U-Net in eval mode
with its LoRA adapters, no gradient) and writes:

- ``RUN_DIR/validation/step_<step>.mp4``: the generated faces beside the ground truth, with the segment's audio
  from its source file when that is readable (else silent);
- a line of ``RUN_DIR/validation.jsonl``: ``step``, the segment, and, when the run has a SyncNet (the sync
  loss's judge), ``sync`` (StableSyncNet cosine similarity of the generated faces, NOT LSE) beside ``sync_gt``
  (the same for the ground truth);
- ``RUN_DIR/validation.png``: ``sync`` over the steps.

Validation leaves training exactly as it would be without it: its noise comes from its own generator
(seeded with the run's seed, the same at every validation, so clips differ only by the weights), the global
``random`` / torch random states are restored, the trainer's generator is not touched, and train mode is
restored. Only rank 0 validates.
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import torch

from ..constants import CHUNK_FRAMES, DEFAULT_FPS, DEFAULT_GUIDANCE, DEFAULT_STEPS
from .dataset import MANIFEST, Segment

log = logging.getLogger(__name__)
VALIDATION_DIR = "validation"
VALIDATION_LOG = "validation.jsonl"
VALIDATION_PLOT = "validation.png"
SAMPLER_STEPS = DEFAULT_STEPS  # the official inference settings (tests lower the steps)
GUIDANCE = DEFAULT_GUIDANCE


def read_validation(run_dir: str) -> list[dict]:
    """The lines of ``RUN_DIR/validation.jsonl`` (none yet: [])."""
    from .run import read_jsonl

    return read_jsonl(os.path.join(run_dir, VALIDATION_LOG))


def _manifest_row(dataset_dir: str, name: str) -> dict:
    """The segment's manifest line (the last of its name): ``source``, ``first_frame``, ``fps`` when prepared."""
    row: dict = {}
    with open(os.path.join(dataset_dir, MANIFEST), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                row = r if r.get("name") == name else row
    return row


def segment_audio(row: dict, frames: int) -> tuple[np.ndarray, int] | None:
    """The audio under the segment's first ``frames`` frames, from its source (a same-named audio file beside the
    video, as ``prepare`` takes it, else the video's track); None when there is no readable source."""
    from ..audio.io import load_audio_file
    from ..errors import LatentSyncError

    source = row.get("source")
    if not source or not os.path.isfile(source):
        return None
    fps = float(row.get("fps", DEFAULT_FPS))
    audio = source
    try:
        from .prepare import sources

        audio = dict(sources(os.path.dirname(source))).get(source, source)
    except (LatentSyncError, OSError):
        pass
    try:
        wave, rate = load_audio_file(audio, start=int(row.get("first_frame", 0)) / fps, duration=frames / fps)
    except (LatentSyncError, OSError) as exc:
        log.warning("validation: no audio for the clips (%s): they are silent", exc)
        return None
    return wave.numpy(), int(rate)


class Validator:
    """Call with ``(trainer, total_steps)`` at the start of the loop and after every step (see the module
    docstring); it renders when the step is due and not rendered yet."""

    def __init__(self, run_dir: str, dataset_dir: str, segment: Segment, held_out: bool, every: int, frames: int,
                 seed: int, fps: float = DEFAULT_FPS):
        self.run_dir, self.segment, self.held_out, self.every = run_dir, segment, held_out, int(every)
        self.seed, self.fps = int(seed), float(fps)
        self.frames = max(CHUNK_FRAMES, min(int(frames), segment.frames) // CHUNK_FRAMES * CHUNK_FRAMES)
        with np.load(segment.file) as z:
            self.faces = z["faces"][: self.frames]
            self.features, self.mel = z["features"], z["mel"]
        self.audio = segment_audio(_manifest_row(dataset_dir, segment.name), self.frames)
        self.done: set[int] | None = None  # steps already rendered (read at the first call)
        if not held_out:
            log.warning("validation: the dataset has one segment, so %s is validated on but also trained on "
                        "(not held out): the clips show fitting, not generalisation.", segment.name)

    def _first_call(self, step: int) -> None:
        """A resumed run keeps the validations up to its checkpoint's step and drops later ones (they are done
        again with the same weights)."""
        from .run import trim_jsonl

        self.done = {r["step"] for r in trim_jsonl(os.path.join(self.run_dir, VALIDATION_LOG), step)}

    def __call__(self, trainer, total_steps: int) -> dict | None:
        step = trainer.global_step
        if getattr(trainer, "rank", 0) != 0:
            return None
        if self.done is None:
            self._first_call(step)
        if step in self.done:
            return None
        if step % self.every and step != total_steps:
            return None
        t0 = time.perf_counter()
        generated = self.sample(trainer)
        line = {"step": step, "segment": self.segment.name, "held_out": self.held_out, "frames": self.frames,
                "video": f"{VALIDATION_DIR}/step_{step:07d}.mp4", **self.score(trainer, generated)}
        self.write_video(os.path.join(self.run_dir, line["video"]), generated)
        line["seconds"] = round(time.perf_counter() - t0, 3)
        with open(os.path.join(self.run_dir, VALIDATION_LOG), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        self.done.add(step)
        plot_validation(self.run_dir)
        log.info("validation at step %d: %s", step, ", ".join(f"{k} {line[k]:.4f}" for k in ("sync", "sync_gt")
                                                             if k in line) or line["video"])
        return line

    def sample(self, trainer) -> np.ndarray:
        """uint8 ``[frames, res, res, 3]``: the held-out faces lip-synced by the trainer's current U-Net."""
        import random

        from ..pipeline import LipSyncPipeline
        from ..timing import frame_windows

        unet, device = trainer.unet, torch.device(trainer.device)
        was_training = unet.training
        windows = frame_windows(torch.from_numpy(self.features), np.arange(self.frames), self.fps).float()
        python_state = random.getstate()
        devices = [device.index or 0] if device.type == "cuda" else []
        unet.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices), trainer._autocast():
                pipe = LipSyncPipeline(unet, trainer.vae)
                result = pipe.sync_faces(torch.from_numpy(self.faces), windows, steps=SAMPLER_STEPS,
                                         guidance=GUIDANCE, generator=torch.Generator("cpu").manual_seed(self.seed),
                                         chunk_batch=1, out_dtype=torch.float32)
        finally:
            unet.train(was_training)
            random.setstate(python_state)
        return (result.faces.clamp(0, 1) * 255).round().to(torch.uint8).numpy()

    def score(self, trainer, generated: np.ndarray) -> dict:
        """``sync`` / ``sync_gt``: mean StableSyncNet cosine similarity of the 16-frame windows (not LSE); {}
        without a SyncNet."""
        from ..sync_fast import _fits, window_similarities

        syncnet = getattr(trainer, "syncnet", None)
        if syncnet is None:
            return {}
        starts = _fits(np.arange(0, self.frames - CHUNK_FRAMES + 1, CHUNK_FRAMES), self.mel, 0, self.fps)
        if not len(starts):
            return {}
        was_training = syncnet.training
        syncnet.eval()
        try:
            sims = {k: window_similarities(syncnet, torch.from_numpy(f), starts, self.mel, 0, self.fps)
                    for k, f in (("sync", generated), ("sync_gt", self.faces))}
        finally:
            syncnet.train(was_training)
        return {k: round(float(v.mean()), 6) for k, v in sims.items()}

    def write_video(self, path: str, generated: np.ndarray) -> None:
        """``generated | ground truth`` side by side, with the segment's audio when there is one (atomic)."""
        from ..video_io import VideoWriter

        os.makedirs(os.path.dirname(path), exist_ok=True)
        res = generated.shape[1]
        with VideoWriter(path, 2 * res, res, self.fps, audio=self.audio) as writer:
            writer.write(np.concatenate([generated, self.faces], axis=2))


def plot_validation(run_dir: str) -> str | None:
    """``RUN_DIR/validation.png``: the validations' sync score over the steps; None without scores."""

    from ..plot import BLUE, line_chart, write_png

    rows = [r for r in read_validation(run_dir) if "sync" in r]
    if len(rows) < 2:
        return None
    values = np.array([r["sync"] for r in rows], dtype=np.float64)
    step = (rows[-1]["step"] - rows[0]["step"]) / (len(rows) - 1) or 1.0
    image = line_chart(values, (768, 300), BLUE, f"validation sync (not LSE), step {rows[-1]['step']}", "step",
                       float(rows[0]["step"]), float(step), zero=False)
    return write_png(os.path.join(run_dir, VALIDATION_PLOT), image)


def make_validator(dataset, dataset_dir: str, run_dir: str, options) -> Validator | None:
    """A :class:`Validator` for ``options.validate_every`` > 0 (the held-out segment is taken out of
    ``dataset``'s draws here); None when validation is off (the dataset is left as it is)."""
    if not options.validate_every:
        return None
    segment, held_out = dataset.hold_out()
    return Validator(run_dir, dataset_dir, segment, held_out, options.validate_every, options.validate_frames,
                     options.train_seed, dataset.fps)
