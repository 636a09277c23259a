"""Fetch pretrained weights: `python src/fetch_weights.py name=<registry name | list>` (verified, cached)."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import sys  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.models.weights.fetch import fetch, search_dirs  # noqa: E402
from pneumonia_cam.models.weights.registry import REGISTRY, lookup  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


def registry_table() -> str:
    """The registry as text, one entry a line, for `name=list`."""
    rows = [f"{e.name:46} {e.architecture:16} {e.family:9} {e.licence}" for e in REGISTRY.values()]
    return "\n".join([f"{'name':46} {'architecture':16} {'family':9} licence", *rows])


@hydra.main(version_base="1.3", config_path="../configs", config_name="fetch_weights.yaml")
def main(cfg: DictConfig) -> None:
    """Download and verify one entry into the weights folder; offline, say how to do it by hand."""
    extras(cfg)
    if cfg.name == "list":
        print(f"weights folder: {search_dirs(cfg.weights_dir)[0]}\n{registry_table()}")
        return
    try:
        path = fetch(lookup(str(cfg.name)), cfg.weights_dir, progress=bool(cfg.progress))
    except (KeyError, ConnectionError, RuntimeError) as err:
        log.error(str(err).strip("'\""))
        sys.exit(1)
    log.info(f"{cfg.name}: {path} (verified)")


if __name__ == "__main__":
    main()
