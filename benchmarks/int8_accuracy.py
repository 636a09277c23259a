"""Does the int8 copy lose accuracy? A trained checkpoint's ONNX export beside its static int8 copies.

The calibration settings are chosen on training-folder images (never on test/): `--calibration` images
calibrate each candidate, the next `--selection` images (disjoint) pick the candidate whose decisions agree
most with fp32's at the stored threshold (ties: the smallest mean |dP|). Only the chosen copy is then run on
the whole official Kermany test split, beside fp32: AUROC of both (the goal: within 0.005), accuracy at the
stored threshold, the share of equal decisions (the goal: >= 99%), |dP| and the disagreements' fp32 P.

    python benchmarks/int8_accuracy.py --ckpt logs/.../checkpoints/epoch_010.ckpt
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import CLASSES, KERMANY, ROOT, emit, kermany_sample, machine

from pneumonia_cam.evaluation.metrics import auroc
from pneumonia_cam.inference.export import export_onnx, quantize_int8
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.runtime.onnx import OnnxModel

AUROC_TOLERANCE = 0.005
MIN_AGREEMENT = 0.99
# name: (calibration method, op types left in fp32)
CANDIDATES = {
    "minmax": ("minmax", ()),
    "entropy": ("entropy", ()),
    "percentile": ("percentile", ()),
    "minmax_fp32_head": ("minmax", ("Gemm", "Einsum")),
    "percentile_fp32_head": ("percentile", ("Gemm", "Einsum")),
}


def test_split() -> tuple[list[Path], np.ndarray]:
    """Every official test image with its label (0 NORMAL, 1 PNEUMONIA), in a fixed order."""
    pairs = [
        (path, label)
        for label, name in enumerate(CLASSES)
        for path in sorted((KERMANY / "test" / name).glob("*.jpeg"))
    ]
    return [path for path, _ in pairs], np.array([label for _, label in pairs])


def positive_probs(model: OnnxModel, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """P(positive) of model-ready inputs, in batches."""
    chunks = [model.predict_proba(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(chunks)[:, model.positive_class]


def compare(fp32: np.ndarray, int8: np.ndarray, threshold: float) -> dict:
    """Decision agreement at the threshold and the |dP| of int8 against fp32."""
    diff = np.abs(int8 - fp32)
    disagree = (fp32 >= threshold) != (int8 >= threshold)
    return {
        "decision_agreement": round(float(1 - disagree.mean()), 5),
        "disagreements": int(disagree.sum()),
        "disagreeing_fp32_p": [round(float(p), 4) for p in fp32[disagree]],
        "max_abs_dp": round(float(diff.max()), 5),
        "mean_abs_dp": round(float(diff.mean()), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt", required=True, help="a trained checkpoint (with its operating-point sidecar)"
    )
    parser.add_argument("--calibration", type=int, default=128, help="training images calibrating int8")
    parser.add_argument("--selection", type=int, default=512, help="further training images choosing it")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_accuracy.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="int8_accuracy_"))
    model = InferenceModel.from_checkpoint(args.ckpt)  # auto: the stored operating point when it matches
    fp32 = OnnxModel(export_onnx(model, work / "model.onnx"), args.threads)
    threshold = fp32.threshold
    train = [path for path, _ in kermany_sample(args.calibration + args.selection, "train")]
    calibration = np.stack([fp32.prepare(path)[0] for path in train[: args.calibration]])
    selection = np.stack([fp32.prepare(path)[0] for path in train[args.calibration :]])
    fp32_selection = positive_probs(fp32, selection)

    candidates, files = {}, {}
    for name in args.candidates:
        method, keep = CANDIDATES[name]
        start = time.perf_counter()
        files[name] = quantize_int8(fp32, calibration, work / f"{name}.int8.onnx", method, keep)
        quantize_s = time.perf_counter() - start
        int8_selection = positive_probs(OnnxModel(files[name], args.threads), selection)
        candidates[name] = {
            **compare(fp32_selection, int8_selection, threshold),
            "quantize_s": round(quantize_s, 1),
        }
        candidates[name].pop("disagreeing_fp32_p")
    chosen = max(
        candidates, key=lambda n: (candidates[n]["decision_agreement"], -candidates[n]["mean_abs_dp"])
    )

    paths, labels = test_split()
    inputs = np.stack([fp32.prepare(path)[0] for path in paths])
    p_fp32 = positive_probs(fp32, inputs)
    p_int8 = positive_probs(OnnxModel(files[chosen], args.threads), inputs)
    p_torch = model.predict_proba(torch.from_numpy(inputs)).numpy()[:, fp32.positive_class]
    test = {
        "images": len(paths),
        "threshold": threshold,
        "threshold_source": fp32.metadata["operating_point"]["source"],
        "auroc_fp32": round(auroc(labels, p_fp32), 5),
        "auroc_int8": round(auroc(labels, p_int8), 5),
        "accuracy_fp32": round(float(((p_fp32 >= threshold) == labels).mean()), 5),
        "accuracy_int8": round(float(((p_int8 >= threshold) == labels).mean()), 5),
        **compare(p_fp32, p_int8, threshold),
        "max_abs_dp_onnx_fp32_vs_torch": round(float(np.abs(p_fp32 - p_torch).max()), 7),
    }
    test["auroc_diff"] = round(test["auroc_int8"] - test["auroc_fp32"], 5)
    test["meets_auroc_goal"] = abs(test["auroc_diff"]) <= AUROC_TOLERANCE
    test["meets_agreement_goal"] = test["decision_agreement"] >= MIN_AGREEMENT
    result = {
        "benchmark": "int8_accuracy",
        "settings": vars(args),
        "machine": machine(),
        "checkpoint": str(args.ckpt),
        "backbone": model.info.backbone,
        "selection": {"images": len(selection), "candidates": candidates, "chosen": chosen},
        "test": test,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
