"""A LightningModule over an InferenceModel for eval's Trainer; apart, so serving never imports Lightning."""

import torch
from lightning import LightningModule

from pneumonia_cam.data.feature_cache import FeatureEncoder
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.encoder import backbone_encoder


class PredictionModule(LightningModule):
    """Lets a Trainer (devices, the data module's feature cache) run an InferenceModel over whole loaders."""

    def __init__(self, model: InferenceModel) -> None:
        super().__init__()
        self.model = model
        self.net = model.net

    def feature_encoder(self, precision: str) -> FeatureEncoder:
        """What the data module's feature cache runs (eval on cached features): the model's backbone."""
        return backbone_encoder(self.net, precision)

    def predict_step(self, batch: torch.Tensor | tuple, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class log-probabilities (T = 1) of images, or of cached pooled features (B x C)."""
        inputs = batch[0] if isinstance(batch, tuple | list) else batch
        logits = self.net.head.logits(inputs) if inputs.ndim == 2 else self.model.forward(inputs)[1]
        return {"log_probs": torch.log_softmax(logits.float(), dim=1)}
