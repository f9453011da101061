"""Peak RSS of the streaming job (library path, latentsync_core.stream.lip_sync_video) on 720p clips.

    python benchmarks/stream_memory.py 60 300      # seconds; clips CLIP_DIR/clip_<s>s.mp4 (benchmarks/long_video.py makes them)

Tiny test models (tests/fixtures), steps 1, guidance 1.0; one process per clip length gives a clean peak.
Logs RSS and its peak every 100 frames of progress, so a run stopped early still tells its curve.
"""
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402 (after the sys.path line)
import torch  # noqa: E402 (after the sys.path line)

from latentsync_core.audio import load_audio_file, load_whisper  # noqa: E402 (after the sys.path line)
from latentsync_core.stream import StreamSettings, lip_sync_video  # noqa: E402 (after the sys.path line)
from latentsync_core.unet import load_unet  # noqa: E402 (after the sys.path line)
from latentsync_core.vae import load_vae  # noqa: E402 (after the sys.path line)

FIX = os.path.join(ROOT, "tests", "fixtures")
CLIP_DIR = os.environ.get("CLIP_DIR", "/tmp/sbench")
torch.set_num_threads(2)


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

unet = load_unet(f"{FIX}/unet/config.json", f"{FIX}/unet/latentsync_unet.pt")
vae = load_vae(f"{FIX}/pipeline/vae_tiny_random.pt", f"{FIX}/pipeline/vae_config.json")
whisper = load_whisper(f"{FIX}/audio/whisper_tiny_encoder.pt")
speech, rate = load_audio_file(f"{FIX}/audio/long.flac")
idle = rss()
print(f"idle after model load: {idle/2**30:.3f} GiB", flush=True)
for seconds in [float(s) for s in sys.argv[1:]]:
    clip = os.path.join(CLIP_DIR, f"clip_{int(seconds)}s.mp4")
    reps = int(np.ceil(seconds * rate / speech.shape[1]))
    wave = speech.repeat(1, reps)[:, : int(seconds * rate)]
    peak = [rss(), 0]
    t0 = time.time()
    def progress(stage, done, total, peak=peak, seconds=seconds, t0=t0):
        r = rss()
        peak[0] = max(peak[0], r)
        if done // 100 != peak[1]:
            peak[1] = done // 100
            print(f"{seconds:.0f}s {stage} {done}/{total} rss {r/2**30:.3f} peak {peak[0]/2**30:.3f} GiB t {time.time()-t0:.0f}s", flush=True)
    rep = lip_sync_video(clip, os.path.join(CLIP_DIR, f"out_{int(seconds)}.mp4"), wave, rate, unet=unet, vae=vae, whisper=whisper,
                         settings=StreamSettings(steps=1, guidance=1.0), progress=progress)
    print(f"RESULT {seconds:.0f}s frames {rep.num_frames} wall {time.time()-t0:.0f}s s/frame {(time.time()-t0)/rep.num_frames:.3f} peak {peak[0]/2**30:.3f} GiB over idle {(peak[0]-idle)/2**30:.3f} GiB ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.3f} GiB", flush=True)
