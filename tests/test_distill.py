"""Distillation: the loss by hand, a frozen teacher never trained or saved, teachers of the same split."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import perturbed_copy
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pneumonia_cam.inference.ensemble import load_run_config, load_teacher, save_ensemble
from pneumonia_cam.models.classifier import PneumoniaClassifier, distillation_loss
from pneumonia_cam.models.combined import EnsembleNet
from src.train import train


def test_distillation_loss_by_hand():
    """T^2 x mean over samples of sum_k p_teacher (log p_teacher - log p_student), all at temperature T."""
    student = torch.log_softmax(torch.tensor([[2.0, -1.0], [0.5, 0.25]]), dim=1)
    teacher = torch.log_softmax(torch.tensor([[0.0, 1.0], [1.0, -2.0]]), dim=1)
    temperature = 2.0

    def softmax(row: list[float]) -> list[float]:
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p_s, p_t = softmax(s_row), softmax(t_row)
        expected += sum(t * (math.log(t) - math.log(s)) for s, t in zip(p_s, p_t, strict=True))
    expected = expected / 2 * temperature**2
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-7)


def test_training_loss_mixes_teacher_and_labels():
    """alpha x distillation + (1 - alpha) x the usual weighted, smoothed NLL; validation stays plain NLL."""
    torch.manual_seed(0)
    teacher = PneumoniaClassifier(backbone="resnet18", weights=None).net
    module = PneumoniaClassifier(
        backbone="resnet18",
        weights=None,
        class_weights=[1.0, 2.0],
        label_smoothing=0.1,
        teacher=teacher,
        distill_alpha=0.3,
        distill_temperature=3.0,
    ).eval()  # BatchNorm on running stats: the same outputs on every call
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        loss = module.training_step((images, labels), 0)
        student, taught = module.net(images), teacher(images)
    hard = F.cross_entropy(student, labels, weight=torch.tensor([1.0, 2.0]), label_smoothing=0.1)
    expected = 0.3 * distillation_loss(student, taught, 3.0) + 0.7 * hard
    torch.testing.assert_close(loss, expected)
    plain = PneumoniaClassifier(
        backbone="resnet18", weights=None, class_weights=[1.0, 2.0], label_smoothing=0.1
    )
    plain.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval().training_step((images, labels), 0), hard)


def test_teacher_is_frozen_and_outside_the_module():
    """Not a submodule: absent from state dict and optimizer, kept in eval by train(), refused as a path."""
    teacher = PneumoniaClassifier(backbone="resnet18", weights=None).net
    module = PneumoniaClassifier(backbone="resnet18", weights=None, teacher=teacher)
    assert not any(key.startswith("teacher") for key in module.state_dict())
    assert all(p.requires_grad is False for p in teacher.parameters())
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    module.train()
    assert module.net.training and not teacher.training
    assert "teacher" not in module.hparams
    with pytest.raises(TypeError, match="load_teacher"):
        PneumoniaClassifier(backbone="resnet18", weights=None, teacher="ensemble.ckpt")
    with pytest.raises(ValueError, match="distill_alpha"):
        PneumoniaClassifier(backbone="resnet18", weights=None, distill_alpha=1.5)


def test_teacher_must_share_the_split(smoke_checkpoint, tmp_path):
    """A teacher trained on another split could leak the student's validation images: refused by name."""
    data = load_run_config(smoke_checkpoint).data
    other = perturbed_copy(smoke_checkpoint, tmp_path / "other_split.ckpt", data_seed=999)
    with pytest.raises(ValueError, match=r"other_split\.ckpt.*data\.\['seed'\]"):
        load_teacher(other, data)
    member = perturbed_copy(smoke_checkpoint, tmp_path / "member.ckpt")
    ensemble = load_teacher(save_ensemble([smoke_checkpoint, member], tmp_path / "ensemble.ckpt"), data)
    assert isinstance(ensemble, EnsembleNet) and not ensemble.training
    images = torch.randn(2, 3, 64, 64)
    members = [load_teacher(path, data) for path in (smoke_checkpoint, member)]
    with torch.no_grad():
        mean_probs = torch.stack([net(images).exp() for net in members]).mean(0)
        torch.testing.assert_close(ensemble(images).exp(), mean_probs)


def test_train_distils_from_a_checkpoint(cfg_train, smoke_checkpoint):
    """model.teacher=<ckpt> in train.py: the student trains, its checkpoint holds the student alone, and the
    teacher's weights and BatchNorm statistics come out unchanged."""
    with open_dict(cfg_train):
        cfg_train.trainer.max_epochs = 1
        cfg_train.model.teacher = str(smoke_checkpoint)
        cfg_train.model.distill_alpha = 0.8
    HydraConfig().set_config(cfg_train)
    _, objects = train(cfg_train)
    teacher = objects["model"].teacher
    fresh = load_teacher(smoke_checkpoint, cfg_train.data)
    for (name, value), reference in zip(
        teacher.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, reference, msg=name)
    best = objects["trainer"].checkpoint_callback.best_model_path
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert set(state["state_dict"]) == set(
        PneumoniaClassifier(backbone="resnet10", weights=None).state_dict()
    )
    assert state["hyper_parameters"]["distill_alpha"] == 0.8
    assert load_run_config(best).model.teacher == str(smoke_checkpoint)
    reloaded = PneumoniaClassifier.load_from_checkpoint(best, weights_only=True, weights=None)
    assert reloaded.teacher is None
