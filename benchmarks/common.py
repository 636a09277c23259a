"""Shared benchmark plumbing: repo imports, a real-image sample, the machine description, JSON output."""

import json
import os
import platform
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# real data: ../shared/data beside the checkout, or $SHARED_DATA (e.g. a copy carried to a GPU machine)
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
KERMANY = SHARED / "chest_xray_kermany224"
FULL_RESOLUTION = SHARED / "full_resolution_unlabelled"
CLASSES = ("NORMAL", "PNEUMONIA")


def kermany_sample(n: int, split: str = "train") -> list[tuple[Path, int]]:
    """n real (path, label) pairs, alternating classes, in a fixed order."""
    per_class = [sorted((KERMANY / split / name).glob("*.jpeg")) for name in CLASSES]
    pairs = [(files[i], label) for i in range(-(-n // 2)) for label, files in enumerate(per_class)]
    return pairs[:n]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo (Linux), else None."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(field)), None)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    return cpuinfo("model name") or platform.processor()


def cpu_flags() -> list[str]:
    """The vector-instruction flags that decide which fp32 / bf16 / int8 kernels run (Linux)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = (cpuinfo("flags") or "").split()
    return [flag for flag in wanted if flag in flags]


def emit(result: dict, out: str | None) -> None:
    """Print the JSON result and, when asked, write it to a file."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def reference_checkpoint(
    path: Path, backbone: str = "resnet152", image_size: int = 224, weights: str | None = None
) -> Path:
    """A reference-recipe checkpoint (random head; random backbone unless `weights` names a file) with its run
    config as train.py writes it, so the eval transform follows the weights as it does in training."""
    import torch
    from hydra import compose, initialize_config_dir
    from lightning import Trainer
    from omegaconf import OmegaConf

    from pneumonia_cam.models.classifier import PneumoniaClassifier
    from pneumonia_cam.utils.run_config import CONFIG_KEY

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    overrides = [f"model.backbone={backbone}", f"model.weights={weights or 'null'}", "data=chest_xray"]
    overrides += [f"data.data_dir={KERMANY}", "data.output_dir=null", f"data.image_size={image_size}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train.yaml", overrides=overrides)
    torch.manual_seed(0)
    module = PneumoniaClassifier(backbone=backbone, weights=weights)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    run_config = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "data")}
    run_config["input"] = dict(cfg.input)  # resolved from model.weights (a plain dict already)
    checkpoint[CONFIG_KEY] = {**run_config, "seed": int(cfg.seed)}
    torch.save(checkpoint, path)
    return path
