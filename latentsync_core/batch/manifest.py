"""Batch manifests: CSV or JSONL rows of ``video, audio[, out, options...]``.

Columns: ``video`` and ``audio`` (paths, relative ones from the manifest's folder), optional ``out`` (relative
ones inside OUT_DIR; default ``<video stem>.mp4``) and any lip-sync option of the option table by its name
(``seed``, ``blend``, ``mask_grow`` ...) or flag spelling (``mask-grow``), in the command line's encoding
(``silence``: ``sync`` / ``keep``). An empty cell keeps the batch's own setting. Everything is checked before
any model loads: an unknown column stops the batch (exit 2); a row with a bad value or a missing file is
reported as failed and the others run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from ..errors import LatentSyncError
from ..options import OptionError, StreamSettings, check_face, group_options

PATH_COLUMNS = ("video", "audio", "out")
OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")


class ManifestError(LatentSyncError):
    """The manifest as a whole cannot be used (unreadable, no rows, unknown columns, clashing outputs)."""


@dataclasses.dataclass
class Row:
    """One manifest row, resolved: absolute paths, the row's settings (batch settings + its overrides), or
    ``error`` when the row cannot run (bad value, missing file) — it is then reported, not run."""

    index: int  # 1-based, as a user counts rows (the header is not counted)
    video: str
    audio: str
    out: str
    settings: StreamSettings | None
    error: str | None = None


def read_rows(path: str) -> list[dict[str, Any]]:
    """The raw rows of a ``.csv`` (header line) or ``.jsonl`` / ``.json`` lines file."""
    if not os.path.isfile(path):
        raise ManifestError(f"manifest {path}: no such file.")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if path.lower().endswith((".jsonl", ".json", ".ndjson")):
            rows = []
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ManifestError(f"manifest {path} line {n}: not JSON ({exc.msg}).") from None
                    if not isinstance(value, dict):
                        raise ManifestError(f"manifest {path} line {n}: expected an object with video and audio.")
                    rows.append(value)
        else:
            rows = [dict(r) for r in csv.DictReader(fh)]
    if not rows:
        raise ManifestError(f"manifest {path} has no rows.")
    return rows


def _option_names() -> dict[str, str]:
    """Column name (option name or flag spelling) -> option name."""
    names = {}
    for name, spec in group_options(StreamSettings).items():
        names[name] = name
        if spec.flag:
            names[spec.flag.lstrip("-")] = name
    return names


def check_columns(rows: list[Mapping[str, Any]], path: str) -> None:
    known = _option_names()
    columns = {c for r in rows for c in r}
    unknown = sorted(c for c in columns if c not in PATH_COLUMNS and c not in known)
    if unknown:
        raise ManifestError(
            f"manifest {path}: unknown column(s) {', '.join(unknown)}. Columns: video, audio, out, and the options "
            f"{', '.join(sorted(n for n in known if '-' not in n))}."
        )
    missing = [c for c in ("video", "audio") if c not in columns]
    if missing:
        raise ManifestError(f"manifest {path}: no {' or '.join(missing)} column.")


def row_settings(base: StreamSettings, raw: Mapping[str, Any]) -> StreamSettings:
    """``base`` with the row's option cells (command-line encoding for strings, plain values otherwise)."""
    names, specs = _option_names(), group_options(StreamSettings)
    values = dataclasses.asdict(base)
    for column, cell in raw.items():
        if column in PATH_COLUMNS or cell is None or (isinstance(cell, str) and not cell.strip()):
            continue
        name = names[column]
        spec = specs[name]
        try:
            if name == "face":
                values[name] = check_face(cell)
            elif isinstance(cell, str):
                values[name] = spec.from_text(cell)
            else:
                values[name] = spec.check(cell)
        except OptionError as exc:
            raise OptionError(spec, exc.value, exc.rule) from None
    return StreamSettings(**values)


def _resolve(path: str, folder: str) -> str:
    path = os.path.expanduser(str(path).strip())
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(folder, path))


def load_manifest(path: str, out_dir: str, base: StreamSettings) -> list[Row]:
    """Every row resolved and checked (no model, no decoding beyond the file headers)."""
    from ..video_io import probe_video

    raw_rows = read_rows(path)
    check_columns(raw_rows, path)
    folder = os.path.dirname(os.path.abspath(path))
    rows: list[Row] = []
    for index, raw in enumerate(raw_rows, 1):
        video = _resolve(raw.get("video") or "", folder) if raw.get("video") else ""
        audio = _resolve(raw.get("audio") or "", folder) if raw.get("audio") else ""
        name = str(raw.get("out") or "").strip() or f"{os.path.splitext(os.path.basename(video))[0] or index}.mp4"
        out = _resolve(name, out_dir)
        row = Row(index, video, audio, out, None)
        try:
            row.settings = row_settings(base, raw)
            if not video or not audio:
                raise LatentSyncError("needs both a video and an audio path.")
            for what, p in (("video", video), ("audio", audio)):
                if not os.path.isfile(p):
                    raise LatentSyncError(f"{what} {p}: no such file.")
            if not out.lower().endswith(OUTPUT_SUFFIXES):
                raise LatentSyncError(f"out {name}: use .mp4, .mov or .mkv.")
            probe_video(video)
        except OptionError as exc:
            shown = raw.get(exc.option.name, raw.get(exc.option.flag.lstrip("-"), exc.value))
            row.error = f"{exc.option.name} = {shown}: {exc.rule}"
        except LatentSyncError as exc:
            row.error = str(exc)
        rows.append(row)
    _check_outputs(rows, path)
    return rows


def _check_outputs(rows: list[Row], path: str) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        if row.out in seen:
            raise ManifestError(
                f"manifest {path}: rows {seen[row.out]} and {row.index} both write {os.path.basename(row.out)}; "
                "give them different 'out' names."
            )
        seen[row.out] = row.index
        if row.out in (row.video, row.audio):
            row.error = row.error or f"out {row.out} is one of the row's inputs."
