"""Launchers: the SLURM job a sweep point becomes, submitit jobs returning their metric, resumable Optuna."""

import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from helpers import assert_ok, compose_config, run_entry_point
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn
from hydra.types import RunMode
from hydra.utils import instantiate
from submitit.slurm.slurm import SlurmExecutor, SlurmJob

SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"

QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"]
SMOKE_EPOCH = ["experiment=smoke", "trainer.max_epochs=1", "test=false", *QUIET]


def best_logged(job_dir: Path, metric: str = "val/loss_best") -> float:
    """The last value of `metric` that a job's CSV logger wrote."""
    metrics = pd.read_csv(next(job_dir.glob("csv/**/metrics.csv")))
    return float(metrics[metric].dropna().iloc[-1])


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The numbered job directories of a sweep, in job order."""
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # the launcher's own defaults
        (
            ["hydra/launcher=submitit_slurm"],
            ["--time=240", "--mem=64GB", "--cpus-per-task=8", "--array=0-1%2"],
        ),
        # a cluster's values from configs/local/ (which also selects the launcher)
        (
            ["local=slurm_example"],
            [
                "--partition=gpu",
                "--account=my-project",
                "--qos=normal",
                "--time=720",
                "--mem=480GB",
                "--cpus-per-task=10",
                "--constraint=a100",
                "--mail-type=FAIL",
                "--array=0-1%2",
            ],
        ),
    ],
)
def test_slurm_job_of_two_nodes_by_four_gpus(tmp_path, monkeypatch, overrides, expected):
    """The plugin's own launch() renders one sbatch array: 2 nodes x 4 tasks x 4 GPUs per sweep point."""
    cfg = compose_config("train.yaml", ["trainer=multi_node", f"hydra.sweep.dir={tmp_path}", *overrides])
    GlobalHydra.instance().clear()
    launcher_cfg = cfg.hydra.launcher
    assert (launcher_cfg.nodes, launcher_cfg.tasks_per_node, launcher_cfg.gpus_per_node) == (2, 4, 4)

    # no SLURM here: pretend srun exists, "submit" with echo, and never wait for results
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.setattr(
        SlurmExecutor, "_make_submission_command", lambda self, path: ["echo", "Submitted batch job 4242"]
    )
    monkeypatch.setattr(SlurmJob, "results", lambda self: ["not run"])
    launcher = instantiate(launcher_cfg)
    launcher.config = cfg
    returns = launcher.launch([["model.optimizer.lr=0.001"], ["model.optimizer.lr=0.01"]], initial_job_idx=0)
    assert returns == ["not run", "not run"]

    (script,) = tmp_path.glob(".submitit/4242/*_submission.sh")
    sbatch = {
        line.removeprefix("#SBATCH ")
        for line in script.read_text().splitlines()
        if line.startswith("#SBATCH")
    }
    # USR1 (not submitit's USR2) warns the preemption callback signal_delay_s before the time limit
    for option in ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--signal=USR1@120", *expected]:
        assert option in sbatch, f"{option} not in {sorted(sbatch)}"
    # srun starts the 8 ranks (Lightning's SLURMEnvironment then creates no processes)
    assert "srun --unbuffered" in script.read_text()
    # the two sweep points are pickled for array tasks 0 and 1
    assert sorted(p.name for p in tmp_path.glob(".submitit/4242_*/*_submitted.pkl")) == [
        "4242_0_submitted.pkl",
        "4242_1_submitted.pkl",
    ]


@pytest.mark.parametrize(
    ("mode", "launcher", "strategy", "refused"),
    [
        (RunMode.MULTIRUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", "ddp", True),
        (RunMode.MULTIRUN, f"{SUBMITIT}.LocalLauncher", "ddp", True),
        (RunMode.MULTIRUN, f"{SUBMITIT}.SlurmLauncher", "ddp", False),
        (RunMode.MULTIRUN, f"{SUBMITIT}.LocalLauncher", "ddp_spawn", False),
        (RunMode.MULTIRUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", "auto", False),
        (RunMode.RUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", "ddp", False),
    ],
)
def test_ddp_launch_combinations(mode, launcher, strategy, refused):
    """As documented: ddp in a multirun only under submitit_slurm; spawn DDP and single runs anywhere."""
    from src.train import check_ddp_launch

    if refused:
        with pytest.raises(ValueError, match=rf"with {launcher.rsplit('.', 1)[-1]} .*Lightning #11300"):
            check_ddp_launch(mode, launcher, strategy)
    else:
        check_ddp_launch(mode, launcher, strategy)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "refused"), [("ddp", True), ("ddp_spawn", False)])
def test_multirun_refuses_ddp_with_basic_launcher(tmp_path, data_dir, strategy, refused):
    """`-m` + strategy=ddp under the basic launcher fails with the reason; spawn-based DDP runs."""
    result = run_entry_point(
        "train.py",
        [
            "-m",
            "experiment=smoke",
            "trainer=ddp_sim",
            f"trainer.strategy={strategy}",
            "model.optimizer.lr=0.001,0.01",
            # nothing to fit or test: the guard is all that runs
            "train=false",
            "test=false",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={tmp_path}",
            *QUIET,
        ],
        timeout=300,
    )
    if refused:
        assert result.returncode != 0
        assert "Lightning #11300" in result.stderr
    else:
        assert_ok(result)
        assert "Lightning #11300" not in result.stderr
        assert [p.name for p in job_dirs(tmp_path)] == ["0", "1"]


@pytest.mark.slow
def test_submitit_local_jobs_return_their_metric(tmp_path, data_dir):
    """Two sweep points, two processes, two run dirs; each result pickle holds the val/loss_best it logged.

    The sweep dir has a `${now:}` to the microsecond: the jobs, later and in other processes, still land in
    the one folder the launcher made, so a requeued job (the same pickle, run again) lands there too.
    """
    result = run_entry_point(
        "train.py",
        [
            "-m",
            "hydra/launcher=submitit_local",
            "model.optimizer.lr=0.001,0.01",
            "+optimized_metric=val/loss_best",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={tmp_path}/sweep-${{now:%H-%M-%S-%f}}",
            *SMOKE_EPOCH,
        ],
        timeout=300,
    )
    assert_ok(result)
    (sweep_dir,) = tmp_path.glob("sweep-*")
    # the launcher reads these pickles back and hands their JobReturn to the sweeper
    results = {}
    for path in sweep_dir.glob(".submitit/*/*_0_result.pkl"):
        status, job_return = pickle.loads(path.read_bytes())
        assert status == "success"
        assert isinstance(job_return, JobReturn)
        results[path.parent.name] = job_return
    assert len(results) == 2
    by_dir = {
        Path(ret.hydra_cfg.hydra.runtime.output_dir).name: (job_id, ret) for job_id, ret in results.items()
    }
    assert sorted(by_dir) == ["0", "1"]
    assert {Path(ret.hydra_cfg.hydra.runtime.output_dir).parent for ret in results.values()} == {sweep_dir}
    for job_dir in job_dirs(sweep_dir):
        job_id, job_return = by_dir[job_dir.name]
        assert job_return.return_value == pytest.approx(best_logged(job_dir), rel=1e-6)
        assert job_return.overrides[0] == f"model.optimizer.lr={['0.001', '0.01'][int(job_dir.name)]}"
        # submitit's local job id is the job's own process id, also recorded as hydra.job.id
        hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert str(hydra_cfg["job"]["id"]) == job_id
    pids = [int(job_id) for job_id, _ in by_dir.values()]
    assert len(set(pids)) == 2


@pytest.mark.slow
def test_optuna_sweep_resumes_from_sqlite(tmp_path, data_dir):
    """Rerunning the same search continues the stored study: 2 + 2 trials, the first two untouched, and the
    sweeper reports the best value of the monitored metric over all four."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()

    def sweep(name: str) -> Path:
        sweep_dir = tmp_path / name
        result = run_entry_point(
            "train.py",
            [
                "hparams_search=optuna",
                "hydra.sweeper.n_trials=2",
                "hydra.sweeper.sampler.n_startup_trials=2",
                f"paths.log_dir={log_dir}",
                f"paths.data_dir={data_dir}",
                f"hydra.sweep.dir={sweep_dir}",
                *SMOKE_EPOCH,
            ],
            timeout=300,
        )
        assert_ok(result)
        return sweep_dir

    storage = f"sqlite:///{log_dir}/optuna.db"
    first_dir = sweep("first")
    first = optuna.load_study(study_name="train-smoke", storage=storage).get_trials(deepcopy=False)
    second_dir = sweep("second")
    trials = optuna.load_study(study_name="train-smoke", storage=storage).get_trials(deepcopy=False)

    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert [t.number for t in trials] == [0, 1, 2, 3]
    for before, after in zip(first, trials[:2], strict=True):
        assert (after.params, after.value, after.datetime_complete) == (
            before.params,
            before.value,
            before.datetime_complete,
        )
    # every trial's value is the val/loss_best its job logged, trials 2-3 ran in the second sweep
    job_dirs_in_order = job_dirs(first_dir) + job_dirs(second_dir)
    for trial, job_dir in zip(trials, job_dirs_in_order, strict=True):
        assert trial.value == pytest.approx(best_logged(job_dir), rel=1e-6)
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
        assert f"model.optimizer.lr={trial.params['model.optimizer.lr']}" in overrides
    # the sweeper's report: the study's best over both sweeps
    results = yaml.safe_load((second_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert results["best_value"] == pytest.approx(min(t.value for t in trials), rel=1e-6)
    assert results["best_value"] == pytest.approx(min(map(best_logged, job_dirs_in_order)), rel=1e-5)
