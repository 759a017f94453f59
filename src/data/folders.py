"""Scanning an image-folder dataset: its classes and image files (hidden files, symlinks, loops and entries that are
not regular files handled), and the check that no file is reached from two splits or two classes."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import DataError
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


def find_images(folder: Path, not_regular: list[str] | None = None) -> list[str]:
    """Image files under a folder, recursively, sorted; hidden files and non-images are skipped, and so
    are FIFOs, sockets and devices (opening one could block the run forever). A broken symlink with an
    image name is kept, so that decoding reports it rather than the image silently going missing.

    Symlinked folders are followed, each real folder once (at its first path in sorted, depth-first
    order); a link to a folder that holds the link (itself, a parent, the dataset root) is a loop and is
    not followed: it would bring other classes' images (or the whole disk) into this class.
    An unreadable folder is an error naming it. The entries that are not regular files are appended to
    `not_regular` when given (to be reported once for a whole dataset), else reported here.
    """
    found: list[str] = []
    visited: set[str] = set()
    report_here = not_regular is None
    not_regular = [] if not_regular is None else not_regular

    def walk(path: str, chain: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in visited:  # a second link to the same folder
            return
        visited.add(real)
        chain = (*chain, real)  # the real folders down to here
        try:
            with os.scandir(path) as it:
                entries = sorted((e for e in it if not _is_hidden(e.name)), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot read folder {path}: {exc.strerror or exc}") from None
        folders = []
        for entry in entries:
            if entry.is_dir():  # follows symlinks
                if not _is_loop(entry.path, chain):
                    folders.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                # d_type answers is_file() without a stat call, except for symlinks
                if entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                    found.append(entry.path)
                else:
                    not_regular.append(entry.path)
        for sub in folders:
            walk(sub, chain)

    walk(os.fspath(folder), ())
    if report_here:
        _report_not_regular(not_regular)
    return found


def _report_not_regular(paths: list[str]) -> None:
    if paths:
        log.warning("Skipped %d entries with image names that are not regular files (FIFOs, sockets or devices), "
                    "first: %s", len(paths), paths[0])


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, int, str]]]:
    """Finds class names and every (split, class index, path); checks the layout."""
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
    entries, not_regular = [], []
    for split, split_dir in split_dirs.items():
        names = _class_dirs(split_dir)
        if not names:
            raise DataError(f"split folder {split_dir} has no class folders")
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"class folder {split_dir / unknown[0]} is not a class of the training split "
                            f"(training classes: {', '.join(classes)})")
        for name in names:
            files = find_images(split_dir / name, not_regular)
            if not files and split_dir == main_dir:
                raise DataError(f"class folder {split_dir / name} has no images")
            entries.extend((split, classes.index(name), f) for f in files)
    _report_not_regular(not_regular)
    return classes, entries


def _check_no_file_in_two_places(entries: list[tuple[str, int, str]], stats: list[os.stat_result | None]) -> None:
    """One real file reached (through links) from two splits would leak test or validation images into
    training; from two classes it would have two labels. Twice in one class is allowed (oversampling).
    Files are identified by device and inode, which os.stat already gave (realpath would cost seconds)."""
    seen: dict[tuple[int, int], tuple[str, int, str]] = {}
    for (split, label, path), st in zip(entries, stats):
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
