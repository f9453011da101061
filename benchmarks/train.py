"""Training memory and speed at full size (random weights): stage2 / stage2_efficient / lora, gradient
checkpointing on and off, batch 1, 16 frames, 256 px.

    python benchmarks/train.py counts                          # parameters per trainable set (meta device)
    python benchmarks/train.py estimate                        # weights + grads + AdamW bytes per row (meta)
    python benchmarks/train.py rows --out train.json           # every row, each in its own process
    python benchmarks/train.py rows --sets lora --ckpt on --steps 2 --precision bf16   # on a GPU
    python benchmarks/train.py step --set lora --ckpt on       # one row in this process (what `rows` runs)

The models are the real layouts: the 1.5 U-Net from the shipped stage yaml, an sd-vae-ft-mse-shaped VAE,
the syncnet_16_pixel_attn StableSyncNet, LPIPS-VGG16 and, when TREPA is on, the VideoMAE v2 ViT-g; LoRA
is rank 16 on the spatial attention projections with the stage2 losses. CPU rows report the peak resident
set of the row's own process; CUDA rows the peak allocated and reserved memory. A row whose fp32 weights,
gradients and AdamW moments alone would not fit in the free host memory is recorded as skipped with the
estimate instead of being run. The JSON is rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from latentsync_core.precision import DTYPES  # noqa: E402
from latentsync_core.train.config import CONFIG_DIR, SYNCNET_CONFIG, load_train_config  # noqa: E402
from latentsync_core.train.trainable import count_parameters, select_trainable  # noqa: E402
from latentsync_core.unet import build_unet  # noqa: E402

GIB = 1024**3
SETS = ("stage2", "stage2_efficient", "lora")
LORA_RANK = 16


def preset_of(trainable_set: str) -> str:
    return "stage2" if trainable_set == "lora" else trainable_set


def config_for(trainable_set: str, ckpt: bool, precision: str):
    return load_train_config(preset_of(trainable_set), batch_size=1, precision=precision, gradient_checkpointing=ckpt)


def build_models(trainable_set: str, device: str):
    """(unet, trainable params, judges dict, vae) at full size on ``device`` ("meta" for counting)."""
    from diffusers import AutoencoderKL

    from latentsync_core.train.lpips import LPIPS
    from latentsync_core.train.syncnet import StableSyncNet, syncnet_config_from_yaml
    from latentsync_core.train.videomae import VideoMAE
    from latentsync_core.vae import SD_VAE_CONFIG

    cfg = config_for(trainable_set, True, "fp32")
    unet = build_unet(os.path.join(CONFIG_DIR, f"{preset_of(trainable_set)}.yaml"), device)
    if trainable_set == "lora":
        params = select_trainable(unet, "lora", rank=LORA_RANK)
    else:
        params = select_trainable(unet, trainable_set)
    with torch.device(device):
        judges = {"syncnet": StableSyncNet(syncnet_config_from_yaml(SYNCNET_CONFIG)), "lpips": LPIPS(),
                  "trepa_net": VideoMAE() if cfg.uses_trepa else None}
        vae = AutoencoderKL.from_config(dict(SD_VAE_CONFIG))
    return unet, params, judges, vae


def estimate(trainable_set: str) -> dict:
    """fp32 bytes of weights (all nets), gradients and AdamW moments (trainable only), from the meta device."""
    unet, params, judges, vae = build_models(trainable_set, "meta")
    frozen = count_parameters(unet.parameters()) + count_parameters(vae.parameters())
    frozen += sum(count_parameters(j.parameters()) for j in judges.values() if j is not None)
    trainable = count_parameters(params)
    if trainable_set == "lora":
        frozen += 0  # adapters are counted in unet.parameters()
    return {"set": trainable_set, "trainable_tensors": len(params), "trainable_parameters": trainable,
            "all_parameters": frozen, "static_gib_fp32": round((frozen + 3 * trainable) * 4 / GIB, 2)}


def counts() -> list[dict]:
    return [estimate(s) for s in SETS]


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_step(trainable_set: str, ckpt: bool, precision: str, steps: int, device: str) -> dict:
    """One row in this process."""
    from latentsync_core.train.step import TrainBatch, Trainer

    dev = torch.device(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet, params, judges, vae = build_models(trainable_set, str(dev))  # random init on the device itself
    for net in (judges["syncnet"], judges["trepa_net"]):
        if net is not None:
            net.gradient_checkpointing = True  # official: hard-coded on
    cfg = config_for(trainable_set, ckpt, precision)
    trainer = Trainer(unet, vae, cfg, trainable=params, device=dev, **judges)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    size, frames = cfg.resolution, cfg.num_frames
    batch = TrainBatch(torch.rand((1, frames, 3, size, size), generator=g) * 2 - 1,
                       torch.rand((1, frames, 3, size, size), generator=g) * 2 - 1,
                       torch.ones(size, size), torch.randn((1, 1, 80, 52), generator=g),
                       torch.randn((1, frames, 50, 384), generator=g))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, losses = [], []
    for _ in range(steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        result = trainer.step(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(round(time.perf_counter() - t, 2))
        losses.append(result.losses)
    row = {"set": trainable_set, "gradient_checkpointing": ckpt, "precision": trainer.precision,
           "device": str(dev), "batch": 1, "frames": frames, "resolution": size, "build_s": round(build_s, 1),
           "step_s": times, "losses": losses, "trainable_parameters": count_parameters(params)}
    if dev.type == "cuda":
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / GIB, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / GIB, 2)
        row["gpu"] = torch.cuda.get_device_name(dev)
    else:
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2)
        row["threads"] = torch.get_num_threads()
    return row


def rows(args) -> None:
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "load_before": os.getloadavg(), "counts": counts(), "rows": []}
    deadline = time.monotonic() + args.budget_s

    def save():
        Path(args.out).write_text(json.dumps(out, indent=1))

    save()
    for ckpt in args.ckpt:  # every set with checkpointing on first: the rows most worth having
        for trainable_set in args.sets:
            est = next(c for c in out["counts"] if c["set"] == trainable_set)
            on = ckpt == "on"
            label = {"set": trainable_set, "gradient_checkpointing": on, "precision": args.precision}
            if time.monotonic() > deadline:
                out["rows"].append({**label, "skipped": "time budget spent"})
                save()
                continue
            if args.device == "cpu" and est["static_gib_fp32"] * GIB > 0.9 * available_bytes():
                out["rows"].append({**label, "skipped": f"weights+grads+AdamW alone need {est['static_gib_fp32']} GiB; "
                                                        f"{available_bytes() / GIB:.1f} GiB free"})
                save()
                continue
            cmd = [sys.executable, __file__, "step", "--set", trainable_set, "--ckpt", ckpt, "--precision",
                   args.precision, "--steps", str(args.steps), "--device", args.device]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=max(60, deadline - time.monotonic() + 600))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                **label, "error": f"rc {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] }"}
            row["wall_s"] = round(time.perf_counter() - t, 1)
            row["load_after"] = os.getloadavg()
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("counts")
    sub.add_parser("estimate")
    r = sub.add_parser("rows")
    r.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    r.add_argument("--ckpt", nargs="+", choices=("on", "off"), default=["on", "off"])
    s = sub.add_parser("step")
    s.add_argument("--set", choices=SETS, required=True)
    s.add_argument("--ckpt", choices=("on", "off"), default="on")
    for p in (r, s):
        p.add_argument("--precision", choices=tuple(DTYPES), default="fp32")
        p.add_argument("--steps", type=int, default=1)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--budget-s", type=float, default=3600)
    r.add_argument("--out", default="train.json")
    args = parser.parse_args()
    if args.cmd in ("counts", "estimate"):
        print(json.dumps(counts(), indent=1))
    elif args.cmd == "step":
        print(json.dumps(run_step(args.set, args.ckpt == "on", args.precision, args.steps, args.device)), flush=True)
    else:
        rows(args)


if __name__ == "__main__":
    main()
