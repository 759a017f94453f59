"""Scanning an image-folder dataset: its classes and image files (hidden files, symlinks, loops and entries that are
not regular files handled), and the check that no file is reached from two splits or two classes."""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import freshness
from .freshness import UNSURE
from .images import IMAGE_EXTENSIONS
from .raw import SPLITS

log = logging.getLogger(__name__)


# Folder layout: root/{train,val,test}/<class>/<image> or root/<class>/<image>


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_loop(path: str | Path, chain: tuple[str, ...]) -> bool:
    """Whether the folder at `path` resolves to one of the real folders `chain` or to a folder holding one."""
    target = os.path.realpath(path)
    return any(os.path.commonpath([target, real]) == target for real in chain)


def _check_link(path: str | Path, folder: str | Path) -> None:
    """Refuses a class or split folder that is a broken symlink or a symlink to `folder` (which holds it) or above."""
    if not os.path.islink(path):
        return
    if not os.path.exists(path):  # on an unmounted drive, say: it would drop out of the dataset unnoticed
        raise DataError(f"{path} is a broken symlink (its target {os.readlink(path)} does not exist)")
    if _is_loop(path, (os.path.realpath(folder),)):  # it would bring every other class into this one
        raise DataError(f"{path} is a symlink to {os.path.realpath(path)}, which holds it (a loop)")


def _class_dirs(folder: Path) -> list[str]:
    names = []
    for e in os.scandir(folder):
        if not _is_hidden(e.name):
            _check_link(e.path, folder)
            if e.is_dir():
                names.append(e.name)
    return sorted(names)


def find_images(folder: Path, not_regular: list[str] | None = None, signatures: list[int] | None = None) -> list[str]:
    """Image files under a folder, recursively, sorted; hidden files and non-images are skipped, and so
    are FIFOs, sockets and devices (opening one could block the run forever). A broken symlink with an
    image name is kept, so that decoding reports it rather than the image silently going missing.

    Symlinked folders are followed, each real folder once (at its first path in sorted, depth-first
    order); a link to a folder that holds the link (itself, a parent, the dataset root) is a loop and is
    not followed: it would bring other classes' images (or the whole disk) into this class.
    An unreadable folder is an error naming it. The entries that are not regular files are appended to
    `not_regular` when given (to be reported once for a whole dataset), else reported here.

    Every entry is stat'ed (through links) to tell folders, regular files and the rest apart: that is the one
    stat per file a warm start makes anyway, for the cache's check (freshness.py), and each image's signature
    is appended to `signatures` when given (UNSURE for one that cannot be stat'ed). A listing of names and one
    stat each cost a warm start of FER2013 ~60 ms less than os.scandir's entries and a second pass of stats.
    """
    found: list[str] = []
    visited: set[str] = set()
    report_here = not_regular is None
    not_regular = [] if not_regular is None else not_regular
    signatures = [] if signatures is None else signatures

    def walk(path: str, chain: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in visited:  # a second link to the same folder
            return
        visited.add(real)
        chain = (*chain, real)  # the real folders down to here
        try:
            # the folder opened once: its files are stat'ed relative to it (11 % faster than by full path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DataError(f"cannot read folder {path}: {exc.strerror or exc}") from None
        try:
            names = sorted(os.listdir(fd))
            folders = walk_folder(path, fd, names, chain)
        except OSError as exc:
            raise DataError(f"cannot read folder {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        for sub in folders:
            walk(sub, chain)

    def walk_folder(path: str, fd: int, names: list[str], chain: tuple[str, ...]) -> list[str]:
        """Sorts the folder's entries into found, signatures and not_regular; returns its subfolders."""
        prefix = os.path.join(path, "")  # path + "/": os.path.join per file would cost a warm start 15 ms
        folders = []
        signature, is_regular = freshness.signature, stat.S_ISREG  # looked up once: this loop runs per file
        for name in names:
            if name.startswith("."):  # hidden (_is_hidden, inlined: this loop runs per file)
                continue
            # the extension, as os.path.splitext gives it for a name that is not hidden (without a dot: the last
            # letter, never an extension); splitext cost a quarter of the scan
            image = name[name.rfind("."):].lower() in IMAGE_EXTENSIONS
            try:
                st = os.stat(name, dir_fd=fd)  # through a link, as a folder or an image reached by one is used
            except OSError:  # a broken link (or a file gone since the listing): kept, decoding reports it
                if image:
                    found.append(prefix + name)
                    signatures.append(UNSURE)
                continue
            if image and is_regular(st.st_mode):  # the common case first
                found.append(prefix + name)
                signatures.append(signature(st))
            elif stat.S_ISDIR(st.st_mode):
                if not _is_loop(prefix + name, chain):
                    folders.append(prefix + name)
            elif image:
                not_regular.append(prefix + name)
        return folders

    walk(os.fspath(folder), ())
    if report_here:
        _report_not_regular(not_regular)
    return found


def _report_not_regular(paths: list[str]) -> None:
    if paths:
        log.warning("Skipped %d entries with image names that are not regular files (FIFOs, sockets or devices), "
                    "first: %s", len(paths), paths[0])


@dataclass
class Listing:
    """A dataset's files as columns (a warm start handles 35,887 of them: a loop over them in Python costs
    ~5 ms, so each column is made once): paths, labels (class indices), each file's split as an index into
    split_names."""
    paths: list[str]
    labels: np.ndarray
    split_names: list[str]
    split_of: np.ndarray

    @staticmethod
    def of(entries: list[tuple[str, int, str]]) -> Listing:
        """The listing of (split, class index, path) entries."""
        split_column = [split for split, _, _ in entries]
        split_names, split_array = list(dict.fromkeys(split_column)), np.array(split_column)
        split_of = np.zeros(len(entries), dtype=np.int64)
        for code, name in enumerate(split_names[1:], 1):
            split_of[split_array == name] = code
        return Listing([path for _, _, path in entries], np.array([label for _, label, _ in entries], dtype=np.int64),
                       split_names, split_of)

    def entries(self) -> list[tuple[str, int, str]]:
        return [(self.split_names[s], label, path)
                for s, label, path in zip(self.split_of.tolist(), self.labels.tolist(), self.paths)]


def scan_folder(root: Path, signatures: list[int] | None = None) -> tuple[list[str], Listing]:
    """Finds class names and every file with its split and class index; checks the layout. Each file's
    signature (freshness.py) is appended to `signatures` when given."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; set data.root=PATH to the dataset folder")
    for split in SPLITS:
        _check_link(root / split, root)
    has_splits = (root / "train").is_dir()
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()} if has_splits else {"all": root}
    main_dir = split_dirs["train" if has_splits else "all"]
    classes = _class_dirs(main_dir)
    if not classes:
        raise DataError(f"dataset folder {main_dir} has no class folders "
                        f"(expected {root}/<class>/<image> or {root}/train/<class>/<image>)")
    paths, labels, split_of, not_regular = [], [], [], []
    for code, split_dir in enumerate(split_dirs.values()):
        names = _class_dirs(split_dir)
        if not names:
            raise DataError(f"split folder {split_dir} has no class folders")
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"class folder {split_dir / unknown[0]} is not a class of the training split "
                            f"(training classes: {', '.join(classes)})")
        for name in names:
            files = find_images(split_dir / name, not_regular, signatures)
            if not files and split_dir == main_dir:
                raise DataError(f"class folder {split_dir / name} has no images")
            paths += files
            labels.append(np.full(len(files), classes.index(name), dtype=np.int64))
            split_of.append(np.full(len(files), code, dtype=np.int64))
    _report_not_regular(not_regular)
    return classes, Listing(paths, np.concatenate(labels), list(split_dirs), np.concatenate(split_of))


def _check_no_file_in_two_places(listing: Listing, signatures: np.ndarray) -> None:
    """One real file reached (through links) from two splits would leak test or validation images into
    training; from two classes it would have two labels. Twice in one class is allowed (oversampling).
    Files are identified by device and inode (realpath would cost seconds). Two paths of one file have the same
    signature (freshness.current_signatures: a hash of the stat, device and inode included), so the files are
    stat'ed again and compared only when some signature repeats."""
    known = np.sort(signatures[signatures != UNSURE])
    if not (known[1:] == known[:-1]).any():  # (not np.unique: its first call imports numpy.ma, 25 ms)
        return
    seen: dict[tuple[int, int], tuple[str, int, str]] = {}
    for split, label, path in listing.entries():
        st = _file_stat(path)
        if st is None:
            continue
        first = seen.setdefault((st.st_dev, st.st_ino), (split, label, path))
        if first[:2] != (split, label):
            raise DataError(f"{path} and {first[2]} are the same file ({os.path.realpath(path)}) in two "
                            f"{'splits' if first[0] != split else 'classes'}; remove one of the links")


def _file_stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:  # a broken symlink: decoding it reports the error
        return None
