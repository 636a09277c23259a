"""Every experiment config composes and trains one fast_dev_run step, on real Kermany images (a subset)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import KERMANY, ROOT, SHARED_DATA, compose_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from src.train import train

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
FOLDER_SOURCE = "pneumonia_cam.data.sources.FolderSource"
MEDMNIST_SOURCE = "pneumonia_cam.data.sources.MedMNISTSource"
MIXED_SOURCE = "pneumonia_cam.data.sources.MixedSource"
COVID = SHARED_DATA / "covid_collection_subset"


@pytest.fixture(scope="module")
def kermany_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Kermany-layout copy (links to real images): 24 train and 6 test images per class."""
    if not KERMANY.is_dir():
        pytest.skip(f"real data not found at {KERMANY}")
    root = tmp_path_factory.mktemp("kermany_subset")
    for split, count in (("train", 24), ("test", 6)):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for image in sorted((KERMANY / split / label).glob("*.jpeg"))[:count]:
                (folder / image.name).symlink_to(image)
    return root


@pytest.fixture(scope="module")
def kermany_npz(kermany_subset: Path) -> Path:
    """The same subset as a PneumoniaMNIST-format npz (224 px): 20 train, 4 val, 6 test images per class."""
    arrays: dict[str, list] = {}
    for source_split, parts in (("train", (("train", 0, 20), ("val", 20, 24))), ("test", (("test", 0, 6),))):
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            files = sorted((kermany_subset / source_split / name).glob("*.jpeg"))
            for split, start, stop in parts:
                images = [cv2.imread(str(file), cv2.IMREAD_GRAYSCALE) for file in files[start:stop]]
                arrays.setdefault(f"{split}_images", []).extend(images)
                arrays.setdefault(f"{split}_labels", []).extend([[label]] * len(images))
    path = kermany_subset / "pneumoniamnist_224.npz"
    np.savez(path, **{key: np.asarray(value, dtype=np.uint8) for key, value in arrays.items()})
    return path


# experiments whose data cannot be generated or redistributed here (tests/test_reference_sources.py covers it)
EXTERNAL_DATA = {
    "reference_resnet152_frozen": "needs RSNA images (Kaggle terms); its data layer is tested apart"
}


@pytest.mark.slow  # full-size networks (ResNet-152, DenseNet-121) at 224 px, one per experiment
@pytest.mark.parametrize(
    "experiment",
    [
        pytest.param(e, marks=pytest.mark.skip(reason=EXTERNAL_DATA[e])) if e in EXTERNAL_DATA else e
        for e in EXPERIMENTS
    ],
)
def test_experiment_trains_a_fast_dev_run(experiment, tmp_path, data_dir, request):
    """The experiment as shipped (random weights, no logger): one train/val/test batch, finite losses."""
    cfg = compose_config(
        "train.yaml",
        [f"experiment={experiment}", "debug=fdr", "model.weights=null", "trainer.detect_anomaly=false"],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(tmp_path)
        cfg.paths.data_dir = str(data_dir)
        cfg.extras.print_config = False
        cfg.callbacks.rich_progress_bar = None
        if cfg.data.source._target_ == FOLDER_SOURCE:
            cfg.data.data_dir = str(request.getfixturevalue("kermany_subset"))
        if cfg.data.source._target_ == MEDMNIST_SOURCE:
            cfg.data.source.npz = str(request.getfixturevalue("kermany_npz"))
        if cfg.data.source._target_ == MIXED_SOURCE and cfg.data.source.get("label_by") == "source":
            if not COVID.is_dir():
                pytest.skip(f"real data not found at {COVID}")
            cfg.data.source.data_dirs.kermany = str(request.getfixturevalue("kermany_subset"))
            cfg.data.source.data_dirs.covid = str(COVID)
        for cache in ("image_cache", "feature_cache"):
            cfg.data[cache].dir = str(tmp_path / cache)
    HydraConfig().set_config(cfg)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["test/loss"])
    assert objects["model"].hparams.backbone == cfg.model.backbone
