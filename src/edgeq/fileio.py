"""Every file edgeq writes goes through here: checked before any work, written atomically.

* :func:`check_writable_output` runs before a command does its (slow) work: the output must not
  be, or link to, one of the command's inputs (same file by device and inode, so symbolic and
  hard links count), must not be a folder, and its folder must exist or be creatable and be
  writable (proved by creating and removing a temporary file there).
* :func:`write_atomic` writes through a temporary file in the destination's folder and renames it
  into place, so a failure or Ctrl-C leaves either the old file or the new one and never a
  partial file or a stray temporary. The result gets the mode a plain ``open(path, "w")`` would
  give: an existing file keeps its mode, a new one gets ``0o666 & ~umask`` (``mkstemp`` alone
  would leave it 0600, unreadable to other users, containers and web servers).
"""
from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from edgeq.errors import EdgeqError


class OutputError(EdgeqError):
    """An output path edgeq cannot or must not write (an input, a folder, a read-only place)."""


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it for other threads.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting it twice, under a
    lock and with a strict temporary value, so a file another thread creates meanwhile is at
    worst more private than asked, never world-writable.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _nearest_existing(folder: Path) -> Path:
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, target: Path) -> None:
    """Create and remove a temporary file in ``folder``; an OutputError naming ``target`` if not."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgeq-write-check.", dir=folder)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise OutputError(f"cannot write {target}: folder {folder} is not writable ({why})",
                          "choose an output in a folder you can write to") from None
    os.close(fd)
    os.unlink(tmp)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # follows symbolic links: a link to an input is that input
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_writable_output(path: str | Path, *, inputs: Iterable[str | Path] = (), kind: str = "output") -> Path:
    """Refuse, before any work, an output that would destroy an input or cannot be written.

    Args:
        path: the file the command will write.
        inputs: files the command reads (model, images, ground truth): the output must not be
            any of them, under any name (symbolic or hard link). Missing inputs are ignored.
        kind: what the file is, for the message (``artifact``, ``report``...).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: the output is an input, an existing folder, below a file, or its folder
            cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{kind} path {path} is an existing folder",
                          f"name a file inside it, e.g. {path / 'NAME'}")
    # as the kernel will resolve it, and lexically ("new/../model.onnx": "new" is created first)
    out_ids = {i for i in (_identity(path), _identity(Path(os.path.normpath(os.path.abspath(path))))) if i}
    if out_ids:
        for inp in inputs:
            inp = Path(inp)
            if _identity(inp) in out_ids:
                how = "" if os.path.abspath(path) == os.path.abspath(inp) else f" ({inp}, under another name or a link)"
                raise OutputError(f"{kind} path {path} is an input of this command{how}: writing it would destroy it",
                                  "choose another output path")
    folder = path.parent
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder",
                          "choose an output path below a folder")
    _probe_writable(existing, path)
    return path


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    Creates missing parent folders. On any failure (including KeyboardInterrupt) the temporary
    file is removed and ``path`` is left as it was. The new file's mode is what ``open(path, "w")``
    would give (an existing file's mode is kept; a new one gets ``0o666 & ~umask``).

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output path {path} is an existing folder", f"name a file inside it, e.g. {path / 'NAME'}")
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else new_file_mode()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}", "choose an output in a folder you can write to") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {e.strerror or e}",
                              "check the free space and permissions of its folder") from None
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    return write_atomic(path, text.encode("utf-8"))


__all__ = ["OutputError", "check_writable_output", "current_umask", "new_file_mode", "write_atomic", "write_text_atomic"]
