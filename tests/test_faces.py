"""Faces in the wild: detection, cropping as in training, group photos, videos, the demo page, saliency.

The faces are real: Grace Hopper's portrait, which matplotlib ships (public domain), cut out and
converted like a FER2013 face (loose square crop, gray, 48x48): "dataset faces" that the tests paste onto
larger backgrounds at known positions, as a group photo or as a video with moving faces.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from src.data.images import decode_image
from src.errors import UserError
from src.inference.detector_comparison import backdrop, match, paste
from src.inference.faces import Face, annotate, crop_face, looks_precropped, make_detector
from src.inference.image_prediction import FaceClassifier, predict_images
from src.train import train
from tests.helpers import compose_train, fast_overrides, quote, write_dataset
from tests.test_evaluate import compose_entry

pytest.importorskip("facenet_pytorch")
pytest.importorskip("cv2")

# The face in matplotlib's grace_hopper.jpg (512x600), as MTCNN finds it: x0, y0, x1, y1.
PORTRAIT_FACE = (174, 120, 356, 340)


@pytest.fixture(scope="module")
def dataset_face() -> Image.Image:
    """A FER2013-like face: a loose square around the portrait's face, gray, 48x48."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    portrait = Image.open(path).convert("RGB")
    return crop_face(portrait, Face(PORTRAIT_FACE, 1.0), 0.2).convert("L").resize((48, 48), Image.Resampling.BILINEAR)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    return backdrop(width, height, np.random.default_rng(seed))


# Four faces of different sizes, one mirrored, on a 720x420 photo: (x, y, side).
GROUP = [(30, 40, 150), (230, 180, 120), (420, 60, 170), (600, 250, 100)]


@pytest.fixture(scope="module")
def group_photo(tmp_path_factory, dataset_face) -> Path:
    canvas = background(720, 420)
    for i, square in enumerate(GROUP):
        paste(canvas, dataset_face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i == 2 else dataset_face, square)
    path = tmp_path_factory.mktemp("photos") / "group.jpg"
    Image.fromarray(canvas).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny LeNet checkpoint (3 classes, 32x32 gray): what it predicts is beside the point here."""
    tmp = tmp_path_factory.mktemp("faces_ckpt")
    root = write_dataset(tmp / "data", splits={"train": 8, "val": 4, "test": 4})
    train(compose_train(fast_overrides(root, tmp / "cache", "trainer.max_epochs=1")), tmp / "run")
    return str(tmp / "run" / "checkpoints" / "best.pt")


def predict(checkpoint: str, out_dir: Path, *overrides: str) -> list[dict]:
    return predict_images(compose_entry("predict", [f"ckpt_path={quote(checkpoint)}", f"out_dir={quote(out_dir)}",
                                                    "trainer.device=cpu", *overrides]))


def assert_each_face_found(boxes: list, squares: list) -> None:
    """One box per pasted face, centred inside its square and overlapping it (IoU >= 0.3: the detector's
    box is the face, the square also holds the dataset's margin); no box elsewhere."""
    assert match(boxes, squares) == (len(squares), 0), (boxes, squares)


# -- detection ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mtcnn", "haar"])
def test_both_detectors_find_each_face_of_a_group_photo(name, group_photo):
    rgb = np.asarray(Image.open(group_photo).convert("RGB"))
    assert_each_face_found([f.box for f in make_detector(name).detect(rgb)], GROUP)


FER2013_VAL = Path(os.environ.get("DATA_DIR", "data")) / "fer2013" / "val"


@pytest.mark.skipif(not FER2013_VAL.is_dir(), reason="FER2013 is not in $DATA_DIR/fer2013")
def test_group_photos_of_fer2013_faces():
    """Real dataset faces (FER2013's val split, 48x48 gray, tightly framed, some turned or covered) on 12
    group photos: MTCNN finds 41 of their 45 faces (0.91; 0.88 on 200 photos of the test split, docs/faces-and-demo.md)
    and nothing else."""
    from src.data.folders import find_images
    from src.inference.detector_comparison import compare

    (result,) = compare(find_images(FER2013_VAL), photos=12, seed=0, detectors=["mtcnn"])
    assert result["faces"] == 45 and result["recall"] >= 0.85 and result["false_per_photo"] <= 0.1


@pytest.mark.parametrize("name", ["mtcnn", "haar"])
def test_no_face_in_a_plain_background(name):
    assert make_detector(name).detect(background(400, 300, seed=3)) == []


def test_crop_face_is_a_square_with_margin_and_repeats_the_border():
    image = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(80, 100).astype(np.uint8))
    inner = crop_face(image, Face((40, 20, 60, 50), 1.0), 0.25)  # 20x30 box -> side 30 * 1.5 = 45
    assert inner.size == (45, 45)
    assert np.array_equal(np.asarray(inner), np.asarray(image.crop((28, 12, 73, 57))))
    corner = crop_face(image, Face((0, 0, 20, 20), 1.0), 0.5)  # side 40, 10 px outside on the left and top
    pixels = np.asarray(corner)
    assert corner.size == (40, 40)
    assert np.array_equal(pixels[10:, 10:], np.asarray(image.crop((0, 0, 30, 30))))
    assert np.array_equal(pixels[:10, 10:], np.repeat(pixels[10:11, 10:], 10, axis=0))  # the top row repeated


def test_each_face_is_converted_as_a_training_image(checkpoint, group_photo, tmp_path):
    cfg = compose_entry("predict", [f"ckpt_path={quote(checkpoint)}", "trainer.device=cpu"])
    classifier = FaceClassifier(cfg)
    image = Image.open(group_photo)
    faces, inputs, probs = classifier.classify(image)
    assert len(faces) == len(GROUP) and probs.shape == (len(GROUP), 3)
    assert [f.side for f in faces] == sorted((f.side for f in faces), reverse=True)  # largest first
    for face, array in zip(faces, inputs):  # the crop saved as a file decodes to the same input
        crop_file = tmp_path / "crop.png"
        crop_face(image, face, cfg.detector.margin).save(crop_file)
        assert array.shape == (32, 32, classifier.channels)
        assert np.array_equal(array, decode_image(str(crop_file), classifier.channels, 32))
    whole = classifier.whole(inputs)
    assert torch.allclose(whole, probs)


def test_missing_detector_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(UserError, match=r"\.\[faces\].*faces=false"):
        make_detector("mtcnn")


# -- src.predict on photos ------------------------------------------------------------------------------------


def test_predict_finds_each_face_of_a_group_photo(checkpoint, group_photo, tmp_path, capsys):
    rows = predict(checkpoint, tmp_path, f"images=[{quote(group_photo)}]", "top_k=2")
    assert [r["face"] for r in rows] == [0, 1, 2, 3]
    assert_each_face_found([r["box"] for r in rows], GROUP)
    assert all(len(r["top_k"]) == 2 and abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    annotated = Image.open(tmp_path / "group_faces.jpg")
    assert annotated.size == (720, 420)
    assert not np.array_equal(np.asarray(annotated), np.asarray(Image.open(group_photo)))  # boxes drawn
    with open(tmp_path / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["face"]) for r in table] == [0, 1, 2, 3]
    assert [[int(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in table] == [r["box"] for r in rows]
    assert json.loads((tmp_path / "predictions.json").read_text()) == rows
    printed = capsys.readouterr().out
    assert printed.count("group.jpg face") == 4


def test_an_image_without_a_face_says_so(checkpoint, tmp_path, capsys):
    empty = tmp_path / "wall.png"
    Image.fromarray(background(400, 300, seed=5)).save(empty)
    rows = predict(checkpoint, tmp_path / "out", f"images=[{quote(empty)}]")
    assert rows == [{"file": str(empty), "face": None, "top_k": [], "probabilities": {}}]
    assert f"{empty}: no face found" in capsys.readouterr().out
    with open(tmp_path / "out" / "predictions.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["face"] == "" and row["predicted"] == ""


def test_a_precropped_face_gets_the_hint_and_faces_false_predicts_it(checkpoint, dataset_face, tmp_path, caplog):
    face_file = tmp_path / "face.png"
    dataset_face.save(face_file)
    with caplog.at_level(logging.WARNING):
        predict(checkpoint, tmp_path / "a", f"images=[{quote(face_file)}]")
    assert "look like pre-cropped faces" in caplog.text and "faces=false" in caplog.text
    rows = predict(checkpoint, tmp_path / "b", f"images=[{quote(face_file)}]", "faces=false")
    assert len(rows) == 1 and "face" not in rows[0] and rows[0]["top_k"]
    assert looks_precropped(48, 48, [], 32) and not looks_precropped(720, 420, [Face((0, 0, 100, 100), 1.0)], 32)


def test_annotate_draws_inside_the_image():
    image = Image.fromarray(np.full((120, 160, 3), 128, np.uint8))
    faces = [Face((0, 0, 60, 60), 0.99), Face((100, 70, 160, 120), 0.9)]
    out = np.asarray(annotate(image, faces, ["happy 0.91", "sad 0.50"]))
    assert out.shape == (120, 160, 3)
    assert (out[0:60, 0] != 128).any() and (out[70:120, 159] != 128).any()


# -- videos ---------------------------------------------------------------------------------------------------


def write_video(path: Path, face: Image.Image, frames: int = 24) -> list[tuple[int, int, int]]:
    """A 320x240 video at 12 fps: the face (side 110) moves from left to right; returns its squares."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (320, 240))
    squares = []
    for t in range(frames):
        canvas = background(320, 240, seed=1).copy()
        square = (10 + 8 * t, 60 + (t % 4) * 5, 110)
        paste(canvas, face, square)
        writer.write(np.ascontiguousarray(canvas[..., ::-1]))
        squares.append(square)
    writer.release()
    return squares


def test_video_faces_every_n_frames(checkpoint, dataset_face, tmp_path):
    video = tmp_path / "clip.mp4"
    squares = write_video(video, dataset_face)
    out = tmp_path / "out"
    rows = predict(checkpoint, out, f"video={quote(video)}", "video_every=3")
    assert [r["frame"] for r in rows] == list(range(0, 24, 3))  # one face in each predicted frame
    for row in rows:
        assert_each_face_found([row["box"]], [squares[row["frame"]]])
        assert row["time_s"] == pytest.approx(row["frame"] / 12, abs=1e-3)
    import cv2

    annotated = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    annotated.release()
    with open(out / "clip_frames.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {"frame", "time_s", "x0", "predicted", "p_top"} <= set(table[0])
    assert Image.open(out / "clip_probabilities.png").size[0] > 300


def test_video_errors_are_one_sentence(checkpoint, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        predict(checkpoint, tmp_path, f"video={quote(tmp_path / 'missing.mp4')}")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(UserError, match="cannot open video|no frame"):
        predict(checkpoint, tmp_path, f"video={quote(bad)}")


# -- the demo page --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(checkpoint):
    pytest.importorskip("gradio")
    from src.demo import launch

    port = free_port()
    cfg = compose_entry("demo", [f"ckpt_path={quote(checkpoint)}", f"port={port}", "trainer.device=cpu"])
    app = launch(cfg, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_demo_http_api_predicts_each_face(demo_url, group_photo):
    from gradio_client import Client, handle_file

    client = Client(demo_url, verbose=False)
    annotated, _chart, table = client.predict(handle_file(str(group_photo)), api_name="/predict")
    assert_each_face_found([face["box"] for face in table["faces"]], GROUP)
    assert all(abs(sum(face["probabilities"].values()) - 1) < 1e-3 for face in table["faces"])
    assert Image.open(annotated).size == (720, 420)


def test_demo_without_gradio_is_one_sentence(monkeypatch, tmp_path):
    from src.demo import launch

    monkeypatch.setitem(sys.modules, "gradio", None)
    cfg = compose_entry("demo", [f"ckpt_path={quote(tmp_path / 'never_read.pt')}"])
    with pytest.raises(UserError, match=r"Gradio.*\.\[demo\]"):
        launch(cfg, block=False)


def test_demo_binds_to_this_machine_only_by_default(checkpoint):
    cfg = compose_entry("demo", [f"ckpt_path={quote(checkpoint)}"])
    assert cfg.host == "127.0.0.1"


def _browser() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.mark.skipif(_browser() is None, reason="headless Chromium and chromedriver are not installed")
def test_demo_in_a_real_browser(demo_url, group_photo, tmp_path):
    """Load the page in headless Chromium, upload the group photo, press Predict, wait for the result."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        browser.get(demo_url)
        wait = WebDriverWait(browser, 60)
        upload = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys(str(group_photo))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "img"))
        browser.find_element(By.XPATH, "//button[normalize-space()='Predict']").click()
        # the predictions table (a JSON view) lists one "predicted" per face once the answer is in
        wait.until(lambda b: '"predicted"' in b.find_element(By.TAG_NAME, "body").text)
        assert browser.find_element(By.TAG_NAME, "body").text.count('"predicted"') == len(GROUP)
        shot = tmp_path / "demo.png"
        browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
    finally:
        browser.quit()


# -- saliency -------------------------------------------------------------------------------------------------


def test_predict_saliency_writes_a_map_per_face(checkpoint, group_photo, tmp_path):
    pytest.importorskip("captum")
    predict(checkpoint, tmp_path, f"images=[{quote(group_photo)}]", "saliency=true")
    assert Image.open(tmp_path / "group_saliency.png").size[0] > 200
