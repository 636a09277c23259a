"""Compare two models: `python src/compare.py a=<predictions.csv> b=<predictions.csv>` -> comparison.md."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.evaluation.comparison import compare, comparison_markdown, read_predictions  # noqa: E402
from pneumonia_cam.evaluation.operating_point import json_ready  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="compare.yaml")
def main(cfg: DictConfig) -> None:
    """Write comparison.md and comparison.json (McNemar, DeLong, paired bootstrap differences)."""
    extras(cfg)
    names = tuple(cfg.names)
    result = compare(read_predictions(cfg.a), read_predictions(cfg.b), names, cfg.bootstrap)
    markdown = comparison_markdown(result, names, (cfg.a, cfg.b), cfg.bootstrap.confidence)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    output.with_suffix(".json").write_text(json.dumps(json_ready(result), indent=2, sort_keys=True))
    log.info(f"\n{markdown}")


if __name__ == "__main__":
    main()
