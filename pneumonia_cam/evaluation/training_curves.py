"""At the end of training, plot loss and the monitored metric per epoch from the run's own CSV log."""

from pathlib import Path

from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning_utilities.core.rank_zero import rank_zero_only

from pneumonia_cam.evaluation.plots import plot_training_curves
from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)


@rank_zero_only
def write_training_curves(trainer: Trainer, monitor: str, output_dir: str | Path) -> Path | None:
    """training_curves.png in the run directory; needs the CSV logger (the default)."""
    csv_logger = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
    if csv_logger is None:
        log.warning("No CSV logger: training_curves.png is not written (add logger=csv or many_loggers)")
        return None
    csv_logger.save()
    metrics = Path(csv_logger.log_dir, "metrics.csv")
    if not metrics.is_file():
        return None
    return plot_training_curves(metrics, monitor, Path(output_dir, "training_curves.png"))
