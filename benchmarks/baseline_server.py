"""The baseline a quick FastAPI app would be: one request, one fp32 eager forward, no batching.

Same checkpoint, same pre-processing (the project's ImagePreprocessor), so only the serving differs.
`python benchmarks/baseline_server.py <ckpt> <port> [device]`
"""

import sys

import cv2
import numpy as np
import torch
import uvicorn
from common import ROOT  # noqa: F401  (puts the repo on sys.path)
from fastapi import FastAPI, File, UploadFile

from pneumonia_cam.data.image_io import to_gray_uint8
from pneumonia_cam.data.preprocessor import ImagePreprocessor
from pneumonia_cam.models.classifier import PneumoniaClassifier


def build(ckpt: str, device: str = "cpu") -> FastAPI:
    """The quick app: load the LightningModule once, run each request through it eagerly."""
    module = PneumoniaClassifier.load_from_checkpoint(ckpt, map_location=device, weights_only=True).eval()
    preprocessor = ImagePreprocessor.from_checkpoint(ckpt)
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(...)) -> dict:  # noqa: B008  (FastAPI's idiom)
        """Decode, pre-process, one eager fp32 forward, argmax-free threshold 0.5."""
        image = cv2.imdecode(np.frombuffer(file.file.read(), np.uint8), cv2.IMREAD_UNCHANGED)
        tensor = preprocessor.process(to_gray_uint8(image, "upload"))
        with torch.no_grad():
            probs = module(tensor[None].to(device)).exp()[0].cpu()
        return {"probabilities": {"NORMAL": float(probs[0]), "PNEUMONIA": float(probs[1])}}

    return app


if __name__ == "__main__":
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    uvicorn.run(build(sys.argv[1], device), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
