"""ResNet inference throughput and latency: every inference path of the project beside torchvision eager fp32.

    python benchmarks/inference.py                         # ResNet-152, batch 1 and 32, 2 threads
    python benchmarks/inference.py --iters 3 --no-compile  # quicker

All models hold the same random weights and see the same real, eval-transformed images. Paths: the predictor
in fp32 channels_last, bf16 autocast (+ channels_last) and bf16 compiled; the ONNX file src/export.py writes,
in ONNX Runtime fp32 and as its calibrated int8 copy (calibrated on training images, timed on test images).
Threads are pinned (torch intra-op = ORT intra-op = --threads, one inter-op thread, ORT spinning off) and
reported. Latencies are per batch call (p50/p95 over --iters timed calls after warm-up); images/s = batch
size / mean latency; speedup_vs_eager and speedup_vs_ort divide by torchvision eager fp32 and ORT fp32.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, kermany_sample, machine, reference_checkpoint
from torchvision import models

from pneumonia_cam.data.preprocessor import ImagePreprocessor
from pneumonia_cam.data.transforms import XrayTransforms
from pneumonia_cam.inference.export import export_onnx, quantize_int8
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.classifier import PneumoniaClassifier
from pneumonia_cam.runtime.onnx import OnnxModel

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
MAX_PROB_DIFF = 0.02  # a path counts towards the targets only within this |dP| of eager fp32


def eval_images(n: int, size: int) -> torch.Tensor:
    """n real test images through the project's eval transform (CLAHE, resize, RGB, ImageNet normalise)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    transforms = XrayTransforms(
        [A.CLAHE(clip_limit=(2.0, 2.0), p=1.0), A.Resize(size, size)],
        [],
        [A.ToRGB(num_output_channels=3), A.Normalize(), ToTensorV2()],
    )
    preprocessor = ImagePreprocessor(transforms.eval)
    return torch.stack([preprocessor.process(path) for path, _ in kermany_sample(n, "test")])


def timed(fn, batch: torch.Tensor, iters: int, warmup: int) -> tuple[torch.Tensor, list[float]]:
    """Outputs of the last call and the wall time of each timed call."""
    for _ in range(warmup):
        out = fn(batch)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = fn(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return out, times


def main() -> None:
    """Measure every variant at every batch size and print one JSON document."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--calibration", type=int, default=16, help="training images calibrating int8")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--out", default="benchmarks/results/inference.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    torch.manual_seed(0)
    reference = models.get_model(args.backbone, weights=None, num_classes=2).eval().to(device)
    images = eval_images(max(args.batch_sizes), args.image_size)
    with torch.no_grad():  # random weights give huge logits: rescale the head so probabilities are not 0/1
        scale = reference(images.to(device)).abs().max() / 2
        reference.fc.weight /= scale
        reference.fc.bias /= scale
    ours = PneumoniaClassifier(backbone=args.backbone, weights=None)
    ours.net.features.load_state_dict(
        {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    )
    ours.net.head.fc.load_state_dict(reference.fc.state_dict())
    ours = ours.eval().to(device)

    def eager(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(reference(batch.to(device)), dim=1).cpu()

    variants = {"torchvision_eager_fp32": eager}
    settings = {
        "predictor_fp32_channels_last": ("fp32", False),
        "predictor_bf16_channels_last": ("bf16", False),
    }
    if not args.no_compile:
        settings["predictor_bf16_compiled"] = ("bf16", True)
    for name, (precision, compile) in settings.items():
        model = PneumoniaClassifier(backbone=args.backbone, weights=None).eval()
        model.load_state_dict(ours.state_dict())
        variants[name] = (
            InferenceModel(model.net, CLASS_NAMES).to(device).configure(precision, compile).predict_proba
        )

    workdir = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    for name, runtime in onnx_paths(ours, args, workdir).items():
        variants[name] = lambda batch, runtime=runtime: torch.from_numpy(runtime.predict_proba(batch.numpy()))

    results = {}
    for batch_size in args.batch_sizes:
        batch = images[:batch_size]
        baseline = None
        for name, fn in variants.items():
            start = time.perf_counter()
            probs, times = timed(fn, batch, args.iters, args.warmup)
            baseline = probs if baseline is None else baseline
            latency = np.array(times) * 1000
            results[f"{name}@{batch_size}"] = {
                "images_per_s": round(batch_size / latency.mean() * 1000, 2),
                "latency_ms_p50": round(float(np.percentile(latency, 50)), 2),
                "latency_ms_p95": round(float(np.percentile(latency, 95)), 2),
                "max_abs_prob_diff_vs_eager_fp32": float((probs - baseline).abs().max()),
                "total_s_incl_warmup": round(time.perf_counter() - start, 1),
            }
        eager_rate = results[f"torchvision_eager_fp32@{batch_size}"]["images_per_s"]
        ort_rate = results[f"onnxruntime_fp32@{batch_size}"]["images_per_s"]
        for name in variants:
            row = results[f"{name}@{batch_size}"]
            row["speedup_vs_eager"] = round(row["images_per_s"] / eager_rate, 2)
            row["speedup_vs_ort"] = round(row["images_per_s"] / ort_rate, 2)
    threads = {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "ort_intra_op": args.threads,
        "ort_inter_op": 1,
        "ort_spinning": False,
    }
    header = {"benchmark": "inference", "settings": vars(args), "machine": machine(), "threads": threads}
    emit({**header, "targets": targets(results, args.batch_sizes), **results}, args.out)


def onnx_paths(ours: PneumoniaClassifier, args: argparse.Namespace, workdir: Path) -> dict[str, OnnxModel]:
    """The model exported as src/export.py does (same weights), in ONNX Runtime fp32 and calibrated int8."""
    checkpoint = reference_checkpoint(workdir / "reference.ckpt", args.backbone, args.image_size)
    model = InferenceModel.from_checkpoint(checkpoint)
    model.net.load_state_dict(ours.net.state_dict())
    fp32 = export_onnx(model, workdir / "model.onnx")
    exported = OnnxModel(fp32, args.threads)
    calibration = np.stack(
        [exported.prepare(path)[0] for path, _ in kermany_sample(args.calibration, "train")]
    )
    int8 = quantize_int8(exported, calibration, workdir / "model.int8.onnx")
    return {
        name: OnnxModel(path, args.threads)
        for name, path in (("onnxruntime_fp32", fp32), ("onnxruntime_int8", int8))
    }


def targets(results: dict, batch_sizes: list[int]) -> dict:
    """The project's fastest path within MAX_PROB_DIFF per batch size; its ratios to eager and ORT fp32."""
    out = {}
    for batch_size in batch_sizes:
        rows = {
            key.split("@")[0]: row
            for key, row in results.items()
            if key.endswith(f"@{batch_size}")
            and not key.startswith("torchvision_eager")
            and row["max_abs_prob_diff_vs_eager_fp32"] <= MAX_PROB_DIFF
        }
        name = max(rows, key=lambda n: rows[n]["images_per_s"])
        out[f"fastest@{batch_size}"] = {
            "path": name,
            "speedup_vs_eager": rows[name]["speedup_vs_eager"],
            "speedup_vs_ort": rows[name]["speedup_vs_ort"],
        }
    return out


if __name__ == "__main__":
    main()
