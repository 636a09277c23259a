"""GPU throughput of ResNet-152 at 224 px: forward (inference, feature extraction) and a fine-tuning step.

    python scripts/gpu_scaling_probe.py --out /tmp/gpu_probe.json

Random weights, random inputs already on the device (so it measures the GPU, not the loader), channels_last,
fp32 (cuDNN's TF32 convolutions on, PyTorch's default) and bf16 autocast. `forward` runs under
`inference_mode` in eval mode; `train_step` is forward + backward + Adam over every parameter (full
fine-tuning). images/s = batch / median step time over --iters timed steps after --warmup steps.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchvision


def timed(step, iters: int, warmup: int) -> float:
    """Median seconds per call of `step` (CUDA synchronised)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe(batch: int, precision: str, train: bool, iters: int, warmup: int) -> dict[str, float]:
    """One configuration: images/s and peak memory."""
    torch.manual_seed(0)
    model = torchvision.models.resnet152(num_classes=2).cuda().to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,), device="cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.cuda.reset_peak_memory_stats()
    if train:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

    else:
        model.eval()

        @torch.inference_mode()
        def step() -> None:
            with torch.autocast("cuda", dtype=dtype, enabled=precision == "bf16"):
                model(images)

    seconds = timed(step, iters, warmup)
    return {
        "images_per_s": round(batch / seconds, 1),
        "step_ms": round(1000 * seconds, 2),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    """Forward at several batch sizes, then training steps; print and write one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[64])
    parser.add_argument("--out", default="/tmp/gpu_probe.json")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    results = {
        "settings": vars(args),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    for train, batches in ((False, args.forward_batches), (True, args.train_batches)):
        for batch in batches:
            for precision in ("fp32", "bf16"):
                key = f"{'train_step' if train else 'forward'}_{precision}@{batch}"
                results[key] = probe(batch, precision, train, args.iters, args.warmup)
                print(key, results[key], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
