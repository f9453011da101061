"""Training data (latentsync_core/train/dataset.py): a dataset folder built from the official batch's own clips
gives, at the batch's indices, the official batch (LATENTSYNC_GOLDEN_TRAIN batch.npz: pixels, mel, audio rows);
sampling follows the official UNetDataset rules; bad folders fail with a clear message."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from train_golden import GOLDEN, build_dataset

from latentsync_core.train.dataset import DatasetError, TrainDataset, append_manifest, write_segment

TOL_ROWS = 5e-5  # whisper features, float32 re-run: 1e-5 measured
TOL_MEL = 1e-6


@pytest.fixture(scope="module")
def batch():
    with np.load(GOLDEN / "batch.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("dataset")
    return folder, build_dataset(folder)


@pytest.mark.parametrize("prefix", ["", "step2/"], ids=["step1", "step2"])
def test_samples_equal_the_official_batch(batch, dataset, prefix):
    folder, index = dataset
    ds = TrainDataset(str(folder))
    picks = [(index[str(c)], int(s), int(r)) for c, s, r in
             zip(batch[prefix + "clip"], batch[prefix + "start_idx"], batch[prefix + "ref_start_idx"])]
    mask = torch.from_numpy(batch["fixed_mask"])
    tb = ds.batch(picks, mask)
    faces = torch.from_numpy(batch["faces"]).permute(0, 3, 1, 2).float()
    for b in range(len(picks)):
        gt = ((faces[batch[prefix + "gt_face_index"][b]] / 255.0) - 0.5) / 0.5
        ref = ((faces[batch[prefix + "ref_face_index"][b]] / 255.0) - 0.5) / 0.5
        assert torch.equal(tb.gt_pixels[b], gt) and torch.equal(tb.ref_pixels[b], ref)
        rows = torch.from_numpy(batch[prefix + "audio_feature_rows"][b])  # [40, 5, 384]
        official = torch.stack([rows[2 * f: 2 * f + 10].reshape(50, 384) for f in range(16)])
        assert (tb.audio_embeds[b] - official).abs().max() < TOL_ROWS
        assert (tb.mel[b] - torch.from_numpy(batch[prefix + "mel"][b])).abs().max() < TOL_MEL
    assert tb.gt_pixels.shape == (2, 16, 3, 256, 256) and tb.mel.shape == (2, 1, 80, 52)
    assert tb.audio_embeds.shape == (2, 16, 50, 384) and torch.equal(tb.keep_mask, mask)


def test_draws_follow_the_official_rule(dataset, tmp_path):
    folder, _ = dataset
    ds = TrainDataset(str(folder))
    rng = random.Random(1)
    seen_segments, seen_starts = set(), set()
    for _ in range(300):
        seg, start, ref = ds.draw(rng)
        n = ds.segments[seg].frames
        assert 0 <= start <= n - 16 and 0 <= ref <= n - 16
        assert not start - 16 < ref < start + 16  # the reference window never overlaps the gt window
        seen_segments.add(seg)
        seen_starts.add(start)
    assert seen_segments == {0, 1} and len(seen_starts) > 20
    assert ds.draw(random.Random(5)) == ds.draw(random.Random(5))  # reproducible from the seed


def test_short_segments_are_not_drawn_and_bad_folders_say_why(dataset, tmp_path, batch):
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        TrainDataset(str(tmp_path))
    faces = batch["faces"]  # 16 frames: shorter than the official 48
    append_manifest(str(tmp_path), write_segment(str(tmp_path), "short", faces, np.zeros((40, 5, 384)), np.zeros((80, 60))))
    with pytest.raises(DatasetError, match="no segment of at least 48 frames"):
        TrainDataset(str(tmp_path))
    (tmp_path / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match="line 1 is broken"):
        TrainDataset(str(tmp_path))
    # a manifest line whose file is gone (an interrupted prepare) is left out, not an error
    folder, _ = dataset
    lines = (folder / "manifest.jsonl").read_text() + json.dumps({"name": "gone", "frames": 60, "file": "segments/gone.npz"}) + "\n"
    (tmp_path / "manifest.jsonl").write_text(lines.replace("segments/", str(folder / "segments") + "/"))
    assert [s.name for s in TrainDataset(str(tmp_path)).segments] == ["clip0", "clip1"]
