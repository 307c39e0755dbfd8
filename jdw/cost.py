"""Parameters and multiply-adds: standard vs depthwise vs depthwise-separable, and of whole models.

The arithmetic the library rests on, as a tool. For ``C_in`` input and ``C_out`` output
channels, a ``k x k`` window and ``H x W`` output positions:

=====================  ==========================  ===============================
layer                  parameters                  multiply-adds
=====================  ==========================  ===============================
standard               ``k*k*C_in*C_out``          ``H*W*k*k*C_in*C_out``
depthwise (M=1)        ``k*k*C_in``                ``H*W*k*k*C_in``
pointwise              ``C_in*C_out``              ``H*W*C_in*C_out``
depthwise-separable    ``k*k*C_in + C_in*C_out``   ``H*W*(k*k*C_in + C_in*C_out)``
=====================  ==========================  ===============================

so a separable layer costs ``1/C_out + 1/k**2`` of a standard one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jax_core

from jdw.backends import registry
from jdw.functional import _arguments as args_lib


@dataclasses.dataclass(frozen=True)
class Cost:
    """The cost of one layer (or a sum of layers).

    Attributes:
      name: what the layer is.
      params: number of weights (biases included when asked for).
      macs: multiply-accumulate operations for one example.
      output_shape: shape of the layer's output, when known.
    """

    name: str
    params: int
    macs: int
    output_shape: tuple[int, ...] = ()


_is_count = args_lib.is_positive_int


def _pair(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    """An int is the same size along two dimensions; a sequence gives one per dimension (at least one)."""
    n = len(value) if isinstance(value, Sequence) and not isinstance(value, str) else 2
    try:
        if n == 0:
            raise ValueError
        return args_lib.as_tuple(value, n, name)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive int or a sequence of them, got {value!r}") from None


def _counts(**values: Any) -> None:
    """Channel counts, groups and multipliers: positive ints, named in the error."""
    for name, value in values.items():
        if not _is_count(value):
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def standard_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    output_size: int | Sequence[int],
    *,
    groups: int = 1,
    bias: bool = False,
) -> Cost:
    """Cost of a standard (or grouped) convolution.

    Args:
      in_channels: input channels.
      out_channels: output channels.
      kernel_size: window, an int for a square one.
      output_size: output positions per dimension, an int for a square output.
      groups: channel groups (``in_channels`` gives a depthwise convolution).
      bias: count a bias per output channel.

    Returns:
      The :class:`Cost`.

    Examples:
      >>> from jdw import cost
      >>> cost.standard_conv(3, 1, 3, 1).macs  # one output pixel of a 3x3 conv over RGB
      27
    """
    _counts(in_channels=in_channels, out_channels=out_channels, groups=groups)
    kernel, positions = math.prod(_pair(kernel_size, "kernel_size")), math.prod(_pair(output_size, "output_size"))
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{in_channels=} and {out_channels=} must be divisible by {groups=}")
    weights = kernel * (in_channels // groups) * out_channels
    return Cost(
        f"conv {'x'.join(map(str, _pair(kernel_size, 'kernel_size')))} {in_channels}->{out_channels}"
        + (f" groups={groups}" if groups > 1 else ""),
        weights + (out_channels if bias else 0),
        positions * weights,
    )


def depthwise_conv(
    channels: int,
    kernel_size: int | Sequence[int],
    output_size: int | Sequence[int],
    *,
    depth_multiplier: int = 1,
    bias: bool = False,
) -> Cost:
    """Cost of a depthwise convolution: one ``k x k`` filter per channel (and multiplier).

    Args:
      channels: input channels ``C``.
      kernel_size: window.
      output_size: output positions per dimension.
      depth_multiplier: filters per channel ``M``.
      bias: count a bias per output channel.

    Returns:
      The :class:`Cost`.

    Examples:
      >>> from jdw import cost
      >>> cost.depthwise_conv(3, 3, 1).macs  # 9 per channel
      27
    """
    _counts(channels=channels, depth_multiplier=depth_multiplier)
    out = channels * depth_multiplier
    standard = standard_conv(channels, out, kernel_size, output_size, groups=channels, bias=bias)
    return dataclasses.replace(standard, name=f"depthwise {standard.name.split()[1]} {channels}->{out}")


def pointwise_conv(
    in_channels: int, out_channels: int, output_size: int | Sequence[int], *, bias: bool = False
) -> Cost:
    """Cost of a pointwise (1x1) convolution.

    Args:
      in_channels: input channels.
      out_channels: output channels.
      output_size: output positions per dimension.
      bias: count a bias per output channel.

    Returns:
      The :class:`Cost`.

    Examples:
      >>> from jdw import cost
      >>> cost.pointwise_conv(32, 64, 112).params
      2048
    """
    standard = standard_conv(in_channels, out_channels, 1, output_size, bias=bias)
    return dataclasses.replace(standard, name=f"pointwise {in_channels}->{out_channels}")


def separable_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    output_size: int | Sequence[int],
    *,
    depth_multiplier: int = 1,
    bias: bool = False,
) -> Cost:
    """Cost of a depthwise-separable convolution: depthwise, then pointwise.

    Args:
      in_channels: input channels.
      out_channels: output channels.
      kernel_size: depthwise window.
      output_size: output positions per dimension.
      depth_multiplier: depthwise filters per channel.
      bias: count biases on both steps.

    Returns:
      The :class:`Cost` of both steps.

    Examples:
      >>> from jdw import cost
      >>> cost.separable_conv(32, 64, 3, 112).macs  # 112*112*(9*32 + 32*64)
      29302784
    """
    depthwise = depthwise_conv(in_channels, kernel_size, output_size, depth_multiplier=depth_multiplier, bias=bias)
    pointwise = pointwise_conv(in_channels * depth_multiplier, out_channels, output_size, bias=bias)
    kernel = depthwise.name.split()[1]
    return Cost(
        f"separable {kernel} {in_channels}->{out_channels}",
        depthwise.params + pointwise.params,
        depthwise.macs + pointwise.macs,
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Standard, depthwise and depthwise-separable costs of one layer; ``print`` it for a table.

    Attributes:
      standard: the standard convolution ``C_in -> C_out``.
      depthwise: the depthwise step alone (``C_in -> C_in * M``).
      separable: depthwise then pointwise ``-> C_out``.
      positions: output positions, to show costs per output pixel.
    """

    standard: Cost
    depthwise: Cost
    separable: Cost
    positions: int

    def __str__(self) -> str:
        rows = [("layer", "params", "multiply-adds", "per output pixel", "vs standard")]
        for cost in (self.standard, self.depthwise, self.separable):
            ratio = cost.macs / self.standard.macs
            rows.append(
                (cost.name, f"{cost.params:,}", f"{cost.macs:,}", f"{cost.macs // self.positions:,}", f"{ratio:.3f}")
            )
        return _table(rows)


def compare(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    output_size: int | Sequence[int] = 1,
    *,
    depth_multiplier: int = 1,
) -> Comparison:
    """Standard vs depthwise vs depthwise-separable cost of one layer.

    Args:
      in_channels: input channels.
      out_channels: output channels.
      kernel_size: window.
      output_size: output positions per dimension.
      depth_multiplier: depthwise filters per channel.

    Returns:
      A :class:`Comparison`; ``print`` shows a table.

    Examples:
      >>> from jdw import cost
      >>> print(cost.compare(3, 1, 3))
      layer              | params | multiply-adds | per output pixel | vs standard
      -------------------+--------+---------------+------------------+------------
      conv 3x3 3->1      |     27 |            27 |               27 |       1.000
      depthwise 3x3 3->3 |     27 |            27 |               27 |       1.000
      separable 3x3 3->1 |     30 |            30 |               30 |       1.111

      A 3x3 convolution over 3 channels costs 27 multiply-adds per output pixel; depthwise,
      9 per channel. With many output channels the separable layer wins:

      >>> c = cost.compare(32, 64, 3, 112)
      >>> round(c.separable.macs / c.standard.macs, 3)  # 1/64 + 1/9
      0.127
    """
    return Comparison(
        standard_conv(in_channels, out_channels, kernel_size, output_size),
        depthwise_conv(in_channels, kernel_size, output_size, depth_multiplier=depth_multiplier),
        separable_conv(in_channels, out_channels, kernel_size, output_size, depth_multiplier=depth_multiplier),
        math.prod(_pair(output_size, "output_size")),
    )


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-layer costs of a traced computation; ``print`` it for a table.

    Attributes:
      layers: one :class:`Cost` per convolution or dense contraction, in program order.
      params: parameters of the model (see :func:`summary`).
      macs: multiply-adds for one call, all layers.
    """

    layers: tuple[Cost, ...]
    params: int
    macs: int

    def __str__(self) -> str:
        rows = [("layer", "output shape", "params", "multiply-adds")]
        for layer in self.layers:
            rows.append((layer.name, str(layer.output_shape), f"{layer.params:,}", f"{layer.macs:,}"))
        rows.append((f"total ({len(self.layers)} layers)", "", f"{self.params:,}", f"{self.macs:,}"))
        return _table(rows)


def summary(
    model_or_fn: nnx.Module | Callable[..., Any], input_shape: Sequence[int], *, dtype: Any = jnp.float32
) -> Summary:
    """Counts parameters and multiply-adds of any JAX or Flax model by tracing it.

    The computation is traced once (nothing runs) for an input of ``input_shape``, with
    jdw's convolutions on the ``"xla"`` reference so each appears as one convolution.
    Every ``conv_general_dilated`` and ``dot_general`` is a layer: its multiply-adds are
    output elements times the contracted size, its parameters the size of the operands
    not computed from the input (the weights). Inside a ``cond`` the costliest branch
    counts; a ``scan`` counts ``length`` times. Elementwise work (norms, activations,
    pooling) is not counted, as in the papers.

    Args:
      model_or_fn: a Flax NNX module (``params`` is then the size of its ``nnx.Param``
        variables) or any function of one array (``params`` is then the size of the
        floating-point arrays it closes over, for instance
        ``lambda x: linen_model.apply(variables, x)``, batch statistics included).
      input_shape: shape of the input, batch included; costs are for the whole batch,
        so use batch 1 for per-example figures.
      dtype: input dtype.

    Returns:
      A :class:`Summary`; ``print`` shows the per-layer table.

    Examples:
      >>> import jdw
      >>> from flax import nnx
      >>> model = nnx.eval_shape(lambda: jdw.models.MobileNetV2(rngs=nnx.Rngs(0)))
      >>> s = jdw.cost.summary(model, (1, 224, 224, 3))
      >>> s.params, round(s.macs / 1e6)  # the paper: 3.4M parameters, 300M multiply-adds
      (3504872, 301)
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(_is_count(d) for d in shape):
        raise ValueError(
            "input_shape must be a sequence of positive ints, batch included (e.g. (1, 224, 224, 3)), "
            f"got {input_shape!r}"
        )
    x = jax.ShapeDtypeStruct(shape, dtype)
    with registry.forced_implementation("xla"):
        if isinstance(model_or_fn, nnx.Module):
            graphdef, state = nnx.split(model_or_fn)
            state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
            closed = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
            n_state = len(jax.tree.leaves(state))
            inputs = set(closed.jaxpr.invars[n_state:])
            params = sum(math.prod(a.shape) for a in jax.tree.leaves(nnx.state(model_or_fn, nnx.Param)))
        else:
            closed = jax.make_jaxpr(model_or_fn)(x)
            inputs = set(closed.jaxpr.invars)
            params = sum(math.prod(a.shape) for a in _closed_over(closed) if jnp.issubdtype(a.dtype, jnp.floating))
    layers = _walk(closed.jaxpr, inputs)
    return Summary(tuple(layers), int(params), int(sum(layer.macs for layer in layers)))


def _closed_over(closed: jax_core.ClosedJaxpr) -> list[Any]:
    """The arrays a traced function closes over, at any depth (``jax.jit`` keeps them in its inner jaxpr), once each."""
    found: dict[int, Any] = {}
    pending = [closed]
    while pending:
        current = pending.pop()
        for const in current.consts:
            if hasattr(const, "shape") and hasattr(const, "dtype"):
                found.setdefault(id(const), const)
        for eqn in current.jaxpr.eqns:
            for value in eqn.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(item, jax_core.ClosedJaxpr):
                        pending.append(item)
    return list(found.values())


def _sub_jaxprs(eqn: jax_core.JaxprEqn) -> list[tuple[str, Any]]:
    found = []
    for key, value in eqn.params.items():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                found.append((key, item.jaxpr))
            elif isinstance(item, jax_core.Jaxpr):
                found.append((key, item))
    return found


def _walk(jaxpr: jax_core.Jaxpr, tainted: set, scale: int = 1) -> list[Cost]:
    """The layers of ``jaxpr``; ``tainted`` holds the variables computed from the input."""
    layers: list[Cost] = []
    positions = _flattened_positions(jaxpr)
    for eqn in jaxpr.eqns:
        from_input = [isinstance(v, jax_core.Var) and v in tainted for v in eqn.invars]
        name = eqn.primitive.name
        if name in ("conv_general_dilated", "dot_general"):
            layers.append(_layer(eqn, from_input, scale, positions.get(eqn.outvars[0])))
        else:
            subs = _sub_jaxprs(eqn)
            if name == "cond":
                operands = eqn.invars[1:]
                branches = [
                    _walk(sub, {iv for iv, ov in zip(sub.invars, operands) if ov in tainted}, scale) for _, sub in subs
                ]
                layers += max(branches, key=lambda b: sum(c.macs for c in b), default=[])
            else:
                times = scale * int(eqn.params.get("length", 1)) if name == "scan" else scale
                for _, sub in subs:
                    if len(sub.invars) == len(eqn.invars):
                        inner = {iv for iv, t in zip(sub.invars, from_input) if t}
                    else:  # unknown correspondence: anything may come from the input
                        inner = set(sub.invars) if any(from_input) else set()
                    layers += _walk(sub, inner, times)
        if any(from_input):
            tainted.update(eqn.outvars)
    return layers


def _flattened_positions(jaxpr: jax_core.Jaxpr) -> dict:
    """The output shape of each matrix product that is a pointwise layer on flattened positions.

    :func:`jdw.pointwise_conv` multiplies ``x.reshape(-1, C_in)`` by the kernel and reshapes the
    product back to ``(..., C_out)``; the layer's output is that reshaped array.
    """
    made_by = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    reshaped = {}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "reshape" and isinstance(eqn.invars[0], jax_core.Var):
            reshaped[eqn.invars[0]] = eqn.outvars[0].aval.shape
    found = {}
    for eqn in jaxpr.eqns:
        if eqn.primitive.name != "dot_general" or eqn.outvars[0] not in reshaped:
            continue
        source = made_by.get(eqn.invars[0]) if isinstance(eqn.invars[0], jax_core.Var) else None
        if source is None or source.primitive.name != "reshape" or eqn.invars[0].aval.ndim != 2:
            continue
        leading = tuple(source.invars[0].aval.shape[:-1])
        shape = reshaped[eqn.outvars[0]]
        if len(leading) > 1 and tuple(shape[:-1]) == leading and shape[-1] == eqn.outvars[0].aval.shape[-1]:
            found[eqn.outvars[0]] = tuple(shape)
    return found


def _layer(eqn: jax_core.JaxprEqn, from_input: list[bool], scale: int, positions: tuple | None = None) -> Cost:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    out_shape = tuple(positions or eqn.outvars[0].aval.shape)
    weights = sum(math.prod(v.aval.shape) for v, t in zip(eqn.invars[:2], from_input) if not t)
    if eqn.primitive.name == "conv_general_dilated":
        numbers = eqn.params["dimension_numbers"]
        out_feature, in_feature, *spatial = numbers.rhs_spec
        window = [rhs.shape[d] for d in spatial]
        contracted = math.prod(window) * rhs.shape[in_feature]
        groups = eqn.params["feature_group_count"]
        channels = lhs.shape[numbers.lhs_spec[1]]
        strides = eqn.params["window_strides"]
        kind = "depthwise" if groups == channels and groups > 1 else ("conv" if groups == 1 else f"conv/{groups}g")
        name = f"{kind} {'x'.join(map(str, window))}" + (f" /{strides[0]}" if max(strides) > 1 else "")
        name += f" {channels}->{rhs.shape[out_feature]}"
    else:
        (contract, _), _ = eqn.params["dimension_numbers"]
        contracted = math.prod(lhs.shape[d] for d in contract)
        kind = "pointwise" if len(out_shape) > 2 else "dense"  # a contraction applied at every position
        name = f"{kind} {contracted}->{out_shape[-1]}"
    scope = str(eqn.source_info.name_stack)
    return Cost(f"{scope}: {name}" if scope else name, weights, math.prod(out_shape) * contracted * scale, out_shape)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        return " | ".join(cells).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:])])


__all__ = [
    "Comparison",
    "Cost",
    "Summary",
    "compare",
    "depthwise_conv",
    "pointwise_conv",
    "separable_conv",
    "standard_conv",
    "summary",
]
