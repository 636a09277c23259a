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

from helpers import compose_config  # noqa: E402

import src.utils  # noqa: E402,F401  (registers the config resolvers)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder per test session, so the synthetic set is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def cfg_train(tmp_path: Path, data_dir: Path) -> DictConfig:
    """The smoke experiment, writing into this test's own folder."""
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
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
        cfg.paths.data_dir = str(data_dir)
        cfg.extras.enforce_tags = False
    yield cfg
    GlobalHydra.instance().clear()


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
