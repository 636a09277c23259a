"""Run an exported model without torch: ONNX Runtime, numpy and OpenCV only."""

from pneumonia_cam.runtime.onnx import OnnxModel

__all__ = ["OnnxModel"]
