"""An ensemble as one checkpoint file: k members' weights, the shared run config and split, loadable anywhere.

`save_ensemble` refuses members trained on another pre-processing or split (their validation images could be
another member's training images, and the operating point is chosen there). `load_net` rebuilds the
EnsembleNet, which eval, predict, the Python API, the server and export then treat as one model.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pneumonia_cam.models.combined import EnsembleNet
from pneumonia_cam.utils.run_config import (
    CONFIG_KEY,
    SPLIT_KEY,
    checkpoint_sha256,
    load_checkpoint,
    load_run_config,
)

MEMBERS_KEY = "ensemble_members"
AVERAGED_KEY = "averaged_from"
# data settings every member must share: one pre-processing, one split
SHARED_DATA_KEYS = (
    "data_dir",
    "seed",
    "fractions",
    "folds",
    "fold",
    "image_size",
    "transforms",
    "class_names",
)


def data_differences(base: DictConfig, other: DictConfig) -> list[str]:
    """The SHARED_DATA_KEYS on which two data configs disagree (other pre-processing or split)."""
    return [key for key in SHARED_DATA_KEYS if OmegaConf.select(other, key) != OmegaConf.select(base, key)]


def check_members(reference: str | os.PathLike, members: Sequence[str | os.PathLike]) -> None:
    """Refuse members trained with other data settings than `reference` (architectures may differ)."""
    base = load_run_config(reference).data
    for ckpt in members:
        differs = data_differences(base, load_run_config(ckpt).data)
        if differs:
            raise ValueError(
                f"ensemble member {ckpt} was trained with other data settings than {reference}: "
                f"data.{differs} differ; an ensemble needs one pre-processing and one split"
            )


def save_ensemble(members: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Write one file holding every member's network weights and hyper-parameters; return its path."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 checkpoints, got {len(members)}")
    check_members(members[0], members[1:])
    contents = [load_checkpoint(ckpt) for ckpt in members]
    splits = {checkpoint.get(SPLIT_KEY) for checkpoint in contents}
    if len(splits) > 1:
        raise ValueError(f"ensemble members were trained on different splits {sorted(map(str, splits))}")
    entries = []
    for ckpt, checkpoint in zip(members, contents, strict=True):
        if MEMBERS_KEY in checkpoint:
            raise ValueError(f"{ckpt} is itself an ensemble: pass its members")
        net = checkpoint_net(ckpt, checkpoint, load_run_config(ckpt, checkpoint).model._target_)
        entries.append(
            {
                "net": net.state_dict(),  # the weights the member deploys (EMA when kept)
                "hyper_parameters": dict(checkpoint["hyper_parameters"]),
                "source": str(ckpt),
                "source_sha256": checkpoint_sha256(ckpt),
            }
        )
    bundle: dict[str, Any] = {MEMBERS_KEY: entries, CONFIG_KEY: contents[0][CONFIG_KEY]}
    if splits != {None}:
        bundle[SPLIT_KEY] = splits.pop()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(bundle, output)
    return output


def save_average(members: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """One checkpoint whose weights are the mean of the members' (e.g. a run's last k epochs, SWA-style).

    Floating-point tensors are averaged (BatchNorm statistics included); integer ones (batch counters) and
    everything else (run config, hyper-parameters, split) come from the last member. Members must be one
    architecture trained on one pipeline and split; averaging weights of unrelated runs is refused.
    """
    if len(members) < 2:
        raise ValueError(f"averaging needs at least 2 checkpoints, got {len(members)}")
    check_members(members[-1], members[:-1])
    states = [torch.load(ckpt, map_location="cpu", weights_only=True) for ckpt in members]
    keys = [set(state["state_dict"]) for state in states]
    if any(k != keys[-1] for k in keys):
        raise ValueError("checkpoints to average have different parameters: they are not one architecture")
    averaged = dict(states[-1])
    averaged["state_dict"] = {
        key: torch.stack([state["state_dict"][key] for state in states]).mean(0)
        if value.is_floating_point()
        else value
        for key, value in states[-1]["state_dict"].items()
    }
    averaged[AVERAGED_KEY] = [str(ckpt) for ckpt in members]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(averaged, output)
    return output


def is_ensemble(checkpoint: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint is an ensemble file."""
    return MEMBERS_KEY in checkpoint


def load_teacher(path: str | os.PathLike, data: DictConfig) -> nn.Module:
    """The frozen network a student distils (`model/teacher=checkpoint`): an ensemble file or one checkpoint.

    The teacher must have been trained on the student's pre-processing and split: a teacher that saw the
    student's validation images would leak them into its soft targets.
    """
    checkpoint = load_checkpoint(path)
    run_config = load_run_config(path, checkpoint)
    differs = data_differences(run_config.data, data)
    if differs:
        raise ValueError(
            f"teacher {path} was trained with other data settings than this run: data.{differs} differ; "
            "distil with the student's data config (one pre-processing, one split)"
        )
    return checkpoint_net(path, checkpoint, run_config.model._target_).eval().requires_grad_(False)


def checkpoint_net(
    path: str | os.PathLike, checkpoint: dict[str, Any], module_target: str, map_location: str = "cpu"
) -> nn.Module:
    """The network a checkpoint deploys: an ensemble's EnsembleNet, or a run's inference (EMA) weights."""
    if is_ensemble(checkpoint):
        return load_net(checkpoint, module_target)
    module_cls = hydra.utils.get_class(module_target)
    # the checkpoint's weights replace the backbone's: never download ImageNet weights here
    module = module_cls.load_from_checkpoint(path, map_location=map_location, weights_only=True, weights=None)
    return getattr(module, "inference_net", module.net)


def backbone_name(checkpoint: dict[str, Any]) -> str:
    """The backbone a checkpoint was trained with; an ensemble's members joined by "+"."""
    entries = checkpoint[MEMBERS_KEY] if is_ensemble(checkpoint) else [checkpoint]
    return "+".join(str(entry["hyper_parameters"]["backbone"]) for entry in entries)


def load_net(checkpoint: dict[str, Any], module_target: str) -> EnsembleNet:
    """The EnsembleNet of an ensemble file (each member rebuilt without downloading any weights)."""
    module_cls = hydra.utils.get_class(module_target)
    nets = []
    for entry in checkpoint[MEMBERS_KEY]:
        hparams = entry["hyper_parameters"]
        # the stored net holds the member's deployed (EMA) weights: no EMA rebuilt, so no val_ema/* monitor
        monitor = str(hparams.get("monitor", "val/loss")).replace("val_ema/", "val/")
        module = module_cls(**{**hparams, "weights": None, "ema_decay": None, "monitor": monitor})
        module.net.load_state_dict(entry["net"])
        nets.append(module.net.eval())
    return EnsembleNet(nets)
