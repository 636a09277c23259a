"""The int8 ONNX copy: its calibration settings, the op types it keeps in fp32, a server that says int8."""

import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from helpers import ROOT, compose_config, softened_copy, wait_ready
from hydra.core.global_hydra import GlobalHydra

from pneumonia_cam.inference.export import export_onnx, fp32_nodes, quantize_int8
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.runtime.onnx import OnnxModel
from pneumonia_cam.serving.app import create_app

sys.path.insert(0, str(ROOT / "benchmarks"))
from int8_accuracy import compare


def blob_image(seed: int) -> np.ndarray:
    """A grey 96 x 128 image with a bright disc of varying size and brightness, seeded."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (96, 128), dtype=np.uint8)
    cv2.circle(image, (40 + seed % 40, 48), 6 + seed % 20, int(120 + seed * 7 % 130), -1)
    return image


@pytest.fixture(scope="module")
def exported(smoke_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    """The softened smoke model (probabilities off 0 and 1) exported to ONNX."""
    folder = tmp_path_factory.mktemp("int8")
    model = InferenceModel.from_checkpoint(softened_copy(smoke_checkpoint, folder / "soft.ckpt"))
    return OnnxModel(export_onnx(model, folder / "soft.onnx"))


@pytest.fixture(scope="module")
def calibration(exported: OnnxModel) -> np.ndarray:
    """Sixteen model-ready calibration inputs."""
    return np.stack([exported.prepare(blob_image(seed))[0] for seed in range(16)])


def producers(path: Path) -> tuple[onnx.GraphProto, dict[str, str]]:
    """The graph and, for each tensor, the op type of the node that makes it."""
    graph = onnx.load(str(path)).graph
    return graph, {output: node.op_type for node in graph.node for output in node.output}


def test_int8_copy_quantizes_convs_and_keeps_named_op_types_fp32(exported, calibration, tmp_path):
    """Every Conv takes int8 weights; with keep_fp32 the head's Gemm and the CAM's Einsum keep float weights.

    (Their one activation input, the last feature map, still arrives through Q/DQ: the convs produce it.)
    """
    plain = quantize_int8(exported, calibration, tmp_path / "plain.int8.onnx")
    kept = quantize_int8(exported, calibration, tmp_path / "kept.int8.onnx", "percentile", ("Gemm", "Einsum"))
    for path, fp32_ops in ((plain, set()), (kept, {"Gemm", "Einsum"})):
        graph, made_by = producers(path)
        floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
        convs = [node for node in graph.node if node.op_type == "Conv"]
        assert convs and all(made_by.get(node.input[1]) == "DequantizeLinear" for node in convs)
        heads = [node for node in graph.node if node.op_type in {"Gemm", "Einsum"}]
        assert sorted(node.op_type for node in heads) == ["Einsum", "Gemm"]
        for node in heads:
            dequantized = [made_by.get(name) == "DequantizeLinear" for name in node.input]
            float_weights = [name in floats for name in node.input]
            if node.op_type in fp32_ops:  # the activation via DQ, every weight a float tensor
                assert sum(dequantized) == 1 and sum(float_weights) == len(node.input) - 1, node.name
            else:
                assert all(dequantized) and not any(float_weights), node.name
    assert OnnxModel(plain).metadata["quantization"] == {
        "type": "int8 static QDQ, per-channel weights",
        "calibration_images": 16,
        "calibration_method": "minmax",
        "fp32": [],
    }
    meta = OnnxModel(kept).metadata["quantization"]
    assert (meta["calibration_method"], meta["fp32"]) == ("percentile", ["Einsum", "Gemm"])
    with pytest.raises(ValueError, match="calibration method 'kmeans'; choose one of"):
        quantize_int8(exported, calibration, tmp_path / "bad.int8.onnx", "kmeans")


def test_fp32_nodes_by_op_type_depthwise_and_module_path():
    """What keep_fp32 names: an op type, grouped convs (`depthwise`), or every node under a module path."""
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Conv", ["x", "w"], ["a"], name="/features/stem/conv", group=1),
            onnx.helper.make_node("Conv", ["a", "w2"], ["b"], name="/features/stage1/dw", group=8),
            onnx.helper.make_node("Conv", ["b", "w3"], ["c"], name="/features/stage1/pw"),
            onnx.helper.make_node("Gemm", ["c", "w4"], ["y"], name="/fc/Gemm"),
        ],
        "g",
        [],
        [],
    )
    assert fp32_nodes(graph, ()) == []
    assert fp32_nodes(graph, ("depthwise",)) == ["/features/stage1/dw"]
    assert fp32_nodes(graph, ("/features/stem/", "Gemm")) == ["/features/stem/conv", "/fc/Gemm"]
    assert fp32_nodes(graph, ("/features/stage1/",)) == ["/features/stage1/dw", "/features/stage1/pw"]
    assert fp32_nodes(graph, ("Conv",)) == [
        "/features/stem/conv",
        "/features/stage1/dw",
        "/features/stage1/pw",
    ]


def test_server_says_which_precision_answered(exported, calibration, tmp_path):
    """An int8 file's server answers precision int8 with the int8 file's own probabilities; fp32 says fp32."""
    int8 = quantize_int8(exported, calibration, tmp_path / "soft.int8.onnx")
    data = cv2.imencode(".png", blob_image(3))[1].tobytes()
    for path, precision in ((exported.path, "fp32"), (int8, "int8")):
        runtime = OnnxModel(path)
        expected = runtime.predict_proba(runtime.prepare(blob_image(3))[0][None])[0]
        cfg = compose_config(
            "serve.yaml", [f"ckpt_path={path}", "backend=onnxruntime", "extras.print_config=false"]
        )
        GlobalHydra.instance().clear()
        with TestClient(create_app(cfg)) as client:
            wait_ready(client)
            assert client.get("/v1/model").json()["precision"] == precision
            body = client.post("/v1/predict", files={"file": ("x.png", data)}).json()
        assert (body["backend"], body["precision"]) == ("onnxruntime", precision)
        got = [body["probabilities"][name] for name in runtime.class_names]
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        assert 0.01 < got[1] < 0.99  # the softened model: a probability a rounding could move


def test_compare_counts_disagreements_at_the_threshold():
    """Agreement, |dP| and the disagreeing fp32 probabilities, by hand: P >= threshold is positive."""
    fp32 = np.array([0.10, 0.49, 0.50, 0.90, 0.70])
    int8 = np.array([0.12, 0.51, 0.49, 0.90, 0.69])
    result = compare(fp32, int8, threshold=0.5)
    assert result["disagreements"] == 2 and result["decision_agreement"] == pytest.approx(0.6)
    assert result["disagreeing_fp32_p"] == [0.49, 0.5]
    assert result["max_abs_dp"] == pytest.approx(0.02) and result["mean_abs_dp"] == pytest.approx(0.012)
