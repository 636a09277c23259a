"""Every config composes, and the objects it describes instantiate."""

import re
from pathlib import Path

import hydra
import pytest
from helpers import ROOT, compose_config
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
DATA = sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (ROOT / "configs" / "trainer").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (ROOT / "configs" / "logger").glob("*.yaml"))
DEBUG = sorted(p.stem for p in (ROOT / "configs" / "debug").glob("*.yaml"))


def test_config_groups_present():
    """The groups and experiments the README documents exist."""
    assert {"resnet152_frozen", "smoke"} <= set(EXPERIMENTS)
    assert {"chest_xray", "manifest", "pneumoniamnist", "synthetic"} <= set(DATA)
    assert {"default", "cpu", "gpu", "ddp", "ddp_sim", "multi_node"} <= set(TRAINERS)
    assert {"csv", "tensorboard", "wandb", "many_loggers"} <= set(LOGGERS)
    assert {"fdr", "limit", "overfit", "profiler"} <= set(DEBUG)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    """Each experiment composes; its data module, model (random weights) and trainer build."""
    cfg = compose_config("train.yaml", [f"experiment={experiment}", "model.weights=null"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    HydraConfig().set_config(cfg)
    assert cfg.callbacks.model_checkpoint.monitor == cfg.monitor.metric
    assert cfg.callbacks.early_stopping.monitor == cfg.monitor.metric
    assert cfg.model.monitor == cfg.monitor.metric
    hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    assert model.hparams.weights is None
    hydra.utils.instantiate(cfg.trainer)


def test_reference_recipe_values():
    """The reference recipe is what the README promises."""
    cfg = compose_config("train.yaml", ["experiment=resnet152_frozen"])
    assert cfg.model.backbone == "resnet152"
    assert cfg.model.weights == "IMAGENET1K_V2"
    assert cfg.model.freeze_backbone is True
    assert cfg.model.optimizer.lr == 1e-3 and cfg.model.optimizer.weight_decay == 1e-4
    assert cfg.model.scheduler.step_size == 4 and cfg.model.scheduler.gamma == 0.1
    assert cfg.callbacks.early_stopping.patience == 10 and cfg.callbacks.early_stopping.min_delta == 0.001
    assert list(cfg.data.fractions) == [0.85, 0.074, 0.074]
    assert cfg.data.image_size == 224
    assert cfg.trainer.max_epochs == 100


@pytest.mark.parametrize("data", DATA)
def test_data_configs_compose(data):
    """Every data config composes with the smoke experiment's model."""
    cfg = compose_config("train.yaml", ["experiment=smoke", f"data={data}"])
    assert cfg.data._target_.endswith("ChestXrayDataModule")
    assert Path(cfg.data.data_dir).is_absolute()


@pytest.mark.parametrize(
    "overrides",
    [[f"trainer={t}"] for t in TRAINERS]
    + [[f"logger={lg}"] for lg in LOGGERS]
    + [[f"debug={d}"] for d in DEBUG]
    + [["hparams_search=optuna"]],
)
def test_groups_compose(overrides):
    """Trainer, logger, debug and search configs compose on top of the smoke experiment."""
    cfg = compose_config("train.yaml", ["experiment=smoke", *overrides])
    assert cfg.trainer._target_ == "lightning.pytorch.trainer.Trainer"


def test_run_dirs_never_collide():
    """Run directories carry microseconds; sweep sub-directories carry the job number."""
    first = compose_config("train.yaml", []).hydra.run.dir
    second = compose_config("train.yaml", []).hydra.run.dir
    assert re.search(r"_\d{2}-\d{2}-\d{2}_\d{6}$", first), first
    assert first != second
    assert (
        OmegaConf.to_yaml(OmegaConf.load(ROOT / "configs" / "hydra" / "default.yaml")).count(
            "${hydra.job.num}"
        )
        == 1
    )


def test_eval_config_composes():
    """eval.yaml needs only a checkpoint; data comes from it unless given."""
    cfg = compose_config("eval.yaml", ["ckpt_path=some.ckpt"])
    assert cfg.ckpt_path == "some.ckpt"
    assert cfg.get("data") is None
    cfg = compose_config("eval.yaml", ["ckpt_path=some.ckpt", "data=manifest"])
    assert cfg.data._target_.endswith("ChestXrayDataModule")


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("predict.yaml", ["ckpt_path=a.ckpt", "input=x", "precision=bf16", "cam.method=gradcam"]),
        ("visualize.yaml", ["ckpt_path=a.ckpt", "input=x", "compile=true", "cam.target_class=1"]),
        ("compare.yaml", ["a=a.csv", "b=b.csv", "names=[r152,d121]"]),
        ("cross_validate.yaml", ["experiment=smoke", "folds=3"]),
    ],
)
def test_other_entry_point_configs_compose(config, overrides):
    """Every entry point's config composes with its typical overrides."""
    cfg = compose_config(config, overrides)
    assert cfg.task_name == config.removesuffix(".yaml")
    if config == "cross_validate.yaml":
        assert cfg.folds == 3 and cfg.model.backbone == "resnet10"
    if config == "predict.yaml":
        assert cfg.precision == "bf16" and cfg.cam.method == "gradcam"
