"""ONNX export: logits and CAM grids against PyTorch, metadata, refusals, and the torch-free runtime."""

import json
import subprocess
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import onnx
import pytest
import torch
from helpers import KERMANY, ROOT, assert_ok, run_entry_point
from torch import nn

from benchmarks.common import reference_checkpoint
from pneumonia_cam.inference.export import METADATA_KEY, check_exportable, export_onnx, write_metadata
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.inference.onnx_model import OnnxInferenceModel
from pneumonia_cam.runtime.onnx import OnnxModel, finish_cam

needs_kermany = pytest.mark.skipif(
    not KERMANY.is_dir(), reason="../shared/data/chest_xray_kermany224 is absent"
)


def real_images(n: int) -> list[Path]:
    """n real Kermany test images, both classes."""
    files = sorted((KERMANY / "test" / "PNEUMONIA").glob("*.jpeg"))[:2] + sorted(
        (KERMANY / "test" / "NORMAL").glob("*.jpeg")
    )
    return files[:n]


def assert_parity(model: InferenceModel, exported: OnnxModel, images: list[Path]) -> None:
    """Logits within rtol 1e-3 / atol 1e-4, the same decisions, normalised CAMs within 1e-3, per batch."""
    batch = torch.stack([model.prepare(path).tensor for path in images])
    np.testing.assert_array_equal(batch.numpy(), np.stack([exported.prepare(path)[0] for path in images]))
    logits = model.forward(batch)[1]
    got_logits, got_cam = exported.forward(batch.numpy())
    np.testing.assert_allclose(got_logits, logits.numpy(), rtol=1e-3, atol=1e-4)
    probs = model.predict_proba(batch)
    np.testing.assert_array_equal(
        exported.decide(exported.probabilities(got_logits)), model.decide(probs).numpy()
    )
    for i, path in enumerate(images):
        for target in range(len(model.class_names)):
            expected = model.generate_cam(path, target_class=target, target_layer=None)
            got = finish_cam(got_cam[i, target], expected.shape)
            assert np.abs(got - expected).max() <= 1e-3, (path.name, target)


@needs_kermany
@pytest.mark.parametrize(
    "backbone",
    [
        "resnet18",
        pytest.param("resnet50", marks=pytest.mark.slow),
        pytest.param("resnet152", marks=pytest.mark.slow),
        pytest.param("densenet121", marks=pytest.mark.slow),
    ],
)
def test_export_parity_on_real_images(tmp_path, backbone):
    ckpt = reference_checkpoint(tmp_path / f"{backbone}.ckpt", backbone, 224)
    model = InferenceModel.from_checkpoint(ckpt)
    exported = OnnxModel(export_onnx(model, tmp_path / "model.onnx"))
    for n in (1, 3):
        assert_parity(model, exported, real_images(n))
    assert exported.predict(real_images(1)[0])[0] == model.predict(real_images(1)[0])[0]


def test_metadata_travels_in_the_file_and_the_sidecar(smoke_checkpoint, tmp_path):
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    path = export_onnx(model, tmp_path / "m.onnx")
    embedded = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])
    assert embedded == json.loads(Path(f"{path}.json").read_text())
    assert embedded["class_names"] == list(model.class_names)
    assert embedded["checkpoint_sha256"] == model.info.checkpoint_sha256
    assert (embedded["threshold"], embedded["temperature"]) == (
        model.operating_point.threshold,
        model.operating_point.temperature,
    )
    assert embedded["image_size"] == 64 and embedded["opset"] == 17 and embedded["torch"] == torch.__version__
    assert embedded["mean"] == pytest.approx([0.485, 0.456, 0.406])
    runtime = OnnxModel(path)
    image = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (80, 1))
    np.testing.assert_allclose(runtime.prepare(image)[0], model.prepare(image).tensor.numpy(), atol=1e-6)


def test_export_refuses_what_it_cannot_represent(smoke_checkpoint, tmp_path):
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    with pytest.raises(ValueError, match=r"format='torchscript' is not supported"):
        check_exportable(model, "torchscript", 17)
    with pytest.raises(ValueError, match="opset 13 is too old"):
        check_exportable(model, "onnx", 13)
    transforms = model.preprocessor.transform.transforms
    transforms.insert(0, A.CLAHE(clip_limit=(1.0, 4.0), p=1.0))  # a sampled clip limit: not reproducible
    with pytest.raises(ValueError, match="eval step CLAHE has no exact torch-free replay"):
        check_exportable(model, "onnx", 17)
    del transforms[0]
    model.net.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="global-average-pool \\+ linear head"):
        export_onnx(model, tmp_path / "x.onnx")


def test_runtime_imports_no_torch(smoke_checkpoint, tmp_path):
    """A hospital runtime needs onnxruntime, numpy and OpenCV: the runtime class never imports torch."""
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    path = export_onnx(model, tmp_path / "m.onnx")
    image = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    np.save(tmp_path / "image.npy", image)
    code = (
        "import sys, numpy as np; from pneumonia_cam.runtime import OnnxModel; "
        f"m = OnnxModel('{path}'); label, p = m.predict(np.load('{tmp_path / 'image.npy'}')); "
        f"cam = m.generate_cam(np.load('{tmp_path / 'image.npy'}')); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(label, round(p, 6), cam.shape)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    label, probability = model.predict(image)
    assert result.stdout.split()[:2] == [label, str(round(probability, 6))]


def synthetic_pngs(folder: Path, n: int, seed: int) -> Path:
    """n grey PNGs like the smoke model's data (a bright blob on noise) in `folder`."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 60, (96, 80), dtype=np.uint8)
        if i % 2:
            cv2.circle(image, (int(rng.integers(20, 60)), int(rng.integers(20, 76))), 15, 230, -1)
        cv2.imwrite(str(folder / f"{i:02d}.png"), image)
    return folder


@pytest.mark.slow
def test_export_cli_with_int8_copy(smoke_checkpoint, tmp_path):
    """fp32 file + sidecar, and a calibrated int8 copy within |dP| 0.02 of PyTorch on images it never saw."""
    calibration = synthetic_pngs(tmp_path / "calibration", 16, seed=0)
    out = tmp_path / "out" / "model.onnx"
    common = [f"ckpt_path={smoke_checkpoint}", f"output={out}", f"hydra.run.dir={tmp_path}", "quantize=int8"]
    result = run_entry_point("export.py", [*common, f"calibration={calibration}"], timeout=300)
    assert_ok(result)
    assert out.stat().st_size > 1000
    assert json.loads(out.with_suffix(".onnx.json").read_text())["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert "max_abs_logit_diff" in result.stdout + result.stderr
    quantized = OnnxModel(out.with_suffix(".int8.onnx"))
    assert quantized.metadata["quantization"]["calibration_images"] == 16
    assert OnnxInferenceModel.from_checkpoint(quantized.path, threads=1).precision == "int8"
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(quantized.path)).graph.node)
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    unseen = sorted(synthetic_pngs(tmp_path / "unseen", 8, seed=1).glob("*.png"))
    expected = model.predict_proba(torch.stack([model.prepare(p).tensor for p in unseen])).numpy()
    got = quantized.predict_proba(np.stack([quantized.prepare(p)[0] for p in unseen]))
    assert np.abs(got - expected).max() <= 0.02
    refused = run_entry_point(
        "export.py",
        [*common, f"calibration={calibration}", "max_prob_diff=0", "check_images=0"],
        timeout=300,
    )
    assert refused.returncode != 0 and "int8 copy refused" in refused.stderr
    assert not out.with_suffix(".int8.onnx").exists() and not out.with_suffix(".int8.onnx.json").exists()


def test_onnx_backend_keeps_the_operating_point_and_refuses_torch_options(smoke_checkpoint, tmp_path):
    """The server's ONNX backend: the checkpoint's operating point and identity, precise refusals."""
    model = InferenceModel.from_checkpoint(smoke_checkpoint)
    path = export_onnx(model, tmp_path / "m.onnx")
    onnx_model = OnnxInferenceModel.from_checkpoint(path, threads=1)
    assert onnx_model.operating_point == model.operating_point
    assert onnx_model.info.checkpoint_sha256 == model.info.checkpoint_sha256
    assert OnnxInferenceModel.from_checkpoint(path, "default").operating_point.threshold == 0.5
    with pytest.raises(ValueError, match="torch options"):
        onnx_model.configure("bf16")
    with pytest.raises(ValueError, match="needs backend=torch"):
        onnx_model.check_cam("gradcam", "layer4")
    with pytest.raises(ValueError, match="needs backend=torch"):
        onnx_model.check_cam("cam", "layer3")
    onnx_model.check_cam("cam", "layer4")
    with pytest.raises(ValueError, match="runs on the CPU"):
        onnx_model.to("cuda")
    old = {k: v for k, v in onnx_model.runtime.metadata.items() if k not in ("operating_point", "cam_layer")}
    write_metadata(path, old)  # a file exported before metadata format 2
    with pytest.raises(ValueError, match="export its checkpoint again"):
        OnnxInferenceModel.from_checkpoint(path)
