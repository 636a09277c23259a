"""The data-layer reshaping kept what existing configs produce: split files and feature-cache keys are
the bytes the earlier layout (commit 56c9561) produced, pinned here (they change only with the pins)."""

import pytest
import torch
from helpers import KERMANY, compose_config
from hydra.utils import instantiate

from pneumonia_cam.data.feature_cache import FeatureCache, FeatureCacheConfig
from pneumonia_cam.models.encoder import backbone_encoder

# computed with the code of 56c9561 (before issue 12) on the same inputs
KERMANY_SPLIT = "9b047d92a16c534915c798f031bc8a917fa9b11a7e9e2b8fee864b6e8ff32d6b"
KERMANY_FEATURE_KEY = "8609008acfe402823672b3eb51d7cb0dceb3591c46f28aebda07b93d74b7a80f"
SYNTHETIC_SPLIT = "631e0a4b6025151a5493363f4a66b0c1470d5f378d4ed5778d5ecca5bf8c57a3"


def test_smoke_split_is_unchanged(tmp_path):
    cfg = compose_config(
        "train.yaml",
        ["experiment=smoke", f"paths.data_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"],
    )
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.split_hash == SYNTHETIC_SPLIT


@pytest.mark.real_data
@pytest.mark.skipif(not KERMANY.is_dir(), reason="../shared/data/chest_xray_kermany224 is absent")
def test_kermany_split_and_feature_key_are_unchanged(tmp_path):
    overrides = [
        f"data.data_dir={KERMANY}",
        f"paths.output_dir={tmp_path}",
        "data.check_images=false",
        "model=resnet18",
        "model.weights=null",
    ]
    cfg = compose_config("train.yaml", ["data=chest_xray", *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    assert datamodule.split_hash == KERMANY_SPLIT
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    config = FeatureCacheConfig(enabled=True, dir=str(tmp_path / "cache"), precision="fp32")
    cache = FeatureCache(config, backbone_encoder(model.net, "fp32"))
    val = datamodule.data_val
    eight = type(val)(val.records.head(8), val.reader, val.transform)
    assert cache.key(eight, [(datamodule.eval_transform, None)]) == KERMANY_FEATURE_KEY
