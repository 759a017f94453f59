"""From uint8 images to class log-probabilities, preprocessed exactly as in training.

`Predictor` wraps one model with its inputs (normalization, crop, test-time augmentation), device and
precision; `Ensemble` averages the probabilities of several. The trainer's validation, the test
evaluation at the end of training, `src.evaluate` and `src.predict` all go through them: one code path.
`load_predictors` rebuilds them from checkpoints (`load_model`: the stored config is data, see
config.build_stored).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import registry
from ..checkpoint_file import check_weights, load_checkpoint
from ..config import build_stored
from ..data.inputs import TTA_MODES, ModelInput
from ..errors import ConfigError, UserError
from ..progress import DEFAULT_EVERY_S, Progress
from ..runtime.devices import autocast, resolve_device, resolve_precision

log = logging.getLogger(__name__)


class Predictor:
    """One model, ready to predict: its inputs (normalization, memory format, the centre crop or the views
    of test-time augmentation: data.inputs.ModelInput), device and precision. A pass that takes a while
    shows its progress (src/progress.py: a bar on terminals, else a log line every `log_every_s` seconds).
    `source` is the checkpoint the model was loaded from: its outputs are checked to be finite, and an error
    names it (in an ensemble, the member at fault)."""

    def __init__(self, model: nn.Module, inputs: ModelInput, device: torch.device | str = "cpu",
                 precision: str = "fp32", tta: str = "none", crop_size: int | None = None, batch_size: int = 512,
                 log_every_s: float = DEFAULT_EVERY_S, source: str | None = None):
        if tta not in TTA_MODES:
            raise ConfigError(f"tta.mode={tta} is invalid: use one of {', '.join(TTA_MODES)}")
        self.model, self.inputs, self.device, self.precision = model, inputs, torch.device(device), precision
        self.tta, self.crop_size, self.batch_size, self.log_every_s = tta, crop_size, batch_size, log_every_s
        self.source = source

    def _batches(self, images: torch.Tensor):
        for start in range(0, len(images), self.batch_size):
            yield images[start:start + self.batch_size].to(self.device, non_blocking=True)

    def _progress(self, images: torch.Tensor, description: str) -> Progress:
        """The pass's progress in images (no host synchronisation: it counts the batches handed to the device)."""
        return Progress(len(images), description, "img", every_s=self.log_every_s, logger=log)

    @torch.inference_mode()
    def log_probs(self, images: torch.Tensor, description: str = "predicting") -> torch.Tensor:
        """(N, K) float32 log-probabilities on the CPU for uint8 images (N, C, H, W) on any device.
        `description` names the pass in its progress (e.g. the split), which advances by view: a batch
        under ten-crop TTA is ten forward passes."""
        self.model.eval()
        out = []
        with self._progress(images, description + (f" (tta={self.tta})" if self.tta != "none" else "")) as progress:
            for batch in self._batches(images):
                views, logits = self.inputs.views(batch, self.tta, self.crop_size), []
                with autocast(self.device, self.precision):
                    for i, view in enumerate(views):  # progress by view: each is a forward pass over the batch
                        logits.append(self.model(view).float())
                        progress.update(len(batch) * (i + 1) // len(views) - len(batch) * i // len(views))
                    mean = torch.stack(logits).mean(0)
                out.append(F.log_softmax(mean, dim=1))
        result = torch.cat(out).cpu()
        # Only a model loaded from a file checks here: the trainer's predicts a share of a split per DDP
        # process, and one process raising alone would leave the others waiting (evaluate_split checks the
        # gathered outputs instead)
        if self.source is not None:
            require_finite(result, f"checkpoint {self.source}", self.precision)
        return result

    def check_has_features(self) -> None:
        """forward_features is optional for a user's model (docs/plugins.md): only the features need it."""
        if not callable(getattr(self.model, "forward_features", None)):
            raise UserError(f"embed=true needs the model's penultimate-layer features, and "
                            f"{registry.full_name(type(self.model))} has no forward_features(x) method: add one that "
                            "returns the (N, F) features its head classifies (docs/plugins.md)")

    @torch.inference_mode()
    def features(self, images: torch.Tensor, description: str = "features") -> torch.Tensor:
        """(N, F) penultimate-layer features (the model's forward_features), without TTA."""
        self.check_has_features()
        self.model.eval()
        out = []
        with self._progress(images, description) as progress:
            for batch in self._batches(images):
                with autocast(self.device, self.precision):
                    out.append(self.model.forward_features(self.inputs.centre(batch)).float())
                progress.update(len(batch))
        return torch.cat(out).cpu()


def require_finite(outputs: torch.Tensor, who: str, precision: str) -> None:
    """Outputs (logits or log-probabilities) with a NaN or an infinity are an error naming `who`: finite
    weights can still overflow (huge weights, a damaged buffer), and scikit-learn's metrics would fail on
    them with a traceback."""
    if not bool(torch.isfinite(outputs).all()):
        hint = "" if precision == "fp32" else "; try trainer.precision=fp32"
        raise UserError(f"{who} gives outputs that are not finite (NaN or infinite in {precision}): its weights are "
                        f"damaged or too large{hint}")


def average_probabilities(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Soft voting: the log of the mean of the members' probabilities."""
    return torch.logsumexp(torch.stack(list(log_probs)), dim=0) - math.log(len(log_probs))


class Ensemble:
    """Averages the probabilities (soft voting) of several predictors over the same classes."""

    def __init__(self, members: Sequence[Predictor]):
        self.members = list(members)

    def log_probs(self, images: torch.Tensor, description: str = "predicting") -> torch.Tensor:
        n = len(self.members)
        return average_probabilities([m.log_probs(images, f"{description}, model {i}/{n}")
                                      for i, m in enumerate(self.members, start=1)])


def load_model(ckpt_path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """The model a checkpoint holds, rebuilt from its own config, and the checkpoint's meta
    (config, data: classes, channels, image_size, mean, std; input_size: the training crop or None).

    The stored model config is data from a file that anyone may have written: only the runner's own
    registered model classes are built from it (config.build_stored), first on the meta device, where its
    parameters must fit the checkpoint's tensors (checkpoint_file.check_weights: names, shapes, dtypes, finite
    values) before any memory is allocated for them."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    meta = ckpt["meta"]
    source = f"checkpoint {ckpt_path}"
    with torch.device("meta"):
        skeleton = stored_model(meta, source)
    check_weights(ckpt["model"], skeleton, ckpt_path)  # before the model's memory is allocated
    model = stored_model(meta, source)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), {**meta, "epoch": ckpt.get("epoch")}


def stored_model(meta: dict, source: str) -> nn.Module:
    """The model a checkpoint's meta describes, built from its stored config (config.build_stored: registered
    classes only) on the current device (`with torch.device("meta")`: no memory); its weights are not loaded."""
    data = meta.get("data") or {}
    described = all(data.get(k) is not None for k in ("classes", "channels", "image_size", "mean", "std"))
    if not described or not (meta.get("config") or {}).get("model"):
        raise UserError(f"{source} lacks the data description (classes, normalization) or the model config to "
                        "predict")
    stored = meta["config"]["model"]
    known = {"num_classes": len(data["classes"]), "in_channels": data["channels"]}
    if "pretrained" in stored:
        known["pretrained"] = False  # the weights come from the checkpoint: no download
    return build_stored(stored, "model", source, **known)


def _runtime_settings(trainer_cfg, trained: dict, device: torch.device) -> tuple[str, bool]:
    """Precision and memory format: as given, or (null) as the checkpoint's run used them, so that an
    evaluation on the same machine reproduces the run's numbers exactly."""
    given = trainer_cfg.channels_last
    channels_last = bool(trained.get("channels_last", True) if given is None else given)
    if trainer_cfg.precision is not None:
        return resolve_precision(trainer_cfg.precision, device), channels_last
    try:
        return resolve_precision(trained.get("precision") or "auto", device), channels_last
    except ConfigError:  # e.g. trained in fp16 on a GPU, evaluated on a CPU
        return resolve_precision("auto", device), channels_last


def checkpoint_paths(ckpt_path) -> list[str]:
    """`ckpt_path` of evaluate / predict as checkpoint files: a file; a run directory (its
    checkpoints/best.pt); a sweep or any folder (every checkpoints/best.pt below it, sorted); or a list
    of these (an ensemble)."""
    entries = [str(ckpt_path)] if isinstance(ckpt_path, (str, Path)) else [str(p) for p in ckpt_path]
    found: list[str] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.is_dir():
            found.append(entry)  # a file, or a missing path that load_checkpoint reports
        elif (path / "checkpoints" / "best.pt").is_file():
            found.append(str(path / "checkpoints" / "best.pt"))
        else:
            below = sorted(str(p) for p in path.rglob("best.pt") if p.parent.name == "checkpoints")
            if not below:
                raise UserError(f"ckpt_path={entry} is a folder without any checkpoints/best.pt below it")
            found += below
    return found


def load_predictors(ckpt_paths: Sequence[str], trainer_cfg, tta_cfg, batch_size: int | None = None
                    ) -> tuple[list[Predictor], dict]:
    """A Predictor per checkpoint (device and progress interval from `trainer_cfg`; precision and
    channels_last from it or, when null, from the checkpoint's run; TTA from `tta_cfg`), and the data
    description they share.
    Checkpoints over different classes or inputs are an error."""
    device = resolve_device(trainer_cfg.device)
    every_s = DEFAULT_EVERY_S if trainer_cfg.get("log_every_s") is None else trainer_cfg.log_every_s
    predictors, first = [], None
    for path in ckpt_paths:
        model, meta = load_model(path, device)
        precision, channels_last = _runtime_settings(trainer_cfg, meta["config"].get("trainer") or {}, device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        data = meta["data"]
        described = {k: data[k] for k in ("classes", "channels", "image_size")}
        if first is None:
            first = {**described, "config": meta["config"]}
        elif described != {k: first[k] for k in described}:
            raise UserError(f"checkpoint {path} was trained on {described}, unlike {ckpt_paths[0]} "
                            f"({ {k: first[k] for k in described} }); an ensemble needs the same classes and input")
        inputs = ModelInput(data["mean"], data["std"], meta.get("input_size"), channels_last=channels_last)
        predictors.append(Predictor(model, inputs, device, precision, tta_cfg.mode, tta_cfg.crop_size,
                                    batch_size or (meta["config"].get("data") or {}).get("eval_batch_size") or 512,
                                    every_s, source=str(path)))
    return predictors, first
