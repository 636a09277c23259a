"""Predict new images: `python src/predict.py ckpt_path=... input=<image|folder|CSV> output=out.csv`."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
import pandas as pd  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pneumonia_cam.data.inputs import list_inputs  # noqa: E402
from pneumonia_cam.inference.batch import predict_paths  # noqa: E402
from pneumonia_cam.inference.model import InferenceModel  # noqa: E402
from pneumonia_cam.inference.outputs import cam_arguments, write_overlay  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, task_wrapper  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@task_wrapper
def predict(cfg: DictConfig) -> tuple[dict, dict]:
    """Write one CSV row per input (errors included) and, with cam_dir, one overlay per readable image."""
    model = InferenceModel.from_config(cfg)
    paths = list_inputs(cfg.input)
    cam_dir = Path(cfg.cam_dir) if cfg.get("cam_dir") else None
    if cam_dir:
        cam_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    results = predict_paths(
        model, paths, cfg.batch_size, **cam_arguments(cfg.cam, enabled=cam_dir is not None)
    )
    for index, prediction in enumerate(tqdm(results, total=len(paths), unit="img", desc="predict")):
        rows.append(prediction.row(model.operating_point.threshold))
        if cam_dir and prediction.error is None:
            write_overlay(prediction, index, cam_dir, cfg.cam, model.positive_name)
    table = pd.DataFrame(rows)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    failed = int((table["error"] != "").sum())
    log.info(f"Wrote {len(table)} predictions to {output} ({failed} unreadable, listed with their error)")
    return {"n_images": len(table), "n_failed": failed}, {"table": table}


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    predict(cfg)


if __name__ == "__main__":
    main()
