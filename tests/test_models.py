"""MobileNet V1/V2/V3: the reference parameter counts, feature maps, modes, options, errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_close

import jdw
from jdw import _compat
from jdw.models import MobileNetV1, MobileNetV2, MobileNetV3Large, MobileNetV3Small

MODELS = [MobileNetV1, MobileNetV2, MobileNetV3Small, MobileNetV3Large]


def abstract(cls, **kwargs):
    return nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))


def count(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "cls,params",
    # keras.applications trainable parameters (= torchvision's parameters for V2 and V3)
    [(MobileNetV1, 4_231_976), (MobileNetV2, 3_504_872), (MobileNetV3Small, 2_542_856), (MobileNetV3Large, 5_483_032)],
)
def test_reference_parameter_counts(cls, params):
    assert count(abstract(cls)) == params


@pytest.mark.parametrize(
    "cls,width,params",
    # keras.applications with alpha=width, weights=None, 1000 classes: trainable parameters
    [(MobileNetV1, 0.25, 470_072), (MobileNetV2, 0.35, 1_677_128), (MobileNetV3Small, 0.75, 2_041_872)],
)
def test_width_multiplier_counts(cls, width, params):
    assert count(abstract(cls, width=width)) == params


@pytest.mark.parametrize(
    "cls,channels",
    [
        (MobileNetV1, {2: 64, 4: 128, 8: 256, 16: 512, 32: 1024}),
        (MobileNetV2, {2: 16, 4: 24, 8: 32, 16: 96, 32: 320}),
        (MobileNetV3Small, {2: 16, 4: 16, 8: 24, 16: 48, 32: 96}),
        (MobileNetV3Large, {2: 16, 4: 24, 8: 40, 16: 112, 32: 160}),
    ],
)
def test_feature_maps(cls, channels):
    model = abstract(cls, num_classes=None)
    model.eval()
    features = nnx.eval_shape(lambda m, x: m.features(x), model, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert {s: f.shape for s, f in features.items()} == {s: (2, 224 // s, 224 // s, c) for s, c in channels.items()}
    last = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    head = {MobileNetV1: 1024, MobileNetV2: 1280, MobileNetV3Small: 576, MobileNetV3Large: 960}[cls]
    assert last.shape == (2, 7, 7, head)


@pytest.mark.parametrize("cls", MODELS)
def test_small_inputs_and_odd_resolutions(cls):
    model = abstract(cls, num_classes=10, small_inputs=True)
    model.eval()
    assert model.total_stride == 8
    features = nnx.eval_shape(lambda m, x: m.features(x), model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert max(features) == 8 and features[8].shape[1:3] == (4, 4)
    full = abstract(cls, num_classes=10)
    full.eval()
    logits = nnx.eval_shape(lambda m, x: m(x), full, jax.ShapeDtypeStruct((1, 97, 130, 3), jnp.float32))
    assert logits.shape == (1, 10)


@pytest.mark.parametrize("cls", [MobileNetV1, MobileNetV3Small])  # the two block types; V2 and V3-Large share them
def test_train_and_eval_modes(cls, rng):
    # "xla" compiles faster than "taps"; the backends are compared in test_backends_agree_on_a_model
    model = nnx.jit(
        lambda: cls(num_classes=5, width=0.25, small_inputs=True, dropout=0.5, implementation="xla", rngs=nnx.Rngs(0))
    )()
    x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
    stats = lambda: [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]
    before = stats()
    forward = nnx.jit(lambda m, x: m(x))
    model.train()
    y1, y2 = forward(model, x), forward(model, x)
    assert y1.shape == (4, 5) and not np.allclose(y1, y2)  # fresh dropout masks
    assert not all(np.allclose(a, b) for a, b in zip(before, stats()))
    model.eval()
    assert_close(forward(model, x), forward(model, x))
    frozen = nnx.state(model, nnx.BatchStat)
    forward(model, x)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    )


def test_implementation_reaches_every_depthwise_layer():
    for cls in MODELS:
        model = abstract(cls, implementation="xla")
        layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, jdw.nnx.DepthwiseConv)]
        assert len(layers) == {MobileNetV1: 13, MobileNetV2: 17, MobileNetV3Small: 11, MobileNetV3Large: 15}[cls]
        assert {layer.implementation for layer in layers} == {"xla"}


def test_backends_agree_on_a_model(rng):
    model = nnx.jit(lambda: MobileNetV3Small(num_classes=5, width=0.5, rngs=nnx.Rngs(0)))()
    model.eval()
    x = jnp.asarray(rng.standard_normal((2, 48, 48, 3)), jnp.float32)
    outputs = {}
    for implementation in ("xla", "taps"):
        with jdw.backends.forced_implementation(implementation):
            outputs[implementation] = nnx.jit(lambda m, x: m(x))(model, x)
    assert_close(outputs["taps"], outputs["xla"])


def test_bf16_compute_with_f32_params(rng):
    model = nnx.jit(
        lambda: MobileNetV2(num_classes=5, width=0.35, dtype=jnp.bfloat16, implementation="xla", rngs=nnx.Rngs(0))
    )()
    model.eval()
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):  # Flax's BatchNorm promotes bf16 to f32 implicitly
        y = nnx.jit(lambda m, x: m(x))(model, x)
    assert y.dtype == jnp.bfloat16
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize(
    "cls,shape,message",
    [
        (
            MobileNetV2,
            (2, 32, 32, 4),
            "MobileNetV2: in_features=3 but the images have 4 channels (x.shape=(2, 32, 32, 4)",
        ),
        (
            MobileNetV3Small,
            (32, 32, 3),
            "MobileNetV3Small: expected images of shape (N, H, W, C), got x.shape=(32, 32, 3)",
        ),
        (MobileNetV1, (1, 16, 40, 3), "MobileNetV1: images must be at least 32x32 for its strides, got 16x40"),
    ],
)
def test_errors_name_the_values(cls, shape, message):
    model = abstract(cls)
    with pytest.raises(ValueError, match=re.escape(message)):
        nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct(shape, jnp.float32))


def test_a_mobilenet_trains_through_the_pallas_kernel(rng):
    """Train-mode gradients of a whole MobileNet with every depthwise layer on the Pallas kernel are as accurate
    as XLA's: both against XLA's in float64.

    Batch norm over a batch of 4 at the last stages' 1x1 maps makes this gradient ill-conditioned:
    float32 rounding alone moves it by about 2% of its largest entry (XLA in float32 against
    float64: 0.32 of 14.3), so two float32 backends need not agree closely (Pallas and XLA
    differed by 0.05 under jax 0.10.2, where they had agreed to 1e-4 before). What must hold is
    that Pallas's float32 gradient is as close to the float64 one as XLA's.
    """
    model = nnx.jit(lambda: MobileNetV1(num_classes=4, width=0.25, small_inputs=True, rngs=nnx.Rngs(0)))()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = _compat.as_pure(params), _compat.as_pure(rest)
    x = rng.standard_normal((4, 16, 16, 3))
    labels = jnp.arange(4) % 4

    def loss(params, rest, x):
        m = nnx.merge(graphdef, params, rest)
        m.train()
        logits = m(x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    def floats(tree, dtype):
        return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    grads = {}
    for implementation in ("xla", "pallas"):
        with jdw.backends.forced_implementation(implementation):
            grads[implementation] = jax.jit(jax.value_and_grad(loss))(params, rest, jnp.asarray(x, jnp.float32))
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"), jdw.backends.forced_implementation("xla"):
        exact = jax.jit(jax.value_and_grad(loss))(floats(params, jnp.float64), floats(rest, jnp.float64), x)
        exact = [np.asarray(g) for g in jax.tree.leaves(exact[1])]
    (loss_xla, g_xla), (loss_pallas, g_pallas) = grads["xla"], grads["pallas"]
    assert_close(loss_pallas, loss_xla)

    def error(g):
        return max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(jax.tree.leaves(g), exact))

    scale = max(float(np.max(np.abs(g))) for g in exact)
    assert error(g_pallas) <= 1.25 * error(g_xla) + 1e-5 * scale, (error(g_pallas), error(g_xla), scale)


# The keywords every model takes, so that code (the training example) builds any of them alike.
COMMON_KEYWORDS = dict(
    width=0.5, in_features=1, dropout=0.0, small_inputs=True, input_rescaling=(1.0, 0.0), stochastic_depth_rate=0.0,
    norm_momentum=0.9, norm_epsilon=1e-3, implementation="taps", dtype=jnp.float32, param_dtype=jnp.float32,
)  # fmt: skip


@pytest.mark.parametrize("cls", MODELS)
def test_every_model_takes_the_same_keywords(cls):
    model = cls(num_classes=3, **COMMON_KEYWORDS, rngs=nnx.Rngs(0))
    model.eval()
    # Jitted: op by op, a whole model's forward takes many times its compile (the docstrings run models eagerly).
    assert nnx.jit(lambda m, x: m(x))(model, jnp.zeros((1, 32, 32, 1))).shape == (1, 3)
    assert isinstance(model, jdw.models._base.ConvNet) and len(model.blocks) == len(model.block_strides)


def test_mobilenet_v1_refuses_stochastic_depth():
    with pytest.raises(ValueError, match=r"MobileNetV1 has no residual blocks .* stochastic_depth_rate=0.1"):
        MobileNetV1(num_classes=3, stochastic_depth_rate=0.1, rngs=nnx.Rngs(0))


def test_the_base_class_checks_blocks_against_strides():
    stem = jdw.nnx.ConvNormAct(1, 4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ConvNet: 1 blocks but 2 block strides"):
        jdw.models._base.ConvNet(
            stem=stem, stem_strides=1, blocks=[stem], block_strides=[1, 2], head=None, pre_logits=None,
            pre_logits_activation=None, dropout=nnx.Dropout(0.0), classifier=None, in_features=1, num_classes=None,
            width=1.0, input_rescaling=None,
        )  # fmt: skip
