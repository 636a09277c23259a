"""LightningModule that trains, evaluates and predicts with a ``ChestXrayNet``."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning import LightningModule
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection, MinMetric

from pneumonia_cam.data.feature_cache import FeatureEncoder
from pneumonia_cam.models.encoder import backbone_encoder
from pneumonia_cam.models.metrics import build_metrics, metric_scores
from pneumonia_cam.models.net import ChestXrayNet
from pneumonia_cam.models.weights.preprocessing import check_transform

Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3, "weight_decay": 1e-4}


def _plain(value: Any) -> Any:
    """Turn OmegaConf containers into builtins so checkpoints load with ``weights_only=True``."""
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def _inputs(batch: Batch | torch.Tensor) -> torch.Tensor:
    """Accept ``(inputs, labels)`` tuples as well as bare input batches at prediction time."""
    return batch[0] if isinstance(batch, tuple | list) else batch


def distillation_loss(
    log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T, mean over the batch (Hinton et al. 2015).

    Log-probabilities stand in for logits: log_softmax(log_softmax(z) / T) == log_softmax(z / T).
    """
    student = F.log_softmax(log_probs / temperature, dim=1)
    teacher = F.log_softmax(teacher_log_probs / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


class PneumoniaClassifier(LightningModule):
    """Pneumonia-vs-normal classifier: NLL loss on log-probs, per-stage metrics, best-monitor tracking."""

    def __init__(
        self,
        backbone: str = "resnet152",
        weights: str | None = "IMAGENET1K_V2",
        num_classes: int = 2,
        freeze_backbone: bool = True,
        unfreeze: Sequence[str] = (),
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        class_weights: list[float] | None = None,
        monitor: str = "val/loss",
        monitor_mode: str = "min",
        compile: bool = False,
        channels_last: bool = False,
        ema_decay: float | None = None,
        teacher: nn.Module | None = None,
        distill_alpha: float = 0.5,
        distill_temperature: float = 2.0,
        weights_dir: str | None = None,
    ) -> None:
        super().__init__()
        # save_hyperparameters reads these locals, so they must be builtins (no OmegaConf, no modules) first.
        unfreeze = [unfreeze] if isinstance(unfreeze, str) else list(_plain(unfreeze))
        optimizer = _plain(optimizer) or dict(DEFAULT_OPTIMIZER)
        scheduler = _plain(scheduler)
        class_weights = _plain(class_weights)
        self.save_hyperparameters(ignore=["teacher"])

        metrics = build_metrics(num_classes)
        stages = ["val", "val_ema"] if ema_decay is not None else ["val"]
        monitorable = [f"{stage}/{name}" for stage in stages for name in ("loss", *metrics)]
        if monitor not in monitorable:
            raise ValueError(f"monitor must be one of {monitorable}, got {monitor!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {ema_decay}")
        if not 0.0 <= distill_alpha <= 1.0 or distill_temperature <= 0:
            raise ValueError(
                f"distill_alpha must be in [0, 1] and distill_temperature > 0, got {distill_alpha}, "
                f"{distill_temperature}"
            )
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be 'min' or 'max', got {monitor_mode!r}")
        weights_tensor = torch.ones(num_classes) if class_weights is None else torch.tensor(class_weights)
        if weights_tensor.shape != (num_classes,):
            raise ValueError(f"class_weights needs {num_classes} values, got {class_weights}")

        self.net = ChestXrayNet(
            backbone, weights, num_classes, freeze_backbone, unfreeze, dropout, weights_dir
        )
        self.register_buffer("class_weights", weights_tensor.float())
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # EMA of every weight and buffer (timm's ModelEma): validated beside the raw weights, saved in the
        # checkpoint, and what test, predict and InferenceModel use (`inference_net`)
        self.ema = None
        if ema_decay is not None:
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
            self.val_ema_metrics = metrics.clone(prefix="val_ema/")
            self.val_ema_loss = MeanMetric()
        self.monitor_best = MinMetric() if monitor_mode == "min" else MaxMetric()
        # knowledge distillation (Hinton et al. 2015): a frozen teacher (e.g. an ensemble file) gives soft
        # targets on the same augmented batch. Not a registered submodule: never in the state dict (so the
        # checkpoint is the student's alone and resumes load strictly), the optimizer or train() mode.
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(
                f"teacher must be a loaded network, got {teacher!r}: load the file with "
                "pneumonia_cam.inference.ensemble.load_teacher (src/train.py does for model.teacher)"
            )
        object.__setattr__(self, "teacher", None if teacher is None else teacher.eval().requires_grad_(False))

    @property
    def inference_net(self) -> ChestXrayNet:
        """The weights to test and deploy: the EMA's when the module keeps one, else the trained ones."""
        return self.net if self.ema is None else self.ema.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class log-probabilities."""
        return self.net(x)

    def log_probs(self, inputs: torch.Tensor, net: ChestXrayNet | None = None) -> torch.Tensor:
        """Class log-probabilities from images (B x 3 x H x W) or from cached pooled features (B x C)."""
        net = net or self.net
        return net.head.from_pooled(inputs) if inputs.ndim == 2 else net(inputs)

    def parameter_counts(self) -> dict[str, int]:
        """Parameter totals for experiment logs, so frozen vs fine-tuned runs are easy to tell apart."""
        return self.net.parameter_counts()

    def feature_encoder(self, precision: str) -> FeatureEncoder:
        """What the data module's feature cache runs: this model's backbone, refused unless frozen."""
        return backbone_encoder(self.net, precision)

    def setup(self, stage: str) -> None:
        """Adopt the data module's class weights, refuse inputs the weights were not trained on, compile."""
        datamodule_weights = getattr(getattr(self.trainer, "datamodule", None), "class_weights", None)
        if self.hparams.class_weights is None and datamodule_weights is not None:
            weights = torch.as_tensor(datamodule_weights, dtype=self.class_weights.dtype)
            if weights.shape != self.class_weights.shape:
                raise ValueError(
                    f"datamodule.class_weights has shape {tuple(weights.shape)}, expected "
                    f"{tuple(self.class_weights.shape)}"
                )
            self.class_weights.copy_(weights)
        eval_transform = getattr(getattr(self.trainer, "datamodule", None), "eval_transform", None)
        if self.net.input_spec is not None and eval_transform is not None:
            check_transform(eval_transform, self.net.input_spec, str(self.hparams.weights))
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)  # NHWC kernels: ~1.25x for CPU convolutions
        if self.hparams.compile and stage == "fit":
            # In-place compile keeps state-dict keys free of "_orig_mod." so checkpoints stay portable.
            self.net.compile()

    def on_fit_start(self) -> None:
        """Put the teacher on the student's device (it is not a submodule, so `.to()` skips it)."""
        if self.teacher is not None:
            self.teacher.to(self.device)

    def on_train_start(self) -> None:
        """Forget the sanity check's best value and record how much of the network is trained."""
        self.monitor_best.reset()
        counts = {name: float(count) for name, count in self.parameter_counts().items()}
        self.log_dict(counts, on_step=False, on_epoch=True, sync_dist=True)

    def _step(
        self,
        batch: Batch,
        stage: str,
        loss_metric: MeanMetric,
        metrics: MetricCollection,
        net: ChestXrayNet | None = None,
    ) -> torch.Tensor:
        """Compute the loss, update the stage's metric objects and log them for epoch-end aggregation."""
        inputs, labels = batch
        if self.hparams.channels_last and inputs.dim() == 4:  # not the feature cache's pooled B x C inputs
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        log_probs = self.log_probs(inputs, net)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        # cross_entropy's log_softmax leaves log-probabilities as they are, and it knows label smoothing
        # labels are class indices, or N x K soft targets from Mixup / CutMix (their metrics use the arg-max)
        loss = F.cross_entropy(log_probs, labels, weight=self.class_weights, label_smoothing=smoothing)
        if stage == "train" and self.teacher is not None:
            if inputs.ndim != 4:
                raise ValueError("distillation needs images: the teacher cannot run on cached features")
            with torch.no_grad():
                teacher_log_probs = self.teacher(inputs)
            soft = distillation_loss(log_probs, teacher_log_probs, self.hparams.distill_temperature)
            loss = self.hparams.distill_alpha * soft + (1 - self.hparams.distill_alpha) * loss
        loss_metric.update(loss.detach(), weight=labels.shape[0])
        metrics.update(metric_scores(log_probs.detach()), labels.argmax(1) if labels.ndim == 2 else labels)
        self.log(f"{stage}/loss", loss_metric, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Optimise the NLL loss."""
        return self._step(batch, "train", self.train_loss, self.train_metrics)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """Fold the step's weights into the EMA."""
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Accumulate validation loss and metrics, of the EMA weights too when kept."""
        self._step(batch, "val", self.val_loss, self.val_metrics)
        if self.ema is not None:
            self._step(batch, "val_ema", self.val_ema_loss, self.val_ema_metrics, self.ema.module)

    def on_validation_epoch_end(self) -> None:
        """Track the best monitored value (``on_train_start`` discards what the sanity check recorded)."""
        stage, name = self.hparams.monitor.split("/")
        loss, metrics = (
            (self.val_loss, self.val_metrics) if stage == "val" else (self.val_ema_loss, self.val_ema_metrics)
        )
        monitored: Metric = loss if name == "loss" else metrics[self.hparams.monitor]
        self.monitor_best(monitored.compute())
        self.log(f"{self.hparams.monitor}_best", self.monitor_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Accumulate test loss and metrics (of the inference weights)."""
        self._step(batch, "test", self.test_loss, self.test_metrics, self.inference_net)

    def predict_step(self, batch: Batch | torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class log-probabilities for eval; decisions belong to the operating point, not to training code."""
        return {"log_probs": self.log_probs(_inputs(batch), self.inference_net)}

    def configure_optimizers(self) -> dict[str, Any]:
        """Build the configured optimizer over trainable parameters only, plus the optional scheduler."""
        optimizer = instantiate(self.hparams.optimizer)(params=self.net.trainable_parameters())
        if self.hparams.scheduler is None:
            return {"optimizer": optimizer}
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.hparams.monitor,
                "interval": "epoch",
                "frequency": 1,
            },
        }
