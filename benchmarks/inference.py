"""ResNet inference throughput and latency: torchvision eager fp32 vs this project's batched predictor.

    python benchmarks/inference.py                         # ResNet-152, batch 1 and 32
    python benchmarks/inference.py --iters 3 --no-compile  # quicker

Both models hold the same random weights and see the same real, eval-transformed images; the predictor
variants are fp32 channels_last, bf16 autocast (+ channels_last) and bf16 compiled. Latencies are per batch
call (p50/p95 over --iters timed calls after warm-up); images/s = batch size / mean latency.
"""

import argparse
import time

import numpy as np
import torch
from common import emit, kermany_sample, machine
from torchvision import models

from pneumonia_cam.data.preprocessor import ImagePreprocessor
from pneumonia_cam.data.transforms import XrayTransforms
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.classifier import PneumoniaClassifier

CLASS_NAMES = ("NORMAL", "PNEUMONIA")


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
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--out", default="benchmarks/results/inference.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

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
        for name in variants:
            results[f"{name}@{batch_size}"]["speedup_vs_eager"] = round(
                results[f"{name}@{batch_size}"]["images_per_s"] / eager_rate, 2
            )
    emit({"benchmark": "inference", "settings": vars(args), "machine": machine(), **results}, args.out)


if __name__ == "__main__":
    main()
