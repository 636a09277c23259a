"""Linear probe of every available pretrained backbone: frozen features through the feature cache, then a
logistic-regression head, on the Kermany test set and on the COVID-19 image data collection subset.

    python benchmarks/linear_probe.py --out benchmarks/results/linear_probe.json
    python benchmarks/linear_probe.py --weights tflite-mobilenet-v2-1.0-224-quant tv-resnet18-imagenet1k-v1 \
        --weights-dir ../shared/weights/imagenet_tflite --n-train 400

Each backbone's pre-processing comes from its weights (data.transforms follow model.weights), features come
from the project's FeatureCache (eval transform, no augmentation), and the head is fitted on the train split
with C chosen on the validation split (by AUROC), as is its decision threshold (Youden). A registry name whose
file is not on this machine runs on random weights and says so (`pretrained: false`); with no pretrained file
at all, ResNet-18 runs on random weights: the pipeline is measured, not the features.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import KERMANY, SHARED, emit, machine, peak_rss_mb

COVID = SHARED / "covid_collection_subset"
C_GRID = (0.01, 0.1, 1.0, 10.0)
FALLBACK = "tv-resnet18-imagenet1k-v1"


def available(weights_dir: str | None) -> list[str]:
    """Registry names whose file is on this machine (verified)."""
    from pneumonia_cam.models.weights.fetch import locate
    from pneumonia_cam.models.weights.registry import REGISTRY

    found = []
    for name, entry in REGISTRY.items():
        try:
            locate(entry, weights_dir)
        except FileNotFoundError:
            continue
        found.append(name)
    return found


def data_module(name: str, data_dir: Path, weights: str | None, backbone: str, args: argparse.Namespace):
    """The project's data module for `name` (chest_xray or covid_collection), following the weights."""
    import hydra
    from hydra import compose, initialize_config_dir

    import pneumonia_cam.models  # noqa: F401  (the weights_input resolver)

    overrides = [
        f"data={name}",
        f"data.data_dir={data_dir}",
        f"model.backbone={backbone}",
        f"model.weights={weights or 'null'}",
        f"data.image_size={args.image_size}",
        "data.num_workers=0",
        "data.check_images=false",
        "data.scan_cache=null",
        f"paths.data_dir={args.workdir}",
        f"paths.output_dir={args.workdir}",
    ]
    if args.weights_dir:
        overrides.append(f"paths.weights_dir={args.weights_dir}")
    if name == "covid_collection":
        overrides.append("data.fractions=[0,0,1]")
    root = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(version_base="1.3", config_dir=str(root)):
        cfg = compose(config_name="train.yaml", overrides=overrides, return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig().set_config(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def subsample(dataset, n: int | None, seed: int):
    """At most n images of a split, half per class (fixed seed), as a dataset the feature cache can key."""
    from pneumonia_cam.data.dataset import XrayDataset

    records = dataset.records
    if n is not None and n < len(records):
        rng = np.random.default_rng(seed)
        labels = records["label"].to_numpy()
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: n // 2] for c in (0, 1)])
        records = records.iloc[np.sort(keep)]
    return XrayDataset(records, dataset.reader, dataset.transform)


def probe(weights: str, args: argparse.Namespace) -> dict:
    """Extract, fit and score one backbone; every figure of its row."""
    from hydra.core.global_hydra import GlobalHydra
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score, roc_curve

    from pneumonia_cam.data.feature_cache import FeatureCache, FeatureCacheConfig
    from pneumonia_cam.evaluation.bootstrap import percentile_interval
    from pneumonia_cam.models.encoder import backbone_encoder
    from pneumonia_cam.models.net import ChestXrayNet
    from pneumonia_cam.models.weights.fetch import locate
    from pneumonia_cam.models.weights.registry import lookup

    entry = lookup(weights)
    try:
        source = str(locate(entry, args.weights_dir))
    except FileNotFoundError:
        source = None
    net = ChestXrayNet(entry.architecture, source, freeze_backbone=True)
    encoder = backbone_encoder(net, "fp32")
    cache = FeatureCache(
        FeatureCacheConfig(enabled=True, dir=str(Path(args.workdir) / "features"), precision="fp32"), encoder
    )

    def features(datamodule, split: str, n: int | None) -> tuple[np.ndarray, np.ndarray, float]:
        """The split's pooled features under the eval transform (memory-mapped cache), labels, seconds."""
        dataset = subsample(getattr(datamodule, f"data_{split}"), n, args.seed)
        start = time.perf_counter()
        rows = cache.features(dataset, [(datamodule.eval_transform, None)], f"{weights} {split}")[0]
        return np.asarray(rows), dataset.records["label"].to_numpy(), time.perf_counter() - start

    GlobalHydra.instance().clear()
    kermany = data_module("chest_xray", KERMANY, source, entry.architecture, args)
    GlobalHydra.instance().clear()
    x_train, y_train, t_train = features(kermany, "train", args.n_train)
    x_val, y_val, t_val = features(kermany, "val", args.n_val)
    x_test, y_test, t_test = features(kermany, "test", args.n_test)
    covid = (
        data_module("covid_collection", COVID, source, entry.architecture, args) if COVID.is_dir() else None
    )
    GlobalHydra.instance().clear()
    x_covid, y_covid, t_covid = features(covid, "test", None) if covid else (None, None, 0.0)

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    scale = lambda x: (x - mean) / std  # noqa: E731
    fits = {
        c: LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(scale(x_train), y_train)
        for c in C_GRID
    }
    val_auroc = {c: roc_auc_score(y_val, fit.predict_proba(scale(x_val))[:, 1]) for c, fit in fits.items()}
    best_c = max(val_auroc, key=val_auroc.get)
    head = fits[best_c]
    fpr, tpr, thresholds = roc_curve(y_val, head.predict_proba(scale(x_val))[:, 1])
    threshold = float(thresholds[np.argmax(tpr - fpr)])

    def scores(x: np.ndarray, y: np.ndarray) -> dict:
        p = head.predict_proba(scale(x))[:, 1]
        rng = np.random.default_rng(args.seed)
        boot = np.array([_auroc(y, p, rng.integers(0, len(y), len(y))) for _ in range(args.bootstrap)])
        low, high, _ = percentile_interval(boot, 0.95)
        decided = p >= threshold
        return {
            "n": len(y),
            "auroc": round(float(roc_auc_score(y, p)), 4),
            "auroc_ci95": [round(low, 4), round(high, 4)],
            "accuracy": round(float((decided == y).mean()), 4),
            "sensitivity": round(float(decided[y == 1].mean()), 4),
            "specificity": round(float((~decided[y == 0]).mean()), 4),
        }

    return {
        "weights": weights,
        "architecture": entry.architecture,
        "pretrained": source is not None,
        "note": None if source else f"random weights: {entry.file} not found ({entry.url})",
        "input_family": net.input_spec.family if net.input_spec else "backbone default",
        "features": int(x_train.shape[1]),
        "n_train": len(y_train),
        "n_val": len(y_val),
        "C": best_c,
        "val_auroc": round(float(val_auroc[best_c]), 4),
        "threshold": round(threshold, 4),
        "kermany_test": scores(x_test, y_test),
        "covid_collection": scores(x_covid, y_covid) if covid else None,
        "extraction_s": round(t_train + t_val + t_test + t_covid, 1),
        "images_per_s": round((len(y_train) + len(y_val) + len(y_test)) / (t_train + t_val + t_test), 1),
    }


def _auroc(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> float:
    """AUROC of one bootstrap resample (NaN when it holds one class)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y[idx], p[idx])) if len(np.unique(y[idx])) == 2 else float("nan")


def main() -> None:
    """One row per backbone, side by side, in one JSON."""
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="*", help="registry names (default: every one on this machine)")
    parser.add_argument("--weights-dir", default=None, help="the weights folder (default: paths.weights_dir)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n-train", type=int, default=None, help="subsample the train split (default: all)")
    parser.add_argument("--n-val", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="feature cache and scratch (default: a temp folder)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.weights or available(args.weights_dir) or [FALLBACK]
    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = args.workdir or scratch
        rows = [probe(name, args) for name in names]
    emit(
        {
            "benchmark": "linear_probe",
            "command": " ".join(["python", "benchmarks/linear_probe.py", *sys.argv[1:]]),
            "random_weights_only": not any(row["pretrained"] for row in rows),
            "rows": rows,
            "machine": machine(),
            "peak_rss_mb": peak_rss_mb(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
