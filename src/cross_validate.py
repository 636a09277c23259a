"""k-fold cross-validation: `python src/cross_validate.py experiment=... folds=5` -> mean ± std per metric."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from pneumonia_cam.evaluation.report import aggregate_runs, format_runs_table  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras  # noqa: E402
from src.train import train  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


def fold_config(cfg: DictConfig, fold: int, group: str) -> DictConfig:
    """The training config of one fold, writing into its own run directory, in one W&B group."""
    fold_cfg = cfg.copy()
    with open_dict(fold_cfg):
        fold_cfg.data.folds = cfg.folds
        fold_cfg.data.fold = fold
        fold_cfg.paths.output_dir = str(Path(cfg.paths.output_dir, f"fold_{fold}"))
        fold_cfg.tags = [*cfg.tags, f"fold_{fold}"]
        if fold_cfg.get("logger") and fold_cfg.logger.get("wandb"):
            fold_cfg.logger.wandb.group = group
            fold_cfg.logger.wandb.name = f"{group}-fold{fold}"
    return fold_cfg


@hydra.main(version_base="1.3", config_path="../configs", config_name="cross_validate.yaml")
def main(cfg: DictConfig) -> None:
    """Train and test every fold, then write cv_results.csv / .md (per-fold rows, mean and std)."""
    extras(cfg)
    out_dir = Path(cfg.paths.output_dir)
    group = f"cv-{out_dir.name}"
    folds = list(cfg.only_folds) if cfg.get("only_folds") else list(range(cfg.folds))
    per_fold = []
    for fold in folds:
        log.info(f"Cross-validation fold {fold + 1} of {cfg.folds}")
        metrics, _ = train(fold_config(cfg, fold, group))
        per_fold.append(
            {k.removeprefix("test/"): float(v) for k, v in metrics.items() if k.startswith("test/")}
        )
    pd.DataFrame(per_fold, index=pd.Index(folds, name="fold")).to_csv(out_dir / "cv_folds.csv")
    summary = aggregate_runs(per_fold)
    summary.to_csv(out_dir / "cv_results.csv", index_label="metric")
    table = format_runs_table(summary)
    (out_dir / "cv_results.md").write_text(f"# {len(folds)}-fold cross-validation ({group})\n\n{table}\n")
    log.info(f"Cross-validation results:\n{table}")


if __name__ == "__main__":
    main()
