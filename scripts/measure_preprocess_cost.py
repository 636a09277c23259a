"""Per-image CPU cost of decode + CLAHE + resize on ONE core, per source format (input to docs/scaling.md).

    python scripts/measure_preprocess_cost.py --repeats 3 --out /tmp/preprocess_cost.json

Times the project's own reader (`read_grayscale`: OpenCV, pydicom for DICOM) and the eval `preprocess`
of `configs/data/transforms/xray.yaml` (CLAHE 2.0 / 8x8, resize to --image-size) with OpenCV held to one
thread, on the real files under ../shared/data or $SHARED_DATA (RSNA DICOMs, NIH ChestX-ray14 PNGs,
Kermany 224 px JPEGs) and on a MIMIC-CXR-JPG-sized proxy (an NIH image upscaled to 3056 x 2544, JPEG
quality 95), since no MIMIC file is available here. Reports ms per image for decode and for CLAHE +
resize, mean file size and, with --processes P, the aggregate images/s of P worker processes.
"""

import argparse
import json
import os
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import hydra
import numpy as np
import rootutils
from omegaconf import OmegaConf

ROOT = rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pneumonia_cam.data.image_io import read_grayscale  # noqa: E402

SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
MIMIC_SHAPE = (3056, 2544)  # rows x columns of a typical MIMIC-CXR-JPG frontal image


def preprocess_pipeline(image_size: int):
    """The eval `preprocess` steps of transforms/xray.yaml at `image_size`."""
    cfg = OmegaConf.create(
        {"data": {"image_size": image_size}, "t": OmegaConf.load(ROOT / "configs/data/transforms/xray.yaml")}
    )
    return hydra.utils.instantiate(cfg.t).preprocessing


def mimic_proxy(source: Path, folder: Path, count: int) -> list[Path]:
    """JPEGs of MIMIC-CXR-JPG's size and quality, made from real NIH pixels (upscaled)."""
    image = cv2.resize(read_grayscale(source), MIMIC_SHAPE[::-1], interpolation=cv2.INTER_CUBIC)
    paths = []
    for i in range(count):
        path = folder / f"mimic_proxy_{i}.jpg"
        cv2.imwrite(str(path), np.roll(image, i, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


_WORKER_PIPELINE = None


def _start_worker(image_size: int) -> None:
    """Each worker process builds the pipeline once and keeps OpenCV to one thread."""
    global _WORKER_PIPELINE
    cv2.setNumThreads(1)
    _WORKER_PIPELINE = preprocess_pipeline(image_size)


def _process(path: Path) -> int:
    """Decode and pre-process one file in a worker."""
    _WORKER_PIPELINE(image=read_grayscale(path))
    return 1


def aggregate(paths: list[Path], image_size: int, processes: int, repeats: int) -> float:
    """Images/s of `processes` workers sharing the files (repeated `repeats` times)."""
    with Pool(processes, initializer=_start_worker, initargs=(image_size,)) as pool:
        pool.map(_process, paths[:processes])  # warm-up: imports and pipeline built
        start = time.perf_counter()
        done = sum(pool.map(_process, paths * repeats, chunksize=2))
        return round(done / (time.perf_counter() - start), 1)


def measure(paths: list[Path], pipeline, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` mean milliseconds per image for decode and for preprocess (page cache warm)."""
    decode, process = [], []
    for _ in range(repeats):
        t_decode = t_process = 0.0
        for path in paths:
            start = time.perf_counter()
            image = read_grayscale(path)
            middle = time.perf_counter()
            pipeline(image=image)
            t_decode += middle - start
            t_process += time.perf_counter() - middle
        decode.append(1000 * t_decode / len(paths))
        process.append(1000 * t_process / len(paths))
    size = float(np.mean([path.stat().st_size for path in paths]))
    return {
        "images": len(paths),
        "decode_ms": round(min(decode), 2),
        "clahe_resize_ms": round(min(process), 2),
        "total_ms": round(min(decode) + min(process), 2),
        "images_per_s_per_core": round(1000 / (min(decode) + min(process)), 1),
        "mean_file_kb": round(size / 1024, 1),
        "shape": list(read_grayscale(paths[0]).shape),
    }


def main() -> None:
    """Measure every available source and print/write one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=40, help="files per source (at most)")
    parser.add_argument("--processes", type=int, default=0, help="also time P worker processes together")
    parser.add_argument("--out", default="/tmp/preprocess_cost.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    pipeline = preprocess_pipeline(args.image_size)
    nih = sorted((SHARED / "full_resolution_unlabelled").glob("*.png"))[: args.n]
    sources = {
        "rsna_dicom_1024_jpeg_baseline": sorted((SHARED / "dicom_samples").glob("*.dcm")),
        "nih_png_1024": nih,
        "kermany_jpeg_224": sorted((SHARED / "chest_xray_kermany224" / "test").rglob("*.jpeg"))[: args.n],
    }
    results = {"settings": vars(args), "opencv_threads": cv2.getNumThreads()}
    with tempfile.TemporaryDirectory() as folder:
        sources["mimic_jpg_proxy_3056x2544_q95"] = mimic_proxy(nih[0], Path(folder), min(args.n, 8))
        for name, paths in sources.items():
            results[name] = measure(paths, pipeline, args.repeats)
            if args.processes:
                results[name][f"images_per_s_{args.processes}_processes"] = aggregate(
                    paths,
                    args.image_size,
                    args.processes,
                    max(args.repeats, 2 * args.processes // len(paths) + 1),
                )
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
