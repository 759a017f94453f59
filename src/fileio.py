"""Files on disk: atomic writes and reads that cannot hang.

A file is written beside its destination and renamed over it, so a crash at any moment leaves either
the previous version or the new one, never a partial file. Every file the runner reads that a user
names or hands over (images, checkpoints, CSVs, caches, run records) is opened with `open_regular`,
which refuses FIFOs, sockets and devices instead of blocking on them.
"""
from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NotRegularFileError(OSError):
    """A path that is a FIFO, socket, device or folder where a file was expected."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Opens a regular file for binary reading. Anything else raises NotRegularFileError at once: opening
    a FIFO normally blocks until a writer appears, and reading a device may never end. The open itself is
    non-blocking and the check is made on the opened descriptor, so a file swapped in between cannot slip
    through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotRegularFileError(f"{path} is {kind}, not a regular file")
        # O_NONBLOCK stays set: reads of regular files ignore it, and a special file that the kernel
        # reports as regular (in /proc, say) then fails instead of waiting forever.
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """A text file's content, read through open_regular."""
    with open_regular(path) as f:
        return f.read().decode(encoding)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    # Serialized in memory first: torch.save writing straight to a full disk fails with an opaque
    # RuntimeError from its zip writer, while a plain write raises OSError(ENOSPC) that says so.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write(path, "wb", lambda f: f.write(buffer.getbuffer()))


def atomic_write_json(obj, path: str | os.PathLike) -> None:
    _atomic_write(path, "w", lambda f: json.dump(obj, f, indent=2))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write(path, "w", lambda f: f.write(text))


def check_writable_folder(folder: str | os.PathLike, key: str) -> Path:
    """Creates `folder` (and its parents) and checks that this user can write into it; otherwise a UserError
    names the key, the folder and why (a file is there, a read-only file system, no permission), before any
    work is done rather than as a traceback from the first file written into it."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{key}={folder} cannot be used as a folder: a file is there") from None
    except OSError as exc:
        raise UserError(f"{key}={folder} cannot be created: {exc.strerror or exc}") from None
    # os.access answers for this user and sees read-only mounts (EROFS); a file written and removed settles
    # what access() cannot know (some network and FUSE file systems).
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{key}={folder} cannot be written: {exc.strerror or exc}") from None
    return folder
