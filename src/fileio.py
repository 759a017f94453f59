"""Atomic writes: a file is written beside its destination and renamed over it, so a crash at any
moment leaves either the previous version or the new one, never a partial file."""
from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

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
