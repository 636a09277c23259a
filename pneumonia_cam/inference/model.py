"""One inference object per checkpoint: pre-processing, network, operating point and CAM, one decision rule.

eval, predict, visualize, the CAM panel, the server and the Python API all go through `InferenceModel`, so a
given image gets the same probabilities and the same decision on every path.
"""

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pneumonia_cam.data.batch_augment import black_level
from pneumonia_cam.data.preprocessor import ImageInput, ImagePreprocessor, PreparedImage
from pneumonia_cam.evaluation.operating_point import OperatingPoint, load_operating_point
from pneumonia_cam.inference.ensemble import backbone_name, checkpoint_net
from pneumonia_cam.models.cam import BaseCAM, TargetClass, build_cam, finish_options, postprocess
from pneumonia_cam.models.combined import CombinedNet, TTANet
from pneumonia_cam.models.net import ChestXrayNet
from pneumonia_cam.models.predictor import Predictor
from pneumonia_cam.models.weights.formats import recorded_input
from pneumonia_cam.utils.run_config import checkpoint_sha256, load_checkpoint, load_run_config

log = logging.getLogger(__name__)

# a path or HxW uint8 array (read and pre-processed here), a prepared image, or the preprocessor's C x H x W
# output (its CAM comes back at the tensor's size: the original is unknown)
ImageLike = ImageInput | PreparedImage | torch.Tensor


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the model behind an answer (server responses, exports, reports)."""

    checkpoint: str
    checkpoint_sha256: str
    backbone: str
    image_size: int
    input_family: str  # the pre-processing family of the weights the backbone started from

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Explanation:
    """What one CAM call returns for a batch: everything a report, a server or an export needs."""

    probs: torch.Tensor  # B x classes, temperature-scaled
    grids: torch.Tensor  # B x h x w class-activation grids, before upsampling and normalisation
    maps: list[np.ndarray]  # [0, 1] maps at each image's original size
    targets: torch.Tensor  # the class each map explains


def tta_options(cfg: Mapping) -> dict:
    """`with_tta` keyword arguments from an entry point's `tta` config group (views, merge)."""
    tta = cfg.get("tta") or {}
    return {"views": list(tta.get("views") or ["identity"]), "merge": tta.get("merge", "probability")}


class InferenceModel:
    """A trained network with its eval transform, class names and operating point, ready for images."""

    backend = "torch"

    def __init__(
        self,
        net: ChestXrayNet,
        class_names: Sequence[str],
        preprocessor: ImagePreprocessor | None = None,
        operating_point: OperatingPoint | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        self.net = net
        self.class_names = tuple(class_names)
        self.preprocessor = preprocessor
        self.operating_point = operating_point or OperatingPoint()
        self.info = info
        self.predictor = Predictor(net, net.features_and_logits)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | os.PathLike,
        operating_point: str = "auto",
        map_location: str = "cpu",
        tta: Mapping[str, Any] | None = None,
    ) -> Self:
        """Network, eval transform, class names, TTA views and the operating point chosen with those views."""
        checkpoint = load_checkpoint(ckpt_path)
        run_config = load_run_config(ckpt_path, checkpoint)
        net = checkpoint_net(ckpt_path, checkpoint, run_config.model._target_, map_location)
        info = ModelInfo(
            checkpoint=str(ckpt_path),
            checkpoint_sha256=checkpoint_sha256(ckpt_path),
            backbone=backbone_name(checkpoint),
            image_size=int(run_config.data.image_size),
            input_family=recorded_input(OmegaConf.to_container(run_config)).family,
        )
        model = cls(
            net.eval(),
            run_config.data.class_names,
            ImagePreprocessor.from_data_config(run_config.data),
            load_operating_point(ckpt_path, operating_point, tta),
            info,
        )
        return model.with_tta(**tta) if tta else model

    load_pretrained = from_checkpoint

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Self:
        """What predict, visualize and serve configs ask for: checkpoint, operating point, precision."""
        model = cls.from_checkpoint(
            cfg.ckpt_path, cfg.get("operating_point", "auto"), tta=tta_options(cfg), **cls.load_options(cfg)
        )
        if cfg.get("threshold") is not None:
            model.operating_point = OperatingPoint(
                threshold=float(cfg.threshold),
                temperature=model.operating_point.temperature,
                source="threshold= on the command line",
            )
            log.info("Operating point: threshold %.4f from the command line", model.operating_point.threshold)
        return model.configure(cfg.get("precision", "fp32"), cfg.get("compile", False))

    @staticmethod
    def load_options(cfg: DictConfig) -> dict:
        """Backend-specific keyword arguments of `from_checkpoint` taken from an entry point's config."""
        return {}

    def with_tta(self, views: Sequence[str], merge: str = "probability") -> Self:
        """See each image through `views` (e.g. hflip, zoom:1.1): merged probabilities, CAMs mapped back."""
        if list(views) != ["identity"]:
            fill = black_level(self.preprocessor.transform) if self.preprocessor is not None else 0.0
            self.net = TTANet(self.net, views, merge, fill)
            self.predictor = Predictor(self.net, self.net.features_and_logits)
        return self

    @property
    def tta(self) -> dict:
        """The views each image is seen through and how they merge (identity alone: no TTA)."""
        if isinstance(self.net, TTANet):
            return {"views": list(self.net.views), "merge": self.net.merge}
        return {"views": ["identity"], "merge": "probability"}

    def configure(self, precision: str = "fp32", compile: bool = False) -> Self:
        """Pick the predictor's precision (fp32 | bf16) and torch.compile; every path goes through it."""
        self.predictor = Predictor(
            self.net, self.net.features_and_logits, precision=precision, compile=compile
        )
        return self

    @property
    def positive_name(self) -> str:
        """The name of the class whose probability the threshold applies to."""
        return self.class_names[self.operating_point.positive_class]

    @property
    def precision(self) -> str:
        """The precision the network runs in (fp32 | bf16)."""
        return self.predictor.precision

    @property
    def device(self) -> torch.device:
        """Where the network lives."""
        return self.predictor.device

    def to(self, device: str | torch.device) -> Self:
        """Move the network (inputs follow it)."""
        self.net.to(device)
        return self

    def prepare(self, image: ImageLike) -> PreparedImage:
        """Read and transform an input unless it already is prepared (a tensor is its own original)."""
        if isinstance(image, PreparedImage):
            return image
        if isinstance(image, torch.Tensor):
            if image.ndim != 3:
                raise ValueError(
                    f"Expected the preprocessor's C x H x W tensor, got shape {tuple(image.shape)}"
                )
            return PreparedImage(image, None)
        if self.preprocessor is None:
            raise ValueError("This model has no preprocessor: pass PreparedImage objects or tensors")
        return self.preprocessor.prepare(image)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps and logits of a B x C x H x W batch through the configured predictor."""
        return self.predictor(batch)

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled class probabilities (B x classes) for model-ready tensors."""
        return self.operating_point.probabilities(self.forward(batch)[1]).cpu()

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted class per row, by the operating point's threshold (the one decision rule)."""
        return self.operating_point.decide(probs)

    def predict(self, image: ImageLike) -> tuple[str, float]:
        """(label, confidence) for one image; confidence is P(label)."""
        probs = self.predict_proba(self.prepare(image).tensor[None])
        label = int(self.decide(probs)[0])
        return self.class_names[label], float(probs[0, label])

    def check_cam(self, method: str, target_layer: str | None) -> None:
        """Refuse (ValueError) a CAM method or layer this model cannot compute, before any image is sent."""
        self.cam(method, target_layer=target_layer)

    def cam(self, method: str, **cam_options) -> BaseCAM:
        """The CAM of `method` on this network; a combined net (ensemble, TTA) only reuses its own pass."""
        if isinstance(self.net, CombinedNet) and method not in self.net.cam_methods:
            raise ValueError(
                f"method={method!r}: this {type(self.net).__name__} offers {list(self.net.cam_methods)} "
                "(an ensemble or TTA averages the CAM of each pass; Grad-CAM hooks one network)"
            )
        cam = build_cam(method, self.net, **cam_options)
        if isinstance(self.net, CombinedNet) and not cam.reuses_pass:
            raise ValueError(
                f"target_layer={cam_options.get('target_layer')!r}: this {type(self.net).__name__} computes "
                "the CAM of the layer feeding the head only"
            )
        return cam

    def explain_batch(
        self,
        images: Sequence[ImageLike],
        target_class: TargetClass = None,
        method: str = "cam",
        **cam_options,
    ) -> Explanation:
        """Probabilities, raw grids and one [0, 1] map per image at its original size (a tensor's own size).

        The probabilities always come from the predictor's pass, so they do not depend on whether a CAM is
        asked for. A CAM of the layer that feeds the head reuses that pass's feature maps; Grad-CAM and other
        layers run their own pass. Without a target class each map explains the image's decision.
        """
        prepared = [self.prepare(image) for image in images]
        probs, raw, targets = self.class_grids(
            torch.stack([p.tensor for p in prepared]), target_class, method, **cam_options
        )
        finish = finish_options(cam_options)
        maps = [
            postprocess(raw[i : i + 1], p.original_size, **finish)[0].cpu().numpy()
            for i, p in enumerate(prepared)
        ]
        return Explanation(probs.cpu(), raw.float().cpu(), maps, targets.cpu())

    def class_grids(
        self, batch: torch.Tensor, target_class: TargetClass, method: str, **cam_options
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities, raw B x h x w grids, target per image) of a batch: the step a backend overrides."""
        cam = self.cam(method, **cam_options)
        features, logits = self.forward(batch)
        probs = self.operating_point.probabilities(logits)
        targets = cam.targets(self.decide(probs) if target_class is None else target_class, logits)
        raw = cam.from_features(features, logits, targets)
        if raw is None:
            with torch.inference_mode(False), torch.enable_grad():
                raw, _, _ = cam.raw_maps(batch.to(self.device), targets)
        return probs, raw, targets

    def explain_with_probs(
        self,
        images: Sequence[ImageLike],
        target_class: TargetClass = None,
        method: str = "cam",
        **cam_options,
    ) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Probabilities and one [0, 1] map per image at its original size (see `explain_batch`)."""
        explanation = self.explain_batch(images, target_class, method, **cam_options)
        return explanation.probs, explanation.maps

    def explain(
        self,
        images: Sequence[ImageLike],
        target_class: TargetClass = None,
        method: str = "cam",
        **cam_options,
    ) -> list[np.ndarray]:
        """One [0, 1] map per image at its original size, for the decided class unless one is given."""
        return self.explain_with_probs(images, target_class, method, **cam_options)[1]

    def generate_cam(
        self, image: ImageLike, target_class: int | None = None, method: str = "cam", **cam_options
    ) -> np.ndarray:
        """H x W map in [0, 1] at the original image's size (see `explain_with_probs`)."""
        return self.explain([image], target_class, method, **cam_options)[0]
