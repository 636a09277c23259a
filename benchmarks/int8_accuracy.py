"""Does the int8 copy lose accuracy? A trained checkpoint's ONNX export beside its static int8 copies.

The int8 settings are chosen without the test split: `--calibration` images of the run's train split (its
split.csv) calibrate each candidate, `--selection` images of its validation split pick the candidate whose
probabilities stay closest to fp32's (smallest mean |dP|; the share of equal decisions at the stored threshold
is reported beside it). Only the chosen copy then runs on the whole official Kermany test split, beside fp32:
AUROC of both (the goal: within 0.005), accuracy at the stored threshold, the share of equal decisions (the
goal: >= 99%), |dP|, the disagreements' fp32 P, and each file's img/s at batch 16.

    python benchmarks/int8_accuracy.py --ckpt logs/train/runs/<run>/checkpoints/epoch_003.ckpt
"""

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import CLASSES, KERMANY, ROOT, emit, machine

from pneumonia_cam.evaluation.metrics import auroc
from pneumonia_cam.inference.export import export_onnx, quantize_int8
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.runtime.onnx import OnnxModel

AUROC_TOLERANCE = 0.005
MIN_AGREEMENT = 0.99
# name: (calibration method, what stays fp32: see pneumonia_cam.inference.export.fp32_nodes)
CANDIDATES = {
    "minmax": ("minmax", ()),
    "percentile": ("percentile", ()),
    "fp32_stem": ("minmax", ("/features/stem/",)),
    "fp32_depthwise": ("minmax", ("depthwise",)),
    "fp32_stem_depthwise": ("minmax", ("/features/stem/", "depthwise")),
}


def split_paths(split_csv: Path, split: str, n: int) -> list[Path]:
    """n images of one split of a run's split.csv, spread evenly over it (paths under the Kermany root)."""
    rows = [row for row in csv.DictReader(split_csv.open()) if row["split"] == split]
    step = max(len(rows) // n, 1)
    return [KERMANY / row["path"] for row in rows[::step][:n]]


def images_per_s(model: OnnxModel, inputs: np.ndarray, repeats: int = 3) -> float:
    """Batch-16 throughput of a file on model-ready inputs (after one warm-up call)."""
    model.predict_proba(inputs[:16])
    start = time.perf_counter()
    for _ in range(repeats):
        model.predict_proba(inputs[:16])
    return round(16 * repeats / (time.perf_counter() - start), 1)


def official_test_split() -> tuple[list[Path], np.ndarray]:
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
    parser.add_argument(
        "--split-csv", default=None, help="the run's split.csv (default: beside checkpoints/)"
    )
    parser.add_argument("--calibration", type=int, default=128, help="train-split images calibrating int8")
    parser.add_argument("--selection", type=int, default=400, help="validation images choosing the settings")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8_accuracy.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="int8_accuracy_"))
    model = InferenceModel.from_checkpoint(args.ckpt)  # auto: the stored operating point when it matches
    fp32 = OnnxModel(export_onnx(model, work / "model.onnx"), args.threads)
    threshold = fp32.threshold
    split_csv = Path(args.split_csv or Path(args.ckpt).resolve().parents[1] / "split.csv")
    calibration = np.stack([fp32.prepare(p)[0] for p in split_paths(split_csv, "train", args.calibration)])
    selection = np.stack([fp32.prepare(p)[0] for p in split_paths(split_csv, "val", args.selection)])
    fp32_selection = positive_probs(fp32, selection)

    candidates, files = {}, {}
    for name in args.candidates:
        method, keep = CANDIDATES[name]
        start = time.perf_counter()
        files[name] = quantize_int8(fp32, calibration, work / f"{name}.int8.onnx", method, keep)
        quantize_s = time.perf_counter() - start
        int8 = OnnxModel(files[name], args.threads)
        candidates[name] = {
            **compare(fp32_selection, positive_probs(int8, selection), threshold),
            "quantize_s": round(quantize_s, 1),
            "images_per_s": images_per_s(int8, selection),
        }
        candidates[name].pop("disagreeing_fp32_p")
    chosen = min(candidates, key=lambda n: candidates[n]["mean_abs_dp"])

    paths, labels = official_test_split()
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
        "images_per_s_fp32": images_per_s(fp32, inputs),
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
        "split_csv": str(split_csv),
        "selection": {"images": len(selection), "candidates": candidates, "chosen": chosen},
        "test": test,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
