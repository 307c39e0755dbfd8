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


@pytest.mark.parametrize(
    "padding",
    [[1.5, 1], [(True, 1), 1], [(1, 2, 3), 1], [None, 1]],
    ids=["float", "bool-in-pair", "triple", "none"],
)
def test_malformed_padding_entries_are_named(padding):
    with pytest.raises(ValueError, match=r"each padding entry must be an int or a \(low, high\) pair of ints, got"):
        jdw.depthwise_conv(X, K, padding=padding)


@pytest.mark.parametrize(
    "output_padding, match",
    [
        (1.0, r"output_padding must be an int or one int per spatial dimension, got 1.0"),
        (True, r"output_padding must be an int or one int per spatial dimension, got True"),
        ((1, 0.5), r"output_padding must hold ints, got output_padding=\(1, 0.5\)"),
    ],
)
def test_malformed_output_padding_is_named(output_padding, match):
    with pytest.raises(TypeError, match=match):
        jdw.depthwise_conv_transpose(X, K, strides=2, output_padding=output_padding)


@pytest.mark.parametrize("implementation", ["xla", "taps", "pallas", None])
@pytest.mark.parametrize(
    "preferred, match",
    [
        (jnp.int32, r"preferred_element_type must be a floating type for float32 inputs \(as in lax\), got int32"),
        (jnp.float16, r"preferred_element_type float16 is narrower than the inputs' float32"),
    ],
)
def test_preferred_element_type_follows_lax_on_every_path(implementation, preferred, match):
    """It used to truncate silently on taps, pallas and the automatic path ([-1, 3, 0] for -1.57, 3.70, 0.81)."""
    with pytest.raises(TypeError, match=match):
        jdw.depthwise_conv(X, K, preferred_element_type=preferred, implementation=implementation)
    with pytest.raises(TypeError, match=match):
        jdw.depthwise_conv_transpose(X, K, strides=2, preferred_element_type=preferred, implementation=implementation)
    with pytest.raises(TypeError, match=match):
        jdw.causal_conv1d(X[:, 0], K[:, 0], preferred_element_type=preferred, implementation=implementation)
    with pytest.raises(TypeError, match=match):
        jdw.pointwise_conv(X, jnp.ones((4, 8)), preferred_element_type=preferred)
    wider = jdw.depthwise_conv(X.astype(jnp.bfloat16), K.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    assert wider.dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strides=0), r"DepthwiseConv: strides must be positive, got strides=0"),
        (dict(padding="bogus"), r"DepthwiseConv: unknown padding 'BOGUS'"),
        (dict(implementation="bogus"), r"DepthwiseConv: unknown implementation 'bogus'"),
        (dict(padding_mode="mirror"), r"DepthwiseConv: unknown padding_mode 'mirror'"),
        (dict(dilation=(1, 2, 3)), r"DepthwiseConv: dilation must be an int or a sequence of 2 ints"),
    ],
)
def test_layers_refuse_bad_options_when_built_not_when_first_called(kwargs, match):
    from flax import nnx

    with pytest.raises(ValueError, match=match):
        jdw.nnx.DepthwiseConv(4, **kwargs, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):  # its depthwise step is checked as it is built
        jdw.nnx.SeparableConv(4, 8, **kwargs, rngs=nnx.Rngs(0))
    if "implementation" in kwargs:
        with pytest.raises(ValueError, match=r"CausalConv1D: unknown implementation 'bogus'"):
            jdw.nnx.CausalConv1D(4, **kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: jdw.cost.depthwise_conv(0, 3, 8), r"channels must be a positive int, got channels=0"),
        (lambda: jdw.cost.compare(-1, 8), r"in_channels must be a positive int, got in_channels=-1"),
        (lambda: jdw.cost.standard_conv(3, 8, 3, 4, groups=True), r"groups must be a positive int, got groups=True"),
        (lambda: jdw.cost.depthwise_conv(3, 3, 8, depth_multiplier=0), r"depth_multiplier must be a positive int"),
        (lambda: jdw.cost.pointwise_conv(3, 8, 2.5), r"output_size must be a positive int or a sequence of them"),
        (lambda: jdw.cost.summary(lambda x: x, 5), r"input_shape must be a sequence of positive ints, .* got 5"),
        (lambda: jdw.cost.summary(lambda x: x, (1, 0, 3)), r"input_shape must be .* got \(1, 0, 3\)"),
    ],
)
def test_cost_counter_names_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cost_summary_of_a_jitted_function_counts_its_parameters():
    import jax

    w, p = jnp.ones((3, 3, 1, 8)), jnp.ones((8, 16))

    def f(x):
        return jdw.pointwise_conv(jdw.depthwise_conv(x, w), p)

    plain, jitted = jdw.cost.summary(f, (1, 8, 8, 8)), jdw.cost.summary(jax.jit(f), (1, 8, 8, 8))
    assert plain.params == jitted.params == 72 + 128 and plain.macs == jitted.macs > 0


@pytest.mark.parametrize(
    "model, kwargs, match",
    [
        ("MobileNetV2", dict(width=-1.0), r"MobileNetV2: width must be a positive number, got width=-1.0"),
        ("MobileNetV2", dict(width=0), r"MobileNetV2: width must be a positive number, got width=0"),
        ("MobileNetV2", dict(num_classes=-5), r"num_classes must be a positive int, or None .* got num_classes=-5"),
        ("MobileNetV2", dict(num_classes=2.5), r"got num_classes=2.5"),
        ("MobileNetV2", dict(num_classes=0), r"got num_classes=0"),
        (
            "MobileNetV1",
            dict(width=0.01),
            r"MobileNetV1: width=0.01 leaves a layer with no channels; use width >= 0.03125",
        ),
        (
            "MobileNetV3Small",
            dict(width=float("nan")),
            r"MobileNetV3Small: width must be a positive number, got width=nan",
        ),
    ],
)
def test_models_name_bad_arguments(model, kwargs, match):
    from flax import nnx

    with pytest.raises(ValueError, match=match):
        getattr(jdw.models, model)(**kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("not_a_model", [None, "MobileNetV2", 3])
def test_from_keras_names_what_it_got(not_a_model):
    with pytest.raises(ValueError, match=r"from_keras: expected a Keras application model .* got (NoneType|str|int)"):
        jdw.models.from_keras(not_a_model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(strides=0), r"DepthwiseConv: strides must be positive, got strides=0"),
        (dict(padding="bogus"), r"DepthwiseConv: unknown padding 'BOGUS'"),
        (dict(implementation="bogus"), r"DepthwiseConv: unknown implementation 'bogus'"),
    ],
)
def test_linen_layers_refuse_bad_options_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jdw.linen.DepthwiseConv(3, **kwargs)
    if "implementation" in kwargs:
        with pytest.raises(ValueError, match=r"CausalConv1D: unknown implementation 'bogus'"):
            jdw.linen.CausalConv1D(4, **kwargs)
