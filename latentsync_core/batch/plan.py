"""What a batch run does with each row: run it, skip it (done before with the same settings), or report it
failed. The settings hash of a row covers its inputs (path, size, modification time), its settings and the
model files, so a rerun does nothing, and a changed seed (or input, or model) reruns only that row. The hash of
each finished output is kept in ``OUT_DIR/.latentsync-batch/<output name>.json``, written after the output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from ..safe_output import atomic_path
from .manifest import Row

STATE_DIR = ".latentsync-batch"
REPORT = "report.jsonl"


def _file_id(path: str) -> list:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def row_key(row: Row, models: dict[str, Any]) -> str:
    """sha256 of what decides the row's output: inputs, settings, model files and model options."""
    payload = {"video": _file_id(row.video), "audio": _file_id(row.audio),
               "settings": dataclasses.asdict(row.settings), "models": models}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(paths: dict[str, str], args) -> dict[str, Any]:
    """The model files (path, size, mtime) and options that shape every output."""
    files = {role: _file_id(p) if os.path.isfile(p) else [os.path.abspath(p)] for role, p in sorted(paths.items())}
    return {"files": files, "version": args.version, "dtype": args.dtype, "compile": bool(args.compile),
            "unet_config": args.unet_config, "vae_config": args.vae_config}


def state_path(out_dir: str, out: str) -> str:
    return os.path.join(out_dir, STATE_DIR, os.path.relpath(out, out_dir) + ".json")


def is_done(row: Row, key: str, out_dir: str) -> bool:
    """The output exists and was written by a run with the same settings hash."""
    state = state_path(out_dir, row.out)
    if not (os.path.isfile(row.out) and os.path.isfile(state)):
        return False
    try:
        with open(state, encoding="utf-8") as fh:
            return json.load(fh).get("key") == key
    except (OSError, ValueError):
        return False


def record_done(row: Row, key: str, out_dir: str, report: dict) -> None:
    """Write the row's state (its key and figures) after its output, atomically."""
    state = state_path(out_dir, row.out)
    os.makedirs(os.path.dirname(state), exist_ok=True)
    with atomic_path(state) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"key": key, **report}, fh)
