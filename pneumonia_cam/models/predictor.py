"""Batched inference at the hardware's pace: inference_mode, channels_last, optional bf16, torch.compile."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from pneumonia_cam.utils.precision import PRECISIONS


@contextmanager
def inference_context(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """No autograd graph, and bf16 autocast when asked, on CPU as on GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        yield


class Predictor:
    """Run a module function on image batches in eval mode; outputs come back as detached float32.

    Only the input is made channels_last: convolutions then pick the channels_last kernels and propagate the
    layout, while the module's weights (and any training that shares them) stay as they are.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        self.module = module
        self.precision = precision
        function = fn or module
        self.fn = torch.compile(function, dynamic=False) if compile else function

    @property
    def device(self) -> torch.device:
        """Where the module's parameters live (inputs are moved there)."""
        return next(self.module.parameters()).device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Outputs (float32, detached; a tensor or a tuple) for a B x C x H x W batch, in eval mode."""
        was_training = self.module.training
        self.module.eval()
        device = self.device
        try:
            with inference_context(device, self.precision):
                inputs = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                outputs = self.fn(inputs)
        finally:
            self.module.train(was_training)
        # ordinary tensors: inference tensors cannot enter autograd (e.g. CAMs) later
        if isinstance(outputs, tuple):
            return tuple(output.float().clone() for output in outputs)
        return outputs.float().clone()
