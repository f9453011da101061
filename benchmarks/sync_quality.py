"""Does an option change lip sync? The same clip lip-synced with each option, then scored side by side.

    python benchmarks/sync_quality.py --video in.mp4 --audio speech.wav --models /path/to/ComfyUI/models
    python benchmarks/sync_quality.py --tiny            # the harness on the tests' tiny random models

Variants: the official settings (DDIM 20 steps, guidance 1.5), DeepCache 3, DPM-Solver++ 2M with 10 steps,
and chunk_batch 2 (must equal the official output exactly). Each output is scored with the ``score``
command (LSE-C, LSE-D, offset; ``--crops`` as given) and the table is printed and written as JSON.

With the tiny random models (``--tiny``: a 2 s clip of the tests' face, 2 steps instead of 20) the numbers
prove only that the harness runs: the U-Net and SyncNet are random. With the real weights (a lent GPU, or
a user's machine) the table answers the question.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from latentsync_core import cli  # noqa: E402

VARIANTS = {  # name -> flags on top of the base settings
    "official": [],
    "deepcache 3": ["--deepcache", "3"],
    "dpmpp_2m 10 steps": ["--sampler", "dpmpp_2m", "--steps", "10"],
    "chunk_batch 2": ["--chunk-batch", "2"],
}


def tiny_inputs(folder: Path) -> tuple[list[str], list[str], Path, Path]:
    """(lip-sync flags, score flags, video, audio) for the tests' tiny models and a 2 s face clip."""
    from test_cli import TINY, _write_wav
    from test_stream import make_face_clip

    video = make_face_clip(folder / "face.mp4", 50)
    audio = folder / "speech.wav"
    _write_wav(audio, 2.0)
    syncnet = folder / "syncnet_v2.model"
    with np.load(ROOT / "tests" / "fixtures" / "sync" / "syncnet_v2_random.npz") as w:
        torch.save({k: torch.from_numpy(w[k]).float() for k in w.files}, syncnet)
    return [*TINY, "--no-download"], ["--syncnet", str(syncnet), "--crops", "landmarks", "--no-download"], video, audio


def run_variant(name: str, flags: list[str], base: list[str], score: list[str], video: Path, audio: Path,
                out_dir: Path, steps: list[str]) -> dict:
    out = out_dir / f"{name.replace(' ', '_')}.mp4"
    t0 = time.perf_counter()
    # --crf 0: lossless, so the score sees exactly the generated frames (x264's lossy rate control is not
    # reproducible from run to run, which would move scores of near-identical outputs)
    code = cli.main(["--video", str(video), "--audio", str(audio), "--out", str(out), "-q", "--crf", "0", *base,
                     *steps, *flags])
    seconds = time.perf_counter() - t0
    if code != 0:
        return {"variant": name, "error": f"lip sync exited {code}"}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["score", str(out), "--json", "-q", *score])
    if code != 0:
        return {"variant": name, "seconds": seconds, "error": f"score exited {code}"}
    figures = json.loads(buffer.getvalue())
    return {"variant": name, "seconds": round(seconds, 2), "lse_c": figures["lse_c"], "lse_d": figures["lse_d"],
            "offset": figures["offset_frames"], "crops": figures["crop_path"], "output": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random models (harness check)")
    parser.add_argument("--video")
    parser.add_argument("--audio")
    parser.add_argument("--models", help="models folder (ComfyUI's layout)")
    parser.add_argument("--crops", default="auto", help="the score's face crops (auto, s3fd, landmarks)")
    parser.add_argument("--out", default=None, help="folder for the outputs and results.json (default: a temp dir)")
    args = parser.parse_args()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="sync_quality_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        base, score, video, audio = tiny_inputs(out_dir)
        steps = ["--steps", "2"]  # scaled from 20 (the dpmpp_2m variant sets its own 10)
    else:
        if not (args.video and args.audio):
            parser.error("give --video and --audio (or --tiny)")
        models = ["--models", args.models] if args.models else []
        base, score, video, audio = models, [*models, "--crops", args.crops], Path(args.video), Path(args.audio)
        steps = []
    rows = []
    for name, flags in VARIANTS.items():
        row = run_variant(name, flags, base, score, video, audio, out_dir, [] if "--steps" in flags else steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out_dir / "results.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tiny": args.tiny,
                                                      "rows": rows}, indent=1))
    print("\n| variant | s | LSE-C | LSE-D | offset |\n|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | | {r['error']} | | |")
        else:
            print(f"| {r['variant']} | {r['seconds']} | {r['lse_c']:.3f} | {r['lse_d']:.3f} | {r['offset']:+d} |")
    print(f"\nwritten: {out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
