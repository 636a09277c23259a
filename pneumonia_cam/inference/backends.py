"""Which object runs a model file: backend=torch (a checkpoint) or backend=onnxruntime (an exported file)."""

from omegaconf import DictConfig

from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.inference.onnx_model import OnnxInferenceModel

BACKENDS: dict[str, type[InferenceModel]] = {"torch": InferenceModel, "onnxruntime": OnnxInferenceModel}


def load_model(cfg: DictConfig) -> InferenceModel:
    """The model `cfg.ckpt_path` names, through the backend `cfg.backend` picks (default torch)."""
    name = cfg.get("backend", "torch")
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[name].from_config(cfg)
