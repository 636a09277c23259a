"""Read Google's 8-bit MobileNetV1/V2 1.0 TFLite files as float torch weights, with the `tflite` parser only.

A quantized TFLite graph stores every conv as uint8/int8 weights with a scale and zero point and an int32 bias
with its own scale; dequantized (``scale * (q - zero_point)``) and transposed to torch's layout they are the
float network the file was trained as (BatchNorm is already folded into the bias). The architecture is
recognised from the graph itself: the list of convolutions (kind, shape, stride, padding, activation) before
the global pooling has to equal that of ``mobilenet_v2_stages`` or ``mobilenet_v1_stages`` exactly.
"""

import os
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tflite
import torch
from torch import nn

from pneumonia_cam.models.mobilenet import (
    InvertedResidual,
    SameConv2d,
    mobilenet_v1_stages,
    mobilenet_v2_stages,
)

_ARCHITECTURES: dict[str, tuple[str, Callable[[], tuple[OrderedDict[str, nn.Module], int]]]] = {
    "mobilenet_v2": ("MobileNetV2 1.0", mobilenet_v2_stages),
    "mobilenet_v1": ("MobileNetV1 1.0", mobilenet_v1_stages),
}
_OP_NAMES = {code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
_ACTIVATIONS = {
    code: name for name, code in vars(tflite.ActivationFunctionType).items() if not name.startswith("_")
}
_TYPE_NAMES = {code: name for name, code in vars(tflite.TensorType).items() if not name.startswith("_")}
# flatbuffers are little-endian whatever the host
_QUANTIZED = {
    tflite.TensorType.UINT8: np.dtype("<u1"),
    tflite.TensorType.INT8: np.dtype("<i1"),
    tflite.TensorType.INT32: np.dtype("<i4"),
}
_CONVS = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions}
_TAIL = {"RESHAPE", "SQUEEZE", "SOFTMAX"}  # shape plumbing and the probabilities after the classifier


@dataclass(frozen=True)
class TFLiteWeights:
    """A TFLite MobileNet as float torch weights plus the affine scaling of its uint8 input."""

    architecture: str  # mobilenet_v2 | mobilenet_v1
    features: dict[str, torch.Tensor]  # state dict of nn.Sequential(mobilenet_vX_stages()[0])
    classifier: tuple[torch.Tensor, torch.Tensor] | None  # Linear weight [classes, C] and bias after pooling
    input_scale: float
    input_zero_point: int
    input_size: int


@dataclass(frozen=True)
class _Layer:
    """One conv / fully connected op of the graph, in torch layout, with what identifies it."""

    signature: str
    weight: torch.Tensor
    bias: torch.Tensor


def read_tflite(path: str | os.PathLike) -> TFLiteWeights:
    """Dequantize a MobileNetV1/V2 1.0 TFLite file; refuse other graphs, naming the file and what it has."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite file not found: {path}")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite file (no 'TFL3' flatbuffer identifier)")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        ops = [_read_op(model, graph, graph.Operators(i)) for i in range(graph.OperatorsLength())]
        inputs = [graph.Tensors(int(i)) for i in graph.InputsAsNumpy()]
    except (struct.error, IndexError, TypeError, AttributeError) as err:  # flatbuffers' errors on a cut file
        raise ValueError(f"{path} is not a readable TFLite file: {type(err).__name__}: {err}") from err
    except ValueError as err:  # a weight that is not 8-bit quantized
        raise ValueError(f"{path}: {err}") from err
    scale, zero_point, size = _input_quantization(path, inputs)
    features, adds, head, others = _split(ops)
    architecture, names, width = _recognise(path, features, adds, others)
    state = {}
    for name, layer in zip(names, features, strict=True):
        state[f"{name}.weight"], state[f"{name}.bias"] = layer.weight, layer.bias
    return TFLiteWeights(architecture, state, _classifier(path, head, width), scale, zero_point, size)


def _read_op(model: tflite.Model, graph: tflite.SubGraph, op: tflite.Operator) -> tuple[str, object]:
    """The op's name and, for conv-like ops, its layer (else its output shape or fused activation)."""
    code = model.OperatorCodes(op.OpcodeIndex())
    # files from before schema 3a only fill the deprecated int8 field; newer ones set both or only the new one
    name = _OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
    tensors = [graph.Tensors(int(i)) if i >= 0 else None for i in op.InputsAsNumpy()]
    if name in _CONVS or name == "FULLY_CONNECTED":
        return name, _read_layer(model, name, op, tensors)
    if name == "ADD":
        options = tflite.AddOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        return name, _ACTIVATIONS[options.FusedActivationFunction()]
    return name, graph.Tensors(int(op.OutputsAsNumpy()[0])).ShapeAsNumpy().tolist()


def _read_layer(model: tflite.Model, name: str, op: tflite.Operator, tensors: list) -> _Layer:
    """Dequantize a conv / fully connected op's weights to OIHW (depthwise C x 1 x H x W) or [out, in]."""
    if len(tensors) < 3 or None in tensors[1:3]:
        raise ValueError(f"a {name} op lacks its weights or bias")
    weight, bias = _dequantize(model, tensors[1]), _dequantize(model, tensors[2])
    if name == "FULLY_CONNECTED":
        options = tflite.FullyConnectedOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        signature = f"{name} {list(weight.shape)} {_ACTIVATIONS[options.FusedActivationFunction()]}"
    else:
        options = _CONVS[name]()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        # TFLite keeps convs OHWI and depthwise kernels 1 x H x W x C
        weight = weight.transpose(3, 0, 1, 2) if name == "DEPTHWISE_CONV_2D" else weight.transpose(0, 3, 1, 2)
        padding = "VALID" if options.Padding() == tflite.Padding.VALID else "SAME"
        if weight.shape[2:] == (1, 1) and (options.StrideH(), options.StrideW()) == (1, 1):
            padding = "SAME"  # a 1x1 stride-1 conv pads nothing either way
        signature = (
            f"{name} {list(weight.shape)} stride {options.StrideH()}x{options.StrideW()} "
            f"dilation {options.DilationHFactor()}x{options.DilationWFactor()} {padding} "
            f"{_ACTIVATIONS[options.FusedActivationFunction()]}"
        )
    return _Layer(signature, torch.from_numpy(np.ascontiguousarray(weight)), torch.from_numpy(bias))


def _dequantize(model: tflite.Model, tensor: tflite.Tensor) -> np.ndarray:
    """``scale * (q - zero_point)`` in float32, per tensor or per channel along its quantized dimension."""
    name = tensor.Name().decode()
    if tensor.Type() not in _QUANTIZED:
        raise ValueError(
            f"tensor {name!r} is {_TYPE_NAMES.get(tensor.Type())}, not 8-bit (or int32) quantized"
        )
    quantization = tensor.Quantization()
    if quantization is None or quantization.ScaleLength() == 0:
        raise ValueError(f"tensor {name!r} has no quantization scale")
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
    shape = tensor.ShapeAsNumpy().tolist()
    if isinstance(raw, int) or raw.size != np.prod(shape) * _QUANTIZED[tensor.Type()].itemsize:
        raise ValueError(f"tensor {name!r} {shape} has no or the wrong amount of data")
    values = np.frombuffer(raw.tobytes(), _QUANTIZED[tensor.Type()]).reshape(shape).astype(np.float64)
    scale = quantization.ScaleAsNumpy().astype(np.float64)
    zero_point = (
        quantization.ZeroPointAsNumpy().astype(np.float64)
        if quantization.ZeroPointLength()
        else np.zeros_like(scale)
    )
    if scale.size > 1:  # per channel
        axes = [1] * values.ndim
        axes[quantization.QuantizedDimension()] = -1
        scale, zero_point = scale.reshape(axes), zero_point.reshape(axes)
    return (scale * (values - zero_point)).astype(np.float32)


def _input_quantization(path: Path, inputs: list[tflite.Tensor]) -> tuple[float, int, int]:
    """Scale, zero point and side of the single 8-bit 1 x S x S x 3 image input."""
    shapes = [t.ShapeAsNumpy().tolist() for t in inputs]
    if len(inputs) != 1 or len(shapes[0]) != 4 or shapes[0][3] != 3 or shapes[0][1] != shapes[0][2]:
        raise ValueError(f"{path} does not take one square RGB image: inputs {shapes}")
    tensor, quantization = inputs[0], inputs[0].Quantization()
    if tensor.Type() not in (tflite.TensorType.UINT8, tflite.TensorType.INT8) or not (
        quantization and quantization.ScaleLength() == 1
    ):
        raise ValueError(
            f"{path} input is {_TYPE_NAMES.get(tensor.Type())}, not a per-tensor quantized 8-bit one"
        )
    zero_point = int(quantization.ZeroPointAsNumpy()[0]) if quantization.ZeroPointLength() else 0
    return float(quantization.ScaleAsNumpy()[0]), zero_point, shapes[0][1]


def _split(ops: list[tuple[str, object]]) -> tuple[list[_Layer], list[str], list[_Layer], list[str]]:
    """Layers and ADD activations before the global pooling, layers after it, and any op of neither kind."""
    features: list[_Layer] = []
    adds: list[str] = []
    head: list[_Layer] = []
    others: list[str] = []
    pooled = False
    for name, value in ops:
        if name == "AVERAGE_POOL_2D" and not pooled and value[1:3] == [1, 1]:
            pooled = True
        elif isinstance(value, _Layer):
            (head if pooled else features).append(value)
        elif name == "ADD" and not pooled:
            adds.append(value)
        elif not (pooled and name in _TAIL):
            others.append(name)
    if not pooled:
        others.append("no global AVERAGE_POOL_2D")
    return features, adds, head, others


def _template(
    stages: Callable[[], tuple[OrderedDict[str, nn.Module], int]],
) -> tuple[list[str], list[str], int, int]:
    """Parameter names, graph signatures, residual-add count and width of an architecture (built on meta)."""
    with torch.device("meta"):
        modules, width = stages()
    net = nn.Sequential(modules)
    names, signatures = [], []
    for name, module in net.named_modules():
        if isinstance(module, SameConv2d):
            kind = "DEPTHWISE_CONV_2D" if module.groups > 1 else "CONV_2D"
            stride = "x".join(map(str, module.stride))
            names.append(name)
            signatures.append(
                f"{kind} {list(module.weight.shape)} stride {stride} dilation 1x1 SAME "
                f"{'RELU6' if module.relu6 else 'NONE'}"
            )
    adds = sum(isinstance(m, InvertedResidual) and m.residual for m in net.modules())
    return names, signatures, adds, width


def _counts(signatures: list[str], adds: int) -> str:
    """'35 CONV_2D, 17 DEPTHWISE_CONV_2D and 10 ADD' for an error message."""
    kinds = Counter(signature.split()[0] for signature in signatures)
    return f"{kinds['CONV_2D']} CONV_2D, {kinds['DEPTHWISE_CONV_2D']} DEPTHWISE_CONV_2D and {adds} ADD"


def _recognise(
    path: Path, features: list[_Layer], adds: list[str], others: list[str]
) -> tuple[str, list[str], int]:
    """The architecture the graph matches layer for layer, its parameter names and width, or ValueError."""
    found = [layer.signature for layer in features]
    message = (
        f"{path} is not a MobileNetV1/V2 1.0 graph: found {_counts(found, len(adds))} ops before the pooling"
    )
    if others:
        message += f" and unsupported ops {sorted(set(others))}"
    expected = []
    for architecture, (label, stages) in _ARCHITECTURES.items():
        names, signatures, residuals, width = _template(stages)
        if not others and found == signatures and adds == ["NONE"] * residuals:
            return architecture, names, width
        expected.append(f"{label} has {_counts(signatures, residuals)}")
        if not others and len(found) == len(signatures):
            index = next((i for i, (a, b) in enumerate(zip(found, signatures, strict=True)) if a != b), None)
            message += (
                f"; unlike {label}, layer {index} is {found[index]} instead of {signatures[index]}"
                if index is not None
                else f"; unlike {label}, its ADD activations are {adds}"
            )
    raise ValueError(f"{message} ({'; '.join(expected)})")


def _classifier(path: Path, head: list[_Layer], width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ImageNet classifier after the pooling (a 1x1 conv or fully connected op) as a Linear's tensors."""
    if not head:
        return None
    weight = head[0].weight
    if len(head) > 1 or not head[0].signature.endswith(" NONE") or weight[0].numel() != width:
        raise ValueError(f"{path} has an unsupported classifier: {[layer.signature for layer in head]}")
    return weight.reshape(weight.shape[0], width).contiguous(), head[0].bias
