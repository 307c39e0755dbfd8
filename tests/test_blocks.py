"""MobileNet building blocks: hand-counted parameters, the residual rule, NNX == Linen, errors."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_close, linen_variables

import jdw


def count(module, kind=nnx.Param) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, kind)))


def randomize(rng, module, kind=nnx.Param):
    state = nnx.state(module, kind)
    leaves, treedef = jax.tree.flatten(state)
    leaves = [jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype) for x in leaves]
    nnx.update(module, jax.tree.unflatten(treedef, leaves))


@pytest.mark.parametrize(
    "make,kind,params,stats",
    [
        # 3x3 stride-2 stem, 3 -> 32: kernel 3*3*3*32, norm scale and bias 2*32; running mean and var 2*32
        (lambda r: jdw.nnx.ConvNormAct(3, 32, 3, strides=2, rngs=r), "standard", 864 + 64, 64),
        # depthwise 3x3 over 32 channels: 3*3*32 + 2*32
        (lambda r: jdw.nnx.ConvNormAct(32, 32, 3, groups=32, rngs=r), "depthwise", 288 + 64, 64),
        # depthwise with multiplier 2: 3*3*64 + 2*64
        (lambda r: jdw.nnx.ConvNormAct(32, 64, 3, groups=32, rngs=r), "depthwise", 576 + 128, 128),
        # pointwise 32 -> 16: 32*16 + 2*16
        (lambda r: jdw.nnx.ConvNormAct(32, 16, 1, activation=None, rngs=r), "pointwise", 512 + 32, 32),
        # grouped 3x3, 8 -> 8 in 2 groups: 3*3*4*8 + 2*8
        (lambda r: jdw.nnx.ConvNormAct(8, 8, 3, groups=2, rngs=r), "standard", 288 + 16, 16),
        # no norm: the conv gets a bias instead, 3*3*3*8 + 8
        (lambda r: jdw.nnx.ConvNormAct(3, 8, 3, use_norm=False, rngs=r), "standard", 216 + 8, 0),
    ],
)
def test_conv_norm_act_counts(make, kind, params, stats):
    block = make(nnx.Rngs(0))
    assert block.kind == kind
    assert count(block) == params
    assert count(block, nnx.BatchStat) == stats


@pytest.mark.parametrize("groups,out_features", [(1, 6), (4, 4), (4, 8), (2, 6)])
def test_conv_norm_act_matches_flax_conv_batchnorm(rng, groups, out_features):
    block = jdw.nnx.ConvNormAct(4, out_features, 3, groups=groups, activation="hard_swish", rngs=nnx.Rngs(0))
    randomize(rng, block)
    conv = nnx.Conv(4, out_features, (3, 3), feature_group_count=groups, use_bias=False, rngs=nnx.Rngs(0))
    norm = nnx.BatchNorm(out_features, epsilon=1e-3, rngs=nnx.Rngs(0))
    nnx.update(conv, nnx.state(block.conv, nnx.Param))
    nnx.update(norm, nnx.state(block.norm, nnx.Param))
    x = jnp.asarray(rng.standard_normal((3, 6, 5, 4)), jnp.float32)
    assert_close(block(x), jax.nn.hard_swish(norm(conv(x))))  # training mode: batch statistics
    assert_close(block.norm.mean[...], norm.mean[...])
    block.eval(), norm.eval()
    assert_close(block(x), jax.nn.hard_swish(norm(conv(x))))


def test_squeeze_excite_counts_and_formula(rng):
    se = jdw.nnx.SqueezeExcite(96, gate="hard_sigmoid", rngs=nnx.Rngs(0))
    # squeeze to make_divisible(96 / 4) = 24: 96*24 + 24 + 24*96 + 96
    assert count(se) == 4728
    assert jdw.nnx.SqueezeExcite(120, rngs=nnx.Rngs(0)).reduce.out_features == 32  # 30 rounded to a multiple of 8
    randomize(rng, se)
    x = rng.standard_normal((2, 5, 5, 96)).astype(np.float32)
    w1, b1 = np.asarray(se.reduce.kernel[...])[0, 0], np.asarray(se.reduce.bias[...])
    w2, b2 = np.asarray(se.expand.kernel[...])[0, 0], np.asarray(se.expand.bias[...])
    pooled = x.mean(axis=(1, 2))
    gate = np.clip(np.maximum(pooled @ w1 + b1, 0) @ w2 + b2 + 3, 0, 6) / 6
    assert_close(se(x), x * gate[:, None, None, :])


@pytest.mark.parametrize(
    "args,kwargs,params",
    [
        # MobileNetV2, 24 -> 24, expand 6: 24*144 + 2*144 | 3*3*144 + 2*144 | 144*24 + 2*24
        ((24, 24), {}, 3744 + 1584 + 3504),
        # MobileNetV2's first block, expand 1 (no expand conv): 3*3*32 + 2*32 | 32*16 + 2*16
        ((32, 16), {"expand_ratio": 1}, 352 + 544),
        # MobileNetV3-Large, 40 -> 40, 5x5, expanded 120, SE squeeze 32:
        # 40*120 + 240 | 25*120 + 240 | 120*32 + 32 + 32*120 + 120 | 120*40 + 80
        ((40, 40, 5), {"expanded_features": 120, "se_ratio": 0.25}, 5040 + 3240 + 7832 + 4880),
    ],
)
def test_inverted_residual_counts(args, kwargs, params):
    block = jdw.nnx.InvertedResidual(*args, **kwargs, rngs=nnx.Rngs(0))
    assert count(block) == params
    assert (block.expand is None) == (kwargs.get("expand_ratio") == 1)


@pytest.mark.parametrize(
    "in_features,out_features,strides,residual",
    [(24, 24, 1, True), (24, 32, 1, False), (24, 24, 2, False), (24, 24, (1, 2), False)],
)
def test_residual_only_when_shapes_allow(rng, in_features, out_features, strides, residual):
    block = jdw.nnx.InvertedResidual(in_features, out_features, strides=strides, rngs=nnx.Rngs(0))
    assert block.use_residual == residual
    # a zero projection silences the branch: what is left is the skip connection
    block.project.norm.scale[...] = jnp.zeros_like(block.project.norm.scale[...])
    block.eval()
    x = jnp.asarray(rng.standard_normal((2, 8, 8, in_features)), jnp.float32)
    y = block(x)
    if residual:
        assert_close(y, x)
    else:
        assert np.all(np.asarray(y) == 0)


def test_stochastic_depth_drops_whole_examples(rng):
    block = jdw.nnx.InvertedResidual(8, 8, expand_ratio=2, stochastic_depth_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
    x = jnp.asarray(rng.standard_normal((32, 4, 4, 8)), jnp.float32)
    block.eval()
    branch = block(x) - x
    block.train()
    block.depthwise.norm.use_running_average = block.expand.norm.use_running_average = True
    block.project.norm.use_running_average = True
    y = block(x)
    dropped = np.all(np.isclose(y, x, atol=1e-6), axis=(1, 2, 3))
    kept = np.all(np.isclose(y, x + 2 * branch, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped | kept) and 4 < dropped.sum() < 28


BLOCK_PAIRS = {
    "stem": (lambda r: jdw.nnx.ConvNormAct(4, 8, 3, strides=2, rngs=r), jdw.linen.ConvNormAct(8, 3, strides=2), 4),
    "depthwise": (lambda r: jdw.nnx.ConvNormAct(4, 8, 3, groups=4, rngs=r), jdw.linen.ConvNormAct(8, 3, groups=4), 4),
    "se": (
        lambda r: jdw.nnx.SqueezeExcite(16, gate="hard_sigmoid", rngs=r),
        jdw.linen.SqueezeExcite(gate="hard_sigmoid"),
        16,
    ),
    "v2": (lambda r: jdw.nnx.InvertedResidual(8, 8, rngs=r), jdw.linen.InvertedResidual(8), 8),
    "v3": (
        lambda r: jdw.nnx.InvertedResidual(
            8,
            16,
            5,
            strides=2,
            expanded_features=24,
            se_ratio=0.25,
            se_gate="hard_sigmoid",
            activation="hard_swish",
            rngs=r,
        ),
        jdw.linen.InvertedResidual(
            16, 5, strides=2, expanded_features=24, se_ratio=0.25, se_gate="hard_sigmoid", activation="hard_swish"
        ),
        8,
    ),
    "separable_v1": (
        lambda r: jdw.nnx.SeparableConv(8, 16, intermediate_norm=True, intermediate_activation="relu", rngs=r),
        jdw.linen.SeparableConv(16, intermediate_norm=True, intermediate_activation="relu"),
        8,
    ),
}


@pytest.mark.parametrize("name", sorted(BLOCK_PAIRS))
def test_nnx_and_linen_blocks_agree(rng, name):
    make, linen_block, channels = BLOCK_PAIRS[name]
    block = make(nnx.Rngs(0))
    randomize(rng, block)
    randomize(rng, block, nnx.BatchStat)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, channels)), jnp.float32)
    variables = linen_variables(block)
    linen_shapes = jax.tree.map(jnp.shape, linen_block.init(jax.random.key(0), x))
    assert linen_shapes == jax.tree.map(jnp.shape, variables)
    train = "batch_stats" in variables
    if train:  # training mode: batch statistics, and the same running-statistics update
        y, updates = linen_block.apply(variables, x, train=True, mutable=["batch_stats"])
        assert_close(y, block(x))
        jax.tree.map(assert_close, updates["batch_stats"], linen_variables(block)["batch_stats"])
    block.eval()
    assert_close(linen_block.apply(linen_variables(block), x), block(x))


def test_blocks_under_jit_and_bf16(rng):
    block = jdw.nnx.InvertedResidual(8, 8, se_ratio=0.25, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.float32)
    full = jdw.nnx.InvertedResidual(8, 8, se_ratio=0.25, rngs=nnx.Rngs(0))
    with jax.numpy_dtype_promotion("standard"):  # Flax's BatchNorm promotes bf16 statistics to f32 implicitly
        y = nnx.jit(lambda m, x: m(x))(block, x)
        reference = full(x)
    assert y.dtype == jnp.bfloat16
    assert_close(y, reference, jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(block, nnx.Param)))


ERRORS = [
    (
        lambda: jdw.nnx.DepthwiseConv(8, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 4))),
        "DepthwiseConv: in_features=8 but the input has 4 channels (x.shape=(2, 5, 5, 4), layout NHWC)",
    ),
    (
        lambda: jdw.nnx.DepthwiseConv(8, 3, data_format="channels_first", rngs=nnx.Rngs(0))(jnp.ones((2, 4, 5, 5))),
        "DepthwiseConv: in_features=8 but the input has 4 channels (x.shape=(2, 4, 5, 5), layout NCHW)",
    ),
    (
        lambda: jdw.nnx.DepthwiseConv(4, 3, rngs=nnx.Rngs(0))(jnp.ones((5, 4))),
        "DepthwiseConv: expected an input of rank >= 3 with 2 spatial dimension(s) (layout NHWC, leading batch axes "
        "optional), got x.shape=(5, 4)",
    ),
    (
        lambda: jdw.nnx.PointwiseConv(16, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 4))),
        "PointwiseConv: in_features=16 but the input has 4 channels",
    ),
    (
        lambda: jdw.nnx.ConvNormAct(3, 32, 3, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 4))),
        "ConvNormAct: in_features=3 but the input has 4 channels",
    ),
    (
        lambda: jdw.nnx.InvertedResidual(16, 16, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 4))),
        "InvertedResidual: in_features=16 but the input has 4 channels",
    ),
    (
        lambda: jdw.nnx.SqueezeExcite(16, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 4))),
        "SqueezeExcite: in_features=16 but the input has 4 channels",
    ),
    (
        lambda: jdw.nnx.ConvNormAct(6, 8, 3, groups=4, rngs=nnx.Rngs(0)),
        "ConvNormAct: in_features=6 and out_features=8 must both be divisible by groups=4",
    ),
    (
        lambda: jdw.linen.ConvNormAct(8, 3, groups=4).init(jax.random.key(0), jnp.ones((1, 5, 5, 6))),
        "ConvNormAct: the input's 6 channels and features=8 must both be divisible by groups=4",
    ),
    (
        lambda: jdw.nnx.DepthwiseConv(4, 3, depth_multiplier=0, rngs=nnx.Rngs(0)),
        "DepthwiseConv: depth_multiplier must be a positive int, got depth_multiplier=0",
    ),
    (lambda: jdw.nnx.InvertedResidual(8, 8, activation="relu7", rngs=nnx.Rngs(0)), "unknown activation 'relu7'"),
    (
        lambda: jdw.nnx.InvertedResidual(8, 8, stochastic_depth_rate=1.0, rngs=nnx.Rngs(0)),
        "InvertedResidual: stochastic_depth_rate must be in [0, 1), got 1.0",
    ),
    (
        lambda: jdw.linen.DepthwiseConv(3).init(jax.random.key(0), jnp.ones((5, 4))),
        "DepthwiseConv: expected an input of rank >= 3",
    ),
    (
        lambda: jdw.nnx.DepthwiseConv(4, (3, 3), strides=(1, 1, 1), rngs=nnx.Rngs(0))(jnp.ones((1, 5, 5, 4))),
        "strides must be an int or a sequence of 2 ints",
    ),
]


@pytest.mark.parametrize("index", range(len(ERRORS)))
def test_errors_name_the_values(index):
    build, message = ERRORS[index]
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


@pytest.mark.parametrize("num_spatial_dims", [1, 3])
def test_inverted_residual_in_other_ranks(rng, num_spatial_dims):
    """An int kernel size with ``num_spatial_dims``: the same block over sequences or volumes, NNX and Linen alike."""
    block = jdw.nnx.InvertedResidual(4, 4, 3, expand_ratio=2, num_spatial_dims=num_spatial_dims, rngs=nnx.Rngs(0))
    block.eval()
    assert block.depthwise.conv.kernel.shape == (3,) * num_spatial_dims + (1, 8)
    x = jnp.asarray(rng.standard_normal((2, *(5,) * num_spatial_dims, 4)), jnp.float32)
    linen_block = jdw.linen.InvertedResidual(4, 3, expand_ratio=2, num_spatial_dims=num_spatial_dims)
    assert_close(linen_block.apply(linen_variables(block), x), block(x))
