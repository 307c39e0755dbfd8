"""EfficientNet, ConvNeXt and Xception: reference parameter counts (Keras and torchvision built here), MACs,
feature maps, options and errors."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdw
from jdw import models
from jdw.models.efficientnet import FusedMBConv

EFFICIENTNETS = [getattr(models, f"EfficientNet{v}") for v in ("B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7")]
CONVNEXTS = [models.ConvNeXtTiny, models.ConvNeXtSmall, models.ConvNeXtBase]
ZOO = [*EFFICIENTNETS, models.EfficientNetV2S, *CONVNEXTS, models.Xception]

# Trainable parameters with 1000 classes: torchvision's parameters (efficientnet_b0 5,288,548 and
# convnext_tiny 28,589,128, for instance), which test_counts_equal_torchvision checks against torchvision
# itself, and Keras's trainable weights (Xception's), which tests/test_keras_import.py checks against Keras.
PARAMS = {
    "EfficientNetB0": 5_288_548,
    "EfficientNetB1": 7_794_184,
    "EfficientNetB2": 9_109_994,
    "EfficientNetB3": 12_233_232,
    "EfficientNetB4": 19_341_616,
    "EfficientNetB5": 30_389_784,
    "EfficientNetB6": 43_040_704,
    "EfficientNetB7": 66_347_960,
    "EfficientNetV2S": 21_458_488,
    "ConvNeXtTiny": 28_589_128,
    "ConvNeXtSmall": 50_223_688,
    "ConvNeXtBase": 88_591_464,
    "Xception": 22_855_952,
}


def abstract(cls, **kwargs):
    return nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))


def count(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("cls", ZOO, ids=lambda c: c.__name__)
def test_reference_parameter_counts(cls):
    assert count(abstract(cls)) == PARAMS[cls.__name__]
    assert f"{PARAMS[cls.__name__]:,}" in cls.__doc__


TORCH_NAMES = {
    **{f"EfficientNet{v}": f"efficientnet_{v.lower()}" for v in ("B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7")},
    "EfficientNetV2S": "efficientnet_v2_s",
    "ConvNeXtTiny": "convnext_tiny",
    "ConvNeXtSmall": "convnext_small",
    "ConvNeXtBase": "convnext_base",
}


@pytest.mark.parametrize("name", sorted(TORCH_NAMES))
def test_counts_equal_torchvision(name):
    torchvision = pytest.importorskip("torchvision")
    torch_model = getattr(torchvision.models, TORCH_NAMES[name])(weights=None)
    assert sum(p.numel() for p in torch_model.parameters()) == PARAMS[name]


@pytest.mark.parametrize(
    "cls,size,macs,tolerance",
    [
        # EfficientNet paper, Table 2: B0 0.39B FLOPs (multiply-adds) at 224.
        (models.EfficientNetB0, 224, 0.39e9, 0.05),
        # ConvNeXt paper, Table 1: ConvNeXt-T 4.5G FLOPs (multiply-adds, fvcore's convention) at 224.
        (models.ConvNeXtTiny, 224, 4.5e9, 0.05),
        # Xception: 8.4G multiply-adds at 299 (timm's model card for the same network).
        (models.Xception, 299, 8.4e9, 0.05),
    ],
    ids=["efficientnet_b0", "convnext_tiny", "xception"],
)
def test_macs_match_the_papers(cls, size, macs, tolerance):
    summary = jdw.cost.summary(abstract(cls), (1, size, size, 3))
    assert abs(summary.macs / macs - 1) < tolerance, summary.macs


@pytest.mark.parametrize(
    "cls,channels,head",
    [
        (models.EfficientNetB0, {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}, 1280),
        (models.EfficientNetV2S, {2: 24, 4: 48, 8: 64, 16: 160, 32: 256}, 1280),
        (models.ConvNeXtTiny, {4: 96, 8: 192, 16: 384, 32: 768}, 768),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_feature_maps(cls, channels, head):
    model = abstract(cls, num_classes=None)
    model.eval()
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    features = nnx.eval_shape(lambda m, x: m.features(x), model, x)
    assert {s: f.shape for s, f in features.items()} == {s: (2, 224 // s, 224 // s, c) for s, c in channels.items()}
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (2, 7, 7, head)


def test_xception_feature_maps():
    model = abstract(models.Xception, num_classes=None)
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    features = nnx.eval_shape(lambda m, x: m.features(x), model, x)
    assert {s: f.shape[1:] for s, f in features.items()} == {
        2: (147, 147, 64), 4: (74, 74, 128), 8: (37, 37, 256), 16: (19, 19, 728), 32: (10, 10, 1024),
    }  # fmt: skip
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (1, 10, 10, 2048)


# ConvNeXt-T has layer norms and layer scale. The EfficientNets' stochastic depth is tested on their blocks
# (FusedMBConv below, InvertedResidual in tests/test_blocks.py); the B0's, V2-S's and Xception's forward
# passes run in tests/test_keras_import.py and tests/test_torch_import.py.
@pytest.mark.parametrize("cls", [models.ConvNeXtTiny])
def test_small_inputs_train_and_eval(cls, rng):
    """A narrow model on 32x32 images: finite logits, train mode draws stochastic depth, eval is deterministic."""
    options = dict(num_classes=10, width=0.25, small_inputs=True, stochastic_depth_rate=0.5)
    model = nnx.jit(lambda: cls(**options, rngs=nnx.Rngs(0, dropout=1)))()
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))
    model.train()
    a, b = forward(model, x), forward(model, x)
    assert a.shape == (2, 10) and bool(jnp.all(jnp.isfinite(a)))
    assert not np.allclose(a, b)  # stochastic depth draws differ between calls
    model.eval()
    np.testing.assert_array_equal(forward(model, x), forward(model, x))


def test_symmetric_padding_changes_only_stride_two_layers(rng):
    """``padding="SYMMETRIC"`` (torchvision's) moves the stride-2 windows; the parameters are the same."""
    same = nnx.jit(lambda: models.EfficientNetB0(num_classes=10, width=0.25, rngs=nnx.Rngs(0)))()
    symmetric = abstract(models.EfficientNetB0, num_classes=10, width=0.25, padding="SYMMETRIC")
    symmetric = nnx.merge(nnx.graphdef(symmetric), nnx.state(same))  # the same weights fit
    same.eval(), symmetric.eval()
    x = jnp.asarray(rng.normal(size=(1, 64, 64, 3)), jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))
    assert not np.allclose(forward(same, x), forward(symmetric, x))
    assert symmetric.stem.conv.padding == 1 and symmetric.blocks[0].depthwise.conv.padding == 1


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: models.EfficientNetB0(padding="valid", rngs=nnx.Rngs(0)), "padding must be one of"),
        (lambda: models.EfficientNetB0(stochastic_depth_rate=1.0, rngs=nnx.Rngs(0)), "stochastic_depth_rate=1.0"),
        (lambda: models.ConvNeXtTiny(num_classes=0, rngs=nnx.Rngs(0)), "num_classes=0"),
        (lambda: models.Xception(width=0.01, rngs=nnx.Rngs(0)), "width=0.01"),
        (lambda: models.Xception(middle_blocks=0, rngs=nnx.Rngs(0)), "middle_blocks"),
    ],
)
def test_bad_options_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_too_small_images_are_named():
    model = abstract(models.Xception, num_classes=10)
    with pytest.raises(ValueError, match="at least 71x71"):
        nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def test_fused_mbconv_stochastic_depth_drops_whole_examples(rng):
    """EfficientNetV2's fused block: in training each example keeps its whole residual branch (scaled) or none."""
    block = FusedMBConv(8, 8, expand_ratio=2, stochastic_depth_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
    x = jnp.asarray(rng.standard_normal((32, 4, 4, 8)), jnp.float32)
    block.eval()
    branch = block(x) - x
    block.train()
    for _, module in nnx.iter_modules(block):  # batch statistics off: only the drop differs from eval
        if isinstance(module, nnx.BatchNorm):
            module.use_running_average = True
    y = block(x)
    dropped = np.all(np.isclose(y, x, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(y, x + 2 * branch, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped | kept) and 4 < dropped.sum() < 28
