"""Check a data config on its own: `python src/inspect_data.py data=...` writes data_report.{json,md}.

The same scan the data module runs before training (decode each image once, or reuse the scan cache), the
split, and then everything about it: counts per split, sizes, bit depths, unreadable files, and near-duplicate
images across splits. With `data.duplicates=error` a leak fails the command (exit code 1).
"""

import rootutils

rootutils.setup_root(__file__, indicator="pyproject.toml", pythonpath=True)

import hydra  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import pneumonia_cam.models  # noqa: E402,F401  (registers the weights_input resolver of data configs)
from pneumonia_cam.data.checks import cross_split_duplicates, data_report, write_report  # noqa: E402
from pneumonia_cam.utils import RankedLogger, extras, task_wrapper  # noqa: E402

log = RankedLogger(__name__, rank_zero_only=True)


@task_wrapper
def inspect_data(cfg: DictConfig) -> tuple[dict, dict]:
    """Set the data module up (scan, split, duplicate policy), then report on what it found."""
    with open_dict(cfg):
        cfg.data.check_images = True  # the report is the scan
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    records = datamodule.records
    kept = records[records["status"] == "ok"]
    pairs = cross_split_duplicates(kept, datamodule.image_facts, cfg.data.get("duplicate_distance", 10))
    report = data_report(records, datamodule.image_facts, pairs, datamodule.class_names)
    json_path, md_path = write_report(report, cfg.paths.output_dir)
    log.info(
        f"{report['images']} images, {len(report['unreadable'])} unreadable, {len(pairs)} near-duplicate "
        f"pair(s) across splits; report: {md_path}"
    )
    return {"report": str(json_path)}, {"cfg": cfg, "datamodule": datamodule, "report": report}


@hydra.main(version_base="1.3", config_path="../configs", config_name="inspect_data.yaml")
def main(cfg: DictConfig) -> None:
    """Entry point."""
    extras(cfg)
    inspect_data(cfg)


if __name__ == "__main__":
    main()
