"""Class Activation Maps: the CAM identity, Grad-CAM == CAM up to scale, hooks, modes and localisation."""

import gc

import pytest
import torch

from pneumonia_cam.models.cam import CAM, GradCAM, build_cam
from pneumonia_cam.models.net import ChestXrayNet


@pytest.fixture(scope="module")
def net() -> ChestXrayNet:
    """A small random ResNet (GAP + linear head) with randomised BatchNorm stats, so eval mode matters."""
    torch.manual_seed(0)
    model = ChestXrayNet("resnet18", weights=None, num_classes=2, freeze_backbone=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def images() -> torch.Tensor:
    """A random batch of 3 images."""
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_cam_identity(net, images):
    """Spatial mean of the raw class map plus the class bias equals the class logit, for every class."""
    cam = CAM(net)
    for target in range(2):
        raw, logits, _ = cam.raw_maps(images, target_class=target)
        recon = raw.mean(dim=(1, 2)) + net.head.fc.bias[target]
        torch.testing.assert_close(recon, logits[:, target], atol=1e-4, rtol=0)


def test_gradcam_equals_cam_up_to_positive_scale(net, images):
    """On GAP + linear, Grad-CAM weights are the head's weights divided by h*w."""
    raw_cam, _, _ = CAM(net).raw_maps(images, target_class=1)
    raw_grad, _, _ = GradCAM(net).raw_maps(images, target_class=1)
    scale = raw_cam.flatten(1).norm(dim=1) / raw_grad.flatten(1).norm(dim=1)
    h, w = raw_cam.shape[-2:]
    torch.testing.assert_close(scale, torch.full_like(scale, float(h * w)), rtol=1e-4, atol=0)
    torch.testing.assert_close(raw_grad * scale[:, None, None], raw_cam, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_shape_range_and_batch(net, images, method):
    """A batch of N gives N maps at the input's (or the requested) size, each spanning [0, 1]."""
    maps = build_cam(method, net)(images)
    assert maps.shape == (3, 64, 64)
    assert torch.all(maps >= 0) and torch.all(maps <= 1)
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(3))
    resized = build_cam(method, net)(images, output_size=(100, 80))
    assert resized.shape == (3, 100, 80)
    single = build_cam(method, net)(images[1:2])
    torch.testing.assert_close(single[0], maps[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_hooks_removed_modes_and_weights_unchanged(net, images, method):
    """No hook survives a call, train/eval flags are restored, parameters and grads untouched, no growth."""
    net.train()
    modes = {name: m.training for name, m in net.named_modules()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    cam = build_cam(method, net)
    cam(images)
    gc.collect()
    baseline = len(gc.get_objects())
    for _ in range(100):
        cam(images[:1])
    gc.collect()
    assert len(gc.get_objects()) - baseline < 50
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert not net.features.layer4.training  # frozen stages stay in eval even in train mode
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in net.parameters())


def test_gradcam_other_layer_and_cam_refuses_it(net, images):
    """Grad-CAM works on any layer; CAM refuses a layer that does not feed the linear head."""
    maps = GradCAM(net, target_layer="layer3")(images)
    assert maps.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="gradcam"):
        CAM(net, target_layer="layer3")(images)
    with pytest.raises(ValueError, match="layer4"):
        CAM(net, target_layer="nope")


def test_cam_on_densenet():
    """DenseNet's features end in a ReLU; CAM over the whole feature extractor keeps the identity."""
    torch.manual_seed(0)
    dense = ChestXrayNet("densenet121", weights=None)
    x = torch.randn(2, 3, 64, 64)
    raw, logits, targets = CAM(dense, target_layer=None).raw_maps(x)
    torch.testing.assert_close(
        raw.mean(dim=(1, 2)) + dense.head.fc.bias[targets],
        logits.gather(1, targets[:, None])[:, 0],
        atol=1e-4,
        rtol=0,
    )
