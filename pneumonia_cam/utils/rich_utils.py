"""Pretty-print the composed config and make sure runs are tagged."""

from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from hydra.core.hydra_config import HydraConfig
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.prompt import Prompt

from pneumonia_cam.utils.pylogger import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

DEFAULT_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


@rank_zero_only
def print_config_tree(
    cfg: DictConfig, print_order: Sequence[str] = DEFAULT_ORDER, save_to_file: bool = False
) -> None:
    """Print the config as a rich tree (and save it to the run directory) so every run shows what it ran."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in print_order if f in cfg] + [f for f in cfg if f not in print_order]
    for field in fields:
        branch = tree.add(field, style="dim", guide_style="dim")
        section = cfg[field]
        content = (
            OmegaConf.to_yaml(section, resolve=True) if isinstance(section, DictConfig) else str(section)
        )
        branch.add(rich.syntax.Syntax(content, "yaml"))
    rich.print(tree)
    if save_to_file:
        with open(Path(cfg.paths.output_dir, "config_tree.log"), "w") as file:
            rich.print(tree, file=file)


@rank_zero_only
def enforce_tags(cfg: DictConfig, save_to_file: bool = False) -> None:
    """Ask for tags in an interactive single run when none are set; refuse to start a sweep without them."""
    if not cfg.get("tags"):
        if "id" in HydraConfig().cfg.hydra.job:
            raise ValueError("Specify tags before launching a multirun!")
        log.warning("No tags provided in config. Prompting user to input tags...")
        tags = Prompt.ask("Enter a list of comma separated tags", default="dev")
        with open_dict(cfg):
            cfg.tags = [t.strip() for t in tags.split(",") if t.strip()]
        log.info(f"Tags: {cfg.tags}")
    if save_to_file:
        with open(Path(cfg.paths.output_dir, "tags.log"), "w") as file:
            rich.print(cfg.tags, file=file)
