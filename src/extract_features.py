"""Fill the caches of a data + model config: `python src/extract_features.py experiment=... trainer=ddp`.

Runs only what a training run's data loaders would build first (the pre-processed image cache and the
frozen backbone's features of every split and view, each rank a shard under DDP), then stops; a later
`src/train.py` with the same data + model config finds every file and runs no backbone pass.
"""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from lightning import Callback, LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import pneumonia_cam.models  # noqa: E402,F401  (registers the weights_input resolver of data configs)
from pneumonia_cam.data.feature_cache import FeatureDataset  # noqa: E402
from pneumonia_cam.data.image_cache import ImageCache  # noqa: E402
from pneumonia_cam.utils import extras, task_wrapper  # noqa: E402

SPLITS = ("train", "val", "test")
CACHES_FILE = "caches.json"  # {"images" | "<split> features": cache file}


class FillCaches(Callback):
    """Ask the data module for every split's loader on every rank, which builds (or finds) each cache.

    Rank 0 reports each cache's key and file on the console and in `<output_dir>/caches.json` (logging
    handlers do not reach ddp_spawn's processes, Lightning's console output does).
    """

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Runs after the data module's setup (image cache built) and inside the DDP process group."""
        datamodule = trainer.datamodule
        files: dict[str, str] = {}
        reader = getattr(datamodule.data_train.reader, "__self__", None)
        if isinstance(reader, ImageCache):
            files["images"] = str(reader.file)
        for split in SPLITS:
            dataset = getattr(datamodule, f"{split}_dataloader")().dataset
            if isinstance(dataset, FeatureDataset):
                files[f"{split} features"] = str(dataset.features.filename)
        if trainer.is_global_zero:
            for name, file in files.items():
                rank_zero_info(f"{name}: key {Path(file).stem}, file {file}")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CACHES_FILE).write_text(json.dumps(files, indent=2))


@task_wrapper
def extract_features(cfg: DictConfig) -> tuple[dict, dict]:
    """Build the data module, model and trainer as train.py does, then fill the caches without training."""
    if not (
        cfg.data.get("feature_cache", {}).get("enabled") or cfg.data.get("image_cache", {}).get("enabled")
    ):
        raise ValueError(
            "nothing to extract: enable data.feature_cache.enabled=true (frozen backbone) and/or "
            "data.image_cache.enabled=true"
        )
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)  # random-init backbones: the same weights as train.py's
    datamodule: LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: LightningModule = hydra.utils.instantiate(cfg.model, teacher=None)  # no training, no teacher
    with open_dict(cfg):
        cfg.trainer.limit_val_batches = 0  # the loaders are built, no batch is run
    trainer: Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[FillCaches(cfg.paths.output_dir)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.validate(model=model, datamodule=datamodule)
    return {}, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../configs", config_name="extract_features.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    extract_features(cfg)


if __name__ == "__main__":
    main()
