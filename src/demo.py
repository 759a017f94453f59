"""A local demo page: `python -m src.demo ckpt_path=outputs/runs/<run>` (the `demo` extra, Gradio).

Upload a photo or take a webcam snapshot; the page shows it with each face's box and label and a bar
chart of the class probabilities per face. The page's "Predict" is also an HTTP API (`/predict`, e.g.
with gradio_client: `Client("http://127.0.0.1:7860").predict(handle_file("a.jpg"), api_name="/predict")`).
It listens on 127.0.0.1 (this machine only) unless `host=0.0.0.0` is given. The faces go through the
same FaceClassifier as `src.predict` (detector, crop, the checkpoint's preprocessing). Config: conf/demo.yaml.
"""
from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig

from .command_rules import DEMO_RULES, check_values
from .entry import CONFIG_DIR, hydra_command, run_or_exit
from .errors import UserError

log = logging.getLogger("src.demo")

INSTALL_HINT = "pip install -e '.[demo]' (or pip install 'fer-runner[demo]')"
MAX_FACES_CHARTED = 6


def probability_chart(classes, faces_probs):
    """One horizontal bar chart of class probabilities per face (at most MAX_FACES_CHARTED), as an image
    (the figure is closed here: a server answering many requests keeps no figures open)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    shown = faces_probs[:MAX_FACES_CHARTED]
    figure, axes = plt.subplots(1, max(1, len(shown)), figsize=(3.2 * max(1, len(shown)), 0.35 * len(classes) + 1),
                                squeeze=False, sharey=True)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for i, probs in enumerate(shown):
        ax = axes[0, i]
        values = [float(v) for v in probs]
        best = max(range(len(values)), key=values.__getitem__)
        ax.barh(range(len(classes)), values, color=["#f0a500" if k == best else "#8aa1b1" for k in range(len(classes))])
        ax.set_yticks(range(len(classes)), classes)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(f"face {i}: {classes[best]} {values[best]:.2f}", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def build_demo(classifier, faces: bool = True):
    """The Gradio page around a FaceClassifier (faces=False: the whole image is the input)."""
    import gradio as gr

    from .data.images import image_to_array
    from .inference.faces import Face, annotate

    def predict(image):
        if image is None:
            raise gr.Error("Upload a photo or take a webcam snapshot first.")
        image = image.convert("RGB")
        if faces:
            found, _, probs = classifier.classify(image)
        else:
            found = [Face((0, 0, image.width, image.height), 1.0)]
            probs = classifier.whole([image_to_array(image, classifier.channels, classifier.image_size)])
        labels = [classifier.label(p) for p in probs]
        table = {"faces": [{"face": i, "box": list(f.box), "predicted": classifier.classes[int(p.argmax())],
                            "probabilities": {c: round(float(v), 4) for c, v in zip(classifier.classes, p)}}
                           for i, (f, p) in enumerate(zip(found, probs))]}
        return annotate(image, found, labels), probability_chart(classifier.classes, list(probs)), table

    with gr.Blocks(title="Facial expressions") as demo:
        gr.Markdown(f"### Facial expressions\n{len(classifier.classes)} classes: {', '.join(classifier.classes)}. "
                    + ("Each face is found, cropped and predicted." if faces else "The whole image is predicted."))
        with gr.Row():
            photo = gr.Image(sources=["upload", "webcam"], type="pil", label="Photo or webcam snapshot")
            annotated = gr.Image(type="pil", label="Faces", format="png")
        button = gr.Button("Predict", variant="primary")
        chart = gr.Image(type="pil", label="Class probabilities per face", format="png")
        details = gr.JSON(label="Predictions")
        button.click(predict, inputs=photo, outputs=[annotated, chart, details], api_name="predict")
    return demo


def launch(cfg: DictConfig, block: bool = True):
    """Builds the classifier and serves the page; returns the Gradio app (block=False: in a thread)."""
    check_values(cfg, DEMO_RULES)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports leave the machine
    try:
        import gradio  # noqa: F401 - checked before the checkpoint and the detector are loaded
    except ImportError:
        raise UserError(f"the demo page needs Gradio, which is not installed: {INSTALL_HINT}") from None
    from .inference.face_classifier import FaceClassifier

    classifier = FaceClassifier(cfg)
    demo = build_demo(classifier, cfg.faces)
    import gradio as gr

    # System fonts: the page makes no request outside this machine (Gradio's default theme loads Google Fonts).
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    if cfg.host not in ("127.0.0.1", "localhost"):
        log.warning("host=%s: anyone who can reach this machine on port %s can use the page", cfg.host, cfg.port)
    demo.launch(server_name=cfg.host, server_port=cfg.port, share=False, inbrowser=False, theme=theme,
                prevent_thread_lock=not block, quiet=True)
    return demo


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="demo")
def main(cfg: DictConfig) -> None:
    run_or_exit(lambda: launch(cfg), log, plugins=cfg.plugins)


cli = hydra_command(main)  # `python -m src.demo` and the `fer-demo` command

if __name__ == "__main__":
    cli()
