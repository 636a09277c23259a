"""Serve a checkpoint over HTTP: `python src/serve.py ckpt_path=... [port=8080] [host=127.0.0.1]`."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import hydra  # noqa: E402
import uvicorn  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.serving.app import create_app  # noqa: E402
from pneumonia_cam.serving.memory import bound_heap_growth  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@hydra.main(version_base="1.3", config_path="../configs", config_name="serve.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point: one uvicorn worker (batching needs every request in one process), Hydra's logging."""
    extras(cfg)
    bound_heap_growth(cfg.memory.malloc_arena_max, cfg.memory.mmap_threshold_bytes)  # before any thread
    log.info(f"Serving {cfg.ckpt_path} on http://{cfg.host}:{cfg.port} (docs at /docs)")
    uvicorn.run(create_app(cfg), host=cfg.host, port=int(cfg.port), workers=1, log_config=None)


if __name__ == "__main__":
    main()
