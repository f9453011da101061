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
        self.scorer = _Scorer(self.args, self.models.device) if getattr(self.args, "score", False) else None

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
        if self.scorer is not None:
            line.update(self.scorer.score(row.out))
        record_done(row, key, out_dir, line)
        return line


class _Scorer:
    """``--score``: the sync score of every output (the ``score`` command's crops rule and figures)."""

    def __init__(self, args: argparse.Namespace, device):
        from ..cli import resolve_models
        from ..constants import MODEL_FOLDER
        from ..download import find_model_file
        from ..sync_s3fd import load_s3fd, use_s3fd
        from ..sync_score import load_syncnet_v2

        present = find_model_file("s3fd", [os.path.join(args.models, MODEL_FOLDER)])
        wanted = {"syncnet": (args.syncnet, "syncnet-v2")}
        if use_s3fd(args.crops, bool(present)):
            wanted["s3fd"] = (None, "s3fd")
        paths = resolve_models(args, wanted)
        self.args, self.model = args, load_syncnet_v2(paths["syncnet"], device)
        self.detector = load_s3fd(paths["s3fd"], device) if "s3fd" in paths else None

    def score(self, video: str) -> dict[str, Any]:
        from ..face import FaceAligner
        from ..sync_video import score_video

        aligner = None if self.detector is not None else FaceAligner(models_dir=self.args.models,
                                                                     download=not self.args.no_download)
        try:
            result = score_video(self.model, video, aligner, detector=self.detector)
        except LatentSyncError as exc:
            return {"score_error": str(exc)}
        finally:
            if aligner is not None:
                aligner.close()
        return {"lse_c": result.score.lse_c, "lse_d": result.score.lse_d, "offset_frames": result.score.offset,
                "crops": result.crop_path}
