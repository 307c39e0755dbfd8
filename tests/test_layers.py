"""jdw's conv layers against Flax's grouped/1x1 ``Conv`` with the same parameters, NNX and Linen."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference
import pytest
from flax import linen as nn
from flax import nnx
from helpers import IMPLEMENTATIONS, assert_close, linen_variables

import jdw

C = 4

GRID = list(
    itertools.product(
        [1, 3, (3, 2)],  # kernel sizes
        [1, 2],  # strides
        ["SAME", "VALID", 1, ((1, 2), (0, 1))],  # padding
        [(1, True), (2, False)],  # depth multiplier, bias
    )
)


def _random_params(rng, module):
    """Replaces every parameter of an NNX module by random values (so that zero biases test nothing)."""
    state = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    leaves = [jnp.asarray(rng.standard_normal(x.shape), x.dtype) for x in leaves]
    nnx.update(module, jax.tree.unflatten(treedef, leaves))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kernel_size,strides,padding,multiplier_bias", GRID)
def test_nnx_depthwise_matches_flax_grouped_conv(rng, implementation, kernel_size, strides, padding, multiplier_bias):
    multiplier, use_bias = multiplier_bias
    kernel = (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size
    ours = jdw.nnx.DepthwiseConv(
        C,
        kernel,
        depth_multiplier=multiplier,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        implementation=implementation,
        rngs=nnx.Rngs(0),
    )
    flax_conv = nnx.Conv(
        C,
        C * multiplier,
        kernel,
        strides=strides,
        padding=padding,
        feature_group_count=C,
        use_bias=use_bias,
        rngs=nnx.Rngs(1),
    )
    _random_params(rng, flax_conv)
    shapes = lambda module: jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
    assert shapes(ours) == shapes(flax_conv)
    nnx.update(ours, nnx.state(flax_conv, nnx.Param))
    x = jnp.asarray(rng.standard_normal((2, 7, 6, C)), jnp.float32)
    assert_close(ours(x), flax_conv(x))


@pytest.mark.parametrize("kernel_size,strides,padding,multiplier_bias", GRID[::3])
def test_linen_depthwise_matches_flax_grouped_conv(rng, kernel_size, strides, padding, multiplier_bias):
    multiplier, use_bias = multiplier_bias
    kernel = (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size
    x = jnp.asarray(rng.standard_normal((2, 7, 6, C)), jnp.float32)
    flax_conv = nn.Conv(
        C * multiplier, kernel, strides=strides, padding=padding, feature_group_count=C, use_bias=use_bias
    )
    params = jax.tree.map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), flax_conv.init(jax.random.key(0), x)
    )
    ours = jdw.linen.DepthwiseConv(
        kernel, depth_multiplier=multiplier, strides=strides, padding=padding, use_bias=use_bias
    )
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    assert_close(ours.apply(params, x), flax_conv.apply(params, x))


def test_depthwise_against_numpy_reference_1d_3d_channels_first(rng):
    for kernel_size, spatial in [((3,), (9,)), ((2, 3, 2), (4, 5, 4))]:
        layer = jdw.nnx.DepthwiseConv(C, kernel_size, depth_multiplier=2, padding="VALID", rngs=nnx.Rngs(0))
        _random_params(rng, layer)
        x = rng.standard_normal((2, *spatial, C)).astype(np.float32)
        ones = (1,) * len(spatial)
        expected = numpy_reference.depthwise_conv(
            x,
            np.asarray(layer.kernel[...]),
            np.asarray(layer.bias[...]),
            strides=ones,
            padding=[(0, 0)] * len(spatial),
            dilation=ones,
        )
        assert_close(layer(x), expected)
        first = jdw.nnx.DepthwiseConv(
            C, kernel_size, depth_multiplier=2, padding="VALID", data_format="channels_first", rngs=nnx.Rngs(0)
        )
        nnx.update(first, nnx.state(layer, nnx.Param))
        assert_close(first(np.moveaxis(x, -1, 1)), np.moveaxis(expected, -1, 1))


def test_any_number_of_batch_axes_and_none(rng):
    layer = jdw.nnx.DepthwiseConv(C, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.standard_normal((2, 3, 5, 5, C)), jnp.float32)
    y = layer(x)
    assert y.shape == (2, 3, 5, 5, C)
    assert_close(y[1, 2], layer(x[1, 2]))
    assert_close(y[1], layer(x[1]))
    pointwise = jdw.nnx.PointwiseConv(C, 6, rngs=nnx.Rngs(0))
    assert pointwise(x).shape == (2, 3, 5, 5, 6)
    assert_close(pointwise(x)[0, 1], pointwise(x[0, 1]))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_pointwise_matches_flax_1x1_conv(rng, data_format):
    ours = jdw.nnx.PointwiseConv(C, 6, data_format=data_format, rngs=nnx.Rngs(0))
    flax_conv = nnx.Conv(C, 6, (1, 1), rngs=nnx.Rngs(1))
    _random_params(rng, flax_conv)
    nnx.update(ours, nnx.state(flax_conv, nnx.Param))
    x = jnp.asarray(rng.standard_normal((2, 5, 3, C)), jnp.float32)
    expected = flax_conv(x)
    if data_format == "channels_first":
        x, expected = jnp.moveaxis(x, -1, 1), jnp.moveaxis(expected, -1, 1)
    assert_close(ours(x), expected)
    linen = jdw.linen.PointwiseConv(6, data_format=data_format)
    assert_close(linen.apply(linen_variables(ours), x), expected)


@pytest.mark.parametrize("depth_multiplier,strides", [(1, 1), (2, 2)])
def test_separable_matches_grouped_then_1x1_conv(rng, depth_multiplier, strides):
    ours = jdw.nnx.SeparableConv(C, 5, 3, depth_multiplier=depth_multiplier, strides=strides, rngs=nnx.Rngs(0))
    _random_params(rng, ours)
    depthwise = nnx.Conv(
        C, C * depth_multiplier, (3, 3), strides=strides, feature_group_count=C, use_bias=False, rngs=nnx.Rngs(0)
    )
    pointwise = nnx.Conv(C * depth_multiplier, 5, (1, 1), rngs=nnx.Rngs(0))
    nnx.update(depthwise, nnx.state(ours.depthwise, nnx.Param))
    nnx.update(pointwise, nnx.state(ours.pointwise, nnx.Param))
    x = jnp.asarray(rng.standard_normal((2, 8, 7, C)), jnp.float32)
    assert_close(ours(x), pointwise(depthwise(x)))
    assert ours.depthwise.bias is None and ours.pointwise.bias.shape == (5,)  # Keras's SeparableConv2D biases


def test_separable_intermediate_norm_and_activations(rng):
    layer = jdw.nnx.SeparableConv(
        C, 6, 3, intermediate_norm=True, intermediate_activation="relu", activation="relu6", rngs=nnx.Rngs(0)
    )
    _random_params(rng, layer)
    x = jnp.asarray(rng.standard_normal((4, 6, 6, C)), jnp.float32)
    middle = np.asarray(layer.depthwise(x), np.float64)
    scale, shift = np.asarray(layer.norm.scale[...]), np.asarray(layer.norm.bias[...])
    pointwise = lambda h: np.asarray(layer.pointwise(jnp.asarray(h, jnp.float32)))
    normed = (middle - middle.mean((0, 1, 2))) / np.sqrt(middle.var((0, 1, 2)) + 1e-3) * scale + shift
    assert_close(layer(x), np.clip(pointwise(np.maximum(normed, 0)), 0, 6))
    # the training call updated the running statistics; eval mode uses them
    assert not np.allclose(layer.norm.mean[...], 0.0)
    layer.eval()
    mean, var = np.asarray(layer.norm.mean[...]), np.asarray(layer.norm.var[...])
    normed = (middle - mean) / np.sqrt(var + 1e-3) * scale + shift
    assert_close(layer(x), np.clip(pointwise(np.maximum(normed, 0)), 0, 6))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_depthwise_layer_activation(rng, implementation):
    """``activation=`` equals the activation applied after the layer, values and gradients, NNX and Linen."""
    x = jnp.asarray(rng.standard_normal((2, 7, 6, C)), jnp.float32)
    plain = jdw.nnx.DepthwiseConv(C, 3, strides=2, implementation=implementation, rngs=nnx.Rngs(0))
    _random_params(rng, plain)
    fused = jdw.nnx.DepthwiseConv(
        C, 3, strides=2, implementation=implementation, activation="hard_swish", rngs=nnx.Rngs(0)
    )
    nnx.update(fused, nnx.state(plain, nnx.Param))
    assert_close(fused(x), jax.nn.hard_swish(plain(x)))

    def loss(layer, x):
        return jnp.sum(jnp.sin(layer(x)))

    fused_grads = nnx.grad(loss, argnums=(0, 1))(fused, x)
    plain_grads = nnx.grad(lambda layer, x: jnp.sum(jnp.sin(jax.nn.hard_swish(layer(x)))), argnums=(0, 1))(plain, x)
    jax.tree.map(assert_close, fused_grads, plain_grads)

    linen = jdw.linen.DepthwiseConv(3, strides=2, implementation=implementation, activation="hard_swish")
    assert_close(linen.apply(linen_variables(plain), x), jax.nn.hard_swish(plain(x)))


def test_depthwise_layer_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="relu7"):
        jdw.nnx.DepthwiseConv(C, 3, activation="relu7", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="relu7"):
        jdw.linen.DepthwiseConv(3, activation="relu7").init(jax.random.key(0), jnp.ones((1, 4, 4, C)))


def test_separable_without_norm_fuses_the_intermediate_activation_into_the_depthwise_step(rng):
    layer = jdw.nnx.SeparableConv(C, 5, 3, depthwise_use_bias=True, intermediate_activation="relu6", rngs=nnx.Rngs(0))
    _random_params(rng, layer)
    assert layer.depthwise.activation == "relu6"
    depthwise = nnx.Conv(C, C, (3, 3), feature_group_count=C, rngs=nnx.Rngs(0))
    pointwise = nnx.Conv(C, 5, (1, 1), rngs=nnx.Rngs(0))
    nnx.update(depthwise, nnx.state(layer.depthwise, nnx.Param))
    nnx.update(pointwise, nnx.state(layer.pointwise, nnx.Param))
    x = jnp.asarray(rng.standard_normal((2, 8, 7, C)), jnp.float32)
    assert_close(layer(x), pointwise(jax.nn.relu6(depthwise(x))))
    normed = jdw.nnx.SeparableConv(C, 5, 3, intermediate_norm=True, intermediate_activation="relu6", rngs=nnx.Rngs(0))
    assert normed.depthwise.activation is None  # the activation comes after the norm


LAYER_PAIRS = {
    "depthwise": (
        lambda r: jdw.nnx.DepthwiseConv(C, 3, depth_multiplier=2, strides=2, rngs=r),
        jdw.linen.DepthwiseConv(3, depth_multiplier=2, strides=2),
        (2, 8, 8, C),
    ),
    "causal_1d": (
        lambda r: jdw.nnx.DepthwiseConv(C, (3,), padding="CAUSAL", dilation=2, rngs=r),
        jdw.linen.DepthwiseConv((3,), padding="CAUSAL", dilation=2),
        (2, 8, C),
    ),
    "reflect_channels_first": (
        lambda r: jdw.nnx.DepthwiseConv(C, 3, padding_mode="reflect", data_format="channels_first", rngs=r),
        jdw.linen.DepthwiseConv(3, padding_mode="reflect", data_format="channels_first"),
        (2, C, 8, 8),
    ),
    "depthwise_activation": (
        lambda r: jdw.nnx.DepthwiseConv(C, 3, activation="silu", rngs=r),
        jdw.linen.DepthwiseConv(3, activation="silu"),
        (2, 8, 8, C),
    ),
    "separable_without_norm": (
        lambda r: jdw.nnx.SeparableConv(C, 6, 3, depthwise_use_bias=True, intermediate_activation="relu", rngs=r),
        jdw.linen.SeparableConv(6, 3, depthwise_use_bias=True, intermediate_activation="relu"),
        (2, 8, 8, C),
    ),
    "separable": (
        lambda r: jdw.nnx.SeparableConv(
            C, 6, 5, depth_multiplier=2, intermediate_norm=True, intermediate_activation="hard_swish", rngs=r
        ),
        jdw.linen.SeparableConv(6, 5, depth_multiplier=2, intermediate_norm=True, intermediate_activation="hard_swish"),
        (2, 8, 8, C),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYER_PAIRS))
def test_nnx_and_linen_layers_agree(rng, name):
    make_nnx, linen_layer, shape = LAYER_PAIRS[name]
    layer = make_nnx(nnx.Rngs(0))
    _random_params(rng, layer)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    linen_shapes = jax.tree.map(jnp.shape, linen_layer.init(jax.random.key(0), x))
    assert linen_shapes == jax.tree.map(jnp.shape, linen_variables(layer))
    layer.eval()
    assert_close(linen_layer.apply(linen_variables(layer), x), layer(x))


def test_default_depthwise_init_has_fan_in_k_squared():
    layer = jdw.nnx.DepthwiseConv(2048, 3, depth_multiplier=2, rngs=nnx.Rngs(0))
    std = float(jnp.std(layer.kernel[...]))
    assert abs(std - np.sqrt(2.0 / 9.0)) < 0.02 * np.sqrt(2.0 / 9.0)
    assert np.all(layer.bias[...] == 0)


def test_jit_vmap_and_grad():
    layer = jdw.nnx.DepthwiseConv(C, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 6, 6, C))

    @nnx.jit
    def loss(layer, x):
        return jnp.sum(layer(x) ** 2)

    eager = jnp.sum(layer(x) ** 2)
    assert_close(loss(layer, x), eager)
    grads = nnx.grad(loss)(layer, x)
    assert grads.kernel.shape == (3, 3, 1, C)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def ensemble(rngs):
        return jdw.nnx.DepthwiseConv(C, 3, rngs=rngs)

    models = ensemble(nnx.Rngs(0))
    assert models.kernel.shape == (3, 3, 3, 1, C)

    @nnx.vmap(in_axes=(0, None), out_axes=0)
    def apply(model, x):
        return model(x)

    ys = apply(models, x)
    assert ys.shape == (3, 2, 6, 6, C)
    single = jdw.nnx.DepthwiseConv(C, 3, rngs=nnx.Rngs(0))
    nnx.update(single, jax.tree.map(lambda a: a[1], nnx.state(models, nnx.Param)))
    assert_close(ys[1], single(x))


def test_mixed_precision_bf16_compute_f32_params(rng):
    layer = jdw.nnx.SeparableConv(C, 8, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    _random_params(rng, layer)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))
    x = jnp.asarray(rng.standard_normal((2, 8, 8, C)), jnp.float32)
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    full = jdw.nnx.SeparableConv(C, 8, 3, rngs=nnx.Rngs(0))
    nnx.update(full, nnx.state(layer, nnx.Param))
    assert_close(y, full(x), jnp.bfloat16)
    grads = nnx.grad(lambda m: jnp.sum(m(x).astype(jnp.float32)))(layer)
    assert grads.depthwise.kernel.dtype == jnp.float32
    half = jdw.linen.DepthwiseConv(3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = half.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.bfloat16
    assert half.apply(variables, x).dtype == jnp.bfloat16


def test_sharding_annotations_reach_the_parameters():
    mesh = jax.make_mesh((1,), ("model",), (jax.sharding.AxisType.Explicit,))
    init = nnx.with_partitioning(jdw.initializers.depthwise_kernel_init(), (None, None, None, "model"))
    with jax.set_mesh(mesh):
        layer = jdw.nnx.DepthwiseConv(
            C, 3, kernel_init=init, bias_metadata={"out_sharding": ("model",)}, rngs=nnx.Rngs(0)
        )
        specs = nnx.get_partition_spec(nnx.state(layer, nnx.Param))
        y = nnx.jit(lambda m, x: m(x))(layer, jnp.ones((2, 5, 5, C)))
    specs = nnx.to_pure_dict(specs)
    assert specs["kernel"] == jax.sharding.PartitionSpec(None, None, None, "model")
    assert specs["bias"] == jax.sharding.PartitionSpec("model")
    assert layer.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, None, None, "model")
    assert y.shape == (2, 5, 5, C)
    linen_layer = jdw.linen.DepthwiseConv(
        3, kernel_init=nn.with_partitioning(jdw.initializers.depthwise_kernel_init(), (None, None, None, "model"))
    )
    boxed = linen_layer.init(jax.random.key(0), jnp.ones((1, 5, 5, C)))["params"]["kernel"]
    assert boxed.names == (None, None, None, "model")
