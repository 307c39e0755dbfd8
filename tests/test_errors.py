"""Bad input gets a clear ValueError / TypeError naming the values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jdw

X = jnp.ones((2, 8, 8, 4))
K = jnp.ones((3, 3, 1, 4))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(x=jnp.ones((8, 4))), ValueError, r"x must have rank 4 \(layout NHWC\) or 3 .*x.shape=\(8, 4\)"),
        (dict(kernel=jnp.ones((3, 3, 2, 8))), ValueError, r"axis -2 is 2, expected 1"),
        (dict(kernel=jnp.ones((3, 3, 1, 6))), ValueError, r"6 output channels.*not a positive multiple of the 4"),
        (dict(padding="FULL"), ValueError, r"unknown padding 'FULL'"),
        (dict(padding=((1, 1),)), ValueError, r"one entry per spatial dimension \(2\)"),
        (dict(padding=-1), ValueError, r"non-negative"),
        (dict(padding="CAUSAL"), ValueError, r"CAUSAL.*1 spatial dimension.*got 2"),
        (dict(padding_mode="mirror"), ValueError, r"unknown padding_mode 'mirror'"),
        (dict(padding=8, padding_mode="reflect"), ValueError, r"reflect.*size 8 and padding \(8, 8\)"),
        (dict(padding=9, padding_mode="circular"), ValueError, r"circular.*size 8 and padding \(9, 9\)"),
        (dict(strides=0), ValueError, r"strides must be positive, got strides=0"),
        (dict(strides=(1, 2, 3)), ValueError, r"strides must be an int or a sequence of 2 ints"),
        (dict(dilation=(1, -1)), ValueError, r"dilation must be positive"),
        (
            dict(kernel=jnp.ones((9, 3, 1, 4)), padding="VALID"),
            ValueError,
            r"effective kernel size 9 \(kernel 9, dilation 1\) is larger than the padded input size 8",
        ),
        (dict(dilation=5, padding="VALID"), ValueError, r"effective kernel size 11 \(kernel 3, dilation 5\)"),
        (dict(bias=jnp.ones(3)), ValueError, r"bias must have shape \(4,\).*got \(3,\)"),
        (dict(data_format="NHWC"), ValueError, r"unknown data_format 'NHWC'"),
        (dict(implementation="cudnn"), ValueError, r"unknown implementation 'cudnn'; available: .*'taps'.*'xla'"),
        (dict(x=jnp.ones((2, 8, 8, 4), jnp.int32)), TypeError, r"x must have a floating-point dtype, got int32"),
    ],
)
def test_depthwise_conv_errors(kwargs, error, match):
    call = dict(x=X, kernel=K)
    call.update(kwargs)
    with pytest.raises(error, match=match):
        jdw.depthwise_conv(call.pop("x"), call.pop("kernel"), **call)


def test_channels_first_error_names_layout():
    with pytest.raises(ValueError, match=r"layout NCHW"):
        jdw.depthwise_conv(jnp.ones((2, 4, 8, 8)), jnp.ones((3, 3, 1, 6)), data_format="channels_first")


def test_transpose_errors():
    with pytest.raises(ValueError, match=r"output_padding < stride"):
        jdw.depthwise_conv_transpose(X, K, strides=2, output_padding=2)
    with pytest.raises(ValueError, match=r"unknown padding 'CAUSAL'"):
        jdw.depthwise_conv_transpose(X, K, padding="CAUSAL")
    with pytest.raises(ValueError, match=r"gives no valid output size"):
        jdw.depthwise_conv_transpose(jnp.ones((1, 1, 1, 4)), K, padding=((2, 2), (2, 2)))


def test_pointwise_errors():
    with pytest.raises(ValueError, match=r"kernel expects 5 input channels but x has 4"):
        jdw.pointwise_conv(X, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match=r"\(C_in, C_out\) or \(1, ..., 1, C_in, C_out\).*\(3, 3, 4, 2\)"):
        jdw.pointwise_conv(X, jnp.ones((3, 3, 4, 2)))


def test_errors_surface_under_jit():
    import jax

    with pytest.raises(ValueError, match=r"not a positive multiple"):
        jax.jit(jdw.depthwise_conv)(X, np.ones((3, 3, 1, 5), np.float32))
