"""A cached decode is checked against its files on every load (src/data/freshness.py): files rewritten with their
size and modification time restored (in place, `cp -p`, an rsync-style rename) are decoded again and served as a
fresh decode serves them; files touched or extracted again with the same content are hashed and kept.

Through the command line (`python -m src.evaluate`, predictions.csv against a fresh decode's) and in-process (the
pixels, and which files were decoded)."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import src.data.decoding as decoding
import src.data.fer2013_csv as fer2013_csv
import src.data.freshness as freshness
from src.errors import UserError
from tests import helpers
from tests.helpers import CLASSES, ROOT, class_image, quote, read_fer, write_fer_csv

SIZE = 32  # BMP files: 3,126 bytes each at 32x32 RGB whatever the pixels, so a rewrite can keep the size


def write_bmp(path: Path, label: int, seed: int) -> Path:
    Image.fromarray(class_image(label, np.random.default_rng(seed), SIZE)).save(path, format="BMP")
    return path


def write_bmp_dataset(root: Path, splits: dict[str, int]) -> Path:
    for number, (split, count) in enumerate(splits.items()):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                write_bmp(root / split / name / f"img_{i:03d}.bmp", label, seed=1000 * number + 100 * label + i)
    return root


def other_content(path: Path, label: int = 0) -> bytes:
    """Other pixels for `path`, in a file of its size (another class's band: the predictions move)."""
    scratch = path.with_name(f".scratch-{path.name}")
    write_bmp(scratch, label, seed=12345)
    data = scratch.read_bytes()
    scratch.unlink()
    assert len(data) == path.stat().st_size and data != path.read_bytes()
    return data


# -- the ways a file is rewritten with its size and modification time kept -------------------------------------

def rewrite_in_place(path: Path, data: bytes) -> None:
    """Written into the same file (same inode), then its modification time set back (os.utime)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_over_with_cp_p(path: Path, data: bytes) -> None:
    """`cp -p new path`: the new file's bytes written into `path` (same inode) and the new file's times given to
    it; the new file was made with `path`'s modification time (as a copy of a copy would have)."""
    st = path.stat()
    new = path.parent.parent / f"new-{path.name}"  # outside the class folder: not part of the dataset
    new.write_bytes(data)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    subprocess.run(["cp", "-p", str(new), str(path)], check=True)
    new.unlink()


def rsync_t_style(path: Path, data: bytes) -> None:
    """rsync -t: a hidden temporary file beside it, its modification time set, renamed over it (a new inode)."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.XyZ123")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


def assert_size_and_mtime_kept(path: Path, before: os.stat_result) -> None:
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.fixture
def record_at_once(monkeypatch):
    """Signatures recorded however soon after a file was written (the tests write their files just before):
    without this, a file changed less than 2 s before it was read is hashed again on the next load anyway."""
    monkeypatch.setattr(freshness, "MIN_AGE_NS", 0)


@pytest.fixture
def decode_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = decoding.decode_image
    monkeypatch.setattr(decoding, "decode_image", lambda path, *args: calls.append(path) or real(path, *args))
    return calls


def pixels(root: Path, cache_dir: Path | None) -> dict[str, torch.Tensor]:
    """Every file's pixels as read_folder serves them (cache_dir None: a fresh decode)."""
    data = decoding.read_folder(root, 3, SIZE, str(cache_dir) if cache_dir else None)
    return {file: split.images[i].clone() for split in data.splits.values() for i, file in enumerate(split.files)}


def assert_served_as_fresh(root: Path, cache_dir: Path) -> dict[str, torch.Tensor]:
    served, fresh = pixels(root, cache_dir), pixels(root, None)
    assert served.keys() == fresh.keys()
    stale = [file for file in fresh if not torch.equal(served[file], fresh[file])]
    assert not stale, f"served from the cache's old pixels: {stale}"
    return served


# -- in-process: each way of rewriting, what is decoded and what is served ------------------------------------

REWRITES = {"in place, mtime restored": rewrite_in_place, "cp -p": copy_over_with_cp_p, "rsync -t": rsync_t_style}


@pytest.mark.parametrize("rewrite", REWRITES.values(), ids=REWRITES.keys())
def test_a_rewrite_keeping_size_and_mtime_is_decoded_again(tmp_path, record_at_once, decode_calls, rewrite, caplog):
    root = write_bmp_dataset(tmp_path / "data", {"train": 3, "val": 1})
    cache_dir = tmp_path / "cache"
    before = pixels(root, cache_dir)
    path = root / "train" / "top" / "img_001.bmp"
    st = path.stat()
    rewrite(path, other_content(path))
    assert_size_and_mtime_kept(path, st)
    decode_calls.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        served = assert_served_as_fresh(root, cache_dir)
    assert decode_calls[0] == str(path) and decode_calls.count(str(path)) == 2  # from the cache's check, then fresh
    assert len(decode_calls) == 1 + 12  # the cache decoded that file only (the fresh decode: all 12)
    assert not torch.equal(served[str(path)], before[str(path)])
    assert "Loaded decoded" in caplog.text
    assert "Checked 1 of 12 files" in caplog.text and "1 changed, 0 the same" in caplog.text
    assert "Decoded the 1 changed files" in caplog.text
    decode_calls.clear()
    assert pixels(root, cache_dir)[str(path)].equal(served[str(path)]) and decode_calls == []  # cached anew


def test_a_folder_extracted_again_with_the_same_content_is_hashed_not_decoded(tmp_path, record_at_once,
                                                                             decode_calls, caplog):
    """Every file new (inode, change time), the modification times restored by the archive: every file is read
    and hashed (FER2013: about 1 s), none decoded, and the new signatures recorded for the next start."""
    root = write_bmp_dataset(tmp_path / "data", {"train": 3, "val": 1})
    cache_dir = tmp_path / "cache"
    before = pixels(root, cache_dir)
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="data")
    shutil.rmtree(root)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="tar")
    decode_calls.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        after = pixels(root, cache_dir)
    assert decode_calls == []
    assert after.keys() == before.keys() and all(torch.equal(after[f], before[f]) for f in before)
    assert "Checked 12 of 12 files" in caplog.text and "0 changed, 12 the same" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        pixels(root, cache_dir)
    assert "Checked" not in caplog.text and decode_calls == []  # the new signatures were recorded


def test_a_file_touched_or_rewritten_with_the_same_bytes_keeps_its_pixels(tmp_path, record_at_once, decode_calls,
                                                                          caplog):
    root = write_bmp_dataset(tmp_path / "data", {"train": 3})
    cache_dir = tmp_path / "cache"
    before = pixels(root, cache_dir)
    touched, copied = root / "train" / "bottom" / "img_000.bmp", root / "train" / "middle" / "img_002.bmp"
    subprocess.run(["touch", str(touched)], check=True)
    rsync_t_style(copied, copied.read_bytes())
    decode_calls.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        after = pixels(root, cache_dir)
    assert decode_calls == [] and all(torch.equal(after[f], before[f]) for f in before)
    assert "Checked 2 of 9 files" in caplog.text and "0 changed, 2 the same" in caplog.text


def test_files_written_just_before_they_were_cached_are_hashed_on_the_next_load(tmp_path, decode_calls, caplog):
    """A change in the same timestamp tick as the decode's read would leave every time as it was: a file changed
    less than 2 s before it was read is recorded UNSURE, and hashed again (not decoded) on the next load."""
    root = write_bmp_dataset(tmp_path / "data", {"train": 2})
    pixels(root, tmp_path / "cache")
    decode_calls.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        pixels(root, tmp_path / "cache")
    assert decode_calls == [] and "Checked 6 of 6 files" in caplog.text and "0 changed, 6 the same" in caplog.text


def test_many_changed_files_are_decoded_again_as_a_whole(tmp_path, record_at_once, monkeypatch, caplog):
    """More changed files than a decode part (4,096): the whole dataset is decoded again, in parallel parts."""
    monkeypatch.setattr(decoding, "DECODE_PART", 2)
    root = write_bmp_dataset(tmp_path / "data", {"train": 2})
    cache_dir = tmp_path / "cache"
    pixels(root, cache_dir)
    for name in CLASSES:
        path = root / "train" / name / "img_000.bmp"
        rewrite_in_place(path, other_content(path, label=2))
    with caplog.at_level(logging.INFO, logger="src.data"):
        assert_served_as_fresh(root, cache_dir)
    assert "Decoding" in caplog.text and "again: 3 files changed" in caplog.text


def test_where_ctime_is_not_kept_a_rewrite_in_place_needs_the_content_check(tmp_path, record_at_once, monkeypatch,
                                                                            caplog):
    """The documented blind spot: on a filesystem that does not maintain change times (simulated: the signature
    leaves it out), a rewrite in place with size and modification time restored looks unchanged and the old pixels
    are served; FER_RUNNER_CACHE_CHECK=content hashes every file and finds it."""
    monkeypatch.setattr(freshness, "signature", lambda st: hash((st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)))
    root = write_bmp_dataset(tmp_path / "data", {"train": 2})
    cache_dir = tmp_path / "cache"
    before = pixels(root, cache_dir)
    path = root / "train" / "top" / "img_001.bmp"
    rewrite_in_place(path, other_content(path))
    assert torch.equal(pixels(root, cache_dir)[str(path)], before[str(path)])  # stale: what the docs warn of
    monkeypatch.setenv(freshness.CHECK_VARIABLE, "content")
    with caplog.at_level(logging.INFO, logger="src.data"):
        assert_served_as_fresh(root, cache_dir)
    assert "Checked 6 of 6 files" in caplog.text and "FER_RUNNER_CACHE_CHECK=content" in caplog.text
    assert "1 changed, 5 the same" in caplog.text
    monkeypatch.setenv(freshness.CHECK_VARIABLE, "always")
    with pytest.raises(UserError, match="^FER_RUNNER_CACHE_CHECK=always is invalid: use stat"):
        pixels(root, cache_dir)


# -- FER2013 as Kaggle's CSV ---------------------------------------------------------------------------------

def test_the_fer2013_csv_rewritten_with_its_size_and_mtime_is_parsed_again(tmp_path, record_at_once, monkeypatch,
                                                                           caplog):
    parsed = []
    real = fer2013_csv._parse_fer2013_csv
    monkeypatch.setattr(fer2013_csv, "_parse_fer2013_csv", lambda path: parsed.append(path) or real(path))
    csv = write_fer_csv(tmp_path / "fer2013.csv")
    first = read_fer(csv, tmp_path / "cache")
    text = csv.read_text()
    changed = text.replace(" 5 ", " 6 ", 1)  # one pixel of the first row: the same size
    st = csv.stat()
    rewrite_in_place(csv, changed.encode())
    assert_size_and_mtime_kept(csv, st)
    with caplog.at_level(logging.INFO, logger="src.data"):
        served = read_fer(csv, tmp_path / "cache")
    assert "changed since it was cached" in caplog.text and len(parsed) == 2
    fresh = read_fer(csv, None)  # parsed a third time
    assert torch.equal(served.splits["train"].images, fresh.splits["train"].images)
    assert not torch.equal(served.splits["train"].images, first.splits["train"].images)
    # the same bytes renamed over it (new times, new inode): hashed, not parsed again
    rsync_t_style(csv, csv.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        again = read_fer(csv, tmp_path / "cache")
    assert len(parsed) == 3 and "Checked" in caplog.text and "the same" in caplog.text
    assert torch.equal(again.splits["train"].images, fresh.splits["train"].images)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        read_fer(csv, tmp_path / "cache")
    assert "Checked" not in caplog.text and len(parsed) == 3  # its new signature was recorded


# -- through the command line ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny training on BMP folders, its decode cache recording every file's signature."""
    from src.training.experiment import train

    tmp = tmp_path_factory.mktemp("freshness")
    root = write_bmp_dataset(tmp / "data", {"train": 6, "val": 2, "test": 3})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(freshness, "MIN_AGE_NS", 0)
        train(helpers.compose_train(helpers.fast_overrides(root, tmp / "cache", "trainer.max_epochs=1")), tmp / "run")
    return {"root": root, "cache": tmp / "cache", "ckpt": tmp / "run" / "checkpoints" / "best.pt", "tmp": tmp}


def evaluate_command(trained: dict, out: Path) -> tuple[str, str]:
    """`python -m src.evaluate` with the training's cache: (its predictions.csv, its console output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "src.evaluate", f"ckpt_path={quote(trained['ckpt'])}",
                             f"paths.cache_dir={quote(trained['cache'])}", f"paths.output_dir={quote(out)}",
                             "trainer.device=cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    (run,) = (out / "eval").iterdir()
    return (run / "predictions.csv").read_text(), output


def fresh_predictions(trained: dict, out: Path) -> str:
    """predictions.csv of the same checkpoint on a fresh decode (no cache)."""
    from src.evaluation.split_evaluation import run_evaluation

    cfg = helpers.compose_entry("eval", [f"ckpt_path={quote(trained['ckpt'])}", "paths.cache_dir=null",
                                         "trainer.device=cpu"])
    run_evaluation(cfg, out)
    return (out / "predictions.csv").read_text()


def rows(predictions: str) -> dict[str, str]:
    return {line.split(",")[0]: line for line in predictions.splitlines()[1:]}


def test_the_evaluate_command_serves_rewritten_files_as_a_fresh_decode(trained, tmp_path):
    """Three test images rewritten with other pixels, size and modification time kept (in place + utime, cp -p,
    an rsync-style rename), and one replaced by a copy of itself (a new inode, the same bytes and times):
    predictions.csv is a fresh decode's, and the log says what was done. (Before the fix, the three were served
    from the cache's old pixels: predictions.csv differed from a fresh decode's.)"""
    test = trained["root"] / "test"
    before = rows((trained["ckpt"].parent.parent / "predictions.csv").read_text())
    rewritten = [test / "top" / "img_000.bmp", test / "middle" / "img_001.bmp", test / "bottom" / "img_002.bmp"]
    for path, rewrite in zip(rewritten, REWRITES.values()):
        st = path.stat()
        rewrite(path, other_content(path, label=(CLASSES.index(path.parent.name) + 1) % 3))
        assert_size_and_mtime_kept(path, st)
    rsync_t_style(test / "top" / "img_001.bmp", (test / "top" / "img_001.bmp").read_bytes())

    served, output = evaluate_command(trained, tmp_path / "served")
    assert served == fresh_predictions(trained, tmp_path / "fresh")
    for path in rewritten:
        assert rows(served)[str(path)] != before[str(path)]  # what the stale cache would have served
    assert rows(served)[str(test / "top" / "img_001.bmp")] == before[str(test / "top" / "img_001.bmp")]
    assert "Loaded decoded" in output
    assert "Checked 4 of 33 files" in output and "3 changed, 1 the same" in output
    assert "Decoded the 3 changed files" in output


@pytest.mark.slow  # the same in-process: test_a_folder_extracted_again_with_the_same_content_is_hashed_not_decoded
def test_the_evaluate_command_after_the_folder_is_extracted_again(trained, tmp_path):
    root = trained["root"]
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=root.name)
    expected, _ = evaluate_command(trained, tmp_path / "before")
    shutil.rmtree(root)
    with tarfile.open(archive) as tar:
        tar.extractall(root.parent, filter="tar")
    served, output = evaluate_command(trained, tmp_path / "after")
    assert served == expected
    assert "Checked 33 of 33 files" in output and "0 changed, 33 the same" in output
    assert "Decoded" not in output  # neither the changed files ("Decoded the ...") nor all ("Decoded ... and cached")
