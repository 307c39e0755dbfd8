"""The Pallas kernels: interpreted on this CPU (plain and TPU-semantics interpreters), lowered for TPU and CUDA.

The shared backend grid (``IMPLEMENTATIONS`` in ``helpers.py``) already runs every
``depthwise_conv`` / ``depthwise_conv_transpose`` case through ``implementation="pallas"``;
these tests add the kernel-level cases (tile sizes that do not divide the layer, both
targets' block rules, every fused epilogue), the TPU interpreter, block-size validation,
and compilation for the real targets with ``jax.export``.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from helpers import assert_close
from jax.experimental.pallas import tpu as pltpu

import jdw
from jdw.backends import pallas as pallas_backend
from jdw.kernels import pallas_depthwise as pd

TRITON_CALL = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
INTERPRETERS = {"plain": True, "tpu": pltpu.InterpretParams()}

# (input H, W, C), kernel, strides, dilation, padding, block sizes per target: sizes chosen not to divide the blocks.
KERNEL_CASES = [
    ((9, 11, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), {"tpu": (4, 128), "triton": (4, 4, 2)}),
    ((10, 9, 7), (3, 3), (2, 2), (1, 1), ((0, 1), (1, 1)), {"tpu": (3, 128), "triton": (2, 8, 4)}),
    ((13, 12, 3), (5, 3), (2, 1), (2, 2), ((2, 3), (4, 0)), {"tpu": (2, 128), "triton": (4, 2)}),
    ((8, 8, 130), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), {"tpu": (8, 130), "triton": (8, 64)}),
    ((6, 5, 256), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)), {"tpu": (2, 128), "triton": (2, 64)}),
    ((12, 10, 6), (3, 3), (1, 1), (3, 3), ((3, 3), (3, 3)), {"tpu": (5, 6), "triton": (4, 8)}),
    ((7, 6, 4), (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)), {"tpu": (7, 128), "triton": (8, 4)}),
]


def _layer(case, dtype=np.float32):
    (h, w, c), k, s, d, pad, _ = case
    return pd.Layer((h, w), k, s, pad, d, c, itemsize=np.dtype(dtype).itemsize)


def _inputs(case, seed=0):
    rng = np.random.default_rng(seed)
    (h, w, c), k = case[0], case[1]
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((*k, c)).astype(np.float32)
    bias = rng.standard_normal((c,)).astype(np.float32)
    return x, kernel, bias


def _numpy_forward(x, kernel, bias, layer):
    y = ref.depthwise_conv(
        x.astype(np.float64),
        kernel[:, :, None, :].astype(np.float64),
        bias,
        strides=layer.strides,
        padding=layer.padding,
        dilation=layer.dilation,
    )
    return y


@pytest.mark.parametrize(
    "case, target, interpreter",
    list(itertools.product(KERNEL_CASES, pd.TARGETS, INTERPRETERS)),
    ids=lambda v: "x".join(map(str, v[0])) if isinstance(v, tuple) else str(v),
)
def test_forward_and_kernel_grad_kernels_match_numpy(case, target, interpreter):
    if target == "triton" and interpreter == "tpu":
        pytest.skip("the TPU interpreter models TPU memory, not Triton's")
    layer = _layer(case)
    blocks = pd.BlockSizes(*case[-1][target])
    x, kernel, bias = _inputs(case)
    run = dict(block_sizes=blocks, target=target, interpret=INTERPRETERS[interpreter])
    y = pd.forward(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), layer, activation="identity", **run)
    expected = _numpy_forward(x, kernel, bias, layer)
    assert_close(y, expected)
    dy = np.random.default_rng(1).standard_normal(expected.shape).astype(np.float32)
    dk = pd.kernel_grad(jnp.asarray(x), jnp.asarray(dy), layer, **run)
    _, dk_expected, _ = ref.depthwise_conv_vjp(
        x.astype(np.float64),
        kernel[:, :, None, :].astype(np.float64),
        dy.astype(np.float64),
        strides=layer.strides,
        padding=layer.padding,
        dilation=layer.dilation,
    )
    assert_close(dk, dk_expected[:, :, 0, :])


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
@pytest.mark.parametrize(
    "case",
    [
        ((7, 7, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (3, 128)),
        ((9, 11, 130), (3, 3), (2, 2), (1, 1), ((0, 1), (1, 1)), (2, 130)),
        ((10, 6, 256), (5, 3), (2, 1), (2, 1), ((4, 3), (1, 2)), (8, 128)),
    ],
    ids=lambda case: "x".join(map(str, case[0])),
)
def test_spatial_major_tpu_kernels_match_numpy(case, interpreter):
    """Widths off the 8-row sublane tile with a batch of whole tiles: the (H, W, N, C) layout, images on sublanes."""
    (h, w, c), k, s, d, pad, blocks = case
    layer = pd.Layer((h, w), k, s, pad, d, c)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((*k, c)).astype(np.float32)
    bias = rng.standard_normal((c,)).astype(np.float32)
    assert pd.tpu_layout(layer, 16) == "hwnc" and pd.tpu_layout(layer, 4) != "hwnc"
    run = dict(block_sizes=pd.BlockSizes(*blocks), target="tpu", interpret=INTERPRETERS[interpreter])
    y = pd.forward(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), layer, activation="relu6", **run)
    z = _numpy_forward(x, kernel, bias, layer)
    assert_close(y, np.clip(z, 0, 6))
    dy = rng.standard_normal(z.shape).astype(np.float32)
    dk = pd.kernel_grad(jnp.asarray(x), jnp.asarray(dy), layer, per_image=True, **run)
    expected = [
        ref.depthwise_conv_vjp(
            x[i : i + 1].astype(np.float64),
            kernel[:, :, None, :].astype(np.float64),
            dy[i : i + 1].astype(np.float64),
            strides=s,
            padding=pad,
            dilation=d,
        )[1][:, :, 0, :]
        for i in range(16)
    ]
    assert_close(dk, np.stack(expected))


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
@pytest.mark.parametrize(
    "case",
    [
        ((9, 130, 4), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (4, 128)),
        ((7, 200, 16), (3, 5), (2, 1), (1, 2), ((2, 0), (3, 1)), (2, 16)),
        ((6, 150, 24), (3, 3), (2, 2), (1, 1), ((0, 1), (0, 1)), (2, 24)),
        ((5, 131, 8), (3, 3), (1, 3), (1, 1), ((1, 1), (2, 0)), (8, 8)),
    ],
    ids=lambda case: "x".join(map(str, case[0])),
)
def test_width_on_lanes_tpu_kernels_match_numpy(case, interpreter):
    """Few channels and a wide image: width on the lanes (MobileNetV2's 112x112x32); with a stride along the
    width the output has the channels on the lanes (112x112x96/s2), the MXU selecting and transposing."""
    (h, w, c), k, s, d, pad, blocks = case
    layer = pd.Layer((h, w), k, s, pad, d, c)
    assert pd.tpu_layout(layer, 2) == ("nhcw" if s[1] == 1 else "nhcw>nhwc")
    x, kernel, bias = _inputs(((h, w, c), k))
    run = dict(block_sizes=pd.BlockSizes(*blocks), target="tpu", interpret=INTERPRETERS[interpreter])
    y = pd.forward(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), layer, activation="hard_swish", **run)
    z = _numpy_forward(x, kernel, bias, layer)
    assert_close(y, jdw.functional.get_activation("hard_swish")(jnp.asarray(z, jnp.float32)))
    dy = np.random.default_rng(1).standard_normal(z.shape).astype(np.float32)
    dk = pd.kernel_grad(jnp.asarray(x), jnp.asarray(dy), layer, **run)
    _, dk_expected, _ = ref.depthwise_conv_vjp(
        x.astype(np.float64),
        kernel[:, :, None, :].astype(np.float64),
        dy.astype(np.float64),
        strides=s,
        padding=pad,
        dilation=d,
    )
    assert_close(dk, dk_expected[:, :, 0, :])


def test_spatial_major_bfloat16_takes_sixteen_images_per_step():
    layer = pd.Layer((7, 7), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 8, itemsize=2)
    assert pd.tpu_layout(layer, 16) == "hwnc" and pd.tpu_layout(layer, 8) == "nhwc"
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((16, 7, 7, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8)), jnp.bfloat16)
    y = pd.forward(x, kernel, None, layer, interpret=True)
    expected = pd.reference(x.astype(jnp.float32), kernel.astype(jnp.float32), layer)
    assert y.dtype == jnp.bfloat16
    assert_close(y, expected, dtype="bfloat16")


@pytest.mark.parametrize("activation", sorted(pd.EPILOGUES))
def test_every_fused_epilogue(activation):
    case = KERNEL_CASES[1]
    layer = _layer(case)
    x, kernel, bias = _inputs(case)
    y = pd.forward(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias), layer, activation=activation, interpret=True)
    z = _numpy_forward(x, kernel, bias, layer)
    expected = jdw.functional.get_activation(activation)(jnp.asarray(z, jnp.float32))
    assert_close(y, expected)


@pytest.mark.parametrize("activation", ["relu", "relu6", "hard_swish", "silu", None])
@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_fused_activation_trains_like_xla(activation, interpreter):
    """Forward and all three gradients of the public op with a fused bias + activation, both TPU interpreters."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 9, 10, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 6)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((6,)), jnp.float32)

    def loss(implementation):
        def f(x, kernel, bias):
            y = jdw.depthwise_conv(x, kernel, bias, activation=activation, strides=2, implementation=implementation)
            return jnp.sum(jnp.sin(y))

        return jax.value_and_grad(f, argnums=(0, 1, 2))

    with pallas_backend.interpret_mode(INTERPRETERS[interpreter]):
        got = loss("pallas")(x, kernel, bias)
    want = loss("xla")(x, kernel, bias)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(a, b)


def test_activation_is_fused_into_the_kernel():
    """Compiled for TPU: one Mosaic kernel and no elementwise max/min/clamp around it (relu6 is in its epilogue)."""
    x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    f = jax.jit(lambda x: jdw.depthwise_conv(x, kernel, activation="relu6", implementation="pallas"))
    module = jax.export.export(f, platforms=["tpu"])(x).mlir_module()
    assert module.count("tpu_custom_call") == 1
    assert not any(op in module for op in ("stablehlo.clamp", "stablehlo.maximum", "stablehlo.minimum"))
    unfused = jax.jit(lambda x: jdw.depthwise_conv(x, kernel, activation="relu6", implementation="xla"))
    assert "stablehlo.minimum" in jax.export.export(unfused, platforms=["tpu"])(x).mlir_module()


def test_callable_activation_falls_back_to_xla_after_the_kernel():
    x, kernel = jnp.linspace(-1, 1, 64).reshape(1, 4, 4, 4), jnp.ones((3, 3, 1, 4))
    got = jdw.depthwise_conv(x, kernel, activation=jnp.tanh, implementation="pallas")
    assert_close(got, jnp.tanh(jdw.depthwise_conv(x, kernel, implementation="xla")))


def test_bfloat16_accumulates_in_float32():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 12, 12, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 8)), jnp.bfloat16)
    y = jdw.depthwise_conv(x, kernel, implementation="pallas")
    assert y.dtype == jnp.bfloat16
    expected = jdw.depthwise_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), implementation="xla")
    assert_close(y, expected, dtype="bfloat16")


def test_default_block_sizes_follow_each_targets_rules():
    for h, c, s in [(112, 32, 1), (112, 96, 2), (56, 144, 1), (28, 192, 1), (14, 576, 2), (7, 960, 1)]:
        layer = pd.Layer((h, h), (3, 3), (s, s), ((1, 1), (1, 1)), (1, 1), c)
        tpu, gpu = pd.BlockSizes.default(layer, "tpu"), pd.BlockSizes.default(layer, "triton")
        tpu.check(layer, "tpu")
        gpu.check(layer, "triton")
        # all channels in one block unless they split evenly into 128-lane blocks: no padded lanes in HBM
        assert (
            tpu.channels in ((c, 128) if c % 128 == 0 else (c,)) and pd.vmem_bytes(layer, tpu) <= pd.DEFAULT_VMEM_BUDGET
        )
        assert gpu.rows & (gpu.rows - 1) == 0 and gpu.channels & (gpu.channels - 1) == 0


@pytest.mark.parametrize(
    "blocks, target, message",
    [
        (dict(rows=0), "tpu", r"BlockSizes.rows must be a positive int, got rows=0"),
        (dict(rows=8, channels=96), "tpu", r"channels=96 must cover all 192 channels or be a multiple of 128"),
        (
            dict(rows=8, channels=128),
            "tpu",
            r"channels=128 must cover all 192 channels or be a multiple of 128 .* divides",
        ),
        (
            dict(rows=4096, channels=192),
            "tpu",
            r"needs \d+\.\d MiB of VMEM per step .* more than the 24 MiB budget; use fewer rows",
        ),
        (dict(rows=6, channels=32), "triton", r"powers of two, got rows=6, cols=8, channels=32"),
        (dict(rows=4, channels=32, cols=3), "triton", r"powers of two, got rows=4, cols=3, channels=32"),
        (dict(rows=64, channels=32), "triton", r"gives a 16384-element tile .* more than 2048 per GPU program"),
    ],
)
def test_bad_block_sizes_are_refused_with_the_numbers(blocks, target, message):
    layer = pd.Layer((112, 112), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 192)
    with pytest.raises(ValueError, match=message):
        pd.BlockSizes(**blocks).check(layer, target)


def test_unknown_target_and_epilogue_are_refused():
    layer = pd.Layer((8, 8), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 4)
    x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4))
    with pytest.raises(ValueError, match=r"target must be one of \('tpu', 'triton'\), got 'cuda'"):
        pd.forward(x, k, None, layer, target="cuda", interpret=True)
    with pytest.raises(ValueError, match=r"activation 'gelu' has no fused epilogue"):
        pd.forward(x, k, None, layer, activation="gelu", interpret=True)


# --- compiled for the real targets, from this CPU machine -------------------------------------------

# MobileNetV2's depthwise layers named in the issue, batch 128, bfloat16 and float32.
MOBILENET_V2_LAYERS = [(112, 32, 1), (112, 96, 2), (28, 192, 1), (7, 960, 1)]


def _export(platform, dtype, size, channels, stride, *, grad):
    x = jax.ShapeDtypeStruct((128, size, size, channels), dtype)
    kernel = jax.ShapeDtypeStruct((3, 3, 1, channels), dtype)
    bias = jax.ShapeDtypeStruct((channels,), dtype)

    def f(x, kernel, bias):
        return jdw.depthwise_conv(x, kernel, bias, strides=stride, activation="relu6", implementation="pallas")

    if grad:
        g = jax.grad(lambda x, k, b: jnp.sum(f(x, k, b).astype(jnp.float32)), argnums=(0, 1, 2))
        fn = jax.jit(g)
    else:
        fn = jax.jit(f)
    checks = [TRITON_CALL] if platform == "cuda" else []
    return jax.export.export(fn, platforms=[platform], disabled_checks=checks)(x, kernel, bias).mlir_module()


@pytest.mark.parametrize("size, channels, stride", MOBILENET_V2_LAYERS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_lowers_for_tpu_with_mosaic(size, channels, stride, dtype):
    forward = _export("tpu", dtype, size, channels, stride, grad=False)
    assert forward.count("tpu_custom_call") == 1 and "stablehlo.convolution" not in forward
    backward = _export("tpu", dtype, size, channels, stride, grad=True)
    # forward (recomputed for the activation's derivative), input gradient, kernel gradient
    assert backward.count("tpu_custom_call") >= 3 and "stablehlo.convolution" not in backward


@pytest.mark.parametrize("size, channels, stride", MOBILENET_V2_LAYERS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_lowers_for_cuda_with_triton(size, channels, stride, dtype):
    forward = _export("cuda", dtype, size, channels, stride, grad=False)
    assert "__gpu$xla.gpu.triton" in forward and "stablehlo.convolution" not in forward
    backward = _export("cuda", dtype, size, channels, stride, grad=True)
    assert backward.count("__gpu$xla.gpu.triton") >= 3 and "stablehlo.convolution" not in backward


def test_lowers_for_rocm_with_the_same_triton_kernels():
    x, kernel = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 1, 8))
    grad = jax.jit(jax.grad(lambda x, k: jdw.depthwise_conv(x, k, strides=2, implementation="pallas").sum(), (0, 1)))
    module = jax.export.export(grad, platforms=["rocm"], disabled_checks=[TRITON_CALL])(x, kernel).mlir_module()
    assert module.count("__gpu$xla.gpu.triton") == 2 and "stablehlo.convolution" not in module


def test_cpu_runs_the_interpreter_while_exports_carry_compiled_kernels():
    """The platform the call is lowered for picks the kernel, not the machine that traces it."""
    x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    f = jax.jit(lambda x: jdw.depthwise_conv(x, kernel, implementation="pallas"))
    assert "tpu_custom_call" not in f.lower(x).as_text()
    assert_close(f(x), jdw.depthwise_conv(x, kernel, implementation="xla"))
    assert "tpu_custom_call" in jax.export.export(f, platforms=["tpu"])(x).mlir_module()


@pytest.mark.parametrize(
    "shape, kernel_shape",
    [
        ((2, 8, 600, 32), (3, 3, 1, 32)),  # wide rows: the GPU kernels tile them, the TPU ones take them whole
        ((2, 4, 4096, 128), (3, 3, 1, 128)),  # over the TPU VMEM budget even at one row
        ((3, 10000, 4), (3, 1, 4)),  # a long 1-D sequence
    ],
    ids=["wide", "wide-for-tpu", "long-1d"],
)
def test_a_target_that_cannot_serve_a_shape_leaves_the_others_alone(shape, kernel_shape):
    """Each target's block rules are checked in its own branch: one that cannot serve falls back to XLA there."""
    x, kernel = jnp.linspace(-1, 1, math.prod(shape)).reshape(shape), jnp.ones(kernel_shape)
    f = jax.jit(lambda x: jdw.depthwise_conv(x, kernel, implementation="pallas"))
    assert_close(f(x), jdw.depthwise_conv(x, kernel, implementation="xla"))  # the CPU's interpreter serves it
    grad = jax.jit(jax.grad(lambda x, k: jdw.depthwise_conv(x, k, implementation="pallas").sum(), argnums=(0, 1)))
    for platform, checks in (("tpu", []), ("cuda", [TRITON_CALL])):
        module = jax.export.export(f, platforms=[platform], disabled_checks=checks)(x).mlir_module()
        assert "tpu_custom_call" in module or "triton" in module or "stablehlo.convolution" in module
        exported = jax.export.export(grad, platforms=[platform], disabled_checks=checks)(x, kernel)
        assert [a.shape for a in exported.out_avals] == [x.shape, kernel.shape]


def test_a_layer_the_local_accelerator_cannot_serve_names_the_fix(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    layer = pd.Layer((4, 4096), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 128)
    with pytest.raises(
        ValueError, match=r'implementation="pallas" cannot serve .* on tpu: .*VMEM.*"xla" for this layer'
    ):
        pallas_backend._on_platform(None, None, jnp.ones((1, 4, 4096, 128)), layer=layer, batch=1, interpret=False)


# --- the GPU (Triton) kernels behind the whole backend, in the plain interpreter ---------------------


@pytest.mark.parametrize(
    "stride, dilation, padding",
    [
        (1, 1, "SAME"),
        (2, 1, "SAME"),
        (2, 1, "VALID"),
        (3, 2, ((2, 0), (1, 3))),
        (1, 3, "SAME"),
        (2, 2, ((0, 3), (4, 1))),
    ],
)
def test_gpu_kernels_train_transpose_and_differentiate_twice_like_xla(stride, dilation, padding):
    """Forward (fused bias + relu6), the three gradients, the transposed convolution and a second-order
    gradient, all through the Triton kernels: the input gradient reads the cotangent in place (masked
    dilation holes), tiles that divide nothing, a channel multiplier of 2."""
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.standard_normal((2, 11, 9, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 6)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((6,)), jnp.float32)
    conv = dict(strides=stride, dilation=dilation, padding=padding)

    def results(implementation):
        def loss(x, kernel, bias):
            y = jdw.depthwise_conv(x, kernel, bias, activation="relu6", implementation=implementation, **conv)
            return jnp.sum(jnp.sin(y))

        def transpose(y, kernel):
            return jdw.depthwise_conv_transpose(y, kernel, implementation=implementation, **conv)

        def curvature(kernel):  # d/dk of |dL/dx|²: the input gradient's own derivative
            return jnp.sum(
                jax.grad(
                    lambda x: jnp.sum(jnp.sin(jdw.depthwise_conv(x, kernel, implementation=implementation, **conv)))
                )(x)
                ** 2
            )

        y = jdw.depthwise_conv(x, kernel, implementation="xla", **conv)
        ty, t_vjp = jax.vjp(transpose, y[..., :3], kernel)
        return (
            jax.value_and_grad(loss, argnums=(0, 1, 2))(x, kernel, bias),
            ty,
            t_vjp(jnp.cos(ty)),
            jax.grad(curvature)(kernel),
        )

    with pallas_backend.interpret_mode(True, "triton"):
        got = jax.jit(lambda: results("pallas"))()
    want = results("xla")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(a, b)


def test_gpu_kernels_serve_long_sequences_and_wide_images_in_tiles():
    """No width is too wide for the GPU kernels: columns are tiled like rows (the old kernel held whole rows)."""
    rng = np.random.default_rng(8)
    for shape, kernel_shape in (((2, 3, 600, 8), (3, 3, 1, 8)), ((2, 1000, 5), (4, 1, 5))):
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
        layer = pd.Layer(
            (shape[1], shape[2]) if len(shape) == 4 else (1, shape[1]),
            kernel_shape[:2] if len(shape) == 4 else (1, 4),
            (1, 1),
            ((1, 1), (1, 1)) if len(shape) == 4 else ((0, 0), (3, 0)),
            (1, 1),
            shape[-1],
        )
        pd.BlockSizes.default(layer, "triton").check(layer, "triton")
        padding = "SAME" if len(shape) == 4 else ((3, 0),)
        with pallas_backend.interpret_mode(True, "triton"):
            got = jdw.depthwise_conv(x, kernel, padding=padding, implementation="pallas")
        assert_close(got, jdw.depthwise_conv(x, kernel, padding=padding, implementation="xla"))


def test_interpret_mode_names_what_it_runs():
    with pytest.raises(ValueError, match=r"target must be one of \('tpu', 'triton'\), got 'rocm'"):
        with pallas_backend.interpret_mode(True, "rocm"):
            pass
    with pytest.raises(ValueError, match=r"plain interpreter only"):
        with pallas_backend.interpret_mode(pltpu.InterpretParams(), "triton"):
            pass
