"""Depthwise convolution as JAX primitives: how a backend's fast code gets every transformation.

A backend's fast code is three maps, each linear in either operand (bilinear):

=================================  ======================================================
``forward(x, k) -> y``             the convolution: ``(N, *in, C)`` and a kernel -> ``(N, *out, C*M)``
``transpose(y, k) -> x``           its adjoint in ``x`` (the transposed convolution)
``kernel_grad(x, y) -> k``         its adjoint in ``k`` (a reduction over batch and space)
=================================  ======================================================

The adjoint of each one in either operand is again one of the three (``<y, F(x, k)> =
<T(y, k), x> = <G(x, y), k>``), so wrapped as primitives with those transposes
(:func:`jax.interpreters.ad.defbilinear`) they close under differentiation: forward mode
(``jvp``, ``jacfwd``, ``linearize``), reverse mode (``grad``, ``linear_transpose``), and any
order or mix of the two (``hessian``) all run on the backend's own code, never on XLA's
derivative of it. ``vmap`` stacks inputs into the batch axis, or anything else into the
channel axis (depthwise channels are independent). Each primitive lowers to the backend's
JAX code, so a backend is only ordinary JAX functions (Pallas calls included).

A backend may add a fused ``fused(x, k, b, activation)``: ``activation(forward(x, k) + b)``
in one kernel. Its tangent is the linear primitives' (``forward(dx, k) + forward(x, dk) +
db``) times the activation's derivative, read from the output for the piecewise-linear
activations and otherwise taken on the pre-activation output, which the rule recomputes
with the same kernel and no activation.

Every operand is channels-last and every kernel's last axis is its channels, which the
batching rule relies on.

The maps may take further operands after the two linear ones, *masks*: integer arrays that
are not differentiated and that the maps use with the same value in all three (the packed
sequences' segment positions of :func:`jdw.causal_conv1d`, shape ``(N, ...)``, indexed by
image). Each rule passes them through unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import dispatch  # the set of primitives whose lowering needs the devices (jax 0.10)
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jdw.backends import registry


@dataclasses.dataclass(frozen=True, eq=False)
class LinearOps:
    """One backend's three bilinear maps (and optionally its fused epilogue), as JAX code.

    Each map is ``map(a, b, *, static, dtype)``: ``static`` is the backend's hashable
    description of the forward convolution (the same value for all three maps), ``dtype``
    the result's dtype. Compared by identity: create one per backend, at module level.

    Attributes:
      name: shown in jaxprs, e.g. ``depthwise_conv[ops=taps ...]``.
      forward: the convolution ``(x, k) -> y``.
      transpose: its adjoint in ``x``, ``(y, k) -> x``.
      kernel_grad: its adjoint in ``k``, ``(x, y) -> k``.
      fused: optional ``fused(x, k, b, *, static, dtype, activation)``, the convolution with
        the bias and the activation named ``activation`` applied in the same kernel.
      epilogues: the activations ``fused`` applies, by name, as functions (their derivatives
        give the fused op's tangent).
      platform: if set, the maps are lowered only for this platform ("cpu": XLA:CPU custom
        calls); programs lowered for any other platform run ``elsewhere``'s maps instead.
      elsewhere: the ops whose maps serve the other platforms (same ``static`` and operands).
    """

    name: str
    forward: Callable[..., jax.Array]
    transpose: Callable[..., jax.Array]
    kernel_grad: Callable[..., jax.Array]
    fused: Callable[..., jax.Array] | None = None
    epilogues: Mapping[str, Callable[[jax.Array], jax.Array]] = dataclasses.field(default_factory=dict)
    requires_devices: bool = False
    platform: str | None = None
    elsewhere: LinearOps | None = None

    def __post_init__(self):
        primitives = {kind: Primitive(name) for kind, name in _NAMES.items()}
        object.__setattr__(self, "primitives", primitives)
        for kind, prim in primitives.items():
            _define(prim, kind, self)

    def __repr__(self) -> str:
        return self.name


_NAMES = {
    "forward": "depthwise_conv",
    "transpose": "depthwise_conv_transpose",
    "kernel_grad": "depthwise_kernel_grad",
    "fused": "depthwise_conv_bias_act",
}


def conv(x, kernel, *masks, ops: LinearOps, static: Any, dtype) -> jax.Array:
    """``ops.forward(x, kernel, *masks)`` as a primitive: differentiable in every mode, batchable."""
    return ops.primitives["forward"].bind(x, kernel, *masks, ops=ops, static=static, dtype=np.dtype(dtype))


def conv_transpose(y, kernel, *masks, ops: LinearOps, static: Any, dtype) -> jax.Array:
    """``ops.transpose(y, kernel, *masks)``, the adjoint in ``x`` of :func:`conv` with the same ``static``."""
    return ops.primitives["transpose"].bind(y, kernel, *masks, ops=ops, static=static, dtype=np.dtype(dtype))


def kernel_grad(x, y, *masks, ops: LinearOps, static: Any, dtype) -> jax.Array:
    """``ops.kernel_grad(x, y, *masks)``, the adjoint in the kernel of :func:`conv` with the same ``static``."""
    return ops.primitives["kernel_grad"].bind(x, y, *masks, ops=ops, static=static, dtype=np.dtype(dtype))


def conv_bias_act(x, kernel, bias, *, ops: LinearOps, static: Any, dtype, activation: str) -> jax.Array:
    """``ops.fused(x, kernel, bias)``: ``activation(conv(x, kernel) + bias)`` in one kernel."""
    return ops.primitives["fused"].bind(
        x, kernel, bias, ops=ops, static=static, dtype=np.dtype(dtype), activation=activation
    )


def _define(prim: Primitive, kind: str, ops: LinearOps) -> None:
    """Registers ``prim``'s evaluation, lowering, derivative and batching rules."""
    prim.def_impl(functools.partial(_impl, kind=kind))
    prim.def_effectful_abstract_eval(functools.partial(_abstract_eval, kind=kind))
    if ops.platform is None:
        mlir.register_lowering(prim, _lowering(kind))
    else:
        mlir.register_lowering(prim, _lowering(kind), platform=ops.platform)
        mlir.register_lowering(prim, _lowering(kind, lambda ops: ops.elsewhere))
    if kind == "fused":
        ad.primitive_jvps[prim] = _fused_jvp
    else:
        # Bilinear in the first two operands; masks are passed through (ad.defbilinear's rules,
        # which take exactly two operands, with the masks added).
        ad.primitive_jvps[prim] = functools.partial(_bilinear_jvp, prim)
        ad.primitive_transposes[prim] = functools.partial(_bilinear_transpose, *_TRANSPOSES[kind])
    batching.primitive_batchers[prim] = _batch_rule(prim, kind)
    if ops.requires_devices:  # Pallas calls partitioned with custom_partitioning
        dispatch.prim_requires_devices_during_lowering.add(prim)


# --- evaluation and lowering ----------------------------------------------------------------------


def _function(kind: str, ops: LinearOps, **params) -> Callable[..., jax.Array]:
    return functools.partial(getattr(ops, kind), **params)


def _struct(aval) -> jax.ShapeDtypeStruct:
    sharding = getattr(aval, "sharding", None)
    explicit = registry.explicit_mesh(getattr(sharding, "mesh", None))
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, sharding=sharding if explicit else None)


def _abstract_eval(*avals, kind: str, ops: LinearOps, **params):
    return _result_type(kind, ops, tuple(sorted(params.items())), avals)


@functools.lru_cache(maxsize=1024)
def _result_type(kind: str, ops: LinearOps, params: tuple, avals: tuple):
    # The backend's code, traced once per signature: its result type and its effects (the TPU
    # interpreter's callbacks). Cached: a model binds the same layer shapes many times.
    params = dict(params)
    jaxpr, out = jax.make_jaxpr(_function(kind, ops, **params), return_shape=True)(*map(_struct, avals))
    vma = frozenset().union(*(getattr(a, "vma", frozenset()) for a in avals))
    kwargs = {"vma": vma} if vma else {}
    if isinstance(out.sharding, jax.sharding.NamedSharding):
        kwargs["sharding"] = out.sharding
    return jax.core.ShapedArray(out.shape, params["dtype"], **kwargs), jaxpr.effects


def _lowering(kind: str, choose: Callable[[LinearOps], LinearOps] = lambda ops: ops):
    def lower(ctx, *args, ops: LinearOps, **params):
        target = choose(ops)
        if kind == "fused" and target.fused is None:  # `elsewhere` without a fused map: composed
            fn = functools.partial(composed_fused, target, ops.epilogues, **params)
        else:
            fn = _function(kind, target, **params)
        return mlir.lower_fun(fn, multiple_results=False)(ctx, *args)

    return lower


def composed_fused(ops: LinearOps, epilogues, x, kernel, bias, *, static, dtype, activation) -> jax.Array:
    """``epilogues[activation](ops.forward(x, kernel) + bias)``, computed in float32 at least: a fused map
    for ops without a kernel that fuses (the lowering of another platform, a backend's fallback)."""
    compute = np.float64 if dtype == np.float64 else np.float32
    y = ops.forward(x, kernel, static=static, dtype=compute)
    y = y + bias.astype(compute).reshape((1,) * (y.ndim - 1) + (-1,))
    return epilogues[activation](y).astype(dtype)


def _impl(*args, kind: str, ops: LinearOps, **params):
    # Eagerly, the backend's code runs as it is (its own jit, or op by op), not as a lowered
    # primitive: custom_partitioning and the TPU interpreter's callbacks need their own paths.
    return _function(kind, ops, **params)(*args)


# --- differentiation ------------------------------------------------------------------------------


def _like(cotangent: jax.Array, primal) -> jax.Array:
    """The cotangent in the primal's dtype and, under explicit mesh axes, its sharding."""
    aval = primal.aval
    cotangent = cotangent.astype(aval.dtype)
    wanted = getattr(aval, "sharding", None)
    if not registry.explicit_mesh(getattr(wanted, "mesh", None)):
        return cotangent
    if jax.typeof(cotangent).sharding.spec == wanted.spec:
        return cotangent
    return jax.sharding.reshard(cotangent, wanted.spec)


# <y, F(x, k)> = <T(y, k), x> = <G(x, y), k>: each map's adjoint in either operand.
def _conv_t_lhs(ct, x, k, *masks, ops, static, dtype):
    return _like(conv_transpose(ct, k, *masks, ops=ops, static=static, dtype=x.aval.dtype), x)


def _conv_t_rhs(ct, x, k, *masks, ops, static, dtype):
    return _like(kernel_grad(x, ct, *masks, ops=ops, static=static, dtype=k.aval.dtype), k)


def _transpose_t_lhs(ct, y, k, *masks, ops, static, dtype):
    return _like(conv(ct, k, *masks, ops=ops, static=static, dtype=y.aval.dtype), y)


def _transpose_t_rhs(ct, y, k, *masks, ops, static, dtype):
    return _like(kernel_grad(ct, y, *masks, ops=ops, static=static, dtype=k.aval.dtype), k)


def _kernel_grad_t_lhs(ct, x, y, *masks, ops, static, dtype):
    return _like(conv_transpose(y, ct, *masks, ops=ops, static=static, dtype=x.aval.dtype), x)


def _kernel_grad_t_rhs(ct, x, y, *masks, ops, static, dtype):
    return _like(conv(x, ct, *masks, ops=ops, static=static, dtype=y.aval.dtype), y)


def _bilinear_jvp(prim: Primitive, primals, tangents, **params):
    a, b, *masks = primals
    da, db = tangents[:2]
    out = prim.bind(a, b, *masks, **params)
    parts = [prim.bind(t, b, *masks, **params) for t in (da,) if type(t) is not ad.Zero]
    parts += [prim.bind(a, t, *masks, **params) for t in (db,) if type(t) is not ad.Zero]
    if not parts:
        return out, ad.Zero.from_primal_value(out)
    return out, functools.reduce(jnp.add, parts)


def _bilinear_transpose(lhs_rule, rhs_rule, ct, a, b, *masks, **params):
    """The cotangents of the one linear operand that is unknown (masks are never)."""
    none = [None] * len(masks)
    if ad.is_undefined_primal(a):
        out = ad.Zero(a.aval.to_ct_aval()) if type(ct) is ad.Zero else lhs_rule(ct, a, b, *masks, **params)
        return [out, None, *none]
    out = ad.Zero(b.aval.to_ct_aval()) if type(ct) is ad.Zero else rhs_rule(ct, a, b, *masks, **params)
    return [None, out, *none]


_TRANSPOSES = {
    "forward": (_conv_t_lhs, _conv_t_rhs),
    "transpose": (_transpose_t_lhs, _transpose_t_rhs),
    "kernel_grad": (_kernel_grad_t_lhs, _kernel_grad_t_rhs),
}

# Activations whose derivative is a function of their output (on the open intervals where it is
# not constant): the tangent rule needs no pre-activation output for them.
_FROM_OUTPUT: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda y: jnp.ones_like(y),
    "relu": lambda y: (y > 0).astype(y.dtype),
    "relu6": lambda y: ((y > 0) & (y < 6)).astype(y.dtype),
    "hard_sigmoid": lambda y: ((y > 0) & (y < 1)).astype(y.dtype) / 6,
}


def _fused_jvp(primals, tangents, *, ops, static, dtype, activation):
    x, k, b = primals
    dx, dk, db = tangents
    y = conv_bias_act(x, k, b, ops=ops, static=static, dtype=dtype, activation=activation)
    parts = []
    if type(dx) is not ad.Zero:
        parts.append(conv(dx, k, ops=ops, static=static, dtype=dtype))
    if type(dk) is not ad.Zero:
        parts.append(conv(x, dk, ops=ops, static=static, dtype=dtype))
    if type(db) is not ad.Zero:
        parts.append(jnp.broadcast_to(db.astype(dtype), y.shape))
    if not parts:
        return y, ad.Zero.from_primal_value(y)
    dz = functools.reduce(jnp.add, parts)
    if activation in _FROM_OUTPUT:
        return y, dz * _FROM_OUTPUT[activation](y)
    z = conv_bias_act(x, k, b, ops=ops, static=static, dtype=dtype, activation="identity")
    compute = np.float64 if dtype == np.float64 else np.float32  # the derivative in float32 at least
    _, dy = jax.jvp(ops.epilogues[activation], (z.astype(compute),), (dz.astype(compute),))
    return y, dy.astype(dtype)


# --- batching -------------------------------------------------------------------------------------


def _batch_rule(prim: Primitive, kind: str):
    """Stacks of inputs become more images; stacks of anything else, more channels.

    Masks (operands after the first two) are indexed by image: they fold into the batch with
    the input. A stacked mask with a stacked kernel (or in the kernel gradient, which has no
    batch axis) cannot fold into channels; that rare case maps the primitive over the stack.
    """

    def rule(args, dims, **params):
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        args = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
        mapped = [d is not None for d in dims]
        linear = 3 if kind == "fused" else 2  # operands before the masks
        if kind != "kernel_grad" and not any(mapped[1:linear]):
            stacked = [a if m else jnp.broadcast_to(a, (size, *a.shape)) for a, m in zip(args, mapped)]
            x, masks = stacked[0], [m.reshape(size * m.shape[1], *m.shape[2:]) for m in stacked[linear:]]
            y = prim.bind(x.reshape(size * x.shape[1], *x.shape[2:]), *args[1:linear], *masks, **params)
            return y.reshape(size, -1, *y.shape[1:]), 0
        if any(mapped[linear:]):
            return _mapped(prim, args, mapped, params), 0
        folded = []
        for a, m in zip(args[:linear], mapped):
            a = jnp.moveaxis(a, 0, -2) if m else jnp.broadcast_to(a[..., None, :], (*a.shape[:-1], size, a.shape[-1]))
            folded.append(a.reshape(*a.shape[:-2], -1))
        y = prim.bind(*folded, *args[linear:], **params)
        return jnp.moveaxis(y.reshape(*y.shape[:-1], size, -1), -2, 0), 0

    return rule


def _mapped(prim: Primitive, args: list, mapped: list[bool], params: dict) -> jax.Array:
    """``prim`` over a stack (axis 0 of the mapped operands), one element at a time (``lax.map``)."""
    stacked = [a for a, m in zip(args, mapped) if m]

    def one(slices):
        it = iter(slices)
        return prim.bind(*(next(it) if m else a for a, m in zip(args, mapped)), **params)

    return jax.lax.map(one, stacked)
