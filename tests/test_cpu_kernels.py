"""The C++ loops behind ``implementation="cpu"`` (jdw.kernels.cpu_depthwise) against the NumPy reference.

Each loop has paths the backend grid's shapes may not reach: whole rows in register blocks of
eight and four outputs (borders included), the interior blocks and tap tables where those do not
apply, the channels past the last full register, a strided input gradient (stride 2 in one pass
along the row, other strides one phase at a time), the kernel gradient's taps swept together and
one at a time, rows cut into segments (a batch-1 sequence) and tiles (long rows), the fused
epilogues, bfloat16 loads and stores (in order, and 32 channels split into even and odd ones),
bfloat16 kernels' paired taps, the bfloat16 kernel gradient's paired outputs. The cases below
reach each one, and run again with the loops compiled for narrower instruction sets than this CPU's (AVX-512
without its bfloat16 conversions, AVX2, the baseline), and with every destination written by
non-temporal stores (which large ones are).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import assert_close

import jdw
from jdw.functional.activations import ACTIVATIONS
from jdw.geometry import Geometry
from jdw.kernels import cpu_batch_norm, cpu_depthwise, cpu_target

pytestmark = pytest.mark.skipif(not cpu_depthwise.AVAILABLE, reason="the C++ extension is not built here")

# (batch, spatial, channels, kernel, strides, padding, dilation)
CASES = {
    "3x3-s1": (2, (9, 30), 37, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "3x3-s2": (2, (12, 40), 32, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "5x5-s2x3-ragged": (2, (12, 41), 19, (5, 5), (2, 3), ((2, 2), (2, 2)), (1, 1)),
    "3x4-s3-dilated": (1, (9, 50), 17, (3, 4), (3, 3), ((0, 3), (1, 2)), (1, 2)),
    "2x2-s2-no-padding": (1, (6, 64), 16, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)),
    "7x7-many-channels": (1, (9, 9), 200, (7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1)),
    "kernel-larger-than-input": (2, (3, 4), 8, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    "1x1": (2, (7, 13), 16, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    "1d-causal-one-sequence": (1, (700,), 70, (4,), (1,), ((3, 0),), (1,)),
    "1d-s2-dilated": (1, (300,), 33, (5,), (2,), ((2, 2),), (2,)),
    "1d-one-channel": (3, (20,), 1, (4,), (1,), ((3, 0),), (1,)),
    "3d": (1, (5, 6, 7), 9, (3, 2, 3), (1, 2, 1), ((1, 1), (0, 1), (1, 0)), (1, 1, 2)),
    # Whole rows in register blocks (channels in whole registers, dilation 1 along the row): blocks
    # of eight and four outputs, borders and a short last block, one and two registers of channels.
    "5x5-whole-rows": (2, (7, 21), 48, (5, 5), (1, 1), ((2, 2), (2, 2)), (1, 1)),
    "7x7-image-narrower-than-kernel": (2, (5, 6), 64, (7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1)),
    "5x5-s2-padding-past-kernel": (1, (9, 19), 32, (5, 5), (2, 2), ((4, 1), (5, 3)), (1, 1)),
    "3x3-one-register": (1, (6, 11), 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    "1d-one-sequence-in-segments": (1, (300,), 32, (4,), (1,), ((3, 0),), (1,)),
    # The input gradient of stride 2 in one pass along the row (blocks of both phases): two
    # registers of channels and one, odd widths, a row cut into segments, 4- and 7-tap kernels;
    # stride 3 keeps one pass per phase.
    "1d-s2-one-sequence-in-segments": (1, (301,), 48, (3,), (2,), ((1, 1),), (1,)),
    "1x7-s2-odd-width": (2, (3, 33), 32, (1, 7), (1, 2), ((0, 0), (3, 3)), (1, 1)),
    "4x4-s2-asymmetric-padding": (1, (6, 23), 16, (4, 4), (2, 2), ((1, 2), (2, 1)), (1, 1)),
    "3x3-s3-whole-registers": (1, (7, 25), 32, (3, 3), (3, 3), ((1, 1), (1, 1)), (1, 1)),
    # The kernel gradient sweeps up to seven taps of a row together where at least four outputs
    # see all of them (the rest, and rows with fewer, a tap at a time): groups of 7 + 7 + 1 with
    # channels past the last register, and 7 + 6 with stride and dilation.
    "1d-k15-tap-groups": (2, (64,), 24, (15,), (1,), ((7, 7),), (1,)),
    "1d-k13-s2-dilated-tap-groups": (1, (90,), 16, (13,), (2,), ((6, 6),), (2,)),
    # Whole rows in several groups of channels, shared evenly: 96 + 96 + 48 in float32 with AVX-512,
    # 128 + 112 in bfloat16 with AVX-512 (the last group's last register alone) and in float32 with
    # AVX2.
    "3x3-s2-channel-groups": (1, (6, 20), 240, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    # 3x3 at stride 2 over rows of 56 positions and more: with AVX2 a position at a time
    # (PositionRowBlocks: 48 channels in one block of six registers, the first position at the
    # padding), elsewhere register blocks of two registers and then one. Then 104 channels in blocks
    # of 7 + 6 registers (AVX2) over an odd width padded on the right only, and 200 in 9 + 9 + 7.
    "3x3-s2-wide-rows": (1, (5, 61), 48, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "3x3-s2-wide-rows-uneven-blocks": (1, (4, 57), 104, (3, 3), (2, 2), ((0, 1), (0, 1)), (1, 1)),
    "3x3-s2-wide-rows-three-blocks": (2, (3, 56), 200, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    # 3x3 rows end in a block of exactly the outputs left (fewer than four), inside the row at
    # stride 2 over even widths: 7 outputs (4 + 3) and 9 (4 + 4 + 1), two registers of channels and
    # one.
    "3x3-s2-last-block-of-3": (2, (7, 14), 48, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    "3x3-s2-last-block-of-1": (1, (5, 18), 48, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    # bfloat16 kernels pair taps (5x5, 7x7): two blocks of 32 channels and 16 alone, interior blocks
    # of eight outputs between border blocks.
    "7x7-whole-rows": (1, (9, 30), 80, (7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1)),
    # ... in 3-D with a dilated middle dimension: a row's kernel rows are consecutive pairs except
    # where the depth's taps change (then the rows go alone), and the source rows of a pair are two
    # rows apart.
    "3d-5x5-rows-not-consecutive": (1, (3, 9, 20), 64, (2, 5, 5), (1, 1, 1), ((1, 0), (4, 4), (2, 2)), (1, 2, 1)),
    # Destination rows that no source row reaches, in whole rows: output rows of padding only
    # (padding of 3 and 4 rows against a kernel of 3), and input-gradient rows between the
    # strides (a kernel of 2 rows at stride 3). They hold zeros (or the epilogue of zero).
    "3x3-rows-of-padding-only": (2, (5, 20), 32, (3, 3), (1, 1), ((3, 4), (1, 1)), (1, 1)),
    "2x3-s3-rows-no-tap-reaches": (1, (8, 20), 48, (2, 3), (3, 1), ((0, 0), (1, 1)), (1, 1)),
    # The kernel gradient sweeps the kernel rows of an output row together (2 and 3 taps, more than
    # 32 channels): 3x3-s1 (37 channels), 3x3-s2-channel-groups (240) and this 2x2 one (48: blocks
    # of two registers and one; its first output row sees one kernel row, the others two).
    "2x2-rows-together": (2, (7, 21), 48, (2, 2), (1, 1), ((1, 0), (0, 1)), (1, 1)),
    # bfloat16 whole rows of 5x5 at stride 2 in two groups of 128 channels (even-odd loads).
    "5x5-s2-channel-groups": (1, (7, 20), 256, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1)),
    # The bfloat16 kernel gradient of 3x3 and 2x2 kernels pairs outputs (AVX512-BF16): three blocks
    # of 32 channels, rows of an odd number of outputs, narrow rows swept several at a time (the
    # groups end at each image's last row), padding at the top and left only.
    "3x3-bf16-output-pairs": (3, (6, 13), 96, (3, 3), (1, 1), ((2, 0), (1, 0)), (1, 1)),
    # ... and a group that goes on into the next image (2x2 at stride 2 without padding: the next
    # image's rows continue at the same step).
    "2x2-s2-rows-across-images": (3, (4, 10), 64, (2, 2), (2, 2), ((0, 0), (0, 0)), (1, 1)),
}


def _operands(rng, batch, spatial, channels, kernel, strides, padding, dilation):
    geometry = Geometry(spatial, kernel, strides=strides, padding=padding, dilation=dilation)
    x = rng.standard_normal((batch, *spatial, channels)).astype(np.float32)
    k = rng.standard_normal((*kernel, 1, channels)).astype(np.float32)
    dy = rng.standard_normal((batch, *geometry.output_size, channels)).astype(np.float32)
    return geometry, x, k, dy


@pytest.mark.parametrize("name", list(CASES))
def test_loops_match_numpy(name, rng):
    batch, spatial, channels, kernel, strides, padding, dilation = CASES[name]
    geometry, x, k, dy = _operands(rng, *CASES[name])
    conv = dict(strides=strides, padding=padding, dilation=dilation)
    y = jax.jit(lambda x, k: cpu_depthwise.forward(x, k, geometry, jnp.float32))(x, k)
    assert_close(y, ref.depthwise_conv(x, k, **conv))
    want_dx, want_dk, _ = ref.depthwise_conv_vjp(x, k, dy, **conv)
    dx = jax.jit(lambda dy, k: cpu_depthwise.transpose(dy, k, geometry, jnp.float32))(dy, k)
    assert_close(dx, want_dx)
    dk = jax.jit(lambda x, dy: cpu_depthwise.kernel_grad(x, dy, geometry))(x, dy)
    assert dk.dtype == jnp.float32 and dk.shape == (*kernel, channels)
    assert_close(dk, want_dk[..., 0, :])


# The ragged case goes through the tap lists and register blocks, the wide rows a position at a time
# with AVX2 (PositionBlock's epilogue).
@pytest.mark.parametrize("case", ["5x5-s2x3-ragged", "3x3-s2-wide-rows-uneven-blocks"])
@pytest.mark.parametrize("activation", sorted(cpu_depthwise.ACTIVATIONS))
def test_fused_bias_and_activation(activation, case, rng):
    strides, padding, dilation = CASES[case][4:]
    geometry, x, k, _ = _operands(rng, *CASES[case])
    x = 3 * x  # reach every piece of relu6 and the hard activations
    bias = rng.standard_normal(x.shape[-1]).astype(np.float32)
    y = jax.jit(lambda x, k, b: cpu_depthwise.forward(x, k, geometry, jnp.float32, bias=b, activation=activation))(
        x, k, bias
    )
    z = ref.depthwise_conv(x, k, bias, strides=strides, padding=padding, dilation=dilation)
    assert_close(y, np.asarray(ACTIVATIONS[activation](jnp.asarray(z, jnp.float32))))


def test_silu_of_large_magnitudes_is_finite(rng):
    """The vector exp clamps its argument: silu(-1000) is -0, silu(1000) is 1000, not NaN or inf."""
    geometry = Geometry((4,), (1,))
    x = np.array([[[-1000.0] * 16, [-90.0] * 16, [90.0] * 16, [1000.0] * 16]], np.float32)
    y = cpu_depthwise.forward(x, np.ones((1, 16), np.float32), geometry, jnp.float32, activation="silu")
    np.testing.assert_allclose(np.asarray(y)[0, :, 0], [0.0, -90.0 / (1 + np.exp(90.0)), 90.0, 1000.0], atol=1e-30)


# Stride 1 takes the kernel gradient's window of bfloat16 source registers (rows of at least 2K
# interior outputs; 5x5: one register of channels after two), stride 2 not. With AVX512-BF16, the
# kernel rows swept together (3x3, 2x2) take 32 channels at a time in pairs of outputs (vdpbf16ps),
# narrow rows several at a time; the channels past the last 32 as before.
@pytest.mark.parametrize(
    "case",
    [
        "3x3-s2",
        "3x3-s1",
        "5x5-whole-rows",
        "3x3-s2-channel-groups",
        "3x3-s2-wide-rows",
        "3x3-rows-of-padding-only",
        "2x2-rows-together",
        "3x3-bf16-output-pairs",
        "2x2-s2-rows-across-images",
    ],
)
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_loads_and_stores(out_dtype, case, rng):
    strides, padding, dilation = CASES[case][4:]
    geometry, x, k, dy = _operands(rng, *CASES[case])
    xb, dyb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(dy, jnp.bfloat16)
    conv = dict(strides=strides, padding=padding, dilation=dilation)
    y = cpu_depthwise.forward(xb, k, geometry, out_dtype)
    assert y.dtype == out_dtype
    # The sums are float32 over the bfloat16 inputs: only the store rounds.
    want = ref.depthwise_conv(np.asarray(xb, np.float32), k, **conv)
    assert_close(y, want, jnp.bfloat16 if out_dtype == jnp.bfloat16 else np.float32)
    dk = cpu_depthwise.kernel_grad(xb, dyb, geometry)
    _, want_dk, _ = ref.depthwise_conv_vjp(np.asarray(xb, np.float32), k, np.asarray(dyb, np.float32), **conv)
    assert_close(dk, want_dk[..., 0, :])


# bfloat16 sources in whole rows of channels in whole 32s (AVX-512) take two registers of channels
# as one load, the even and the odd channels apart; the kernel and the bias are stored the same way,
# and the sums go back in order before the store. Forward with a fused bias and activation, and the
# input gradient (the transposed rows of stride 1; 3x3-s2's is the one-pass strided loop): 3x3, 7x7
# wider than the image, rows of padding only, a 1-D sequence in segments, groups of channels; and
# 48 channels, which keep a register at a time.
@pytest.mark.parametrize(
    "case",
    [
        "3x3-s2",
        "7x7-image-narrower-than-kernel",
        "3x3-rows-of-padding-only",
        "1d-one-sequence-in-segments",
        "5x5-s2-channel-groups",
        "5x5-whole-rows",
    ],
)
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_even_odd_channels(out_dtype, case, rng):
    strides, padding, dilation = CASES[case][4:]
    geometry, x, k, dy = _operands(rng, *CASES[case])
    xb, dyb = jnp.asarray(3 * x, jnp.bfloat16), jnp.asarray(dy, jnp.bfloat16)
    bias = rng.standard_normal(x.shape[-1]).astype(np.float32)
    conv = dict(strides=strides, padding=padding, dilation=dilation)
    tolerance = jnp.bfloat16 if out_dtype == jnp.bfloat16 else np.float32
    y = cpu_depthwise.forward(xb, k, geometry, out_dtype, bias=bias, activation="hard_swish")
    z = ref.depthwise_conv(np.asarray(xb, np.float32), k, bias, **conv)
    assert_close(y, np.asarray(ACTIVATIONS["hard_swish"](jnp.asarray(z, jnp.float32))), tolerance)
    dx = cpu_depthwise.transpose(dyb, k, geometry, out_dtype)
    assert dx.dtype == out_dtype
    want_dx, _, _ = ref.depthwise_conv_vjp(np.asarray(xb, np.float32), k, np.asarray(dyb, np.float32), **conv)
    assert_close(dx, want_dx, tolerance)


# Where the kernel's values are bfloat16 (as a bfloat16 model's are), 5x5 and 7x7 rows of stride 1
# pair taps (of two kernel rows, and along a row left alone): vdpbf16ps, two multiply-adds per lane
# (on CPUs with AVX512-BF16; elsewhere, and under the narrower instruction sets' runs of this file,
# the float32 multiply-adds). With the fused epilogue: the paired sums come back in channel order
# before the bias.
@pytest.mark.parametrize(
    "case", ["5x5-whole-rows", "7x7-whole-rows", "7x7-image-narrower-than-kernel", "3d-5x5-rows-not-consecutive"]
)
@pytest.mark.parametrize("out_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_kernels_pair_taps(out_dtype, case, rng):
    strides, padding, dilation = CASES[case][4:]
    geometry, x, k, _ = _operands(rng, *CASES[case])
    xb = jnp.asarray(3 * x, jnp.bfloat16)
    kb = np.asarray(jnp.asarray(k, jnp.bfloat16), np.float32)  # bfloat16 values, exactly
    bias = rng.standard_normal(x.shape[-1]).astype(np.float32)
    y = cpu_depthwise.forward(xb, kb, geometry, out_dtype, bias=bias, activation="relu6")
    z = ref.depthwise_conv(np.asarray(xb, np.float32), kb, bias, strides=strides, padding=padding, dilation=dilation)
    want = np.asarray(ACTIVATIONS["relu6"](jnp.asarray(z, jnp.float32)))
    assert_close(y, want, jnp.bfloat16 if out_dtype == jnp.bfloat16 else np.float32)


def test_bfloat16_paired_taps_keep_an_infinity_in_its_channel():
    """A pair's lane holds one channel at two taps: an infinity reaches only its own channel."""
    geometry = Geometry((12, 40), (5, 5), padding=((2, 2), (2, 2)))
    x = np.ones((1, 12, 40, 48), np.float32)
    x[0, 5, 20, 3] = np.inf
    y = np.asarray(cpu_depthwise.forward(jnp.asarray(x, jnp.bfloat16), np.ones((5, 5, 48)), geometry, jnp.float32))
    assert not np.isnan(y).any()
    rows, columns, channels = np.nonzero(np.isinf(y[0]))
    assert set(channels) == {3} and len(channels) == 25 and set(rows) == set(range(3, 8))


def test_bfloat16_store_rounds_to_nearest_even_and_keeps_nan():
    geometry = Geometry((1,), (1,))
    # 1 + 2^-8 is halfway between two bfloat16 values (1 and 1 + 2^-7): even is 1.
    # Then the largest float32 (rounds up to infinity), a small normal number, negative zero.
    # (Not a float32 subnormal: AVX512-BF16's conversion flushes those to zero, see the loops.)
    edges = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), np.nan, np.inf, -np.inf, 3.4028235e38, 1e-30, -0.0]
    values = np.array(edges + [0.0] * (16 - len(edges)), np.float32)
    y = cpu_depthwise.forward(values.reshape(1, 1, 16), np.ones((1, 16), np.float32), geometry, jnp.bfloat16)
    want = np.asarray(jnp.asarray(values, jnp.bfloat16), np.float32)  # float32: NumPy 2.0 compares NaN only there
    np.testing.assert_array_equal(np.asarray(y, np.float32)[0, 0], want)


def test_backend_calls_the_loops_and_nothing_else():
    x, k = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 1, 8))
    loss = lambda x, k: jnp.sum(jdw.depthwise_conv(x, k, strides=2, activation="relu6", implementation="cpu") ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, k).compile().as_text()
    for target in ("jdw_depthwise_forward", "jdw_depthwise_transpose", "jdw_depthwise_kernel_grad"):
        assert target in hlo
    assert "convolution(" not in hlo


def test_bfloat16_kernels_biases_and_kernel_gradients_pass_the_loops_as_they_are(rng):
    """The loops widen a bfloat16 kernel and bias and round a bfloat16 kernel gradient themselves.

    Each compiled program is then the custom call alone: an XLA convert before or after it would
    make the program two thunks, which XLA:CPU runs off the calling thread. Float32 data with a
    bfloat16 kernel too, and the decoding step's kernel and bias.
    """
    strides, padding, dilation = CASES["3x3-s2"][4:]
    geometry, x, k, dy = _operands(rng, *CASES["3x3-s2"])
    xb, kb, dyb = (jnp.asarray(a, jnp.bfloat16) for a in (x, k, dy))
    bias = jnp.asarray(rng.standard_normal(x.shape[-1]), jnp.bfloat16)
    wide = lambda a: np.asarray(a, np.float32)  # noqa: E731
    forward = jax.jit(lambda x, k, b: cpu_depthwise.forward(x, k, geometry, jnp.float32, bias=b, activation="relu"))
    entry = forward.lower(xb, kb, bias).compile().as_text().split("ENTRY")[1]
    assert entry.count("custom-call(") == 1 and "fusion" not in entry and "convert" not in entry
    conv = dict(strides=strides, padding=padding, dilation=dilation)
    want = np.maximum(ref.depthwise_conv(wide(xb), wide(kb), wide(bias), **conv), 0)
    assert_close(forward(xb, kb, bias), want)
    assert_close(forward(x, kb, bias), np.maximum(ref.depthwise_conv(x, wide(kb), wide(bias), **conv), 0))
    transpose = jax.jit(lambda dy, k: cpu_depthwise.transpose(dy, k, geometry, jnp.float32))
    assert "convert" not in transpose.lower(dyb, kb).compile().as_text().split("ENTRY")[1]
    assert_close(transpose(dyb, kb), ref.depthwise_conv_vjp(wide(xb), wide(kb), wide(dyb), **conv)[0])
    grad = jax.jit(lambda x, dy: cpu_depthwise.kernel_grad(x, dy, geometry, jnp.bfloat16))
    assert "convert" not in grad.lower(xb, dyb).compile().as_text().split("ENTRY")[1]
    sums = cpu_depthwise.kernel_grad(xb, dyb, geometry)
    assert grad(xb, dyb).dtype == jnp.bfloat16 and sums.dtype == jnp.float32
    np.testing.assert_array_equal(wide(grad(xb, dyb)), wide(sums.astype(jnp.bfloat16)))  # rounded to nearest even
    # The decoding step: the same numbers as with the widened kernel and bias.
    xs, state = (
        jnp.asarray(rng.standard_normal((3, 32)), jnp.bfloat16),
        jnp.asarray(rng.standard_normal((3, 6, 32)), jnp.bfloat16),
    )
    ks, bs = jnp.asarray(rng.standard_normal((4, 32)), jnp.bfloat16), jnp.asarray(rng.standard_normal(32), jnp.bfloat16)
    step = lambda k, b: cpu_depthwise.causal_update(  # noqa: E731
        xs, state, k, b, None, dilation=2, activation="silu", dtype=jnp.float32
    )
    for got, want in zip(step(ks, bs), step(wide(ks), wide(bs))):
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


@pytest.mark.parametrize(
    "what, x, kernel",
    [
        ("float16", jnp.ones((2, 8, 8, 4), jnp.float16), jnp.ones((3, 3, 1, 4), jnp.float16)),
        ("multiplier 2", jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 1, 8))),
        ("4-D", jnp.ones((1, 3, 3, 3, 3, 2)), jnp.ones((2, 2, 2, 2, 1, 2))),
    ],
)
def test_what_the_loops_do_not_take_runs_on_taps(what, x, kernel):
    """No custom call, and the numbers of the reference."""
    f = lambda x, k: jdw.depthwise_conv(x, k, implementation="cpu")  # noqa: E731
    hlo = jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k)), argnums=(0, 1))).lower(x, kernel).as_text()
    assert "jdw_depthwise" not in hlo, what
    want = jdw.depthwise_conv(x, kernel, implementation="xla")
    assert_close(f(x, kernel), want, x.dtype)


def test_supports():
    g = Geometry((8, 8), (3, 3), padding=((1, 1), (1, 1)))
    assert cpu_depthwise.supports(g, np.float32, jnp.bfloat16)
    assert not cpu_depthwise.supports(g, np.float64)
    assert not cpu_depthwise.supports(Geometry((4,) * 4, (2,) * 4), np.float32)
    with pytest.raises(ValueError, match="activation 'gelu' has no fused epilogue"):
        cpu_depthwise.forward(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4)), g, jnp.float32, activation="gelu")


def test_float64_with_a_fused_activation_stays_float64(rng):
    """The fused primitive's fallback (float64 is not the loops') computes in float64, not float32."""
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((1, 6, 6, 4)))
        k, b = jnp.asarray(rng.standard_normal((3, 3, 1, 4))), jnp.asarray(rng.standard_normal(4))
        got = jdw.depthwise_conv(x, k, b, activation="silu", implementation="cpu")
        want = jdw.depthwise_conv(x, k, b, activation="silu", implementation="xla")
        assert got.dtype == jnp.float64
        assert_close(got, want, np.float64)


_INSTRUCTION_SETS = tuple(reversed(cpu_target.INSTRUCTION_SETS))  # narrowest first


def _run_this_file_with(env_update: dict[str, str], check: str, want: str) -> None:
    """Runs the loop, epilogue and bfloat16 tests of this file in a new process with ``env_update``.

    ``check``, a Python expression, must print ``want`` there first (the setting took).
    """
    # (Without this run's pytest variables: an xdist worker's would make the inner pytest a worker too.)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "XDIST"))}
    env.update(env_update)
    chosen = [sys.executable, "-c", f"from jdw.kernels import cpu_depthwise; print({check})"]
    assert subprocess.run(chosen, env=env, capture_output=True, text=True, check=True).stdout.strip() == want
    tests = ["-k", "loops_match_numpy or fused_bias or bfloat16_", "-p", "no:cacheprovider", "-q", __file__]
    run = subprocess.run([sys.executable, "-m", "pytest", *tests], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.parametrize("instruction_set", ["avx512", "avx2", "baseline"])
def test_narrower_instruction_sets_match_numpy(instruction_set):
    """Narrower instruction sets' loops pass this file's cases (JDW_CPU_INSTRUCTION_SET caps the choice).

    ``"avx512"`` differs from the widest, ``"avx512_bf16"``, in how it rounds bfloat16 stores.
    """
    widest = cpu_depthwise.instruction_set()
    if _INSTRUCTION_SETS.index(instruction_set) >= _INSTRUCTION_SETS.index(widest):
        pytest.skip(f"this CPU's widest instruction set is {widest}: the other tests run it")
    env = {"JDW_CPU_INSTRUCTION_SET": instruction_set}
    _run_this_file_with(env, "cpu_depthwise.instruction_set()", instruction_set)


def test_an_unknown_instruction_set_warns_and_is_ignored():
    """``JDW_CPU_INSTRUCTION_SET`` naming no instruction set warns once, naming the value and the
    known sets, and both extensions run the widest set the CPU has, as without the variable."""
    env = {k: v for k, v in os.environ.items() if k != "JDW_CPU_INSTRUCTION_SET"}
    env["JDW_CPU_INSTRUCTION_SET"] = "avx3"
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from jdw.kernels import cpu_batch_norm, cpu_depthwise\n"
        "print(cpu_depthwise.instruction_set(), cpu_batch_norm.instruction_set())"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == [cpu_depthwise.instruction_set(), cpu_batch_norm.instruction_set()]
    warned = [line for line in run.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1, run.stderr
    assert "JDW_CPU_INSTRUCTION_SET='avx3'" in warned[0] and "avx512_bf16, avx512, avx2, baseline" in warned[0]


@pytest.mark.parametrize("instruction_set", ["widest", "avx2"])
def test_streaming_stores_match_numpy(instruction_set):
    """With ``JDW_CPU_STREAM_BYTES=0`` every destination is written by non-temporal stores (where
    aligned; the rest, channels past the last whole register or unaligned rows, by ordinary ones),
    as destinations larger than the last-level cache are: this file's cases pass so, 512- and
    256-bit registers, float32 and bfloat16."""
    widest = cpu_depthwise.instruction_set()
    env = {"JDW_CPU_STREAM_BYTES": "0"}
    if instruction_set != "widest":
        if _INSTRUCTION_SETS.index(instruction_set) >= _INSTRUCTION_SETS.index(widest):
            pytest.skip(f"this CPU's widest instruction set is {widest}: the other case runs it")
        env["JDW_CPU_INSTRUCTION_SET"] = instruction_set
    _run_this_file_with(env, "cpu_depthwise.stream_bytes()", "0")


def test_stream_threshold_is_a_cache_size():
    """Without the environment variable the threshold is an eighth of the last-level cache's size
    (at least 1 MiB, at most 4 GiB on any CPU this runs on), so small layers keep ordinary stores."""
    if "JDW_CPU_STREAM_BYTES" in os.environ:
        pytest.skip("JDW_CPU_STREAM_BYTES is set in this environment")
    assert 1 << 20 <= cpu_depthwise.stream_bytes() <= 4 << 30
