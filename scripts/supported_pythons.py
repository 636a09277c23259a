"""Which CPython versions every pinned dependency has wheels (or a pure-Python release) for, from PyPI.

    python scripts/supported_pythons.py      # prints {package: [versions]} and the intersection

Reads the pins from pyproject.toml (dependencies and the dev extra) and each pin's files on PyPI's simple
index (wheel tags, `data-requires-python`); what all pins support is what `requires-python` may accept.
"""

import html
import json
import re
import tomllib
import urllib.request
from pathlib import Path

CANDIDATES = ["3.10", "3.11", "3.12", "3.13", "3.14"]
ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return dict(line.split("==") for line in lines)


def allowed(spec: str, version: str) -> bool:
    """A `data-requires-python` specifier (>=, <, !=, ==, comma-separated) against X.Y."""
    value = tuple(int(p) for p in version.split("."))
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op, bound = re.match(r"(>=|<=|!=|==|~=|>|<)\s*([\d.*]+)", clause).groups()
        parts = tuple(int(p) for p in bound.replace(".*", "").split(".")[:2])
        if (op == ">=" and value < parts) or (op == ">" and value <= parts) or (op == "<" and value >= parts):
            return False
        if (op == "<=" and value > parts) or (
            op in ("==", "~=") and value[: len(parts)] != parts and "*" in bound
        ):
            return False
    return True


def supported(package: str, version: str) -> list[str]:
    name = re.sub(r"[-_.]+", "-", package).lower()
    page = urllib.request.urlopen(f"https://pypi.org/simple/{name}/", timeout=60).read().decode()
    files = re.findall(r'<a href="[^"]*"([^>]*)>([^<]+)</a>', page)
    found = set()
    mine = [(a, f) for a, f in files if _is_release(f, package, version)]
    # a compiled package's sdist needs a compiler: only wheels count for it
    compiled = any(re.search(r"-cp3\d+-", f) for _, f in mine)
    for attributes, filename in mine:
        requires = re.search(r'data-requires-python="([^"]*)"', attributes)
        spec = html.unescape(requires.group(1)) if requires else ""
        for candidate in CANDIDATES:
            tag = "cp" + candidate.replace(".", "")
            if not allowed(spec, candidate):
                continue
            if (
                (filename.endswith(".tar.gz") and not compiled)
                or "-py3-none-" in filename
                or "-py2.py3-" in filename
            ):
                found.add(candidate)
            elif (f"-{tag}-" in filename and "manylinux" in filename) or f"-{tag}-{tag}-" in filename:
                found.add(candidate) if "manylinux" in filename or "linux" in filename else None
            elif "abi3" in filename and "linux" in filename:
                low = re.search(r"-cp3(\d+)-abi3-", filename)
                if low and int(candidate.split(".")[1]) >= int(low.group(1)):
                    found.add(candidate)
    return sorted(found, key=CANDIDATES.index)


def _is_release(filename: str, package: str, version: str) -> bool:
    """Whether a file on the simple index is this package's release `version` (wheel or sdist)."""
    norm = re.sub(r"[-_.]+", "_", package).lower()
    name = re.sub(r"[-_.]+", "_", filename).lower()
    return name.startswith(f"{norm}_{re.sub(r'[-_.]+', '_', version)}_") or name.startswith(
        f"{norm}_{re.sub(r'[-_.]+', '_', version)}.tar"
    )


def main() -> None:
    table = {package: supported(package, version) for package, version in pins().items()}
    common = [c for c in CANDIDATES if all(c in versions for versions in table.values())]
    print(json.dumps({"per_package": table, "all_pins": common}, indent=1))


if __name__ == "__main__":
    main()
