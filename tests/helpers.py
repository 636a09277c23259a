"""Helpers for tests: compose configs as `@hydra.main` does, run entry points as a user would."""

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
KERMANY = SHARED_DATA / "chest_xray_kermany224"
FULL_RESOLUTION = SHARED_DATA / "full_resolution_unlabelled"


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose a config the way `@hydra.main` would, including the `hydra` node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose(config_name=config_name, return_hydra_config=True, overrides=overrides)


def run_entry_point(script: str, overrides: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python src/<script> <overrides>` from the project root and capture its output."""
    return run_commands([entry_point_command(script, overrides)], timeout=timeout)[0]


def entry_point_command(script: str, overrides: list[str]) -> list[str]:
    """`python src/<script> <overrides>` as an argument list."""
    return [sys.executable, str(ROOT / "src" / script), *overrides]


def run_commands(
    commands: list[list[str]], timeout: float = 600, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess]:
    """Run independent commands at once from the project root (their start-up, mostly one core each, overlaps
    on a 2-core machine) and capture each one's output; output goes to files, so no full pipe blocks a run."""
    if env is None:
        env = {
            **os.environ,
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "WANDB_MODE": "offline",
            "HYDRA_FULL_ERROR": "1",
        }
        env.pop("WANDB_API_KEY", None)
    with ExitStack() as stack:
        running = []
        for command in commands:
            out, err = (stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            running.append(
                (command, subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err), out, err)
            )
        deadline = time.monotonic() + timeout
        results = []
        for command, process, out, err in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for _, other, _, _ in running:
                    other.kill()
                raise
            out.seek(0)
            err.seek(0)
            results.append(subprocess.CompletedProcess(command, process.returncode, out.read(), err.read()))
    return results


def assert_ok(result: subprocess.CompletedProcess) -> None:
    """Fail with the subprocess's own output, which is what explains the failure."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-6000:]}"
    )


def softened_copy(ckpt: Path, out: Path) -> Path:
    """The smoke model with its head scaled down: probabilities off 0 and 1, so views can disagree."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key, value in checkpoint["state_dict"].items():
        if key.endswith("head.fc.weight") or key.endswith("head.fc.bias"):
            value.mul_(0.01)
    torch.save(checkpoint, out)
    return out


def perturbed_copy(ckpt: Path, out: Path, data_seed: int | None = None) -> Path:
    """Another model of the same run: head weights shifted (and optionally the stored data seed changed)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["net.head.fc.bias"] += torch.tensor([0.8, -0.8])
    if data_seed is not None:
        checkpoint["run_config"]["data"]["seed"] = data_seed
    torch.save(checkpoint, out)
    return out


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    """Poll /ready until the lifespan's load and warm-up are done."""
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.05)
