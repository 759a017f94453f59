"""timm's backbones (model=timm, conf/model/timm_*.yaml): names, pretrained weights from a local file or the
hub cache (offline: one sentence), training on real data."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("timm")

from src.errors import ConfigError  # noqa: E402
from src.models.timm_models import TimmNet  # noqa: E402
from src.training.experiment import train  # noqa: E402
from tests.helpers import ROOT, compose_train, quote  # noqa: E402


def test_an_unknown_name_is_a_config_error_with_suggestions():
    with pytest.raises(ConfigError, match="convnext_atto"):
        TimmNet(7, 1, name="convnext_ato")


def test_pretrained_weights_from_a_local_file_fit_gray_input_and_a_new_head(tmp_path):
    """An ImageNet-shaped checkpoint (3 channels, 1000 classes): timm sums the first conv's RGB kernels for
    gray input and leaves the new 7-class head at its initialization; everything else is the file's."""
    import timm

    torch.manual_seed(0)
    source = timm.create_model("convnext_atto", num_classes=1000, in_chans=3)
    torch.save(source.state_dict(), tmp_path / "convnext_atto.pth")
    model = TimmNet(7, 1, name="convnext_atto", pretrained_file=str(tmp_path / "convnext_atto.pth"))
    mine, theirs = model.net.state_dict(), source.state_dict()
    assert torch.allclose(mine["stem.0.weight"], theirs["stem.0.weight"].sum(1, keepdim=True))
    assert torch.equal(mine["stages.3.blocks.1.mlp.fc2.weight"], theirs["stages.3.blocks.1.mlp.fc2.weight"])
    assert mine["head.fc.weight"].shape == (7, 320)
    assert model(torch.zeros(2, 1, 48, 48)).shape == (2, 7)


def test_pretrained_weights_offline_and_not_cached_is_one_sentence(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "src.train", "data=digits", "model=timm", "model.pretrained=true",
                             "logger=none", f"hydra.run.dir={quote(tmp_path / 'run')}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "not in the Hugging Face cache" in output and "model.pretrained_file" in output
    assert "Traceback" not in output and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["timm", "timm_convnext_atto", "timm_mobilenetv3_small", "timm_regnetx_002",
                                   "timm_vit_tiny"])
def test_each_timm_config_trains_an_epoch_on_digits(tmp_path, model):
    cfg = compose_train([f"model={model}", "data=digits", "trainer.max_epochs=1", "logger=none",
                         "trainer.device=cpu", "trainer.precision=fp32", "trainer.progress_bar=false",
                         f"paths.cache_dir={quote(tmp_path / 'cache')}"])
    metrics = train(cfg, tmp_path / "run")
    assert metrics["epochs"] == 1 and 0 <= metrics["test/acc"] <= 1 and metrics["model/params"] > 1e6
