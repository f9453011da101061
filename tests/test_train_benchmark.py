"""benchmarks/train.py, which a lent GPU runs (benchmarks/gpu_run.sh): its counts and its row loop are
checked here on the CPU (no full-size step: minutes and ~20 GB), so the script cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT
from train_golden import meta


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), *args], capture_output=True,
                          text=True, timeout=300)


def test_counts_are_the_official_trainable_sets():
    done = _run("counts")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = {row["set"]: row for row in json.loads(done.stdout)}
    for preset in ("stage2", "stage2_efficient"):
        expected = meta()["trainable"][preset]["full_size"]
        assert counts[preset]["trainable_tensors"] == expected["tensors"]
        assert counts[preset]["trainable_parameters"] == expected["parameters"]
    assert 0 < counts["lora"]["trainable_parameters"] < counts["stage2_efficient"]["trainable_parameters"]
    assert counts["stage2"]["static_gib_fp32"] > counts["lora"]["static_gib_fp32"] > counts["stage2_efficient"]["static_gib_fp32"]


def test_rows_record_every_requested_row_even_when_none_can_run(tmp_path):
    out = tmp_path / "train.json"
    done = _run("rows", "--device", "cpu", "--budget-s", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = [(r["set"], r["gradient_checkpointing"]) for r in report["rows"]]
    # checkpointing-on rows first: the ones most worth having when a budget runs out
    assert rows == [(s, on) for on in (True, False) for s in ("stage2", "stage2_efficient", "lora")]
    assert all("skipped" in r for r in report["rows"])
