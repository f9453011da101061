"""Host memory and speed of ``python -m latentsync_core`` on 720p clips of different lengths.

    python benchmarks/cli.py [--seconds 4 16] [--steps 1]

Makes a 1280x720 25 fps clip of a real face (tests/fixtures/face) and a speech track of the same
length, runs the command line in a child process with the tiny test models, and reports the child's
peak resident memory (ru_maxrss) and seconds per output frame. Bounded memory shows as a peak that
does not grow with the clip's length.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
FIX = ROOT / "tests" / "fixtures"

from test_cli import TINY  # noqa: E402  (the tiny golden models, as the CLI test uses them)

from latentsync_core.audio import load_audio_file  # noqa: E402
from latentsync_core.video_io import VideoWriter  # noqa: E402


def make_clip(folder: Path, seconds: float, fps: int = 25) -> tuple[Path, Path]:
    img = cv2.cvtColor(cv2.imread(str(FIX / "face" / "detect_0.png")), cv2.COLOR_BGR2RGB)
    face = cv2.resize(img, (960, 720), interpolation=cv2.INTER_CUBIC)
    canvas = np.zeros((720, 1280, 3), np.uint8)
    canvas[:, 160:1120] = face
    video = folder / f"clip_{seconds:g}s.mp4"
    n = round(seconds * fps)
    with VideoWriter(video, 1280, 720, fps) as w:
        for i in range(n):
            d = int(3 * np.sin(i / 7))
            w.write(np.roll(canvas, (d, -d), axis=(0, 1)))
    wav, sr = load_audio_file(FIX / "audio" / "long.flac", sample_rate=16000, mono=True)
    reps = int(np.ceil(seconds * sr / wav.shape[1]))
    samples = np.tile(wav[0].numpy(), reps)[: int(seconds * sr)]
    audio = folder / f"speech_{seconds:g}s.wav"
    with wave.open(str(audio), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes((samples * 32767).astype("<i2").tobytes())
    return video, audio


def run_cli(video: Path, audio: Path, out: Path, steps: int) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one CLI run in a fresh child process."""
    code = (
        "import resource, sys; from latentsync_core.cli import main; rc = main(sys.argv[1:]); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
    )
    args = ["--video", str(video), "--audio", str(audio), "--out", str(out), *TINY]
    args += ["--steps", str(steps), "--guidance", "1.0", "--no-download", "-q"]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    rss_kib = int(next(line.split()[1] for line in res.stderr.splitlines() if line.startswith("MAXRSS")))
    return wall, rss_kib / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, nargs="+", default=[4.0, 16.0])
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args()
    print(f"torch threads: {os.cpu_count()} CPUs; resource page size {resource.getpagesize()}")
    print("| clip (1280x720, 25 fps) | output frames | wall s | s / frame | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            video, audio = make_clip(Path(tmp), seconds)
            wall, rss = run_cli(video, audio, Path(tmp) / "out.mp4", args.steps)
            n = round(seconds * 25)
            print(f"| {seconds:g} s | {n} | {wall:.1f} | {wall / n:.2f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
