"""Hydra callback for seed sweeps: evaluate each training job's checkpoint, then summarise the sweep.

    python src/train.py -m experiment=kermany_resnet18_budget seed=42,43,44,45,46 hydra/callbacks=seed_summary

After each job, `src/eval.py` runs on the job's best checkpoint into `<job dir>/eval` (its own process, so
the training job's Hydra state and memory are gone), with the job's wall time in `<job dir>/wall_time.json`.
When the sweep ends, `<sweep dir>/seeds.md` holds the per-seed rows and mean ± std, as
`src/summarize_seeds.py` writes them. A failed job is not evaluated; the sweep stops there, as Hydra's
launchers do.
"""

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pneumonia_cam.evaluation.seeds import WALL_TIME_FILE, expand_runs, load_seed_run, seeds_markdown
from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

SUMMARY_FILE = "seeds.md"


def best_checkpoint(run_dir: Path) -> Path:
    """The run's one best checkpoint (`checkpoints/epoch_*.ckpt`, ModelCheckpoint's save_top_k=1)."""
    found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected one best checkpoint checkpoints/epoch_*.ckpt in {run_dir}, found {len(found)}: "
            "seed summaries need callbacks.model_checkpoint.save_top_k=1"
        )
    return found[0]


class SeedSummary(Callback):
    """`eval.py` after every job of a sweep, `seeds.md` (mean ± std over the jobs) after the sweep."""

    def __init__(self, eval_overrides: Sequence[str] = (), output: str = SUMMARY_FILE) -> None:
        self.eval_overrides = list(eval_overrides)
        self.output = output
        self._started = 0.0

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the job's clock."""
        self._started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Record the wall time and run eval.py on the job's best checkpoint."""
        if job_return.status != JobStatus.COMPLETED:
            return
        run_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        wall = {"seed": config.get("seed"), "train_wall_s": round(time.monotonic() - self._started, 1)}
        (run_dir / WALL_TIME_FILE).write_text(json.dumps(wall))
        command = [
            sys.executable,
            str(Path(config.paths.root_dir) / "src" / "eval.py"),
            f"ckpt_path={best_checkpoint(run_dir)}",
            f"hydra.run.dir={run_dir / 'eval'}",
            "extras.print_config=false",
            *self.eval_overrides,
        ]
        log.info(f"Evaluating {run_dir.name}: {' '.join(command[1:])}")
        subprocess.run(command, check=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the per-seed and mean ± std tables of every evaluated job of this sweep."""
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = [load_seed_run(folder) for folder in expand_runs([str(sweep_dir / "*" / "eval")])]
        markdown = seeds_markdown(runs)
        (sweep_dir / self.output).write_text(markdown)
        log.info(f"{len(runs)} seeds -> {sweep_dir / self.output}\n{markdown}")
