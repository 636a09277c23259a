"""The model side of the frozen-feature cache: a backbone as the data layer's FeatureEncoder."""

from __future__ import annotations

from pneumonia_cam.data.disk_cache import weights_digest
from pneumonia_cam.data.feature_cache import FeatureEncoder
from pneumonia_cam.models.net import ChestXrayNet
from pneumonia_cam.models.predictor import Predictor


def require_frozen_backbone(net: ChestXrayNet) -> None:
    """Cached features are only valid while the backbone cannot change: refuse any trainable stage."""
    if not isinstance(net, ChestXrayNet):
        raise ValueError(
            f"cached backbone features need one network; a {type(net).__name__} (ensemble or test-time "
            "augmentation) runs on the images: set feature_cache=false"
        )
    if not net.backbone_frozen:
        trainable = [name for name, _ in net.features.named_children() if name not in net._frozen_stages]
        raise ValueError(
            "data.feature_cache.enabled=true needs a fully frozen backbone (model.freeze_backbone=true and "
            f"model.unfreeze=[]), but these stages train: {trainable}. Disable the cache "
            "(data.feature_cache.enabled=false) or freeze the backbone."
        )


def backbone_encoder(net: ChestXrayNet, precision: str) -> FeatureEncoder:
    """The frozen backbone's pooled features (eval, inference_mode, channels_last, autocast at precision)."""
    require_frozen_backbone(net)
    predictor = Predictor(net, net.pooled_features, precision=precision)
    return FeatureEncoder(weights_digest(net.features), net.head.fc.in_features, predictor)
