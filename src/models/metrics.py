"""One definition of the classification metrics, cloned per stage by the LightningModule."""

import torch
from torchmetrics import AUROC, Accuracy, F1Score, MetricCollection, Precision, Recall, Specificity

_METRICS = {
    "acc": Accuracy,
    "auroc": AUROC,
    "f1": F1Score,
    "precision": Precision,
    "recall": Recall,
    "specificity": Specificity,
}


def build_metrics(num_classes: int) -> MetricCollection:
    """Binary metrics on P(class 1) for two classes (pneumonia = positive), macro multiclass otherwise."""
    task = (
        {"task": "binary"}
        if num_classes == 2
        else {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
    )
    return MetricCollection({name: metric(**task) for name, metric in _METRICS.items()})


def metric_scores(probs: torch.Tensor) -> torch.Tensor:
    """Shape class probabilities the way ``build_metrics`` expects them."""
    return probs[:, 1] if probs.shape[1] == 2 else probs
