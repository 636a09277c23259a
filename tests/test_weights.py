"""The weights registry: every format loads right from a real file (random weights) or is refused, by name."""

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, compose_config
from torchvision import models

from pneumonia_cam.models.backbones import BACKBONES, build_backbone
from pneumonia_cam.models.net import ChestXrayNet
from pneumonia_cam.models.weights.fetch import fetch
from pneumonia_cam.models.weights.formats import pickle_globals, read_weights
from pneumonia_cam.models.weights.preprocessing import FAMILIES, IMAGENET, XRV, check_transform
from pneumonia_cam.models.weights.registry import REGISTRY, WeightsEntry, lookup
from pneumonia_cam.models.weights.resolve import input_spec, load_weights

TFLITE_DIR = ROOT.parent / "shared" / "weights" / "imagenet_tflite"
TFLITE_V2 = TFLITE_DIR / "mobilenet_v2_1.0_224_quant.tflite"
needs_tflite = pytest.mark.skipif(not TFLITE_V2.is_file(), reason="needs ../shared/weights/imagenet_tflite")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pooled(features: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled last feature map: what the linear head (and a feature cache) sees."""
    return features.eval()(x).mean((2, 3))


def with_entry(monkeypatch: pytest.MonkeyPatch, entry: WeightsEntry) -> WeightsEntry:
    """Put a test entry into the registry (both tables) for one test."""
    from pneumonia_cam.models.weights import registry

    monkeypatch.setitem(registry.REGISTRY, entry.name, entry)
    monkeypatch.setitem(registry.BY_FILE, entry.file, entry)
    return entry


# --- the table -------------------------------------------------------------------------------------------


def test_every_entry_names_a_backbone_a_family_and_a_licence() -> None:
    required = {
        "tv-resnet18-imagenet1k-v1",
        "tv-resnet50-imagenet1k-v2",
        "tv-resnet152-imagenet1k-v2",
        "tv-densenet121-imagenet1k-v1",
        "timm-resnet50-a1-in1k",
        *(f"txv-densenet121-res224-{d}" for d in ("all", "nih", "rsna", "chex", "mimic_ch", "pc")),
        "tflite-mobilenet-v2-1.0-224-quant",
        "tflite-mobilenet-v1-1.0-224-quant-embedding",
    }
    assert required <= set(REGISTRY)
    for entry in REGISTRY.values():
        assert entry.architecture in BACKBONES, entry.name
        assert entry.family in {*FAMILIES, "tflite"}, entry.name
        assert entry.licence and entry.url.startswith("https://")


def test_torchvision_entries_match_torchvision_urls_and_hash_prefixes() -> None:
    for name, tv_name, tag in [
        ("tv-resnet18-imagenet1k-v1", "resnet18", "IMAGENET1K_V1"),
        ("tv-resnet50-imagenet1k-v2", "resnet50", "IMAGENET1K_V2"),
        ("tv-resnet152-imagenet1k-v2", "resnet152", "IMAGENET1K_V2"),
        ("tv-densenet121-imagenet1k-v1", "densenet121", "IMAGENET1K_V1"),
    ]:
        url = models.get_model_weights(tv_name)[tag].url
        assert lookup(name).url == url
        # torchvision's check_hash compares the digits after the last "-" of the file name
        assert url.rsplit("-", 1)[1].startswith(lookup(name).sha256)


def test_txv_entries_match_torchxrayvision_model_urls() -> None:
    xrv = pytest.importorskip("torchxrayvision")
    for dataset in ("all", "nih", "rsna", "chex", "mimic_ch", "pc"):
        entry = lookup(f"txv-densenet121-res224-{dataset}")
        assert entry.url == xrv.models.model_urls[f"densenet121-res224-{dataset}"]["weights_url"]
        assert entry.family == "xrv" and entry.architecture == "xrv_densenet121"


def test_tflite_entries_carry_the_published_sha256() -> None:
    readme = (ROOT.parent / "shared" / "weights" / "README.md").read_text() if TFLITE_DIR.is_dir() else ""
    for name in ("tflite-mobilenet-v2-1.0-224-quant", "tflite-mobilenet-v1-1.0-224-quant-embedding"):
        entry = lookup(name)
        assert len(entry.sha256) == 64
        if readme:
            assert entry.sha256 in readme
            assert sha256(TFLITE_DIR / entry.file) == entry.sha256


def test_unknown_name_lists_the_registry() -> None:
    with pytest.raises(KeyError, match="tv-resnet152-imagenet1k-v2"):
        lookup("resnet-9000")


# --- formats, each against its reference implementation ---------------------------------------------------


def test_torchvision_state_dict_loads_and_equals_torchvision(tmp_path: Path) -> None:
    reference = models.resnet18(weights=None).eval()
    path = tmp_path / "my-resnet18.pth"
    torch.save(reference.state_dict(), path)
    features, _, spec = build_backbone("resnet18", str(path))
    x = torch.randn(2, 3, 64, 64)
    expected = torch.flatten(reference.avgpool(torch.nn.Sequential(*list(reference.children())[:-2])(x)), 1)
    torch.testing.assert_close(pooled(features, x), expected, rtol=0, atol=1e-6)
    assert spec == IMAGENET


def test_timm_safetensors_loads_and_equals_timm(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("resnet50", pretrained=False).eval()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    features, _, spec = build_backbone("resnet50", str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        torch.testing.assert_close(pooled(features, x), expected, rtol=1e-5, atol=1e-5)
    assert read_weights(path).format == "safetensors" and spec == IMAGENET


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_txv_module_pickle_loads_and_equals_torchxrayvision(tmp_path: Path, zip_format: bool) -> None:
    """TorchXRayVision publishes `torch.save(model)` files: read without running them, same features."""
    xrv = pytest.importorskip("torchxrayvision")
    reference = xrv.models.DenseNet(weights=None).eval()
    path = tmp_path / "txv-densenet.pt"
    torch.save(reference, path, _use_new_zipfile_serialization=zip_format)
    found = read_weights(path)
    assert found.format == "module_pickle"
    assert "torchxrayvision.models.DenseNet" in found.classes
    features, _, spec = build_backbone("xrv_densenet121", str(path))
    x = torch.randn(2, 1, 64, 64) * 1024
    with torch.no_grad():
        torch.testing.assert_close(pooled(features, x), reference.features2(x), rtol=1e-5, atol=1e-4)
    assert spec == XRV


def test_module_pickle_never_runs_the_file(tmp_path: Path) -> None:
    """A pickle that would call os.system is read as inert data and refused, and the command never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    torch.save({"weights": Exploit()}, path)
    assert "posix.system" in pickle_globals(path) or "nt.system" in pickle_globals(path)
    with pytest.raises(RuntimeError, match=r"evil\.pt"):
        build_backbone("resnet18", str(path))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # what torch's plain weights-only load says of it
        torch.load(path, weights_only=True)


def test_project_checkpoint_gives_its_deployed_backbone_and_recorded_input(smoke_checkpoint: Path) -> None:
    checkpoint = torch.load(smoke_checkpoint, map_location="cpu", weights_only=True)
    prefix = (
        "ema.module.features."
        if any(k.startswith("ema.") for k in checkpoint["state_dict"])
        else "net.features."
    )
    found = read_weights(smoke_checkpoint)
    assert found.format == "checkpoint" and found.architecture == "resnet10"
    assert found.input.mean == tuple(checkpoint["run_config"]["input"]["mean"])
    for key, value in found.state.items():
        torch.testing.assert_close(value, checkpoint["state_dict"][prefix + key], rtol=0, atol=0)
    net = ChestXrayNet("resnet10", str(smoke_checkpoint))
    expected = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    for key, value in net.features.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


@needs_tflite
def test_tflite_file_declares_architecture_and_input() -> None:
    found = read_weights(TFLITE_V2)
    assert found.format == "tflite" and found.architecture == "mobilenet_v2"
    assert found.input.family == "tflite" and found.input.channels == 3
    # the file's input tensor: (q - 128) * (1/128) -> Normalize mean 128/255, std 1/(255/128)
    assert found.input.mean[0] * 255 == pytest.approx(128)
    assert 1 / (found.input.std[0] * 255) == pytest.approx(1 / 128, rel=1e-2)
    _, width, spec = build_backbone("mobilenet_v2", str(TFLITE_V2))
    assert width == 1280 and spec == found.input


# --- refusals -------------------------------------------------------------------------------------------


def test_registry_name_for_another_architecture_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"xrv_densenet121.*model.backbone='resnet50'.*set model.backbone=xrv"
    ):
        build_backbone("resnet50", "txv-densenet121-res224-all")


def test_checkpoint_of_another_backbone_is_refused(smoke_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match=r"'resnet10'.*model.backbone='resnet50'"):
        build_backbone("resnet50", str(smoke_checkpoint))


def test_wrong_shapes_name_file_expected_and_found(tmp_path: Path) -> None:
    """A three-channel DenseNet file into TorchXRayVision's one-channel network."""
    path = tmp_path / "densenet-rgb.pth"
    torch.save(models.densenet121(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError, match=r"densenet-rgb\.pth") as err:
        build_backbone("xrv_densenet121", str(path))
    assert (
        "conv0.weight" in str(err.value)
        and "[64, 3, 7, 7]" in str(err.value)
        and "[64, 1, 7, 7]" in str(err.value)
    )


def test_wrong_checksum_is_refused_with_both_digests(tmp_path: Path) -> None:
    """A file under a registry file name must carry that entry's digest (torchvision: the name's prefix)."""
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(RuntimeError, match=rf"{sha256(path)}.*expected f37072fd"):
        build_backbone("resnet18", str(path))


def test_registry_name_resolves_in_the_weights_dir_with_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cache" / "my-resnet18.pth"
    path.parent.mkdir()
    torch.save(models.resnet18(weights=None).state_dict(), path)
    entry = with_entry(
        monkeypatch,
        WeightsEntry(
            "test-resnet18",
            "resnet18",
            path.name,
            "https://example.org/x.pth",
            "MIT",
            "imagenet",
            sha256(path),
        ),
    )
    loaded = load_weights(entry.name, "resnet18", path.parent)
    assert loaded.source == str(path) and loaded.input == IMAGENET
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="SHA-256"):
        load_weights(entry.name, "resnet18", path.parent)


def test_missing_registry_file_says_url_checksum_and_where(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("resnet152", "tv-resnet152-imagenet1k-v2", str(tmp_path))
    message = str(err.value)
    assert lookup("tv-resnet152-imagenet1k-v2").url in message
    assert "f82ba261" in message and str(tmp_path / "resnet152-f82ba261.pth") in message
    assert "src/fetch_weights.py name=tv-resnet152-imagenet1k-v2" in message


# --- fetching --------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "upstream.pth"
    torch.save(models.resnet18(weights=None).state_dict(), source)
    entry = with_entry(
        monkeypatch,
        WeightsEntry(
            "test-fetch", "resnet18", "fetched.pth", source.as_uri(), "MIT", "imagenet", sha256(source)
        ),
    )
    cache = tmp_path / "cache"
    assert fetch(entry, cache, progress=False) == cache / "fetched.pth"
    assert sha256(cache / "fetched.pth") == sha256(source)
    source.unlink()  # already there: found, not downloaded again
    assert fetch(entry, cache, progress=False) == cache / "fetched.pth"


def test_fetch_refuses_a_download_with_the_wrong_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "upstream.pth"
    source.write_bytes(b"not the file")
    entry = with_entry(
        monkeypatch,
        WeightsEntry("test-bad", "resnet18", "bad.pth", source.as_uri(), "MIT", "imagenet", "0" * 64),
    )
    with pytest.raises(RuntimeError, match="SHA-256"):
        fetch(entry, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind


@pytest.mark.slow
def test_fetch_weights_offline_prints_url_checksum_and_place(tmp_path: Path) -> None:
    # every download goes to a closed local port: offline even on a machine with internet
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "PNEUMONIA_CAM_WEIGHTS_DIR": str(tmp_path), "HTTPS_PROXY": closed}
    env["https_proxy"] = closed
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "fetch_weights.py"), "name=tv-resnet18-imagenet1k-v1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in output
    assert "f37072fd" in output and str(tmp_path / "resnet18-f37072fd.pth") in output
    assert not (tmp_path / "resnet18-f37072fd.pth").exists()


# --- the input follows the weights ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "family", "channels"),
    [
        (["model.weights=null"], "imagenet", 3),
        (["model.weights=IMAGENET1K_V1"], "imagenet", 3),
        (["model.backbone=xrv_densenet121", "model.weights=txv-densenet121-res224-rsna"], "xrv", 1),
        (["model.backbone=xrv_densenet121", "model.weights=null"], "xrv", 1),
        (["model.backbone=mobilenet_v2", "model.weights=null"], "inception", 3),
    ],
)
def test_data_transforms_follow_the_weights(overrides: list[str], family: str, channels: int) -> None:
    import hydra

    cfg = compose_config("train.yaml", ["experiment=smoke", *overrides])
    assert cfg.input["family"] == family
    transform = hydra.utils.instantiate(cfg.data.transforms).eval
    spec = input_spec(cfg.model.weights, cfg.model.backbone)
    check_transform(transform, spec, "test")  # raises on any mismatch
    image = (torch.arange(64 * 64) % 256).to(torch.uint8).reshape(64, 64).numpy()
    tensor = transform(image=image)["image"]
    assert tensor.shape[0] == channels
    expected = (image.astype("float32") - spec.mean[0] * 255) / (spec.std[0] * 255)
    torch.testing.assert_close(tensor[0], torch.from_numpy(expected), rtol=1e-6, atol=1e-3)


def test_training_refuses_transforms_the_weights_were_not_trained_on() -> None:
    import albumentations as A

    imagenet_style = A.Compose([A.ToRGB(num_output_channels=3), A.Normalize()])
    with pytest.raises(ValueError, match=r"'xrv' input \(1 channels.*data.transforms give 3 channels"):
        check_transform(imagenet_style, XRV, "txv-densenet121-res224-all")
