"""Shared fixtures: in-process Hydra composition, synthetic image datasets, fast training configs.

Everything is offline and tiny: datasets are a few dozen 32x32 PNGs written into tmp_path, the model
is LeNet, and trainings run one to a few epochs on the CPU. Helpers live in tests/helpers.py.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers import compose_train, fast_overrides, write_dataset

# The decode cache's per-user secret (src/data/cache.py) goes to a temporary folder, not the user's
# ~/.config; subprocesses of the tests inherit it.
os.environ.setdefault("FER_RUNNER_CACHE_SECRET", os.path.join(tempfile.mkdtemp(prefix="fer-runner-tests-"),
                                                               "cache-secret"))

# The models and batches here are tiny: one intra-op thread is as fast as several on an idle machine,
# and on a busy 2-core one (CI, a training in the background) two threads make every op wait for the
# other core and the suite several times slower. Subprocess tests pass OMP_NUM_THREADS=1 likewise.
torch.set_num_threads(1)


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """compose_cfg([overrides]) -> conf/train.yaml composed in-process with Hydra's compose API."""
    return compose_train


@pytest.fixture
def make_folder(tmp_path) -> Callable[..., Path]:
    """make_folder(per_class=12 | splits={"train": 10, ...}, ...) writes a synthetic dataset under
    tmp_path and returns its root (see helpers.write_dataset)."""
    counter = itertools.count()

    def make(*args, root: Path | None = None, **kwargs) -> Path:
        return write_dataset(root or tmp_path / f"dataset{next(counter)}", *args, **kwargs)

    return make


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def train_cfg(cache_dir) -> Callable[..., DictConfig]:
    """train_cfg(root, *overrides): a fast CPU training config for a folder dataset (helpers.fast_overrides)."""

    def make(root: Path, *overrides: str) -> DictConfig:
        return compose_train(fast_overrides(root, cache_dir, *overrides))

    return make
