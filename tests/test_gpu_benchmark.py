"""benchmarks/throughput.py gpu, the script a lent GPU runs once (benchmarks/gpu_run.sh): checked here on
the CPU with a tiny U-Net, so it cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_benchmark_lists_the_issue_grid_and_measures_within_budget(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "gpu", "--device", "cpu", "--dtype", "fp32",
           "--channels", "32", "64", "64", "64", "--versions", "1.5", "1.6", "--resolutions", "64", "64",
           "--frames", "8", "--steps", "1", "--repeat", "1", "--budget-s", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["steps"] == 1 and report["block_out_channels"] == [32, 64, 64, 64]

    # the issue's grid: 1.5 and 1.6 x chunk_batch 1/2/4 x deepcache off/3 eager, compile on, channels-last
    grid = {(r["version"], r["compile"], r["chunk_batch"], r["deepcache"]) for r in rows if not r["channels_last"]}
    for version in ("1.5", "1.6"):
        assert {(version, False, k, d) for k in (1, 2, 4) for d in (0, 3)} <= grid
        assert (version, True, 1, 0) in grid and (version, True, 4, 0) in grid
        assert any(r["version"] == version and r["channels_last"] for r in rows)
    # eager rows first: a run cut short by its budget keeps them, and compile rows (minutes each) come last
    assert max(i for i, r in enumerate(rows) if not r["compile"]) < min(i for i, r in enumerate(rows) if r["compile"])

    # the first row is measured; the 1 s budget then skips every later one, and the file keeps them all
    first = rows[0]
    assert "error" not in first, first
    assert first["fps"] > 0 and first["fps_range"][0] <= first["fps_range"][1] == first["fps"]
    assert len(first["seconds"]) == 1 and first["peak_allocated_gib"] == 0.0  # no CUDA: no peak
    assert all("skipped" in r for r in rows[1:])
