"""Send the run's configuration and provenance to every active logger, and checkpoints to W&B."""

import json
import secrets
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning_utilities.core.rank_zero import rank_zero_only

from pneumonia_cam.utils.pylogger import RankedLogger
from pneumonia_cam.utils.run_config import checkpoint_sha256, plain_config

log = RankedLogger(__name__, rank_zero_only=True)

# written next to the checkpoints: which file became which W&B artifact version (eval links to it by this)
ARTIFACT_MANIFEST = "wandb_artifacts.json"
# in `<run dir>/wandb/`: the run's W&B id, reused when the same run directory trains again
RUN_ID_FILE = "run_id"


@rank_zero_only
def log_hyperparameters(object_dict: dict[str, Any]) -> None:
    """Log the composed config and parameter counts (the data module adds its split hash at setup)."""
    cfg = plain_config(object_dict["cfg"])
    trainer = object_dict["trainer"]
    model = object_dict["model"]
    if not trainer.logger:
        log.warning("Logger not found! Skipping hyperparameter logging...")
        return

    hparams = {key: cfg.get(key) for key in ("model", "data", "trainer", "callbacks", "extras")}
    hparams.update({key: cfg.get(key) for key in ("task_name", "tags", "ckpt_path", "seed", "monitor")})
    hparams.update(model.net.parameter_counts())

    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def artifact_path(entity: str | None, project: str | None, name: str) -> str:
    """`entity/project/name`, leaving out what is unknown (offline runs have no entity until synced)."""
    return "/".join(part for part in (entity, project, name) if part)


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger whose checkpoint artifacts also work offline (`wandb sync` uploads them).

    `log_model=True` logs, when fitting ends, the best checkpoint of the monitored ModelCheckpoint (alias
    `best`) and the newest checkpoint file any ModelCheckpoint wrote (alias `latest`: `last.ckpt`); `"all"`
    does so after every save. Both are versions of the artifact `model-<run id>` (Lightning's name; type
    `model`, the file's SHA-256 in the metadata); unchanged files are not logged twice. Every logged version
    is listed in `<checkpoint dir>/wandb_artifacts.json`, which `eval.py` reads to link its run to it.
    """

    def __init__(self, *args: Any, log_model: Literal["all"] | bool = False, **kwargs: Any) -> None:
        if not (kwargs.get("id") or kwargs.get("version")) and kwargs.get("save_dir"):
            kwargs["id"] = run_id_of(Path(kwargs["save_dir"]))
        # Lightning refuses log_model offline; offline runs record artifacts for `wandb sync` all the same
        super().__init__(*args, log_model=False, **kwargs)
        self.checkpoint_artifacts = log_model
        self._checkpoint_callbacks_seen: dict[int, ModelCheckpoint] = {}
        # the files as they stood after the last save: `trainer.test(ckpt_path=...)` restores the callbacks'
        # state from that checkpoint, which may predate the files written after it
        self._files: dict[str, tuple[str, dict[str, Any]]] = {}
        self._logged_sha256: dict[str, str] = {}

    @property
    def artifact_name(self) -> str:
        """Lightning's naming convention for checkpoint artifacts, so both loggers' artifacts look alike."""
        return f"model-{self.experiment.id}"

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        """Note the best and latest files; with `log_model="all"` log them right away."""
        self._checkpoint_callbacks_seen[id(checkpoint_callback)] = checkpoint_callback
        self._files = self.checkpoint_files()
        if self.checkpoint_artifacts == "all":
            self.log_checkpoints()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Log the final best and latest checkpoints when fitting succeeded (as Lightning does)."""
        super().finalize(status)
        if status == "success" and self.checkpoint_artifacts and self._experiment is not None:
            self.log_checkpoints()

    def checkpoint_files(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """alias -> (file, metadata): `best` of the monitored callback, `latest` the newest other file.

        A best file that is also the newest is logged once, as `best` (W&B marks its newest version `latest`).
        """
        files: dict[str, tuple[str, dict[str, Any]]] = {}
        written = []
        for callback in self._checkpoint_callbacks_seen.values():
            if callback.monitor and callback.best_model_path and "best" not in files:
                score = callback.best_model_score
                files["best"] = (callback.best_model_path, score_metadata(callback.monitor, score))
            paths = {callback.last_model_path, callback.best_model_path} - {""}
            written += [(path, score_metadata(callback.monitor, callback.current_score)) for path in paths]
        written = [(path, meta) for path, meta in written if Path(path).is_file()]
        if written:  # equal times (coarse file clocks): a file that is not the best one is the newer
            best = files.get("best", ("", {}))[0]
            newest = max(written, key=lambda item: (Path(item[0]).stat().st_mtime, item[0] != best))
            if newest[0] != best:
                files["latest"] = newest
        return files

    @rank_zero_only
    def log_checkpoints(self) -> None:
        """Log the best (`best`) and latest (`latest`) checkpoint files that changed since last logged."""
        run = self.experiment
        for alias, (path, metadata) in self._files.items():
            if not Path(path).is_file():
                continue
            sha256 = checkpoint_sha256(path)
            if self._logged_sha256.get(alias) == sha256:
                continue
            artifact = checkpoint_artifact(
                self.artifact_name, Path(path), sha256, self.add_file_policy, **metadata
            )
            run.log_artifact(artifact, aliases=[alias])
            self._logged_sha256[alias] = sha256
            reference = artifact_path(run.entity, run.project, f"{self.artifact_name}:{alias}")
            record_logged_checkpoint(Path(path), reference, sha256, run.id)
            log.info(f"Logged {Path(path).name} as W&B artifact {reference}")


def run_id_of(save_dir: Path) -> str:
    """The W&B run id of this run directory, made once: a requeued job (same directory) continues that run
    (Lightning passes `resume="allow"`) instead of starting a second one."""
    path = save_dir / "wandb" / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if rank_zero_only.rank == 0:  # other DDP ranks never start a run
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id)
    return run_id


def score_metadata(monitor: str | None, score: Any) -> dict[str, Any]:
    """The monitored metric and a checkpoint's score under it, as plain values for artifact metadata."""
    return {"monitor": monitor, "score": None if score is None else float(score)}


def checkpoint_artifact(name: str, path: Path, sha256: str, policy: str = "mutable", **metadata: Any) -> Any:
    """A checkpoint file as a version of the `model` artifact `name` (W&B keeps one version per content)."""
    import wandb

    metadata = {"sha256": sha256, "original_filename": path.name, **metadata}
    artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
    artifact.add_file(str(path), name="model.ckpt", policy=policy)
    return artifact


def record_logged_checkpoint(path: Path, reference: str, sha256: str, run_id: str) -> None:
    """Add a logged checkpoint to its folder's manifest; a file whose alias moved on to this one drops out."""
    manifest = path.parent / ARTIFACT_MANIFEST
    entries = json.loads(manifest.read_text()) if manifest.is_file() else {}
    entries = {name: entry for name, entry in entries.items() if entry["artifact"] != reference}
    entries[path.name] = {"artifact": reference, "sha256": sha256, "run_id": run_id}
    manifest.write_text(json.dumps(entries, indent=2, sort_keys=True))


def logged_artifact(ckpt_path: str | Path, sha256: str) -> str | None:
    """The W&B artifact a checkpoint was logged as, if its folder's manifest lists these exact bytes."""
    manifest = Path(ckpt_path).parent / ARTIFACT_MANIFEST
    if not manifest.is_file():
        return None
    entry = json.loads(manifest.read_text()).get(Path(ckpt_path).name)
    return entry["artifact"] if entry and entry["sha256"] == sha256 else None


@rank_zero_only
def link_checkpoints(loggers: list[Logger], ckpt_paths: list[str]) -> list[dict[str, str]]:
    """Record which checkpoints a run used: SHA-256 (always) and W&B artifact lineage (online, when logged).

    The eval run's config gets `checkpoints: [{path, sha256, artifact?}]`; online, a checkpoint that training
    logged is also declared an input with `run.use_artifact`, so W&B draws train -> model -> eval.
    """
    runs = [logger.experiment for logger in loggers if isinstance(logger, LightningWandbLogger)]
    if not runs:
        return []
    run = runs[0]
    lineage = []
    for ckpt_path in ckpt_paths:
        entry = {"path": str(Path(ckpt_path).resolve()), "sha256": checkpoint_sha256(ckpt_path)}
        reference = logged_artifact(ckpt_path, entry["sha256"])
        if reference:
            entry["artifact"] = reference
            if run.offline:
                log.info(
                    f"Offline: {reference} recorded in the run config; W&B cannot link artifacts offline"
                )
            else:
                run.use_artifact(reference, type="model")
        lineage.append(entry)
    run.config.update({"checkpoints": lineage}, allow_val_change=True)
    return lineage
