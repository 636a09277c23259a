"""Sharded feature extraction: does `src/extract_features.py` get faster with more ranks, and stay identical?

    python benchmarks/extract_scaling.py                       # N=512 real images, ResNet-18, 1 vs 2 ranks
    python benchmarks/extract_scaling.py --backbone resnet152 --n 128

Each side is the real entry point in its own process with a cold cache: 1 rank (`trainer=cpu`) against
`trainer=ddp_sim` (2 gloo processes), each rank with ONE torch thread and no loader workers, so a rank's
resources are fixed, as a GPU per rank is on a cluster, and the only thing that changes is the rank count.
Each side runs twice: cold (extracts) and warm (finds the files; everything else is the same: process start,
model build, content hashing), so `extract_s = cold - warm` is the backbone pass alone. The feature files of
both sides are compared byte for byte.
"""

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CLASSES, ROOT, emit, kermany_sample, machine

SIDES = {"1_rank": ["trainer=cpu"], "2_ranks": ["trainer=ddp_sim", "trainer.devices=2"]}


def write_manifest(folder: Path, n: int) -> None:
    """A manifest of n real Kermany images (alternating classes), one patient each."""
    with (folder / "manifest.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "label", "patient_id"])
        for i, (path, label) in enumerate(kermany_sample(n)):
            writer.writerow([str(path), CLASSES[label], f"p{i}"])


def run_side(name: str, data_dir: Path, args: argparse.Namespace) -> dict:
    """Cold then warm run; the extraction time and rate, and the SHA-256 of each feature file."""
    cold = run_once(name, data_dir, args, "cold")
    warm = run_once(name, data_dir, args, "warm")
    if warm["sha256"] != cold["sha256"]:
        raise RuntimeError(f"{name}: the warm run did not reuse the cold run's features")
    extract = cold["wall_s"] - warm["wall_s"]
    return {
        "wall_cold_s": cold["wall_s"],
        "wall_warm_s": warm["wall_s"],
        "extract_s": round(extract, 2),
        "images_per_s": round(args.n / extract, 2),
        "sha256": cold["sha256"],
    }


def run_once(name: str, data_dir: Path, args: argparse.Namespace, label: str) -> dict:
    """Run the entry point once; return its wall time and the SHA-256 of each feature file it names."""
    run_dir = data_dir / f"run_{name}_{label}"
    command = [
        sys.executable,
        str(ROOT / "src" / "extract_features.py"),
        "data=manifest",
        f"data.data_dir={data_dir}",
        f"data.feature_cache.dir={data_dir}/features_{name}",
        "data.feature_cache.enabled=true",
        f"data.feature_cache.precision={args.precision}",
        "data.num_workers=0",
        f"model={args.backbone}",
        "model.weights=null",
        f"hydra.run.dir={run_dir}",
        "extras.print_config=false",
        *SIDES[name],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-4000:]}")
    files = json.loads((run_dir / "caches.json").read_text())
    digests = {split: hashlib.sha256(Path(file).read_bytes()).hexdigest() for split, file in files.items()}
    return {"wall_s": round(wall, 2), "sha256": digests}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=512, help="real images, split 85/7.4/7.4 as configured")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        write_manifest(data_dir, args.n)
        sides = {name: run_side(name, data_dir, args) for name in SIDES}
    one, two = sides["1_rank"], sides["2_ranks"]
    emit(
        {
            "benchmark": "extract_scaling",
            "settings": vars(args),
            "machine": machine(),
            "sides": sides,
            "extraction_speedup_2_ranks": round(one["extract_s"] / two["extract_s"], 2),
            "identical_features": one["sha256"] == two["sha256"],
        },
        args.out,
    )


if __name__ == "__main__":
    main()
