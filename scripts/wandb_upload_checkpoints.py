"""Upload an offline run's checkpoint artifacts to W&B, under the run's own id, names and aliases.

`wandb sync <run dir>/wandb/offline-run-*` uploads the run and the artifacts it recorded, but reads the
artifact files from W&B's staging folder ($WANDB_DATA_DIR) of the machine that trained. When the run
folder was moved elsewhere (or that staging folder is gone), run this once online, after or before the sync:

    python scripts/wandb_upload_checkpoints.py logs/train/runs/<run>

It reads `<run>/checkpoints/wandb_artifacts.json` (written by the training run's W&B logger), checks each
file's SHA-256, resumes the W&B run with the recorded id and logs every file as `model-<run id>` with its
alias (`best`, `latest`). Identical bytes map to the version `wandb sync` may already have created.
"""

import argparse
import json
import sys
from pathlib import Path

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

from pneumonia_cam.utils.logging_utils import ARTIFACT_MANIFEST, checkpoint_artifact  # noqa: E402
from pneumonia_cam.utils.run_config import checkpoint_sha256  # noqa: E402


def parse_reference(reference: str) -> tuple[str | None, str | None, str, str]:
    """Split `[entity/][project/]name:alias` into its parts."""
    path, alias = reference.rsplit(":", 1)
    parts = path.split("/")
    entity = parts[-3] if len(parts) >= 3 else None
    project = parts[-2] if len(parts) >= 2 else None
    return entity, project, parts[-1], alias


def upload(run_dir: Path, project: str | None, entity: str | None) -> int:
    """Log every checkpoint listed in the run's manifest; return how many were logged."""
    import wandb

    manifest = run_dir / "checkpoints" / ARTIFACT_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: the run logged no checkpoint artifacts (log_model)")
    entries = json.loads(manifest.read_text())
    run_ids = {entry["run_id"] for entry in entries.values()}
    if len(run_ids) != 1:
        raise ValueError(f"{manifest} names several W&B runs: {sorted(run_ids)}")
    recorded_entity, recorded_project, _, _ = parse_reference(next(iter(entries.values()))["artifact"])
    run = wandb.init(
        id=run_ids.pop(),
        project=project or recorded_project,
        entity=entity or recorded_entity,
        resume="allow",
        job_type="train",
    )
    logged = 0
    for file_name, entry in sorted(entries.items()):
        path = manifest.parent / file_name
        if not path.is_file() or checkpoint_sha256(path) != entry["sha256"]:
            print(f"skipped {path}: missing or changed since it was logged", file=sys.stderr)
            continue
        _, _, name, alias = parse_reference(entry["artifact"])
        run.log_artifact(checkpoint_artifact(name, path, entry["sha256"]), aliases=[alias])
        logged += 1
    run.finish()
    return logged


def main(argv: list[str] | None = None) -> int:
    """Command line: one training run directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the training run directory (holds checkpoints/)")
    parser.add_argument("--project", help="W&B project (default: the one recorded at training time)")
    parser.add_argument("--entity", help="W&B entity (default: the recorded one, else your default entity)")
    args = parser.parse_args(argv)
    logged = upload(args.run_dir, args.project, args.entity)
    print(f"logged {logged} checkpoint artifact(s)")
    return 0 if logged else 1


if __name__ == "__main__":
    sys.exit(main())
