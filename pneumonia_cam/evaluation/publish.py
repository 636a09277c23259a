"""Send an evaluation to the run's loggers: metrics everywhere, plots as images, W&B native charts."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger


def flat_metrics(summary: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """eval/<metric>, eval/<metric>_low, eval/<metric>_high for every metric that has a value."""
    flat = {}
    for name, interval in summary["metrics"].items():
        for key, suffix in (("value", ""), ("low", "_low"), ("high", "_high")):
            value = interval.get(key)
            if value is not None and np.isfinite(value):
                flat[f"{prefix}/{name}{suffix}"] = float(value)
    flat[f"{prefix}/threshold"] = float(summary["operating_point"]["threshold"])
    return flat


def publish(
    summary: dict[str, Any],
    plots: Sequence[Path],
    table: pd.DataFrame,
    loggers: Sequence[Logger],
    class_names: Sequence[str],
    table_rows: int = 100,
) -> None:
    """Metrics to every logger; plots to TensorBoard and W&B; W&B also gets native charts and a table."""
    metrics = flat_metrics(summary)
    for logger in loggers:
        logger.log_metrics(metrics)
        if isinstance(logger, TensorBoardLogger):
            for path in plots:
                image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
                logger.experiment.add_image(f"eval/{path.stem}", image, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            _publish_wandb(logger, plots, table, class_names, table_rows)


def _publish_wandb(
    logger: WandbLogger, plots: Sequence[Path], table: pd.DataFrame, class_names: Sequence[str], rows: int
) -> None:
    """W&B's own confusion matrix and ROC, the PNG plots, and a predictions table with thumbnails."""
    import wandb

    y = table["label"].to_numpy()
    prob = table["probability"].to_numpy()
    probs = np.stack([1 - prob, prob], axis=1)
    predictions = wandb.Table(columns=["image", "path", "patient_id", "label", "probability", "prediction"])
    for _, row in table.head(rows).iterrows():
        thumbnail = _thumbnail(row["path"])
        predictions.add_data(
            wandb.Image(thumbnail) if thumbnail is not None else None,
            row["path"],
            row["patient_id"],
            row["label_name"],
            float(row["probability"]),
            row["prediction_name"],
        )
    logger.experiment.log(
        {
            "eval/confusion_matrix_chart": wandb.plot.confusion_matrix(
                y_true=y.tolist(), preds=table["prediction"].tolist(), class_names=list(class_names)
            ),
            "eval/roc_chart": wandb.plot.roc_curve(y.tolist(), probs.tolist(), labels=list(class_names)),
            "eval/predictions": predictions,
            **{f"eval/{path.stem}": wandb.Image(str(path)) for path in plots},
        }
    )


def _thumbnail(path: str, size: int = 96) -> np.ndarray | None:
    """A small grey preview of an image file (None for pseudo paths such as PneumoniaMNIST records)."""
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE) if Path(path).is_file() else None
    if image is None:
        return None
    scale = size / max(image.shape)
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))))
