"""Frozen ResNet head training: a plain Lightning loop through the backbone every epoch vs the feature cache.

    python benchmarks/train_frozen.py                      # N=256 images, E=10 epochs, batch 32
    python benchmarks/train_frozen.py --n 64 --epochs 3    # a quick look

Each side runs in its own subprocess (clean peak RSS) on the same real images, seed and settings, with
augmentation off so that the fp32 fast path must reproduce the plain path's head weights. The fast side's
wall time includes its one backbone pass (a cold cache) and the content hashing.
"""

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, kermany_sample, machine, peak_rss_mb

SIDES = {"plain": (False, "fp32"), "fast_fp32": (True, "fp32"), "fast_bf16": (True, "bf16")}


def run_side(args: argparse.Namespace) -> None:
    """Train one side and print {wall_s, peak_rss_mb}; the head weights go to --workdir."""
    import lightning as L
    import numpy as np
    from albumentations.pytorch import ToTensorV2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pneumonia_cam.data.datamodule import ChestXrayDataModule
    from pneumonia_cam.data.sources import FolderSource
    from pneumonia_cam.models.classifier import PneumoniaClassifier

    cached, precision = SIDES[args.side]
    workdir = Path(args.workdir)
    transforms_cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/data/transforms/xray.yaml")
    transforms_cfg.preprocess[1].height = transforms_cfg.preprocess[1].width = args.image_size
    transforms_cfg.augment = []
    transforms_cfg.postprocess[-1] = {"_target_": f"{ToTensorV2.__module__}.ToTensorV2"}
    start = time.perf_counter()
    L.seed_everything(0, workers=True)
    datamodule = ChestXrayDataModule(
        data_dir=str(workdir / "data"),
        source=functools.partial(FolderSource),
        transforms=instantiate(transforms_cfg),
        image_size=args.image_size,
        fractions=(1.0, 0.0, 0.0),
        batch_size=args.batch_size,
        num_workers=0,
        check_images=False,
        feature_cache={"enabled": cached, "dir": str(workdir / f"cache_{args.side}"), "precision": precision},
    )
    model = PneumoniaClassifier(backbone=args.backbone, weights=None, scheduler=None)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule)
    wall = time.perf_counter() - start
    np.save(workdir / f"{args.side}_fc.npy", model.net.head.fc.weight.detach().cpu().numpy())
    n_train = len(datamodule.data_train)
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": peak_rss_mb(), "n_train": n_train}))


def main() -> None:
    """Link N real images into a temporary folder, run every side, and compare."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=256, help="training images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="resnet152")
    parser.add_argument("--out", default="benchmarks/results/train_frozen.json")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return run_side(args)

    import numpy as np

    with tempfile.TemporaryDirectory() as workdir:
        for path, label in kermany_sample(args.n):
            folder = Path(workdir, "data", ("NORMAL", "PNEUMONIA")[label])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / path.name).symlink_to(path)
        forwarded = [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("side", "workdir")
        ]
        sides = {}
        for side in SIDES:
            command = [sys.executable, __file__, *forwarded, f"--side={side}", f"--workdir={workdir}"]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            sides[side] = json.loads(output.strip().splitlines()[-1])
            seen = sides[side]["n_train"] * args.epochs
            sides[side]["images_per_s"] = round(seen / sides[side]["wall_s"], 2)
        weights = {side: np.load(Path(workdir, f"{side}_fc.npy")) for side in SIDES}
    diff = float(np.abs(weights["fast_fp32"] - weights["plain"]).max())
    emit(
        {
            "benchmark": "train_frozen",
            "settings": {k: v for k, v in vars(args).items() if k not in ("side", "workdir", "out")},
            "machine": machine(),
            **sides,
            "speedup": round(sides["plain"]["wall_s"] / sides["fast_bf16"]["wall_s"], 2),
            "speedup_fp32": round(sides["plain"]["wall_s"] / sides["fast_fp32"]["wall_s"], 2),
            "max_abs_head_weight_diff_fp32": diff,
            "head_weights_match": diff <= 1e-4,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
