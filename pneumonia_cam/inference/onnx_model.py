"""An exported .onnx file behind InferenceModel's surface, so the server (and any caller) can swap backends.

ONNX Runtime runs the network; what surrounds it is the project's one copy: the file's replayed preprocessing
(runtime/preprocess.py), the operating point's temperature and decision rule, and the CAM finishing of
InferenceModel.explain_batch. Only the class activation map of the layer feeding the head is in the graph,
so Grad-CAM and other layers are refused by name.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
from omegaconf import DictConfig

from pneumonia_cam.data.preprocessor import ImagePreprocessor
from pneumonia_cam.evaluation.operating_point import OPERATING_POINT_POLICIES, OperatingPoint
from pneumonia_cam.inference.model import InferenceModel, ModelInfo
from pneumonia_cam.models.cam import BaseCAM, TargetClass
from pneumonia_cam.runtime.onnx import FORMAT_VERSION, OnnxModel


class ReplayTransform:
    """The file's preprocessing with Albumentations' call convention (image= in, {"image": tensor} out)."""

    def __init__(self, runtime: OnnxModel) -> None:
        self.runtime = runtime

    def __call__(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """C x H x W float32 tensor of an HxW uint8 image."""
        return {"image": torch.from_numpy(self.runtime.prepare(image)[0])}


class OnnxInferenceModel(InferenceModel):
    """InferenceModel whose forward pass is an ONNX Runtime session on an exported file (CPU, fp32)."""

    backend = "onnxruntime"
    cam_methods = ("cam",)

    def __init__(self, runtime: OnnxModel, operating_point: OperatingPoint, info: ModelInfo) -> None:
        self.runtime = runtime
        self.net = None
        self.class_names = runtime.class_names
        self.preprocessor = ImagePreprocessor(ReplayTransform(runtime), runtime.dicom)
        self.operating_point = operating_point
        self.info = info
        self.cam_layers = (None, runtime.metadata["cam_layer"])

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | os.PathLike,
        operating_point: str = "auto",
        map_location: str = "cpu",
        threads: int | None = None,
        tta: Mapping[str, Any] | None = None,
    ) -> Self:
        """An exported file; its stored operating point unless the policy is `default` (threshold 0.5)."""
        if operating_point not in OPERATING_POINT_POLICIES:
            raise ValueError(f"operating_point={operating_point!r}; choose one of {OPERATING_POINT_POLICIES}")
        if map_location != "cpu":
            raise ValueError(f"backend=onnxruntime runs on the CPU; got device {map_location!r}")
        runtime = OnnxModel(ckpt_path, threads or torch.get_num_threads())
        meta = runtime.metadata
        missing = [key for key in ("operating_point", "cam_layer") if key not in meta]
        if missing:
            raise ValueError(
                f"{ckpt_path} was exported before metadata format {FORMAT_VERSION} (it lacks {missing}): "
                "export its checkpoint again with src/export.py to serve it"
            )
        # the checkpoint's operating point as export resolved it, with its provenance
        stored = OperatingPoint.from_dict(meta["operating_point"], str(meta["operating_point"]["source"]))
        info = ModelInfo(
            checkpoint=str(ckpt_path),
            checkpoint_sha256=str(meta["checkpoint_sha256"]),
            backbone=str(meta["backbone"]),
            image_size=int(meta["image_size"]),
            # files exported before the weights registry carry ImageNet inputs
            input_family=str(meta.get("input_family") or "imagenet"),
        )
        model = cls(runtime, OperatingPoint() if operating_point == "default" else stored, info)
        return model.with_tta(**(tta or {"views": ["identity"]}))

    @staticmethod
    def load_options(cfg: DictConfig) -> dict:
        """ONNX Runtime's intra-op threads from `threads` (null: torch's thread count)."""
        return {"threads": cfg.get("threads")}

    def with_tta(self, views: Sequence[str], merge: str = "probability") -> Self:
        """No views added at run time: TTA is exported into the graph (src/export.py tta=...)."""
        if list(views) != ["identity"]:
            raise ValueError(
                f"backend=onnxruntime runs the graph as exported; TTA views {list(views)} belong in the file "
                "(python src/export.py ... tta=hflip)"
            )
        return self

    @property
    def tta(self) -> dict:
        """The views exported into the graph (files exported before TTA metadata have none)."""
        meta = self.runtime.metadata
        views = list(meta.get("tta_views", ["identity"]))
        return {"views": views, "merge": meta.get("tta_merge", "probability")}

    def configure(self, precision: str = "fp32", compile: bool = False) -> Self:
        """Only fp32 without torch.compile: the exported graph is what runs."""
        if precision != "fp32" or compile:
            raise ValueError(
                "backend=onnxruntime runs the exported fp32 graph; "
                f"precision={precision!r} and compile={compile} are torch options (use backend=torch)"
            )
        return self

    @property
    def precision(self) -> str:
        """The exported graph's precision: int8 for a quantized copy (export.py quantize=int8), else fp32."""
        return "int8" if "quantization" in self.runtime.metadata else "fp32"

    @property
    def device(self) -> torch.device:
        """ONNX Runtime's CPU provider."""
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Self:
        """Stay on the CPU (the only provider configured)."""
        if torch.device(device).type != "cpu":
            raise ValueError(f"backend=onnxruntime runs on the CPU; got device {device!r}")
        return self

    def check_cam(self, method: str, target_layer: str | None) -> None:
        """Only the graph's own CAM: its method on the layer feeding the head."""
        if method not in self.cam_methods or target_layer not in self.cam_layers:
            raise ValueError(
                f"backend=onnxruntime holds the CAM of layer {self.cam_layers[1]!r} only; method={method!r} "
                f"with target_layer={target_layer!r} needs backend=torch"
            )

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All classes' raw CAM grids (B x K x h x w) and the logits of a B x 3 x H x W batch."""
        logits, cam = self.runtime.forward(batch.detach().cpu().float().numpy())
        return torch.from_numpy(cam), torch.from_numpy(logits)

    def class_grids(
        self, batch: torch.Tensor, target_class: TargetClass, method: str, **cam_options
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graph's grid of each image's target class (the decision unless given)."""
        self.check_cam(method, cam_options.get("target_layer"))
        grids, logits = self.forward(batch)
        probs = self.operating_point.probabilities(logits)
        targets = BaseCAM.targets(self.decide(probs) if target_class is None else target_class, logits)
        return probs, grids[torch.arange(len(grids)), targets], targets
