"""W&B tracking: checkpoint artifacts (online and offline), one group per sweep, job types, eval lineage.

No network: a fake run object stands in for `wandb.init` where the test asserts what is logged, and real
offline runs are read back from their transaction log (`run-<id>.wandb`), which is what `wandb sync` uploads.
"""

import json
import os
import struct
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import wandb
from conftest import smoke_config
from helpers import assert_ok, compose_config, run_entry_point
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf, open_dict
from wandb.proto import wandb_internal_pb2

from pneumonia_cam.utils.csv_logger import CSVLogger
from pneumonia_cam.utils.logging_utils import ARTIFACT_MANIFEST, WandbLogger, logged_artifact
from pneumonia_cam.utils.run_config import checkpoint_sha256
from scripts.wandb_upload_checkpoints import main as upload_main
from src.eval import evaluate
from src.train import train


class FakeConfig(dict):
    """`run.config`: a dict with wandb's `update(..., allow_val_change=...)`."""

    def update(self, values: dict[str, Any], allow_val_change: bool = False) -> None:
        """Record the values (the flag only matters to wandb)."""
        super().update(values)


class FakeRun:
    """Stands in for a wandb Run: records init kwargs, artifacts logged and used; needs no network."""

    def __init__(self, offline: bool, **init_kwargs: Any) -> None:
        self.init_kwargs = init_kwargs
        self.id = init_kwargs.get("id") or f"run{len(FAKE_RUNS)}"
        self.name = self.id
        self.entity = "team"
        self.project = init_kwargs.get("project")
        self.offline = offline
        self.config = FakeConfig()
        self.logged: list[tuple[Any, list[str]]] = []
        self.used: list[tuple[str, str | None]] = []

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        """Metrics and media are not under test here."""

    def log_artifact(self, artifact: Any, aliases: list[str]) -> None:
        """Record an artifact the project logs."""
        self.logged.append((artifact, list(aliases)))

    def use_artifact(self, name: str, type: str | None = None) -> None:
        """Record an artifact the run declares as an input."""
        self.used.append((name, type))

    def finish(self) -> None:
        """Nothing to flush."""


FAKE_RUNS: list[FakeRun] = []


def fake_init(offline: bool):
    """A `wandb.init` replacement that returns (and remembers) fake runs."""

    def init(**kwargs: Any) -> FakeRun:
        FAKE_RUNS.append(FakeRun(offline, **kwargs))
        return FAKE_RUNS[-1]

    return init


def logger_group(name: str) -> dict[str, Any]:
    """A logger config group as the user selects it (`logger=<name>`), interpolations unresolved."""
    return OmegaConf.to_container(compose_config("train.yaml", [f"logger={name}"]).logger, resolve=False)


def wandb_records(run_dir: Path, timeout: float = 30) -> list[wandb_internal_pb2.Record]:
    """The records of an offline run's transaction log, once wandb's service has written its exit record."""
    deadline = time.monotonic() + timeout
    records = read_transaction_log(next(run_dir.glob("run-*.wandb")))
    while not any(record.WhichOneof("record_type") == "exit" for record in records):
        assert time.monotonic() < deadline, f"{run_dir}: no exit record after {timeout} s"
        time.sleep(0.2)
        records = read_transaction_log(next(run_dir.glob("run-*.wandb")))
    return records


def read_transaction_log(path: Path) -> list[wandb_internal_pb2.Record]:
    """Parse a `run-<id>.wandb` file (LevelDB log format: 32 KiB blocks of checksummed chunks)."""
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> SimpleNamespace:
    """One smoke epoch with `logger=many_loggers` against a fake online W&B run."""
    run_dir = tmp_path_factory.mktemp("wandb_train")
    cfg = smoke_config(run_dir, data_dir)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.logger = logger_group("many_loggers")
        cfg.logger.wandb.offline = False  # online, without network: wandb.init is the fake
    HydraConfig().set_config(cfg)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("WANDB_PROJECT", raising=False)
        patch.setattr(wandb, "init", fake_init(offline=False))
        _, objects = train(cfg)
    GlobalHydra.instance().clear()
    checkpoint = objects["trainer"].checkpoint_callback
    return SimpleNamespace(
        run_dir=run_dir,
        run=FAKE_RUNS[-1],
        loggers=objects["logger"],
        best=Path(checkpoint.best_model_path),
        last=run_dir / "checkpoints" / "last.ckpt",
    )


def test_training_logs_best_and_latest_checkpoint_artifacts(trained):
    """`model-<run id>`, type model: the best file as `best`, last.ckpt as `latest`, once each, with hash."""
    run = trained.run
    assert run.init_kwargs["job_type"] == "train"
    assert run.init_kwargs["group"] == "train"  # a single run: the task name
    assert [type(logger) for logger in trained.loggers] == [CSVLogger, TensorBoardLogger, WandbLogger]
    assert list((trained.run_dir / "tensorboard").rglob("events.out.tfevents.*"))  # TensorBoard beside W&B

    # fit and test both end with finalize(); unchanged files are logged once
    assert [aliases for _, aliases in run.logged] == [["best"], ["latest"]]
    best, latest = (artifact for artifact, _ in run.logged)
    assert {best.name, latest.name} == {f"model-{run.id}"}
    assert {best.type, latest.type} == {"model"}
    assert best.metadata["original_filename"] == trained.best.name == "epoch_000.ckpt"
    assert latest.metadata["original_filename"] == "last.ckpt"
    assert best.metadata["sha256"] == checkpoint_sha256(trained.best)
    assert latest.metadata["sha256"] == checkpoint_sha256(trained.last)
    assert best.metadata["monitor"] == "val/loss"
    assert list(best.manifest.entries) == ["model.ckpt"]

    manifest = json.loads((trained.best.parent / ARTIFACT_MANIFEST).read_text())
    assert manifest["epoch_000.ckpt"] == {
        "artifact": f"team/pneumonia-cam/model-{run.id}:best",
        "sha256": checkpoint_sha256(trained.best),
        "run_id": run.id,
    }
    assert manifest["last.ckpt"]["artifact"] == f"team/pneumonia-cam/model-{run.id}:latest"


def run_eval(cfg_eval: DictConfig, ckpt: Path, offline: bool, monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    """Evaluate `ckpt` with `logger=wandb` against a fake run; return that run."""
    with open_dict(cfg_eval):
        cfg_eval.ckpt_path = str(ckpt)
        cfg_eval.bootstrap.n_resamples = 20
        cfg_eval.logger = logger_group("wandb")
        cfg_eval.logger.wandb.offline = offline
    HydraConfig().set_config(cfg_eval)
    monkeypatch.setattr(wandb, "init", fake_init(offline))
    evaluate(cfg_eval)
    return FAKE_RUNS[-1]


def test_eval_uses_the_logged_checkpoint_artifact(trained, cfg_eval, monkeypatch):
    """Online, eval declares the artifact training logged for these bytes as its input, by name."""
    run = run_eval(cfg_eval, trained.best, offline=False, monkeypatch=monkeypatch)
    assert run.init_kwargs["job_type"] == "eval"
    assert run.used == [(f"team/pneumonia-cam/model-{trained.run.id}:best", "model")]
    assert run.config["checkpoints"] == [
        {
            "path": str(trained.best.resolve()),
            "sha256": checkpoint_sha256(trained.best),
            "artifact": f"team/pneumonia-cam/model-{trained.run.id}:best",
        }
    ]


def test_eval_offline_or_unlogged_checkpoint_records_sha256(trained, cfg_eval, monkeypatch, tmp_path):
    """Offline (W&B refuses use_artifact), or a checkpoint training never logged: the config has its hash."""
    run = run_eval(cfg_eval, trained.best, offline=True, monkeypatch=monkeypatch)
    assert run.used == []
    assert run.config["checkpoints"][0]["artifact"].endswith(f"model-{trained.run.id}:best")

    copy = tmp_path / "elsewhere" / "model.ckpt"  # no manifest next to it
    copy.parent.mkdir()
    copy.write_bytes(trained.best.read_bytes())
    run = run_eval(cfg_eval, copy, offline=False, monkeypatch=monkeypatch)
    assert run.used == []
    assert run.config["checkpoints"] == [
        {"path": str(copy.resolve()), "sha256": checkpoint_sha256(trained.best)}
    ]


def test_changed_checkpoint_is_not_linked_to_the_old_artifact(trained):
    """A file whose bytes differ from what was logged (e.g. last.ckpt overwritten) gets no artifact link."""
    assert logged_artifact(trained.last, checkpoint_sha256(trained.last)).endswith(":latest")
    assert logged_artifact(trained.last, "0" * 64) is None


def test_upload_script_logs_same_names_and_aliases_under_the_run_id(trained, monkeypatch):
    """`scripts/wandb_upload_checkpoints.py <run dir>` resumes the recorded run and logs best + latest."""
    monkeypatch.setattr(wandb, "init", fake_init(offline=False))
    assert upload_main([str(trained.run_dir)]) == 0
    run = FAKE_RUNS[-1]
    assert run.init_kwargs == {
        "id": trained.run.id,
        "project": "pneumonia-cam",
        "entity": "team",
        "resume": "allow",
        "job_type": "train",
    }
    logged = sorted(
        (aliases, artifact.name, artifact.type, artifact.metadata["sha256"])
        for artifact, aliases in run.logged
    )
    name = f"model-{trained.run.id}"
    assert logged == sorted(
        [
            (["best"], name, "model", checkpoint_sha256(trained.best)),
            (["latest"], name, "model", checkpoint_sha256(trained.last)),
        ]
    )


def checkpoint_callbacks(folder: Path) -> list[SimpleNamespace]:
    """Both ModelCheckpoint roles: monitored (best file) and monitor-less (its top-k file is last.ckpt)."""
    best, last = folder / "epoch_003.ckpt", folder / "last.ckpt"
    best.write_bytes(b"best" * 1000)
    last.write_bytes(b"latest" * 1000)
    os.utime(best, (1_000_000, 1_000_000))
    best_callback = SimpleNamespace(
        best_model_path=str(best),
        last_model_path="",
        best_model_score=0.25,
        current_score=0.5,
        monitor="val/loss",
    )
    last_callback = SimpleNamespace(
        best_model_path=str(last), last_model_path="", best_model_score=None, current_score=None, monitor=None
    )
    return [best_callback, last_callback]


def test_best_comes_from_the_monitored_callback_latest_is_the_newest_file(tmp_path):
    """A monitor-less callback's top-k file is the latest state, never `best`, whatever the callback order."""
    best_callback, last_callback = checkpoint_callbacks(tmp_path)
    for order in ([best_callback, last_callback], [last_callback, best_callback]):
        logger = WandbLogger(offline=True, log_model=True, save_dir=str(tmp_path))
        for callback in order:
            logger.after_save_checkpoint(callback)
        files = {alias: Path(path).name for alias, (path, _) in logger.checkpoint_files().items()}
        assert files == {"best": "epoch_003.ckpt", "latest": "last.ckpt"}


def test_offline_run_records_artifacts_for_wandb_sync(tmp_path, monkeypatch):
    """A real offline run: the transaction log holds both artifacts, and the staged files exist to upload."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    callbacks = checkpoint_callbacks(tmp_path)
    logger = WandbLogger(
        offline=True, log_model=True, save_dir=str(tmp_path), project="test", job_type="train"
    )
    run_id = logger.experiment.id  # the run starts (log_hyperparams does that in training)
    for callback in callbacks:
        logger.after_save_checkpoint(callback)
    logger.finalize("success")
    wandb.finish()

    run_dir = next((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    records = wandb_records(run_dir)
    artifacts = [record.artifact for record in records if record.WhichOneof("record_type") == "artifact"]
    # wandb adds `latest` to every version it logs and moves it on: it ends on last.ckpt's version
    assert [(a.name, a.type, sorted(a.aliases)) for a in artifacts] == [
        (f"model-{run_id}", "model", ["best", "latest"]),
        (f"model-{run_id}", "model", ["latest"]),
    ]
    for artifact, callback in zip(artifacts, callbacks, strict=True):
        (entry,) = artifact.manifest.contents
        assert entry.path == "model.ckpt"
        source = Path(callback.best_model_path)
        assert Path(entry.local_path).read_bytes() == source.read_bytes()  # the staged copy sync uploads
        assert Path(entry.local_path).is_relative_to(tmp_path / "wandb_data")
        assert json.loads(artifact.metadata)["sha256"] == checkpoint_sha256(source)


def sweep_job_config(sweep_dir: Path, num: int | None) -> DictConfig:
    """The composed train config of one multirun job (`num`), or of a single run (None), as Hydra sets it."""
    cfg = compose_config("train.yaml", ["logger=wandb", f"hydra.sweep.dir={sweep_dir}"])
    if num is not None:
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.job.num = num
    HydraConfig().set_config(cfg)
    return cfg


def test_one_wandb_group_per_sweep(tmp_path):
    """Both jobs of a sweep share `train-<sweep dir name>`; a single run keeps its task name as group."""
    groups = [
        sweep_job_config(tmp_path / "2026-01-02_03-04-05_000006", num).logger.wandb.group for num in (0, 1)
    ]
    assert groups == ["train-2026-01-02_03-04-05_000006"] * 2
    other_sweep = sweep_job_config(tmp_path / "2026-01-02_03-04-07_000000", 0).logger.wandb
    assert other_sweep.group == "train-2026-01-02_03-04-07_000000"
    single = sweep_job_config(tmp_path / "unused", None).logger.wandb
    assert (single.group, single.job_type) == ("train", "train")
    assert OmegaConf.select(sweep_job_config(tmp_path, None), "logger.wandb.log_model") is True
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_multirun_jobs_get_own_dirs_and_wandb_runs_in_one_group(tmp_path, data_dir):
    """`python src/train.py -m ...` for real, two jobs: two run directories, each with its own checkpoint,
    config and offline W&B run (never merged), both runs carrying the sweep's group."""
    sweep_dir = tmp_path / "sweep"
    result = run_entry_point(
        "train.py",
        [
            "-m",
            "experiment=smoke",
            "model.optimizer.lr=0.001,0.0001",
            "trainer.max_epochs=1",
            "logger=wandb",
            "extras.print_config=false",
            "callbacks.rich_progress_bar=null",
            "trainer.enable_progress_bar=false",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
    )
    assert_ok(result)
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs, runs = [], []
    for job in jobs:
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        lrs.append(checkpoint["hyper_parameters"]["optimizer"]["lr"])
        offline = list((job / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, f"{job}: expected one offline W&B run, found {offline}"
        (run,) = [
            record.run for record in wandb_records(offline[0]) if record.WhichOneof("record_type") == "run"
        ]
        runs.append((run.run_group, run.job_type, run.run_id))
        assert offline[0].name.rsplit("-", 1)[-1] == run.run_id
    assert lrs == [0.001, 0.0001]
    assert runs[0][:2] == runs[1][:2] == ("train-sweep", "train")
    assert runs[0][2] != runs[1][2]


def test_a_rerun_in_the_same_run_dir_continues_its_wandb_run(tmp_path, monkeypatch):
    """A requeued job reruns in its run directory: the second start reuses the run id (resume="allow")."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    ids = []
    for _ in range(2):
        logger = WandbLogger(offline=True, save_dir=str(tmp_path / "run"), project="test")
        ids.append(logger.experiment.id)
        wandb.finish()
    assert ids[0] == ids[1] == (tmp_path / "run" / "wandb" / "run_id").read_text()
    # every offline part of the run (one folder per second of start time) carries that one id
    parts = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert parts and all(f"-{ids[0]}" in part.name for part in parts)  # "-<id>-1" for a same-second start
    assert WandbLogger(offline=True, save_dir=str(tmp_path / "other")).version != ids[0]
    assert WandbLogger(offline=True, save_dir=str(tmp_path / "run"), id="chosen").version == "chosen"
