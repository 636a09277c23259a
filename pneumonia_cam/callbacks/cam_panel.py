"""Log a panel of CAM overlays for fixed validation images, so dashboards show how attention evolves."""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from pneumonia_cam.data.preprocessor import PreparedImage
from pneumonia_cam.inference.model import InferenceModel
from pneumonia_cam.models.cam import resolve_layer
from pneumonia_cam.utils.overlay import caption, grid, overlay_cam


class CAMPanel(Callback):
    """Every `every_n_epochs` validation epochs, draw CAMs of `num_images` fixed val images (rank zero)."""

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_images: int = 8,
        method: str = "cam",
        target_layer: str | None = None,
        upsample_mode: str = "bilinear",
        alpha: float = 0.4,
        colormap: str = "jet",
        tile: int = 224,
        columns: int = 4,
        dirpath: str | None = None,
    ) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.method = method
        self.cam_options = {"target_layer": target_layer, "upsample_mode": upsample_mode}
        self.alpha = alpha
        self.colormap = colormap
        self.tile = tile
        self.columns = columns
        self.dirpath = dirpath

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fail at the start, not epochs later, when the configured layer does not exist in this backbone."""
        resolve_layer(pl_module.net, self.cam_options["target_layer"])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Draw and log the panel on the scheduled epochs (never during the sanity check)."""
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if trainer.sanity_checking or not due or not trainer.is_global_zero:
            return
        dataset = trainer.datamodule.data_val
        # validation runs under inference mode; Grad-CAM needs autograd, so leave it for this block
        with torch.inference_mode(False), torch.enable_grad():
            panel = self.panel(pl_module, dataset, trainer.datamodule.class_names)
        self.write_png(panel, trainer)
        self.publish(panel, trainer)

    def panel(self, pl_module: LightningModule, dataset, class_names: Sequence[str]) -> np.ndarray:
        """A grid of captioned overlays (BGR uint8) for evenly spaced validation images."""
        indices = np.linspace(0, len(dataset) - 1, num=min(self.num_images, len(dataset))).round().astype(int)
        images = [
            PreparedImage(dataset[int(i)][0], dataset.reader(dataset.records["path"].iloc[int(i)]))
            for i in indices
        ]
        # the panel explains decisions at the default operating point, the one training's metrics use
        model = InferenceModel(pl_module.net, class_names)
        probs, maps = model.explain_with_probs(images, None, self.method, **self.cam_options)
        labels = dataset.records["label"].to_numpy()[indices]
        tiles = []
        for image, cam, prob, label in zip(images, maps, probs, labels, strict=True):
            tile = overlay_cam(image.original, cam, self.alpha, self.colormap)
            tiles.append(
                caption(tile, f"y={int(label)} p={float(prob[model.operating_point.positive_class]):.2f}")
            )
        return grid(tiles, self.tile, self.columns)

    def write_png(self, panel: np.ndarray, trainer: Trainer) -> Path:
        """Write the panel as a PNG in the run directory (useful with CSV-only logging too)."""
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "cam_panels")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{trainer.current_epoch:03d}.png"
        cv2.imwrite(str(path), panel)
        return path

    def publish(self, panel: np.ndarray, trainer: Trainer) -> None:
        """Send the panel to W&B (wandb.Image) and TensorBoard (add_images); other loggers get the PNG."""
        rgb = cv2.cvtColor(panel, cv2.COLOR_BGR2RGB)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/cam_panel", images=[rgb], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_images(
                    "val/cam_panel", rgb[None], trainer.global_step, dataformats="NHWC"
                )
