"""CPU stages with 1 vs N worker threads, and the streaming job serial vs overlapped (issue 12).

    python benchmarks/cpu_stages.py [--frames 48] [--repeat 3] [--workers 2] [--seconds 4]

Side by side in one process, alternating A/B, best and range over ``--repeat`` rounds (this machine is
shared: ratios are the result, absolute times move with the load, which is printed):

- **detect**: ``FaceAligner.detect`` (mediapipe landmarks, one model per thread) on 720p frames
  (benchmarks/face.py's moving portrait), workers 1 vs N; landmarks asserted identical.
- **warp**: ``FaceAligner.build`` (gap bridging, smoothing, the Lanczos crop warps), workers 1 vs N;
  faces asserted identical.
- **paste**: ``paste_back`` (reference OpenCV path), workers 1 vs N; frames asserted identical.
- **stream**: ``lip_sync_video`` with the tiny test models (steps 1) on a 720p clip of ``--seconds``
  (benchmarks/cli.py's clip), ``overlap`` off vs on; encoded frames asserted identical. On the CPU the
  sampler already uses every core, so this shows the cost/benefit of the helper threads there; the
  overlap is meant for a GPU (no GPU here).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from face import make_frames  # noqa: E402 (benchmarks/face.py)

from latentsync_core.face import FaceAligner, paste_back  # noqa: E402
from latentsync_core.video_io import VideoReader  # noqa: E402

FIX = os.path.join(ROOT, "tests", "fixtures")


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def alternate(label: str, runs: dict, repeat: int, n: int, unit: str = "ms/frame") -> None:
    """Time each of ``runs`` (name -> fn returning a result) ``repeat`` times, alternating; results of
    every run must be identical to the first."""
    times = {name: [] for name in runs}
    first = None
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            if first is None:
                first = result
            else:
                assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first, result)), f"{label}: {name} differs"
    scale = 1000 / n if unit == "ms/frame" else 1 / n
    names = list(runs)
    base = min(times[names[0]])
    cells = []
    digits = 1 if unit == "ms/frame" else 3
    for name in names:
        t = times[name]
        cells.append(f"{name} {min(t) * scale:.{digits}f} ({min(t) * scale:.{digits}f}-{max(t) * scale:.{digits}f})")
    speedup = base / min(times[names[-1]])
    print(f"| {label} | " + " | ".join(cells) + f" | {unit} | x{speedup:.2f} | identical | load {load()} |", flush=True)


def bench_face(frames_n: int, repeat: int, workers: int) -> None:
    frames = make_frames(frames_n, 720, 1280)
    aligners = {w: FaceAligner(256, workers=w) for w in (1, workers)}
    for a in aligners.values():
        a.detect(frames[:2])  # open the models before timing
        a._backends(a.workers)
    alternate("detect 720p", {f"{w} thread(s)": (lambda a=a: a.detect(frames)) for w, a in aligners.items()},
              repeat, frames_n)
    landmarks, found = aligners[1].detect(frames)
    alternate("align warps 720p",
              {f"{w} thread(s)": (lambda a=a: (a.build(frames, landmarks, found).faces,)) for w, a in aligners.items()},
              repeat, frames_n)
    aligned = aligners[1].build(frames, landmarks, found)
    for a in aligners.values():
        a.close()
    faces = 255 - aligned.faces
    alternate("paste-back 720p (reference)",
              {f"{w} thread(s)": (lambda w=w: (paste_back(frames, faces, aligned.affines, aligned.found, workers=w),))
               for w in (1, workers)}, repeat, frames_n)


def bench_stream(seconds: float, repeat: int) -> None:
    from cli import make_clip

    from latentsync_core.audio import load_audio_file, load_whisper
    from latentsync_core.stream import StreamSettings, lip_sync_video
    from latentsync_core.unet import load_unet
    from latentsync_core.vae import load_vae

    unet = load_unet(f"{FIX}/unet/config.json", f"{FIX}/unet/latentsync_unet.pt")
    vae = load_vae(f"{FIX}/pipeline/vae_tiny_random.pt", f"{FIX}/pipeline/vae_config.json")
    whisper = load_whisper(f"{FIX}/audio/whisper_tiny_encoder.pt")
    folder = tempfile.mkdtemp(prefix="latentsync-cpu-stages-")
    video, audio = make_clip(Path(folder), seconds, 25)
    waveform, rate = load_audio_file(str(audio))

    def job(overlap: bool):
        out = os.path.join(folder, f"out_{overlap}.mp4")
        report = lip_sync_video(str(video), out, waveform, rate, unet=unet, vae=vae, whisper=whisper,
                                settings=StreamSettings(steps=1, guidance=1.0, overlap=overlap))
        with VideoReader(out) as r:
            return (r.read(0, r.num_frames),), report.num_frames

    frames_n = job(False)[1]
    alternate(f"stream job 720p {seconds:g} s (tiny models, steps 1)",
              {"serial": lambda: job(False)[0], "overlap": lambda: job(True)[0]}, repeat, frames_n, unit="s/frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--only", choices=["face", "stream"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load {load()}", flush=True)
    print("| stage | A: best (range) | B: best (range) | unit | B speed-up | output | load after |")
    print("|---|---|---|---|---|---|---|")
    if args.only != "stream":
        bench_face(args.frames, args.repeat, args.workers)
    if args.only != "face":
        bench_stream(args.seconds, args.repeat)


if __name__ == "__main__":
    main()
