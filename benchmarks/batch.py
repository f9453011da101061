"""Clips per hour of ``python -m latentsync_core batch``: 1 vs 2 workers, local engine vs Ray.

    python benchmarks/batch.py                      # tiny models, 8 clips of 1 s, CPU
    python benchmarks/batch.py --clips 16 --seconds 2 --engines local ray --workers 1 2
    python benchmarks/batch.py --models /path/to/ComfyUI/models --steps 20   # real models (a GPU machine)

Each configuration runs the same manifest into a fresh OUT_DIR (so nothing is skipped) and reports wall
seconds, clips per hour and the per-clip overhead against the summed seconds of the rows themselves (model
loading, Ray start-up, scheduling). With the tiny models (the default) the per-clip work is small, so the
numbers show the overheads; with real models they show throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from latentsync_core import cli  # noqa: E402


def make_inputs(folder: Path, clips: int, seconds: float) -> Path:
    from test_cli import _write_wav
    from test_stream import make_face_clip

    make_face_clip(folder / "face.mp4", int(seconds * 25))
    _write_wav(folder / "speech.wav", seconds)
    rows = ["video,audio,out,seed"] + [f"face.mp4,speech.wav,clip{i:03d}.mp4,{i}" for i in range(clips)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def run(manifest: Path, out: Path, engine: str, workers: int, model_flags: list[str]) -> dict:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["batch", str(manifest), str(out), "--engine", engine, "--workers", str(workers), "-q",
                         *model_flags])
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()]
    done = [x for x in lines if x["status"] == "done"]
    rows_s = sum(x["seconds"] for x in done)
    return {"engine": engine, "workers": workers, "exit": code, "clips": len(done), "wall_s": round(wall, 1),
            "clips_per_hour": round(3600 * len(done) / wall, 1), "row_seconds_sum": round(rows_s, 1),
            "overhead_s_per_clip": round((wall * workers - rows_s) / max(len(done), 1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--models", help="a models folder (real weights); default: the tests' tiny models")
    parser.add_argument("--steps", type=int, default=2, help="sampler steps (default 2: scaled from 20)")
    args = parser.parse_args()
    if args.models:
        model_flags = ["--models", args.models]
    else:
        from test_cli import TINY

        model_flags = [*TINY, "--no-download"]
    model_flags += ["--steps", str(args.steps)]
    folder = Path(tempfile.mkdtemp(prefix="batch_bench_"))
    manifest = make_inputs(folder, args.clips, args.seconds)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores, "
          f"{args.clips} clips of {args.seconds} s, {args.steps} steps")
    for engine in args.engines:
        for workers in args.workers:
            row = run(manifest, folder / f"out_{engine}_{workers}", engine, workers, model_flags)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
