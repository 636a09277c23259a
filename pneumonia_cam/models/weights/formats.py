"""Readers for every weights format users bring, none of which unpickles arbitrary objects.

torchvision / timm `.pth` state dicts and this project's checkpoints load with `weights_only=True`;
safetensors and TFLite files hold no pickle at all; a whole pickled module (TorchXRayVision's
`torch.save(model)` files) is read with every class it names mapped to an inert stand-in: the zip format by
torch's weights-only unpickler, the old format by a restricted unpickler that allows the same globals. Nothing
in the file runs; only its tensors come out.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import os
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import _weights_only_unpickler

from pneumonia_cam.models.weights.preprocessing import InputSpec, quantized_input

# the old (pre-zip) torch.save format is four pickles: magic number, protocol, system info, the object
_LEGACY_PICKLES = 4
_GLOBAL_OPS = {"GLOBAL", "INST", "STACK_GLOBAL"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"}


@dataclass(frozen=True)
class WeightsFile:
    """A file's tensors, with the architecture and pre-processing when the file itself declares them."""

    path: Path
    state: dict[str, torch.Tensor]
    format: str
    architecture: str | None = None
    input: InputSpec | None = None
    classes: tuple[str, ...] = ()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in blocks (weights files reach hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str | None) -> None:
    """Refuse a file whose SHA-256 does not start with the expected digest (a prefix or the whole)."""
    if expected is None:
        return
    found = file_sha256(path)
    if not found.startswith(expected.lower()):
        raise RuntimeError(
            f"Weights file {path} has SHA-256 {found}, expected {expected}: the file is corrupt, truncated "
            "or another file under the same name; download it again (python src/fetch_weights.py name=...)"
        )


class _Inert:
    """Stands in for any class a pickled module tree names: keeps the state it is given, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Arguments of a reduce call are ignored: only BUILD state (the module's __dict__) matters."""

    def __setstate__(self, state: Any) -> None:
        """Keep dict state (and slot state) as attributes, as pickle's default BUILD would."""
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def pickle_globals(path: Path) -> set[str]:
    """Every `module.name` a torch file's pickle refers to, read statically (nothing is imported or run)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if not names:
                raise RuntimeError(f"{path} is a zip file without a torch pickle (data.pkl)")
            streams, count = io.BytesIO(archive.read(names[0])), 1
    else:
        streams, count = io.BytesIO(path.read_bytes()), _LEGACY_PICKLES
    found: set[str] = set()
    strings: list[str] = []
    for _ in range(count):
        for opcode, arg, _position in pickletools.genops(streams):
            if opcode.name in _STRING_OPS:
                strings.append(arg)
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif opcode.name in _GLOBAL_OPS and arg:
                found.add(arg.replace(" ", "."))
    return found


def _module_state(module: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of an inert module tree: parameters and persistent buffers, children recursively."""
    attributes = getattr(module, "__dict__", {})
    skip = set(attributes.get("_non_persistent_buffers_set") or ())
    state = {
        f"{prefix}{k}": v.detach() for k, v in (attributes.get("_parameters") or {}).items() if v is not None
    }
    for name, value in (attributes.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            state[f"{prefix}{name}"] = value
    for name, child in (attributes.get("_modules") or {}).items():
        if child is not None:
            state.update(_module_state(child, f"{prefix}{name}."))
    return state


class _RestrictedUnpickler(pickle.Unpickler):
    """The old torch.save format's pickles: torch's weights-only globals allowed, every other class inert."""

    def __init__(self, file: io.BufferedIOBase, storages: dict[str, torch.TypedStorage]) -> None:
        super().__init__(file)
        self.storages = storages
        self.allowed = _weights_only_unpickler._get_allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Tensor rebuilders, storages and containers as torch allows them; anything else runs nothing."""
        # protocol-2 pickles spell Python 2 names (`__builtin__.set`): mapped as pickle's find_class does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return self.allowed.get(f"{module}.{name}", _Inert)

    def persistent_load(self, pid: Any) -> Any:
        """Storages are allocated here and filled from the file after the pickle; a module class is inert."""
        if pid[0] == "module":
            return _Inert
        if pid[0] != "storage" or pid[5] is not None or not hasattr(pid[1], "dtype"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r} in an old torch file")
        _, storage_type, key, _location, numel, _view = pid
        if key not in self.storages:
            self.storages[key] = torch.TypedStorage(numel, dtype=storage_type.dtype, device="cpu")
        return self.storages[key]


def _load_legacy(path: Path) -> Any:
    """torch's pre-zip format: magic, protocol, system info, the object, storage keys, then raw storages."""
    storages: dict[str, torch.TypedStorage] = {}
    with open(path, "rb") as file:
        header = [_RestrictedUnpickler(file, storages).load() for _ in range(_LEGACY_PICKLES - 1)]
        if header[0] != torch.serialization.MAGIC_NUMBER:
            raise pickle.UnpicklingError("not a torch file (no magic number)")
        root = _RestrictedUnpickler(file, storages).load()
        for key in _RestrictedUnpickler(file, storages).load():
            storage = storages[key]
            numel = int.from_bytes(file.read(8), "little")
            data = bytearray(file.read(numel * storage.element_size()))
            if numel != storage.size() or len(data) != numel * storage.element_size():
                raise EOFError(f"storage {key} is truncated")
            target = torch.empty(0, dtype=storage.dtype).set_(storage, 0, (numel,), (1,))
            target.copy_(torch.frombuffer(data, dtype=storage.dtype))
    return root


def read_module_pickle(path: Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(state dict, class names) of a `torch.save(module)` file, no code in it run (zip or old format)."""
    allowed = _weights_only_unpickler._get_allowed_globals()
    classes = {name for name in pickle_globals(path) if name not in allowed}
    try:
        if zipfile.is_zipfile(path):
            with torch.serialization.safe_globals([(_Inert, name) for name in sorted(classes)]):
                root = torch.load(path, map_location="cpu", weights_only=True)
        else:
            root = _load_legacy(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise RuntimeError(f"Could not read the pickled module in {path}: {err}") from err
    if not isinstance(root, _Inert) or "_modules" not in root.__dict__:
        raise RuntimeError(f"{path} holds a {type(root).__name__}, neither a state dict nor a pickled module")
    return _module_state(root), classes


def _project_checkpoint(path: Path, checkpoint: dict[str, Any]) -> WeightsFile:
    """A checkpoint of this project: the backbone it deploys (the EMA's when kept) and its recorded input."""
    if "ensemble_members" in checkpoint:
        raise RuntimeError(f"{path} is an ensemble file: pass one member's checkpoint as backbone weights")
    state = checkpoint["state_dict"]
    prefix = (
        "ema.module.features."
        if any(k.startswith("ema.module.features.") for k in state)
        else "net.features."
    )
    features = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    run = checkpoint["run_config"]
    return WeightsFile(
        path,
        features,
        "checkpoint",
        architecture=str(checkpoint["hyper_parameters"]["backbone"]),
        input=recorded_input(run),
    )


def recorded_input(run: dict[str, Any]) -> InputSpec:
    """The input a run trained on: its recorded `input` node, else its eval transform's ToRGB / Normalize."""
    if run.get("input"):
        return InputSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["input"].items()})
    steps = run["data"]["transforms"]["postprocess"]
    channels = next((int(s["num_output_channels"]) for s in steps if s["_target_"].endswith("ToRGB")), 1)
    normalize = next(s for s in steps if s["_target_"].endswith("Normalize"))
    return InputSpec(
        "checkpoint",
        channels,
        tuple(normalize["mean"]),
        tuple(normalize["std"]),
        float(normalize.get("max_pixel_value", 255.0)),
        int(run["data"]["image_size"]),
    )


def _torch_file(path: Path) -> WeightsFile:
    """A torch file: a state dict, a Lightning / project checkpoint, or a whole pickled module."""
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        state, classes = read_module_pickle(path)
        return WeightsFile(path, state, "module_pickle", classes=tuple(sorted(classes)))
    except (RuntimeError, EOFError, ValueError) as err:
        raise RuntimeError(f"Could not read weights file {path}: {err}") from err
    if isinstance(contents, dict) and "run_config" in contents and "state_dict" in contents:
        return _project_checkpoint(path, contents)
    if isinstance(contents, dict) and isinstance(contents.get("state_dict"), dict):
        contents = contents["state_dict"]
    if not isinstance(contents, dict) or not all(isinstance(v, torch.Tensor) for v in contents.values()):
        raise RuntimeError(
            f"Weights file {path} holds a {type(contents).__name__}, not a state dict of tensors"
        )
    return WeightsFile(path, contents, "state_dict")


def read_weights(path: str | os.PathLike) -> WeightsFile:
    """Read any supported weights file by its content type; a missing or unreadable file names itself."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return WeightsFile(path, load_file(path), "safetensors")
        except SafetensorError as err:
            raise RuntimeError(f"Could not read safetensors file {path}: {err}") from err
    if path.suffix == ".tflite":
        from pneumonia_cam.models.weights.tflite import read_tflite

        tflite = read_tflite(path)
        spec = quantized_input(tflite.input_scale, tflite.input_zero_point, tflite.input_size)
        return WeightsFile(path, tflite.features, "tflite", architecture=tflite.architecture, input=spec)
    return _torch_file(path)
