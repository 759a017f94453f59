"""The repository itself: what a clean clone (CI's `.ci/run`) gets."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_source_or_config_file_is_ignored_by_git():
    result = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--",
                             "src", "conf", "tests"], cwd=ROOT, capture_output=True, text=True, check=True)
    ignored = [path for path in result.stdout.splitlines() if not path.endswith(".pyc")]
    assert ignored == [], f"git ignores {len(ignored)} project files, e.g. {ignored[:3]}"
