"""Seed robustness of one result: `python src/summarize_seeds.py runs='[<run>/seed_*/eval]'` -> seeds.md."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.evaluation.seeds import expand_runs, load_seed_run, seeds_markdown  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="summarize_seeds.yaml")
def main(cfg: DictConfig) -> None:
    """Write the per-seed and mean ± std tables of the eval runs named (or globbed) by `runs`."""
    extras(cfg)
    runs = [load_seed_run(folder) for folder in expand_runs(list(cfg.runs))]
    markdown = seeds_markdown(runs)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    log.info(f"{len(runs)} seeds -> {output}\n{markdown}")


if __name__ == "__main__":
    main()
