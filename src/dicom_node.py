"""Run the DICOM node: `python src/dicom_node.py ckpt_path=... [scp.port=11112] [destination.port=4242]`."""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pneumonia_cam.dicom_node.node import DicomNode  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, task_wrapper  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@task_wrapper
def run_node(cfg: DictConfig) -> tuple[dict, dict]:
    """Serve until SIGINT/SIGTERM; what is unfinished stays in the spool for the next start."""
    for library in ("pynetdicom", "highdicom"):
        logging.getLogger(library).setLevel(cfg.library_log_level)
    node = DicomNode.from_config(cfg)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    stop.wait()
    log.info("Stopping: finishing the batch in hand")
    node.stop()
    return {"processed": node.worker.processed, "delivered": node.sender.sent}, {}


@hydra.main(version_base="1.3", config_path="../configs", config_name="dicom_node.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    run_node(cfg)


if __name__ == "__main__":
    main()
