"""After training: evaluate (one code path with training's test evaluation), TTA, ROC AUC, ensembles,
predict, feature views and export."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from sklearn.metrics import roc_auc_score

from src.data.inputs import ModelInput, tta_views
from src.errors import UserError
from src.evaluation.metrics import roc_auc
from src.evaluation.split_evaluation import run_evaluation
from src.inference.image_prediction import predict_images
from src.inference.model_export import export_checkpoint
from src.inference.predictor import Ensemble, Predictor, checkpoint_paths, load_model
from src.models import LeNet
from src.training.experiment import train
from tests.helpers import compose_entry, compose_train, fast_overrides, quote, write_dataset

REPORT_FILES = ("metrics.json", "confusion_matrix.png", "roc.png", "pr.png", "misclassified.png", "per_class.md",
                "predictions.csv")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two tiny trainings (seeds 0 and 1) on a learnable dataset with train/val/test folders."""
    tmp = tmp_path_factory.mktemp("trained")
    root = write_dataset(tmp / "data", splits={"train": 16, "val": 6, "test": 6})
    runs = []
    for seed in (0, 1):
        cfg = compose_train(fast_overrides(root, tmp / "cache", "aug=basic", "trainer.max_epochs=2", f"seed={seed}"))
        train(cfg, tmp / f"run{seed}")
        runs.append(tmp / f"run{seed}")
    return {"root": root, "cache": tmp / "cache", "runs": runs,
            "ckpts": [str(run / "checkpoints" / "best.pt") for run in runs]}


def evaluate(trained, out: Path, *overrides: str) -> dict:
    cfg = compose_entry("eval", [f"paths.cache_dir={quote(trained['cache'])}", "trainer.device=cpu", *overrides])
    return run_evaluation(cfg, out)


def test_evaluate_reproduces_the_training_test_metrics(trained, tmp_path):
    metrics = evaluate(trained, tmp_path, f"ckpt_path={quote(trained['ckpts'][0])}")
    run_metrics = json.loads((trained["runs"][0] / "metrics.json").read_text())
    test_keys = [k for k in run_metrics if k.startswith("test/")]
    assert {"test/roc_auc", "test/macro_auc", "test/per_class", "test/confusion_matrix"} <= set(test_keys)
    assert {k: metrics[k] for k in test_keys} == {k: run_metrics[k] for k in test_keys}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for name in REPORT_FILES:
        assert (tmp_path / name).is_file(), name
        assert (trained["runs"][0] / name).is_file(), name  # training writes the same report


def _dark_pixels(image: np.ndarray) -> np.ndarray:
    """(y, x) of the pixels shaded as a cell whose whole row falls in it (the darkest blue)."""
    return np.argwhere((image == (8, 48, 107)).all(-1))


def test_the_tensorboard_confusion_matrix_shades_each_cell_by_its_share_of_the_row():
    from src.figures import confusion_matrix_image

    left = confusion_matrix_image([[5, 0], [5, 0]], ["a", "b"], "val/confusion_matrix")  # all predicted a
    right = confusion_matrix_image([[0, 5], [0, 5]], ["a", "b"], "val/confusion_matrix")  # all predicted b
    assert left.dtype == np.uint8 and left.ndim == 3 and left.shape[-1] == 3 and left.shape == right.shape
    assert _dark_pixels(left)[:, 1].max() < _dark_pixels(right)[:, 1].min()  # columns: predicted
    top = confusion_matrix_image([[5, 0], [0, 0]], ["a", "b"])  # true a only; b's row is empty, not an error
    bottom = confusion_matrix_image([[0, 0], [5, 0]], ["a", "b"])
    assert _dark_pixels(top)[:, 0].max() < _dark_pixels(bottom)[:, 0].min()  # rows: true
    assert len(_dark_pixels(top)) == len(_dark_pixels(bottom))  # one cell each, the same text in it
    # a hundred classes: cells too small for numbers or names, the image stays screen-sized
    many = confusion_matrix_image(np.eye(100, dtype=int).tolist(), [f"class {i}" for i in range(100)], "t")
    assert max(many.shape[:2]) < 700 and len(_dark_pixels(many)) == 100 * 6 * 6


def test_report_figures_are_real_images(trained, tmp_path):
    evaluate(trained, tmp_path, f"ckpt_path={quote(trained['ckpts'][0])}", "embed=true")
    for name in ("confusion_matrix.png", "roc.png", "pr.png", "misclassified.png", "pca.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
        with Image.open(tmp_path / name) as image:
            assert image.width >= 300 and image.height >= 200, name
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 5, f"{name} is blank"
    assert (tmp_path / "projector_config.pbtxt").is_file()  # TensorBoard's embedding projector
    assert list(tmp_path.rglob("sprite.png")) and list(tmp_path.rglob("metadata.tsv"))
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("file,true,predicted,confidence,p_bottom") and len(rows) == 1 + 18


def test_per_class_table_and_split_choice(trained, tmp_path):
    metrics = evaluate(trained, tmp_path, f"ckpt_path={quote(trained['ckpts'][0])}", "data.split=val", "tta=flip")
    assert metrics["split"] == "val" and metrics["tta"] == "flip"
    assert sum(map(sum, metrics["val/confusion_matrix"])) == 18
    table = (tmp_path / "per_class.md").read_text()
    assert "| class | precision | recall | F1 | support | ROC AUC |" in table
    assert all(f"| {name} |" in table for name in ("bottom", "middle", "top"))


def test_ensemble_of_one_is_the_checkpoint(trained, tmp_path):
    single = evaluate(trained, tmp_path / "single", f"ckpt_path={quote(trained['ckpts'][0])}")
    ensemble = evaluate(trained, tmp_path / "ensemble", f"ckpt_path=[{quote(trained['ckpts'][0])}]")
    assert {k: v for k, v in ensemble.items() if k.startswith("test/")} == \
        {k: v for k, v in single.items() if k.startswith("test/")}


def test_ensemble_of_two_averages_probabilities_and_lists_members(trained, tmp_path):
    metrics = evaluate(trained, tmp_path, "ckpt_path=[" + ",".join(quote(c) for c in trained["ckpts"]) + "]")
    assert list(metrics["members"]) == trained["ckpts"]
    table = (tmp_path / "ensemble.md").read_text()
    assert "**ensemble**" in table and all(c in table for c in trained["ckpts"])
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    members = [Predictor(load_model(c)[0], normalization(c)) for c in trained["ckpts"]]
    expected = torch.stack([m.log_probs(images).exp() for m in members]).mean(0)
    assert torch.allclose(Ensemble(members).log_probs(images).exp(), expected, atol=1e-6)


def test_run_and_sweep_directories_as_ckpt_path(trained, tmp_path):
    """A run directory means its checkpoints/best.pt; a folder of runs (a sweep) all of them: an ensemble."""
    assert checkpoint_paths(str(trained["runs"][0])) == [trained["ckpts"][0]]
    assert checkpoint_paths(str(trained["runs"][0].parent)) == sorted(trained["ckpts"])
    first, second = trained["ckpts"]
    assert checkpoint_paths([second, str(trained["runs"][0])]) == [second, first]
    with pytest.raises(UserError, match="without any checkpoints/best.pt"):
        checkpoint_paths(str(tmp_path))
    (tmp_path / "folder").mkdir()
    (tmp_path / "list").mkdir()
    folder = evaluate(trained, tmp_path / "folder", f"ckpt_path={quote(trained['runs'][0].parent)}")
    as_list = "ckpt_path=[" + ",".join(quote(c) for c in sorted(trained["ckpts"])) + "]"
    listed = evaluate(trained, tmp_path / "list", as_list)
    for key in ("test/acc", "test/confusion_matrix"):
        assert folder[key] == listed[key], key


def normalization(ckpt: str) -> ModelInput:
    data = torch.load(ckpt, weights_only=True)["meta"]["data"]
    return ModelInput(data["mean"], data["std"])


def test_class_mismatch_is_a_clear_error(trained, tmp_path):
    other = write_dataset(tmp_path / "other", splits={"train": 4, "test": 2}, classes=("a", "b", "c"))
    with pytest.raises(UserError, match=r"classes \['a', 'b', 'c'\] are not the checkpoint's"):
        evaluate(trained, tmp_path / "out", f"ckpt_path={quote(trained['ckpts'][0])}", f"data.root={quote(other)}")


def test_missing_split_is_a_clear_error(trained, tmp_path):
    with pytest.raises(UserError, match="data.split=nope"):
        evaluate(trained, tmp_path, f"ckpt_path={quote(trained['ckpts'][0])}", "data.split=nope")


# -- test-time augmentation ----------------------------------------------------------------------------------


def test_tta_views():
    x = torch.arange(2 * 1 * 48 * 48, dtype=torch.float).view(2, 1, 48, 48)
    assert [v.shape for v in tta_views(x, "none")] == [(2, 1, 48, 48)]
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    crops = tta_views(x, "tencrop", 44)
    assert len(crops) == 10 and all(v.shape == (2, 1, 44, 44) for v in crops)
    assert torch.equal(crops[0], x[..., :44, :44]) and torch.equal(crops[3], x[..., 4:, 4:])  # corners
    assert torch.equal(crops[4], x[..., 2:46, 2:46])  # centre
    assert all(torch.equal(crops[i + 5], crops[i].flip(-1)) for i in range(5))  # mirrored
    assert tta_views(x, "tencrop")[0].shape[-1] == 44  # default: 11/12 of 48


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_predictor_output_shape_with_tta(tta):
    predictor = Predictor(LeNet(4, 1), ModelInput([0.5], [0.25]), tta=tta, batch_size=3)
    log_probs = predictor.log_probs(torch.randint(0, 256, (7, 1, 48, 48), dtype=torch.uint8))
    assert log_probs.shape == (7, 4)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(7), atol=1e-5)


def test_flip_tta_averages_the_logits_of_image_and_mirror():
    model = LeNet(3, 1).eval()
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = torch.log_softmax((model(x) + model(x.flip(-1))) / 2, dim=1)
    got = Predictor(model, ModelInput([0.5], [0.25]), tta="flip").log_probs(images)
    assert torch.allclose(got, expected, atol=1e-5)


# -- ROC AUC --------------------------------------------------------------------------------------------------


def test_roc_auc_matches_scikit_learn():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    probs = np.array([[.7, .2, .1], [.4, .4, .2], [.3, .6, .1], [.5, .3, .2],
                      [.1, .2, .7], [.2, .5, .3], [.3, .3, .4], [.6, .1, .3]])
    result = roc_auc(labels, probs, ["a", "b", "c"])
    for c, name in enumerate("abc"):
        assert result["roc_auc"][name] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    assert result["macro_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    # class 0 by hand: positives {.7, .4, .6}, negatives {.3, .5, .1, .2, .3}: 14 of 15 pairs ranked right
    assert result["roc_auc"]["a"] == pytest.approx(14 / 15)


def test_roc_auc_of_an_absent_class_is_none():
    result = roc_auc(np.array([0, 1, 0, 1]), np.full((4, 3), 1 / 3), ["a", "b", "c"])
    assert result["roc_auc"]["c"] is None and result["macro_auc"] == pytest.approx(0.5)


# -- predict --------------------------------------------------------------------------------------------------


def test_predict_skips_the_corrupt_file_and_predicts_the_rest(trained, tmp_path, caplog, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, mode in enumerate(["RGB", "L", "RGBA"]):  # any mode and size is preprocessed as in training
        Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)).convert(mode).save(
            folder / f"img{i}.png")
    (folder / "corrupt.jpg").write_text("not an image")
    output = tmp_path / "out" / "predictions.json"
    cfg = compose_entry("predict", [f"ckpt_path={quote(trained['ckpts'][0])}", f"images=[{quote(folder)}]",
                                    "faces=false", "top_k=2", f"output={quote(output)}", "trainer.device=cpu"])
    with caplog.at_level(logging.WARNING):
        rows = predict_images(cfg)
    assert [Path(r["file"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert "corrupt.jpg" in caplog.text
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in rows)
    printed = capsys.readouterr().out
    assert all(f"img{i}.png:" in printed for i in range(3))
    assert json.loads(output.read_text()) == rows


def test_predict_csv_and_globs(trained, tmp_path):
    root = trained["root"]
    output = tmp_path / "p.csv"
    cfg = compose_entry("predict", [f"ckpt_path={quote(trained['ckpts'][0])}",
                                    f"images=[{quote(str(root / 'test' / 'top' / '*.png'))}]", "faces=false",
                                    f"output={quote(output)}", "trainer.device=cpu"])
    rows = predict_images(cfg)
    assert len(rows) == 6
    lines = output.read_text().splitlines()
    assert lines[0] == "file,predicted,confidence,p_bottom,p_middle,p_top" and len(lines) == 7


def test_predict_with_nothing_readable_is_an_error(trained, tmp_path):
    cfg = compose_entry("predict", [f"ckpt_path={quote(trained['ckpts'][0])}",
                                    f"images=[{quote(tmp_path / 'none.png')}]", "faces=false", "trainer.device=cpu"])
    with pytest.raises(UserError, match="no readable images"):
        predict_images(cfg)


# -- export ---------------------------------------------------------------------------------------------------


def exported_inputs(ckpt: str) -> torch.Tensor:
    return torch.randn(3, 3, 32, 32)  # the preprocessed input: normalized floats at the checkpoint's size


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_torchscript_gives_the_same_logits(trained, tmp_path):
    ckpt = trained["ckpts"][0]
    path = export_checkpoint(ckpt, "torchscript", str(tmp_path / "model.torchscript.pt"))
    scripted = torch.jit.load(str(path))
    model, _ = load_model(ckpt)
    x = exported_inputs(ckpt)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["classes"] == ["bottom", "middle", "top"] and sidecar["image_size"] == 32


def test_export_onnx_gives_the_same_logits(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = trained["ckpts"][0]
    path = export_checkpoint(ckpt, "onnx", str(tmp_path / "model.onnx"))
    model, _ = load_model(ckpt)
    x = exported_inputs(ckpt)
    session = ort.InferenceSession(str(path))
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.allclose(logits, model(x).numpy(), atol=1e-4)
    assert not list(tmp_path.glob("*.data"))  # one self-contained file


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_takes_a_run_directory_checks_itself_and_keeps_quiet(trained, tmp_path, fmt, caplog):
    """ckpt_path takes the forms evaluate and predict take (a run directory: its best.pt); the exported
    model is checked against PyTorch (the difference is logged and in the sidecar); the ONNX optimizer's
    per-pass messages stay out of the log."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    with caplog.at_level(logging.INFO):
        path = export_checkpoint(str(trained["runs"][0]), fmt, str(tmp_path / f"model.{fmt}"))
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["checkpoint"] == trained["ckpts"][0] and 0 <= sidecar["max_abs_difference_from_pytorch"] < 1e-3
    assert "max abs difference from PyTorch on a batch of 8" in caplog.text
    assert "No unused functions" not in caplog.text and "PassManager" not in caplog.text
    with pytest.raises(UserError, match="holds 2 checkpoints; export one model at a time"):
        export_checkpoint(str(trained["runs"][0].parent), fmt)


# -- training crops (aug.crop.size): evaluation sees what training saw -----------------------------------------


@pytest.fixture(scope="module")
def cropped(tmp_path_factory) -> dict:
    """A tiny training on random 28x28 crops of 32x32 images, tested with ten-crop TTA."""
    tmp = tmp_path_factory.mktemp("cropped")
    root = write_dataset(tmp / "data", splits={"train": 16, "val": 6, "test": 6})
    cfg = compose_train(fast_overrides(root, tmp / "cache", "aug=basic", "aug.crop.padding=0", "aug.crop.size=28",
                                       "tta=tencrop", "trainer.max_epochs=2"))
    train(cfg, tmp / "run")
    return {"cache": tmp / "cache", "run": tmp / "run", "ckpt": str(tmp / "run" / "checkpoints" / "best.pt")}


def test_training_crop_is_recorded_and_evaluation_reproduces_val_and_test(cropped, tmp_path):
    assert torch.load(cropped["ckpt"], weights_only=True)["meta"]["input_size"] == 28
    run = json.loads((cropped["run"] / "metrics.json").read_text())
    cfg = {"cache": cropped["cache"]}  # what evaluate() needs of a fixture
    test = evaluate(cfg, tmp_path / "test", f"ckpt_path={quote(cropped['ckpt'])}", "tta=tencrop")
    assert test["test/acc"] == run["test/acc"] and test["test/confusion_matrix"] == run["test/confusion_matrix"]
    val = evaluate(cfg, tmp_path / "val", f"ckpt_path={quote(cropped['ckpt'])}", "data.split=val")
    assert val["val/acc"] == run["val/acc"] and val["val/loss"] == pytest.approx(run["val/loss"], rel=1e-5)


def test_predictor_centre_crops_to_the_training_size():
    """With input_size the model sees the centre crop (none, flip) or ten crops of that size (tencrop)."""
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.mean(dim=(2, 3)).repeat(1, 3)

    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    Predictor(Spy(), ModelInput([0.0], [1.0], crop=28)).log_probs(images)
    assert len(seen) == 1 and torch.equal(seen[0], images[..., 2:30, 2:30].float() / 255)
    seen.clear()
    Predictor(Spy(), ModelInput([0.0], [1.0], crop=28), tta="tencrop").log_probs(images)
    assert len(seen) == 10 and all(x.shape[-2:] == (28, 28) for x in seen)
    assert torch.equal(seen[0], images[..., :28, :28].float() / 255)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_of_a_cropped_model_takes_the_crop(cropped, tmp_path):
    path = export_checkpoint(cropped["ckpt"], "torchscript", str(tmp_path / "model.torchscript.pt"))
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["image_size"] == 32 and sidecar["input_size"] == 28
    model, _ = load_model(cropped["ckpt"])
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(x), model(x), atol=1e-5)
