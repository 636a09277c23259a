"""The Python API for clinicians' tools: load a checkpoint, predict one image, explain it with a CAM."""

import os
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch
from omegaconf import DictConfig

from src.data.preprocessor import ImageInput, ImagePreprocessor, PreparedImage
from src.evaluation.operating_point import stored_operating_point
from src.models.cam import TargetClass, build_cam
from src.models.predictor import Predictor
from src.utils.run_config import load_run_config

DEFAULT_THRESHOLD = 0.5


class InferenceMixin:
    """`load_pretrained`, `predict` and `generate_cam` for a LightningModule that holds a `net`."""

    preprocessor: ImagePreprocessor
    class_names: tuple[str, ...]
    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 1.0
    _predictor: Predictor | None = None

    @classmethod
    def load_pretrained(cls, ckpt_path: str | os.PathLike, map_location: str = "cpu") -> Self:
        """Model, class names and the eval transform it was trained with, all from one checkpoint."""
        run_config = load_run_config(ckpt_path)
        # the checkpoint's weights replace the backbone's: never download ImageNet weights here
        model = cls.load_from_checkpoint(
            ckpt_path, map_location=map_location, weights_only=True, weights=None
        )
        model.attach_preprocessing(run_config.data)
        stored = stored_operating_point(ckpt_path)
        if stored is not None:  # chosen on the validation split by an earlier `eval.py`
            model.threshold, model.temperature = float(stored["threshold"]), float(stored["temperature"])
        return model.eval()

    def attach_preprocessing(self, data_cfg: DictConfig) -> None:
        """Use the data config's eval transform and class names for single-image calls."""
        self.preprocessor = ImagePreprocessor.from_data_config(data_cfg)
        self.class_names = tuple(data_cfg.class_names)

    def prepare(self, image: ImageInput | PreparedImage) -> PreparedImage:
        """Read and transform an input unless it already is prepared."""
        return image if isinstance(image, PreparedImage) else self.preprocessor.prepare(image)

    def configure_inference(self, precision: str = "fp32", compile: bool = False) -> Self:
        """Pick the predictor's precision (fp32 | bf16) and whether to torch.compile it."""
        self._predictor = Predictor(self, precision=precision, compile=compile)
        return self

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled class probabilities (B x classes) for model-ready tensors, in eval mode."""
        if self._predictor is None:
            self.configure_inference()
        return torch.softmax(self._predictor(batch) / self.temperature, dim=1).cpu()

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted class per row: P(positive) >= threshold for two classes, else the most probable."""
        if probs.shape[1] == 2:
            return (probs[:, 1] >= self.threshold).long()
        return probs.argmax(dim=1)

    def predict(self, image: ImageInput | PreparedImage) -> tuple[str, float]:
        """(label, confidence) for one image path or HxW uint8 array; confidence is P(label)."""
        probs = self.predict_proba(self.prepare(image).tensor[None])
        label = int(self.decide(probs)[0])
        return self.class_names[label], float(probs[0, label])

    def explain_with_probs(
        self,
        images: Sequence[ImageInput | PreparedImage],
        target_class: TargetClass = None,
        method: str = "cam",
        **cam_options,
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Probabilities and one [0, 1] map per image at its ORIGINAL size, from ONE forward pass.

        Without a target class each map explains the image's decision (threshold included).
        """
        prepared = [self.prepare(image) for image in images]
        batch = torch.stack([p.tensor for p in prepared]).to(self.device)
        if target_class is None:
            target_class = self._decide_from_logits
        cam = build_cam(method, self.net, **cam_options)
        raw, logits, _ = cam.raw_maps(batch, target_class)
        maps = [cam.finish(raw[i : i + 1], p.original_size)[0].cpu().numpy() for i, p in enumerate(prepared)]
        return torch.softmax(logits / self.temperature, dim=1).cpu(), maps

    def explain(
        self,
        images: Sequence[ImageInput | PreparedImage],
        target_class: TargetClass = None,
        method: str = "cam",
        **cam_options,
    ) -> list[np.ndarray]:
        """One [0, 1] map per image at its ORIGINAL size, for the decided class unless one is given."""
        return self.explain_with_probs(images, target_class, method, **cam_options)[1]

    def _decide_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The decision for raw logits (temperature and threshold applied), as CAM targets."""
        return self.decide(torch.softmax(logits / self.temperature, dim=1))

    def generate_cam(
        self,
        image: ImageInput | PreparedImage,
        target_class: int | None = None,
        method: str = "cam",
        **cam_options,
    ) -> np.ndarray:
        """H x W map in [0, 1] at the original image's size (see `explain`)."""
        return self.explain([image], target_class, method, **cam_options)[0]
