"""The weights registry: every pretrained file the project knows, with where it comes from and how to feed it.

One table, so a name on the command line (`model.weights=txv-densenet121-res224-all`) says which architecture
it fits, which file to look for in the weights folder, how to verify it, where to download it, under which
licence, and which pre-processing family its features need.
"""

from __future__ import annotations

from dataclasses import dataclass

TORCHVISION = "https://download.pytorch.org/models/"
TXV = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
TXV_SUFFIX = "-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
CORAL = "https://github.com/google-coral/test_data/raw/104342d2d348/"


@dataclass(frozen=True)
class WeightsEntry:
    """One registry row; `sha256` may be a prefix (torchvision puts its first 8 hex digits in the name)."""

    name: str
    architecture: str
    file: str
    url: str
    licence: str
    family: str  # imagenet | xrv | tflite (read from the file itself)
    sha256: str | None = None
    format: str = "state_dict"  # state_dict | safetensors | module_pickle | tflite
    description: str = ""


def _torchvision(name: str, architecture: str, file: str, tag: str) -> WeightsEntry:
    """torchvision's ImageNet files carry the first 8 hex digits of their SHA-256 in the file name."""
    return WeightsEntry(
        name,
        architecture,
        file,
        TORCHVISION + file,
        "BSD-3-Clause (torchvision)",
        "imagenet",
        sha256=file.rsplit("-", 1)[1].split(".")[0],
        description=f"torchvision {architecture} ImageNet-1k {tag}",
    )


def _txv(dataset: str, prefix: str, trained_on: str) -> WeightsEntry:
    """TorchXRayVision DenseNet-121 (224 px, 18 pathologies), saved by torch.save of the whole module."""
    file = prefix + TXV_SUFFIX
    return WeightsEntry(
        f"txv-densenet121-res224-{dataset}",
        "xrv_densenet121",
        file,
        TXV + file,
        "Apache-2.0 (TorchXRayVision)",
        "xrv",
        format="module_pickle",
        description=f"TorchXRayVision densenet121-res224-{dataset}: chest X-rays of {trained_on}",
    )


ENTRIES = (
    _torchvision("tv-resnet18-imagenet1k-v1", "resnet18", "resnet18-f37072fd.pth", "V1"),
    _torchvision("tv-resnet50-imagenet1k-v2", "resnet50", "resnet50-11ad3fa6.pth", "V2"),
    _torchvision("tv-resnet152-imagenet1k-v2", "resnet152", "resnet152-f82ba261.pth", "V2"),
    _torchvision("tv-densenet121-imagenet1k-v1", "densenet121", "densenet121-a639ec97.pth", "V1"),
    WeightsEntry(
        "timm-resnet50-a1-in1k",
        "resnet50",
        "timm-resnet50.a1_in1k.safetensors",
        "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors",
        "Apache-2.0 (timm)",
        "imagenet",
        format="safetensors",
        description="timm resnet50.a1_in1k (ResNet strikes back A1), torchvision-compatible keys",
    ),
    _txv(
        "all",
        "nih-pc-chex-mimic_ch-google-openi-kaggle",
        "NIH, PadChest, CheXpert, MIMIC, Google, OpenI, RSNA",
    ),
    _txv("nih", "nih", "NIH ChestX-ray14"),
    _txv("rsna", "kaggle", "the RSNA Pneumonia Challenge"),
    _txv("chex", "chex", "CheXpert"),
    _txv("mimic_ch", "mimic_ch", "MIMIC-CXR (CheXpert labels)"),
    _txv("pc", "pc", "PadChest"),
    WeightsEntry(
        "tflite-mobilenet-v2-1.0-224-quant",
        "mobilenet_v2",
        "mobilenet_v2_1.0_224_quant.tflite",
        CORAL + "mobilenet_v2_1.0_224_quant.tflite",
        "Apache-2.0 (google-coral/test_data)",
        "tflite",
        sha256="7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776",
        format="tflite",
        description="MobileNetV2 1.0 224 ImageNet-1k classifier, 8-bit quantized",
    ),
    WeightsEntry(
        "tflite-mobilenet-v1-1.0-224-quant-embedding",
        "mobilenet_v1",
        "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
        CORAL + "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
        "Apache-2.0 (google-coral/test_data)",
        "tflite",
        sha256="f409ef4f73fcbb9667841965623c5c8524aac33d41b9bf5f3667161fb4a76319",
        format="tflite",
        description="MobileNetV1 1.0 224 ImageNet-1k embedding extractor (1024-d), 8-bit quantized",
    ),
)
REGISTRY: dict[str, WeightsEntry] = {entry.name: entry for entry in ENTRIES}
BY_FILE: dict[str, WeightsEntry] = {entry.file: entry for entry in ENTRIES}


def lookup(name: str) -> WeightsEntry:
    """The registry entry called `name`, or a KeyError listing the names there are."""
    if name not in REGISTRY:
        raise KeyError(f"{name!r} is not in the weights registry; known names: {sorted(REGISTRY)}")
    return REGISTRY[name]
