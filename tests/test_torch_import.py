"""from_torch: torchvision models built offline (weights=None, perturbed norm statistics) give the same logits."""

from __future__ import annotations

import re

import numpy as np
import pytest
from flax import nnx

import jdw
from jdw import models

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

CASES = {
    "mobilenet_v2": models.MobileNetV2,
    "mobilenet_v3_small": models.MobileNetV3Small,
    "mobilenet_v3_large": models.MobileNetV3Large,
    "efficientnet_b0": models.EfficientNetB0,
    "convnext_tiny": models.ConvNeXtTiny,
}


def _perturbed(name: str, num_classes: int = 10):
    """A torchvision model with random norm statistics, affine parameters and layer scales (eval mode).

    Scales at most 1 and variances at least 1, as in tests/test_keras_import.py: larger ones make deep models
    amplify float32 rounding block after block.
    """
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(1.0, 2.0, generator=generator)
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) or type(module).__name__ == "LayerNorm2d":
                module.weight.uniform_(0.5, 1.0, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.2, 0.5, generator=generator)
    return model.eval()


def _logits(torch_model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch_model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


def _relative_error(actual, expected) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_from_torch_reproduces_the_logits(name, rng):
    torch_model = _perturbed(name)
    x = rng.normal(size=(2, 65, 64, 3)).astype(np.float32)  # an odd size: symmetric padding differs from SAME there
    expected = _logits(torch_model, x)
    model = jdw.models.from_torch(torch_model)
    assert type(model) is CASES[name]
    if CASES[name] is not models.ConvNeXtTiny:
        assert model.stem.conv.padding == 1
    actual = nnx.jit(lambda m, x: m(x))(model, x)
    assert actual.shape == expected.shape == (2, 10)
    assert _relative_error(actual, expected) < 1e-4


def test_a_state_dict_finds_its_architecture(rng):
    torch_model = _perturbed("efficientnet_b0", num_classes=7)
    state = {key: value.numpy() for key, value in torch_model.state_dict().items()}  # arrays do as well as tensors
    model = jdw.models.from_torch(state)
    assert type(model) is models.EfficientNetB0 and model.num_classes == 7
    # torchvision's EfficientNet-B0 batch norms: epsilon 1e-5, PyTorch momentum 0.1
    assert model.stem.norm.epsilon == 1e-5 and model.stem.norm.momentum == pytest.approx(0.9)
    x = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
    assert _relative_error(model(x), _logits(torch_model, x)) < 1e-4


def test_a_named_architecture_and_timm_alias(rng):
    torch_model = _perturbed("mobilenet_v2")
    x = rng.normal(size=(1, 32, 32, 3)).astype(np.float32)
    for name in ("mobilenet_v2", "mobilenetv2_100"):
        model = jdw.models.from_torch(torch_model.state_dict(), name)
        assert _relative_error(model(x), _logits(torch_model, x)) < 1e-4


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=re.escape("from_torch: unknown architecture 'resnet50'")):
        jdw.models.from_torch(_perturbed("mobilenet_v2").state_dict(), "resnet50")
    state = _perturbed("mobilenet_v3_small").state_dict()
    with pytest.raises(ValueError, match=re.escape("do not match mobilenet_v2; first ones: [('features.0.0'")):
        jdw.models.from_torch(state, "mobilenet_v2")
    with pytest.raises(ValueError, match="expected a torchvision model or its state_dict"):
        jdw.models.from_torch([1, 2, 3])
