"""JAX's transformations on every public function and layer, on every backend, against ``"xla"``.

The fast paths are JAX primitives whose derivatives are one another
(:mod:`jdw.backends.primitives`): forward mode (``jvp``, ``jacfwd``, ``linearize``), reverse
mode, their mixes (``hessian``) and any order must give the reference's numbers, and ``vmap``,
``remat`` and ``scan`` must compose with them. Shapes are tiny: this is a grid of
transformations, not of sizes (``tests/test_depthwise.py`` and friends cover those). Which
transformation runs on which function, layer and backend is chosen in ``_cases`` (see its comment).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jdw
from tests.helpers import CPU, assert_close


def _normal(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape) * 0.5, dtype)


# --- the public functions and layers, each as f(a, b) over two pytrees of arrays ----------------


def _conv2d(implementation, dtype, rng):
    """Stride 2, SAME, multiplier 2, bias and a fused relu6 (output-derivable activation)."""
    x = _normal(rng, (2, 7, 7, 3), dtype)
    params = (_normal(rng, (3, 3, 1, 6), dtype), _normal(rng, (6,), dtype))

    def f(x, params):
        kernel, bias = params
        return jdw.depthwise_conv(x, kernel, bias, strides=2, activation="relu6", implementation=implementation)

    return f, x, params


def _conv1d(implementation, dtype, rng):
    """1-D, dilation 2, fused SiLU (its derivative needs the pre-activation output)."""
    x = _normal(rng, (2, 9, 4), dtype)
    params = (_normal(rng, (3, 1, 4), dtype), _normal(rng, (4,), dtype))

    def f(x, params):
        kernel, bias = params
        return jdw.depthwise_conv(x, kernel, bias, dilation=2, activation="silu", implementation=implementation)

    return f, x, params


def _conv3d(implementation, dtype, rng):
    x = _normal(rng, (1, 3, 5, 5, 2), dtype)
    kernel = _normal(rng, (2, 3, 3, 1, 2), dtype)

    def f(x, kernel):
        return jdw.depthwise_conv(x, kernel, strides=(1, 2, 2), padding="SAME", implementation=implementation)

    return f, x, kernel


def _transpose(implementation, dtype, rng):
    x = _normal(rng, (2, 4, 4, 3), dtype)
    kernel = _normal(rng, (3, 3, 1, 3), dtype)

    def f(x, kernel):
        return jdw.depthwise_conv_transpose(x, kernel, strides=2, padding="SAME", implementation=implementation)

    return f, x, kernel


def _separable(implementation, dtype, rng):
    x = _normal(rng, (2, 6, 6, 3), dtype)
    params = (_normal(rng, (3, 3, 1, 3), dtype), _normal(rng, (3, 4), dtype))

    def f(x, params):
        depthwise, pointwise = params
        return jdw.separable_conv(x, depthwise, pointwise, strides=2, implementation=implementation)

    return f, x, params


def _causal(implementation, dtype, rng):
    """A chunk continuing from a state, with the state differentiated too."""
    x = _normal(rng, (2, 6, 4), dtype)
    params = (_normal(rng, (3, 1, 4), dtype), _normal(rng, (2, 2, 4), dtype))

    def f(x, params):
        kernel, state = params
        return jdw.causal_conv1d(x, kernel, activation="silu", initial_state=state, implementation=implementation)

    return f, x, params


def _causal_packed(implementation, dtype, rng):
    """Packed sequences (runs of ids, the first continuing a state), the state differentiated too."""
    x = _normal(rng, (2, 7, 4), dtype)
    params = (_normal(rng, (3, 1, 4), dtype), _normal(rng, (2, 2, 4), dtype))
    ids = jnp.array([[0, 0, 0, 1, 1, 1, 1], [5, 5, 2, 2, 2, 2, 7]])

    def f(x, params):
        kernel, state = params
        return jdw.causal_conv1d(
            x, kernel, activation="silu", initial_state=state, segment_ids=ids, implementation=implementation
        )

    return f, x, params


def _nnx_layer(implementation, dtype, rng):
    module = jdw.nnx.DepthwiseConv(
        3, 3, strides=2, activation="hard_swish", implementation=implementation, rngs=nnx.Rngs(0)
    )
    graphdef, params = nnx.split(module)
    params = jax.tree.map(lambda p: _normal(rng, p.shape, dtype), params)

    def f(x, params):
        return nnx.merge(graphdef, params)(x)

    return f, _normal(rng, (2, 6, 6, 3), dtype), params


def _linen_layer(implementation, dtype, rng):
    module = jdw.linen.DepthwiseConv(3, depth_multiplier=2, activation="relu", implementation=implementation)
    x = _normal(rng, (2, 6, 6, 3), dtype)
    params = jax.tree.map(lambda p: _normal(rng, p.shape, dtype), module.init(jax.random.key(0), x))
    return (lambda x, variables: module.apply(variables, x)), x, params


def _nnx_split(module, dtype, rng):
    """``f(x, params)`` running ``module`` with ``params`` (random, in ``dtype``) and its other state as is."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    params = jax.tree.map(lambda p: _normal(rng, p.shape, dtype), params)
    return (lambda x, params: nnx.merge(graphdef, params, rest)(x)), params


def _nnx_separable(implementation, dtype, rng):
    module = jdw.nnx.SeparableConv(3, 4, strides=2, implementation=implementation, rngs=nnx.Rngs(0))
    f, params = _nnx_split(module, dtype, rng)
    return f, _normal(rng, (2, 6, 6, 3), dtype), params


def _nnx_causal(implementation, dtype, rng):
    module = jdw.nnx.CausalConv1D(4, 3, activation="silu", implementation=implementation, rngs=nnx.Rngs(0))
    f, params = _nnx_split(module, dtype, rng)
    return f, _normal(rng, (2, 7, 4), dtype), params


def _nnx_inverted_residual(implementation, dtype, rng):
    """A MobileNetV2 block in inference mode (batch norm then reads its statistics, a pure function)."""
    module = jdw.nnx.InvertedResidual(
        3, 3, expand_ratio=2, se_ratio=0.5, implementation=implementation, rngs=nnx.Rngs(0)
    )
    module.eval()
    f, params = _nnx_split(module, dtype, rng)
    return f, _normal(rng, (2, 5, 5, 3), dtype), params


def _linen_causal(implementation, dtype, rng):
    module = jdw.linen.CausalConv1D(2, activation="silu", implementation=implementation)
    x = _normal(rng, (2, 7, 4), dtype)
    params = jax.tree.map(lambda p: _normal(rng, p.shape, dtype), module.init(jax.random.key(0), x))
    return (lambda x, variables: module.apply(variables, x)), x, params


def _pointwise(implementation, dtype, rng):
    """A matrix multiply over channels (no backends): here for the completeness of the public grid.

    A projection (more input channels than output), whose kernel goes through an optimization
    barrier on CPU (``jdw.functional.pointwise``); separable's expansion takes the plain product."""
    del implementation
    x = _normal(rng, (2, 3, 3, 5), dtype)
    params = (_normal(rng, (5, 4), dtype), _normal(rng, (4,), dtype))
    return (lambda x, params: jdw.pointwise_conv(x, *params)), x, params


def _causal_update(implementation, dtype, rng):
    """The decode step (plain JAX on every path): one token, a state."""
    del implementation
    x = _normal(rng, (2, 1, 4), dtype)
    params = (_normal(rng, (2, 3, 4), dtype), _normal(rng, (4, 1, 4), dtype))

    def f(x, params):
        state, kernel = params
        y, new_state = jdw.causal_conv1d_update(x, state, kernel, activation="silu")
        return y + jnp.sum(new_state)

    return f, x, params


FUNCTIONS = {
    "conv2d": _conv2d,
    "conv1d": _conv1d,
    "conv3d": _conv3d,
    "transpose": _transpose,
    "separable": _separable,
    "causal": _causal,
    "causal_packed": _causal_packed,
    "nnx": _nnx_layer,
    "nnx_separable": _nnx_separable,
    "nnx_causal": _nnx_causal,
    "nnx_inverted_residual": _nnx_inverted_residual,
    "linen": _linen_layer,
    "linen_causal": _linen_causal,
    "causal_update": _causal_update,
    "pointwise": _pointwise,
}
_NO_BACKEND = ("causal_update", "pointwise")  # plain JAX on every path: run once


# --- the transformations, each mapping (f, a, b, tangents) to a pytree of arrays ---------------


def _loss(f):
    return lambda a, b: jnp.sum(jnp.sin(f(a, b).astype(jnp.float32)))


def _stack(tree):
    return jax.tree.map(lambda v: jnp.stack([v, (v * 0.5 + 0.25).astype(v.dtype)]), tree)


def _scan(f, a, b, ta, tb):
    def body(carry, ai):
        return carry + _loss(f)(ai, b), f(ai, b)

    def run(b):
        return lax.scan(body, jnp.zeros((), jnp.float32), _stack(a))

    return run(b), jax.grad(lambda b: run(b)[0])(b)


TRANSFORMS = {
    "jit": lambda f, a, b, ta, tb: jax.jit(f)(a, b),
    "vmap": lambda f, a, b, ta, tb: jax.vmap(f)(_stack(a), _stack(b)),
    "vmap_inputs": lambda f, a, b, ta, tb: jax.vmap(f, (0, None))(_stack(a), b),
    "grad": lambda f, a, b, ta, tb: jax.grad(_loss(f), (0, 1))(a, b),
    "grad_of_grad": lambda f, a, b, ta, tb: jax.grad(
        lambda b: sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(jax.grad(_loss(f))(a, b)))
    )(b),
    "jvp": lambda f, a, b, ta, tb: jax.jvp(f, (a, b), (ta, tb)),
    "jacfwd": lambda f, a, b, ta, tb: jax.jacfwd(f, 1)(a, b),
    "hessian": lambda f, a, b, ta, tb: jax.hessian(_loss(f), 1)(a, b),
    "linearize": lambda f, a, b, ta, tb: jax.linearize(f, a, b)[1](ta, tb),
    "remat": lambda f, a, b, ta, tb: jax.grad(jax.checkpoint(_loss(f)), (0, 1))(a, b),
    "scan": _scan,
}

IMPLEMENTATIONS = ("taps", *CPU, "pallas", None)
# Every function runs every transformation in float32 on the fast backends; one of them also on the
# automatic path and in bfloat16 and float64 (the others call the same primitives). The layers call
# those functions: they run the transformations a layer meets in a model (jit, vmap, grad, jvp,
# remat, scan) on "taps", and grad on "cpu" and "pallas". The hessian (forward over reverse, the costliest
# compile) runs on the functions whose derivatives differ in kind, the strided 2-D convolution and
# the causal convolution with a state, and on the plain-JAX causal update and pointwise convolution.
# remat, scan and linearize, which only rearrange the derivatives the other rows test, run on "taps".
_FEW = ("jit", "vmap", "grad", "jvp", "hessian", "linearize")
_LAYERS = ("nnx", "nnx_separable", "nnx_causal", "nnx_inverted_residual", "linen", "linen_causal")
_LAYER_TRANSFORMS = {"taps": ("jit", "vmap", "grad", "jvp", "remat", "scan"), "cpu": ("grad",), "pallas": ("grad",)}
_HESSIAN = ("conv2d", "causal", *_NO_BACKEND)


def _cases():
    for name in FUNCTIONS:
        implementations = {"conv2d": IMPLEMENTATIONS, "causal_packed": ("taps",)}.get(name, ("taps", *CPU, "pallas"))
        for implementation in implementations if name not in _NO_BACKEND else ("xla",):
            for transform in TRANSFORMS:
                if name in _LAYERS and transform not in _LAYER_TRANSFORMS[implementation]:
                    continue
                if transform == "hessian" and name not in _HESSIAN:
                    continue
                if implementation == "pallas" and transform in ("remat", "scan", "linearize"):
                    continue
                for dtype in ("float32", "bfloat16", "float64"):
                    if dtype != "float32" and (transform not in _FEW or name not in ("conv2d", *_NO_BACKEND)):
                        continue
                    yield pytest.param(
                        name, implementation, transform, dtype, id=f"{name}-{implementation}-{transform}-{dtype}"
                    )


def _run(name, implementation, transform, dtype):
    rng = np.random.default_rng(0)
    f, a, b = FUNCTIONS[name](implementation, dtype, rng)
    ta = jax.tree.map(lambda v: _normal(rng, v.shape, v.dtype), a)
    tb = jax.tree.map(lambda v: _normal(rng, v.shape, v.dtype), b)
    return TRANSFORMS[transform](f, a, b, ta, tb)


@pytest.mark.parametrize("name, implementation, transform, dtype", list(_cases()))
def test_transformation_matches_xla(name, implementation, transform, dtype):
    context = jax.enable_x64(True) if dtype == "float64" else _nothing()
    with context:
        got = _run(name, implementation, transform, dtype)
        want = _run(name, "xla", transform, dtype)
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves) > 0
    for g, w in zip(got_leaves, want_leaves):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert_close(g, w, dtype)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_forward_mode_stays_on_the_fast_path():
    """The tangent of a taps convolution is a taps convolution, not XLA's grouped convolution,
    and reverse mode over it transposes into the taps adjoint and kernel gradient."""
    x, kernel = jnp.ones((1, 6, 6, 4)), jnp.ones((3, 3, 1, 4))
    f = functools.partial(jdw.depthwise_conv, strides=2, implementation="taps")
    jvp = str(jax.make_jaxpr(lambda x, k, t: jax.jvp(f, (x, k), (t, k)))(x, kernel, x))
    hessian = str(jax.make_jaxpr(jax.hessian(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1)))(x, kernel))
    assert "conv_general_dilated" not in jvp + hessian
    assert jvp.count("depthwise_conv[") == 3  # the primal and the two tangent terms
    assert "depthwise_conv_transpose[" in hessian and "depthwise_kernel_grad[" in hessian


def test_linear_transpose_is_the_transposed_convolution():
    x, kernel = jnp.arange(2 * 8 * 8 * 3.0).reshape(2, 8, 8, 3) / 100, jnp.ones((3, 3, 1, 3))
    for implementation in IMPLEMENTATIONS:
        f = functools.partial(
            jdw.depthwise_conv, kernel=kernel, strides=2, padding="SAME", implementation=implementation
        )
        y = f(x)
        (got,) = jax.linear_transpose(f, x)(y)
        want = jdw.depthwise_conv_transpose(y, kernel, strides=2, padding="SAME", implementation="xla")
        assert_close(got, want)
