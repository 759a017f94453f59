"""The decode-once cache: served when nothing changed, rebuilt when anything did or when it is damaged."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import src.data.cache as cache_module
import src.data.decoding as decoding
import src.data.fer2013_csv as fer2013_csv
import src.data.freshness as freshness
from src.data import FolderData
from src.errors import BadImageError
from tests.helpers import read_fer, write_fer_csv


@pytest.fixture
def decode_calls(monkeypatch) -> list[str]:
    """The paths src.data.decoding decodes, in order (the real decoder still runs)."""
    calls: list[str] = []
    real = decoding.decode_image

    def spy(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode_image", spy)
    return calls


def read(root: Path, cache_dir: Path | None, **kwargs) -> FolderData:
    kwargs = {"channels": 3, "image_size": 16, "val_split": 0.25, "test_split": 0.25, **kwargs}
    return FolderData(root=str(root), cache_dir=str(cache_dir) if cache_dir else None, **kwargs).setup()


def snapshot(data: FolderData) -> dict:
    return {name: (s.images.clone(), s.labels.clone(), list(s.files)) for name, s in data.splits.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) and a[k][2] == b[k][2] for k in a)


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.pt"))


@pytest.fixture
def dataset(make_folder) -> Path:
    return make_folder(per_class=4, size=16)  # 12 images


def test_second_read_comes_from_the_cache(dataset, cache_dir, decode_calls):
    first = snapshot(read(dataset, cache_dir))
    assert len(decode_calls) == 12
    assert len(cache_files(cache_dir)) == 1
    decode_calls.clear()
    second = snapshot(read(dataset, cache_dir))
    assert decode_calls == []
    assert same(first, second)


def test_without_cache_dir_nothing_is_cached(dataset, cache_dir, decode_calls):
    read(dataset, None)
    read(dataset, None)
    assert len(decode_calls) == 24
    assert not cache_dir.exists()


def test_touching_a_file_checks_its_content_and_keeps_its_pixels(dataset, cache_dir, decode_calls, monkeypatch, caplog):
    """More cases, through the command line too: tests/test_cache_freshness.py."""
    monkeypatch.setattr(freshness, "MIN_AGE_NS", 0)  # the files were just written: record their signatures
    first = snapshot(read(dataset, cache_dir))
    path = dataset / "middle" / "img_001.png"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    decode_calls.clear()
    with caplog.at_level(logging.INFO, logger="src.data"):
        assert same(snapshot(read(dataset, cache_dir)), first)
    assert decode_calls == []  # hashed, the same content: not decoded again
    assert "Checked 1 of 12 files" in caplog.text and "0 changed, 1 the same" in caplog.text


def test_modifying_a_file_re_decodes_and_serves_the_new_pixels(dataset, cache_dir, decode_calls):
    read(dataset, cache_dir)
    path = dataset / "top" / "img_002.png"
    st = path.stat()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime: the size changed
    decode_calls.clear()
    data = read(dataset, cache_dir)
    assert str(path) in decode_calls
    split = next(s for s in data.splits.values() if str(path) in s.files)
    image = split.images[split.files.index(str(path))]
    assert (image.permute(1, 2, 0) == torch.tensor([1, 2, 3], dtype=torch.uint8)).all()


def test_adding_and_removing_files_re_decodes(dataset, cache_dir, decode_calls):
    read(dataset, cache_dir)
    added = dataset / "bottom" / "new.png"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(added)
    decode_calls.clear()
    data = read(dataset, cache_dir)
    assert decode_calls and str(added) in {f for s in data.splits.values() for f in s.files}
    assert sum(len(s) for s in data.splits.values()) == 13

    added.unlink()
    (dataset / "top" / "img_000.png").unlink()
    decode_calls.clear()
    data = read(dataset, cache_dir)
    assert len(decode_calls) == 11
    assert sum(len(s) for s in data.splits.values()) == 11


def test_other_decode_settings_use_another_entry(dataset, cache_dir, decode_calls):
    read(dataset, cache_dir)
    decode_calls.clear()
    data = read(dataset, cache_dir, image_size=20, channels=1)
    assert len(decode_calls) == 12
    assert data.splits["train"].images.shape[1:] == (1, 20, 20)
    assert len(cache_files(cache_dir)) == 2


@pytest.mark.parametrize("damage", ["overwrite_middle", "truncate", "garbage", "tampered_pixels",
                                    "tampered_skipped_list", "forged_digest"])
def test_damaged_cache_file_is_rebuilt(dataset, cache_dir, decode_calls, damage, caplog):
    first = snapshot(read(dataset, cache_dir))
    (path,) = cache_files(cache_dir)
    raw = bytearray(path.read_bytes())
    if damage == "overwrite_middle":
        mid = len(raw) // 2
        raw[mid:mid + 64] = os.urandom(64)
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 3]))
    elif damage == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif damage == "tampered_pixels":  # a loadable file whose pixels no longer match its digest
        entry = torch.load(path, weights_only=True)
        entry["data"]["images"][0] ^= 0xFF
        torch.save(entry, path)
    elif damage == "tampered_skipped_list":  # every image marked unreadable: all would be dropped
        entry = torch.load(path, weights_only=True)
        entry["data"]["bad"] = [[i, "forged"] for i in range(12)]
        torch.save(entry, path)
    else:  # tampered, with a digest recomputed the way one could without this user's secret
        entry = torch.load(path, weights_only=True)
        entry["data"]["images"][0] ^= 0xFF
        entry["digest"] = hashlib.sha256(entry["data"]["images"].numpy().tobytes()).hexdigest()
        torch.save(entry, path)
    decode_calls.clear()
    with caplog.at_level(logging.WARNING, logger="src.data.cache"):
        rebuilt = snapshot(read(dataset, cache_dir))
    assert "decoding again" in caplog.text
    assert len(decode_calls) == 12  # decoded again rather than crashing or serving damaged pixels
    assert same(rebuilt, first)
    decode_calls.clear()
    assert same(snapshot(read(dataset, cache_dir)), first)  # and the rebuilt entry is served next time
    assert decode_calls == []


def test_unreadable_images_are_read_again_not_served_from_the_cache(dataset, cache_dir, decode_calls):
    bad = dataset / "top" / "x.jpg"
    bad.write_text("not a jpeg")
    data = read(dataset, cache_dir, on_bad_image="skip")
    assert sum(len(s) for s in data.splits.values()) == 12
    decode_calls.clear()
    with pytest.raises(BadImageError, match=re.escape(str(bad))):
        read(dataset, cache_dir)  # still refused without on_bad_image=skip
    assert decode_calls == [str(bad)]  # the others come from the cache; the failure is tried again


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_a_read_failure_fixed_afterwards_is_not_remembered(dataset, cache_dir, decode_calls):
    locked = dataset / "top" / "img_000.png"
    locked.chmod(0)  # permission denied: size and mtime, hence the cache key, stay the same when fixed
    with pytest.raises(BadImageError, match=re.escape(str(locked))):
        read(dataset, cache_dir)
    assert sum(len(s) for s in read(dataset, cache_dir, on_bad_image="skip").splits.values()) == 11
    locked.chmod(0o644)
    decode_calls.clear()
    data = read(dataset, cache_dir)
    assert sum(len(s) for s in data.splits.values()) == 12 and decode_calls == [str(locked)]
    decode_calls.clear()
    assert sum(len(s) for s in read(dataset, cache_dir).splits.values()) == 12 and decode_calls == []


def test_a_read_failure_fixed_afterwards_is_not_remembered_as_root(dataset, cache_dir, decode_calls, monkeypatch):
    """The same as above where permissions cannot fail a read (root): the decoder fails for one file."""
    locked = str(dataset / "top" / "img_000.png")
    real = decoding.decode_image

    def denied(path, *args):
        if path == locked:
            raise BadImageError(f"cannot read image {path}: [Errno 13] Permission denied")
        return real(path, *args)

    monkeypatch.setattr(decoding, "decode_image", denied)
    assert sum(len(s) for s in read(dataset, cache_dir, on_bad_image="skip").splits.values()) == 11
    monkeypatch.setattr(decoding, "decode_image", real)
    assert sum(len(s) for s in read(dataset, cache_dir, on_bad_image="skip").splits.values()) == 12


def test_a_cache_written_under_another_secret_is_not_trusted(dataset, cache_dir, tmp_path, monkeypatch, caplog):
    """A cache entry made by another user (or copied from another machine) is decoded again, even when its
    content is self-consistent: only this user's runner can make an entry that passes the check."""
    first = snapshot(read(dataset, cache_dir))
    monkeypatch.setenv("FER_RUNNER_CACHE_SECRET", str(tmp_path / "someone_else" / "secret"))
    cache_module._secret.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="src.data.cache"):
            assert same(snapshot(read(dataset, cache_dir)), first)
        assert "fails its integrity check" in caplog.text
    finally:
        monkeypatch.undo()
        cache_module._secret.cache_clear()


def test_a_fifo_at_the_cache_path_does_not_hang(dataset, cache_dir, decode_calls):
    first = snapshot(read(dataset, cache_dir))
    (path,) = cache_files(cache_dir)
    path.unlink()
    os.mkfifo(path)
    decode_calls.clear()
    assert same(snapshot(read(dataset, cache_dir)), first)  # refused at once and decoded again
    assert len(decode_calls) == 12


def test_fer2013_csv_label_tampering_is_detected(tmp_path, cache_dir, caplog):
    csv = write_fer_csv(tmp_path / "fer2013.csv")
    first = read_fer(csv, cache_dir)
    (path,) = cache_files(cache_dir)
    entry = torch.load(path, weights_only=True)
    entry["data"]["labels"] = [0] * len(entry["data"]["labels"])  # every label "angry"
    torch.save(entry, path)
    with caplog.at_level(logging.WARNING, logger="src.data.cache"):
        again = read_fer(csv, cache_dir)
    assert "fails its integrity check" in caplog.text
    for name, split in first.splits.items():
        assert torch.equal(again.splits[name].labels, split.labels)


def test_fer2013_csv_is_parsed_once(tmp_path, cache_dir, monkeypatch):
    calls = []
    real = fer2013_csv._parse_fer2013_csv
    monkeypatch.setattr(fer2013_csv, "_parse_fer2013_csv", lambda path: calls.append(path) or real(path))
    csv = write_fer_csv(tmp_path / "fer2013.csv")
    first = read_fer(csv, cache_dir)
    second = read_fer(csv, cache_dir, image_size=24, channels=3)  # resizing happens after the cache
    assert len(calls) == 1
    assert second.splits["train"].images.shape == (3, 3, 24, 24)
    assert torch.equal(first.splits["train"].labels, second.splits["train"].labels)
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(rows[:-1]) + "\n")  # drop the last row: a changed file is parsed again
    assert len(read_fer(csv, cache_dir).splits["test"]) == 1
    assert len(calls) == 2
    assert np.all(first.splits["val"].images.numpy() == read_fer(csv, cache_dir).splits["val"].images.numpy())


# -- the first decode: parallel, in parts, resumable ---------------------------------------------------------


def _folder(tmp_path: Path) -> Path:
    from tests.helpers import write_dataset

    root = write_dataset(tmp_path / "faces", per_class=40, size=32)
    (root / "top" / "img_000.png").write_bytes(b"not an image")  # one unreadable image, in part 0
    return root


def test_a_decode_in_parts_on_several_processes_equals_one_in_one_go(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    whole = decoding.read_folder(root, 1, 24, None, on_bad_image="skip")  # one part: one process, in memory
    monkeypatch.setattr(cache_module, "RAW_MIN_BYTES", 1024)  # into the raw file, as a large dataset is
    monkeypatch.setattr(decoding, "DECODE_PART", 16)  # 120 images: 8 parts on 2 worker processes
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    # torch's thread pool running in this process, as in a training: a forked worker that used torch would hang
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.ones(4096, 48, 48, 1).permute(0, 3, 1, 2).contiguous()  # at::parallel_for: an OpenMP team
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "data", decoding.read_folder(root, 1, 24, str(tmp_path / "cache"), on_bad_image="skip")), daemon=True)
    worker.start()
    worker.join(timeout=120)
    torch.set_num_threads(threads)
    assert "data" in result, "the parallel decode did not finish in 120 s (a worker hung?)"
    parts = result["data"]
    for name, split in whole.splits.items():
        assert torch.equal(parts.splits[name].images, split.images) and parts.splits[name].files == split.files
    assert not list((tmp_path / "cache").glob("*.parts"))  # the complete entry replaced its parts


def test_an_interrupted_decode_goes_on_from_its_parts_and_ends_the_same(tmp_path, monkeypatch, caplog):
    root = _folder(tmp_path)
    monkeypatch.setattr(decoding, "DECODE_PART", 16)
    monkeypatch.setattr(freshness, "MIN_AGE_NS", 0)  # signatures recorded however soon after writing: entries equal
    monkeypatch.setattr(cache_module, "RAW_MIN_BYTES", 1024)  # decoded into the raw file, as a large dataset is
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # in this process, so that the interruption can be placed
    reference = decoding.read_folder(root, 1, 24, str(tmp_path / "reference"), on_bad_image="skip")
    real = decoding._decode_part
    decoded = []

    def interrupted_after_three_parts(paths, start, channels, size):
        if len(decoded) == 3:
            raise KeyboardInterrupt
        decoded.append(start)
        return real(paths, start, channels, size)

    monkeypatch.setattr(decoding, "_decode_part", interrupted_after_three_parts)
    with pytest.raises(KeyboardInterrupt):
        decoding.read_folder(root, 1, 24, str(tmp_path / "cache"), on_bad_image="skip")
    (parts_dir,) = (tmp_path / "cache").glob("*.parts")
    assert len(list(parts_dir.glob("*.pt"))) == 3
    # the pixels went to the raw file being built; a part's marker holds its checksum, not a copy of them
    (partial,) = (tmp_path / "cache").glob("*.images.raw.partial")
    assert partial.stat().st_size == 120 * 24 * 24
    assert all(marker.stat().st_size < 4096 for marker in parts_dir.glob("*.pt"))
    # a part damaged meanwhile is decoded again, not trusted
    damaged = sorted(parts_dir.glob("*.pt"))[1]
    damaged.write_bytes(damaged.read_bytes()[:-100])
    # and so is a part whose pixels in the raw file changed since its marker was written
    with open(partial, "r+b") as f:
        f.seek(5 * 24 * 24)
        f.write(b"\x07" * 10)
    decoded.clear()
    monkeypatch.setattr(decoding, "_decode_part", lambda *args: decoded.append(args[1]) or real(*args))
    with caplog.at_level(logging.INFO):
        resumed = decoding.read_folder(root, 1, 24, str(tmp_path / "cache"), on_bad_image="skip")
    assert "1 of 8 parts were done" in caplog.text
    assert sorted(decoded) == [0, 16] + list(range(48, 128, 16))  # the two damaged parts, the five never decoded
    for name, split in reference.splits.items():
        assert torch.equal(resumed.splits[name].images, split.images) and resumed.splits[name].files == split.files
    entry, = (tmp_path / "cache").glob("*.pt")
    assert hashlib.sha256(entry.read_bytes()).digest() == hashlib.sha256(
        next((tmp_path / "reference").glob("*.pt")).read_bytes()).digest()
    assert partial.with_suffix("").read_bytes() == next((tmp_path / "reference").glob("*.images.raw")).read_bytes()
    assert not partial.exists() and not parts_dir.exists()


def test_the_decode_worker_uses_no_torch(tmp_path, monkeypatch):
    """The workers are forked from a process whose torch thread pool is running: a worker that called into
    torch (a large .contiguous(), say) would hang. The worker's function must use PIL and numpy only."""
    import src.data.images as images_module

    class NoTorch:
        def __getattr__(self, name):
            pytest.fail(f"torch.{name} used in the decode worker")

    root = _folder(tmp_path)
    paths = sorted(str(p) for p in (root / "middle").iterdir())[:5]
    monkeypatch.setattr(decoding, "torch", NoTorch())
    monkeypatch.setattr(images_module, "torch", NoTorch())
    decoded, bad, record = decoding._decode_part(paths, 10, 1, 24)
    assert decoded.shape == (5, 24, 24, 1) and decoded.dtype == np.uint8 and bad == []
    assert record["digests"].shape == (5, freshness.DIGEST_BYTES) and record["signatures"].shape == (5,)


# -- the pixels memory-mapped from a raw file ------------------------------------------------------------------


def test_the_pixels_are_memory_mapped_and_a_changed_raw_file_is_decoded_again(tmp_path, caplog, monkeypatch):
    from tests.helpers import write_dataset

    monkeypatch.setattr(cache_module, "RAW_MIN_BYTES", 1024)  # the synthetic dataset's pixels are small
    root = write_dataset(tmp_path / "faces", splits={"train": 20, "val": 5})
    first = decoding.read_folder(root, 1, 24, str(tmp_path / "cache"))
    # decoded straight into the raw file, which is then mapped copy-on-write (a change of the file shows in the
    # mapping: keep a copy to compare with)
    first_train = first.splits["train"].images.clone()
    (raw,) = (tmp_path / "cache").glob("*.images.raw")
    assert not list((tmp_path / "cache").glob("*.partial"))
    warm = decoding.read_folder(root, 1, 24, str(tmp_path / "cache"))
    for name, split in first.splits.items():
        assert torch.equal(warm.splits[name].images, split.images)
    # file-backed (copy-on-write): each split folder is a view of the mapping, no copy in private memory
    mapped = [line.split() for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(raw))]
    for split in warm.splits.values():
        address = split.images.data_ptr()
        assert any(int(m[0].split("-")[0], 16) <= address < int(m[0].split("-")[1], 16) for m in mapped)
    data = bytearray(raw.read_bytes())
    data[100] ^= 0xFF  # one pixel changed behind the entry's back
    raw.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = decoding.read_folder(root, 1, 24, str(tmp_path / "cache"))
    assert "is not the one its entry was written with" in caplog.text
    assert torch.equal(again.splits["train"].images, first_train)
    raw.write_bytes(raw.read_bytes()[:-10])  # truncated
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        decoding.read_folder(root, 1, 24, str(tmp_path / "cache"))
    assert "is not the one its entry was written with" in caplog.text


def test_a_dataset_larger_than_memory_decodes_into_the_cache_folder(tmp_path, monkeypatch):
    """Decoded into the raw file, the pixels need disk space, not memory: with a cache folder a dataset over
    the memory budget is decoded (and served memory-mapped); without one it is refused before decoding, as
    is one larger than the cache folder's free space."""
    import src.data.memory as memory_module
    from src.errors import DataError
    from tests.helpers import write_dataset

    root = write_dataset(tmp_path / "faces", splits={"train": 20, "val": 5})
    monkeypatch.setattr(cache_module, "RAW_MIN_BYTES", 1024)
    monkeypatch.setattr(memory_module, "available_host_bytes", lambda: 4096)  # 75 images of 24x24 need 42 KiB
    with pytest.raises(DataError, match="of memory available"):
        decoding.read_folder(root, 1, 24, None)
    data = decoding.read_folder(root, 1, 24, str(tmp_path / "cache"))
    assert len(data.splits["train"]) == 60 and len(data.splits["val"]) == 15
    (raw,) = (tmp_path / "cache").glob("*.images.raw")
    assert raw.stat().st_size == 75 * 24 * 24

    class Full:
        free = 10_000  # bytes: fewer than the 76,800 the pixels need at 32x32

    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: Full())
    with pytest.raises(DataError, match=r"needs 0.0 GiB in the cache folder .* which has 0.0 GiB free"):
        decoding.read_folder(root, 1, 32, str(tmp_path / "cache"))  # another size: another entry to decode


def test_a_checked_raw_file_is_not_read_again_until_it_changes(tmp_path, monkeypatch, caplog):
    """A warm start maps a raw file already checked against its SHA-256 without reading it (its HMAC'd stamp
    of inode, size and times matches); any write, or a replacement, makes the next start read it again."""
    import time

    from tests.helpers import write_dataset

    monkeypatch.setattr(cache_module, "RAW_MIN_BYTES", 1024)
    monkeypatch.setattr(cache_module, "STAMP_MIN_AGE_S", 0.0)
    root = write_dataset(tmp_path / "faces", splits={"train": 20, "val": 5})
    first = decoding.read_folder(root, 1, 24, str(tmp_path / "cache")).splits["train"].images.clone()
    (raw,) = (tmp_path / "cache").glob("*.images.raw")
    hashed = []
    real = hashlib.file_digest

    def file_digest(f, name):
        if os.readlink(f"/proc/self/fd/{f.fileno()}") == str(raw):  # the pixels' raw file, not the record's
            hashed.append(raw)
        return real(f, name)

    monkeypatch.setattr(hashlib, "file_digest", file_digest)

    def load() -> torch.Tensor:
        return decoding.read_folder(root, 1, 24, str(tmp_path / "cache")).splits["train"].images

    time.sleep(0.05)
    assert torch.equal(load(), first) and len(hashed) == 1  # checked, and stamped
    assert raw.with_name(raw.name + ".checked").exists()
    assert torch.equal(load(), first) and len(hashed) == 1  # the stamp matches: not read again
    # replaced by a copy of itself (same bytes, another inode): read again, still good
    copy = raw.with_name("copy")
    copy.write_bytes(raw.read_bytes())
    os.replace(copy, raw)
    time.sleep(0.05)
    assert torch.equal(load(), first) and len(hashed) == 2
    time.sleep(0.05)
    with open(raw, "r+b") as f:  # one pixel changed in place: same inode and size
        f.seek(100)
        f.write(bytes([raw.read_bytes()[100] ^ 0xFF]))
    with caplog.at_level(logging.WARNING):
        assert torch.equal(load(), first) and len(hashed) == 3
    assert "is not the one its entry was written with" in caplog.text
    # a forged stamp (not made with this user's secret) is not trusted
    time.sleep(0.05)
    stamp = raw.with_name(raw.name + ".checked")
    stamp.write_text("0" * 64)
    assert torch.equal(load(), first) and len(hashed) == 4
