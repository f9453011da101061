"""``python -m latentsync_core batch`` (latentsync_core/batch): a 4-row manifest with one bad row on the local
engine and on Ray (local mode, 2 CPU actors), resume rules, the report, errors before any model loads."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import TINY, _write_wav
from test_stream import make_face_clip

from latentsync_core import cli
from latentsync_core.batch import manifest as mf
from latentsync_core.options import StreamSettings
from latentsync_core.video_io import VideoReader

pytestmark = pytest.mark.usefixtures("landmarks_offline")
BASE = [*TINY, "--steps", "1", "--guidance", "1.0", "--no-download", "-q", "--crf", "0"]  # lossless: frames compare exactly


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with two face clips, two speech files and a 4-row manifest: rows 1, 2, 4 run; row 3's
    video has no face (grey)."""
    folder = tmp_path_factory.mktemp("batch_in")
    make_face_clip(folder / "a.mp4", 4)
    make_face_clip(folder / "b.mp4", 5)
    make_face_clip(folder / "grey.mp4", 3, grey=(0, 1, 2))
    _write_wav(folder / "s1.wav", 0.2)
    _write_wav(folder / "s2.wav", 0.16)
    (folder / "m.csv").write_text(
        "video,audio,out,seed,blend\n"
        "a.mp4,s1.wav,a_s1.mp4,3,\n"
        "b.mp4,s2.wav,b_s2.mp4,,mouth\n"
        "grey.mp4,s1.wav,grey.mp4,,\n"
        "a.mp4,s2.wav,,7,\n"
    )
    return folder


def _frames(path) -> np.ndarray:
    with VideoReader(path) as r:
        return r.read(0, r.num_frames)


def _report(out: Path) -> dict[int, dict]:
    return {line["row"]: line for line in map(json.loads, (out / "report.jsonl").read_text().splitlines())}


def _single(inputs: Path, tmp: Path, video: str, audio: str, *flags: str) -> np.ndarray:
    out = tmp / f"single_{video}_{audio}_{'_'.join(flags)}.mp4"
    assert cli.main(["--video", str(inputs / video), "--audio", str(inputs / audio), "--out", str(out), *BASE, *flags]) == 0
    return _frames(out)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_batch_runs_reports_and_resumes(inputs, tmp_path, engine, capsys):
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            if os.environ.get("LATENTSYNC_REQUIRE_RAY"):
                pytest.fail("LATENTSYNC_REQUIRE_RAY is set but Ray is not installed")
            pytest.skip("the ray extra is not installed (pip install -e '.[ray]')")
    out = tmp_path / "out"
    argv = ["batch", str(inputs / "m.csv"), str(out), "--engine", engine, "--workers", "2", *BASE]
    assert cli.main(argv) == 1  # one row failed
    report = _report(out)
    assert [report[i]["status"] for i in (1, 2, 3, 4)] == ["done", "done", "failed", "done"]
    assert "No face found" in report[3]["error"]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == ["a.mp4", "a_s1.mp4", "b_s2.mp4"]
    assert "3 done, 0 skipped, 1 failed" in capsys.readouterr().out
    # each output is the frames of a single command-line run with the same settings
    assert np.array_equal(_frames(out / "a_s1.mp4"), _single(inputs, tmp_path, "a.mp4", "s1.wav", "--seed", "3"))
    assert np.array_equal(_frames(out / "b_s2.mp4"), _single(inputs, tmp_path, "b.mp4", "s2.wav", "--blend", "mouth"))
    assert np.array_equal(_frames(out / "a.mp4"), _single(inputs, tmp_path, "a.mp4", "s2.wav", "--seed", "7"))
    if engine == "ray":
        assert {report[i]["worker"].split("@")[0] for i in (1, 2, 4)} <= {"ray0", "ray1"}
        return
    # a rerun does nothing (the failed row fails again, before any work)
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    assert cli.main(argv) == 1
    report = _report(out)
    assert [report[i]["status"] for i in (1, 2, 3, 4)] == ["skipped", "skipped", "failed", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == stamp
    # a changed batch seed reruns only the rows that take it (rows 1 and 4 set their own)
    assert cli.main([*argv, "--seed", "11"]) == 1
    report = _report(out)
    assert [report[i]["status"] for i in (1, 2, 4)] == ["skipped", "done", "skipped"]


def test_an_interrupted_batch_resumes(inputs, tmp_path, monkeypatch):
    """Ctrl-C in the second row: exit 130, the first output is kept, nothing of the second is written; the
    rerun skips the first and does the rest."""
    from latentsync_core.batch import worker as worker_module

    out = tmp_path / "out"
    argv = ["batch", str(inputs / "m.csv"), str(out), *BASE]
    real = worker_module.Worker.run
    calls = []

    def flaky(self, row, key, out_dir):
        calls.append(row.index)
        if len(calls) == 2:  # Ctrl-C while the worker thread has the second row: SIGINT reaches the main thread
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 10
            while not self.stop and time.monotonic() < deadline:
                time.sleep(0.05)
        return real(self, row, key, out_dir)

    monkeypatch.setattr(worker_module.Worker, "run", flaky)
    assert cli.main(argv) == 130
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == ["a_s1.mp4"]
    assert _report(out)[2]["status"] == "stopped"
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.suffix != ""]  # no temporary files
    monkeypatch.setattr(worker_module.Worker, "run", real)
    assert cli.main(argv) == 1
    report = _report(out)
    assert [report[i]["status"] for i in (1, 2, 3, 4)] == ["skipped", "done", "failed", "done"]


def test_manifest_rules(tmp_path, inputs):
    base = StreamSettings()
    (tmp_path / "bad.csv").write_text("video,audio,colour\na.mp4,s1.wav,red\n")
    with pytest.raises(mf.ManifestError, match="unknown column.*colour"):
        mf.load_manifest(str(tmp_path / "bad.csv"), str(tmp_path), base)
    (tmp_path / "clash.jsonl").write_text(
        json.dumps({"video": str(inputs / "a.mp4"), "audio": str(inputs / "s1.wav"), "out": "x.mp4"}) + "\n"
        + json.dumps({"video": str(inputs / "b.mp4"), "audio": str(inputs / "s2.wav"), "out": "x.mp4"}) + "\n"
    )
    with pytest.raises(mf.ManifestError, match="rows 1 and 2 both write x.mp4"):
        mf.load_manifest(str(tmp_path / "clash.jsonl"), str(tmp_path), base)
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"video": str(inputs / "a.mp4"), "audio": str(inputs / "s1.wav"), "steps": 1001},
        {"video": str(inputs / "a.mp4"), "audio": str(inputs / "nope.wav"), "out": "n.mp4"},
        {"video": str(inputs / "a.mp4"), "audio": str(inputs / "s1.wav"), "out": "ok.mp4", "mask-grow": -3,
         "silence": "keep", "face": 0},
    ]) + "\n")
    rows = mf.load_manifest(str(tmp_path / "rows.jsonl"), str(tmp_path), base)
    assert rows[0].error == "steps = 1001: use 1-1000 (default 20)."
    assert "nope.wav: no such file" in rows[1].error
    assert rows[2].error is None and (rows[2].settings.mask_grow, rows[2].settings.silence, rows[2].settings.face) == (
        -3, True, 0)
    assert rows[2].out == os.path.join(str(tmp_path), "ok.mp4")


def test_usage_errors_come_before_any_model(inputs, tmp_path, capsys):
    assert cli.main(["batch", str(tmp_path / "none.csv"), str(tmp_path / "o"), *BASE]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["batch", str(inputs / "m.csv"), str(tmp_path / "o"), *BASE, "--steps", "0"]) == 2
    assert "--steps 0" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert cli.main(["batch", str(inputs / "m.csv"), str(tmp_path / "f"), *BASE]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was run or written


def test_score_adds_the_sync_score_of_each_output(tmp_path, syncnet_file, capsys):
    """--score: each done row's report line carries the score command's figures for its output."""
    make_face_clip(tmp_path / "long.mp4", 30)
    _write_wav(tmp_path / "long.wav", 1.2)
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "long.mp4", "audio": "long.wav", "out": "o.mp4"}) + "\n")
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "m.jsonl"), str(out), *BASE, "--score", "--syncnet", str(syncnet_file),
            "--crops", "landmarks"]
    assert cli.main(argv) == 0
    line = _report(out)[1]
    assert line["status"] == "done" and line["crops"] == "landmarks"
    capsys.readouterr()
    assert cli.main(["score", str(out / "o.mp4"), "--syncnet", str(syncnet_file), "--crops", "landmarks", "--json",
                     "-q", "--no-download"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["lse_c"], line["lse_d"], line["offset_frames"]) == pytest.approx(
        (figures["lse_c"], figures["lse_d"], figures["offset_frames"]), abs=1e-6)
