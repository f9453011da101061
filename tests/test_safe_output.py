"""Nothing lost: outputs checked before any work, written to a temporary name, renamed when complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latentsync_core.errors import LatentSyncError
from latentsync_core.safe_output import atomic_path, check_output_path
from latentsync_core.video_io import VideoWriter, probe_video

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ check_output_path
def test_output_that_is_an_input_is_refused(tmp_path, monkeypatch):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"input")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink(video, tmp_path / "link.mp4")
    os.link(video, tmp_path / "hard.mp4")
    for out in ["a.mp4", "./sub/../a.mp4", str(video), "link.mp4", "hard.mp4"]:
        with pytest.raises(LatentSyncError, match="is the input file .*destroy the input"):
            check_output_path(out, inputs=[str(video), None])
    assert video.read_bytes() == b"input"
    assert check_output_path("b.mp4", inputs=[str(video)]) == str(tmp_path / "b.mp4")


def test_output_suffix_and_folder(tmp_path):
    with pytest.raises(LatentSyncError, match=r"ending in \.mp4, \.mov, \.mkv"):
        check_output_path(tmp_path / "out.avi")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(LatentSyncError, match="is a folder"):
        check_output_path(tmp_path / "dir.mp4")
    deep = tmp_path / "new" / "deeper" / "out.MP4"
    assert check_output_path(deep) == str(deep) and deep.parent.is_dir()  # folders are created
    assert os.listdir(deep.parent) == []  # the write probe is removed


@pytest.mark.parametrize("out", ["/proc/out.mp4", "/proc/latentsync/out.mp4", "/sys/out.mp4", "{tmp}/file/out.mp4"])
def test_unwritable_output_is_refused_up_front(tmp_path, out):
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(LatentSyncError, match="writable location") as err:
        check_output_path(out.format(tmp=tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(LatentSyncError, match="not writable"):
            check_output_path(ro / "out.mp4")
        with pytest.raises(LatentSyncError, match="cannot create the folder"):
            check_output_path(ro / "sub" / "out.mp4")
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------------------------------ atomic_path
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_keeps_the_earlier_file_on_failure(tmp_path, error):
    final = tmp_path / "out.mp4"
    final.write_bytes(b"earlier result")
    with pytest.raises(error), atomic_path(final) as tmp:
        assert Path(tmp).parent == tmp_path and tmp.endswith(".mp4") and Path(tmp).name.startswith(".")
        Path(tmp).write_bytes(b"half")
        raise error()
    assert final.read_bytes() == b"earlier result"
    assert os.listdir(tmp_path) == ["out.mp4"]
    with atomic_path(final) as tmp:
        Path(tmp).write_bytes(b"new")
        assert final.read_bytes() == b"earlier result"  # not replaced before the block completes
    assert final.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.mp4"]


def test_video_writer_failure_keeps_an_earlier_output(tmp_path):
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 32, 32, 25) as w:
        w.write(np.zeros((3, 32, 32, 3), np.uint8))
    before = out.read_bytes()
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error), VideoWriter(out, 32, 32, 25) as w:
            w.write(np.full((5, 32, 32, 3), 200, np.uint8))
            raise error("boom")
        assert out.read_bytes() == before and probe_video(out).num_frames == 3
    assert os.listdir(tmp_path) == ["out.mp4"]  # no temporary file left behind
    with VideoWriter(out, 32, 32, 25) as w:
        w.write(np.zeros((4, 32, 32, 3), np.uint8))
        assert probe_video(out).num_frames == 3  # the final name changes only at the end
    assert probe_video(out).num_frames == 4


_WRITE_FOREVER = """
import sys, numpy as np
from latentsync_core.video_io import VideoWriter
w = VideoWriter(sys.argv[1], 64, 64, 25, audio=(np.zeros((1, 160000), np.float32), 16000))
w.write(np.zeros((1, 64, 64, 3), np.uint8))
print("writing", flush=True)
while True:
    w.write(np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8))
"""


@pytest.mark.parametrize("earlier", [False, True])
def test_killed_writer_leaves_no_broken_file(tmp_path, earlier):
    """SIGKILL (the OOM killer) mid-write: the final name is either absent or still the earlier file."""
    out = tmp_path / "out.mp4"
    if earlier:
        with VideoWriter(out, 64, 64, 25) as w:
            w.write(np.zeros((2, 64, 64, 3), np.uint8))
    before = out.read_bytes() if earlier else None
    proc = subprocess.Popen([sys.executable, "-c", _WRITE_FOREVER, str(out)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"writing"
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline:  # wait until the encoder has put real data on disk
            partial = [p for p in tmp_path.iterdir() if p.name != "out.mp4"]
            if partial and partial[0].stat().st_size > 20000:
                break
            time.sleep(0.05)
        assert partial and partial[0].name.startswith(".out.") and partial[0].name.endswith(".partial.mp4")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    if earlier:
        assert out.read_bytes() == before and probe_video(out).num_frames == 2
    else:
        assert not out.exists()


class _FullDisk:
    """The writer's container, refusing to mux from the ``after``-th packet on as a full disk does (FFmpeg's
    ENOSPC arrives as ``av.error.OSError``)."""

    def __init__(self, container, after: int):
        self._container, self._left = container, after

    def mux(self, packets):
        import errno

        import av

        if self._left <= 0:
            raise av.error.OSError(errno.ENOSPC, "No space left on device")
        self._left -= 1
        return self._container.mux(packets)

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize("after", [0, 3])
def test_a_full_disk_is_one_line_with_the_path_and_free_space(tmp_path, after):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier result")
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(LatentSyncError) as caught:
        with VideoWriter(out, 32, 32, 25) as writer:
            writer.container = _FullDisk(writer.container, after)
            for frame in frames:
                writer.write(frame)
    message = str(caught.value)
    assert message.startswith("The disk is full: writing ") and str(out) in message and "free in" in message
    assert "\n" not in message
    assert out.read_bytes() == b"an earlier result" and os.listdir(tmp_path) == ["out.mp4"]  # nothing lost or left


def test_other_write_errors_are_not_called_a_full_disk():
    import errno

    from latentsync_core.safe_output import disk_full_error

    assert disk_full_error(OSError(errno.EACCES, "Permission denied"), "/x/out.mp4") is None
    assert disk_full_error(ValueError("no"), "/x/out.mp4") is None
    assert "The disk is full" in str(disk_full_error(OSError(errno.ENOSPC, "full"), "/tmp/out.mp4"))
