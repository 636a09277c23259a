"""MobileNetV2 throughput: Google's uint8 TFLite file in its reference interpreter beside what we make of it.

    python benchmarks/mobilenet_throughput.py                 # full run: ~2 min on 2 idle cores
    python benchmarks/mobilenet_throughput.py --n 8 --repeats 2 --out /tmp/mnv2_small.json   # smoke test

One process, the same real images (Kermany test JPEGs, 224 px, grey replicated to RGB) and the same thread
count (--threads) for every side:

  tflite_uint8        ai-edge-litert's Interpreter on mobilenet_v2_1.0_224_quant.tflite (XNNPACK, its default
                      delegate), uint8 NHWC in, dequantized softmax out; batch 1 only (the graph's Reshape
                      is fixed to one image, so the delegate refuses a resized input)
  torch_fp32          the file imported by pneumonia_cam/models/weights/tflite.py: features + global average
                      pool + the file's 1001-class classifier + softmax, eval, inference_mode; the same uint8
                      images scaled by the file's input zero point and scale inside the timed call
  onnx_fp32/onnx_int8 the project's deployment path for a MobileNetV2 pneumonia model: a checkpoint whose
                      backbone holds the imported weights (its 2-class head is random, seed 0: throughput does
                      not depend on its values), export_onnx, OnnxModel, and quantize_int8 calibrated on
                      --calibration training images; inputs are OnnxModel.prepare of the same grey images
                      (the exported eval transform: CLAHE + the file's input scaling), outside the timing

Threads: torch intra-op = ORT intra-op = interpreter = --threads, one inter-op thread, ORT spinning off. Each
side gets --warmup untimed calls, then --repeats passes over the --n images (batches of --batch wrap around to
the first images when --n is not a multiple), the sides taking turns pass by pass so that a busy machine
slows them alike. Latency is per call (p50 / p95 over all timed calls); images/s = images / summed call time.
Agreement: torch vs interpreter (top-1, max |dprob| over the 1001 classes), ONNX fp32 vs the torch pneumonia
net (max |dlogit|), int8 vs ONNX fp32 (max |dP(PNEUMONIA)|, share of equal decisions at the file's threshold).

Run it on idle cores: beside other work torch's OpenMP threads wait for each other at every layer (seen here
under load 2-5: 60 ms to 1.2 s per image at 2 threads, 14 ms at 1), far more than ORT's or XNNPACK's pools.
The JSON records the load average before and after.
"""

import argparse
import importlib.metadata
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from common import KERMANY, ROOT, emit, kermany_sample, machine, peak_rss_mb, reference_checkpoint
from torch import nn

from pneumonia_cam.inference.export import export_onnx, quantize_int8
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.mobilenet import mobilenet_v2_stages
from pneumonia_cam.models.weights.tflite import TFLiteWeights, read_tflite
from pneumonia_cam.runtime.onnx import OnnxModel, session_options

TFLITE = ROOT.parent / "shared" / "weights" / "imagenet_tflite" / "mobilenet_v2_1.0_224_quant.tflite"
SIZE = 224
Call = Callable[[np.ndarray], np.ndarray]


class ImageNetMobileNet(nn.Module):
    """The imported file as one float network: uint8 NHWC in, the file's 1001 class probabilities out."""

    def __init__(self, weights: TFLiteWeights) -> None:
        super().__init__()
        self.features = nn.Sequential(mobilenet_v2_stages()[0])
        self.features.load_state_dict(weights.features, strict=True)
        classifier_weight, classifier_bias = weights.classifier
        self.classifier = nn.Linear(classifier_weight.shape[1], classifier_weight.shape[0])
        self.classifier.load_state_dict({"weight": classifier_weight, "bias": classifier_bias})
        self.zero_point, self.scale = float(weights.input_zero_point), float(weights.input_scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scale as the input tensor does, run, pool, classify, softmax: what the .tflite graph does."""
        x = (images.permute(0, 3, 1, 2).float() - self.zero_point) * self.scale
        return torch.softmax(self.classifier(self.features(x).mean((2, 3))), dim=1)


def grey_images(n: int, split: str) -> list[np.ndarray]:
    """n real Kermany images as 224 x 224 uint8 grey arrays (the folder's are 224 already; others resized)."""
    images = []
    for path, _ in kermany_sample(n, split):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise FileNotFoundError(f"cannot read {path}")
        images.append(
            grey
            if grey.shape == (SIZE, SIZE)
            else cv2.resize(grey, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        )
    return images


def interpreter_call(path: Path, threads: int) -> tuple[Call, dict]:
    """The reference interpreter as a batch-1 call (uint8 1 x 224 x 224 x 3 -> dequantized probabilities)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    source, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = output["quantization"]

    def call(batch: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(source["index"], batch)
        interpreter.invoke()
        return scale * (interpreter.get_tensor(output["index"]).astype(np.float64) - zero_point)

    details = {"input": f"{source['dtype'].__name__} {source['shape'].tolist()} {source['quantization']}"}
    details["output"] = f"{output['dtype'].__name__} {output['shape'].tolist()} {output['quantization']}"
    return call, details


def torch_call(net: nn.Module) -> Call:
    """A torch module as a numpy call under inference_mode."""

    def call(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(batch)).numpy()

    return call


def onnx_call(runtime: OnnxModel) -> Call:
    """The deployed graph's forward (logits and CAM grids, as the server runs it); the logits come back."""
    return lambda batch: runtime.forward(batch)[0]


def batches(inputs: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive batches covering every input once; the last wraps around to the first inputs."""
    n = len(inputs)
    return [inputs[[(start + j) % n for j in range(size)]] for start in range(0, n, size)]


def unbatch(outputs: list[np.ndarray], n: int) -> np.ndarray:
    """Per-image outputs back in input order from `batches`' calls (wrapped duplicates dropped)."""
    return np.concatenate(outputs)[:n]


def summary(times: list[float], batch: int, warmup: int) -> dict:
    """images/s, p50 / p95 latency per call, counts."""
    latency = np.array(times) * 1000
    return {
        "batch": batch,
        "images_per_s": round(batch * len(times) / latency.sum() * 1000, 2),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(latency, 95)), 2),
        "timed_calls": len(times),
        "timed_images": batch * len(times),
        "warmup_calls": warmup,
    }


def conv_quantization(path: Path) -> dict:
    """How many regular and depthwise Convs of a QDQ file take int8 (DequantizeLinear) weights."""
    graph = onnx.load(str(path)).graph
    producers = {name: node.op_type for node in graph.node for name in node.output}
    counts = {kind: Counter() for kind in ("depthwise", "regular")}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
        kind = "depthwise" if group > 1 else "regular"
        counts[kind]["total"] += 1
        counts[kind]["int8_weights"] += producers.get(node.input[1]) == "DequantizeLinear"
        counts[kind]["int8_input"] += producers.get(node.input[0]) == "DequantizeLinear"
    return {kind: dict(count) for kind, count in counts.items()}


def runtime_ops(path: Path, threads: int, workdir: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs (after its fusions, e.g. QDQ -> QLinearConv)."""
    options = session_options(threads)
    optimized = workdir / f"{path.stem}.optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(sorted(Counter(node.op_type for node in onnx.load(str(optimized)).graph.node).items()))


def versions() -> dict[str, str]:
    """Versions of everything that runs a side."""
    packages = ("torch", "onnxruntime", "onnx", "ai-edge-litert", "numpy", "opencv-python-headless")
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def main() -> None:
    """Build every side, time them in turns, compare their outputs, print one JSON document."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=128, help="test images per pass")
    parser.add_argument("--repeats", type=int, default=6, help="timed passes over the images per side")
    parser.add_argument("--batch", type=int, default=16, help="the batch size besides 1")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per side first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    parser.add_argument("--calibration", type=int, default=32, help="training images calibrating int8")
    parser.add_argument("--tflite", type=Path, default=TFLITE)
    parser.add_argument("--out", default="benchmarks/results/mobilenet_throughput.json")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    weights = read_tflite(args.tflite)
    grey = grey_images(args.n, "test")
    rgb = np.stack([np.repeat(image[:, :, None], 3, axis=2) for image in grey])  # N x 224 x 224 x 3 uint8

    workdir = Path(tempfile.mkdtemp(prefix="bench_mnv2_"))
    setup = time.perf_counter()
    checkpoint = reference_checkpoint(workdir / "mobilenet_v2.ckpt", "mobilenet_v2", 224, str(args.tflite))
    model = InferenceModel.from_checkpoint(checkpoint)
    imported = {f"features.{key}": value for key, value in weights.features.items()}
    held = {key: value for key, value in model.net.state_dict().items() if key.startswith("features.")}
    if held.keys() != imported.keys() or not all(torch.equal(held[k], imported[k]) for k in held):
        raise RuntimeError("the pneumonia checkpoint's backbone does not hold the imported TFLite weights")
    fp32_path = export_onnx(model, workdir / "model.onnx")
    fp32 = OnnxModel(fp32_path, args.threads)
    prepared = np.stack([fp32.prepare(image)[0] for image in grey])  # N x 3 x 224 x 224 float32
    calibration = np.stack([fp32.prepare(image)[0] for image in grey_images(args.calibration, "train")])
    quantize_start = time.perf_counter()
    int8_path = quantize_int8(fp32, calibration, workdir / "model.int8.onnx")
    quantize_s = time.perf_counter() - quantize_start
    int8 = OnnxModel(int8_path, args.threads)
    setup_s = time.perf_counter() - setup

    interpret, interpreter_details = interpreter_call(args.tflite, args.threads)
    imagenet_net = ImageNetMobileNet(weights).eval()
    # (name, batch, call, inputs): every side sees the same images in the same order
    sides = [("tflite_uint8", 1, interpret, rgb)]
    for batch in (1, args.batch):
        sides.append(("torch_fp32", batch, torch_call(imagenet_net), rgb))
    for name, runtime in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        for batch in (1, args.batch):
            sides.append((name, batch, onnx_call(runtime), prepared))
    plans = {f"{name}@{batch}": (call, batches(inputs, batch)) for name, batch, call, inputs in sides}

    outputs: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {key: [] for key in plans}
    for call, plan in plans.values():
        for i in range(args.warmup):
            call(plan[i % len(plan)])
    for repeat in range(args.repeats):
        for key, (call, plan) in plans.items():
            results = []
            for batch in plan:
                start = time.perf_counter()
                results.append(call(batch))
                times[key].append(time.perf_counter() - start)
            if repeat == 0:
                outputs[key] = unbatch(results, args.n)

    # the torch pneumonia net the ONNX file was exported from, on the same prepared batches (untimed)
    reference = {
        batch: unbatch(
            [torch_call(lambda x: model.net.features_and_logits(x)[1])(b) for b in batches(prepared, batch)],
            args.n,
        )
        for batch in (1, args.batch)
    }
    rows = {key: summary(times[key], len(plans[key][1][0]), args.warmup) for key in plans}
    interpreter_probs = outputs["tflite_uint8@1"]
    positive = fp32.positive_class
    for batch in (1, args.batch):
        probs = outputs[f"torch_fp32@{batch}"]
        rows[f"torch_fp32@{batch}"]["agreement_vs_tflite_uint8"] = {
            "top1_agreement": float((probs.argmax(1) == interpreter_probs.argmax(1)).mean()),
            "max_abs_prob_diff": round(float(np.abs(probs - interpreter_probs).max()), 5),
            "mean_over_images_of_max_abs_prob_diff": round(
                float(np.abs(probs - interpreter_probs).max(1).mean()), 5
            ),
            "interpreter_top1_prob_range": [
                round(float(interpreter_probs.max(1).min()), 4),
                round(float(interpreter_probs.max(1).max()), 4),
            ],
        }
        logits = outputs[f"onnx_fp32@{batch}"]
        rows[f"onnx_fp32@{batch}"]["agreement_vs_torch_fp32_pneumonia_net"] = {
            "max_abs_logit_diff": float(np.abs(logits - reference[batch]).max())
        }
        fp32_probs = fp32.probabilities(logits)
        int8_probs = int8.probabilities(outputs[f"onnx_int8@{batch}"])
        diff = np.abs(int8_probs[:, positive] - fp32_probs[:, positive])
        rows[f"onnx_int8@{batch}"]["agreement_vs_onnx_fp32"] = {
            "max_abs_p_pneumonia_diff": round(float(diff.max()), 5),
            "mean_abs_p_pneumonia_diff": round(float(diff.mean()), 5),
            "decision_agreement": float((int8.decide(int8_probs) == fp32.decide(fp32_probs)).mean()),
            "threshold": fp32.threshold,
            # the head is random: how close to the threshold its P(PNEUMONIA) lie decides how many can flip
            "fp32_p_pneumonia_range": [
                round(float(fp32_probs[:, positive].min()), 4),
                round(float(fp32_probs[:, positive].max()), 4),
            ],
            "max_abs_logit_diff": round(float(np.abs(outputs[f"onnx_int8@{batch}"] - logits).max()), 5),
        }
    interpreter_rate = rows["tflite_uint8@1"]["images_per_s"]
    for row in rows.values():
        row["speedup_vs_tflite_uint8@1"] = round(row["images_per_s"] / interpreter_rate, 2)

    result = {
        "benchmark": "mobilenet_throughput",
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "machine": machine(),
        "versions": versions(),
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "ort_intra_op": args.threads,
            "ort_inter_op": 1,
            "ort_spinning": False,
            "tflite_num_threads": args.threads,
        },
        "inputs": {
            "images": f"{args.n} Kermany test JPEGs ({KERMANY.name}), {SIZE} px grey, alternating classes",
            "tflite_uint8, torch_fp32": "the grey image replicated to RGB, uint8 N x 224 x 224 x 3",
            "onnx_*": "OnnxModel.prepare of the same grey image (exported eval transform), untimed",
            "onnx_normalize": next(s for s in fp32.metadata["preprocess"] if s["name"] == "Normalize"),
            "calibration": f"{args.calibration} Kermany train JPEGs through OnnxModel.prepare",
        },
        "models": {
            "tflite": {"path": str(args.tflite), "mb": round(args.tflite.stat().st_size / 2**20, 2)},
            "interpreter": {"delegate": "XNNPACK (the default)", **interpreter_details},
            "onnx_fp32_mb": round(fp32_path.stat().st_size / 2**20, 2),
            "onnx_int8_mb": round(int8_path.stat().st_size / 2**20, 2),
            "pneumonia_head": "random Linear(1280, 2), seed 0: throughput does not depend on its values",
            "onnx_outputs": "logits and raw CAM grids (what the server runs)",
        },
        "int8": {
            "quantization": int8.metadata["quantization"],
            "quantize_s": round(quantize_s, 1),
            "convs_in_qdq_file": conv_quantization(int8_path),
            "ops_onnxruntime_runs": runtime_ops(int8_path, args.threads, workdir),
            "ops_onnxruntime_runs_fp32": runtime_ops(fp32_path, args.threads, workdir),
        },
        # torch's OpenMP threads lose most when other work shares the cores: read its rows against these
        "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        "setup_s": round(setup_s, 1),
        "results": rows,
        "peak_rss_mb": peak_rss_mb(),
        "total_s": round(time.perf_counter() - started, 1),
    }
    shutil.rmtree(workdir, ignore_errors=True)  # checkpoint and ONNX files: ~30 MB a run
    emit(result, args.out)


if __name__ == "__main__":
    main()
