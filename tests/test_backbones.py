"""Backbone feature extractors and their weight loading (torchvision names, local files, offline errors)."""

import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision import models

from pneumonia_cam.models.backbones import build_backbone, is_weights_path


@pytest.fixture(autouse=True)
def _empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep real caches out of the tests so downloads are always attempted."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.mark.parametrize(
    ("name", "size", "channels", "side"),
    [
        ("resnet10", 64, 512, 2),
        ("resnet18", 64, 512, 2),
        ("resnet50", 64, 2048, 2),
        ("resnet152", 32, 2048, 1),
        ("densenet121", 64, 1024, 2),
    ],
)
def test_feature_map_shapes(name: str, size: int, channels: int, side: int) -> None:
    features, num_features, _ = build_backbone(name, weights=None)
    maps = features.eval()(torch.randn(2, 3, size, size))
    assert num_features == channels
    assert maps.shape == (2, channels, side, side)


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet50"])
def test_resnet_exposes_named_layer4(name: str) -> None:
    features, _, _ = build_backbone(name, weights=None)
    assert [child for child, _ in features.named_children()][-1] == "layer4"
    assert isinstance(features.layer4, torch.nn.Sequential)


def test_densenet_ends_with_relu_like_torchvision() -> None:
    features, _, _ = build_backbone("densenet121", weights=None)
    maps = features.eval()(torch.randn(1, 3, 64, 64))
    assert maps.min() >= 0
    assert isinstance(features.relu5, torch.nn.ReLU)


def test_unknown_backbone_lists_choices() -> None:
    with pytest.raises(ValueError, match="resnet152"):
        build_backbone("vgg16", weights=None)


def test_resnet10_is_one_basic_block_per_stage_with_no_published_weights() -> None:
    """The smoke network: ResNet-18's stages, one block each (4.9 M parameters); no weights by name."""
    features, _, _ = build_backbone("resnet10", weights=None)
    assert [len(getattr(features, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    # stem 9,536 + layer1 73,984 + layer2 230,144 + layer3 919,040 + layer4 3,673,088 (conv, BN, downsample)
    assert sum(p.numel() for p in features.parameters()) == 4_905_792
    with pytest.raises(
        ValueError, match=r"resnet10 has no published weights; use model\.weights=null or a file"
    ):
        build_backbone("resnet10", weights="IMAGENET1K_V1")


def test_unknown_weights_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", weights="IMAGENET1K_V9")


def test_failed_download_explains_offline_options(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"model\.weights=") as err:
        build_backbone("resnet18", weights="IMAGENET1K_V1")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert models.ResNet18_Weights.IMAGENET1K_V1.url in message
    assert "model.weights=null" in message
    assert "hub/checkpoints" in message


def test_real_offline_download_fails_fast() -> None:
    start = time.monotonic()
    try:
        build_backbone("resnet18", weights="DEFAULT")
    except RuntimeError as err:
        assert "model.weights=" in str(err)
        assert time.monotonic() - start < 10
    else:
        pytest.skip("network reachable: the weights downloaded")


def _save(tmp_path: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def _assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def test_full_classifier_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = models.resnet18(weights=None).state_dict()
    features, _, _ = build_backbone("resnet18", weights=str(_save(tmp_path, "resnet18.pth", state)))
    _assert_same_state(features.state_dict(), {k: v for k, v in state.items() if not k.startswith("fc.")})


def test_own_features_file_round_trip(tmp_path: Path) -> None:
    source, _, _ = build_backbone("resnet18", weights=None)
    path = _save(tmp_path, "features.pt", source.state_dict())
    features, _, _ = build_backbone("resnet18", weights=str(path))
    _assert_same_state(features.state_dict(), source.state_dict())


def test_densenet_file_with_legacy_keys_loads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = models.densenet121(weights=None).state_dict()
    # The published DenseNet files predate num_batches_tracked and spell "norm1.weight" as "norm.1.weight".
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert legacy.keys() != state.keys()
    features, _, _ = build_backbone("densenet121", weights=str(_save(tmp_path, "densenet.pth", legacy)))
    expected = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    _assert_same_state(features.state_dict(), expected)


def test_missing_keys_error_names_file_and_keys(tmp_path: Path) -> None:
    state = {
        k: v for k, v in models.resnet18(weights=None).state_dict().items() if not k.startswith("layer4.")
    }
    path = _save(tmp_path, "partial.pth", state)
    with pytest.raises(RuntimeError, match=r"partial\.pth") as err:
        build_backbone("resnet18", weights=str(path))
    assert "layer4.0.conv1.weight" in str(err.value)


def test_wrong_architecture_error_names_file(tmp_path: Path) -> None:
    path = _save(tmp_path, "resnet18.pth", models.resnet18(weights=None).state_dict())
    with pytest.raises(RuntimeError, match=r"resnet18\.pth"):
        build_backbone("resnet50", weights=str(path))


def test_non_state_dict_file_names_file(tmp_path: Path) -> None:
    path = _save(tmp_path, "tensor.pt", torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"tensor\.pt"):
        build_backbone("resnet18", weights=str(path))


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "nowhere.pth"))


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("IMAGENET1K_V2", False),
        ("DEFAULT", False),
        ("weights.pth", True),
        ("model.ckpt", True),
        ("dir/weights", True),
        ("C:\\weights", True),
    ],
)
def test_weights_path_detection(weights: str, expected: bool) -> None:
    assert is_weights_path(weights) is expected
