"""ONNX export of a checkpoint: one graph gives the logits and the raw class activation grids of a batch.

The graph takes `image` (B x C x H x W float32, dynamic B; C: the weights' channels, 3 or 1) and returns
`logits` (B x K) and `cam` (B x K x h x w: the linear head's weights applied to the last feature maps, before
upsampling and normalisation, which stay outside the graph). Everything a runtime needs to rebuild the
preprocessing and the decision travels in the model's metadata (key `pneumonia_cam`) and in a sidecar
`<file>.json`: class names, image size, the eval transform (Albumentations, serialised), mean / std,
threshold, temperature, checkpoint SHA-256, opset, torch version. `pneumonia_cam.runtime.OnnxModel` reads
both; it imports no torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import onnx
import torch
from albumentations.pytorch import ToTensorV2
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.combined import MeanCamHead
from pneumonia_cam.models.net import ClassifierHead
from pneumonia_cam.models.weights.preprocessing import transform_input
from pneumonia_cam.runtime.onnx import FORMAT_VERSION, METADATA_KEY, OnnxModel
from pneumonia_cam.runtime.preprocess import STEP_NAMES, Step

FORMATS = ("onnx",)
OPSET = 17


class CamGraph(nn.Module):
    """features -> (logits, all classes' CAM grids) in one pass: what the exported file computes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, logits = self.net.features_and_logits(image)
        cam = torch.einsum("kc,bchw->bkhw", self.net.head.fc.weight, maps)
        return logits, cam


def check_exportable(model: InferenceModel, fmt: str, opset: int) -> None:
    """Refuse, saying why, what the file could not represent faithfully."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not supported; export formats: {list(FORMATS)}")
    if opset < OPSET:
        raise ValueError(f"opset {opset} is too old: the graph needs opset >= {OPSET}")
    head = model.net.head
    pooled_linear = isinstance(head, ClassifierHead) and isinstance(head.pool[0], nn.AdaptiveAvgPool2d)
    if not (pooled_linear or isinstance(head, MeanCamHead)):
        raise ValueError(
            f"the CAM output needs a global-average-pool + linear head; {type(head).__name__} is not one"
        )
    if model.preprocessor is None:
        raise ValueError(
            "the model has no preprocessing to export: load it with InferenceModel.from_checkpoint"
        )
    steps = model.preprocessor.transform.transforms
    if (
        not steps
        or not isinstance(steps[-1], ToTensorV2)
        or any(isinstance(t, ToTensorV2) for t in steps[:-1])
    ):
        raise ValueError(
            "the eval transform must end in ToTensorV2 (and use it once) for the runtime to rebuild it"
        )
    preprocess_steps(model.preprocessor.transform)  # refuses steps the runtime cannot replay


def preprocess_steps(transform: A.Compose) -> list[Step]:
    """The eval transform (before ToTensorV2) as steps runtime/preprocess.py replays exactly, or a refusal."""
    steps = []
    channels = transform_input(transform)[0]
    for t in transform.transforms[:-1]:
        name = type(t).__name__
        if t.p != 1.0:
            raise ValueError(
                f"eval step {name} runs with p={t.p}: an exported pipeline must be deterministic"
            )
        if isinstance(t, A.CLAHE) and t.clip_limit[0] == t.clip_limit[1]:
            grid = list(t.tile_grid_size)
            steps.append({"name": name, "clip_limit": float(t.clip_limit[0]), "tile_grid_size": grid})
        elif isinstance(t, A.Resize) and not getattr(t, "area_for_downscale", None):
            size = {"height": t.height, "width": t.width, "interpolation": int(t.interpolation)}
            steps.append({"name": name, **size})
        elif isinstance(t, A.ToRGB):
            steps.append({"name": name, "num_output_channels": int(t.num_output_channels)})
        elif isinstance(t, A.Normalize) and t.normalization == "standard":
            mean, std = (
                np.broadcast_to(np.asarray(v, dtype=np.float64), (channels,)).tolist()
                for v in (t.mean, t.std)
            )
            steps.append(
                {"name": name, "mean": mean, "std": std, "max_pixel_value": float(t.max_pixel_value)}
            )
        else:
            raise ValueError(
                f"eval step {name} has no exact torch-free replay; exportable steps: {list(STEP_NAMES)} "
                "(CLAHE with a fixed clip limit, standard Normalize, all with p=1)"
            )
    return steps


def export_metadata(model: InferenceModel, opset: int) -> dict[str, Any]:
    """What a runtime needs besides the graph (JSON-ready)."""
    steps = preprocess_steps(model.preprocessor.transform)
    normalize = [step for step in steps if step["name"] == "Normalize"]
    channels = transform_input(model.preprocessor.transform)[0]
    info = model.info
    return {
        "format_version": FORMAT_VERSION,
        "class_names": list(model.class_names),
        "positive_class": model.operating_point.positive_class,
        "threshold": model.operating_point.threshold,
        "temperature": model.operating_point.temperature,
        "operating_point_source": model.operating_point.source,
        "operating_point": model.operating_point.as_dict(),
        "image_size": info.image_size if info else None,
        "backbone": info.backbone if info else None,
        "checkpoint": info.checkpoint if info else None,
        "checkpoint_sha256": info.checkpoint_sha256 if info else None,
        "preprocess": steps,
        "mean": normalize[0]["mean"] if normalize else None,
        "std": normalize[0]["std"] if normalize else None,
        "channels": f"grey replicated to {channels} (ToRGB)" if channels > 1 else "grey",
        "input_family": info.input_family if info else None,
        "dicom": model.preprocessor.dicom.__dict__,
        "inputs": {"image": f"B x {channels} x H x W float32, the preprocess output (CHW)"},
        "outputs": {"logits": "B x K", "cam": "B x K x h x w, raw (before upsampling, ReLU and min-max)"},
        # the backbone stage whose maps the `cam` output weights (the one feeding the head)
        "cam_layer": list(model.net.features.named_children())[-1][0],
        "tta_views": model.tta["views"],
        "tta_merge": model.tta["merge"],
        "opset": opset,
        "torch": torch.__version__,
    }


def export_onnx(model: InferenceModel, output: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write `output` (.onnx) and `output`.json; return the model path."""
    check_exportable(model, "onnx", opset)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    size = model.info.image_size if model.info else 224
    graph = CamGraph(model.net).eval()
    example = torch.zeros(2, transform_input(model.preprocessor.transform)[0], size, size)
    torch.onnx.export(
        graph,
        (example,),
        str(output),
        input_names=["image"],
        output_names=["logits", "cam"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "cam": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return write_metadata(output, export_metadata(model, opset))


def write_metadata(path: Path, metadata: dict[str, Any]) -> Path:
    """Put `metadata` into the file (replacing any) and beside it as `<file>.json`; return the path."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(path))
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(metadata, indent=2) + "\n")
    return path


class Calibration(CalibrationDataReader):
    """ONNX Runtime's calibration reader: one model-ready image per call."""

    def __init__(self, inputs: np.ndarray) -> None:
        self.rows = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next {"image": 1 x 3 x H x W} feed, None when done."""
        row = next(self.rows, None)
        return None if row is None else {"image": row[None]}


# how activation ranges are read off the calibration images (ONNX Runtime's calibrators)
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def fp32_nodes(graph: onnx.GraphProto, keep: tuple[str, ...]) -> list[str]:
    """Names of the nodes `keep` leaves in float: an op type (Gemm), `depthwise` (grouped Convs), or a
    node-name prefix starting with "/" (a module path of the export, e.g. /features/stem/)."""

    def kept(node: onnx.NodeProto) -> bool:
        grouped = node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
        return any(
            node.name.startswith(entry)
            if entry.startswith("/")
            else (entry == "depthwise" and grouped) or node.op_type == entry
            for entry in keep
        )

    return [node.name for node in graph.node if kept(node)]


def quantize_int8(
    source: OnnxModel,
    inputs: np.ndarray,
    output: str | os.PathLike,
    method: str = "minmax",
    keep_fp32: tuple[str, ...] = (),
) -> Path:
    """A static int8 (QDQ, per-channel weights) copy of an exported file, calibrated on `inputs`.

    `inputs` are model-ready (N x C x H x W, `source.prepare` of training images); `method` picks how
    activation ranges are calibrated and `keep_fp32` what stays float (see `fp32_nodes`: op types such as the
    head's Gemm, `depthwise` convs, module paths such as /features/stem/). The metadata records these
    settings, so OnnxModel and the server load the result like the fp32 file and can say how it was made.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}; choose one of {sorted(CALIBRATION_METHODS)}")
    output = Path(output)
    staged = output.with_suffix(".pre.onnx")
    quant_pre_process(str(source.path), str(staged))
    excluded = fp32_nodes(onnx.load(str(staged)).graph, keep_fp32)
    quantize_static(
        str(staged),
        str(output),
        Calibration(inputs),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION_METHODS[method],
        nodes_to_exclude=excluded,
    )
    staged.unlink()
    quantization = {
        "type": "int8 static QDQ, per-channel weights",
        "calibration_images": len(inputs),
        "calibration_method": method,
        "fp32": sorted(keep_fp32),
    }
    return write_metadata(output, {**source.metadata, "quantization": quantization})
