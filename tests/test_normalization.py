"""jdw.functional.batch_norm_act against a NumPy reference (values and gradients), and in the blocks."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jdw
from jdw.functional import batch_norm_act
from jdw.kernels import cpu_batch_norm

# Activations and their derivatives in NumPy, with jax.nn's values at the kinks (relu6's is 0 at 0 and 6).
NUMPY_ACTIVATIONS = {
    None: (lambda u: u, lambda u: np.ones_like(u)),
    "relu": (lambda u: np.maximum(u, 0), lambda u: (u > 0).astype(u.dtype)),
    "relu6": (lambda u: np.clip(u, 0, 6), lambda u: ((u > 0) & (u < 6)).astype(u.dtype)),
    "hard_swish": (
        lambda u: u * np.clip(u + 3, 0, 6) / 6,
        lambda u: np.where(u < -3, 0.0, np.where(u > 3, 1.0, (2 * u + 3) / 6)),
    ),
    "swish": (lambda u: u / (1 + np.exp(-u)), lambda u: (s := 1 / (1 + np.exp(-u))) * (1 + u * (1 - s))),
}


def reference(x, scale, bias, eps, activation, dy, dmean, dvar):
    """Forward and backward of activation(batch norm) in float64 NumPy, from the textbook formulas."""
    act, act_grad = NUMPY_ACTIVATIONS[activation]
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    mean = x.mean(axes)
    var = x.var(axes)
    xhat = (x - mean) / np.sqrt(var + eps)
    u = scale * xhat + bias
    g = dy * act_grad(u)
    dbias = g.sum(axes)
    dscale = (g * xhat).sum(axes)
    dxhat = g * scale
    dx = (dxhat - dxhat.mean(axes) - xhat * (dxhat * xhat).mean(axes)) / np.sqrt(var + eps)
    dx += dmean / n + dvar * 2 * (x - mean) / n
    return act(u), mean, var, dx, dscale, dbias


@pytest.mark.parametrize("activation", list(NUMPY_ACTIVATIONS))
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5, 7), (2, 3, 4, 2, 5)])
def test_values_and_gradients_match_numpy(rng, activation, shape):
    c = shape[-1]
    x = rng.standard_normal(shape) * 3 + 1
    scale, bias = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    dy, dmean, dvar = rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c)
    eps = 1e-3
    want = reference(x, scale, bias, eps, activation, dy, dmean, dvar)

    def f(x, scale, bias):
        return batch_norm_act(x, scale, bias, epsilon=eps, activation=activation)

    as32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
    (y, mean, var), vjp = jax.vjp(f, *as32)
    dx, dscale, dbias = vjp(tuple(jnp.asarray(a, jnp.float32) for a in (dy, dmean, dvar)))
    for got, expected in zip((y, mean, var, dx, dscale, dbias), want):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, atol=2e-4 * max(1, np.abs(expected).max()), rtol=0)


def test_matches_flax_batchnorm_and_its_gradients(rng):
    """The same gradients as Flax's batch-norm formula then relu6, differentiated by JAX op by op."""
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 8)) * 2 + 0.5, jnp.float32)
    weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def flax_loss(x, scale, bias):  # nnx.BatchNorm's training-mode formula (fast variance), op by op
        mean = jnp.mean(x, (0, 1, 2))
        var = jnp.maximum(jnp.mean(x * x, (0, 1, 2)) - mean * mean, 0.0)
        y = (x - mean[None, None, None]) * (jax.lax.rsqrt(var + 1e-3) * scale)[None, None, None] + bias[
            None, None, None
        ]
        return jnp.sum(jax.nn.relu6(y) * weights)

    def jdw_loss(x, scale, bias):
        return jnp.sum(batch_norm_act(x, scale, bias, epsilon=1e-3, activation="relu6")[0] * weights)

    params = (x, jnp.asarray(rng.uniform(0.5, 2, 8), jnp.float32), jnp.asarray(rng.standard_normal(8), jnp.float32))
    want = jax.grad(flax_loss, (0, 1, 2))(*params)
    got = jax.grad(jdw_loss, (0, 1, 2))(*params)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=2e-4 * max(1, float(jnp.abs(w).max())), rtol=0)


def test_bfloat16_input_keeps_its_dtype_and_float32_statistics(rng):
    x = jnp.asarray(rng.standard_normal((8, 5, 16)), jnp.bfloat16)
    y, mean, var = batch_norm_act(x, activation="relu", dtype=jnp.bfloat16)
    assert (y.dtype, mean.dtype, var.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
    xf = np.asarray(x, np.float32)
    want = np.maximum((xf - xf.mean((0, 1))) / np.sqrt(xf.var((0, 1)) + 1e-5), 0)
    np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=3e-2 * max(1, np.abs(want).max()))
    dx = jax.grad(lambda x: batch_norm_act(x, activation="relu", dtype=jnp.bfloat16)[0].astype(jnp.float32).sum())(x)
    assert dx.dtype == jnp.bfloat16
    # bf16 parameters promote as Flax's BatchNorm does: with float32 parameters the result is float32
    assert batch_norm_act(x, jnp.ones(16), jnp.zeros(16))[0].dtype == jnp.float32


def test_under_jit_vmap_and_grad_of_grad_free_transformations(rng):
    x = jnp.asarray(rng.standard_normal((3, 4, 6, 5)), jnp.float32)
    per_example = jax.vmap(lambda x: batch_norm_act(x, activation="relu6")[0])(x)
    for i in range(3):
        np.testing.assert_allclose(per_example[i], batch_norm_act(x[i], activation="relu6")[0], atol=1e-6)
    jitted = jax.jit(jax.grad(lambda x: batch_norm_act(x, activation="swish")[0].sum()))(x)
    assert jitted.shape == x.shape and bool(jnp.all(jnp.isfinite(jitted)))


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        ((np.ones(4),), {}, r"batch_norm_act: x must have a batch axis and a channel axis, got shape \(4,\)"),
        ((np.ones((2, 4)), np.ones(3)), {}, r"scale must have shape \(4,\) for x of shape \(2, 4\), got \(3,\)"),
        (
            (np.ones((2, 4)), None, np.ones((1, 4))),
            {},
            r"bias must have shape \(4,\) for x of shape \(2, 4\), got \(1, 4\)",
        ),
        ((np.ones((2, 4)),), {"activation": "relu7"}, "unknown activation 'relu7'"),
    ],
)
def test_errors_name_the_values(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        batch_norm_act(*args, **kwargs)


def test_nnx_conv_norm_act_trains_as_flax_batchnorm(rng):
    """Training mode: the fused path's output, gradients and running averages are nnx.BatchNorm's."""
    block = jdw.nnx.ConvNormAct(4, 8, 3, groups=4, activation="relu6", rngs=nnx.Rngs(0))
    block.norm.scale[...] = jnp.asarray(rng.uniform(0.5, 2, 8), jnp.float32)
    block.norm.bias[...] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    conv = block.conv
    norm = nnx.BatchNorm(8, epsilon=1e-3, momentum=0.99, rngs=nnx.Rngs(0))
    nnx.update(norm, nnx.state(block.norm, nnx.Param))
    x = jnp.asarray(rng.standard_normal((3, 6, 5, 4)) * 2, jnp.float32)

    def fused_loss(block, x):
        return jnp.sum(block(x) ** 2)

    def flax_loss(norm, x):
        return jnp.sum(jax.nn.relu6(norm(conv(x))) ** 2)

    got = nnx.grad(fused_loss, argnums=(0, 1))(block, x)
    want = nnx.grad(flax_loss, argnums=(0, 1))(norm, x)
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)
    np.testing.assert_allclose(got[0].norm.scale[...], want[0].scale[...], atol=1e-4)
    np.testing.assert_allclose(got[0].norm.bias[...], want[0].bias[...], atol=1e-4)
    np.testing.assert_allclose(block.norm.mean[...], norm.mean[...], atol=1e-6)
    np.testing.assert_allclose(block.norm.var[...], norm.var[...], atol=1e-6)


def test_linen_conv_norm_act_trains_as_flax_batchnorm(rng):
    """Linen: the same variables as nn.BatchNorm, the same outputs and updated batch_stats in training."""
    block = jdw.linen.ConvNormAct(8, 1, activation="hard_swish")
    x = jnp.asarray(rng.standard_normal((4, 5, 5, 3)), jnp.float32)
    variables = block.init(jax.random.key(0), x, train=True)
    assert jax.tree.map(jnp.shape, variables["batch_stats"]) == {"norm": {"mean": (8,), "var": (8,)}}
    assert jax.tree.map(jnp.shape, variables["params"]["norm"]) == {"bias": (8,), "scale": (8,)}
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, block.init(jax.random.key(0), x, train=False)))
    variables["params"]["norm"]["bias"] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    y, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = jdw.linen.PointwiseConv(8, use_bias=False, name="conv")(x)
            y = nn.BatchNorm(use_running_average=False, momentum=0.99, epsilon=1e-3, name="norm")(y)
            return jax.nn.hard_swish(y)

    want, want_updates = Reference().apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, want, atol=1e-5)
    for key in ("mean", "var"):
        np.testing.assert_allclose(
            updates["batch_stats"]["norm"][key], want_updates["batch_stats"]["norm"][key], atol=1e-6
        )


needs_cpu_sums = pytest.mark.skipif(not cpu_batch_norm.AVAILABLE, reason="the C++ extension was not built")


@needs_cpu_sums
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
# Rows of at most 32 channels go four at a time (cpu_batch_norm.cc's kUnrolledFloats), with rows
# left over in (5, 3) and (130, 17); 96 channels one row at a time.
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (130, 17), (2, 9, 7, 96), (3, 200, 8), (2, 33, 32)])
def test_cpu_sums_match_numpy(rng, dtype, shape):
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 1, dtype)
    xf = np.asarray(x, np.float64).reshape(-1, shape[-1])
    s, q = cpu_batch_norm.sums(x)
    assert (s.dtype, s.shape) == (jnp.float32, (shape[-1],))
    np.testing.assert_allclose(s, xf.sum(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(q, (xf * xf).sum(0), rtol=1e-5, atol=1e-4)


@needs_cpu_sums
@pytest.mark.parametrize("activation", list(cpu_batch_norm.ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
# 19 channels: one row at a time; 7: four rows at a time (kUnrolledFloats), with rows left over.
@pytest.mark.parametrize("shape", [(3, 70, 19), (5, 67, 7)])
def test_cpu_grad_sums_match_numpy(rng, activation, dtype, shape):
    C = shape[-1]
    x, dy = (jnp.asarray(rng.standard_normal(shape) * 4, dtype) for _ in range(2))
    a, b = jnp.asarray(rng.uniform(0.5, 2, C), jnp.float32), jnp.asarray(rng.standard_normal(C), jnp.float32)
    xf, dyf = (np.asarray(v, np.float64).reshape(-1, C) for v in (x, dy))
    u = np.asarray(x, np.float32).reshape(-1, C) * np.asarray(a) + np.asarray(b)
    g = dyf * NUMPY_ACTIVATIONS[None if activation == "identity" else activation][1](u)
    s, q = cpu_batch_norm.grad_sums(x, dy, a, b, activation)
    np.testing.assert_allclose(s, g.sum(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(q, (g * xf).sum(0), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="activation 'swish' has no derivative in the C"):
        cpu_batch_norm.grad_sums(x, dy, a, b, "swish")


@needs_cpu_sums
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_sums_serve_batch_norm_act_on_cpu(rng, dtype, monkeypatch):
    """On CPU the fused function sums with the C++ calls, and gives what XLA's sums give."""
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 24)) * 3, dtype)

    def loss(x, scale, bias):
        y, mean, var = batch_norm_act(x, scale, bias, activation="relu6", dtype=dtype)
        return jnp.sum(y.astype(jnp.float32) * jnp.arange(24.0)[None, None, None]) + jnp.sum(mean * var)

    params = (x, jnp.linspace(0.5, 2, 24), jnp.linspace(-1, 1, 24))
    grad = jax.jit(jax.grad(loss, (0, 1, 2)))
    hlo = grad.lower(*params).compile().as_text()
    assert "jdw_batch_norm_sums" in hlo and "jdw_batch_norm_grad_sums" in hlo
    got = grad(*params)
    monkeypatch.setattr(cpu_batch_norm, "supports", lambda *dtypes: False)
    want = jax.jit(jax.grad(loss, (0, 1, 2)))(*params)
    assert "jdw_batch_norm" not in jax.jit(jax.grad(loss, (0, 1, 2))).lower(*params).as_text()
    tolerance = 1e-4 if dtype == "float32" else 3e-2
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(g, w, atol=tolerance * max(1, np.abs(w).max()), rtol=0)


@needs_cpu_sums
def test_baseline_sums_match_numpy():
    """The baseline copy of the C++ sums (``JDW_CPU_INSTRUCTION_SET=baseline``) passes this file's
    sums tests too, where the CPU runs the AVX2 copy by default."""
    if cpu_batch_norm.instruction_set() == "baseline":
        pytest.skip("this CPU runs the baseline sums: the other tests run them")
    # (Without this run's pytest variables: an xdist worker's would make the inner pytest a worker too.)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "XDIST"))}
    env["JDW_CPU_INSTRUCTION_SET"] = "baseline"
    chosen = [sys.executable, "-c", "from jdw.kernels import cpu_batch_norm; print(cpu_batch_norm.instruction_set())"]
    assert subprocess.run(chosen, env=env, capture_output=True, text=True, check=True).stdout.strip() == "baseline"
    tests = ["-k", "cpu_sums or cpu_grad_sums", "-p", "no:cacheprovider", "-q", __file__]
    run = subprocess.run([sys.executable, "-m", "pytest", *tests], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout


@needs_cpu_sums
def test_grad_of_grad_through_the_cpu_sums(rng, monkeypatch):
    """The C++ sums have JAX derivatives, so second-order reverse mode (a gradient penalty) runs and
    agrees with XLA's sums."""
    x = jnp.asarray(rng.standard_normal((3, 5, 4, 6)) * 2, jnp.float32)
    w = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def penalty(x):
        grad = jax.grad(lambda x: jnp.sum(batch_norm_act(x, activation="relu6")[0] * w))(x)
        return jnp.sum(grad**2)

    got = jax.grad(penalty)(x)
    monkeypatch.setattr(cpu_batch_norm, "supports", lambda *dtypes: False)
    want = jax.grad(penalty)(x)
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1, float(jnp.abs(want).max())), rtol=0)


def test_forward_mode_through_a_training_block_takes_flax_batchnorm(rng):
    """The fused function is reverse-mode only; use_fast_variance=False (as documented) gives jvp back."""
    block = jdw.nnx.ConvNormAct(4, 8, 3, groups=4, activation="relu6", rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 4)), jnp.float32)

    def jvp(block):
        graphdef, state = nnx.split(block)
        f = lambda x, state: nnx.merge(graphdef, state)(x)  # noqa: E731
        return jax.jvp(f, (x, state), (x, jax.tree.map(jnp.zeros_like, state)))[1]

    with pytest.raises(TypeError, match="forward-mode autodiff"):
        jvp(block)
    block.norm.use_fast_variance = False
    assert jvp(block).shape == (2, 5, 5, 8)
