"""Frozen-backbone fast path: cached features train the same head, are keyed by content, and refuse to lie."""

from pathlib import Path

import albumentations as A
import cv2
import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from pneumonia_cam.data.dataset import XrayDataset
from pneumonia_cam.data.feature_cache import FeatureCache, FeatureCacheConfig
from pneumonia_cam.data.image_cache import ImageCache
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.classifier import PneumoniaClassifier
from pneumonia_cam.models.encoder import backbone_encoder
from pneumonia_cam.models.net import ChestXrayNet

SIZE = 32
EVAL = A.Compose(
    [A.Resize(SIZE, SIZE), A.ToRGB(num_output_channels=3), A.Normalize(), A.pytorch.ToTensorV2()]
)


def frozen_smoke(cfg: DictConfig, cache_dir: Path, enabled: bool) -> DictConfig:
    """The smoke experiment with a fully frozen backbone, no augmentation, fp32 features, 2 epochs."""
    with open_dict(cfg):
        cfg.model.unfreeze = []
        cfg.trainer.max_epochs = 2
        cfg.data.transforms.augment = []
        cfg.data.feature_cache = {"enabled": enabled, "dir": str(cache_dir), "views": 0, "precision": "fp32"}
    return cfg


def fit(cfg: DictConfig) -> PneumoniaClassifier:
    """Seed, build and fit the way train.py does, without loggers or checkpoints."""
    L.seed_everything(0, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, callbacks=[], enable_model_summary=False
    )
    trainer.fit(model, datamodule)
    return model


def count_backbone_calls(net: ChestXrayNet) -> list[int]:
    """A one-element counter of backbone forward passes (images seen)."""
    calls = [0]
    net.features.register_forward_hook(
        lambda _module, inputs, _out: calls.__setitem__(0, calls[0] + len(inputs[0]))
    )
    return calls


@pytest.fixture
def image_records(tmp_path: Path) -> pd.DataFrame:
    """Eight small random grey PNGs on disk, as a records table."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(8):
        path = tmp_path / "images" / f"img{index}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 40), dtype=np.uint8))
        rows.append({"path": str(path), "label": index % 2})
    return pd.DataFrame(rows)


def dataset(records: pd.DataFrame, transform: A.Compose = EVAL) -> XrayDataset:
    """Files read as grey uint8."""
    return XrayDataset(records, lambda path: cv2.imread(path, cv2.IMREAD_GRAYSCALE), transform)


def feature_cache(tmp_path: Path, net: ChestXrayNet) -> FeatureCache:
    """An fp32 cache in this test's folder."""
    config = FeatureCacheConfig(enabled=True, dir=str(tmp_path / "cache"), precision="fp32")
    return FeatureCache(config, backbone_encoder(net, config.precision))


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_cached_and_plain_training_give_the_same_head(cfg_train, tmp_path, backbone):
    """Same seed, fp32, no augmentation: training on cached features == training through the backbone."""
    with open_dict(cfg_train):
        cfg_train.model.backbone = backbone
        cfg_train.model.unfreeze = []
    plain = fit(frozen_smoke(cfg_train.copy(), tmp_path / "unused", enabled=False))
    cached = fit(frozen_smoke(cfg_train.copy(), tmp_path / "features", enabled=True))
    assert len(list((tmp_path / "features").glob("*.npy"))) == 2  # train and val, each computed once
    for name in ("weight", "bias"):
        torch.testing.assert_close(
            getattr(cached.net.head.fc, name), getattr(plain.net.head.fc, name), atol=1e-5, rtol=0
        )
    assert not torch.equal(cached.net.head.fc.weight, instantiate(cfg_train.model).net.head.fc.weight)


def test_unfrozen_backbone_is_refused(cfg_train, tmp_path):
    """The smoke recipe trains layer3/4, so its features change every step: the cache says so and stops."""
    with open_dict(cfg_train):
        cfg_train.data.feature_cache = {"enabled": True, "dir": str(tmp_path / "features")}
    with pytest.raises(ValueError, match=r"fully frozen backbone.*layer3"):
        fit(cfg_train)
    with pytest.raises(ValueError, match="fully frozen"):
        feature_cache(tmp_path, ChestXrayNet("resnet18", None, freeze_backbone=False))


def test_cache_is_reused_and_invalidated_by_content(image_records, tmp_path):
    """Same images, transform and weights reuse the file; changing any of them computes new features."""
    torch.manual_seed(0)
    net = ChestXrayNet("resnet18", None)
    calls = count_backbone_calls(net)
    cache = feature_cache(tmp_path, net)
    views = [(EVAL, None)]
    first = cache.features(dataset(image_records), views, "val")
    assert calls[0] == 8 and first.shape == (1, 8, 512)
    again = cache.features(dataset(image_records), views, "val")
    assert calls[0] == 8 and np.array_equal(first, again)

    other_transform = A.Compose([A.Resize(SIZE + 8, SIZE + 8), *EVAL.transforms[1:]])
    cache.features(dataset(image_records, other_transform), [(other_transform, None)], "val")
    assert calls[0] == 16

    cv2.imwrite(image_records["path"][0], np.zeros((40, 40), np.uint8))
    changed_image = cache.features(dataset(image_records), views, "val")
    assert calls[0] == 24 and not np.array_equal(changed_image[0, 0], first[0, 0])
    np.testing.assert_array_equal(changed_image[0, 1:], first[0, 1:])

    with torch.no_grad():
        net.features.bn1.running_mean += 0.5
    feature_cache(tmp_path, net).features(dataset(image_records), views, "val")
    assert calls[0] == 32
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4


def test_views_differ_but_are_reproducible(image_records, tmp_path):
    """K augmented views are K different draws, and the same (seed, view) gives the same features."""
    torch.manual_seed(0)
    net = ChestXrayNet("resnet18", None)
    augment = A.Compose([A.Affine(rotate=(-30, 30), translate_percent=(-0.1, 0.1), p=1.0), *EVAL.transforms])
    views = [(augment, 7)] * 3
    features = feature_cache(tmp_path / "a", net).features(dataset(image_records, augment), views, "train")
    assert features.shape == (3, 8, 512)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not np.allclose(features[a], features[b], atol=1e-4)
    again = feature_cache(tmp_path / "b", net).features(dataset(image_records, augment), views, "train")
    np.testing.assert_array_equal(features, again)


def test_bf16_predictor_agrees_with_fp32(image_records):
    """bf16 autocast + channels_last probabilities stay close to plain fp32 eager ones."""
    torch.manual_seed(0)
    model = PneumoniaClassifier(backbone="resnet18", weights=None).eval()
    batch = torch.stack([dataset(image_records)[i][0] for i in range(8)])
    with torch.no_grad():
        eager = torch.softmax(model(batch), dim=1)
    inference = InferenceModel(model.net, ("NORMAL", "PNEUMONIA"))
    torch.testing.assert_close(inference.predict_proba(batch), eager, atol=1e-5, rtol=0)
    bf16 = inference.configure(precision="bf16").predict_proba(batch)
    assert (bf16 - eager).abs().max() <= 0.05


def test_image_cache_serves_the_same_pixels_without_decoding(image_records, tmp_path):
    """Cached pre-processing equals the file pipeline's, and a second build decodes nothing."""
    reads = [0]

    def reader(path: str) -> np.ndarray:
        reads[0] += 1
        return cv2.imread(path, cv2.IMREAD_GRAYSCALE)

    preprocess = A.Compose([A.CLAHE(clip_limit=(2.0, 2.0), p=1.0), A.Resize(SIZE, SIZE)])
    paths = image_records["path"].tolist()
    cache = ImageCache.build(paths, reader, preprocess, tmp_path)
    for path in paths:
        np.testing.assert_array_equal(cache.read(path), preprocess(image=reader(path))["image"])
    before = reads[0]
    ImageCache.build(paths, reader, preprocess, tmp_path)
    assert reads[0] == before + 1  # only the probe image that gives the cached shape


@pytest.mark.parametrize(("experiment", "enabled"), [("resnet152_frozen", True), ("smoke", False)])
def test_feature_cache_defaults(experiment, enabled):
    """On for the frozen reference recipe, off for the smoke recipe (which trains layer3/4)."""
    cfg = compose_config("train.yaml", [f"experiment={experiment}"])
    assert cfg.data.feature_cache.enabled is enabled
