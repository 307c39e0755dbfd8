"""Benchmark of depthwise convolution backends on the depthwise layers of MobileNetV2, EfficientNet-B0 and ConvNeXt-T.

Run ``python -m jdw.bench`` (``--help`` for options). For every layer shape and
backend it times, each as its own jitted program: the forward pass, the input
gradient, the kernel gradient, and forward + backward together. It reports
milliseconds, the forward pass's effective memory bandwidth (input + output +
kernel bytes over time), its cost in units of one elementwise pass over the input
(``y = x * a + b``: the memory-bound floor), and speedups over ``"xla"`` measured in
the same run. On accelerators whose memory bandwidth is known (or given with
``--peak-gbps``) it also reports the fraction of it the forward pass reaches. It also times how
long the forward + backward program takes to trace, lower and compile (what a first call waits),
against the ``"xla"`` path's.
``--json`` prints machine-readable records instead of the table.

``--target v5e`` (or ``v6e``, ``v4``, ``v5p``, or the GPUs ``h100``, ``a100``) times nothing:
it compiles every program for that chip without the hardware (libtpu's compile-only TPU
devices, JAX's CUDA plugin for GPUs; see :mod:`jdw.traffic`) and reports the HBM bytes
each compiled program moves, against the minimum (read ``x``, write ``y``; training also
reads ``dy`` and writes ``dx``), and the time that traffic takes at the chip's memory
bandwidth.

``--compare torch`` times jdw (the automatic path, or the first of ``--implementations``)
against PyTorch's ``F.conv2d(groups=C)`` on channels_last tensors and its
``convolution_backward``, after checking both compute the same numbers, alternating the two
in this process (each side first running until the other's spinning threads have settled); it
reports each side's median and the ratio jdw / torch, per layer and for the network
(``pip install "jdw[bench]"``). For it the command runs JAX's CPU computations inline on the
calling thread (``jax_cpu_enable_async_dispatch=False``), as PyTorch runs its own: JAX's default
hands every call to another thread and wakes the caller when it ends, which on this 2-core VM
adds 40-100 us to every call, a third of a small layer's time, and which does not happen between
the layers of one jitted model. ``--jax-async-dispatch`` keeps JAX's default; the headers say which.

On Linux the command starts itself again under tcmalloc where one is installed
(``apt-get install libtcmalloc-minimal4``), as the training command line does, and the headers
name the malloc: glibc's maps XLA:CPU's large buffers afresh on every call, so that page faults
set the large layers' times (on both sides of ``--compare torch``; one layer measured 0.6x or 26x
PyTorch's time depending on what ran before it). ``JDW_TCMALLOC=0`` keeps the system's malloc.

By default every registered backend that runs compiled on this platform is timed; the
``"pallas"`` kernel runs in Pallas's interpreter on CPU, which says nothing about speed,
so there it is timed only when named in ``--implementations``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jdw
from jdw import backends, traffic


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One depthwise layer: input ``size x size x channels``, ``kernel x kernel``, stride; ``count`` in the network."""

    size: int
    channels: int
    stride: int
    kernel: int = 3
    count: int = 1

    @property
    def name(self) -> str:
        kernel = "" if self.kernel == 3 else f"/k{self.kernel}"
        return f"{self.size}x{self.size}x{self.channels}/s{self.stride}{kernel}"


# The 17 depthwise layers of MobileNetV2 at 224x224 (10 distinct shapes; ``count`` repeats).
MOBILENET_V2 = (
    LayerShape(112, 32, 1),
    LayerShape(112, 96, 2),
    LayerShape(56, 144, 1),
    LayerShape(56, 144, 2),
    LayerShape(28, 192, 1, count=2),
    LayerShape(28, 192, 2),
    LayerShape(14, 384, 1, count=4),
    LayerShape(14, 576, 1, count=2),
    LayerShape(14, 576, 2),
    LayerShape(7, 960, 1, count=3),
)
# The 16 depthwise layers of EfficientNet-B0 at 224x224 (3x3 and 5x5, 11 distinct shapes).
EFFICIENTNET_B0 = (
    LayerShape(112, 32, 1),
    LayerShape(112, 96, 2),
    LayerShape(56, 144, 1),
    LayerShape(56, 144, 2, kernel=5),
    LayerShape(28, 240, 1, kernel=5),
    LayerShape(28, 240, 2),
    LayerShape(14, 480, 1, count=2),
    LayerShape(14, 480, 1, kernel=5),
    LayerShape(14, 672, 1, kernel=5, count=2),
    LayerShape(14, 672, 2, kernel=5),
    LayerShape(7, 1152, 1, kernel=5, count=3),
    LayerShape(7, 1152, 1),
)
# The 18 depthwise layers of ConvNeXt-T at 224x224 (7x7, 4 distinct shapes).
CONVNEXT_T = (
    LayerShape(56, 96, 1, kernel=7, count=3),
    LayerShape(28, 192, 1, kernel=7, count=3),
    LayerShape(14, 384, 1, kernel=7, count=9),
    LayerShape(7, 768, 1, kernel=7, count=3),
)
SUITES = {"mobilenet": MOBILENET_V2, "efficientnet": EFFICIENTNET_B0, "convnext": CONVNEXT_T}
PARTS = ("forward", "input_grad", "kernel_grad", "forward_backward")

# Peak memory bandwidth in GB/s by ``device_kind`` (vendor data sheets), for the bandwidth fraction.
PEAK_GBPS = {
    "NVIDIA H100 80GB HBM3": 3350.0,
    "NVIDIA H100 PCIe": 2000.0,
    "NVIDIA H200": 4800.0,
    "NVIDIA A100-SXM4-80GB": 2039.0,
    "NVIDIA A100-SXM4-40GB": 1555.0,
    "NVIDIA L4": 300.0,
    "Tesla T4": 320.0,
    "TPU v4": 1228.0,
    "TPU v5 lite": 819.0,
    "TPU v5e": 819.0,
    "TPU v5p": 2765.0,
    "TPU v6 lite": 1640.0,
    "TPU v6e": 1640.0,
}


def default_implementations(platform: str | None = None) -> list[str]:
    """Backends worth timing on ``platform``: all but those that would only be interpreted there."""
    platform = platform or jax.default_backend()
    compiled_pallas = platform in ("tpu", "gpu", "cuda")
    return [name for name in backends.available() if name != "pallas" or compiled_pallas]


def _compile_seconds(fn: Callable, args: Sequence) -> float:
    """Seconds to trace, lower and compile ``fn`` (a ``jax.jit`` function) for ``args``: what a first call waits."""
    start = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - start


def _time(fn: Callable, args: Sequence, repeats: int) -> float:
    """Best wall time in ms over ``repeats`` runs after one warm-up (which compiles)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _time_carried(step: Callable, state: jax.Array, repeats: int, calls: int = 20) -> float:
    """Best wall time in ms per call of ``out, state = step(state, i)`` (``state`` donated), over ``repeats`` runs."""
    _, state = jax.block_until_ready(step(state + 0, 0))  # compiles; the copy keeps the caller's array
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            out, state = step(state, i)
        jax.block_until_ready((out, state))
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def _step_of(layers: Callable, tokens: jax.Array, kernels: jax.Array, state: jax.Array, i) -> tuple:
    return layers(tokens, state, kernels, i)


def _programs(layer: LayerShape, implementation: str | None, padding="SAME"):
    conv = lambda x, k: jdw.depthwise_conv(  # noqa: E731
        x, k, strides=layer.stride, padding=padding, implementation=implementation
    )
    return {
        "forward": jax.jit(conv),
        "input_grad": jax.jit(lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)),
        "kernel_grad": jax.jit(lambda x, k, dy: jax.vjp(lambda k: conv(x, k), k)[1](dy)),
        "forward_backward": jax.jit(lambda x, k, dy: jax.vjp(conv, x, k)[1](dy)),
    }


def run(
    layers: Sequence[LayerShape] = MOBILENET_V2,
    implementations: Sequence[str] | None = None,
    *,
    batch: int = 32,
    dtype: str = "float32",
    repeats: int = 5,
    parts: Sequence[str] = PARTS,
    peak_gbps: float | None = None,
) -> list[dict]:
    """Times every backend on every layer; returns one record per (layer, backend).

    Examples:
      >>> from jdw import bench
      >>> records = bench.run([bench.LayerShape(8, 16, 1)], ["xla"], batch=2, repeats=1, parts=["forward"])
      >>> sorted(records[0])[:4]
      ['batch', 'bytes', 'channels', 'count']
    """
    implementations = list(implementations or default_implementations())
    device = jax.devices()[0]
    peak_gbps = peak_gbps or PEAK_GBPS.get(device.device_kind)
    rng = np.random.default_rng(0)
    records = []
    for layer in layers:
        x = jnp.asarray(rng.standard_normal((batch, layer.size, layer.size, layer.channels)), dtype)
        k = jnp.asarray(rng.standard_normal((layer.kernel, layer.kernel, 1, layer.channels)), dtype)
        out_size = -(-layer.size // layer.stride)
        dy = jnp.asarray(rng.standard_normal((batch, out_size, out_size, layer.channels)), dtype)
        elementwise = _time(jax.jit(lambda x: x * 1.5 + 0.5), (x,), repeats)
        nbytes = x.nbytes + dy.nbytes + k.nbytes
        for name in implementations:
            programs = _programs(layer, name)
            record = dict(
                layer=layer.name,
                size=layer.size,
                channels=layer.channels,
                stride=layer.stride,
                kernel=layer.kernel,
                count=layer.count,
                batch=batch,
                dtype=dtype,
                implementation=name,
                platform=jax.default_backend(),
                bytes=nbytes,
                elementwise_ms=elementwise,
            )
            if "forward_backward" in parts:  # before anything compiled this program
                record["forward_backward_compile_s"] = _compile_seconds(programs["forward_backward"], (x, k, dy))
            for part in parts:
                args = (x, k) if part == "forward" else (x, k, dy)
                record[f"{part}_ms"] = _time(programs[part], args, repeats)
            if "forward_ms" in record:
                record["forward_gbps"] = nbytes / record["forward_ms"] / 1e6
                record["forward_elementwise_passes"] = record["forward_ms"] / elementwise
                if peak_gbps:
                    record["forward_bandwidth_fraction"] = record["forward_gbps"] / peak_gbps
            records.append(record)
    for record in records:
        reference = next((r for r in records if r["layer"] == record["layer"] and r["implementation"] == "xla"), None)
        for part in parts:
            if reference is not None:
                record[f"{part}_speedup_vs_xla"] = reference[f"{part}_ms"] / record[f"{part}_ms"]
        if reference is not None and "forward_backward_compile_s" in record:
            record["compile_vs_xla"] = record["forward_backward_compile_s"] / reference["forward_backward_compile_s"]
    return records


def _torch_programs(layer: LayerShape, torch_dtype):
    """PyTorch's depthwise convolution (``F.conv2d(groups=C)``, channels_last, oneDNN on CPU) for each part."""
    import torch
    import torch.nn.functional as F

    stride, pad = (layer.stride,) * 2, (layer.kernel // 2,) * 2
    conv = lambda x, w: F.conv2d(x, w, stride=stride, padding=pad, groups=layer.channels)  # noqa: E731

    def backward(x, w, dy, mask):
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, stride, pad, (1, 1), False, (0, 0), layer.channels, mask
        )

    def forward_backward(x, w, dy):
        return (conv(x, w), *backward(x, w, dy, (True, True, False))[:2])

    return {  # tuples of results, in the order jdw's programs give them (jax.tree.leaves)
        "forward": lambda x, w: (conv(x, w),),
        "input_grad": lambda x, w, dy: backward(x, w, dy, (True, False, False))[:1],
        "kernel_grad": lambda x, w, dy: backward(x, w, dy, (False, True, False))[1:2],
        "forward_backward": forward_backward,
    }


# PyTorch's OpenMP threads (libgomp) spin for a while after each call before they sleep, and on a
# small machine they then hold the cores the next call of the other library needs: measured on 2
# cores, a jdw call right after a torch call took up to 2.4x its time (torch unchanged; with
# OMP_WAIT_POLICY=PASSIVE, which stops the spinning, the gap closed). XLA's threads do the same, more
# briefly. So each side first runs until the other's threads have settled.
_SETTLE_MS = 10.0
# Then calls are timed for at least this long (and at least three): with three calls per round, a
# 0.3-1 ms layer's ratio moved up to 2.3x between runs of the same build on a shared 2-core machine.
_TIMED_MS = 20.0


def _settled_ms(fn: Callable, timed: int = 3) -> float:
    """``fn``'s median ms over at least ``timed`` calls and ``_TIMED_MS``, after calls of it for ``_SETTLE_MS``."""
    start = time.perf_counter()
    fn()
    while (time.perf_counter() - start) * 1e3 < _SETTLE_MS:
        fn()
    times: list[float] = []
    while len(times) < timed or sum(times) < _TIMED_MS:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def compare_torch(
    layers: Sequence[LayerShape] = MOBILENET_V2,
    implementation: str | None = None,
    *,
    batch: int = 32,
    dtype: str = "float32",
    repeats: int = 5,
    parts: Sequence[str] = PARTS,
) -> list[dict]:
    """Times jdw (``implementation``; ``None`` is the automatic path) against PyTorch on every layer.

    PyTorch runs ``F.conv2d(groups=C)`` on channels_last tensors and its backward as
    ``aten.convolution_backward`` (the kernel ``loss.backward()`` calls), with the
    symmetric padding ``kernel // 2`` both use here. Each part first checks that both
    compute the same numbers, then runs ``repeats`` rounds that alternate jdw and
    PyTorch, so both see the same machine load. In a round each side runs for 10 ms
    untimed (until the other side's threads, which spin after a call, have settled),
    then the median of its timed calls (at least three, and at least 20 ms of them) gives
    its time; the record has each side's median over the
    rounds and ``{part}_ratio`` = jdw / torch (below 1: jdw is faster). Needs ``torch``
    (``pip install jdw[torch]``).

    Examples:
      >>> from jdw import bench
      >>> records = bench.compare_torch([bench.LayerShape(8, 16, 1)], batch=2, repeats=1, parts=["forward"])
      >>> records[0]["forward_ratio"] > 0
      True
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("compare_torch needs PyTorch: pip install 'jdw[torch]'") from error
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tolerance = 1e-3 if dtype == "float32" else 5e-2
    rng = np.random.default_rng(0)
    context = _cpu_context()
    records = []
    for layer in layers:
        pad = ((layer.kernel // 2,) * 2,) * 2
        x = rng.standard_normal((batch, layer.size, layer.size, layer.channels)).astype(np.float32)
        k = rng.standard_normal((layer.kernel, layer.kernel, 1, layer.channels)).astype(np.float32)
        out_size = (layer.size + 2 * (layer.kernel // 2) - layer.kernel) // layer.stride + 1
        dy = rng.standard_normal((batch, out_size, out_size, layer.channels)).astype(np.float32)

        programs = _programs(layer, implementation, padding=pad)
        # PyTorch's forward + backward computes y; jdw's gradient-only program would let XLA drop it.
        programs["forward_backward"] = jax.jit(
            lambda x, k, dy, forward=programs["forward"], backward=programs["forward_backward"]: (
                forward(x, k),
                backward(x, k, dy),
            )
        )
        jax_args = [jnp.asarray(a, dtype) for a in (x, k, dy)]
        nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).to(torch_dtype)  # noqa: E731
        torch_args = [
            nchw(x).contiguous(memory_format=torch.channels_last),
            torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).to(torch_dtype),
            nchw(dy).contiguous(memory_format=torch.channels_last),
        ]
        torch_programs = _torch_programs(layer, torch_dtype)
        record = dict(layer=layer.name, count=layer.count, batch=batch, dtype=dtype,
                      implementation=implementation or "automatic", torch=torch.__version__,
                      torch_threads=torch.get_num_threads(), **context)  # fmt: skip
        for part in parts:
            n = 2 if part == "forward" else 3
            jax_fn = lambda fn=programs[part], a=jax_args[:n]: jax.block_until_ready(fn(*a))  # noqa: E731
            torch_fn = lambda fn=torch_programs[part], a=torch_args[:n]: fn(*a)  # noqa: E731
            record.update(_against_torch(part, layer.name, jax_fn, torch_fn, tolerance, repeats))
        records.append(record)
    return records


# The layout of each result of each part, PyTorch's (NCHW activations, OIHW kernels) to jdw's.
_NHWC, _HWIO = (0, 2, 3, 1), (2, 3, 1, 0)
_RESULT_LAYOUTS = {
    "forward": (_NHWC,), "input_grad": (_NHWC,), "kernel_grad": (_HWIO,), "forward_backward": (_NHWC, _NHWC, _HWIO),
}  # fmt: skip


def _check_same(part: str, name: str, mine, theirs, tolerance: float, layouts: dict = _RESULT_LAYOUTS) -> None:
    """jdw's and PyTorch's results of ``part`` on layer ``name`` agree (PyTorch's brought to jdw's ``layouts``)."""
    for got, want, order in zip(jax.tree.leaves(mine), theirs, layouts[part], strict=True):
        want = want.float().numpy().transpose(order)
        got = np.asarray(got, np.float32)
        error = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1.0)
        if error > tolerance:
            raise AssertionError(f"{name} {part}: jdw and PyTorch differ by {error:.2e} (relative to the max)")


def _against_torch(
    part: str,
    name: str,
    jax_fn: Callable,
    torch_fn: Callable,
    tolerance: float,
    repeats: int,
    layouts: dict = _RESULT_LAYOUTS,
) -> dict:
    """``part``'s record fields: both sides checked equal, then ``repeats`` alternating rounds of ``_settled_ms``."""
    import torch

    with torch.no_grad():
        mine, theirs = jax_fn(), torch_fn()  # also the warm-up (jdw compiles here)
        _check_same(part, name, mine, theirs, tolerance, layouts)
        jax_times, torch_times = [], []
        for _ in range(repeats):
            for fn, times in ((jax_fn, jax_times), (torch_fn, torch_times)):
                times.append(_settled_ms(fn))
    mine_ms, torch_ms = float(np.median(jax_times)), float(np.median(torch_times))
    return {f"{part}_ms": mine_ms, f"{part}_torch_ms": torch_ms, f"{part}_ratio": mine_ms / torch_ms}


def _cpu_context() -> dict:
    """What sets CPU figures besides the loops: the instruction set the C++ loops run with, and malloc.

    Under glibc's malloc the large layers' times are mostly page faults, on both sides (XLA:CPU's
    buffers are mapped fresh on every call; see the performance page); under tcmalloc they are the
    loops'. ``LD_PRELOAD=libtcmalloc_minimal.so.4`` chooses it when the process starts.
    """
    from jdw.kernels import cpu_depthwise  # noqa: PLC0415
    from jdw.training.allocator import tcmalloc_loaded  # noqa: PLC0415

    return dict(
        instruction_set=cpu_depthwise.instruction_set(),
        malloc="tcmalloc" if tcmalloc_loaded() else "system",
        jax_dispatch="async" if jax.config.read("jax_cpu_enable_async_dispatch") else "inline",
    )


def _inline_cpu_dispatch() -> None:
    """JAX's CPU computations run on the calling thread, as PyTorch's do (before JAX's backends start).

    By default JAX hands each call to another thread and wakes the caller when it is done: on a
    busy 2-core VM that hand-off costs 40-100 us a call (measured here: 14x14x384 in bfloat16,
    0.41-0.43 ms async against 0.30 ms inline), which is JAX's runtime, not the layer, and does not
    occur between the layers inside one jitted model. The setting is read when the CPU backend
    starts, so afterwards this changes nothing (and ``_cpu_context`` reports what runs).
    """
    from jax._src import xla_bridge  # noqa: PLC0415

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_cpu_enable_async_dispatch", False)


def _torch_table(records: list[dict], parts: Sequence[str], total: str = "network") -> str:
    """Per layer and part: jdw's and PyTorch's medians and their ratio; then their ``count``-weighted ``total``."""
    head = ["layer", *[f"{part} jdw / torch ms (ratio)" for part in parts]]
    cell = lambda r, part: f"{r[f'{part}_ms']:.3f} / {r[f'{part}_torch_ms']:.3f} ({r[f'{part}_ratio']:.2f}x)"  # noqa: E731
    rows = [[r["layer"], *[cell(r, part) for part in parts]] for r in records]
    totals = []
    for part in parts:
        mine = sum(r[f"{part}_ms"] * r["count"] for r in records)
        theirs = sum(r[f"{part}_torch_ms"] * r["count"] for r in records)
        totals.append(f"{mine:.3f} / {theirs:.3f} ({mine / theirs:.2f}x)")
    rows.append([f"{total} ({sum(r['count'] for r in records)} layers)", *totals])
    return _markdown(head, rows)


@dataclasses.dataclass(frozen=True)
class SequenceShape:
    """One causal depthwise conv1d of a sequence model: ``(batch, length, channels)``, kernel width ``kernel``."""

    name: str
    batch: int
    length: int
    channels: int
    kernel: int


# Mamba's conv1d (d_inner = 2 * d_model: 1536 in Mamba-130M, 5120 in Mamba-2.8B) and Conformer's
# convolution module (kernel 31; 256 channels in Conformer-S, 512 in Conformer-L, 500 frames = 20 s).
SEQUENCES = (
    SequenceShape("mamba-130m", 2, 2048, 1536, 4),
    SequenceShape("mamba-2.8b", 1, 512, 5120, 4),
    SequenceShape("conformer-s", 8, 500, 256, 31),
    SequenceShape("conformer-l", 4, 500, 512, 31),
)


def run_sequences(
    shapes: Sequence[SequenceShape] = SEQUENCES,
    implementations: Sequence[str] | None = None,
    *,
    dtype: str = "float32",
    repeats: int = 5,
    decode_layers: int = 24,
    decode_batch: int = 8,
) -> list[dict]:
    """Times :func:`jdw.causal_conv1d` (SiLU fused) forward and forward + backward per backend, and a decoding step.

    Each backend runs whole sequences and packed ones (``segment_ids``, about four runs per
    row), each compared with the ``"xla"`` path's same call.

    The decoding step updates ``decode_layers`` layers' states at once (``vmap`` of
    :func:`jdw.causal_conv1d_update` over a ``(layers, decode_batch, W - 1, D)`` stack, one
    token per sequence), per backend, with the state in order and as a ring buffer. Each step
    continues from the previous one's state, donated, as a decoder's loop does; it is compared
    with one elementwise pass over that stack, into a new array (``decode_state_passes``) and in
    place (``decode_in_place_passes``).

    Examples:
      >>> from jdw import bench
      >>> shape = bench.SequenceShape("tiny", 1, 64, 8, 4)
      >>> records = bench.run_sequences([shape], ["xla"], repeats=1, decode_layers=2, decode_batch=1)
      >>> [(r["implementation"], r.get("packed"), r.get("state")) for r in records]
      [('xla', False, None), ('xla', True, None), ('decode', None, 'in order'), ('decode', None, 'ring buffer')]
    """
    implementations = list(implementations or default_implementations())
    rng = np.random.default_rng(0)
    records = []
    for shape in shapes:
        x = jnp.asarray(rng.standard_normal((shape.batch, shape.length, shape.channels)), dtype)
        k = jnp.asarray(rng.standard_normal((shape.kernel, 1, shape.channels)) * 0.3, dtype)
        b = jnp.zeros((shape.channels,), dtype)
        dy = jnp.asarray(rng.standard_normal(x.shape), dtype)
        elementwise = _time(jax.jit(lambda x: x * 1.5 + 0.5), (x,), repeats)
        base = dict(
            layer=shape.name, batch=shape.batch, length=shape.length, channels=shape.channels, kernel=shape.kernel
        )
        # Packed rows: runs of about a quarter of the row each (ids 0, 1, 2, ... as a tokenizer packs them).
        ids = jnp.asarray(np.sort(rng.integers(0, 4, (shape.batch, shape.length)), axis=1), jnp.int32)
        for name in implementations:
            for packed in (False, True):

                def conv(x, k, b, name=name, segments=ids if packed else None):
                    return jdw.causal_conv1d(x, k, b, activation="silu", segment_ids=segments, implementation=name)

                forward = jax.jit(conv)
                backward = jax.jit(lambda x, k, b, dy, conv=conv: jax.vjp(conv, x, k, b)[1](dy))
                record = dict(base, implementation=name, packed=packed, dtype=dtype, elementwise_ms=elementwise)
                record["forward_ms"] = _time(forward, (x, k, b), repeats)
                record["forward_backward_ms"] = _time(backward, (x, k, b, dy), repeats)
                records.append(record)
        mine = [r for r in records if r["layer"] == shape.name]
        # Each call against the xla path's same call (packed against its masked reference).
        for record in mine:
            reference = next(
                (r for r in mine if r["implementation"] == "xla" and r["packed"] == record["packed"]), None
            )
            for part in ("forward", "forward_backward"):
                record[f"{part}_elementwise_passes"] = record[f"{part}_ms"] / elementwise
                if reference is not None:
                    record[f"{part}_speedup_vs_xla"] = reference[f"{part}_ms"] / record[f"{part}_ms"]
        pad = shape.kernel - 1
        states = jnp.asarray(rng.standard_normal((decode_layers, decode_batch, pad, shape.channels)), dtype)
        tokens = jnp.asarray(rng.standard_normal((decode_layers, decode_batch, shape.channels)), dtype)
        kernels = jnp.broadcast_to(k, (decode_layers, *k.shape))
        state_pass = _time(jax.jit(lambda s: s * 1.5 + 0.5), (states,), repeats)
        in_place_pass = _time_carried(jax.jit(lambda s, i: (None, s * 1.5 + 0.5), donate_argnums=0), states, repeats)
        for name in implementations:
            for ring in (False, True):

                def update(t, s, k, p, name=name, ring=ring):
                    return jdw.causal_conv1d_update(
                        t, s, k, activation="silu", position=p if ring else None, implementation=name
                    )

                # Each step continues from the last one's state (donated: updated in place), as a decoder does.
                layers = jax.vmap(update, in_axes=(0, 0, 0, None))
                step = jax.jit(functools.partial(_step_of, layers, tokens, kernels), donate_argnums=0)
                decode_ms = _time_carried(step, states, repeats)
                # Per pass unit (pad reads and pad writes of a token row): reads of the state and the token, writes
                # of the output and the state (all of it in order, one token of it as a ring buffer).
                least = (pad + 3) / (2 * pad) if ring else (pad + 1) / pad
                records.append(
                    dict(
                        base,
                        implementation="decode",
                        backend=name,
                        state="ring buffer" if ring else "in order",
                        dtype=dtype,
                        decode_layers=decode_layers,
                        decode_batch=decode_batch,
                        decode_ms=decode_ms,
                        state_pass_ms=state_pass,
                        in_place_pass_ms=in_place_pass,
                        decode_state_passes=decode_ms / state_pass,
                        decode_in_place_passes=decode_ms / in_place_pass,
                        decode_minimum_passes=least,
                    )
                )
    return records


def _torch_sequence_programs(shape: SequenceShape, torch_dtype):
    """PyTorch's causal depthwise conv1d with SiLU as Mamba's reference writes it, on ``(batch, channels, length)``.

    ``F.conv1d(groups=D, padding=W - 1)`` cut to the first ``length`` outputs, then ``F.silu``;
    forward + backward is autograd's (``y.backward(dy)``), which returns ``y`` and the gradients
    of ``x``, the kernel and the bias.
    """
    import torch
    import torch.nn.functional as F

    def forward(x, w, b):
        return F.silu(F.conv1d(x, w, b, padding=shape.kernel - 1, groups=shape.channels)[..., : shape.length])

    def forward_backward(x, w, b, dy):
        with torch.enable_grad():
            leaves = [a.detach().requires_grad_() for a in (x, w, b)]
            y = forward(*leaves)
            y.backward(dy)
        return (y.detach(), *(a.grad for a in leaves))

    return {"forward": lambda x, w, b: (forward(x, w, b),), "forward_backward": forward_backward}


# The layout of each result, PyTorch's (batch, channels, length) activations and (D, 1, W) kernels to jdw's.
_NCL_TO_NLC, _DIW_TO_WID = (0, 2, 1), (2, 1, 0)
_SEQUENCE_LAYOUTS = {"forward": (_NCL_TO_NLC,), "forward_backward": (_NCL_TO_NLC, _NCL_TO_NLC, _DIW_TO_WID, (0,))}


def compare_torch_sequences(
    shapes: Sequence[SequenceShape] = SEQUENCES,
    implementation: str | None = None,
    *,
    dtype: str = "float32",
    repeats: int = 5,
    parts: Sequence[str] = ("forward", "forward_backward"),
) -> list[dict]:
    """Times :func:`jdw.causal_conv1d` (SiLU fused) against PyTorch's causal conv1d on every sequence shape.

    PyTorch runs what Mamba's reference implementation does on ``(batch, channels, length)``
    tensors: ``F.silu(F.conv1d(x, w, b, padding=W - 1, groups=D)[..., :L])``, and its
    backward through autograd. ``"forward_backward"`` is the output and the gradients of
    ``x``, the kernel and the bias on both sides. Checks and timing are those of
    :func:`compare_torch` (the numbers compared first, then rounds that alternate the two
    in one process); ``{part}_ratio`` = jdw / torch.

    Examples:
      >>> from jdw import bench
      >>> records = bench.compare_torch_sequences([bench.SequenceShape("tiny", 1, 64, 8, 4)], repeats=1)
      >>> records[0]["forward_backward_ratio"] > 0
      True
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("compare_torch_sequences needs PyTorch: pip install 'jdw[torch]'") from error
    unknown = set(parts) - {"forward", "forward_backward"}
    if unknown:
        raise ValueError(f"sequence parts are forward and forward_backward, got {sorted(unknown)}")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tolerance = 1e-3 if dtype == "float32" else 5e-2
    rng = np.random.default_rng(0)
    context = _cpu_context()
    records = []
    for shape in shapes:
        x = rng.standard_normal((shape.batch, shape.length, shape.channels)).astype(np.float32)
        k = (rng.standard_normal((shape.kernel, 1, shape.channels)) * 0.3).astype(np.float32)
        b = (rng.standard_normal((shape.channels,)) * 0.1).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)

        def conv(x, k, b):
            return jdw.causal_conv1d(x, k, b, activation="silu", implementation=implementation)

        def forward_backward(x, k, b, dy):
            y, pullback = jax.vjp(conv, x, k, b)
            return (y, *pullback(dy))

        programs = {"forward": jax.jit(lambda x, k, b: (conv(x, k, b),)), "forward_backward": jax.jit(forward_backward)}
        jax_args = [jnp.asarray(a, dtype) for a in (x, k, b, dy)]
        ncl = lambda a: torch.from_numpy(a.transpose(0, 2, 1).copy()).to(torch_dtype)  # noqa: E731
        torch_args = [ncl(x), torch.from_numpy(k.transpose(2, 1, 0).copy()).to(torch_dtype),
                      torch.from_numpy(b).to(torch_dtype), ncl(dy)]  # fmt: skip
        torch_programs = _torch_sequence_programs(shape, torch_dtype)
        record = dict(layer=shape.name, count=1, batch=shape.batch, length=shape.length, channels=shape.channels,
                      kernel=shape.kernel, dtype=dtype, implementation=implementation or "automatic",
                      torch=torch.__version__, torch_threads=torch.get_num_threads(), **context)  # fmt: skip
        for part in parts:
            n = 3 if part == "forward" else 4
            jax_fn = lambda fn=programs[part], a=jax_args[:n]: jax.block_until_ready(fn(*a))  # noqa: E731
            torch_fn = lambda fn=torch_programs[part], a=torch_args[:n]: fn(*a)  # noqa: E731
            record.update(_against_torch(part, shape.name, jax_fn, torch_fn, tolerance, repeats, _SEQUENCE_LAYOUTS))
        records.append(record)
    return records


def compiled_sequence_traffic(
    shapes: Sequence[SequenceShape] = SEQUENCES,
    implementations: Sequence[str] = ("xla", "pallas"),
    *,
    chip: str = "h100",
    dtype: str = "bfloat16",
) -> list[dict]:
    """HBM bytes of :func:`jdw.causal_conv1d` (SiLU) compiled for ``chip``: a whole sequence, a chunk continuing
    from a state, and packed sequences (``segment_ids``), forward and training (``vjp`` for ``x``, kernel and
    bias given ``dy``); one record per shape, backend and variant. Minimums: ``x`` and ``y`` once (training adds
    ``dy`` and ``dx``).
    """
    device = traffic.device(chip)
    sharding = jax.sharding.SingleDeviceSharding(device)
    records = []
    for shape in shapes:
        spec = lambda *dims, dtype=dtype: jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)  # noqa: E731
        x = spec(shape.batch, shape.length, shape.channels)
        k, b = spec(shape.kernel, 1, shape.channels), spec(shape.channels)
        extras = {
            "sequence": None,
            "chunk + state": spec(shape.batch, shape.kernel - 1, shape.channels),
            "packed": spec(shape.batch, shape.length, dtype="int32"),
        }
        for name in implementations:
            for variant, extra in extras.items():

                def conv(x, k, b, extra=None, name=name, variant=variant):
                    return jdw.causal_conv1d(
                        x,
                        k,
                        b,
                        activation="silu",
                        initial_state=extra if variant == "chunk + state" else None,
                        segment_ids=extra if variant == "packed" else None,
                        implementation=name,
                    )

                def training(x, k, b, dy, extra=None, conv=conv):
                    y, vjp = jax.vjp(lambda x, k, b: conv(x, k, b, extra), x, k, b)
                    return y, *vjp(dy)

                tail = () if extra is None else (extra,)
                record = dict(layer=shape.name, implementation=name, variant=variant, chip=chip, dtype=dtype)
                for part, fn, fn_args, arrays in (
                    ("forward", conv, (x, k, b, *tail), (x, x)),
                    ("training", training, (x, k, b, x, *tail), (x, x, x, x)),
                ):
                    compiled = jax.jit(fn).lower(*fn_args).compile()
                    record[f"{part}_hbm_bytes"] = traffic.hbm_bytes(compiled)["total"]
                    record[f"{part}_min_bytes"] = traffic.logical_bytes(*arrays)
                records.append(record)
    return records


def _sequence_traffic_table(records: list[dict]) -> str:
    head = ["shape", "impl", "call", "fwd MB", "fwd / min", "train MB", "train / min"]
    rows = [
        [
            r["layer"],
            r["implementation"],
            r["variant"],
            f"{r['forward_hbm_bytes'] / 1e6:.1f}",
            f"{r['forward_hbm_bytes'] / r['forward_min_bytes']:.2f}x",
            f"{r['training_hbm_bytes'] / 1e6:.1f}",
            f"{r['training_hbm_bytes'] / r['training_min_bytes']:.2f}x",
        ]
        for r in records
    ]
    return _markdown(head, rows)


def _sequence_table(records: list[dict]) -> str:
    head = ["shape", "impl", "call", "fwd ms", "fwd passes", "fwd vs xla"]
    head += ["fwd+bwd ms", "fwd+bwd passes", "fwd+bwd vs xla"]
    rows = []
    for r in records:
        if r["implementation"] == "decode":
            continue
        cells = [
            f"{r['layer']} ({r['batch']}x{r['length']}x{r['channels']}, k{r['kernel']})",
            r["implementation"],
            "packed" if r["packed"] else "sequence",
        ]
        for part in ("forward", "forward_backward"):
            cells += [
                f"{r[f'{part}_ms']:.2f}",
                f"{r[f'{part}_elementwise_passes']:.1f}",
                f"{r.get(f'{part}_speedup_vs_xla', float('nan')):.2f}x",
            ]
        rows.append(cells)
    table = _markdown(head, rows)
    decode = [r for r in records if r["implementation"] == "decode"]
    if decode:
        head = ["shape", "decode step of a layer stack", "impl", "state", "ms", "passes over the state"]
        head += ["in-place passes", "least possible"]
        rows = [
            [
                r["layer"],
                f"{r['decode_layers']} layers x {r['decode_batch']} x {r['kernel'] - 1} x {r['channels']}",
                r["backend"] or "automatic",
                r["state"],
                f"{r['decode_ms']:.3f}",
                f"{r['decode_state_passes']:.2f}",
                f"{r['decode_in_place_passes']:.2f}",
                f"{r['decode_minimum_passes']:.2f}",
            ]
            for r in decode
        ]
        table += "\n\n" + _markdown(head, rows)
    return table


def compiled_traffic(
    layers: Sequence[LayerShape] = MOBILENET_V2,
    implementations: Sequence[str] = ("xla", "pallas"),
    *,
    chip: str = "v5e",
    batch: int = 64,
    dtype: str = "float32",
) -> list[dict]:
    """HBM bytes of every layer's forward and training programs compiled for ``chip``; one record per pair.

    The forward program is ``y = conv(x, k)``; the training program returns ``y`` and the
    gradients for ``x`` and ``k`` given ``dy``. Minimums count each array once: unpadded
    (``*_min_bytes``) and as the chip stores it (``*_stored_min_bytes``: TPU tiles pad the
    channel dimension to 128 lanes, which no kernel can avoid reading).

    Examples:
      >>> from jdw import bench  # compiling for TPU needs libtpu; tests/test_compile_tpu.py runs the same
      >>> r = bench.compiled_traffic([bench.LayerShape(8, 128, 1)], ["xla"], batch=2)[0]  # doctest: +SKIP
      >>> r["forward_hbm_bytes"] >= r["forward_min_bytes"]  # doctest: +SKIP
      True
    """
    device = traffic.device(chip)
    peak = traffic.peak_gbps(chip)
    sharding = jax.sharding.SingleDeviceSharding(device)
    records = []
    for layer in layers:
        out_size = -(-layer.size // layer.stride)
        shape = lambda *dims: jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)  # noqa: E731
        x = shape(batch, layer.size, layer.size, layer.channels)
        k = shape(layer.kernel, layer.kernel, 1, layer.channels)
        y = shape(batch, out_size, out_size, layer.channels)
        for name in implementations:
            conv = functools.partial(_conv, stride=layer.stride, implementation=name)

            def training(x, k, dy, conv=conv):
                y, vjp = jax.vjp(conv, x, k)
                return y, *vjp(dy)

            record = dict(layer=layer.name, count=layer.count, batch=batch, dtype=dtype, implementation=name, chip=chip)
            for part, fn, args, arrays in (
                ("forward", conv, (x, k), (x, y)),
                ("training", training, (x, k, y), (x, y, y, x)),
            ):
                compiled = jax.jit(fn).lower(*args).compile()
                moved = traffic.hbm_bytes(compiled)["total"]
                record[f"{part}_hbm_bytes"] = moved
                record[f"{part}_min_bytes"] = traffic.logical_bytes(*arrays)
                record[f"{part}_stored_min_bytes"] = _stored_minimum(part, compiled)
                record[f"{part}_roofline_us"] = moved / peak / 1e3
            records.append(record)
    return records


def _stored_minimum(part: str, compiled) -> int:
    """Bytes of x and y as the chip stores them (the layouts XLA chose for the program's arguments and results);
    training adds dy and dx."""
    params, results = traffic.entry_arrays(compiled)
    if part == "forward":  # params x, k; result y
        return traffic.stored_bytes(params[0]) + traffic.stored_bytes(results[0])
    # params x, k, dy; results y, dx, dk
    return sum(traffic.stored_bytes(t) for t in (params[0], params[2], results[0], results[1]))


def _conv(x, k, *, stride, implementation):
    return jdw.depthwise_conv(x, k, strides=stride, implementation=implementation)


def _weighted_total(records: list[dict], key: str) -> float:
    """Sum over layers, each weighted by how often MobileNetV2 uses it."""
    return sum(r[key] * r["count"] for r in records)


def _geomean_ratio(records: list[dict], numerator: str, denominator: str) -> float:
    return math.exp(np.mean([math.log(r[numerator] / r[denominator]) for r in records]))


def _ratio_of(record: dict) -> Callable[[str, str], float]:
    return lambda numerator, denominator: record[numerator] / record[denominator]


def _traffic_cells(label: str, name: str, amount: Callable[[str], float], ratio: Callable[[str, str], float]):
    """One table row: bytes and roofline from ``amount(key)``, ratios to the minimums from ``ratio(a, b)``."""
    cells = [label, name]
    for part in ("forward", "training"):
        cells += [
            f"{amount(f'{part}_hbm_bytes') / 1e6:.1f}",
            f"{ratio(f'{part}_hbm_bytes', f'{part}_min_bytes'):.2f}x",
            f"{ratio(f'{part}_hbm_bytes', f'{part}_stored_min_bytes'):.2f}x",
        ]
        if part == "forward":
            cells.append(f"{amount('forward_roofline_us'):.0f}")
    return cells


def _traffic_table(records: list[dict]) -> str:
    head = [
        "layer",
        "impl",
        "fwd MB",
        "fwd / min",
        "fwd / stored min",
        "fwd roofline us",
        "train MB",
        "train / min",
        "train / stored min",
    ]
    rows = [_traffic_cells(r["layer"], r["implementation"], r.__getitem__, _ratio_of(r)) for r in records]
    for name in dict.fromkeys(r["implementation"] for r in records):
        mine = [r for r in records if r["implementation"] == name]
        label = f"all {sum(r['count'] for r in mine)} layers (geomean of ratios)"
        total, geomean = functools.partial(_weighted_total, mine), functools.partial(_geomean_ratio, mine)
        rows.append(_traffic_cells(label, name, total, geomean))
    return _markdown(head, rows)


def _markdown(head: list[str], rows: list[list]) -> str:
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def _table(records: list[dict], parts: Sequence[str]) -> str:
    head = [
        "layer",
        "impl",
        *(f"{p} ms" for p in parts),
        "fwd GB/s",
        "fwd % of peak",
        "fwd/elementwise",
        *(f"{p} vs xla" for p in parts),
    ]
    compiled = all("forward_backward_compile_s" in r for r in records)
    if compiled:
        head += ["fwd+bwd compile s", "compile / xla's"]
    rows = []
    for r in records:
        rows.append(
            [
                r["layer"],
                r["implementation"],
                *(f"{r[f'{p}_ms']:.2f}" for p in parts),
                f"{r.get('forward_gbps', float('nan')):.1f}",
                f"{100 * r['forward_bandwidth_fraction']:.0f}%" if "forward_bandwidth_fraction" in r else "-",
                f"{r.get('forward_elementwise_passes', float('nan')):.2f}",
                *(f"{r.get(f'{p}_speedup_vs_xla', float('nan')):.1f}x" for p in parts),
                *(
                    [f"{r['forward_backward_compile_s']:.2f}", f"{r.get('compile_vs_xla', float('nan')):.2f}x"]
                    if compiled
                    else []
                ),
            ]
        )
    # Whole network: each layer weighted by how often MobileNetV2 uses it.
    for name in dict.fromkeys(r["implementation"] for r in records):
        mine = [r for r in records if r["implementation"] == name]
        ref = [r for r in records if r["implementation"] == "xla"]
        total = {p: sum(r[f"{p}_ms"] * r["count"] for r in mine) for p in parts}
        ref_total = {p: sum(r[f"{p}_ms"] * r["count"] for r in ref) for p in parts}
        elementwise = sum(r["elementwise_ms"] * r["count"] for r in mine)
        rows.append(
            [
                f"all {sum(r['count'] for r in mine)} layers",
                name,
                *(f"{total[p]:.2f}" for p in parts),
                "",
                "",
                f"{total['forward'] / elementwise:.2f}" if "forward" in total else "",
                *((f"{ref_total[p] / total[p]:.1f}x" if ref else "") for p in parts),
                *(["", ""] if compiled else []),
            ]
        )
    return _markdown(head, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jdw.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--implementations",
        default=None,
        help="comma-separated backends (default: all registered that run compiled here; "
        "'pallas' is interpreted on CPU and only timed when named)",
    )
    parser.add_argument("--peak-gbps", type=float, default=None, help="memory bandwidth for the %% of peak column")
    parser.add_argument(
        "--layers",
        default="all",
        help="comma-separated layer names such as 112x112x32/s1 or 28x28x240/s1/k5, or 'all' (the suite's shapes); "
        "with --suite sequence, shapes such as 2x2048x1536/k4 or names such as mamba-130m",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    parser.add_argument(
        "--suite",
        choices=[*SUITES, "sequence"],
        default="mobilenet",
        help="mobilenet: MobileNetV2's depthwise layers (default); efficientnet: EfficientNet-B0's (3x3 and 5x5); "
        "convnext: ConvNeXt-T's (7x7); sequence: jdw.causal_conv1d on Mamba and Conformer shapes, forward, "
        "forward + backward and a decoding step",
    )
    parser.add_argument(
        "--compare",
        choices=["torch"],
        help="time jdw (the first of --implementations, default the automatic path) against PyTorch's "
        "F.conv2d(groups=C) on the suite's layers, alternating in this process; ratio = jdw / torch",
    )
    parser.add_argument(
        "--jax-async-dispatch",
        action="store_true",
        help="with --compare torch: keep JAX's asynchronous CPU dispatch (by default JAX's computations then "
        "run inline on the calling thread, as PyTorch's do)",
    )
    parser.add_argument(
        "--target",
        choices=sorted([*traffic.TPU_CHIPS, *traffic.GPU_CHIPS]),
        help="time nothing: compile for this TPU or GPU without one (needs libtpu, or JAX's CUDA plugin and "
        "JAX_PLATFORMS=cpu) and report each program's HBM bytes",
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    implementations = args.implementations.split(",") if args.implementations else None
    if args.compare == "torch" and not args.jax_async_dispatch:
        _inline_cpu_dispatch()
    if args.suite == "sequence":
        shapes = SEQUENCES if args.layers == "all" else [_parse_sequence(name) for name in args.layers.split(",")]
        if args.compare == "torch":
            implementation = implementations[0] if implementations else None
            sequence_parts = [p for p in parts if p in ("forward", "forward_backward")]
            if not sequence_parts:
                parser.error(f"--suite sequence compares forward and forward_backward, got --parts {args.parts}")
            records = compare_torch_sequences(
                shapes, implementation, dtype=args.dtype, repeats=args.repeats, parts=sequence_parts
            )
            title = (
                f"# jdw.bench --suite sequence --compare torch: {args.dtype}, jdw {records[0]['implementation']!r} "
                f"causal_conv1d (SiLU) against torch {records[0]['torch']} ({records[0]['torch_threads']} threads), "
                f"medians of {args.repeats} alternating runs; loops {records[0]['instruction_set']}, "
                f"{records[0]['malloc']} malloc, JAX dispatch {records[0]['jax_dispatch']}"
            )
            table = lambda records: _torch_table(records, sequence_parts, total="all shapes")  # noqa: E731
            return _report(records, args.json, title, table)
        if args.target:
            _compile_only()
            records = compiled_sequence_traffic(
                shapes, implementations or ("xla", "pallas"), chip=args.target, dtype=args.dtype
            )
            title = f"# jdw.bench --suite sequence --target {args.target}: HBM bytes of compiled programs, {args.dtype}"
            return _report(records, args.json, title, _sequence_traffic_table)
        records = run_sequences(shapes, implementations, dtype=args.dtype, repeats=args.repeats)
        device = jax.devices()[0]
        title = f"# jdw.bench --suite sequence: {args.dtype}, {device.platform} ({device.device_kind})"
        return _report(records, args.json, title, _sequence_table)
    layers = SUITES[args.suite] if args.layers == "all" else [_parse_layer(name) for name in args.layers.split(",")]
    if args.target:
        _compile_only()
        batch = args.batch if "--batch" in (argv if argv is not None else sys.argv) else 64
        records = compiled_traffic(
            layers, implementations or ("xla", "pallas"), chip=args.target, batch=batch, dtype=args.dtype
        )
        title = f"# jdw.bench --target {args.target}: HBM bytes of the compiled programs, batch {batch}, {args.dtype}"
        return _report(records, args.json, title, _traffic_table)
    if args.compare == "torch":
        implementation = implementations[0] if implementations else None
        records = compare_torch(
            layers, implementation, batch=args.batch, dtype=args.dtype, repeats=args.repeats, parts=parts
        )
        title = (
            f"# jdw.bench --compare torch: batch {args.batch}, {args.dtype}, jdw {records[0]['implementation']!r} "
            f"against torch {records[0]['torch']} ({records[0]['torch_threads']} threads), medians of "
            f"{args.repeats} alternating runs; loops {records[0]['instruction_set']}, {records[0]['malloc']} malloc, "
            f"JAX dispatch {records[0]['jax_dispatch']}"
        )
        return _report(records, args.json, title, lambda records: _torch_table(records, parts))
    records = run(
        layers,
        implementations,
        batch=args.batch,
        dtype=args.dtype,
        repeats=args.repeats,
        parts=parts,
        peak_gbps=args.peak_gbps,
    )
    device = jax.devices()[0]
    title = (
        f"# jdw.bench: batch {args.batch}, {args.dtype}, {device.platform} ({device.device_kind}), "
        f"automatic choice here: {backends.automatic_choice(device.platform)!r}; "
        f"{_cpu_context()['malloc']} malloc"
    )
    return _report(records, args.json, title, lambda records: _table(records, parts))


def _report(records: list[dict], as_json: bool, title: str, table: Callable[[list[dict]], str]) -> int:
    """Prints ``records`` as JSON, or the ``title`` line and the table; returns the exit status."""
    if as_json:
        json.dump(records, sys.stdout, indent=1)
        print()
    else:
        print(title)
        print(table(records))
    return 0


def _compile_only() -> None:
    """Compiling for a chip without it: JAX computes on the CPU, and the TPU and CUDA plugins register."""
    from jax._src import xla_bridge  # noqa: PLC0415

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


def _parse_sequence(name: str) -> SequenceShape:
    known = {shape.name: shape for shape in SEQUENCES}
    if name in known:
        return known[name]
    try:
        dims, kernel = name.split("/k")
        batch, length, channels = (int(v) for v in dims.split("x"))
        return SequenceShape(name, batch, length, channels, int(kernel))
    except ValueError:
        raise SystemExit(
            f"bad sequence shape {name!r}: expected BATCHxLENGTHxCHANNELS/kKERNEL (e.g. 2x2048x1536/k4) "
            f"or one of {', '.join(known)}"
        ) from None


def _parse_layer(name: str) -> LayerShape:
    known = {layer.name: layer for layers in SUITES.values() for layer in layers}
    if name in known:
        return known[name]
    try:
        shape, stride, *kernel = name.split("/")
        size, size2, channels = (int(v) for v in shape.split("x"))
        assert size == size2 and stride.startswith("s") and len(kernel) <= 1
        assert not kernel or kernel[0].startswith("k")
        return LayerShape(size, channels, int(stride[1:]), kernel=int(kernel[0][1:]) if kernel else 3)
    except (ValueError, AssertionError):
        raise SystemExit(
            f"bad layer {name!r}: expected SIZExSIZExCHANNELS/sSTRIDE[/kKERNEL], e.g. 56x56x144/s2 or 28x28x240/s1/k5"
        ) from None


if __name__ == "__main__":
    # Under tcmalloc where one is installed, as the training command line: glibc's malloc maps
    # XLA:CPU's large buffers afresh on every call, and the page faults, not the loops, then set
    # the large layers' times on both sides (JDW_TCMALLOC=0 keeps the system's malloc).
    from jdw.training.allocator import restart_under_tcmalloc

    restart_under_tcmalloc()
    raise SystemExit(main())
