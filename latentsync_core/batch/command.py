"""``python -m latentsync_core batch MANIFEST OUT_DIR``: lip-sync every row of a manifest.

    python -m latentsync_core batch clips.csv out/ --models /path/to/ComfyUI/models
    python -m latentsync_core batch clips.jsonl out/ --engine ray                 # Ray on this machine
    python -m latentsync_core batch clips.jsonl out/ --engine ray --address auto  # a Ray cluster

Every option flag of the lip-sync command is the batch's default; manifest columns override it per row
(:mod:`.manifest`). Rows already done with the same settings are skipped (:mod:`.plan`); a failing row is
reported and the others go on. ``OUT_DIR/report.jsonl`` gets one line per row (done / skipped / failed /
stopped); a summary is printed. Exit status: 0 all rows done or skipped, 1 some failed, 2 a usage error
(nothing run), 130 Ctrl-C (rows in flight write nothing; rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from ..cli import (
    EXIT_RUNTIME,
    UsageError,
    add_job_flags,
    add_machine_flags,
    add_model_flags,
    add_verbosity_flags,
    checked_options,
    logged,
    pick_device,
    progress_bar,
    resolve_models,
    run_command,
)
from ..options import SCORE, ScoreOptions, StreamSettings, add_flags
from .manifest import load_manifest
from .plan import REPORT, is_done, model_identity, row_key

log = logging.getLogger("latentsync_core.batch")
ENGINES = ("local", "ray")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latentsync_core batch",
        description="Lip-sync every row (video, audio[, out, options]) of a CSV or JSONL manifest into OUT_DIR; "
                    "resumable, with a report.",
    )
    p.add_argument("manifest", help="CSV (with a header) or JSONL: columns video, audio, optional out and options")
    p.add_argument("out_dir", help="folder for the outputs, report.jsonl and the resume state")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: threads of this process, one worker per GPU (default); ray: Ray actors")
    p.add_argument("--address", help="--engine ray: a running Ray cluster (auto or HOST:PORT); default: start "
                                     "Ray on this machine")
    p.add_argument("--workers", type=int, default=0,
                   help="workers (each loads the models once); default: one per GPU, or 1 on the CPU")
    add_machine_flags(p, "latentsync/, vae/")
    p.add_argument("--score", action="store_true",
                   help="also score every output's lip sync (LSE-C, LSE-D, offset; needs the sync extra)")
    p.add_argument("--syncnet", help="--score: SyncNet v2 weights (syncnet_v2.model); default: the --models layout")
    add_flags(p.add_argument_group("sync score (--score)"), [o for o in SCORE if o.name == "crops"])
    add_job_flags(p, " (defaults of every row)")
    add_model_flags(p)
    add_verbosity_flags(p)
    return p


def _validate(args) -> StreamSettings:
    settings, score = checked_options(args, StreamSettings, ScoreOptions)
    args.crops = score.crops
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: use 1 or more (0 = one per GPU).")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"OUT_DIR {args.out_dir} is a file, not a folder.")
    pick_device(args.device)
    return settings


class Report:
    """``OUT_DIR/report.jsonl`` (rewritten by every run, a line per row as it ends) and the counts."""

    def __init__(self, out_dir: str, total: int, quiet: bool):
        self.path = os.path.join(out_dir, REPORT)
        self.fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (kept open for the whole run)
        self.lines: list[dict] = []
        self.bar = progress_bar(total, "rows", quiet, unit="row")

    def add(self, line: dict) -> None:
        self.lines.append(line)
        self.fh.write(json.dumps(line) + "\n")
        self.fh.flush()
        self.bar.update(1)
        if line["status"] == "failed":
            log.warning("row %d failed: %s", line["row"], line.get("error"))

    def close(self) -> None:
        self.bar.close()
        self.fh.close()

    def summary(self) -> str:
        count = {s: sum(1 for line in self.lines if line["status"] == s) for s in ("done", "skipped", "failed", "stopped")}
        done = [line for line in self.lines if line["status"] == "done"]
        text = ", ".join(f"{n} {s}" for s, n in count.items() if n or s != "stopped")
        if done:
            per_clip = sum(line["seconds"] for line in done) / len(done)
            text += f"; {per_clip:.1f} s per clip"
            for worker in sorted({line["worker"] for line in done}):
                mine = [line for line in done if line["worker"] == worker]
                fps = sum(line["frames"] for line in mine) / max(sum(line["seconds"] for line in mine), 1e-9)
                text += f"; {worker}: {len(mine)} clips, {fps:.2f} frames/s"
        return text


def run(args, settings: StreamSettings) -> int:
    rows = load_manifest(args.manifest, os.path.abspath(args.out_dir), settings)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    runnable = [r for r in rows if r.error is None]
    identity = model_identity(resolve_models(args), args) if runnable else {}  # downloads once, here
    if args.score and runnable:
        from ..sync_score import _syncnet_python

        _syncnet_python()  # the sync extra is there (a clear message now, not after the first clip)
        resolve_models(args, {"syncnet": (args.syncnet, "syncnet-v2")})
    report = Report(out_dir, len(rows), args.quiet)
    t0 = time.perf_counter()
    try:
        jobs = []
        for row in rows:
            base = {"row": row.index, "video": row.video, "audio": row.audio, "out": row.out}
            if row.error is not None:
                report.add({**base, "status": "failed", "error": row.error})
                continue
            key = row_key(row, identity)
            if is_done(row, key, out_dir):
                report.add({**base, "status": "skipped", "reason": "done before with the same settings"})
            else:
                jobs.append((row, key))
        if jobs:
            if args.engine == "ray":
                from .ray_engine import run_ray

                run_ray(args, jobs, out_dir, args.workers, args.address, report.add)
            else:
                from .local_engine import run_local

                run_local(args, jobs, out_dir, args.workers, report.add)
    finally:
        report.close()
    log.info("batch: %s in %.1f s; report: %s", report.summary(), time.perf_counter() - t0, report.path)
    print(report.summary())
    return EXIT_RUNTIME if any(line["status"] == "failed" for line in report.lines) else 0


def _main(args) -> int:
    from .manifest import ManifestError

    holder = {}

    def validate(a) -> None:
        holder["settings"] = _validate(a)

    return run_command(args, validate, lambda a: run(a, holder["settings"]), lambda code: code,
                       usage_errors=(UsageError, ManifestError))


def main(argv=None) -> int:
    return logged(build_parser().parse_args(argv), _main)
