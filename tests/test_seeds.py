"""Seed summaries: confusion counts, per-seed rows and the across-seed mean ± std, from eval.py's outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import assert_ok, run_entry_point

from pneumonia_cam.evaluation.seeds import REPORTED, expand_runs, load_seed_run, seeds_markdown

ACCURACY = {7: 0.90, 8: 0.92, 9: 0.97}  # mean 0.93, sample std 0.036056


def fake_eval_run(root: Path, seed: int) -> Path:
    """What scripts/kermany_results.sh leaves for one seed: checkpoint, eval folder, wall time."""
    run = root / f"seed_{seed}"
    (run / "eval").mkdir(parents=True)
    ckpt = run / "epoch_001.ckpt"
    torch.save({"run_config": {"seed": seed}}, ckpt)
    metrics = {name: {"value": 0.5, "low": 0.4, "high": 0.6} for name in REPORTED}
    metrics["accuracy"] = {
        "value": ACCURACY[seed],
        "low": ACCURACY[seed] - 0.02,
        "high": ACCURACY[seed] + 0.02,
    }
    result = {
        "ckpt_path": str(ckpt),
        "metrics": metrics,
        "operating_point": {"threshold": 0.25 + seed / 100},
        "confidence": 0.95,
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(result))
    # labels 0 0 0 1 1, predictions 0 1 1 1 0 -> TN 1, FP 2, FN 1, TP 1
    predictions = pd.DataFrame({"label": [0, 0, 0, 1, 1], "prediction": [0, 1, 1, 1, 0]})
    predictions.to_csv(run / "eval" / "predictions.csv", index=False)
    (run / "wall_time.json").write_text(json.dumps({"seed": seed, "train_wall_s": 60.0 * seed}))
    return run / "eval"


def test_seed_runs_load_and_summarise(tmp_path):
    for seed in ACCURACY:
        fake_eval_run(tmp_path, seed)
    runs = [load_seed_run(folder) for folder in expand_runs([str(tmp_path / "seed_*" / "eval")])]
    assert [run.seed for run in runs] == [7, 8, 9]
    assert runs[0].confusion == (1, 2, 1, 1)
    assert runs[1].threshold == pytest.approx(0.33) and runs[2].train_wall_s == 540.0
    text = seeds_markdown(runs)
    assert "| 8 | 0.330 | 0.920 [0.900, 0.940] |" in text
    assert "| 1 / 2 / 1 / 1 | 8.0 |" in text
    assert "| accuracy | 0.930 ± 0.036 | 0.900 to 0.970 | 3 |" in text


def test_missing_eval_outputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no eval run folder"):
        expand_runs([str(tmp_path / "nothing_*")])
    (tmp_path / "seed_1" / "eval").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="seed_1"):
        expand_runs([str(tmp_path / "seed_*" / "eval")])


@pytest.mark.slow
def test_summarize_seeds_entry_point(tmp_path):
    for seed in ACCURACY:
        fake_eval_run(tmp_path, seed)
    output = tmp_path / "seeds.md"
    result = run_entry_point(
        "summarize_seeds.py",
        [f"runs=[{tmp_path}/seed_*/eval]", f"output={output}", f"hydra.run.dir={tmp_path / 'hydra'}"],
    )
    assert_ok(result)
    assert "| accuracy | 0.930 ± 0.036 | 0.900 to 0.970 | 3 |" in output.read_text()
