"""data=cifar100: the python-pickle release read as it is, fine and coarse labels, and the download path
(torchvision's downloader, here from a local file:// archive)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data import Cifar100Data
from src.errors import ConfigError, DataError
from tests.helpers import compose_train, quote

FINE = ["apple", "bee", "cloud", "dolphin"]
COARSE = ["fruit", "insects", "outdoor"]
FINE_TO_COARSE = [0, 1, 2, 2]


def write_release(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    """root/cifar-100-python/{train,test,meta} as the official release pickles them (bytes keys); image i
    of a split is filled with the value i so that order and layout can be checked."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [i % len(FINE) for i in range(n)]
        data = np.repeat(np.arange(n, dtype=np.uint8)[:, None], 3072, axis=1)
        data[:, 1024:2048] = 200  # the green plane: rows are R, G, B planes of 32x32
        batch = {b"data": data, b"fine_labels": fine, b"coarse_labels": [FINE_TO_COARSE[f] for f in fine],
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": FINE, b"coarse_label_names": COARSE}))
    return folder


def make(root: Path, **kwargs) -> Cifar100Data:
    return Cifar100Data(root=str(root), channels=3, image_size=32, cache_dir=None, **kwargs).setup()


@pytest.mark.parametrize("label_type, classes", [("fine", FINE), ("coarse", COARSE)])
def test_reads_the_release_with_fine_or_coarse_labels(tmp_path, label_type, classes):
    write_release(tmp_path)
    data = make(tmp_path, label_type=label_type, val_split=0.2, download=False)
    assert data.classes == classes
    assert {name: len(s) for name, s in data.splits.items()} == {"train": 32, "val": 8, "test": 12}
    test = data.splits["test"]
    assert test.images.shape == (12, 3, 32, 32) and test.images.dtype == torch.uint8
    assert torch.equal(test.images[5, 0], torch.full((32, 32), 5, dtype=torch.uint8))  # red plane = index
    assert (test.images[:, 1] == 200).all()  # green plane
    fine = torch.arange(12) % len(FINE)
    expected = fine if label_type == "fine" else torch.tensor(FINE_TO_COARSE)[fine]
    assert torch.equal(test.labels, expected)


def test_missing_release_without_download_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        make(tmp_path, download=False)


def test_bad_label_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.label_type=medium"):
        Cifar100Data(root=str(tmp_path), label_type="medium", channels=3, image_size=32)


@pytest.fixture
def served(tmp_path):
    """A local HTTP server (127.0.0.1) serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_download_goes_through_torchvision_and_checks_the_archive(tmp_path, served, monkeypatch):
    """The real download code path (torchvision's downloader over HTTP), pointed at a local server: the
    archive is fetched, MD5-checked, unpacked and read."""
    from torchvision.datasets import CIFAR100

    www, base_url = served
    source = tmp_path / "source"
    write_release(source)
    archive = www / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    monkeypatch.setattr(CIFAR100, "url", f"{base_url}/cifar-100-python.tar.gz")
    monkeypatch.setattr(CIFAR100, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    data = make(tmp_path / "root", label_type="coarse")
    assert data.classes == COARSE and len(data.splits["test"]) == 12

    monkeypatch.setattr(CIFAR100, "tgz_md5", "0" * 32)  # a corrupted download is refused
    with pytest.raises(DataError, match="could not be downloaded"):
        make(tmp_path / "other")


def test_data_cifar100_composes(tmp_path):
    write_release(tmp_path / "data")
    cfg = compose_train(["data=cifar100", f"data.root={quote(tmp_path / 'data')}", "data.label_type=coarse",
                         "data.download=false", f"paths.cache_dir={quote(tmp_path / 'cache')}"])
    assert cfg.data.label_type == "coarse" and cfg.data.image_size == 32 and cfg.data.channels == 3
