"""HBM traffic of a compiled program, for a real chip compiled without the hardware.

A depthwise convolution is bound by memory traffic, so the bytes a compiled program
moves say how fast it can be before it ever runs: every top-level operation of the
compiled entry computation (a fusion, a copy, a custom call such as a Pallas kernel)
reads its operands from HBM and writes its result to HBM. :func:`hbm_bytes` adds those
up from the compiled HLO, counting each array as it is *stored*: TPU layouts tile the two
minor dimensions (``T(8,128)``: 32 channels occupy 128 lanes), and arrays that XLA placed
in on-chip memory (``S(1)``) are not counted. :func:`tpu_device` gives a compile-only TPU
device from ``libtpu`` (``pip install "libtpu==0.0.42.*"`` or jdw's ``test`` extra) so
that ``jax.jit(f).lower(...).compile()`` runs the chip's whole compiler, Mosaic included,
on a machine without a TPU. :func:`gpu_device` does the same for NVIDIA GPUs with JAX's
CUDA plugin (``jax-cuda12-plugin``, ``nvidia-cuda-nvcc-cu12`` for ``ptxas``; also in the
``test`` extra; run with ``JAX_PLATFORMS=cpu``), and :func:`ptxas_report` says how many
registers each compiled Pallas (Triton) kernel uses and whether it spills.

Examples:
  >>> from jdw import traffic
  >>> traffic.stored_bytes("f32[64,56,56,32]{3,2,1,0:T(8,128)}")  # 32 channels stored in 128 lanes
  102760448
  >>> traffic.stored_bytes("bf16[7,7]{1,0}")
  98
"""

from __future__ import annotations

import functools
import math
import os
import re
from typing import Any

import jax
import numpy as np

# Chips that ``tpu_device`` can compile for, by the name ``python -m jdw.bench --target`` takes,
# with the topology name libtpu knows and the HBM bandwidth in GB/s (Google Cloud's TPU pages).
TPU_CHIPS = {
    "v4": ("v4:2x2x1", 1228.0),
    "v5e": ("v5e:1x1", 819.0),
    "v5p": ("v5p:2x2x1", 2765.0),
    "v6e": ("v6e:1x1", 1640.0),
}

# NVIDIA GPUs that ``gpu_device`` can compile for: the device facts XLA's GPU compiler reads
# (NVIDIA's data sheets), and the HBM bandwidth in GB/s.
GPU_CHIPS = {
    "h100": dict(
        name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        core_count=132,
        clock_rate_ghz=1.98,
        memory_bandwidth_gbps=3352.0,
        l2_cache_size=50 * 2**20,
        device_memory_size=80 * 10**9,
        shared_memory_per_core=228 * 2**10,
        shared_memory_per_block_optin=227 * 2**10,
    ),
    "a100": dict(
        name="NVIDIA A100-SXM4-40GB",
        compute_capability=(8, 0),
        core_count=108,
        clock_rate_ghz=1.41,
        memory_bandwidth_gbps=1555.0,
        l2_cache_size=40 * 2**20,
        device_memory_size=40 * 10**9,
        shared_memory_per_core=164 * 2**10,
        shared_memory_per_block_optin=163 * 2**10,
    ),
}

_ITEMSIZE = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64|c64|c128)\[([\d,]*)\](\{[^}]*\})?")
# Operations that move no data of their own (views, bookkeeping, arguments).
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "opt-barrier"}


@functools.cache
def tpu_device(chip: str = "v5e") -> jax.Device:
    """A compile-only TPU device of ``chip`` (a key of :data:`TPU_CHIPS`), without a TPU attached.

    Raises:
      ValueError: for an unknown chip.
      RuntimeError: when ``libtpu`` is not installed.
    """
    if chip not in TPU_CHIPS:
        raise ValueError(f"unknown TPU chip {chip!r}; known: {', '.join(TPU_CHIPS)}")
    try:
        import libtpu  # noqa: F401, PLC0415
    except ImportError:
        raise RuntimeError(
            f'compiling for TPU {chip} without a TPU needs libtpu: pip install "libtpu==0.0.42.*" '
            "(the version jax 0.10's [tpu] extra pins)"
        ) from None
    from jax.experimental import topologies  # noqa: PLC0415

    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask: this is not a TPU VM
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: test workers may each load libtpu
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=TPU_CHIPS[chip][0],
        chip_config_name="default",
        chips_per_host_bounds=(1, 1, 1),
        num_slices=1,
        wrap=(False, False, False),
    )
    return topology.devices[0]


def _gpu_target_config(chip: str) -> str:
    """XLA's GPU target description (``GpuTargetConfigProto`` text) of ``chip``."""
    facts = GPU_CHIPS[chip]
    major, minor = facts["compute_capability"]
    fields = {
        "threads_per_block_limit": 1024,
        "threads_per_warp": 32,
        "shared_memory_per_block": 48 * 2**10,
        "shared_memory_per_core": facts["shared_memory_per_core"],
        "shared_memory_per_block_optin": facts["shared_memory_per_block_optin"],
        "threads_per_core_limit": 2048,
        "core_count": facts["core_count"],
        "fpus_per_core": 128 if major >= 9 else 64,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(facts["memory_bandwidth_gbps"] * 1e9),
        "l2_cache_size": facts["l2_cache_size"],
        "clock_rate_ghz": facts["clock_rate_ghz"],
        "device_memory_size": facts["device_memory_size"],
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
    }
    info = "\n".join(f"  {key}: {value}" for key, value in fields.items())
    return (
        f"gpu_device_info {{\n{info}\n  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
        f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 8 }}\n'
        f'device_description_str: "{facts["name"]}"\n'
    )


@functools.cache
def gpu_device(chip: str = "h100") -> jax.Device:
    """A compile-only NVIDIA GPU device of ``chip`` (a key of :data:`GPU_CHIPS`), without a GPU attached.

    Needs JAX's CUDA plugin of the installed jaxlib's version (``pip install jax-cuda12-plugin
    nvidia-cuda-nvcc-cu12``; ``ptxas`` comes from the latter) and ``JAX_PLATFORMS=cpu`` in the
    environment before JAX starts (the plugin then registers without looking for a GPU).

    Raises:
      ValueError: for an unknown chip.
      RuntimeError: when the plugin is missing, of another version, or was not registered.
    """
    if chip not in GPU_CHIPS:
        raise ValueError(f"unknown GPU chip {chip!r}; known: {', '.join(GPU_CHIPS)}")
    try:
        from jax_cuda12_plugin import version as plugin  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            f"compiling for GPU {chip} without a GPU needs JAX's CUDA plugin: "
            "pip install jax-cuda12-plugin nvidia-cuda-nvcc-cu12 (jdw's test extra has them)"
        ) from None
    import jaxlib  # noqa: PLC0415
    from jax._src import xla_bridge  # noqa: PLC0415
    from jax.experimental import topologies  # noqa: PLC0415

    if plugin.__version__ != jaxlib.__version__:
        raise RuntimeError(
            f"jax-cuda12-plugin {plugin.__version__} does not match jaxlib {jaxlib.__version__}: "
            f'pip install "jax-cuda12-plugin=={jaxlib.__version__}"'
        )
    xla_bridge.backends()  # registers the installed plugins
    if "cuda" not in xla_bridge._backend_factories:
        raise RuntimeError(
            "JAX's CUDA plugin is installed but did not register (it does so without a GPU only under "
            "JAX_PLATFORMS=cpu, set before JAX starts)"
        )
    topology = topologies.get_topology_desc(platform="cuda", target_config=_gpu_target_config(chip), topology="1x1x1")
    return topology.devices[0]


def device(chip: str) -> jax.Device:
    """A compile-only device of ``chip``, a TPU (:data:`TPU_CHIPS`) or an NVIDIA GPU (:data:`GPU_CHIPS`)."""
    if chip in GPU_CHIPS:
        return gpu_device(chip)
    if chip in TPU_CHIPS:
        return tpu_device(chip)
    raise ValueError(f"unknown chip {chip!r}; known: {', '.join([*TPU_CHIPS, *GPU_CHIPS])}")


def peak_gbps(chip: str) -> float:
    """HBM bandwidth of ``chip`` in GB/s."""
    return GPU_CHIPS[chip]["memory_bandwidth_gbps"] if chip in GPU_CHIPS else TPU_CHIPS[chip][1]


def ptxas_report(lowered: Any, *, kernels: str = "jdw_") -> tuple[Any, list[dict]]:
    """Compiles ``lowered`` (for a :func:`gpu_device`) and asks ``ptxas`` about each kernel named ``kernels*``.

    Returns:
      ``(compiled, [{"kernel", "arch", "registers", "spill_stores", "spill_loads"}, ...])``,
      one record per kernel in the compiled program's PTX.
    """
    import importlib.util  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    nvcc = importlib.util.find_spec("nvidia.cuda_nvcc")
    if nvcc is None or not nvcc.submodule_search_locations:
        raise RuntimeError("ptxas comes with nvidia-cuda-nvcc-cu12: pip install nvidia-cuda-nvcc-cu12")
    ptxas = os.path.join(list(nvcc.submodule_search_locations)[0], "bin", "ptxas")
    records = []
    with tempfile.TemporaryDirectory() as dump:
        compiled = lowered.compile({"xla_dump_to": dump})
        for name in sorted(os.listdir(dump)):
            if not name.endswith(".ptx"):
                continue
            path = os.path.join(dump, name)
            with open(path) as f:
                ptx = f.read()
            if f".entry {kernels}" not in ptx:
                continue
            arch = re.search(r"^\.target (\w+)", ptx, re.M).group(1)
            out = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o", os.devnull], capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"ptxas failed on {name}: {out.stderr[-2000:]}")
            pattern = (
                r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores, (\d+) bytes spill loads.*?"
                r"Used (\d+) registers"
            )
            for m in re.finditer(pattern, out.stderr, re.S):
                if m.group(1).startswith(kernels):
                    records.append(
                        dict(
                            kernel=m.group(1),
                            arch=arch,
                            registers=int(m.group(4)),
                            spill_stores=int(m.group(2)),
                            spill_loads=int(m.group(3)),
                        )
                    )
    return compiled, records


def stored_bytes(array_type: str) -> int:
    """Bytes an HLO array type such as ``f32[8,56,56,32]{3,2,1,0:T(8,128)}`` occupies, tile padding included."""
    match = _ARRAY.search(array_type)
    if match is None:
        raise ValueError(f"not an HLO array type: {array_type!r}")
    dtype, dims, layout = match.groups()
    shape = [int(d) for d in dims.split(",") if d]
    itemsize = _ITEMSIZE[dtype]
    if not layout or not shape:
        return math.prod(shape) * itemsize
    minor_to_major, _, tiling = layout[1:-1].partition(":")
    order = [int(d) for d in minor_to_major.split(",") if d.strip()]
    physical = [shape[d] for d in reversed(order)] if len(order) == len(shape) else shape
    tile = re.match(r"T\(([\d,]+)\)", tiling)
    if tile:
        sizes = [int(t) for t in tile.group(1).split(",")]
        for i, t in enumerate(reversed(sizes)):
            if i < len(physical):
                physical[-1 - i] = -(-physical[-1 - i] // t) * t
    return math.prod(physical) * itemsize


def _on_chip(array_type: str) -> bool:
    """Whether the layout places the array in on-chip memory (``S(1)``: TPU VMEM)."""
    return bool(re.search(r":[^}]*S\([1-9]\)", array_type))


def hbm_bytes(compiled: Any) -> dict[str, int]:
    """HBM bytes read and written by each top-level operation of a compiled program.

    Args:
      compiled: what ``jax.jit(f).lower(...).compile()`` returns (or its ``as_text()``).

    Returns:
      ``{"total": bytes, "<opcode>": bytes, ...}``: operands read plus results written, per
      opcode (``fusion``, ``custom-call``, ``copy``, ...), arrays counted as stored.
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    entry = text[text.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}") + 1]
    types: dict[str, str] = {}
    counts: dict[str, int] = {"total": 0}
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
    for line in entry.splitlines()[1:]:
        match = instruction.match(line)
        if match is None:
            continue
        name, result, opcode, rest = match.groups()
        types[name] = result
        if opcode in _FREE or opcode.endswith("-done"):  # an asynchronous op's data moves in its "-start"
            continue
        if opcode.endswith("-start"):
            moved = _async_bytes(opcode, result)
            counts[opcode] = counts.get(opcode, 0) + moved
            counts["total"] += moved
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("),", 1)[0])
        moved = sum(stored_bytes(t.group(0)) for t in _ARRAY.finditer(result) if not _on_chip(t.group(0)))
        for operand in operands:
            for t in _ARRAY.finditer(types.get(operand, "")):
                if not _on_chip(t.group(0)):
                    moved += stored_bytes(t.group(0))
        counts[opcode] = counts.get(opcode, 0) + moved
        counts["total"] += moved
    return counts


def _async_bytes(opcode: str, result: str) -> int:
    """HBM bytes of an asynchronous copy or slice, from its ``-start`` result ``(..., destination, ...)``."""
    arrays = [t.group(0) for t in _ARRAY.finditer(result) if not re.match(r"[su]32\[\]", t.group(0))]
    if not arrays:
        return 0
    hbm = lambda t: 0 if _on_chip(t) else stored_bytes(t)  # noqa: E731
    if opcode == "copy-start":  # (destination, source, context)
        return sum(hbm(t) for t in arrays[:2])
    # (operands, destination, context): the destination's bytes are read from HBM and written where it lives.
    destination = arrays[-1]
    return stored_bytes(destination) + hbm(destination)


def entry_arrays(compiled: Any) -> tuple[list[str], list[str]]:
    """The array types, layouts included, of a compiled program's parameters (in order) and of its results.

    Args:
      compiled: what ``jax.jit(f).lower(...).compile()`` returns (or its ``as_text()``).

    Returns:
      ``(parameter types, result types)``, such as ``"f32[64,28,28,192]{3,0,2,1:T(8,128)}"``.
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    entry = text[text.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}") + 1]
    params = {int(m.group(2)): m.group(1) for m in re.finditer(r"= (\S+) parameter\((\d+)\)", entry)}
    root = re.search(r"ROOT %?[\w.\-]+ = (.*?) [\w\-]+\(", entry).group(1)
    return [params[i] for i in sorted(params)], [m.group(0) for m in _ARRAY.finditer(root)]


def logical_bytes(*arrays: Any) -> int:
    """Bytes of the arrays' elements (arrays or ``jax.ShapeDtypeStruct``), no padding: the floor any layout reaches."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in arrays)


__all__ = [
    "GPU_CHIPS",
    "TPU_CHIPS",
    "device",
    "entry_arrays",
    "gpu_device",
    "hbm_bytes",
    "logical_bytes",
    "peak_gbps",
    "ptxas_report",
    "stored_bytes",
    "tpu_device",
]
