"""One definition of the classification metrics, cloned per stage by the LightningModule."""

import torch
from torchmetrics import AUROC, Accuracy, F1Score, MetricCollection, Precision, Recall, Specificity

from pneumonia_cam.models.decision import DEFAULT_THRESHOLD, strict_threshold

_METRICS = {
    "acc": Accuracy,
    "auroc": AUROC,
    "f1": F1Score,
    "precision": Precision,
    "recall": Recall,
    "specificity": Specificity,
}


def build_metrics(num_classes: int) -> MetricCollection:
    """Binary metrics on P(class 1) for two classes (pneumonia = positive), macro multiclass otherwise.

    Binary decisions follow the project's rule (P >= 0.5), not torchmetrics' own `P > 0.5`.
    """
    if num_classes != 2:
        task = {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
        return MetricCollection({name: metric(**task) for name, metric in _METRICS.items()})
    decided = {"threshold": strict_threshold(DEFAULT_THRESHOLD)}
    return MetricCollection(
        {
            name: metric(task="binary", **({} if metric is AUROC else decided))
            for name, metric in _METRICS.items()
        }
    )


def metric_scores(log_probs: torch.Tensor) -> torch.Tensor:
    """Class probabilities shaped for ``build_metrics``, in float64 from the log-odds.

    A confident float32 model rounds P(class 1) to exactly 1.0 for many images, and those ties corrupt
    AUROC; the log-odds keep the ranking, and float64 keeps it through the sigmoid.
    """
    log_probs = log_probs.double()
    if log_probs.shape[1] == 2:
        return torch.sigmoid(log_probs[:, 1] - log_probs[:, 0])
    return log_probs.softmax(dim=1)
