"""Whether a cached decode still holds what its files contain.

The cache records, for every file it decoded, a *signature* (a hash of size, modification time, change time,
inode and device, from the fstat of the file opened for the decode, taken before its bytes were read) and the
*digest* of the bytes decoded (SHA-256, cut to 128 bits). A start stats every file and trusts the cached pixels of a
file whose signature is the recorded one. Any other file is read and hashed: the same digest keeps its pixels
(a touched file, a folder extracted again with the same content) and records the new signature; another
digest decodes it again.

Why a rewrite cannot hide: writing a file sets its change time (ctime) to now, and no user tool sets it back:
`cp -p`, `rsync -t` and extraction tools set the modification time back, and doing so (utime) sets the change
time to now again. A rewrite with the same size and modification time still changes the signature; a file
renamed over another (rsync's temporary file) changes the inode too. A file changed within MIN_AGE_NS before it was
read is recorded UNSURE: a second change within the same timestamp tick would leave every time as it was, so
it is hashed again on the next start.

What it cannot see: a file rewritten in place with the same size and modification time on a filesystem that
does not maintain ctime (some network and FUSE mounts). FER_RUNNER_CACHE_CHECK=content hashes every file on
every start for those (FER2013's 35,887 files: about 1.2 s on 2 cores, against 0.2 s).

The digest only has to tell an accidental change: the entry holding it is signed with an HMAC already
(cache.py), so a per-file MAC would add nothing, and 128 bits make two contents with one digest beyond reach.
SHA-256 because the CPU's SHA instructions make it hashlib's fastest here (2 µs a FER2013 file, 1.5 GB/s; BLAKE2b
3.6 µs, 0.55 GB/s on the 2-core EPYC).
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from ..errors import UserError
from ..fileio import open_regular

DIGEST_BYTES = 16
MIN_AGE_NS = 2_000_000_000
# Recorded for a file to hash again on the next start (and given now for a file that cannot be stat'ed). CPython's
# hash() never returns -1, so no signature is UNSURE; were one ever, that file would only be hashed every time.
UNSURE = -1
CHECK_VARIABLE = "FER_RUNNER_CACHE_CHECK"


def signature(st: os.stat_result) -> int:
    """Size, modification and change times, inode and device, hashed into one int64 (a Python hash of ints: the
    same in every process; another Python version may hash differently, which costs one hashing of every file)."""
    return hash((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev))


def content_hasher():
    """The hash of a file's content, fed as its bytes are read (`update`); `finish_digest` gives what is recorded."""
    return hashlib.sha256()


def finish_digest(hasher) -> bytes:
    return hasher.digest()[:DIGEST_BYTES]


def content_digest(data: bytes) -> bytes:
    hasher = content_hasher()
    hasher.update(data)
    return finish_digest(hasher)


def signature_to_record(fd: int) -> int:
    """The signature to record for the file open at `fd`, taken before it is read: UNSURE when the file changed
    less than MIN_AGE_NS before (otherwise any later change shows in its change time)."""
    st = os.fstat(fd)
    return UNSURE if time.time_ns() - st.st_ctime_ns < MIN_AGE_NS else signature(st)


def read_file(path: str) -> tuple[bytes, int]:
    """A file's bytes and the signature to record for them."""
    with open_regular(path) as f:
        recorded = signature_to_record(f.fileno())
        return f.read(), recorded


def current_signatures(paths: list[str]) -> np.ndarray:
    """Every file's signature as os.stat gives it now, UNSURE where it cannot be stat'ed (a broken link). This is
    the one stat per file of a warm start: one loop over os.stat, as cheap as Python gets it (threads were
    measured slower: each stat releases and takes back the GIL)."""
    try:
        return np.fromiter(map(signature, map(os.stat, paths)), np.int64, len(paths))
    except OSError:
        pass
    found = np.full(len(paths), UNSURE, dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            found[i] = signature(os.stat(path))
        except OSError:
            pass
    return found


def check_every_file() -> bool:
    """Whether FER_RUNNER_CACHE_CHECK=content asks to hash every file on every start (for a filesystem that
    does not maintain change times); `stat`, the default, hashes the files whose signature changed."""
    value = os.environ.get(CHECK_VARIABLE, "stat") or "stat"
    if value not in ("stat", "content"):
        raise UserError(f"{CHECK_VARIABLE}={value} is invalid: use stat (the default) or content")
    return value == "content"


def rows_to_check(recorded: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The rows whose files must be hashed: signature changed, UNSURE then or now, or all with
    FER_RUNNER_CACHE_CHECK=content."""
    if check_every_file():
        return np.arange(len(current))
    return np.flatnonzero((recorded != current) | (recorded == UNSURE) | (current == UNSURE))


def why_checked() -> str:
    """Why files are being hashed, for the log."""
    if check_every_file():
        return f"{CHECK_VARIABLE}=content"
    return "size, times or inode not the cache's record of them, or just written when it was made"
