"""Pretrained weights from every hub a user has, offline-first.

Importing this package (torch-free) registers the `weights_input` config resolver: data configs derive the
network's input (channels, scaling, normalisation) from model.weights through it. The work is in `resolve`.
"""

from typing import Any

from omegaconf import DictConfig, OmegaConf


def _weights_input(key: str, *, _root_: DictConfig) -> Any:
    """`${weights_input:mean}`: a field of the input spec of the config's model.weights / model.backbone."""
    from pneumonia_cam.models.weights.resolve import input_spec  # torch: only when a config asks

    spec = input_spec(
        OmegaConf.select(_root_, "model.weights", default=None),
        OmegaConf.select(_root_, "model.backbone", default=None),
        OmegaConf.select(_root_, "paths.weights_dir", default=None),
    ).as_dict()
    if key == "all":
        return spec
    if key not in spec:
        raise KeyError(f"${{weights_input:{key}}}: the input spec has {sorted(spec)} (or 'all')")
    return spec[key]


OmegaConf.register_new_resolver("weights_input", _weights_input, replace=True)
