"""The composed run config travels inside every checkpoint, so eval and predict rebuild the same pipeline."""

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

CONFIG_KEY = "run_config"
SPLIT_KEY = "split_sha256"
# checkpoints written before the library became the `pneumonia_cam` package name `src.<package>` targets
_LEGACY_TARGET = re.compile(r"^src\.(data|models|evaluation|utils|callbacks)\.")


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain containers, without Hydra's own `hydra` node."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents (memory-mapped), without unpickling arbitrary objects."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _modernise(node: Any) -> Any:
    """Rewrite legacy `src.<package>.X` targets to `pneumonia_cam.<package>.X`, everywhere in a config."""
    if isinstance(node, dict):
        return {key: _modernise(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_modernise(value) for value in node]
    if isinstance(node, str):
        return _LEGACY_TARGET.sub(r"pneumonia_cam.\1.", node)
    return node


def load_run_config(ckpt_path: str | Path, checkpoint: dict[str, Any] | None = None) -> DictConfig:
    """The training config stored in a checkpoint (or in its loaded contents), never unpickling objects."""
    checkpoint = load_checkpoint(ckpt_path) if checkpoint is None else checkpoint
    if CONFIG_KEY not in checkpoint:
        raise KeyError(
            f"{ckpt_path} holds no '{CONFIG_KEY}': it was not written by src/train.py. "
            "Pass the data config explicitly, e.g. `data=chest_xray data.data_dir=...`."
        )
    return OmegaConf.create(_modernise(checkpoint[CONFIG_KEY]))


def training_split_sha256(ckpt_path: str | Path) -> str | None:
    """The hash of the split the checkpoint's run trained on (None for checkpoints that predate it)."""
    return load_checkpoint(ckpt_path).get(SPLIT_KEY)


def checkpoint_sha256(ckpt_path: str | Path) -> str:
    """SHA-256 of the checkpoint file: the model's identity in sidecars, exports and server responses."""
    digest = hashlib.sha256()
    with open(ckpt_path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
