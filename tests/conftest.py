"""Shared fixtures: composed train/eval configs for the offline smoke experiment, in temporary folders."""

import os
from pathlib import Path

import pytest
import rootutils
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def threads_per_worker() -> int | None:
    """Under pytest-xdist, this machine's cores shared out among the workers (at least 1); else None."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:
        return None
    return max(1, len(os.sched_getaffinity(0)) // int(workers))


# set before torch is imported, and inherited by the entry points a test runs: 2 workers on 2 cores would
# otherwise each start 2 intra-op threads and fight over the cores
if (THREADS := threads_per_worker()) is not None:
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(THREADS))

import torch  # noqa: E402
from helpers import compose_config  # noqa: E402

import pneumonia_cam.models  # noqa: E402  (registers the weights_input resolver)
import pneumonia_cam.utils  # noqa: E402,F401  (registers the config resolvers)

if THREADS is not None:
    torch.set_num_threads(THREADS)  # also where a plugin imported torch before this file


@pytest.fixture(scope="session", autouse=True)
def wandb_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """W&B stages logged checkpoint artifacts here: inside the session's temp folder, removed with it."""
    path = tmp_path_factory.mktemp("wandb_data")
    os.environ["WANDB_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder per test session, so the synthetic set is generated once."""
    return tmp_path_factory.mktemp("data")


def smoke_config(output_dir: Path, data_dir: Path) -> DictConfig:
    """The smoke experiment writing into `output_dir`, quiet, with the shared synthetic data folder."""
    cfg = compose_config(
        "train.yaml",
        [
            "experiment=smoke",
            "extras.print_config=false",
            "trainer.enable_progress_bar=false",
            "callbacks.rich_progress_bar=null",
        ],
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.extras.enforce_tags = False
    return cfg


@pytest.fixture
def cfg_train(tmp_path: Path, data_dir: Path) -> DictConfig:
    """The smoke experiment, writing into this test's own folder."""
    yield smoke_config(tmp_path, data_dir)
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One trained smoke run shared by the inference tests; returns its run directory."""
    from hydra.core.hydra_config import HydraConfig

    from src.train import train

    run_dir = tmp_path_factory.mktemp("smoke_run")
    cfg = smoke_config(run_dir, data_dir)
    HydraConfig().set_config(cfg)
    train(cfg)
    GlobalHydra.instance().clear()
    return run_dir


@pytest.fixture(scope="session")
def smoke_checkpoint(smoke_run: Path) -> Path:
    """The best checkpoint of the shared smoke run."""
    return next((smoke_run / "checkpoints").glob("epoch_*.ckpt"))


@pytest.fixture
def cfg_eval(tmp_path: Path) -> DictConfig:
    """The eval config writing into this test's own folder; callers set ckpt_path."""
    cfg = compose_config(
        "eval.yaml", ["ckpt_path=.", "extras.print_config=false", "trainer.enable_progress_bar=false"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
        cfg.paths.log_dir = str(tmp_path / "eval")
        cfg.extras.enforce_tags = False
    Path(cfg.paths.output_dir).mkdir(parents=True)
    yield cfg
    GlobalHydra.instance().clear()
