"""last.ckpt is the latest state, preemption signals save it and stop, `ckpt_path=auto` resumes from it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import smoke_config
from helpers import ROOT
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning import Callback, LightningModule, Trainer
from omegaconf import DictConfig, open_dict

STEPS_PER_EPOCH = 4  # smoke set: 112 training images in batches of 32
# bitwise-reproducible CPU runs, augmentation on (train order and augmentation follow (seed, epoch, position))
EXACT = {"trainer.deterministic": True, "data.num_workers": 0}


class SignalProbe(Callback):
    """Test helper: at step `at_step` touch `marker` (and send `send` to this process, if given), then block
    until Lightning has seen the signal; record the global step each fit starts from in `marker`.starts."""

    def __init__(self, at_step: int, marker: str, send: int | None = None) -> None:
        self.at_step = at_step
        self.marker = Path(marker)
        self.send = send

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Append the step this fit starts from (0 for a fresh run, the checkpoint's for a resumed one)."""
        with self.marker.with_suffix(".starts").open("a") as starts:
            starts.write(f"{trainer.global_step}\n")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *_: object) -> None:
        """Hold the run at `at_step` until the signal arrived, so the interruption point is exact."""
        if trainer.global_step != self.at_step:
            return
        self.marker.touch()
        if self.send is not None:
            os.kill(os.getpid(), self.send)
        deadline = time.monotonic() + 60
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.02)


def configure(cfg: DictConfig, **values: object) -> DictConfig:
    """Set dotted keys on a composed config (fast: no logger, LR monitor, CAM panel or test)."""
    values = {
        "test": False,
        "logger": None,
        "callbacks.lr_monitor": None,
        "callbacks.cam_panel": None,
        **values,
    }
    with open_dict(cfg):
        for key, value in values.items():
            *parents, leaf = key.split(".")
            node = cfg
            for parent in parents:
                node = node[parent]
            node[leaf] = value
    return cfg


def run_train(cfg: DictConfig) -> dict:
    """Train in this process, as `@hydra.main` would, and return the built objects."""
    from src.train import train

    HydraConfig().set_config(cfg)
    return train(cfg)[1]


def load(path: Path) -> dict:
    """A checkpoint, loaded the way resuming loads it."""
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resolve_ckpt_path(tmp_path):
    """`auto` is the run's last.ckpt when it exists, else None; any other value passes through unchanged."""
    from src.train import resolve_ckpt_path

    assert resolve_ckpt_path("auto", str(tmp_path)) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.touch()
    assert resolve_ckpt_path("auto", str(tmp_path)) == str(last)
    assert resolve_ckpt_path("/some/epoch_003.ckpt", str(tmp_path)) == "/some/epoch_003.ckpt"
    assert resolve_ckpt_path(None, str(tmp_path)) is None


@pytest.mark.slow
def test_last_checkpoint_is_the_final_epoch_not_the_best(cfg_train):
    """Best stays at epoch 0 (monitor `epoch`, mode min never improves): last.ckpt still holds epoch 3."""
    configure(
        cfg_train,
        **{
            "trainer.max_epochs": 4,
            "callbacks.model_checkpoint.monitor": "epoch",
            "callbacks.model_checkpoint.mode": "min",
            "callbacks.early_stopping": None,
        },
    )
    objects = run_train(cfg_train)
    trainer = objects["trainer"]
    assert trainer.global_step == 4 * STEPS_PER_EPOCH
    best = Path(trainer.checkpoint_callback.best_model_path)
    assert best.name == "epoch_000.ckpt"  # the best-model callback is still trainer.checkpoint_callback
    assert load(best)["epoch"] == 0
    last = load(best.parent / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (3, 4 * STEPS_PER_EPOCH)
    assert torch.equal(last["state_dict"]["net.head.fc.weight"], objects["model"].net.head.fc.weight)
    assert sorted(p.name for p in best.parent.glob("*.ckpt")) == ["epoch_000.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_interrupted_then_auto_resumed_equals_uninterrupted(cfg_train, tmp_path, data_dir):
    """2 epochs, then `ckpt_path=auto` to 4 in the same run dir, ends bitwise equal to 4 epochs in one go.

    Epoch 1 does not improve on epoch 0 (monitor `epoch`, mode min): a last.ckpt that copied the best epoch
    would resume from epoch 0 and end elsewhere.
    """
    base = {
        **EXACT,
        "callbacks.early_stopping": None,
        "callbacks.model_checkpoint.monitor": "epoch",
        "callbacks.model_checkpoint.mode": "min",
    }
    configure(cfg_train, **base, **{"trainer.max_epochs": 2, "ckpt_path": "auto"})
    first = run_train(cfg_train)["trainer"]
    assert first.global_step == 2 * STEPS_PER_EPOCH
    assert load(Path(first.checkpoint_callback.best_model_path))["epoch"] == 0
    configure(cfg_train, **{"trainer.max_epochs": 4})
    resumed = run_train(cfg_train)
    assert resumed["trainer"].global_step == 4 * STEPS_PER_EPOCH

    straight = configure(smoke_config(tmp_path / "straight", data_dir), **base, **{"trainer.max_epochs": 4})
    reference = run_train(straight)
    GlobalHydra.instance().clear()
    assert_same_weights(resumed["model"], reference["model"])


def assert_same_weights(model: LightningModule, reference: LightningModule) -> None:
    """Every parameter and buffer bitwise equal."""
    weights = model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(value, weights[key]), key


def with_probe(cfg: DictConfig, marker: Path, at_step: int, send: int | None = None) -> DictConfig:
    """Add SignalProbe to the callbacks."""
    with open_dict(cfg):
        cfg.callbacks.signal_probe = {
            "_target_": "test_resume.SignalProbe",
            "at_step": at_step,
            "marker": str(marker),
            "send": None if send is None else int(send),
        }
    return cfg


@pytest.mark.slow
def test_mid_epoch_stop_then_auto_resume_equals_uninterrupted(cfg_train, tmp_path, data_dir):
    """SIGTERM at step 6 (mid-epoch 1 of 3), rerun with `ckpt_path=auto`: bitwise the weights of one run.

    Augmentation is on: the rerun must continue epoch 1 at its 7th batch with the same images and draws.
    """
    base = {**EXACT, "callbacks.early_stopping": None, "trainer.max_epochs": 3, "ckpt_path": "auto"}
    marker = Path(cfg_train.paths.output_dir, "marker")
    with_probe(configure(cfg_train, **base), marker, at_step=6, send=signal.SIGTERM)
    with pytest.raises(SystemExit):
        run_train(cfg_train)
    stopped = load(marker.parent / "checkpoints" / "last.ckpt")
    assert (stopped["global_step"], stopped["epoch"]) == (6, 1)
    assert stopped["ChestXrayDataModule"] == {"epoch": 1, "position": 2 * 32, "epoch_done": False}
    resumed = run_train(cfg_train)  # the probe is at a step it has passed: it records the start only
    assert marker.with_suffix(".starts").read_text().split() == ["0", "6"]
    assert resumed["trainer"].global_step == 3 * STEPS_PER_EPOCH

    straight = configure(smoke_config(tmp_path / "straight", data_dir), **base)
    reference = run_train(straight)
    GlobalHydra.instance().clear()
    assert_same_weights(resumed["model"], reference["model"])


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_last_checkpoint_and_requeues_only_on_sigusr1(cfg_train, monkeypatch, signum):
    """Mid-epoch signal: the batch finishes, last.ckpt holds that step, SystemExit(0); USR1 alone requeues."""
    from pneumonia_cam.callbacks import resume

    calls = []
    monkeypatch.setattr(resume.subprocess, "run", lambda cmd, **_: calls.append(cmd) or _Done())
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    marker = Path(cfg_train.paths.output_dir, "marker")
    with_probe(configure(cfg_train, **{"trainer.max_epochs": 4}), marker, at_step=6, send=signum)
    with pytest.raises(SystemExit) as stopped:
        run_train(cfg_train)
    assert stopped.value.code in (None, 0)
    last = load(marker.parent / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6 and last["epoch"] == 1  # mid-epoch 1 (4 steps per epoch)
    assert calls == ([["scontrol", "requeue", "4242"]] if signum == signal.SIGUSR1 else [])
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # Lightning's teardown gave USR1 back


class _Done:
    """What the faked `subprocess.run` returns: a successful scontrol."""

    returncode = 0
    stderr = ""


def train_command(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    """`python src/train.py` for the smoke experiment, 4 epochs, exact and quiet, in `run_dir`."""
    overrides = [f"{key}={'[]' if value == [] else str(value).lower()}" for key, value in EXACT.items()]
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "experiment=smoke",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={run_dir.parent}",
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        "callbacks.rich_progress_bar=null",
        "callbacks.cam_panel=null",
        "callbacks.lr_monitor=null",
        "callbacks.early_stopping=null",
        "extras.print_config=false",
        "extras.enforce_tags=false",
        "~logger",
        "test=false",
        "ckpt_path=auto",
        *overrides,
        *extra,
    ]


# the subprocess imports SignalProbe from this file (a site-packages `tests` package shadows `tests.`)
ENV = {
    **os.environ,
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HYDRA_FULL_ERROR": "1",
    "PYTHONPATH": str(ROOT / "tests"),
}


@pytest.mark.slow
def test_sigusr1_subprocess_exits_cleanly_and_rerun_resumes(tmp_path, data_dir):
    """SIGUSR1 from outside mid-epoch: exit 0, last.ckpt at that step; the same command resumes from it and
    ends with bitwise the weights of an uninterrupted run."""
    run_dir = tmp_path / "run"
    marker = tmp_path / "marker"
    probe = [
        "+callbacks.signal_probe._target_=test_resume.SignalProbe",
        "+callbacks.signal_probe.at_step=6",
        f"+callbacks.signal_probe.marker={marker}",
    ]
    command = train_command(run_dir, data_dir, *probe)
    # the uninterrupted reference run goes on beside the interrupted one: independent, so it overlaps
    straight_dir = tmp_path / "straight"
    straight_log = tmp_path / "straight.log"
    with straight_log.open("w") as log:
        straight = subprocess.Popen(
            train_command(straight_dir, data_dir), cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with subprocess.Popen(
            command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc:
            deadline = time.monotonic() + 70
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), proc.kill() or proc.stdout.read().decode()[-4000:]
            proc.send_signal(signal.SIGUSR1)
            output = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0, output[-4000:]
        last = load(run_dir / "checkpoints" / "last.ckpt")
        assert (last["global_step"], last["epoch"]) == (6, 1), output[-2000:]

        # the very same command, as a requeued job runs it
        rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=80)
        assert rerun.returncode == 0, rerun.stderr[-4000:]
        assert marker.with_suffix(".starts").read_text().split() == ["0", "6"]
        final = load(run_dir / "checkpoints" / "last.ckpt")
        assert (final["global_step"], final["epoch"]) == (4 * STEPS_PER_EPOCH, 3)

        # and ends where the same command, never interrupted, ends
        assert straight.wait(timeout=120) == 0, straight_log.read_text()[-4000:]
        reference = load(straight_dir / "checkpoints" / "last.ckpt")["state_dict"]
        for key, value in reference.items():
            assert torch.equal(value, final["state_dict"][key]), key
    finally:
        straight.kill()  # a no-op once it has exited
        straight.wait()
