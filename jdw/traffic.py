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
on a machine without a TPU.

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


__all__ = ["TPU_CHIPS", "entry_arrays", "hbm_bytes", "logical_bytes", "stored_bytes", "tpu_device"]
