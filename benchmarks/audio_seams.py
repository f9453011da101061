"""Continuity of whisper features across 30 s windows, and feature-extraction speed.

    python benchmarks/audio_seams.py [clip.wav|flac] [whisper.pt]

Measure: the jump ``j[t] = ||f[t+1] - f[t]||`` (all 5 x 384 values of two consecutive 20 ms steps)
divided by the clip's median jump. Ordinary speech stays below ~1.5 (99th percentile); a seam shows as
one large jump. Reported for the official 30 s windows (at the 30 s boundary) and for the seam-free
default (at 30 s and over its window hand-overs). Defaults: the test fixtures (35 s espeak clip that
speaks across 30 s, the golden random whisper-tiny weights).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latentsync_core import constants  # noqa: E402
from latentsync_core.audio import audio_features, load_audio_file, load_whisper  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "audio"


def jump_ratios(features: torch.Tensor) -> torch.Tensor:
    """``[L-1]``: step-to-step jump over the clip's median jump."""
    jumps = (features[1:] - features[:-1]).flatten(1).norm(dim=1)
    return jumps / jumps.median()


def handover_steps(length: int) -> list[int]:
    """Middle of each overlap of the seam-free windows (where one window hands over to the next)."""
    hop = constants.WHISPER_SEAMLESS_HOP_SECONDS * constants.WHISPER_STEPS_PER_SECOND
    ctx = constants.WHISPER_WINDOW_SECONDS * constants.WHISPER_STEPS_PER_SECOND
    return [k * hop + (ctx - hop) // 2 for k in range(1, 1 + max(0, -(-(length - ctx) // hop)))]


def main() -> None:
    clip = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES / "long.flac"
    weights = Path(sys.argv[2]) if len(sys.argv) > 2 else FIXTURES / "whisper_tiny_encoder.pt"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    whisper = load_whisper(weights)
    wave, rate = load_audio_file(clip)
    seconds = wave.shape[1] / rate
    fade = constants.WHISPER_SEAMLESS_CROSSFADE_SECONDS * constants.WHISPER_STEPS_PER_SECOND
    print(f"clip {clip.name}: {seconds:.1f} s; whisper {weights.name}; torch threads {torch.get_num_threads()}")
    for mode in ("official", "seamless"):
        audio_features(whisper, wave[:, : rate * 5], rate, mode=mode)  # warm-up
        t0 = time.perf_counter()
        feats = audio_features(whisper, wave, rate, mode=mode)
        elapsed = time.perf_counter() - t0
        r = jump_ratios(feats)
        seam = constants.WHISPER_WINDOW_SECONDS * constants.WHISPER_STEPS_PER_SECOND - 1  # 1499 -> 1500
        line = f"{mode:9s} {elapsed:6.2f} s ({seconds / elapsed:5.1f}x real time)  jump/median: at 30 s {r[seam]:.2f}"
        for h in handover_steps(len(feats)):
            lo, hi = h - fade, h + fade
            line += f", max over hand-over {lo}-{hi} {r[lo:hi].max():.2f}"
        line += f", clip p99 {r.quantile(0.99):.2f}, clip max {r.max():.2f} at step {int(r.argmax())}"
        print(line)


if __name__ == "__main__":
    main()
