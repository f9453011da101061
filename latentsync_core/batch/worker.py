"""A batch worker: the models loaded once on one device, then one row at a time through the same streaming
job as the command line (:func:`latentsync_core.cli.lip_sync_file`), so each output is bit-identical to a
single run with the same settings and seed."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import time
import traceback
from typing import Any

from ..errors import LatentSyncError
from .manifest import Row
from .plan import record_done

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Raised inside a running row when the batch is stopped (Ctrl-C): nothing of that row is written."""


class Worker:
    """Holds the models of ``args`` (the batch's model flags) on ``device``; :meth:`run` does one row."""

    def __init__(self, args: argparse.Namespace, device: str | None = None, name: str = "worker"):
        from ..cli import load_models

        self.args = argparse.Namespace(**vars(args))
        if device is not None:
            self.args.device = device
        self.name = f"{name}@{socket.gethostname()}"
        self.models = load_models(self.args)
        self.stop = False

    def _check_interrupt(self) -> None:
        if self.stop:
            raise Stopped()

    def run(self, row: Row, key: str, out_dir: str) -> dict[str, Any]:
        """Lip-sync one row; returns its report line (status ``done`` or ``failed`` with the error)."""
        from ..cli import lip_sync_file

        t0 = time.perf_counter()
        base = {"row": row.index, "video": row.video, "audio": row.audio, "out": row.out, "worker": self.name}
        if self.stop:
            return {**base, "status": "stopped", "seconds": 0.0}
        try:
            os.makedirs(os.path.dirname(row.out), exist_ok=True)
            report = lip_sync_file(self.models, self.args, row.video, row.audio, row.out, row.settings,
                                   check_interrupt=self._check_interrupt)
        except Stopped:
            return {**base, "status": "stopped", "seconds": round(time.perf_counter() - t0, 3)}
        except LatentSyncError as exc:
            return {**base, "status": "failed", "error": str(exc), "seconds": round(time.perf_counter() - t0, 3)}
        except Exception as exc:  # noqa: BLE001 (one broken row must not end the batch; the trace goes to the log)
            log.error("batch row %d (%s) failed:\n%s", row.index, row.video, traceback.format_exc())
            return {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                    "seconds": round(time.perf_counter() - t0, 3)}
        seconds = time.perf_counter() - t0
        line = {**base, "status": "done", "frames": report.num_frames, "seconds": round(seconds, 3),
                "fps": round(report.num_frames / max(seconds, 1e-9), 3), "summary": report.summary()}
        record_done(row, key, out_dir, line)
        return line
