"""Training-loader throughput: decode + CLAHE + resize from files each epoch vs the pre-processed image cache.

    python benchmarks/data_pipeline.py                     # 512 Kermany 224 px images + the full-res PNGs
    python benchmarks/data_pipeline.py --n 128 --epochs 1

Every side runs the same reference train pipeline (CLAHE, resize, affine, brightness/contrast, RGB,
normalise) and ends with the float batch the model receives:
- files: the per-image albumentations pipeline from the files (`--workers` processes);
- cache: `preprocess` output from a uint8 memmap, augment + postprocess per image (workers, and in-process);
- cache + batch stage (data.batch_augment): uint8 batches from the memmap in-process, augmented and
  normalised as whole batches in torch on the CPU, i.e. on the cores the model also needs; on a GPU that
  stage runs on the device, and the loader alone (`cache_uint8_loader_images_per_s`) is what the CPU pays.
The cache build (a one-off, first epoch only) is timed separately.
"""

import argparse
import tempfile
import time
from pathlib import Path

import albumentations as A
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from common import FULL_RESOLUTION, emit, kermany_sample, machine
from torch.utils.data import DataLoader

from pneumonia_cam.data.batch_augment import BatchAugment, BatchStage
from pneumonia_cam.data.dataset import XrayDataset
from pneumonia_cam.data.image_cache import ImageCache
from pneumonia_cam.data.image_io import read_grayscale
from pneumonia_cam.data.transforms import XrayTransforms


def reference_transforms(size: int, augment: bool = True) -> XrayTransforms:
    """The configs/data/transforms/xray.yaml pipeline at `size` px (augment=False: left to a batch stage)."""
    return XrayTransforms(
        [A.CLAHE(clip_limit=(2.0, 2.0), tile_grid_size=(8, 8), p=1.0), A.Resize(size, size)],
        [
            A.Affine(rotate=(-10, 10), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
        if augment
        else [],
        [A.ToRGB(num_output_channels=3), A.Normalize(), ToTensorV2()],
    )


def images_per_s(
    dataset: XrayDataset, args: argparse.Namespace, workers: int, stage: BatchStage | None = None
) -> float:
    """Mean images/s of full passes over a shuffled training loader, each batch finished by `stage` if any."""
    persistent = args.persistent_workers and workers > 0
    loader = DataLoader(
        dataset, batch_size=32, shuffle=True, num_workers=workers, persistent_workers=persistent
    )
    start = time.perf_counter()
    for _ in range(args.epochs):
        for images, labels in loader:
            if stage is not None:
                stage(images, labels)
    return round(len(dataset) * args.epochs / (time.perf_counter() - start), 1)


def compare(paths: list[str], args: argparse.Namespace) -> dict:
    """Files vs cache on one image set."""
    transforms = reference_transforms(args.image_size)
    records = pd.DataFrame({"path": paths, "label": 0})
    files = images_per_s(XrayDataset(records, read_grayscale, transforms.train_steps()), args, args.workers)
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        cache = ImageCache.build(
            paths, read_grayscale, transforms.preprocessing, directory, args.workers or 1
        )
        build = time.perf_counter() - start
        cached_dataset = XrayDataset(records, cache.read, transforms.train_steps(cached=True))
        cached = images_per_s(cached_dataset, args, args.workers)
        cached_in_process = images_per_s(cached_dataset, args, 0)
        batched = reference_transforms(args.image_size, augment=False)  # configs/data/batch_augment/xray.yaml
        uint8_dataset = XrayDataset(
            records, cache.read, batched.train_steps(cached=True, batched=True), dtype=torch.uint8
        )
        stage = BatchStage(BatchAugment(), batched.postprocess, seed=0)
        uint8_loader = images_per_s(uint8_dataset, args, 0)
        batch_stage = images_per_s(uint8_dataset, args, 0, stage)
        size_mb = round(cache.array.nbytes / 2**20, 1)
    return {
        "images": len(paths),
        "files_images_per_s": files,
        "cache_images_per_s": cached,
        "speedup": round(cached / files, 2),
        # the cache leaves ~0.4 ms of augmentation per image: shipping float batches from worker processes
        # then costs more than it saves, so the main process alone is faster
        "cache_in_process_images_per_s": cached_in_process,
        "speedup_cache_in_process": round(cached_in_process / files, 2),
        "cache_batch_stage_images_per_s": batch_stage,
        "speedup_cache_batch_stage": round(batch_stage / files, 2),
        "cache_uint8_loader_images_per_s": uint8_loader,
        "speedup_cache_uint8_loader": round(uint8_loader / files, 2),
        "cache_build_s": round(build, 2),
        "cache_mb": size_mb,
    }


def main() -> None:
    """Run the comparison on the 224 px Kermany images and on the full-resolution PNGs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, default=512, help="Kermany images (the full-res set has what it has)"
    )
    parser.add_argument("--full-res-n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--persistent-workers",
        action="store_true",
        help="keep loader workers between epochs (data.persistent_workers=true): steady-state rate",
    )
    parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = parser.parse_args()
    kermany = [str(path) for path, _ in kermany_sample(args.n)]
    full = [str(path) for path in sorted(Path(FULL_RESOLUTION).glob("*.png"))[: args.full_res_n]]
    results = {"kermany_224px": compare(kermany, args)}
    if full:
        results["full_resolution_png"] = compare(full, args)
    emit({"benchmark": "data_pipeline", "settings": vars(args), "machine": machine(), **results}, args.out)


if __name__ == "__main__":
    main()
