"""ChestXrayNet: the features/head seam, log-probability outputs and frozen-backbone guarantees."""

import pytest
import torch
from torch import nn

from pneumonia_cam.models.net import ChestXrayNet


def _net(**kwargs: object) -> ChestXrayNet:
    torch.manual_seed(0)
    return ChestXrayNet(backbone="resnet18", weights=None, **kwargs)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_steps(net: ChestXrayNet, steps: int = 3) -> None:
    """A few SGD steps in train mode, as Lightning would run them."""
    net.train()
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=0.5)
    for _ in range(steps):
        images, labels = torch.randn(4, 3, 32, 32) * 3 + 1, torch.tensor([0, 1, 0, 1])
        loss = nn.functional.nll_loss(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_forward_is_head_of_features() -> None:
    net = _net().eval()
    images = torch.randn(3, 3, 32, 32)
    maps = net.forward_features(images)
    assert maps.shape == (3, 512, 1, 1)
    torch.testing.assert_close(net(images), net.forward_head(maps))
    pooled = net.forward_head(maps, pre_logits=True)
    assert pooled.shape == (3, 512)
    torch.testing.assert_close(net(images), torch.log_softmax(net.head.logits(pooled), dim=1))


def test_outputs_are_log_probabilities() -> None:
    log_probs = _net(num_classes=3).eval()(torch.randn(5, 3, 32, 32))
    assert log_probs.shape == (5, 3)
    assert (log_probs <= 0).all()
    torch.testing.assert_close(log_probs.logsumexp(dim=1), torch.zeros(5))


def test_frozen_backbone_is_bitwise_unchanged_by_training() -> None:
    net = _net()
    before, fc_before = _snapshot(net.features), _snapshot(net.head.fc)
    _train_steps(net)
    after = net.features.state_dict()
    assert any(k.endswith("running_mean") for k in before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not torch.equal(net.head.fc.weight, fc_before["weight"])
    assert all(not p.requires_grad for p in net.features.parameters())
    assert not any(m.training for stage in net.features.children() for m in stage.modules())
    assert net.head.training


def test_only_head_parameters_are_trainable() -> None:
    net = _net()
    assert [p.shape for p in net.trainable_parameters()] == [torch.Size([2, 512]), torch.Size([2])]


def test_unfreeze_layer4_trains_it_and_its_batchnorm() -> None:
    net = _net(unfreeze=["layer4"])
    frozen_before, layer4_before = _snapshot(net.features.layer3), _snapshot(net.features.layer4)
    _train_steps(net)
    assert all(m.training for m in net.features.layer4.modules())
    assert not any(m.training for m in net.features.layer3.modules())
    for key, value in frozen_before.items():
        assert torch.equal(net.features.layer3.state_dict()[key], value), key
    layer4_after = net.features.layer4.state_dict()
    assert not torch.equal(layer4_after["0.conv1.weight"], layer4_before["0.conv1.weight"])
    assert not torch.equal(layer4_after["0.bn1.running_mean"], layer4_before["0.bn1.running_mean"])
    layer4_params = sum(p.numel() for p in net.features.layer4.parameters())
    assert sum(p.numel() for p in net.trainable_parameters()) == layer4_params + 512 * 2 + 2


def test_frozen_stages_stay_eval_after_eval_train_cycle() -> None:
    net = _net()
    net.eval()
    net.train()
    training = {name for name, m in net.named_modules() if m.training}
    assert training == {
        "",
        "features",
        "head",
        *(f"head.{name}" for name, _ in net.head.named_modules() if name),
    }


def test_unknown_unfreeze_name_lists_stages() -> None:
    with pytest.raises(ValueError, match="layer4") as err:
        _net(unfreeze=["layer5"])
    assert "layer5" in str(err.value)


def test_unfrozen_backbone_trains_everything() -> None:
    net = _net(freeze_backbone=False)
    assert all(p.requires_grad for p in net.parameters())
    assert all(m.training for m in net.modules())


def test_dropout_is_optional() -> None:
    assert isinstance(_net(dropout=0.3).head.dropout, nn.Dropout)
    assert isinstance(_net().head.dropout, nn.Identity)
