"""`reproducible.enabled=true`: the settings under which one machine gives identical results run after run.

fp32 everywhere (bf16 kernels differ between CPU models and are free to reorder sums), deterministic
algorithms (torch raises where one has no deterministic implementation), a fixed number of intra-op threads
(a different split of a reduction changes its rounding) and one inter-op thread. What still changes across
CPU models and GPUs: the kernels themselves (AVX2 vs AVX-512 vs oneDNN vs cuDNN paths round differently),
so bit-identity holds on one machine only; across machines, report the spread over seeds.
"""

import os

import torch
from omegaconf import DictConfig, open_dict

from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)


def apply_reproducible(cfg: DictConfig) -> bool:
    """Force the reproducible settings onto `cfg` (trainer precision, determinism) and torch; True if on."""
    settings = cfg.get("reproducible")
    if not settings or not settings.enabled:
        return False
    with open_dict(cfg):
        cfg.trainer.precision = "32-true"
        cfg.trainer.deterministic = True
        if cfg.get("data") is not None and cfg.data.get("feature_cache") is not None:
            cfg.data.feature_cache.precision = "fp32"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(int(settings.threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work began) in this process: keep what it is
        log.warning(f"inter-op threads stay at {torch.get_num_interop_threads()} (set before this run)")
    log.info(f"Reproducible mode: fp32, deterministic algorithms, {settings.threads} intra-op threads")
    return True
