"""The Pallas kernels through an NVIDIA GPU's real compiler, on this CPU machine (JAX's CUDA plugin, no GPU).

``jax.export`` (``test_pallas.py``) stops at StableHLO; here every program is compiled for an
H100 and an A100 exactly as on the card (XLA's GPU pipeline, the Triton kernels lowered to
PTX), and ``ptxas`` assembles each kernel for the card's architecture and reports its
registers and spills. The compiled programs also say how many bytes they move
(:mod:`jdw.traffic`): the forward must move no more than its input and output.
"""

from __future__ import annotations

import pytest

pytest.importorskip("jax_cuda12_plugin", reason="compiling for GPU without one needs JAX's CUDA plugin (test extra)")

import jax  # noqa: E402
import jaxlib  # noqa: E402
from helpers import compile_grid, mamba_conv_program, training_program  # noqa: E402
from jax_cuda12_plugin import version as plugin_version  # noqa: E402

import jdw  # noqa: E402
import jdw.kernels.pallas_depthwise  # noqa: E402  (jdw imports the Pallas kernels on first use)
from jdw import traffic  # noqa: E402

if plugin_version.__version__ != jaxlib.__version__:
    pytest.skip(
        f"jax-cuda12-plugin {plugin_version.__version__} is not jaxlib {jaxlib.__version__}'s", allow_module_level=True
    )

CHIPS = ("h100", "a100")
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
# Three programs of GPU_WARPS warps per SM need at most 65536 / (3 * 128) registers per thread.
MAX_REGISTERS = 65536 // (3 * 32 * jdw.kernels.pallas_depthwise.GPU_WARPS)


def _name(layer) -> str:
    size, channels, kernel, stride, dilation = layer
    return f"{size}x{size}x{channels}-k{kernel}-s{stride}-d{dilation}"


def _args(chip, layer, dtype, batch=BATCH):
    size, channels, kernel, _, _ = layer
    sharding = jax.sharding.SingleDeviceSharding(traffic.gpu_device(chip))
    shape = lambda *dims: jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)  # noqa: E731
    return shape(batch, size, size, channels), shape(kernel, kernel, 1, channels), shape(channels)


def _conv(layer, activation="relu6"):
    _, _, _, stride, dilation = layer

    def conv(x, kernel, bias):
        return jdw.depthwise_conv(
            x, kernel, bias, strides=stride, dilation=dilation, activation=activation, implementation="pallas"
        )

    return conv


def _training(conv):
    def training(x, kernel, bias):
        y, vjp = jax.vjp(conv, x, kernel, bias)
        return y, *vjp(y)

    return training


def _kernels(compiled) -> list[str]:
    return [line for line in compiled.as_text().splitlines() if "__gpu$xla.gpu.triton" in line]


# Every layer on A100 in float32 (its sm_80 float32 kernels use the most registers) and on H100 in
# bfloat16; H100 float32 on the layers that take other code paths (stride 2 at the widest size, the
# most channels, 5x5, 7x7, dilation 4). The CI machine has 2 cores for the whole suite.
FEW = [(112, 96, 3, 2, 1), (14, 576, 3, 1, 1), *OTHERS]
GRID = compile_grid(
    CHIPS, MOBILENET_V2 + OTHERS, _name, keep=lambda chip, dtype: (chip == "h100") == (dtype == "bfloat16")
) + compile_grid(("h100",), FEW, _name, keep=lambda chip, dtype: dtype == "float32")


@pytest.mark.parametrize("chip, layer, dtype", GRID)
def test_forward_and_training_compile_without_spills(chip, layer, dtype):
    """Forward with a fused epilogue and the whole training vjp; every kernel assembled by ptxas, none spilling."""
    args = _args(chip, layer, dtype)
    conv = _conv(layer)
    forward, forward_report = traffic.ptxas_report(jax.jit(conv).lower(*args))
    assert len(_kernels(forward)) == 1 and "cudnn" not in forward.as_text()
    training, training_report = traffic.ptxas_report(jax.jit(_training(conv)).lower(*args))
    names = " ".join(_kernels(training))
    assert "jdw_depthwise_forward" in names and "jdw_depthwise_kernel_grad" in names
    assert "cudnn" not in training.as_text()
    reports = forward_report + training_report
    assert {r["kernel"].split("__")[0] for r in reports} == {"jdw_depthwise_forward", "jdw_depthwise_kernel_grad"}
    for report in reports:
        assert report["spill_stores"] == report["spill_loads"] == 0, report
        assert report["registers"] <= MAX_REGISTERS, report


@pytest.mark.parametrize("activation", sorted(jdw.kernels.pallas_depthwise.EPILOGUES))
def test_every_epilogue_compiles_for_gpu(activation):
    args = _args("h100", (28, 192, 3, 2, 1), "bfloat16")
    compiled, report = traffic.ptxas_report(jax.jit(_conv((28, 192, 3, 2, 1), activation)).lower(*args))
    assert len(_kernels(compiled)) == 1 and report[0]["spill_stores"] == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer", MOBILENET_V2 + OTHERS, ids=_name)
def test_forward_moves_the_minimum(layer, dtype):
    """Read x once and write y once: no pad, crop or padding to powers of two around the kernel."""
    x, kernel, _ = _args("h100", layer, dtype)
    _, _, _, stride, dilation = layer
    f = jax.jit(lambda x, k: jdw.depthwise_conv(x, k, strides=stride, dilation=dilation, implementation="pallas"))
    compiled = f.lower(x, kernel).compile()
    y = jax.eval_shape(f, x, kernel)
    moved = traffic.hbm_bytes(compiled)["total"]
    minimum = traffic.logical_bytes(x, y)
    assert moved <= 1.01 * minimum, (moved, minimum)


def test_training_reads_the_cotangent_in_place():
    """The stride-2 input gradient reads dy where it is: no dilated cotangent is written to HBM."""
    layer = (112, 96, 3, 2, 1)
    x, kernel, bias = _args("h100", layer, "bfloat16")
    conv = _conv(layer, activation=None)
    compiled = jax.jit(_training(conv)).lower(x, kernel, bias).compile()
    moved = traffic.hbm_bytes(compiled)
    y = jax.eval_shape(conv, x, kernel, bias)
    # forward, input gradient and kernel gradient: each reads and writes x- or y-sized arrays once
    assert moved["custom-call"] <= 1.05 * 3 * traffic.logical_bytes(x, y), moved
    assert " pad(" not in compiled.as_text()


def test_a_batch_past_two_gigaelements_compiles_with_64_bit_offsets():
    """Triton's offsets are 32-bit unless an array passes 4 GiB, where Pallas switches them to 64 bits."""
    layer = (112, 96, 3, 2, 1)
    args = _args("h100", layer, "float32", batch=1600)  # 1600 x 112 x 112 x 96 x 4 bytes = 7.7 GB
    compiled, report = traffic.ptxas_report(jax.jit(_conv(layer)).lower(*args))
    assert len(_kernels(compiled)) == 1 and report[0]["spill_stores"] == 0


def test_unknown_gpu_is_named():
    with pytest.raises(ValueError, match=r"unknown GPU chip 'v100'; known: h100, a100"):
        traffic.gpu_device("v100")


def test_bench_reports_compiled_gpu_traffic(capsys):
    from jdw import bench

    assert bench.main(["--target", "h100", "--layers", "56x56x144/s2", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "HBM bytes of the compiled programs, batch 8" in out
    pallas = next(line for line in out.splitlines() if line.startswith("| 56x56x144/s2") and "pallas" in line)
    assert "| 1.00x" in pallas


@pytest.mark.parametrize("variant", ["plain", "state", "segments"])
def test_causal_conv1d_compiles_and_moves_the_minimum(variant):
    """A Mamba layer (kernel 4, SiLU) through the Triton kernels (the causal one with a state); with segment ids,
    the masked tap sum in one fusion."""
    conv, args = mamba_conv_program(traffic.gpu_device("h100"), variant)
    x = args[0]
    forward, report = traffic.ptxas_report(jax.jit(conv).lower(*args))
    assert all(r["spill_stores"] == 0 for r in report)
    moved = traffic.hbm_bytes(forward)["total"]
    minimum = 2 * traffic.logical_bytes(x)
    # with a state, the causal kernel reads it in place (no concatenation in front of the chunk)
    if variant == "state":
        assert [r["kernel"] for r in report] == ["jdw_causal_conv1d_forward"]
    assert moved <= 1.01 * minimum, (moved, minimum)
    training_program(conv).lower(*args).compile()


def test_bench_reports_compiled_sequence_traffic(capsys):
    from jdw import bench

    argv = ["--suite", "sequence", "--target", "h100", "--layers", "2x256x64/k4", "--dtype", "bfloat16"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "# jdw.bench --suite sequence --target h100" in out
    rows = {tuple(c.strip() for c in line.split("|")[2:4]): line for line in out.splitlines() if "2x256x64/k4" in line}
    assert set(rows) == {(impl, call) for impl in ("xla", "pallas") for call in ("sequence", "chunk + state", "packed")}
    assert "| 1.00x" in rows["pallas", "sequence"]  # the kernel reads x and writes y, nothing else


def test_packed_training_moves_a_fraction_of_the_references_bytes():
    """Conformer-S with segment ids (kernel 31): the masked tap sums' own derivatives against JAX's derivative
    of the masked sum (one padded array per tap), compiled for an H100 and counted."""
    import jdw

    device = traffic.gpu_device("h100")
    sharding = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((8, 500, 256), "bfloat16", sharding=sharding)
    kernel, ids = (
        jax.ShapeDtypeStruct((31, 1, 256), "bfloat16", sharding=sharding),
        jax.ShapeDtypeStruct((8, 500), "int32", sharding=sharding),
    )

    def moved(implementation):
        def training(x, kernel, ids, dy):
            f = lambda x, k: jdw.causal_conv1d(x, k, activation="silu", segment_ids=ids, implementation=implementation)  # noqa: E731
            y, vjp = jax.vjp(f, x, kernel)
            return y, *vjp(dy)

        return traffic.hbm_bytes(jax.jit(training).lower(x, kernel, ids, x).compile())["total"]

    minimum = 4 * traffic.logical_bytes(x)  # x, y, dy, dx
    fast, reference = moved("taps"), moved("xla")
    assert fast <= 7.5 * minimum and reference >= 3 * fast, (fast / minimum, reference / minimum)
