"""Host memory and speed of the long-video workflow in a real ComfyUI server, against the IMAGE graph.

    python benchmarks/long_video.py [--comfyui /work/comfyui] [--python /work/comfyui/.venv/bin/python]
        [--seconds 10 60 300] [--basic-seconds 10 20] [--steps 1]
    python benchmarks/long_video.py --library [--seconds 10 60]     # no ComfyUI: latentsync_core.stream in-process

Makes 1280x720 25 fps clips of a real face (tests/fixtures/face, moving a few pixels; the clips of
benchmarks/cli.py) with a speech track of the same length (tests/fixtures/audio/long.flac looped), starts
``main.py --cpu`` of the given ComfyUI with this pack (in a private ``--base-directory``: its own
custom_nodes link, input, output and temp folders; models linked from the ComfyUI folder), and runs
``workflows/api/latentsync_long_video.json`` on each clip through ``workflows/run_api.py``, then
``workflows/api/latentsync_basic.json`` (the IMAGE graph) for contrast. Models: the tiny test U-Net and
whisper and the random TAESD VAE that /work/comfyui/README-local.md places (``--unet``, ``--vae``), steps 1,
guidance 1.0: the numbers measure the video work and the memory design, not the real U-Net.

Memory: the resident size of the server process and its children (psutil, else /proc/PID/status VmRSS),
sampled every 0.2 s; "idle" is after start-up, before the first prompt; each run reports its peak and
peak minus idle. A warm-up run on a 16-frame clip loads the models first, so the per-frame times of the
rows are not charged with model loading. The IMAGE graph grows with the clip: before each of its runs the
peak is extrapolated linearly from the previous one and the run is skipped (said so) when it would not fit
in the available memory with a safety margin; a watchdog also stops the server if it nears the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GIB = 1 << 30
FPS = 25
WARMUP_VIDEO = "tiny/clip.mp4"  # under the ComfyUI folder (README-local.md), with tiny/speech.wav

try:
    import psutil
except ImportError:  # the pack's requirements do not need it
    psutil = None


# ------------------------------------------------------------------------------------------ memory
def _children(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Samples ``tree_rss(pid)`` every ``interval`` s in a thread; ``limit`` bytes: call ``on_limit``."""

    def __init__(self, pid: int, interval: float = 0.2, limit: int | None = None, on_limit=None, csv_path=None):
        self.pid, self.interval, self.limit, self.on_limit = pid, interval, limit, on_limit
        self.csv_path = csv_path  # the timeline is written as it is sampled (kept if the run is stopped)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.hit_limit = False

    def _run(self):
        t0 = time.perf_counter()
        out = open(self.csv_path, "w", buffering=1) if self.csv_path else None  # noqa: SIM115
        if out:
            out.write("t_s,rss_bytes\n")
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            self.samples.append((time.perf_counter() - t0, rss))
            if out:
                out.write(f"{self.samples[-1][0]:.1f},{rss}\n")
            if self.limit and rss > self.limit and not self.hit_limit:
                self.hit_limit = True
                if self.on_limit:
                    self.on_limit()
            self._stop.wait(self.interval)
        if out:
            out.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)


# ------------------------------------------------------------------------------------------- clips
def make_clips(folder: Path, seconds: list[float]) -> dict[float, tuple[Path, Path]]:
    """The benchmarks/cli.py clips (reused from ``folder`` when already made)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cli import make_clip

    out = {}
    for s in seconds:
        video, audio = folder / f"clip_{s:g}s.mp4", folder / f"speech_{s:g}s.wav"
        if not (video.exists() and audio.exists()):
            t0 = time.perf_counter()
            video, audio = make_clip(folder, s, FPS)
            print(f"made {video.name} + {audio.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        out[s] = (video, audio)
    return out


def check_output(path: str, video: Path, seconds: float) -> str:
    """One line on the output (codecs, size, fps, frames, audio length); raises if it does not match."""
    import av

    with av.open(str(video)) as c:
        w, h = c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height
    with av.open(path) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = v.frames or sum(1 for _ in c.decode(video=0))
        audio_s = float(a.duration * a.time_base) if a.duration else float("nan")
        line = (f"{v.codec_context.name}+{a.codec_context.name} {v.codec_context.width}x{v.codec_context.height} "
                f"{float(v.average_rate):g} fps {frames} frames, audio {audio_s:.2f} s")  # fmt: skip
        ok = (v.codec_context.name, a.codec_context.name, v.codec_context.width, v.codec_context.height) == (
            "h264", "aac", w, h) and float(v.average_rate) == FPS and frames == round(seconds * FPS) and abs(
            audio_s - seconds) < 0.1  # fmt: skip
    if not ok:
        raise SystemExit(f"wrong output {path}: {line}")
    return line


# ------------------------------------------------------------------------------------------ server
class Server:
    """``main.py --cpu`` of a ComfyUI folder with this pack, in a private base directory."""

    def __init__(self, comfyui: Path, python: str, port: int, base: Path):
        self.comfyui, self.python, self.port, self.base = comfyui, python, port, base
        self.url = f"127.0.0.1:{port}"
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / "ComfyUI-LatentSync"
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        if not (base / "models").exists():
            (base / "models").symlink_to(comfyui / "models", target_is_directory=True)
        self.log = base / f"server-{port}.log"
        self.proc = None

    def start(self, timeout: float = 300) -> None:
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ComfyUI exited ({self.proc.returncode}); see {self.log}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/object_info/LatentSyncLipSyncVideo", timeout=5) as r:  # noqa: S310
                    if "LatentSyncLipSyncVideo" in json.load(r):
                        return
                    raise SystemExit(f"ComfyUI runs but has no LatentSyncLipSyncVideo; see {self.log}")
            except OSError:
                time.sleep(1)
        raise SystemExit(f"ComfyUI did not start in {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def interrupt(self) -> None:
        req = urllib.request.Request(f"http://{self.url}/interrupt", data=b"{}", method="POST")  # noqa: S310
        urllib.request.urlopen(req, timeout=10).close()  # noqa: S310


def run_workflow(server: Server, workflow: str, video: Path, audio: Path, out_dir: Path, args) -> list[str]:
    cmd = [sys.executable, str(ROOT / "workflows" / "run_api.py"), "--server", server.url, "--video", str(video),
           "--audio", str(audio), "--out-dir", str(out_dir), "--set", f"LatentSyncModelLoader.unet_name={args.unet}",
           "--set", f"VAELoader.vae_name={args.vae}", "--set", f"9.steps={args.steps}",
           "--set", f"9.guidance={args.guidance}",
           *(["--set", f"LatentSyncWhisperLoader.whisper={args.whisper}"] if args.whisper else []),
           str(ROOT / "workflows" / "api" / workflow)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"run_api exit {res.returncode}: {res.stderr[-2000:]}")
    return [line for line in res.stdout.splitlines() if line.strip()]


def measure(server: Server, workflow: str, video: Path, audio: Path, seconds: float, args, limit=None) -> dict:
    out_dir = Path(args.work) / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    before = tree_rss(server.proc.pid)
    timeline = Path(args.timeline) / f"{Path(workflow).stem}_{seconds:g}s.csv" if args.timeline else None
    with Sampler(server.proc.pid, limit=limit, on_limit=server.interrupt, csv_path=timeline) as s:
        t0 = time.perf_counter()
        try:
            files = run_workflow(server, workflow, video, audio, out_dir, args)
        except RuntimeError as err:
            if s.hit_limit:
                raise MemoryError(f"stopped at {s.peak / GIB:.2f} GiB RSS (limit {limit / GIB:.2f} GiB)") from err
            raise
        wall = time.perf_counter() - t0
    line = check_output(files[-1], video, seconds) if seconds else "warm-up"
    shutil.rmtree(out_dir, ignore_errors=True)
    for sub in ("output", "temp"):  # the runs' files: keep the disk free
        for p in (server.base / sub).rglob("*.mp4"):
            p.unlink()
    return {"wall": wall, "peak": s.peak, "before": before, "after": tree_rss(server.proc.pid), "check": line}


# ------------------------------------------------------------------------------------------- table
def row(label: str, seconds: float, r: dict, idle: int) -> str:
    n = round(seconds * FPS)
    return (f"| {label} | {seconds:g} s | {n} | {r['wall']:.0f} | {r['wall'] / n:.3f} | {r['peak'] / GIB:.2f} | "
            f"{(r['peak'] - idle) / GIB:.2f} | {r['before'] / GIB:.2f} | {r['check']} |")  # fmt: skip


HEADER = ("| graph | clip (1280x720, 25 fps) | output frames | wall s | s / frame | peak RSS (GiB) | "
          "peak - idle (GiB) | RSS before the run (GiB) | output |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def run_server(args) -> None:
    comfyui = Path(args.comfyui)
    clips = make_clips(Path(args.work), sorted(set(args.seconds) | set(args.basic_seconds)))
    base = Path(tempfile.mkdtemp(prefix="comfy_bench_", dir=args.work))
    server = Server(comfyui, args.python, args.port, base)
    print(f"starting ComfyUI {comfyui} on port {args.port} (base {base})", flush=True)
    t0 = time.perf_counter()
    server.start()
    time.sleep(5)
    idle = max(tree_rss(server.proc.pid) for _ in range(10) if time.sleep(0.2) is None)
    print(f"started in {time.perf_counter() - t0:.0f} s; idle RSS {idle / GIB:.2f} GiB; "
          f"load average {os.getloadavg()[0]:.1f}; psutil {'yes' if psutil else 'no (/proc)'}", flush=True)  # fmt: skip
    rows = []
    try:
        w = measure(server, "latentsync_long_video.json", comfyui / WARMUP_VIDEO,
                    comfyui / "tiny" / "speech.wav", 0, args)  # fmt: skip
        print(f"warm-up (16 frames, model loads): {w['wall']:.0f} s, peak {w['peak'] / GIB:.2f} GiB", flush=True)
        print(HEADER, flush=True)
        for s in args.seconds:
            r = measure(server, "latentsync_long_video.json", *clips[s], s, args)
            rows.append(row("long video (Lip Sync Video)", s, r, idle))
            print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
        prev = None
        for s in args.basic_seconds:
            free = mem_available()
            if prev is not None:
                p_s, p_growth = prev
                need = p_growth * s / p_s
                if need > free - args.margin * GIB:
                    print(f"| IMAGE graph | {s:g} s | skipped: extrapolated {need / GIB:.1f} GiB over idle, "
                          f"{free / GIB:.1f} GiB available |", flush=True)  # fmt: skip
                    continue
            limit = tree_rss(server.proc.pid) + free - args.margin * GIB
            try:
                r = measure(server, "latentsync_basic.json", *clips[s], s, args, limit=limit)
            except MemoryError as err:
                print(f"| IMAGE graph | {s:g} s | stopped: {err} |", flush=True)
                break
            prev = (s, r["peak"] - idle)
            rows.append(row("IMAGE graph (basic)", s, r, idle))
            print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print("\n" + HEADER + "\n" + "\n".join(rows))


def run_library(args) -> None:
    """No ComfyUI: the same job through latentsync_core.stream.lip_sync_video in this process."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_cli import FIX

    from latentsync_core.audio import load_audio_file, load_whisper
    from latentsync_core.stream import StreamSettings, lip_sync_video
    from latentsync_core.unet import load_unet
    from latentsync_core.vae import load_vae

    clips = make_clips(Path(args.work), args.seconds)
    whisper = load_whisper(str(FIX / "audio" / "whisper_tiny_encoder.pt"))
    unet = load_unet(str(FIX / "unet" / "config.json"), str(FIX / "unet" / "latentsync_unet.pt"))
    vae = load_vae(str(FIX / "pipeline" / "vae_tiny_random.pt"), str(FIX / "pipeline" / "vae_config.json"))
    settings = StreamSettings(steps=args.steps, guidance=args.guidance)
    idle = tree_rss(os.getpid())
    print(f"library path, models loaded: RSS {idle / GIB:.2f} GiB; load {os.getloadavg()[0]:.1f}", flush=True)
    print(HEADER, flush=True)
    for s in args.seconds:
        video, audio = clips[s]
        waveform, rate = load_audio_file(audio)
        out = Path(args.work) / "library_out.mp4"
        before = tree_rss(os.getpid())
        with Sampler(os.getpid()) as sm:
            t0 = time.perf_counter()
            lip_sync_video(str(video), str(out), waveform, rate, unet=unet, vae=vae, whisper=whisper, settings=settings)
            wall = time.perf_counter() - t0
        r = {"wall": wall, "peak": sm.peak, "before": before, "check": check_output(str(out), video, s)}
        out.unlink()
        print(row("library (lip_sync_video)", s, r, idle), f"load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", default="/work/comfyui", help="ComfyUI folder (main.py); default /work/comfyui")
    p.add_argument("--python", default=None, help="ComfyUI's python (default: COMFYUI/.venv/bin/python)")
    p.add_argument("--library", action="store_true", help="no ComfyUI: run latentsync_core.stream in-process")
    p.add_argument("--port", type=int, default=8231)
    p.add_argument("--seconds", type=float, nargs="*", default=[10.0, 60.0, 300.0], help="long-video graph clips")
    p.add_argument("--basic-seconds", type=float, nargs="*", default=[10.0, 20.0], help="IMAGE graph clips")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--unet", default="tiny/latentsync_unet.pt", help="U-Net under models/latentsync/")
    p.add_argument("--vae", default="tiny-random-taesd.safetensors", help="VAE under models/vae/")
    p.add_argument("--whisper", default=None,
                   help="whisper under models/latentsync/ (default: the workflow's, whisper/tiny.pt)")
    p.add_argument("--margin", type=float, default=4.0, help="GiB of memory the IMAGE graph runs must leave free")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "latentsync_long_video_bench"))
    p.add_argument("--timeline", help="folder for per-run RSS timelines (CSV: seconds, bytes)")
    p.add_argument("--keep", action="store_true", help="keep the server's base directory (logs)")
    args = p.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.timeline:
        Path(args.timeline).mkdir(parents=True, exist_ok=True)
    comfy_ok = args.comfyui and (Path(args.comfyui) / "main.py").is_file()
    if args.library or not comfy_ok:
        if not args.library:
            print(f"no ComfyUI at {args.comfyui!r}: measuring the library path instead", flush=True)
        run_library(args)
    else:
        args.python = args.python or str(Path(args.comfyui) / ".venv" / "bin" / "python")
        run_server(args)


if __name__ == "__main__":
    main()
