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
SHARED = ROOT.parent / "shared" / "data"
KERMANY = SHARED / "chest_xray_kermany224"
FULL_RESOLUTION = SHARED / "full_resolution_unlabelled"
CLASSES = ("NORMAL", "PNEUMONIA")


def kermany_sample(n: int, split: str = "train") -> list[tuple[Path, int]]:
    """n real (path, label) pairs, alternating classes, in a fixed order."""
    per_class = [sorted((KERMANY / split / name).glob("*.jpeg")) for name in CLASSES]
    pairs = [(files[i], label) for i in range(n) for label, files in enumerate(per_class)]
    return pairs[:n]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def emit(result: dict, out: str | None) -> None:
    """Print the JSON result and, when asked, write it to a file."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
