"""The Pallas kernels through TPU's real compiler, on this CPU machine (libtpu's compile-only devices).

``jax.export`` (``test_pallas.py``) stops before Mosaic's final compile; here every program
is compiled for TPU v5e and v6e exactly as on the chip (Mosaic's layout passes, VMEM
allocation, LLO), so a kernel that would fail on a TPU fails here. The compiled programs
also say how many bytes they move: :mod:`jdw.traffic` counts them, and the forward must
move no more than the input and output as the chip stores them.
"""

from __future__ import annotations

import pytest

pytest.importorskip("libtpu", reason="compiling for TPU without one needs libtpu (jdw's test extra)")

import jax  # noqa: E402
from helpers import compile_grid, mamba_conv_program, training_program  # noqa: E402

import jdw  # noqa: E402
import jdw.kernels.pallas_depthwise  # noqa: E402  (jdw imports the Pallas kernels on first use)
from jdw import traffic  # noqa: E402

CHIPS = ("v5e", "v6e")
BATCH = 64
# (size, channels, kernel, stride, dilation): MobileNetV2's 10 depthwise shapes at 224x224, then
# EfficientNet (5x5, also stride 2), ConvNeXt (7x7) and a DeepLab-style dilated layer.
MOBILENET_V2 = [
    (112, 32, 3, 1, 1),
    (112, 96, 3, 2, 1),
    (56, 144, 3, 1, 1),
    (56, 144, 3, 2, 1),
    (28, 192, 3, 1, 1),
    (28, 192, 3, 2, 1),
    (14, 384, 3, 1, 1),
    (14, 576, 3, 1, 1),
    (14, 576, 3, 2, 1),
    (7, 960, 3, 1, 1),
]
OTHERS = [(28, 240, 5, 1, 1), (56, 144, 5, 2, 1), (56, 96, 7, 1, 1), (33, 256, 3, 1, 4)]


def _name(layer) -> str:
    size, channels, kernel, stride, dilation = layer
    return f"{size}x{size}x{channels}-k{kernel}-s{stride}-d{dilation}"


def _args(chip, layer, dtype):
    size, channels, kernel, _, _ = layer
    sharding = jax.sharding.SingleDeviceSharding(traffic.tpu_device(chip))
    shape = lambda *dims: jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)  # noqa: E731
    return shape(BATCH, size, size, channels), shape(kernel, kernel, 1, channels), shape(channels)


def _conv(layer, activation="relu6"):
    _, _, _, stride, dilation = layer

    def conv(x, kernel, bias):
        return jdw.depthwise_conv(
            x, kernel, bias, strides=stride, dilation=dilation, activation=activation, implementation="pallas"
        )

    return conv


def _kernels(compiled) -> list[str]:
    return [line for line in compiled.as_text().splitlines() if 'custom_call_target="tpu_custom_call"' in line]


# Every layer on v5e in bfloat16 (the training dtype); float32 on v5e and bfloat16 on v6e (whose VPU
# computes bfloat16 natively; its float32 kernels are v5e's) on the layers that take other code paths:
# stride 2 at the widest size, the most channels, 5x5, 7x7 and dilation 4. The CI machine has 2 cores
# for the whole suite.
FEW = [(112, 96, 3, 2, 1), (14, 576, 3, 1, 1), *OTHERS]
GRID = compile_grid(
    ("v5e",), MOBILENET_V2 + OTHERS, _name, keep=lambda chip, dtype: dtype == "bfloat16"
) + compile_grid(CHIPS, FEW, _name, keep=lambda chip, dtype: (chip == "v5e") != (dtype == "bfloat16"))


@pytest.mark.parametrize("chip, layer, dtype", GRID)
def test_forward_and_training_compile_for_tpu(chip, layer, dtype):
    """Forward with a fused epilogue, and the whole training vjp (recomputed forward, input and kernel gradients)."""
    x, kernel, bias = _args(chip, layer, dtype)
    conv = _conv(layer)
    forward = jax.jit(conv).lower(x, kernel, bias).compile()
    assert len(_kernels(forward)) == 1
    assert "convolution(" not in forward.as_text()

    def training(x, kernel, bias):
        y, vjp = jax.vjp(conv, x, kernel, bias)
        return y, *vjp(y)

    compiled = jax.jit(training).lower(x, kernel, bias).compile()
    names = " ".join(_kernels(compiled))
    assert "jdw_depthwise_forward" in names and "jdw_depthwise_kernel_grad" in names
    assert "convolution(" not in compiled.as_text()


@pytest.mark.parametrize("activation", sorted(jdw.kernels.pallas_depthwise.EPILOGUES))
def test_every_epilogue_compiles_for_tpu(activation):
    x, kernel, bias = _args("v5e", (28, 192, 3, 2, 1), "bfloat16")
    compiled = jax.jit(_conv((28, 192, 3, 2, 1), activation)).lower(x, kernel, bias).compile()
    assert len(_kernels(compiled)) == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer", MOBILENET_V2, ids=_name)
def test_forward_moves_the_stored_minimum(layer, dtype):
    """Read x once and write y once, as the chip stores them: no pad, phase split, crop or relayout pass.

    XLA stores these activations in four layouts (channels, width or images on the sublanes
    and lanes); :func:`jdw.kernels.pallas_depthwise.tpu_layout` follows each.
    """
    x, kernel, _ = _args("v5e", layer, dtype)
    _, _, _, stride, _ = layer
    f = jax.jit(lambda x, k: jdw.depthwise_conv(x, k, strides=stride, implementation="pallas"))
    compiled = f.lower(x, kernel).compile()
    params, results = traffic.entry_arrays(compiled)
    minimum = traffic.stored_bytes(params[0]) + traffic.stored_bytes(results[0])
    moved = traffic.hbm_bytes(compiled)["total"]
    assert moved <= 1.01 * minimum, (moved, minimum)


def test_traffic_counts_tile_padding_and_skips_vmem():
    assert traffic.stored_bytes("f32[2,5,130]{2,1,0:T(8,128)}") == 2 * 8 * 256 * 4
    assert traffic.stored_bytes("bf16[4,3]{0,1:T(8,128)(2,1)}") == 8 * 128 * 2  # minor dim first: (3, 4) tiled
    text = """
ENTRY %main (x: f32[8,128]) -> f32[8,128] {
  %x = f32[8,128]{1,0:T(8,128)} parameter(0)
  %a = f32[8,128]{1,0:T(8,128)S(1)} copy(%x)
  ROOT %b = f32[8,128]{1,0:T(8,128)} negate(%a)
}
"""
    assert traffic.hbm_bytes(text) == {"total": 2 * 4096, "copy": 4096, "negate": 4096}


def test_unknown_chip_is_named():
    with pytest.raises(ValueError, match=r"unknown TPU chip 'v9'; known: v4, v5e, v5p, v6e"):
        traffic.tpu_device("v9")


def test_bench_reports_compiled_traffic(capsys):
    from jdw import bench

    assert bench.main(["--target", "v5e", "--layers", "14x14x384/s1", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "HBM bytes of the compiled programs, batch 8" in out
    pallas = next(line for line in out.splitlines() if line.startswith("| 14x14x384/s1") and "pallas" in line)
    assert "| 1.00x" in pallas  # the forward moves exactly its input and output


@pytest.mark.parametrize("variant", ["plain", "state", "segments"])
def test_causal_conv1d_compiles_for_tpu(variant):
    """A Mamba layer (kernel 4, SiLU) through Mosaic, the chunk with a state through the causal kernel (which
    reads the state in place); with segment ids, the masked tap sum in one XLA fusion. Each moves ``x`` and ``y``
    once."""
    conv, args = mamba_conv_program(traffic.tpu_device("v5e"), variant)
    x = args[0]
    forward = jax.jit(conv).lower(*args).compile()
    kernels = _kernels(forward)
    assert len(kernels) == (0 if variant == "segments" else 1)
    assert ("jdw_causal_conv1d_tpu_forward" in "".join(kernels)) == (variant == "state")
    moved, minimum = traffic.hbm_bytes(forward)["total"], 2 * traffic.logical_bytes(x)
    assert moved <= 1.01 * minimum, (moved, minimum)
    training_program(conv).lower(*args).compile()


@pytest.mark.parametrize("shape", [(32, 2048, 1536), (8, 8192, 5120)], ids=lambda s: "x".join(map(str, s)))
def test_causal_kernel_reads_the_state_in_place_for_tpu(shape):
    """A chunk with a state through the TPU causal kernel moves x and y once at sizes where XLA's concatenation
    of the state in front of the chunk no longer fits in VMEM (it moved 2.0x and 3.0x the minimum there)."""
    sharding = jax.sharding.SingleDeviceSharding(traffic.tpu_device("v5e"))
    batch, length, channels = shape
    spec = lambda *dims: jax.ShapeDtypeStruct(dims, "bfloat16", sharding=sharding)  # noqa: E731
    args = spec(*shape), spec(4, 1, channels), spec(channels), spec(batch, 3, channels)

    def conv(x, kernel, bias, state):
        return jdw.causal_conv1d(x, kernel, bias, activation="silu", initial_state=state, implementation="pallas")

    forward = jax.jit(conv).lower(*args).compile()
    assert ["jdw_causal_conv1d_tpu_forward" in k for k in _kernels(forward)] == [True]
    moved, minimum = traffic.hbm_bytes(forward)["total"], 2 * traffic.logical_bytes(args[0])
    assert moved <= 1.01 * minimum, (moved, minimum)


def test_float16_takes_xla_on_tpu():
    """Mosaic compiles no float16 loads: float16 layers and chunks get XLA's convolution in the TPU program
    (and on a TPU, implementation="pallas" says why) instead of failing inside Mosaic."""
    from jdw.backends import pallas

    sharding = jax.sharding.SingleDeviceSharding(traffic.tpu_device("v5e"))
    spec = lambda *dims: jax.ShapeDtypeStruct(dims, "float16", sharding=sharding)  # noqa: E731
    image = jax.jit(lambda x, k: jdw.depthwise_conv(x, k, implementation="pallas"))
    chunk = jax.jit(lambda x, k, s: jdw.causal_conv1d(x, k, initial_state=s, implementation="pallas"))
    for program, args in (
        (image, (spec(8, 16, 16, 64), spec(3, 3, 1, 64))),
        (chunk, (spec(2, 64, 128), spec(4, 1, 128), spec(2, 3, 128))),
    ):
        assert _kernels(program.lower(*args).compile()) == []
    with pytest.raises(ValueError, match="take float32 or bfloat16, got float16"):
        pallas._check_tpu_dtypes(jax.numpy.ones(2, "float16"))
