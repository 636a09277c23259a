"""One file from several checkpoints: `python src/ensemble.py members='[a.ckpt,b.ckpt]' [mode=average]`.

mode=ensemble (default) keeps every member (mean probabilities, mean CAM); mode=average writes one network
whose weights are the members' mean (e.g. the last k epochs of one run).
"""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.inference.ensemble import save_average, save_ensemble  # noqa: E402
from pneumonia_cam.inference.model import InferenceModel  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, task_wrapper  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@task_wrapper
def bundle(cfg: DictConfig) -> tuple[dict, dict]:
    """Write the file, then load it back as the other entry points will."""
    writers = {"ensemble": save_ensemble, "average": save_average}
    if cfg.mode not in writers:
        raise ValueError(f"mode={cfg.mode!r}; choose one of {sorted(writers)}")
    path = writers[cfg.mode]([str(member) for member in cfg.members], cfg.output)
    model = InferenceModel.from_checkpoint(path, operating_point="default")
    log.info(f"{cfg.mode} of {len(cfg.members)} checkpoints ({model.info.backbone}) written to {path}")
    return {"output": str(path), "members": len(cfg.members)}, {"cfg": cfg, "model": model}


@hydra.main(version_base="1.3", config_path="../configs", config_name="ensemble.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    bundle(cfg)


if __name__ == "__main__":
    main()
