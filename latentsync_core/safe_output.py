"""Output files that never destroy anything: checked before the work starts, written atomically.

- :func:`check_output_path`: before any work (model loading, face detection) refuse an output that is
  one of the inputs (also through links or another spelling of the path), that has the wrong suffix, or
  whose folder cannot be created or written (read-only folder, ``/proc``, a file in the way); each with
  one line saying what to change.
- :func:`atomic_path` / :class:`AtomicOutput`: write to a hidden temporary file in the same folder
  (``.<name>.<random>.partial<ext>``, keeping the extension so muxers pick the format) and rename it
  onto the final name (``os.replace``, atomic on one file system) only once it is complete. On any
  failure (exception, Ctrl-C) the temporary file is removed and an earlier file under the final name is
  left as it was; a killed process (SIGKILL, out of memory) leaves at most the hidden ``.partial`` file,
  never a broken file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from .errors import LatentSyncError

PARTIAL_TAG = ".partial"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    allowed_suffixes: tuple[str, ...] = (".mp4", ".mov", ".mkv"),
    what: str = "--out",
) -> str:
    """Absolute path of ``out`` once it is safe to write; raises :class:`LatentSyncError` otherwise.

    ``inputs``: files the job reads (None entries are skipped); ``out`` must not be any of them.
    ``allowed_suffixes``: lower-case suffixes accepted for ``out`` (empty: any). The folder is created if
    missing and probed by creating and removing a temporary file in it.
    """
    raw = os.fspath(out)
    path = os.path.abspath(os.path.expanduser(raw))
    if allowed_suffixes and not path.lower().endswith(tuple(s.lower() for s in allowed_suffixes)):
        names = ", ".join(allowed_suffixes)
        raise LatentSyncError(f"{what} {raw}: use a file name ending in {names}.")
    if os.path.isdir(path):
        raise LatentSyncError(f"{what} {raw} is a folder: give a file name inside it.")
    for source in inputs:
        if source is not None and _same_file(path, os.path.abspath(os.fspath(source))):
            raise LatentSyncError(
                f"{what} {raw} is the input file {os.fspath(source)}: writing it would destroy the input; "
                "choose another output name."
            )
    folder = os.path.dirname(os.path.realpath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise LatentSyncError(
            f"{what} {raw}: cannot create the folder {folder} ({exc.strerror or exc}); choose a writable location."
        ) from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".latentsync-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise LatentSyncError(
            f"{what} {raw}: the folder {folder} is not writable ({exc.strerror or exc}); choose a writable location."
        ) from exc
    return path


def partial_name(final_path: str | os.PathLike) -> str:
    """A fresh hidden temporary name beside ``final_path`` that keeps its extension."""
    folder, name = os.path.split(os.fspath(final_path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{secrets.token_hex(4)}{PARTIAL_TAG}{ext}")


class AtomicOutput:
    """A file that appears under ``final_path`` only when :meth:`commit` is called.

    Write to :attr:`tmp` (any writer that takes a path); then :meth:`commit` renames it onto the final
    name, or :meth:`discard` removes it. Links at ``final_path`` are followed: the file they point to is
    replaced, as ``open(final_path, "w")`` would.
    """

    def __init__(self, final_path: str | os.PathLike):
        self.final = os.path.realpath(os.path.abspath(os.fspath(final_path)))
        self.tmp = partial_name(self.final)
        self.done = False

    def commit(self) -> str:
        if not self.done:
            if not os.path.exists(self.tmp):
                raise LatentSyncError(f"nothing was written for {self.final}")
            os.replace(self.tmp, self.final)
            self.done = True
        return self.final

    def discard(self) -> None:
        self.done = True
        with contextlib.suppress(OSError):
            os.remove(self.tmp)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # unreachable


def disk_full_error(exc: BaseException, path: str | os.PathLike) -> LatentSyncError | None:
    """One line for a write that failed because the disk (or quota) is full: the output's path and the
    space left in its folder; None when ``exc`` is another error. The earlier file at ``path`` is intact
    (the writer only ever wrote its temporary file)."""
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE:
        return None
    folder = os.path.dirname(os.path.abspath(os.fspath(path))) or "."
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    return LatentSyncError(f"The disk is full: writing {os.fspath(path)} stopped ({free} in {folder}). Free some "
                           "space or write the output to another disk; nothing was lost.")


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[str]:
    """``with atomic_path("out.mp4") as tmp: write(tmp)``: ``out.mp4`` is replaced only if the block
    completes; on any exception (KeyboardInterrupt included) ``tmp`` is removed and ``out.mp4`` untouched."""
    target = AtomicOutput(final_path)
    try:
        yield target.tmp
    except BaseException:
        target.discard()
        raise
    try:
        target.commit()
    except BaseException:
        target.discard()
        raise
