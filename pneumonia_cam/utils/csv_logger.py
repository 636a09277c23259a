"""Lightning's CSVLogger, fixed for ddp_spawn: test rows no longer clash with the fit stage's columns."""

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class ColumnMergingWriter(ExperimentWriter):
    """Adopt the columns already in metrics.csv before adding new ones.

    Under ddp_spawn, fit and test run in different child processes, each holding a copy of a writer that
    never saw the other's columns; Lightning's writer then rewrites the file with only its own header and
    fails on the older rows ("dict contains fields not in fieldnames").
    """

    def _record_new_keys(self) -> set[str]:
        """Merge the existing file's header into the known keys, then record this batch's new keys."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys.extend(key for key in header if key not in self.metrics_keys)
        return super()._record_new_keys()


class CSVLogger(LightningCSVLogger):
    """CSVLogger that writes through ColumnMergingWriter."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer, created on first use like Lightning's own."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ColumnMergingWriter(log_dir=self.log_dir)
        return self._experiment
