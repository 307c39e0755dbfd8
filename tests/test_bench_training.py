"""examples/bench_training.py: the PyTorch network it races against is jdw's MobileNetV2."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jdw.training import config, train

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
import bench_training  # noqa: E402  (examples/, on sys.path through conftest)


@pytest.mark.parametrize("small_inputs", [True, False])
def test_torch_network_has_jdws_parameters_and_strides(small_inputs):
    cfg = config.Config(width=0.5, small_inputs=small_inputs, dropout=0.0)
    jdw_model = train.create_model(cfg, 10, 3)
    torch_model = bench_training.torch_mobilenet_v2(0.5, 10, small_inputs, 3)
    jdw_shapes = sorted(tuple(p.shape) for p in jax.tree.leaves(nnx.state(jdw_model, nnx.Param)))
    # Same tensors up to layout: OIHW -> HWIO for convolutions, (out, in) -> (in, out) for the classifier.
    torch_shapes = []
    for p in torch_model.parameters():
        shape = tuple(p.shape)
        torch_shapes.append((shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape[::-1])
    assert jdw_shapes == sorted(torch_shapes)
    with torch.no_grad():
        zeros = torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        torch_features = torch_model.eval().features(zeros)
    jdw_features = jdw_model.features(np.zeros((1, 32, 32, 3), np.float32))
    total_stride = max(jdw_features)
    assert total_stride == (8 if small_inputs else 32)
    assert tuple(torch_features.shape[2:]) == (32 // total_stride,) * 2


def test_torch_step_trains():
    cfg = config.Config(width=0.35, dropout=0.0, optimizer="sgd", learning_rate=0.05)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 8).astype(np.int32)
    step = bench_training.TorchStep(bench_training.torch_mobilenet_v2(0.35, 10, True, 3), images, labels, cfg)
    before = [p.detach().clone() for p in step.model.parameters()]
    assert step.measure(steps=2) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
