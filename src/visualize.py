"""CAM overlays: `python src/visualize.py ckpt_path=... input=<image|folder> output_dir=...` (+ grid.png)."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pneumonia_cam.data.inputs import list_inputs  # noqa: E402
from pneumonia_cam.inference.batch import predict_paths  # noqa: E402
from pneumonia_cam.inference.model import InferenceModel  # noqa: E402
from pneumonia_cam.inference.outputs import cam_arguments, write_overlay  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, task_wrapper  # noqa: E402
from pneumonia_cam.utils.overlay import grid  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@task_wrapper
def visualize(cfg: DictConfig) -> tuple[dict, dict]:
    """Write an overlay per readable image and a grid of all of them; list the unreadable ones."""
    model = InferenceModel.from_config(cfg)
    paths = list_inputs(cfg.input)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    results = predict_paths(model, paths, cfg.batch_size, **cam_arguments(cfg.cam))
    for index, prediction in enumerate(tqdm(results, total=len(paths), unit="img", desc="visualize")):
        if prediction.error is not None:
            failed.append(prediction)
            log.warning(f"Skipped {prediction.path}: {prediction.error}")
            continue
        written.append(write_overlay(prediction, index, out_dir, cfg.cam, model.positive_name))
    if written:
        tiles = [cv2.imread(str(path)) for path in written]
        cv2.imwrite(str(out_dir / "grid.png"), grid(tiles, cfg.grid_tile, cfg.grid_columns))
    log.info(f"Wrote {len(written)} overlays to {out_dir}; {len(failed)} unreadable inputs skipped")
    return {"n_written": len(written), "n_failed": len(failed)}, {"written": written, "failed": failed}


@hydra.main(version_base="1.3", config_path="../configs", config_name="visualize.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    visualize(cfg)


if __name__ == "__main__":
    main()
