"""PneumoniaClassifier: optimisation setup, checkpoints, logged metrics and best-monitor tracking."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import models

from pneumonia_cam.models.classifier import PneumoniaClassifier

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PLAIN_TYPES = (str, int, float, bool, type(None))
SGD_FROZEN = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}


def _model(**kwargs: Any) -> PneumoniaClassifier:
    torch.manual_seed(0)
    return PneumoniaClassifier(backbone="resnet18", weights=None, **kwargs)


def _loader(
    n: int = 16, batch_size: int = 8, seed: int = 0, labels: torch.Tensor | None = None
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator) * 2
    targets = torch.arange(n) % 2 if labels is None else labels
    return DataLoader(TensorDataset(images, targets), batch_size=batch_size)


def _trainer(max_epochs: int = 1, **kwargs: Any) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _model_config(name: str, *overrides: str, monitor: str = "val/loss", mode: str = "min") -> DictConfig:
    """Compose one model config with the root ``monitor`` node it interpolates."""
    GlobalHydra.instance().clear()
    fixed = [f"+monitor.metric={monitor}", f"+monitor.mode={mode}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        root = compose(config_name=f"model/{name}", overrides=[*fixed, *(f"model.{o}" for o in overrides)])
    return root.model


def _compose_model(*overrides: str) -> PneumoniaClassifier:
    return instantiate(_model_config("resnet18", "weights=null", *overrides))


def _assert_plain(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)
    else:
        assert isinstance(value, PLAIN_TYPES), type(value)


def test_only_trainable_parameters_reach_optimizer() -> None:
    model = _model(unfreeze=["layer4"])
    optimizer = model.configure_optimizers()["optimizer"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    expected = [*model.net.features.layer4.parameters(), *model.net.head.parameters()]
    assert len(params) == len(expected) == 2 + len(list(model.net.features.layer4.parameters()))
    assert {id(p) for p in params} == {id(p) for p in expected}
    counts = model.parameter_counts()
    assert counts["params/trainable"] == sum(p.numel() for p in expected)
    assert counts["params/total"] == counts["params/trainable"] + counts["params/frozen"]
    backbone = sum(p.numel() for p in model.net.features.parameters())
    assert counts["params/frozen"] == backbone - sum(
        p.numel() for p in model.net.features.layer4.parameters()
    )


def test_single_unfreeze_name_from_command_line_is_a_list() -> None:
    model = _compose_model("unfreeze=layer4")
    assert model.hparams.unfreeze == ["layer4"]
    assert all(p.requires_grad for p in model.net.features.layer4.parameters())


def test_default_optimizer_is_reference_adam_without_scheduler() -> None:
    config = _model().configure_optimizers()
    assert "lr_scheduler" not in config
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == pytest.approx(1e-3)
    assert optimizer.defaults["weight_decay"] == pytest.approx(1e-4)


def test_config_optimizer_and_scheduler_are_honoured() -> None:
    model = _compose_model(
        "optimizer.lr=0.02", "optimizer.weight_decay=0.5", "scheduler.step_size=2", "scheduler.gamma=0.5"
    )
    _assert_plain(dict(model.hparams))
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["weight_decay"] == pytest.approx(0.5)
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.02, 0.02, 0.01, 0.01])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_reference_config_matches_recipe() -> None:
    cfg = _model_config("resnet152", monitor="val/auroc", mode="max")
    assert (cfg.backbone, cfg.weights, cfg.freeze_backbone, cfg.monitor) == (
        "resnet152",
        "IMAGENET1K_V2",
        True,
        "val/auroc",
    )
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.scheduler.step_size, cfg.scheduler.gamma) == (
        0.001,
        0.0001,
        4,
        0.1,
    )


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet152", "densenet121"])
def test_model_configs_name_their_backbone_and_valid_weights(name: str) -> None:
    cfg = _model_config(name)
    assert cfg.backbone == name
    assert cfg.weights in models.get_model_weights(name).__members__
    assert cfg.scheduler.step_size == 4


def test_checkpoint_has_plain_hparams_and_reloads_standalone(tmp_path: Path) -> None:
    model = _compose_model("unfreeze=[layer4]", "class_weights=[1.0,2.0]")
    trainer = _trainer()
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=_loader(seed=1))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    checkpoint = torch.load(path, weights_only=True)
    _assert_plain(checkpoint["hyper_parameters"])
    assert checkpoint["hyper_parameters"]["unfreeze"] == ["layer4"]
    assert not any(isinstance(v, nn.Module) for v in model.hparams.values())
    assert torch.equal(checkpoint["state_dict"]["class_weights"], torch.tensor([1.0, 2.0]))

    restored = PneumoniaClassifier.load_from_checkpoint(path, weights=None)
    images = next(iter(_loader(seed=2)))[0]
    model.eval()
    restored.eval()
    assert torch.equal(restored(images), model(images))
    assert restored.hparams.weights is None


def _hand_metrics(model: LightningModule, loader: DataLoader) -> dict[str, float]:
    """Reference values from the model's own predictions, computed with numpy and sklearn."""
    images, labels = (torch.cat(parts) for parts in zip(*loader, strict=True))
    with torch.no_grad():
        log_probs = model.eval()(images)
    p1, y = log_probs.exp()[:, 1].numpy(), labels.numpy()
    pred = p1 > 0.5
    tp, tn = np.sum(pred & (y == 1)), np.sum(~pred & (y == 0))
    fp, fn = np.sum(pred & (y == 0)), np.sum(~pred & (y == 1))
    assert min(tp, tn, fp, fn) > 0, "the fixture should exercise every confusion cell"
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "test/loss": float(-log_probs[torch.arange(len(y)), labels].mean()),
        "test/acc": (tp + tn) / len(y),
        "test/auroc": roc_auc_score(y, p1),
        "test/f1": 2 * precision * recall / (precision + recall),
        "test/precision": precision,
        "test/recall": recall,
        "test/specificity": tn / (tn + fp),
    }


def test_logged_test_metrics_equal_hand_computed() -> None:
    model = _model()
    loader = _loader(n=40, batch_size=16, seed=3, labels=torch.tensor([0, 1, 1, 0, 1] * 8))
    with torch.no_grad():
        # Centre the decision boundary on this data so that predictions fall on both sides.
        images = torch.cat([batch[0] for batch in loader])
        margin = model.eval()(images) @ torch.tensor([-1.0, 1.0])
        model.net.head.fc.bias[1] -= margin.median() + 1e-3
    logged = _trainer().test(model, dataloaders=loader, verbose=False)[0]
    expected = _hand_metrics(model, loader)
    assert logged.keys() == expected.keys()
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=1e-5), name


class _WeightedData(LightningDataModule):
    """Stands in for the data module's ``balance: loss_weights`` option."""

    class_weights = (0.2, 3.0)

    def test_dataloader(self) -> DataLoader:
        return _loader(n=12, batch_size=12, seed=4, labels=torch.tensor([0] * 9 + [1] * 3))


def _weighted_loss(model: PneumoniaClassifier, weights: torch.Tensor) -> float:
    images, labels = next(iter(_WeightedData().test_dataloader()))
    with torch.no_grad():
        return float(nn.functional.nll_loss(model.eval()(images), labels, weight=weights))


def test_datamodule_class_weights_reach_the_loss() -> None:
    model = _model()
    logged = _trainer().test(model, datamodule=_WeightedData(), verbose=False)[0]
    assert torch.equal(model.class_weights, torch.tensor([0.2, 3.0]))
    assert logged["test/loss"] == pytest.approx(_weighted_loss(model, torch.tensor([0.2, 3.0])), abs=1e-6)
    assert logged["test/loss"] != pytest.approx(_weighted_loss(model, torch.ones(2)), abs=1e-4)


def test_explicit_class_weights_win_over_datamodule() -> None:
    model = _model(class_weights=[1.0, 0.5])
    _trainer().test(model, datamodule=_WeightedData(), verbose=False)
    assert torch.equal(model.class_weights, torch.tensor([1.0, 0.5]))


class _ScheduledBias(Callback):
    """Sets the head bias before each validation so that val/loss follows a known, non-monotonic path."""

    def __init__(self, sanity_bias: float, epoch_biases: list[float]) -> None:
        self.sanity_bias, self.epoch_biases = sanity_bias, epoch_biases
        self.seen: list[tuple[float, float]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        bias = self.sanity_bias if trainer.sanity_checking else self.epoch_biases[trainer.current_epoch]
        with torch.no_grad():
            pl_module.net.head.fc.weight.zero_()
            pl_module.net.head.fc.bias.copy_(torch.tensor([bias, 0.0]))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.seen.append((float(metrics["val/loss"]), float(metrics["val/loss_best"])))


def test_val_loss_best_tracks_minimum_and_ignores_sanity_check() -> None:
    # All validation labels are 0 and the logits are (bias, 0), so val/loss = softplus(-bias) exactly.
    schedule = _ScheduledBias(sanity_bias=20.0, epoch_biases=[0.0, 2.0, -1.0])
    model = _model(optimizer=SGD_FROZEN)
    trainer = _trainer(max_epochs=3, callbacks=[schedule])
    val = _loader(labels=torch.zeros(16, dtype=torch.long))
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=val)
    losses = [float(nn.functional.softplus(-torch.tensor(b))) for b in schedule.epoch_biases]
    assert [loss for loss, _ in schedule.seen] == pytest.approx(losses, abs=1e-5)
    assert [best for _, best in schedule.seen] == pytest.approx([losses[0], losses[1], losses[1]], abs=1e-5)


def test_max_mode_monitor_logs_its_best() -> None:
    model = _model(optimizer=SGD_FROZEN, monitor="val/acc", monitor_mode="max")
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=_loader(seed=1))
    assert float(trainer.callback_metrics["val/acc_best"]) == pytest.approx(
        float(trainer.callback_metrics["val/acc"])
    )
    assert trainer.callback_metrics["params/trainable"] == 512 * 2 + 2


@pytest.mark.parametrize(("monitor", "mode"), [("val/accuracy", "max"), ("val/loss", "lowest")])
def test_invalid_monitor_is_rejected(monitor: str, mode: str) -> None:
    with pytest.raises(ValueError, match="monitor"):
        _model(monitor=monitor, monitor_mode=mode)


def test_predict_returns_log_probabilities_only() -> None:
    """Training code returns log-probabilities; decisions belong to the operating point (no arg-max here)."""
    model = _model()
    outputs = _trainer().predict(model, dataloaders=_loader(n=10, batch_size=5))
    assert all(set(out) == {"log_probs"} for out in outputs)
    probs = torch.cat([out["log_probs"] for out in outputs]).exp()
    assert probs.shape == (10, 2)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(10))


def test_compile_keeps_state_dict_keys() -> None:
    model = _model(compile=True)
    keys = list(model.state_dict())
    model.trainer = _trainer()
    model.setup("fit")
    assert list(model.state_dict()) == keys
    assert model.net._compiled_call_impl is not None


def _smoothed_nll(log_probs: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing written out: (1 - eps) NLL of the label + eps x mean NLL over the classes."""
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1)
    return ((1 - eps) * nll + eps * -log_probs.mean(dim=1)).mean()


def test_label_smoothing_shapes_the_train_loss_only() -> None:
    """train/loss is the smoothed loss (hand-computed); val/loss stays the plain NLL."""
    model = _model(optimizer=SGD_FROZEN, label_smoothing=0.2)
    train, val = _loader(n=16, batch_size=16, seed=5), _loader(n=16, batch_size=16, seed=6)
    trainer = _trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    images, labels = next(iter(train))
    with torch.no_grad():
        expected_train = _smoothed_nll(model.train()(images), labels, 0.2)  # BN uses batch stats, as in fit
        val_images, val_labels = next(iter(val))
        expected_val = nn.functional.nll_loss(model.eval()(val_images), val_labels)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(expected_train), abs=1e-5)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(expected_val), abs=1e-5)
    assert float(expected_train) != pytest.approx(float(_smoothed_nll(model.train()(images), labels, 0.0)))
    with pytest.raises(ValueError, match="label_smoothing"):
        _model(label_smoothing=1.0)


def test_channels_last_changes_layout_not_results() -> None:
    """channels_last converts the weights to NHWC in setup; the log-probabilities stay the same."""
    plain, nhwc = _model(), _model(channels_last=True)
    nhwc.trainer = _trainer()
    nhwc.setup("fit")
    assert next(nhwc.net.features.parameters()).is_contiguous(memory_format=torch.channels_last)
    images, labels = (torch.cat(parts) for parts in zip(*_loader(), strict=True))
    logged = _trainer().test(nhwc, dataloaders=_loader(), verbose=False)[0]
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(images), plain.eval()(images), atol=1e-4, rtol=1e-4)
        expected = float(nn.functional.nll_loss(plain.eval()(images), labels))
    assert logged["test/loss"] == pytest.approx(expected, abs=1e-4)
    # the feature cache feeds pooled B x C features: channels_last leaves them alone
    pooled = DataLoader(TensorDataset(torch.randn(8, 512), torch.arange(8) % 2), batch_size=8)
    pooled_loss = _trainer().test(nhwc, dataloaders=pooled, verbose=False)[0]["test/loss"]
    features, targets = next(iter(pooled))
    with torch.no_grad():
        expected = float(nn.functional.nll_loss(plain.net.head.from_pooled(features), targets))
    assert pooled_loss == pytest.approx(expected, abs=1e-5)


def test_cosine_scheduler_spans_the_run() -> None:
    """model/scheduler=cosine decays lr to eta_min over trainer.max_epochs."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train.yaml",
            overrides=["model=resnet18", "model/scheduler=cosine", "trainer.max_epochs=4"],
        )
    model = instantiate(cfg.model, weights=None)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    eta, lr = 1e-5, 1e-3
    expected = [eta + (lr - eta) * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(4)]
    assert lrs == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(eta)
