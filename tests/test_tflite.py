"""TFLite MobileNet import: 'SAME' padding, the flatbuffer reader, and the reference interpreter."""

import time
from pathlib import Path

import cv2
import flatbuffers
import numpy as np
import pytest
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from pneumonia_cam.models.mobilenet import (
    SameConv2d,
    mobilenet_v1_stages,
    mobilenet_v2_stages,
    same_padding,
)
from pneumonia_cam.models.weights.tflite import TFLiteWeights, read_tflite

TFLITE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "imagenet_tflite"
V2_FILE = TFLITE_DIR / "mobilenet_v2_1.0_224_quant.tflite"
V1_FILE = TFLITE_DIR / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
# top-1 of the reference interpreter on the folder's photos, and the label line it names
PHOTOS = {
    "cat.bmp": (286, "Egyptian cat"),
    "bird.bmp": (20, "chickadee"),
    "grace_hopper.bmp": (653, "military uniform"),
}
# Measured on the three photos (torch float vs the 8-bit interpreter, dequantized): the interpreter rounds
# every activation to 8 bits, so the two differ by a few quantization steps. Bounds are ~1.6x the worst case.
LOGIT_ERROR = 0.6  # measured 0.375 (cat); the logits' step is 0.099
PROBABILITY_ERROR = 0.05  # measured 0.029 (grace_hopper); the softmax output's step is 1 / 256
EMBEDDING_ERROR = 0.5  # measured 0.311 (cat) on values up to 4.8; the embedding's step is 6 / 255
EMBEDDING_COSINE = 0.998  # measured at least 0.99934
STAGES = {
    "mobilenet_v2": (mobilenet_v2_stages, ("stem", "stage1", "stage2", "stage3", "stage4", "head"), 1280),
    "mobilenet_v1": (mobilenet_v1_stages, ("stem", "stage1", "stage2", "stage3", "stage4"), 1024),
}
needs_files = pytest.mark.skipif(not TFLITE_DIR.is_dir(), reason=f"no TFLite weights at {TFLITE_DIR}")


def _net(architecture: str, weights: TFLiteWeights | None = None) -> nn.Sequential:
    """The architecture's feature extractor in eval mode, with the file's weights if given."""
    net = nn.Sequential(STAGES[architecture][0]()[0]).eval()
    if weights is not None:
        net.load_state_dict(weights.features, strict=True)
    return net


def _photo(name: str) -> np.ndarray:
    """The photo as the interpreter takes it: RGB uint8 224 x 224 x 3."""
    image = cv2.cvtColor(cv2.imread(str(TFLITE_DIR / name)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (224, 224)) if image.shape[:2] != (224, 224) else image


def _torch_input(image: np.ndarray, weights: TFLiteWeights) -> torch.Tensor:
    """The same uint8 image in the file's input scaling, NCHW float."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    return (x - weights.input_zero_point) * weights.input_scale


def _interpreter(path: Path, **kwargs: bool) -> object:
    """The reference TFLite interpreter (a test-only dependency), ready to run."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(path), **kwargs)
    interpreter.allocate_tensors()
    return interpreter


def _dequantized(interpreter: object, detail: dict) -> np.ndarray:
    """A uint8 tensor of the interpreter as float: scale * (q - zero_point)."""
    scale, zero_point = detail["quantization"]
    return scale * (interpreter.get_tensor(detail["index"]).astype(np.float64) - zero_point)


def test_same_padding_by_hand() -> None:
    # 4x4 input, 3x3 stride 2: 'SAME' pads one row and column after only, so the first window starts at 0
    conv = SameConv2d(1, 1, 3, 2, relu6=False)
    nn.init.ones_(conv.weight)
    nn.init.zeros_(conv.bias)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = torch.tensor(
        [
            [0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11],
            [8 + 9 + 10 + 12 + 13 + 14, 10 + 11 + 14 + 15],
        ]
    )
    assert torch.equal(conv(x)[0, 0], expected.float())
    assert not torch.equal(F.conv2d(x, conv.weight, stride=2, padding=1)[0, 0], expected.float())
    # odd sizes pad one pixel each side, like torch's symmetric padding; stride 1 always does
    odd = torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(conv(odd), F.conv2d(odd, conv.weight, conv.bias, stride=2, padding=1))
    assert [same_padding(n, 3, 2) for n in (224, 225, 7)] == [(0, 1), (1, 1), (1, 1)]
    assert same_padding(7, 3, 1) == (1, 1) and same_padding(7, 1, 1) == (0, 0)


def test_relu6_only_where_the_graph_has_it() -> None:
    x = torch.full((1, 1, 1, 1), 10.0)
    fused, linear = SameConv2d(1, 1), SameConv2d(1, 1, relu6=False)
    for conv in (fused, linear):
        nn.init.ones_(conv.weight)
        nn.init.zeros_(conv.bias)
    assert fused(x).item() == 6.0 and linear(x).item() == 10.0


@pytest.mark.parametrize("architecture", sorted(STAGES))
def test_stages_and_feature_map_shapes(architecture: str) -> None:
    stages, width = STAGES[architecture][0]()
    assert (tuple(stages), width) == STAGES[architecture][1:]
    assert all(list(stage.parameters()) for stage in stages.values())  # no parameter-free wrappers
    net = nn.Sequential(stages).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, width, 7, 7)
        assert net(torch.randn(2, 3, 128, 128)).shape == (2, width, 4, 4)


class _Writer:
    """Just enough of a TFLite flatbuffer writer for int8, per-channel quantized MobileNet-shaped graphs."""

    CODES = ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "FULLY_CONNECTED")

    def __init__(self) -> None:
        self.tensors: list[tuple[list[int], int, int, np.ndarray, np.ndarray, int]] = []
        self.buffers: list[bytes] = [b""]  # buffer 0 is the empty sentinel by convention
        self.ops: list[tuple[str, list[int], list[int], dict[str, int]]] = []

    def tensor(
        self, shape: list[int], data: np.ndarray | None = None, scale: np.ndarray | None = None, axis: int = 0
    ) -> int:
        """Add an int8 activation (scale 0.05, zero point -3) or an int8 / int32 constant; give its index."""
        buffer, kind = 0, tflite.TensorType.INT8
        if data is not None:
            self.buffers.append(data.tobytes())
            buffer = len(self.buffers) - 1
            kind = tflite.TensorType.INT32 if data.dtype == np.int32 else tflite.TensorType.INT8
        scale = np.asarray([0.05] if scale is None else scale, np.float32)
        zero_point = np.full(len(scale), 0 if data is not None else -3, np.int64)
        self.tensors.append((shape, kind, buffer, scale, zero_point, axis))
        return len(self.tensors) - 1

    def weights(
        self, weight: np.ndarray, bias: np.ndarray, axis: int = 0
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Quantize a TFLite-layout weight per channel of `axis` and its bias; give the floats they hold."""
        others = tuple(i for i in range(weight.ndim) if i != axis)
        scale = (np.abs(weight).max(axis=others) / 127 + 1e-8).astype(np.float32)
        shape = [-1 if i == axis else 1 for i in range(weight.ndim)]
        q = np.round(weight / scale.reshape(shape)).astype(np.int8)
        bias_scale = scale * np.float32(0.05)  # input scale times weight scale, as TFLite's converter sets it
        qb = np.round(bias / bias_scale).astype(np.int32)
        indices = [self.tensor(list(q.shape), q, scale, axis), self.tensor([len(qb)], qb, bias_scale)]
        dequantized = (scale.astype(np.float64).reshape(shape) * q).astype(np.float32)
        return (
            indices,
            torch.from_numpy(dequantized),
            torch.from_numpy((bias_scale.astype(np.float64) * qb).astype(np.float32)),
        )

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> None:
        """Serialise the model (tables are written children first, as flatbuffers require)."""
        b = flatbuffers.Builder(1024)

        def ints(values: list[int] | np.ndarray, dtype: type = np.int32) -> int:
            return b.CreateNumpyVector(np.asarray(values, dtype))

        def table(prefix: str, **fields: int) -> int:
            getattr(tflite, f"{prefix}Start")(b)
            for field, value in fields.items():
                getattr(tflite, f"{prefix}Add{field}")(b, value)
            return getattr(tflite, f"{prefix}End")(b)

        def vector(prefix: str, field: str, items: list[int]) -> int:
            getattr(tflite, f"{prefix}Start{field}Vector")(b, len(items))
            for item in reversed(items):
                b.PrependUOffsetTRelative(item)
            return b.EndVector()

        buffers = [
            table("Buffer", **({"Data": ints(np.frombuffer(d, np.uint8), np.uint8)} if d else {}))
            for d in self.buffers
        ]
        tensors = []
        for i, (shape, kind, buffer, scale, zero_point, axis) in enumerate(self.tensors):
            fields = {"Scale": b.CreateNumpyVector(scale), "ZeroPoint": b.CreateNumpyVector(zero_point)}
            quantization = table("QuantizationParameters", **fields, QuantizedDimension=axis)
            name, dims = b.CreateString(f"t{i}"), ints(shape)
            tensors.append(
                table("Tensor", Name=name, Shape=dims, Type=kind, Buffer=buffer, Quantization=quantization)
            )
        ops = []
        for name, ins, outs, options in self.ops:
            prefix = {
                "CONV_2D": "Conv2DOptions",
                "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
                "AVERAGE_POOL_2D": "Pool2DOptions",
                "FULLY_CONNECTED": "FullyConnectedOptions",
            }[name]
            fields = {"Inputs": ints(ins), "Outputs": ints(outs), "BuiltinOptions": table(prefix, **options)}
            ops.append(
                table(
                    "Operator",
                    OpcodeIndex=self.CODES.index(name),
                    BuiltinOptionsType=getattr(tflite.BuiltinOptions, prefix),
                    **fields,
                )
            )
        codes = [getattr(tflite.BuiltinOperator, name) for name in self.CODES]
        codes = [
            table("OperatorCode", DeprecatedBuiltinCode=code, BuiltinCode=code, Version=1) for code in codes
        ]
        graph_fields = {
            "Tensors": vector("SubGraph", "Tensors", tensors),
            "Operators": vector("SubGraph", "Operators", ops),
        }
        graph = table("SubGraph", **graph_fields, Inputs=ints(inputs), Outputs=ints(outputs))
        model_fields = {
            "OperatorCodes": vector("Model", "OperatorCodes", codes),
            "Subgraphs": vector("Model", "Subgraphs", [graph]),
        }
        b.Finish(
            table("Model", Version=3, **model_fields, Buffers=vector("Model", "Buffers", buffers)),
            file_identifier=b"TFL3",
        )
        path.write_bytes(b.Output())


def _write_mobilenet_v1(
    path: Path, classes: int = 5, stride_of_first: int = 2, layers: int | None = None, size: int = 32
) -> dict:
    """A random MobileNetV1 (optionally altered) with a fully connected classifier, as an int8 TFLite file;
    returns the features' and classifier's float values the reader should give back."""
    torch.manual_seed(0)
    net = nn.Sequential(mobilenet_v1_stages()[0])
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, SameConv2d)][:layers]
    writer, expected = _Writer(), {}
    x = writer.tensor([1, size, size, 3])
    side = size
    for i, (name, conv) in enumerate(convs):
        depthwise, stride = conv.groups > 1, stride_of_first if i == 0 else conv.stride[0]
        weight = conv.weight.detach().numpy()
        # torch OIHW -> TFLite OHWI, depthwise C x 1 x H x W -> 1 x H x W x C
        weight = weight.transpose(1, 2, 3, 0) if depthwise else weight.transpose(0, 2, 3, 1)
        indices, w, expected[f"{name}.bias"] = writer.weights(
            weight, conv.bias.detach().numpy(), 3 if depthwise else 0
        )
        expected[f"{name}.weight"] = w.permute(3, 0, 1, 2) if depthwise else w.permute(0, 3, 1, 2)
        side = -(-side // stride)
        y = writer.tensor([1, side, side, conv.out_channels])
        options = {"StrideH": stride, "StrideW": stride, "DilationHFactor": 1, "DilationWFactor": 1}
        options["FusedActivationFunction"] = tflite.ActivationFunctionType.RELU6
        options |= {"DepthMultiplier": 1} if depthwise else {}
        writer.ops.append(("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", [x, *indices], [y], options))
        x = y
    pooled = writer.tensor([1, 1, 1, convs[-1][1].out_channels])
    pool = {
        "FilterHeight": side,
        "FilterWidth": side,
        "StrideH": 1,
        "StrideW": 1,
        "Padding": tflite.Padding.VALID,
    }
    writer.ops.append(("AVERAGE_POOL_2D", [x], [pooled], pool))
    linear = nn.Linear(convs[-1][1].out_channels, classes)
    indices, weight, bias = writer.weights(linear.weight.detach().numpy(), linear.bias.detach().numpy())
    expected["classifier"] = (weight, bias)
    logits = writer.tensor([1, classes])
    writer.ops.append(("FULLY_CONNECTED", [pooled, *indices], [logits], {}))
    writer.write(path, [0], [logits])
    return expected


def test_reads_a_per_channel_int8_graph(tmp_path: Path) -> None:
    expected = _write_mobilenet_v1(tmp_path / "v1.tflite")
    weights = read_tflite(tmp_path / "v1.tflite")
    assert (weights.architecture, weights.input_size, weights.input_zero_point) == ("mobilenet_v1", 32, -3)
    assert weights.input_scale == float(np.float32(0.05))  # stored as float32
    classifier = expected.pop("classifier")
    assert weights.features.keys() == expected.keys() == _net("mobilenet_v1").state_dict().keys()
    for key, value in expected.items():
        torch.testing.assert_close(weights.features[key], value, rtol=0, atol=0, msg=key)
    torch.testing.assert_close(weights.classifier, classifier, rtol=0, atol=0)
    _net("mobilenet_v1", weights)  # loads strictly


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stride_of_first": 1}, "unlike MobileNetV1 1.0, layer 0 is CONV_2D [32, 3, 3, 3] stride 1x1"),
        ({"layers": 5}, "found 3 CONV_2D, 2 DEPTHWISE_CONV_2D and 0 ADD ops before the pooling"),
    ],
)
def test_refuses_other_graphs(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "other.tflite"
    _write_mobilenet_v1(path, **change)
    with pytest.raises(ValueError, match=r"other\.tflite is not a MobileNetV1/V2 1\.0 graph") as error:
        read_tflite(path)
    assert message in str(error.value)


def test_refuses_missing_and_non_tflite_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.tflite"):
        read_tflite(tmp_path / "absent.tflite")
    (tmp_path / "text.tflite").write_text("not a flatbuffer at all")
    with pytest.raises(ValueError, match=r"text\.tflite is not a TFLite file"):
        read_tflite(tmp_path / "text.tflite")
    _write_mobilenet_v1(tmp_path / "whole.tflite")
    (tmp_path / "cut.tflite").write_bytes((tmp_path / "whole.tflite").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"cut\.tflite is not a readable TFLite file"):
        read_tflite(tmp_path / "cut.tflite")


@needs_files
@pytest.mark.parametrize(
    ("path", "architecture", "classes"), [(V2_FILE, "mobilenet_v2", 1001), (V1_FILE, "mobilenet_v1", None)]
)
def test_reads_googles_files(path: Path, architecture: str, classes: int | None) -> None:
    start = time.perf_counter()
    weights = read_tflite(path)
    assert time.perf_counter() - start < 10  # about 0.2-0.4 s here
    assert (weights.architecture, weights.input_size, weights.input_zero_point, weights.input_scale) == (
        architecture,
        224,
        128,
        1 / 128,
    )
    _net(architecture, weights)  # loads strictly
    if classes is None:
        assert weights.classifier is None
    else:
        assert weights.classifier[0].shape == (classes, 1280) and weights.classifier[1].shape == (classes,)


@needs_files
def test_mobilenet_v2_matches_the_interpreter() -> None:
    weights = read_tflite(V2_FILE)
    net = _net("mobilenet_v2", weights)
    labels = (TFLITE_DIR / "imagenet_labels.txt").read_text().splitlines()
    interpreter = _interpreter(V2_FILE, experimental_preserve_all_tensors=True)
    # the graph ends in SOFTMAX; its input (the squeezed 1x1 classifier conv) holds the logits
    details = {detail["name"]: detail for detail in interpreter.get_tensor_details()}
    output = interpreter.get_output_details()[0]
    assert output["name"] == "MobilenetV2/Predictions/Softmax"
    for name, (index, label) in PHOTOS.items():
        image = _photo(name)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        probabilities = _dequantized(interpreter, output)[0]
        logits = _dequantized(interpreter, details["MobilenetV2/Logits/Squeeze1"])[0]
        with torch.no_grad():
            embedding = net(_torch_input(image, weights)).mean((2, 3))
            ours = F.linear(embedding, *weights.classifier)[0].double()
        assert ours.argmax().item() == probabilities.argmax() == logits.argmax() == index, name
        assert labels[index] == label
        assert np.abs(ours.numpy() - logits).max() < LOGIT_ERROR, name
        assert np.abs(ours.softmax(0).numpy() - probabilities).max() < PROBABILITY_ERROR, name


@needs_files
def test_mobilenet_v1_embedding_matches_the_interpreter() -> None:
    weights = read_tflite(V1_FILE)
    net = _net("mobilenet_v1", weights)
    interpreter = _interpreter(V1_FILE)
    output = interpreter.get_output_details()[0]
    for name in PHOTOS:
        image = _photo(name)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        reference = _dequantized(interpreter, output).reshape(-1)
        with torch.no_grad():
            ours = net(_torch_input(image, weights)).mean((2, 3))[0].double().numpy()
        cosine = ours @ reference / (np.linalg.norm(ours) * np.linalg.norm(reference))
        assert ours.shape == (1024,)
        assert np.abs(ours - reference).max() < EMBEDDING_ERROR, name
        assert cosine > EMBEDDING_COSINE, name


@pytest.mark.parametrize("architecture", sorted(STAGES))
def test_onnx_export_matches_onnxruntime(tmp_path: Path, architecture: str) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = _net(architecture)
    x = torch.randn(2, 3, 224, 224)
    torch.onnx.export(net, (x,), tmp_path / "net.onnx", opset_version=17, dynamo=False, input_names=["x"])
    session = onnxruntime.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = net(x).numpy()
    (got,) = session.run(None, {"x": x.numpy()})
    assert got.shape == expected.shape == (2, STAGES[architecture][2], 7, 7)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
