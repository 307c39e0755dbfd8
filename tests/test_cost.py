"""jdw.cost: layer formulas checked by hand, and summaries of traced models against the papers."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdw
from jdw import cost


def test_the_classic_example_by_hand():
    # One output pixel of a 3x3 convolution over RGB: 3*3*3 = 27 multiplications.
    assert cost.standard_conv(3, 1, 3, 1) == cost.Cost("conv 3x3 3->1", 27, 27)
    # Depthwise: 3*3 = 9 per channel, 27 for the three channels, one output per channel.
    depthwise = cost.depthwise_conv(3, 3, 1)
    assert (depthwise.params, depthwise.macs) == (27, 27)
    assert depthwise.macs // 3 == 9


@pytest.mark.parametrize("c_in, c_out, k, size", [(32, 64, 3, 112), (144, 24, 3, 56), (960, 160, 5, 7), (8, 8, 7, 1)])
def test_layer_formulas(c_in, c_out, k, size):
    positions = size * size
    standard = cost.standard_conv(c_in, c_out, k, size)
    assert (standard.params, standard.macs) == (k * k * c_in * c_out, positions * k * k * c_in * c_out)
    depthwise = cost.depthwise_conv(c_in, k, size)
    assert (depthwise.params, depthwise.macs) == (k * k * c_in, positions * k * k * c_in)
    pointwise = cost.pointwise_conv(c_in, c_out, size)
    assert (pointwise.params, pointwise.macs) == (c_in * c_out, positions * c_in * c_out)
    separable = cost.separable_conv(c_in, c_out, k, size)
    assert separable.params == depthwise.params + pointwise.params
    assert separable.macs == depthwise.macs + pointwise.macs
    # The MobileNet paper's reduction: separable / standard = 1/C_out + 1/k^2, exactly.
    assert separable.macs / standard.macs == pytest.approx(1 / c_out + 1 / k**2, rel=1e-12)


def test_multiplier_bias_groups_and_rectangles():
    assert cost.depthwise_conv(16, 3, 10, depth_multiplier=2, bias=True) == cost.Cost(
        "depthwise 3x3 16->32", 9 * 32 + 32, 100 * 9 * 32
    )
    assert cost.standard_conv(16, 32, (3, 5), (4, 6), groups=4, bias=True) == cost.Cost(
        "conv 3x5 16->32 groups=4", 15 * 4 * 32 + 32, 24 * 15 * 4 * 32
    )
    separable = cost.separable_conv(16, 8, 3, 4, depth_multiplier=2, bias=True)
    assert separable.params == (9 * 32 + 32) + (32 * 8 + 8)
    assert separable.macs == 16 * (9 * 32 + 32 * 8)


def test_compare_table_by_hand():
    table = str(cost.compare(32, 64, 3, 112))
    lines = table.splitlines()
    assert lines[0].split(" | ")[0].strip() == "layer"
    # standard: 9*32*64 = 18,432 per pixel; depthwise 288; separable 288 + 2,048 = 2,336.
    assert re.search(r"conv 3x3 32->64\s+\|\s+18,432 \|\s+231,211,008 \|\s+18,432 \|\s+1\.000", table)
    assert re.search(r"depthwise 3x3 32->32\s+\|\s+288 \|\s+3,612,672 \|\s+288 \|\s+0\.016", table)
    assert re.search(r"separable 3x3 32->64\s+\|\s+2,336 \|\s+29,302,784 \|\s+2,336 \|\s+0\.127", table)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: cost.standard_conv(6, 4, 3, 1, groups=4),
            "in_channels=6 and out_channels=4 must be divisible by groups=4",
        ),
        (lambda: cost.depthwise_conv(3, 0, 1), "kernel_size must be a positive int or a sequence of them, got 0"),
        (lambda: cost.pointwise_conv(3, 4, (2, -1)), "output_size must be a positive int or a sequence of them"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# Multiply-adds at 224x224 from the papers (V1 Table 8 / V2 Table 3 / V3 Table 3).
PAPERS = {
    "MobileNetV1": (jdw.models.MobileNetV1, 4_231_976, 569e6),
    "MobileNetV2": (jdw.models.MobileNetV2, 3_504_872, 300e6),
    "MobileNetV3Large": (jdw.models.MobileNetV3Large, 5_483_032, 219e6),
    "MobileNetV3Small": (jdw.models.MobileNetV3Small, 2_542_856, 56e6),
}


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_summary_of_mobilenets_matches_the_papers(name):
    cls, params, macs = PAPERS[name]
    model = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))
    s = cost.summary(model, (1, 224, 224, 3))
    assert s.params == params
    assert abs(s.macs - macs) / macs < 0.05, s.macs
    assert s.macs == sum(layer.macs for layer in s.layers)
    depthwise = [layer for layer in s.layers if "depthwise" in layer.name]
    assert (
        len(depthwise) == {"MobileNetV1": 13, "MobileNetV2": 17, "MobileNetV3Large": 15, "MobileNetV3Small": 11}[name]
    )
    assert s.layers[-1].output_shape == (1, 1000)
    assert str(s).splitlines()[-1].startswith(f"total ({len(s.layers)} layers)")


def test_summary_of_a_jdw_layer_equals_the_formula():
    model = jdw.nnx.SeparableConv(16, 24, kernel_size=3, strides=2, use_bias=False, rngs=nnx.Rngs(0))
    s = cost.summary(model, (1, 20, 20, 16))
    expected = cost.separable_conv(16, 24, 3, 10)
    assert (s.params, s.macs) == (expected.params, expected.macs)
    assert [layer.output_shape for layer in s.layers] == [(1, 10, 10, 16), (1, 10, 10, 24)]
    assert "depthwise 3x3 /2 16->16" in s.layers[0].name


def test_summary_of_a_plain_function_counts_closed_over_weights():
    k = jnp.ones((3, 3, 1, 8))
    w = jnp.ones((8, 5))
    b = jnp.ones((5,))

    def fn(x):
        y = jdw.depthwise_conv(x, k)  # 6*6*8*9 = 2,592
        y = jnp.mean(y, axis=(1, 2))
        return y @ w + b[None]  # 8*5 = 40

    s = cost.summary(fn, (1, 6, 6, 8))
    assert s.params == 72 + 40 + 5
    assert [layer.macs for layer in s.layers] == [2592, 40]
    assert [layer.params for layer in s.layers] == [72, 40]
    assert s.layers[1].name.endswith("dense 8->5")


def test_summary_of_a_linen_apply_and_of_flax_grouped_conv():
    model = nn.Sequential([nn.Conv(8, (3, 3), feature_group_count=8, use_bias=False), nn.Dense(4)])
    variables = model.init(jax.random.key(0), jnp.ones((1, 5, 5, 8)))
    s = cost.summary(lambda x: model.apply(variables, x), (2, 5, 5, 8))
    assert s.params == 72 + 8 * 4 + 4
    # Dense on a (2, 5, 5, 8) map is a pointwise contraction at every position.
    assert [layer.macs for layer in s.layers] == [2 * 25 * 72, 2 * 25 * 32]
    assert s.layers[0].name.split(": ")[-1] == "depthwise 3x3 8->8"
    assert s.layers[1].name.split(": ")[-1] == "pointwise 8->4"


def test_summary_inside_scan_and_cond():
    w = jnp.ones((4, 4))

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]

    assert cost.summary(scanned, (2, 4)).macs == 3 * 2 * 4 * 4

    def branching(x):
        return jax.lax.cond(x.sum() > 0, lambda x: x @ w @ w, lambda x: x, x)

    assert cost.summary(branching, (2, 4)).macs == 2 * (2 * 4 * 4)


def test_summary_counts_data_dependent_products_as_activations_not_parameters():
    # Attention-like x @ x.T: both operands come from the input, so no parameters.
    s = cost.summary(lambda x: x @ x.T, (3, 7))
    assert (s.params, s.macs) == (0, 3 * 3 * 7)
    np.testing.assert_equal(s.layers[0].params, 0)
