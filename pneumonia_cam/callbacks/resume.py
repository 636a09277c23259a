"""Make interrupted runs resumable: stop cleanly on preemption signals, resume with the same random streams.

`Preemption` turns SIGUSR1 (SLURM's `--signal=USR1@<s>` warning before the time limit) into Lightning's own
SIGTERM path: the current batch finishes, `last.ckpt` is written, and the process exits with code 0. On SLURM
it then requeues the job (`scontrol requeue`), which reruns the same command; with `ckpt_path=auto` that run
continues from `last.ckpt`. It is the only requeue owner while a Trainer runs: it replaces the SIGUSR1 handler
that Lightning's SLURMEnvironment or submitit installed, and Lightning puts the previous one back at teardown.
SIGTERM (scancel, a preempting job) also saves and stops, but never requeues.

`RNGStateCheckpoint` stores the global torch/numpy/python random states in every checkpoint and restores them,
so the shuffle order of the epochs after a resume is the one the uninterrupted run would have drawn.
"""

import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=False)


class Preemption(Callback):
    """On SIGUSR1 or SIGTERM finish the batch, write `ckpt_path`, exit 0; after SIGUSR1 on SLURM, requeue."""

    def __init__(self, ckpt_path: str, requeue: bool = True) -> None:
        self.ckpt_path = Path(ckpt_path)
        self.requeue = requeue
        self.requeue_requested = False

    def _hold_sigusr1(self, *_: Any) -> None:
        """Take SIGUSR1 once Lightning registered its handlers; its teardown restores the previous one."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._on_sigusr1)

    on_sanity_check_start = on_train_start = on_validation_start = _hold_sigusr1
    on_test_start = on_predict_start = _hold_sigusr1

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """After a signal stopped the run: save the fitting state to `ckpt_path`, then requeue if asked."""
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            trainer.save_checkpoint(self.ckpt_path)
            log.info(f"Stopped by a signal at global step {trainer.global_step}; saved {self.ckpt_path}")
        if self.requeue and self.requeue_requested and trainer.is_global_zero:
            requeue_slurm_job()

    def _on_sigusr1(self, signum: int, frame: FrameType | None) -> None:
        """Note the requeue request and raise SIGTERM, whose Lightning handler stops at the next batch end."""
        log.info(f"Received signal {signal.Signals(signum).name}: stopping after this batch")
        self.requeue_requested = True
        os.kill(os.getpid(), signal.SIGTERM)


def requeue_slurm_job() -> None:
    """`scontrol requeue` this job (array task included) when running under SLURM; log the outcome."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job_id:
        log.info("Not under SLURM: nothing to requeue; rerun the command with ckpt_path=auto to resume")
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        log.warning(f"scontrol not found: SLURM job {job_id} was not requeued")
        return
    if result.returncode == 0:
        log.info(f"Requeued SLURM job {job_id}")
    else:
        log.warning(f"Requeueing SLURM job {job_id} failed ({result.returncode}): {result.stderr.strip()}")


class RNGStateCheckpoint(Callback):
    """Save and restore the global torch (CPU, CUDA), numpy and python random states with each checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, ints and tuples only, so checkpoints still load with `weights_only=True`."""
        _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore before the first training batch (Lightning loads callback states before fitting starts)."""
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        keys, position, has_gauss, cached_gaussian = state_dict["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
        random.setstate(state_dict["python"])
