"""Export a checkpoint: `python src/export.py ckpt_path=... format=onnx output=model.onnx`.

Writes the file and its metadata sidecar, then runs it in ONNX Runtime beside PyTorch on random inputs and
refuses the result (exit 1) when logits or decisions differ beyond rtol 1e-3 / atol 1e-4.
"""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import hydra  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.data.inputs import list_inputs  # noqa: E402
from pneumonia_cam.inference.export import check_exportable, export_onnx, quantize_int8  # noqa: E402
from pneumonia_cam.inference.model import InferenceModel, tta_options  # noqa: E402
from pneumonia_cam.runtime.onnx import OnnxModel  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, task_wrapper  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


def check_parity(model: InferenceModel, exported: OnnxModel, n: int, seed: int = 0) -> float:
    """Largest |logit difference| of ORT vs PyTorch on n random model inputs; raises beyond tolerance."""
    size = model.info.image_size if model.info else 224
    inputs = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32))
    expected = model.forward(inputs)[1].float().numpy()
    got, _ = exported.session.run(["logits", "cam"], {"image": inputs.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4, err_msg="ONNX Runtime vs PyTorch logits")
    return float(np.abs(got - expected).max())


def quantize(model: InferenceModel, exported: OnnxModel, cfg: DictConfig) -> dict:
    """The int8 copy beside the exported file, refused when its probabilities on the calibration images stray
    too far from PyTorch's (both files of the refused copy are removed)."""
    if cfg.quantize != "int8":
        raise ValueError(f"quantize={cfg.quantize!r}; the only option is int8 (or null)")
    if cfg.calibration is None:
        raise ValueError("quantize=int8 needs calibration=<folder, image or CSV of training images>")
    images = list_inputs(cfg.calibration)[: cfg.calibration_count]
    inputs = np.stack([exported.prepare(image)[0] for image in images])  # decoded once, for both sides
    output = quantize_int8(
        exported,
        inputs,
        exported.path.with_suffix(".int8.onnx"),
        cfg.calibration_method,
        tuple(cfg.keep_fp32),
    )
    expected = model.predict_proba(torch.from_numpy(inputs)).numpy()
    got = OnnxModel(output).predict_proba(inputs)
    diff = float(np.abs(got - expected).max())
    if diff > cfg.max_prob_diff:
        output.unlink()
        output.with_suffix(output.suffix + ".json").unlink()
        raise ValueError(
            f"int8 copy refused: max |dP| {diff:.4f} on {len(images)} calibration images"
            f" > max_prob_diff={cfg.max_prob_diff}"
        )
    return {"int8_output": str(output), "int8_max_abs_prob_diff": diff, "calibration_images": len(images)}


@task_wrapper
def export(cfg: DictConfig) -> tuple[dict, dict]:
    """Load, check what can be exported, write, reload in ONNX Runtime and compare."""
    # the views become part of the graph, with the operating point chosen with them
    model = InferenceModel.from_checkpoint(cfg.ckpt_path, cfg.operating_point, tta=tta_options(cfg))
    check_exportable(model, cfg.format, cfg.opset)  # the CLI picks the format; export_onnx re-checks onnx
    path = export_onnx(model, cfg.output, cfg.opset)
    result = {"output": str(path), "metadata": f"{path}.json"}
    exported = OnnxModel(path)
    if cfg.check_images:
        result["max_abs_logit_diff"] = check_parity(model, exported, cfg.check_images)
    if cfg.quantize is not None:
        result.update(quantize(model, exported, cfg))
    log.info(f"Exported {cfg.ckpt_path} -> {path} ({result})")
    return result, {"cfg": cfg, "model": model}


@hydra.main(version_base="1.3", config_path="../configs", config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    export(cfg)


if __name__ == "__main__":
    main()
